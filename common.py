"""
The plumbing every script shares, written once: config and its checks, the run skeleton (device,
DDP, out_dir, lock, resume, log, checkpoints, stop signals), model initialisation, optimizer and
schedule, and the few tensor helpers (log-probs, masked means) that every loss is built from.
A script's loop stays in the script: nothing here calls back into it.
"""

import ast
import inspect
import json
import math
import os
import pickle
import re
import runpy
import shutil
import signal
import sys
import time
import zipfile
from contextlib import nullcontext
from dataclasses import asdict
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.nn.functional as F

try:
    import fcntl  # POSIX file locks
except ImportError:  # Windows: msvcrt's byte-range locks instead
    fcntl = None

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


def cli(main):
    """Run a script's main() from the command line: a UserError prints `error: <what>` and exits
    with status 1; a second Ctrl-C exits 130; any other exception is a bug and keeps its traceback.
    A config error is the same on every rank: under torchrun rank 0 alone prints it."""
    try:
        main()
    except UserError as e:
        quiet = isinstance(e, ConfigError) and os.environ.get("RANK", "0") != "0"
        sys.exit(1 if quiet else f"error: {e}")
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


def require_files(cfg, *keys, hint=""):
    """Each named key must be '' (not used), a hub name, or an existing path (for train_data: a
    comma-separated list of them); hint says how to make the file (e.g. the toy world's prepare
    command)."""
    for key in keys:
        value = getattr(cfg, key)
        for path in value.split(",") if key == "train_data" else [value]:
            require(not path or path in HUB or os.path.exists(path),
                    f"{key}={path!r} does not exist{f' ({hint})' if hint else ''}")

# -----------------------------------------------------------------------------
# runtime: device, precision, seeds, DDP


def print0(*args, **kwargs):
    if int(os.environ.get("RANK", 0)) == 0:
        print(*args, **kwargs, flush=True)


def pick_device(device="auto"):
    """cuda > mps > cpu, unless a device is named."""
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def keep_freed_cpu_memory():
    """
    Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the kernel.
    By default every CPU tensor above a few MB (GPT-2's logits are 200 MB, its embedding gradient
    150 MB) is a fresh mmap, so each step page-faults its way through ~1 GB of new pages: a third
    of a bf16 GPT-2 step on a CPU. The thresholds make large blocks come from the heap and stay
    there, as the CUDA caching allocator does on a GPU. Linux with glibc only; elsewhere a no-op.
    Returns True if the settings took effect.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # malloc.h
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 2**30) and
                    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):  # not glibc (musl, ...): keep its defaults
        return False


def init_runtime(cfg):
    """
    Set up one process: device, DDP (when launched by torchrun), autocast and seeds.
    Uses cfg.device ('auto'|'cpu'|'cuda'|'mps'), cfg.dtype ('auto'|'float32'|'bfloat16') and
    cfg.seed. Every rank seeds with seed + rank: ranks see different data and draw different
    samples, while DDP broadcasts rank 0's initial weights so the models start identical.
    """
    ddp = int(os.environ.get("RANK", -1)) != -1
    device = pick_device(cfg.device)
    rank, local_rank, world_size = 0, 0, 1
    if ddp:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
        world_size = int(os.environ["WORLD_SIZE"])
        if device.startswith("cuda"):
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    device_type = "cuda" if device.startswith("cuda") else device
    dtype = cfg.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device_type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    if device_type == "cpu":
        keep_freed_cpu_memory()
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # bf16 autocast keeps fp32 master weights and optimizer state: no grad scaler needed
    autocast = (torch.autocast(device_type=device_type, dtype=torch.bfloat16)
                if dtype == "bfloat16" else nullcontext())
    torch.manual_seed(cfg.seed + rank)
    return SimpleNamespace(device=device, device_type=device_type, dtype=dtype, ddp=ddp,
                           rank=rank, local_rank=local_rank, world_size=world_size,
                           master=rank == 0, autocast=autocast)


def _all_reduce(x, op, mean=False):
    """x (a tensor or a number) reduced over DDP ranks in float64, returned in x's own type;
    identity in a single process. A collective: every rank must call it, in the same order."""
    if not (dist.is_available() and dist.is_initialized()):
        return x
    t = torch.as_tensor(x, dtype=torch.float64, device="cuda" if dist.get_backend() == "nccl" else "cpu")
    t = t.clone()
    dist.all_reduce(t, op=op)
    if mean:
        t /= dist.get_world_size()
    return t.item() if not torch.is_tensor(x) else t.to(x.device, x.dtype)


def all_reduce_mean(x):
    """Average a tensor (or float) over DDP ranks; identity in a single process."""
    return _all_reduce(x, dist.ReduceOp.SUM, mean=True)


def all_reduce_sum(x):
    """Sum a tensor (or float) over DDP ranks; identity in a single process."""
    return _all_reduce(x, dist.ReduceOp.SUM)


def all_reduce_max(x):
    """Maximum of a tensor (or float) over DDP ranks; identity in a single process."""
    return _all_reduce(x, dist.ReduceOp.MAX)


def unwrap(model):
    """The plain module under DDP and/or torch.compile wrappers."""
    model = model.module if hasattr(model, "module") else model
    return getattr(model, "_orig_mod", model)


def no_sync_unless(model, last_micro_step):
    """Under DDP, all-reduce gradients only on the last micro-step of an accumulation."""
    if hasattr(model, "no_sync") and not last_micro_step:
        return model.no_sync()
    return nullcontext()

# -----------------------------------------------------------------------------
# checkpoints: one dict per file, written atomically and read back with weights_only=True


def rng_state():
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path, ckpt):
    """Write to a temp file then rename: a crash mid-write leaves the previous file intact."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows
    except BaseException:  # a full disk or a Ctrl-C mid-write: keep no half-written file around
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def strip_prefixes(state_dict):
    """Drop the '_orig_mod.' (torch.compile) and 'module.' (DDP) prefixes from keys."""
    out = {}
    for k, v in state_dict.items():
        for p in ("_orig_mod.", "module."):
            while k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


