"""
Plumbing: a run's config and what may go wrong with it. The errors a user can fix (printed as one
line by cli()), the config resolution every script shares (defaults, config files, --key=value,
--help), the value rules every script checks before anything is loaded or written, and the files
a config names.
"""

import ast
import gc
import inspect
import math
import os
import re
import runpy
import sys
from types import SimpleNamespace

import torch

# -----------------------------------------------------------------------------
# errors: a rejected input is a UserError, printed as one line by cli(); anything else is a bug


class UserError(Exception):
    """Bad input (config, data, checkpoint) or a failed run the user can fix: one line, no traceback."""


class ConfigError(UserError, ValueError):
    pass


class DataError(UserError, ValueError):
    pass


class CheckpointError(UserError, RuntimeError):
    pass


class NonFiniteError(UserError, FloatingPointError):
    pass


class FileError(UserError, OSError):
    """The operating system refused a file (unreadable, not writable, a full disk): the message
    names the path."""


def os_error(path, e, what="write"):
    """A FileError naming path for the OSError e: 'path: cannot write it (No space left on
    device)'."""
    return FileError(f"{path}: cannot {what} it ({e.strerror or e})")


def cli(main):
    """Run a script's main() from the command line: a UserError prints `error: <what>` and exits
    with status 1; so does an operating-system error (a full disk, a file that cannot be read or
    written: the machine's fault, not a bug); a second Ctrl-C exits 130; any other exception is a
    bug and keeps its traceback. A config error is the same on every rank: under torchrun rank 0
    alone prints it."""
    try:
        main()
        # free the cycles a run leaves (FSDP's hooks, a process group's pending work) while the
        # interpreter is whole: freed during its shutdown, a gloo thread that then asks for the
        # GIL aborts the process ("terminate called without an active exception") after success
        gc.collect()
    except UserError as e:
        quiet = isinstance(e, ConfigError) and os.environ.get("RANK", "0") != "0"
        sys.exit(1 if quiet else f"error: {e}")
    except OSError as e:  # where no caller named the path, the OS usually did (e.filename)
        where = f"{e.filename}: " if e.filename else ""
        sys.exit(f"error: {where}{e.strerror or e}")
    except KeyboardInterrupt:
        sys.exit("interrupted")

# -----------------------------------------------------------------------------
# config: defaults live at the top of each script as a dict; a config file (python assignments)
# and --key=value arguments override them. Types must match the default's type.

# old key -> (new key, what changed): an old name is an error that names the new one
RENAMED = {
    "eval_iters": ("eval_examples", "it counts held-out examples now, not batches"),
    "eval_pairs": ("eval_examples", "one name in every script"),
    "eval_prompts": ("eval_examples", "one name in every script"),
    "group_by_length": ("length_buckets", "one name in every script"),
    "kl_coef": ("beta", "the KL anchor's strength has one name: beta, as in DPO and GRPO"),
    "ppo_epochs": ("num_iterations", "passes over each rollout batch, GRPO's mu"),
    "cliprange": ("epsilon_low", "and epsilon_high: the clip range may be asymmetric"),
    "ref_from": ("reference", "one name in every script"),
    "max_prompts": ("eval_examples", "one name in every script"),
}