def load_checkpoint(path, expect_kind=None, expect_tokenizer=None, expect_stage=None):
    """
    Load a checkpoint written by save_checkpoint. weights_only=True means the file can hold only
    tensors and plain containers: a checkpoint from the internet cannot run code when loaded.
    expect_kind ('policy' or 'scalar') and expect_tokenizer guard against loading the wrong model;
    expect_stage ('sft', 'rm', 'ppo', ...) against resuming another script's run.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive: this is something else
        raise CheckpointError(f"{path}: not a readable checkpoint (not a torch.save archive: cut "
                              f"short, or another kind of file)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" not in str(e):
            raise CheckpointError(f"{path}: not a readable checkpoint (damaged pickle)") from None
        found = re.search(r"GLOBAL (\S+)", str(e))
        raise CheckpointError(
            f"{path}: refused to load: the file holds objects other than tensors and plain "
            f"containers ({found.group(1) if found else 'a Python object'}), which could run "
            f"code (weights_only=True)") from None
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: "
                              f"{str(e)[:200]})") from None
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict)
            and isinstance(ckpt.get("model_args"), dict)):
        raise CheckpointError(f"{path}: not a nanoRLHF checkpoint (expected a dict with "
                              f"'model' and 'model_args' dicts)")
    ckpt["model"] = strip_prefixes(ckpt["model"])
    kind, tok = ckpt.get("kind"), ckpt.get("tokenizer")
    if expect_kind is not None and kind != expect_kind:
        raise CheckpointError(f"{path}: holds a {kind!r} model (stage {ckpt.get('stage')!r}), "
                              f"but a {expect_kind!r} model is needed here")
    if expect_tokenizer is not None and tok != expect_tokenizer:
        raise CheckpointError(f"{path}: was trained with the {tok!r} tokenizer, "
                              f"but this run uses {expect_tokenizer!r}")
    if expect_stage is not None and ckpt.get("stage") != expect_stage:
        raise CheckpointError(f"{path}: was written by the {ckpt.get('stage')!r} stage, so this "
                              f"{expect_stage!r} run cannot resume it; use another out_dir")
    return ckpt


def make_checkpoint(model, kind, stage, tokenizer, cfg, step, optimizer=None, **extra):
    """The checkpoint dict: weights, architecture, provenance, and what resuming needs."""
    m = unwrap(model)
    ckpt = {"model": m.state_dict(), "model_args": asdict(m.config), "kind": kind,
            "stage": stage, "tokenizer": tokenizer, "config": dict(vars(cfg)), "step": step,
            "rng": rng_state()}
    if optimizer is not None:
        ckpt["optimizer"] = optimizer.state_dict()
    ckpt.update(extra)
    return ckpt


def check_finite_weights(ckpt, step, name):
    """Refuse to write a checkpoint whose weights hold a NaN or inf, or a value above 1e18 that
    overflows float32 in the first matmul (a learning rate of 1e30 turns finite gradients into
    such weights): the last good file stays."""
    for part in ("model", "critic"):
        for key, t in (ckpt.get(part) or {}).items():
            if torch.is_tensor(t) and t.is_floating_point() and t.numel() and \
                    not float(t.abs().max()) <= 1e18:  # NaN fails this too
                raise NonFiniteError(f"step {step}: weight {part}.{key} is not finite (max "
                                     f"|w| = {float(t.abs().max()):.3g}); not writing {name} "
                                     f"(the last good checkpoint is kept)")

# -----------------------------------------------------------------------------
# the run skeleton: out_dir, lock, resume, log, checkpoints, stop signals, shutdown

RUN_FILES = re.compile(r"(ckpt_.*\.pt|.*\.jsonl|ref_logps.*\.pt)$")  # what a run writes


def _holds_run(d):
    return os.path.isdir(d) and any(RUN_FILES.match(n) for n in os.listdir(d))


def _move_files(src, dst):
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        os.replace(os.path.join(src, name), os.path.join(dst, name))


def _finish_swap(out_dir):
    """Complete (or undo) a swap a killed process left half done. .staging holds a new run that
    has not proved itself yet: it goes. .replaced holds an old run being replaced by one that
    has: the new files come in, the old ones go."""
    staging, replaced = os.path.join(out_dir, ".staging"), os.path.join(out_dir, ".replaced")
    if os.path.isdir(replaced):
        if os.path.isdir(staging):
            _move_files(staging, out_dir)
        shutil.rmtree(replaced)
    if os.path.isdir(staging):
        shutil.rmtree(staging)


_held_locks = {}  # out_dir -> open lock file of this process


def lock_out_dir(out_dir):
    """
    An exclusive lock on out_dir (flock on out_dir/.lock) for the life of the run: a second run
    started on the same out_dir fails at once. The kernel drops the lock when its process dies,
    so a killed run never blocks the resume. (A lock this process still holds from an earlier
    run that raised is taken over: one process runs one run at a time.)
    """
    try:
        os.makedirs(out_dir, exist_ok=True)
        key = os.path.realpath(out_dir)
        if key in _held_locks:
            _held_locks.pop(key).close()
        f = open(os.path.join(out_dir, ".lock"), "a+")
    except OSError as e:
        raise ConfigError(f"out_dir {out_dir!r} is not writable: {e}") from None
    try:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            import msvcrt
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
    except OSError:
        f.close()
        raise ConfigError(f"out_dir {out_dir!r} is in use by another run (it holds the lock "
                          f"{os.path.join(out_dir, '.lock')}); wait for it, or use another "
                          f"out_dir") from None
    _held_locks[key] = f
    return f


def prepare_out_dir(out_dir, resume, overwrite=False):
    """
    Where this run writes, and the checkpoint it resumes from (or None). A fresh out_dir is
    written directly. --resume=True continues the run in out_dir (ckpt_last.pt). An out_dir
    that holds a run needs --resume=True or --overwrite=True; with --overwrite=True the new run
    is built beside the old one in out_dir/.staging and replaces it only when its first
    checkpoint after a training step is written (Run.save): a new run that fails before
    that leaves the old one as it was. Returns (write_dir, resume_path).
    """
    _finish_swap(out_dir)
    last = os.path.join(out_dir, "ckpt_last.pt")
    if resume:
        if not os.path.isfile(last):
            raise ConfigError(f"--resume=True but {last} does not exist")
        for name in os.listdir(out_dir):  # half-written temp files of a killed run
            if ".tmp." in name:
                os.remove(os.path.join(out_dir, name))
        return out_dir, last
    if not _holds_run(out_dir):
        return out_dir, None
    if not overwrite:
        what = "a run" if os.path.isfile(last) else "a run's files"
        raise ConfigError(f"out_dir {out_dir!r} already holds {what} ({last}); pass --resume=True "
                          f"to continue it, --overwrite=True to replace it, or another out_dir")
    staging = os.path.join(out_dir, ".staging")
    os.makedirs(staging)
    return staging, None


class Run:
    """
    The run skeleton of a training script, once: the process (device, DDP, seeds, precision),
    out_dir (lock, resume point, an overwrite that loses nothing), the JSONL log, checkpoints
    (checked finite, written atomically), stop signals and shutdown. The loop stays in the script:
        run = common.Run(cfg, "sft")     # run.rt: device, autocast, rank ...; run.resume: ckpt
        ...
        run.log(step, loss=...)          # a readable line and a JSONL record (rank 0)
        run.save("ckpt_last.pt", ckpt)   # rank 0; refuses non-finite weights
        if run.should_stop(step): ...    # stop_iter, or Ctrl-C / SIGTERM on any rank
        run.finish()
    """

    def __init__(self, cfg, stage):
        self.cfg, self.stage = cfg, stage
        self.rt = init_runtime(cfg)
        self.master = self.rt.master
        self.out_dir, self.dir, resume_path, error = cfg.out_dir, cfg.out_dir, None, None
        if self.master:  # rank 0 locks and prepares out_dir; the others only read from it
            try:
                lock_out_dir(cfg.out_dir)
                self.dir, resume_path = prepare_out_dir(cfg.out_dir, cfg.resume, cfg.overwrite)
            except UserError as e:
                error = e
        elif cfg.resume:
            resume_path = os.path.join(cfg.out_dir, "ckpt_last.pt")
        if self.rt.ddp and all_reduce_max(float(error is not None)) > 0 and error is None:
            error = ConfigError(f"rank 0 could not prepare out_dir {cfg.out_dir!r}")
        if error is not None:
            raise error
        self.staged = self.dir != self.out_dir
        self.resume = load_checkpoint(resume_path, expect_stage=stage) if resume_path else None
        if self.resume is not None:
            require_keys(self.resume, resume_path, "step", "rng", "optimizer")
        self.resume_path = resume_path
        resume_step = self.resume["step"] if self.resume else None
        self.logger = MetricsLogger(self.dir, "log", resume_step, enabled=self.master)
        # per-token numbers of a few samples (plot.py draws them as heatmaps), not printed
        self.token_logger = MetricsLogger(self.dir, "tokens", resume_step, self.master, quiet=True)
        install_stop_handlers()

    def model(self, cls, init, dropout=0.0):
        """The model this run trains and its tokenizer name: from its own last checkpoint when it
        resumes (a cls, GPT or ScalarModel), else from init() -> (model, tokenizer name)."""
        if self.resume is None:
            return init()
        return model_from_checkpoint(cls, self.resume, self.resume_path, dropout), \
            self.resume["tokenizer"]

    def restore(self, optimizer, **state):
        """The loop state a resumed run picks up: the optimizer's, the RNG's (sampling, dropout
        and shuffling continue where they stopped), and `state`'s keys from the checkpoint (their
        values here are a fresh run's). Returns dict(step=..., **state)."""
        if self.resume is None:
            return dict(step=0, **state)
        require_keys(self.resume, self.resume_path, *state)
        optimizer.load_state_dict(self.resume["optimizer"])
        set_rng_state(self.resume["rng"])
        print0(f"resumed from {self.resume_path} at step {self.resume['step']}")
        return dict(step=self.resume["step"], **{k: self.resume[k] for k in state})

    def path(self, name):
        """Where the file `name` of this run lives now (.staging until the swap)."""
        return os.path.join(self.dir, name)

    def log(self, step, **metrics):
        self.logger.log(step, **metrics)

    def log_tokens(self, step, **fields):
        """One sample's per-token numbers (tokens: the token texts; the rest lists as long) to
        out_dir/tokens.jsonl (rank 0)."""
        self.token_logger.log(step, **fields)

    def save(self, name, ckpt):
        """Write ckpt as out_dir/name (rank 0 only), once its weights are checked finite. The
        first checkpoint after a training step of an --overwrite run replaces the old run."""
        if not self.master:
            return
        check_finite_weights(ckpt, ckpt.get("step"), name)
        save_checkpoint(self.path(name), ckpt)
        if self.staged and ckpt.get("step", 0) >= 1:  # proved itself: the old run may go now
            replaced = os.path.join(self.out_dir, ".replaced")
            os.makedirs(replaced)
            for old in os.listdir(self.out_dir):
                if not old.startswith("."):
                    os.replace(os.path.join(self.out_dir, old), os.path.join(replaced, old))
            _finish_swap(self.out_dir)
            self.dir, self.staged = self.out_dir, False
            self.logger.path, self.token_logger.path = self.path("log.jsonl"), self.path("tokens.jsonl")

    def should_stop(self, step):
        """True after step stop_iter, or when Ctrl-C / SIGTERM reached any rank (a collective)."""
        return stop_requested() or step == self.cfg.stop_iter

    def finish(self):
        if self.rt.ddp:
            dist.barrier()  # no rank tears gloo down while another still uses it
            dist.destroy_process_group()
        lock = _held_locks.pop(os.path.realpath(self.out_dir), None) if self.master else None
        if lock is not None:
            lock.close()


def require_keys(ckpt, path, *keys):
    """A checkpoint field a script needs, or a CheckpointError naming the file and the field."""
    missing = [k for k in keys if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: has no {', '.join(map(repr, missing))}: it cannot be "
                              f"resumed (not a ckpt_last.pt of this script?)")

# -----------------------------------------------------------------------------
# models: where a stage's starting weights come from


def init_policy(init_from, tokenizer="byte", model_args=None, dropout=0.0):
    """
    A GPT policy from 'scratch' (model_args, a dict of GPTConfig fields), 'gpt2'...'gpt2-xl'
    (the hub), a local Hugging Face directory, or a nanoRLHF checkpoint file (.pt).
    Returns (model, tokenizer_name).
    """
    from model import GPT, GPTConfig
    if init_from == "scratch":
        from tokenizer import get_tokenizer
        args = dict(model_args or {})
        args["vocab_size"] = get_tokenizer(tokenizer).n_vocab
        return GPT(GPTConfig(**{**args, "dropout": dropout})), tokenizer
    if os.path.isfile(init_from):
        ckpt = load_checkpoint(init_from, expect_kind="policy")
        return model_from_checkpoint(GPT, ckpt, init_from, dropout), ckpt["tokenizer"]
    if os.path.isdir(init_from) or init_from in HUB:
        try:
            model = GPT.from_pretrained(init_from, dropout=dropout)
        except (ValueError, RuntimeError, OSError, KeyError, TypeError) as e:  # a malformed HF
            # directory (config.json, safetensors), no network, ...
            raise CheckpointError(f"{init_from}: {type(e).__name__}: {str(e)[:400]}") from None
        return model, "byte" if model.config.vocab_size == 257 else "gpt2"
    raise ConfigError(f"init_from={init_from!r}: not 'scratch', a gpt2 name, an existing "
                      f"checkpoint file or a Hugging Face directory")