def _coerce(key, value, default, where):
    """Check that `value` may replace `default` (same type; an int is accepted for a float)."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            try:
                value = float(value)
            except OverflowError:  # an int with hundreds of digits
                value = math.inf
            if not math.isfinite(value):
                raise ConfigError(f"{where}: config key '{key}' must be a finite number, got {value}")
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"{where}: config key '{key}' must be {type(default).__name__} "
                          f"(default {default!r}), got {type(value).__name__} {value!r}")
    return value


def _parse_cli_value(key, text, default):
    if isinstance(default, str):
        return text  # strings need no quotes on the command line
    if isinstance(default, bool) and text.lower() in ("true", "false", "1", "0"):
        return text.lower() in ("true", "1")
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise ConfigError(f"command line: cannot parse --{key}={text[:80]}: expected a "
                          f"{type(default).__name__} like {default!r}") from None


def _check_key(key, defaults, where):
    if key in defaults:
        return
    if key in RENAMED and RENAMED[key][0] in defaults:
        new, why = RENAMED[key]
        raise ConfigError(f"{where}: config key '{key}' was renamed '{new}' ({why})")
    raise ConfigError(f"{where}: unknown config key '{key}' (see --help)")


def key_comments(source_file):
    """The trailing '# comment' of each `key=value,` line of a script's DEFAULTS, for --help."""
    comments = {}
    try:
        with open(source_file) as f:
            for line in f:
                m = re.match(r"\s*(\w+)\s*=.*?#\s*(.*)$", line)
                if m and m.group(1) not in comments:
                    comments[m.group(1)] = m.group(2).strip()
    except OSError:
        pass
    return comments


def format_help(defaults, doc="", comments=None):
    comments = comments or {}
    lines = [doc.strip(), "", "config keys (override with a config file and/or --key=value):"]
    width = min(44, max(len(f"{k} = {v!r}") for k, v in defaults.items()))
    for k, v in defaults.items():
        line = f"{k} = {v!r}"
        lines.append(f"  --{line:<{width}}  {comments.get(k, '')}".rstrip())
    return "\n".join(lines)