def init_scalar(init_from, tokenizer="byte", model_args=None, dropout=0.0):
    """
    A ScalarModel (reward model or critic): from a scalar checkpoint as is, or a new head on the
    trunk of any policy source accepted by init_policy. Returns (model, tokenizer_name).
    """
    from model import ScalarModel
    if os.path.isfile(init_from):
        ckpt = load_checkpoint(init_from)
        if ckpt.get("kind") == "scalar":
            return scalar_from_checkpoint(ckpt, dropout, init_from)
    gpt, tok = init_policy(init_from, tokenizer, model_args, dropout)
    return ScalarModel.from_gpt(gpt), tok


def scalar_from_checkpoint(ckpt, dropout=0.0, path="the checkpoint"):
    """A ScalarModel holding a loaded scalar checkpoint's weights, and its tokenizer name. A
    reward-model path must be loaded with load_checkpoint(path, expect_kind='scalar') first:
    init_scalar would also take a policy and silently put a fresh random head on it."""
    from model import ScalarModel
    return model_from_checkpoint(ScalarModel, ckpt, path, dropout), ckpt["tokenizer"]


def load_reward_model(path, tokenizer, vocab_size=None):
    """The frozen reward model of PPO, GRPO and eval: a scalar checkpoint whose tokenizer (and
    vocabulary) are the policy's, or a CheckpointError before anything runs. Returns the model."""
    ckpt = load_checkpoint(path, expect_kind="scalar", expect_tokenizer=tokenizer)
    model, _ = scalar_from_checkpoint(ckpt, path=path)
    if vocab_size is not None and model.config.vocab_size != vocab_size:
        raise CheckpointError(f"{path}: vocab_size={model.config.vocab_size}, but the policy's "
                              f"is {vocab_size}: the reward model cannot read its tokens")
    return model.eval().requires_grad_(False)


# ids each tokenizer can produce, known without loading it (tiktoken fetches gpt2's files)
TOKENIZER_VOCAB = {"byte": 257, "gpt2": 50257}


def model_from_checkpoint(cls, ckpt, path, dropout=0.0):
    """
    A GPT or ScalarModel built from a loaded checkpoint's model_args and weights. Fails with a
    CheckpointError naming the file when its tokenizer's ids do not fit its vocabulary (a byte
    model labelled 'gpt2' would index past its embedding at the first batch) or when the weights
    do not match the architecture (a hand-edited or mixed-up file). The shapes are compared on
    a model without storage (device 'meta') first: settings of a huge model with no weights to
    match cost nothing, instead of allocating the huge model.
    """
    from model import GPTConfig
    tok, n_vocab = ckpt.get("tokenizer"), ckpt["model_args"].get("vocab_size")
    if tok not in TOKENIZER_VOCAB:
        raise CheckpointError(f"{path}: unknown tokenizer {tok!r} (expected 'byte' or 'gpt2')")
    if not isinstance(n_vocab, int) or n_vocab < TOKENIZER_VOCAB[tok]:
        raise CheckpointError(f"{path}: model_args vocab_size={n_vocab!r} is smaller than the "
                              f"{tok!r} tokenizer's {TOKENIZER_VOCAB[tok]} ids: token ids would be "
                              f"out of range")
    try:
        config = GPTConfig(**{**ckpt["model_args"], "dropout": dropout})
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in cls(config).state_dict().items()}
        stored = {k: tuple(v.shape) for k, v in ckpt["model"].items() if torch.is_tensor(v)}
        if stored != shapes:
            bad = sorted(set(stored.items()) ^ set(shapes.items()))[:3]
            raise ValueError(f"stored and expected tensors differ: {bad}")
        model = cls(config)
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError, AssertionError) as e:
        raise CheckpointError(f"{path}: its weights do not fit its model_args "
                              f"({type(e).__name__}: {str(e)[:300]})") from None
    return model