def parse_config(defaults, argv=None, doc=""):
    """
    Resolve a run's config: `defaults` (a dict), then each config file named on the command line
    (a python file of assignments), then each --key=value, in order. Unknown keys, renamed keys,
    wrong types and non-finite numbers raise ConfigError naming the key and where it came from.
    --help prints every key and exits. Returns a SimpleNamespace; `vars(cfg)` is the plain dict
    saved in checkpoints.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    cfg = dict(defaults)
    for arg in argv:
        if arg in ("-h", "--help"):
            caller = inspect.stack()[1].filename  # the script whose DEFAULTS these are
            try:
                print(format_help(defaults, doc, key_comments(caller)))
            except BrokenPipeError:  # `--help | head` is fine
                pass
            sys.exit(0)
        if not arg.startswith("--"):
            if not os.path.isfile(arg):
                raise ConfigError(f"command line: config file {arg!r} does not exist")
            try:
                values = runpy.run_path(arg)
            except BaseException as e:  # a syntax error, a raise, or even a sys.exit(0)
                if isinstance(e, KeyboardInterrupt):
                    raise
                raise ConfigError(f"{arg}: the config file failed to run: {e!r}") from None
            for k, v in values.items():
                if k.startswith("_") or callable(v) or type(v).__name__ == "module":
                    continue
                _check_key(k, defaults, arg)
                cfg[k] = _coerce(k, v, defaults[k], arg)
        else:
            if "=" not in arg:
                raise ConfigError(f"command line: expected --key=value, got {arg!r}")
            k, text = arg[2:].split("=", 1)
            _check_key(k, defaults, "command line")
            cfg[k] = _coerce(k, _parse_cli_value(k, text, defaults[k]), defaults[k], "command line")
    return SimpleNamespace(**cfg)


def require(cond, msg):
    """Reject a bad config value before any training starts."""
    if not cond:
        raise ConfigError(msg)


def _positive(v):
    return v > 0


def _non_negative(v):
    return v >= 0


def _unit(v):  # [0, 1)
    return 0 <= v < 1


# key -> (test, what the value must be): checked by validate() for every script that has the key
RULES = {
    **{k: (_positive, "> 0") for k in (
        "n_layer", "n_head", "n_embd", "block_size", "batch_size", "grad_accum", "lr",
        "critic_lr", "eps", "log_interval", "eval_interval", "ckpt_interval", "sample_tokens",
        "rollout_batch_size", "minibatch_size", "micro_batch_size", "max_new_tokens",
        "num_iterations", "group_size", "sample_interval", "target_kl", "kl_horizon",
        "num_samples_per_prompt", "simpo_beta", "orpo_lambda")},
    **{k: (_non_negative, ">= 0") for k in (
        "warmup_iters", "weight_decay", "grad_clip", "min_lr", "num_samples", "top_k",
        "ent_coef", "vf_coef", "save_every", "missing_eos_penalty", "center_coef", "rpo_alpha",
        "simpo_gamma", "num_examples", "critic_warmup")},
    **{k: (_unit, "in [0, 1)") for k in ("dropout", "beta1", "beta2")},
    "max_iters": (_positive, "> 0"),
    "top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "gamma": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "lam": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "temperature": (lambda v: 0.01 <= v <= 100, "in [0.01, 100] (a smaller one overflows the "
                                                "logits / T)"),
    "sample_temperature": (lambda v: v == 0 or 0.01 <= v <= 100, "0 (greedy) or in [0.01, 100]"),
    "eval_examples": (lambda v: v == -1 or v > 0, "> 0, or -1 for all"),
    "seed": (lambda v: 0 <= v < 2**63 - 2**32, "in [0, 2**63 - 2**32)"),  # rank r seeds seed + r
    "dtype": (lambda v: v in ("auto", "float32", "bfloat16"), "'auto', 'float32' or 'bfloat16'"),
    "device": (lambda v: v in ("auto", "cpu", "mps") or re.fullmatch(r"cuda(:\d+)?", v),
               "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"),
    "tokenizer": (lambda v: v in ("byte", "gpt2"), "'byte' or 'gpt2'"),
}


def validate(cfg, rules=None):
    """
    Check every key of cfg that RULES (or the script's own `rules`, which win) has a rule for,
    plus the cross-key rules every script shares; a bad value fails with one line naming the key.
    """
    rules = {**RULES, **(rules or {})}
    for key, value in vars(cfg).items():
        if key in rules:
            test, want = rules[key]
            require(test(value), f"config key '{key}' must be {want}, got {value!r}")
    c = vars(cfg)
    if "min_lr" in c:
        require(cfg.min_lr <= cfg.lr, f"config key 'min_lr'={cfg.min_lr} must be <= lr={cfg.lr}")
    if "stop_iter" in c:  # max_iters = -1: derived later (the reward model's num_epochs)
        last = cfg.max_iters if cfg.max_iters > 0 else math.inf
        require(cfg.stop_iter == -1 or 0 < cfg.stop_iter <= last, f"config key 'stop_iter'="
                f"{cfg.stop_iter} must be -1 or in 1..max_iters={cfg.max_iters}")
    if "n_head" in c and "n_embd" in c:
        require(cfg.n_embd % cfg.n_head == 0,
                f"n_embd={cfg.n_embd} must be divisible by n_head={cfg.n_head}")
    if str(c.get("device", "")).startswith("cuda"):
        require(torch.cuda.is_available(), f"device={cfg.device!r}, but this machine has no CUDA "
                                           f"device (torch.cuda.is_available() is False)")


HUB = ("scratch", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
DIR_KEYS = ("init_from", "reference", "policy", "reward_model")  # a Hugging Face directory
# is a model too, and an ensemble's out_dir is a reward model


def require_files(cfg, *keys, hint=""):
    """Each named key must be '' (not used), a hub name, or an existing path, or a
    comma-separated list of them (several data files, an ensemble's checkpoints); hint says how to make the file (e.g. the toy world's prepare
    command)."""
    for key in keys:
        value = getattr(cfg, key)
        paths = value.split(",")
        require(len(paths) == 1 or all(paths), f"{key}={value!r}: an empty name in the list (a "
                                               f"stray comma?)")
        for path in paths:
            require(not path or path in HUB or os.path.exists(path),
                    f"{key}={path!r} does not exist{f' ({hint})' if hint else ''}")
            require(not path or path in HUB or not os.path.isdir(path) or key in DIR_KEYS,
                    f"{key}={path!r} is a directory, not a file")