def check_block_size(model, block_size, name="the model"):
    n_pos = unwrap(model).config.block_size
    require(0 < block_size <= n_pos, f"block_size={block_size} must be in 1..{n_pos}, "
            f"the number of positions of {name}")

# -----------------------------------------------------------------------------
# optimisation


def configure_optimizer(model, lr, weight_decay, betas, eps, device_type):
    """AdamW; weight decay only on >=2-D weights (matmuls, embeddings), not biases or norms."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # one fused kernel per step instead of a dozen passes per tensor: on a CPU 4x faster for
    # GPT-2 (0.15 s vs 0.58 s at 2 threads)
    fused = device_type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused)


def make_optimizer(model, cfg, rt, lr=None):
    """configure_optimizer with a script's own keys (lr, weight_decay, beta1, beta2, eps)."""
    return configure_optimizer(model, lr or cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2),
                               cfg.eps, rt.device_type)


def get_lr(it, lr, min_lr, warmup_iters, max_iters):
    """Linear warmup for warmup_iters, then cosine decay from lr to min_lr at max_iters."""
    if it < warmup_iters:
        return lr * (it + 1) / (warmup_iters + 1)
    if it >= max_iters:
        return min_lr
    ratio = (it - warmup_iters) / max(1, max_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def set_lr(optimizer, lr):
    for g in optimizer.param_groups:
        g["lr"] = lr


def maybe_compile(model, compile):
    return torch.compile(model) if compile else model


def wrap(model, compile, rt):
    """The module a training step calls: torch.compile'd if asked, DDP-wrapped under torchrun."""
    model = maybe_compile(model, compile)
    if rt.ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[rt.local_rank] if rt.device_type == "cuda" else None)
    return model


def check_finite(step, **quantities):
    """
    Stop the run, naming the step and the quantity, when a loss or gradient is NaN or inf.
    `step` is the update being attempted, numbered as the log numbers it (the first is 1): a
    loop whose counter holds the updates already done passes counter + 1.
    """
    for name, value in quantities.items():
        v = float(value)
        if not math.isfinite(v):
            raise NonFiniteError(f"step {step}: {name} is {v}; stopping without writing a "
                                 f"checkpoint (the last good one is kept)")


def optimizer_step(model, optimizer, grad_clip, step, loss):
    """The end of every update: clip the gradient norm (grad_clip 0 = off), stop on a non-finite
    loss or norm (numbered `step`), step, zero the gradients. Returns the norm as a float."""
    norm = torch.nn.utils.clip_grad_norm_(unwrap(model).parameters(), grad_clip or math.inf)
    check_finite(step, loss=float(loss), grad_norm=norm.item())
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm.item()

# -----------------------------------------------------------------------------
# tensor helpers shared by the losses


def logprobs_of(logits, targets):
    """
    log softmax(logits)[target] of every row, in float32: logits (..., V), targets (...) ->
    (...). The function every log-prob of the project goes through. Equal to
    log_softmax(logits.float(), -1).gather(-1, targets[..., None]).squeeze(-1) (tests check the
    values and gradients), but computed as
        log p = logit[target] - logsumexp(logits),   d log p / d logits = onehot(target) - softmax
    so that no (..., V) log-softmax is stored and its backward needs no zero-filled gather
    gradient: with GPT-2's 50257-token vocabulary those passes cost more than the language-model
    head's matmul on a CPU. Every exp() is of logit - logsumexp <= 0: huge logits stay finite.
    """
    return _LogprobsOf.apply(logits, targets)


class _LogprobsOf(torch.autograd.Function):

    @staticmethod
    def forward(ctx, logits, targets):
        x = logits.float()
        lse = torch.logsumexp(x, dim=-1)  # (...)
        target = targets.unsqueeze(-1)    # (..., 1)
        ctx.save_for_backward(logits, target, lse)
        return x.gather(-1, target).squeeze(-1) - lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        logits, target, lse = ctx.saved_tensors
        # grad (...) -> (..., V): grad * (onehot(target) - softmax), in place in one buffer
        out = logits.to(torch.float32, copy=True)
        out.sub_(lse.unsqueeze(-1)).exp_().mul_(-grad.unsqueeze(-1))
        out.scatter_add_(-1, target, grad.unsqueeze(-1))
        return out.to(logits.dtype), None


def token_logprobs(logits, idx):
    """
    log p(idx[:, t+1] | idx[:, :t+1]) for every t: (B, T, V), (B, T) -> (B, T-1), float32.
    Logits at t predict the token at t+1: the one-position shift of a language model. Fine for
    small vocabularies; the training paths of GPT-2 use trained_logprobs, which runs the LM head
    only where a log-prob is read.
    """
    return logprobs_of(logits[:, :-1], idx[:, 1:])


def predicting_positions(loss_mask):
    """(B, T) bool: the positions whose logits predict a trained token, t where
    loss_mask[:, t + 1] is 1 (the last position predicts nothing)."""
    return F.pad(loss_mask[:, 1:] != 0, (0, 1), value=False)


def trained_logprobs(model, idx, loss_mask, position_ids=None, autocast=None):
    """
    log p(idx[:, t+1] | idx[:, :t+1]) (B, T-1), float32, at the positions where loss_mask[:, t+1]
    is 1, and 0 elsewhere. The model's LM head and log-softmax run only at those positions
    (GPT.forward's logits_at): on real data most positions are prompt or padding, whose logits
    nothing reads. Equal to token_logprobs(model(idx), idx) * loss_mask[:, 1:] (a test checks).
    Rows are right-padded, so no attention mask is needed (GPT.forward).
    """
    at = predicting_positions(loss_mask)  # (B, T)
    with autocast or nullcontext():
        logits = model(idx, position_ids=position_ids, logits_at=at)  # (n, V)
    targets = idx[:, 1:][at[:, :-1]]  # (n,): the token each selected position predicts
    out = torch.zeros(idx.size(0), idx.size(1) - 1, device=idx.device)
    return out.masked_scatter(at[:, :-1], logprobs_of(logits, targets))


def masked_mean(x, mask, dim=None):
    """Mean of x where mask is 1 (over all elements, or along dim)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def global_masked_mean_var(x, mask, unbiased=False):
    """
    Mean and variance of x over the entries where mask is 1 of EVERY rank's x under DDP (sums and
    counts all-reduced, so each rank gets the same two numbers), of this process's x otherwise.
    Two passes, mean then squared deviations, with masked_mean's operations: in one process the
    result is bitwise masked_mean's. unbiased divides by n - 1 instead of n. A collective: every
    rank must call it. x, mask (any shape, the same) -> (mean, var), 0-d tensors.
    """
    mask = mask.to(x.dtype)
    n = all_reduce_sum(mask.sum())
    mean = all_reduce_sum((x * mask).sum()) / n.clamp(min=1)
    var = all_reduce_sum(((x - mean) ** 2 * mask).sum()) / n.clamp(min=1)
    if unbiased:
        var = var * n / (n - 1).clamp(min=1)
    return mean, var

# -----------------------------------------------------------------------------
# stop signals: Ctrl-C or SIGTERM ask the loop to checkpoint and exit at the next step boundary

_stop = {"signal": None}


def install_stop_handlers():
    def handler(signum, frame):
        if _stop["signal"] is not None:  # a second Ctrl-C really interrupts
            raise KeyboardInterrupt
        _stop["signal"] = signal.Signals(signum).name
        print(f"\n{_stop['signal']} received: saving a checkpoint and exiting after this step",
              flush=True)
    _stop["signal"] = None
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def stop_requested():
    """Whether a stop signal arrived, under DDP on ANY rank: a signal that reached one process
    alone would otherwise make it stop while the others wait for it forever in their next
    all-reduce. A collective under DDP: every rank calls it at the same point of its loop."""
    stop = _stop["signal"] is not None
    if dist.is_available() and dist.is_initialized():
        stop = all_reduce_max(float(stop)) > 0
    return stop

# -----------------------------------------------------------------------------
# logging: a line a person reads, plus one JSON object per line for plots


def _whole_record(line):
    """A complete JSONL line: newline-terminated and a JSON object."""
    if not line.endswith("\n"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


class MetricsLogger:
    def __init__(self, out_dir, name, resume_step=None, enabled=True, quiet=False):
        self.path = os.path.join(out_dir, f"{name}.jsonl")
        self.enabled, self.quiet = enabled, quiet
        self.t0 = time.time()
        if enabled and resume_step is not None and os.path.exists(self.path):
            # drop lines written after the checkpoint we resume from: they will be redone. A run
            # killed mid-write can leave a cut last line: whole lines only. The rewrite is atomic,
            # so a kill right now cannot lose the log either.
            with open(self.path, errors="replace") as f:
                keep = [l for l in f
                        if _whole_record(l) and json.loads(l).get("step", 0) <= resume_step]
            tmp = f"{self.path}.tmp.{os.getpid()}"
            with open(tmp, "w") as f:
                f.writelines(keep)
            os.replace(tmp, self.path)

    def log(self, step, **metrics):
        if not self.enabled:
            return
        if not self.quiet:
            parts = [f"step {step:5d}"]
            for k, v in metrics.items():
                parts.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
            print(" | ".join(parts), flush=True)
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics, "time": round(time.time() - self.t0, 3)}) + "\n")
