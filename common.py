"""
The plumbing every training script shares, written once: config handling, device/precision/DDP
set-up, checkpoints, model initialisation, optimizer and schedule, logging, and the few tensor
helpers (log-probs with the one-position shift, masked means) that every loss is built from.
"""

import ast
import json
import math
import os
import inspect
import pickle
import re
import runpy
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# config: defaults live at the top of each script as a dict; a config file (python assignments)
# and --key=value arguments override them. Types must match the default's type.


class ConfigError(ValueError):
    pass


def _coerce(key, value, default, where):
    """Check that `value` may replace `default` (same type; an int is accepted for a float)."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, type(default)):
        return value
    raise ConfigError(f"{where}: config key '{key}' must be {type(default).__name__} "
                      f"(default {default!r}), got {type(value).__name__} {value!r}")


def _parse_cli_value(key, text, default):
    if isinstance(default, str):
        return text  # strings need no quotes on the command line
    if isinstance(default, bool) and text.lower() in ("true", "false", "1", "0"):
        return text.lower() in ("true", "1")
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ConfigError(f"command line: cannot parse --{key}={text}: expected a "
                          f"{type(default).__name__} like {default!r}") from None


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
    (a python file of assignments), then each --key=value, in order. Unknown keys and wrong types
    raise ConfigError naming the key and where it came from. --help prints every key and exits.
    Returns a SimpleNamespace; `vars(cfg)` is the plain dict saved in checkpoints.
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
            except Exception as e:
                raise ConfigError(f"{arg}: the config file failed to run: {e!r}") from e
            for k, v in values.items():
                if k.startswith("_") or callable(v) or type(v).__name__ == "module":
                    continue
                if k not in defaults:
                    raise ConfigError(f"{arg}: unknown config key '{k}'")
                cfg[k] = _coerce(k, v, defaults[k], arg)
        else:
            if "=" not in arg:
                raise ConfigError(f"command line: expected --key=value, got {arg!r}")
            k, text = arg[2:].split("=", 1)
            if k not in defaults:
                raise ConfigError(f"command line: unknown config key '{k}' (see --help)")
            cfg[k] = _coerce(k, _parse_cli_value(k, text, defaults[k]), defaults[k], "command line")
    return SimpleNamespace(**cfg)


def require(cond, msg):
    """Reject a bad config value before any training starts."""
    if not cond:
        raise ConfigError(msg)


def require_positive(cfg, *keys):
    for k in keys:
        require(getattr(cfg, k) > 0, f"config key '{k}' must be > 0, got {getattr(cfg, k)!r}")

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
    if ddp:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
        world_size = int(os.environ["WORLD_SIZE"])
        device = pick_device(cfg.device)
        if device.startswith("cuda"):
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    else:
        rank, local_rank, world_size = 0, 0, 1
        device = pick_device(cfg.device)
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


class CheckpointError(RuntimeError):
    pass


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
    expect_stage ('sft', 'rm', 'ppo', 'dpo') against resuming another script's run.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to load: the file holds objects other than tensors and plain "
            f"containers, which could run code (weights_only=True). Detail: {str(e)[:300]}") from None
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
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


def prepare_out_dir(out_dir, resume, overwrite=False, master=True):
    """
    Refuse to silently overwrite a previous run: an out_dir holding ckpt_last.pt needs an
    explicit --resume=True (continue it) or --overwrite=True (start again). Also fail early
    when out_dir cannot be written. Deletes nothing of a previous run: that is clear_out_dir's
    job, once every input has loaded. Returns the checkpoint path to resume from, or None.
    """
    last = os.path.join(out_dir, "ckpt_last.pt")
    if resume:
        if not os.path.isfile(last):
            raise ConfigError(f"--resume=True but {last} does not exist")
        if master:  # half-written temp files of a killed run: never read, only in the way
            for name in os.listdir(out_dir):
                if ".tmp." in name:
                    os.remove(os.path.join(out_dir, name))
        return last
    if os.path.exists(last) and not overwrite:
        raise ConfigError(f"out_dir {out_dir!r} already holds a run ({last}); pass --resume=True "
                          f"to continue it, --overwrite=True to replace it, or another out_dir")
    if master:
        try:
            os.makedirs(out_dir, exist_ok=True)
            probe = os.path.join(out_dir, f".write_test.{os.getpid()}")
            with open(probe, "w") as f:
                f.write("ok")
            os.remove(probe)
        except OSError as e:
            raise ConfigError(f"out_dir {out_dir!r} is not writable: {e}") from None
    return None


def clear_out_dir(out_dir, master=True):
    """
    A fresh run starts with fresh logs: remove the checkpoints, logs and temp files that an
    --overwrite=True run replaces. Called right before training, after every input (config,
    data, models) has loaded, so that a bad input never costs the previous run.
    """
    if not master:
        return
    for name in os.listdir(out_dir):
        if name.endswith(".jsonl") or name.startswith("ckpt_") or ".tmp." in name:
            os.remove(os.path.join(out_dir, name))

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
    if os.path.isdir(init_from) or init_from in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"):
        model = GPT.from_pretrained(init_from, dropout=dropout)
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


# ids each tokenizer can produce, known without loading it (tiktoken fetches gpt2's files)
TOKENIZER_VOCAB = {"byte": 257, "gpt2": 50257}


def model_from_checkpoint(cls, ckpt, path, dropout=0.0):
    """
    A GPT or ScalarModel built from a loaded checkpoint's model_args and weights. Fails with a
    CheckpointError naming the file when its tokenizer's ids do not fit its vocabulary (a byte
    model labelled 'gpt2' would index past its embedding at the first batch) or when the weights
    do not match the architecture (a hand-edited or mixed-up file).
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
        model = cls(GPTConfig(**{**ckpt["model_args"], "dropout": dropout}))
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError) as e:
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


class NonFiniteError(FloatingPointError):
    pass


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

# -----------------------------------------------------------------------------
# tensor helpers shared by the losses


def token_logprobs(logits, idx):
    """
    log p(idx[:, t+1] | idx[:, :t+1]) for every t: (B, T, V), (B, T) -> (B, T-1), in float32.
    The one-position shift lives here and only here: logits at t predict the token at t+1.
    Equal to log_softmax(logits[:, :-1].float(), -1).gather(2, idx[:, 1:, None]).squeeze(-1)
    (tests/test_common.py checks values and gradients against that), but computed as
        log p = logit[target] - logsumexp(logits),   d log p / d logits = onehot(target) - softmax
    so that no (B, T, V) log-softmax is stored and its backward needs no zero-filled gather
    gradient: with GPT-2's 50257-token vocabulary those passes over the logits cost more than the
    language-model head's matmul on a CPU.
    """
    return _TokenLogprobs.apply(logits, idx)


class _TokenLogprobs(torch.autograd.Function):
    """token_logprobs' forward and backward; logits (B, T, V) in any float dtype."""

    @staticmethod
    def forward(ctx, logits, idx):
        x = logits[:, :-1].float()                                  # (B, T-1, V)
        lse = torch.logsumexp(x, dim=-1)                            # (B, T-1)
        target = idx[:, 1:].unsqueeze(-1)                           # (B, T-1, 1)
        ctx.save_for_backward(logits, target, lse)
        return x.gather(2, target).squeeze(-1) - lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        logits, target, lse = ctx.saved_tensors
        # grad (B, T-1) -> d/dlogits (B, T, V): grad * (onehot(target) - softmax) at the T-1
        # positions that predict a token. The last position predicts nothing: its gradient is
        # written as zeros, never computed as exp(logit) * 0, which is NaN once a logit
        # overflows exp (above ~88.7 in float32, e.g. a logit of 9 at temperature 0.1)
        out = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)  # (B, T, V)
        out[:, -1].zero_()
        body = out[:, :-1]
        body.copy_(logits[:, :-1])  # in place from here on: softmax, times -grad, plus onehot
        body.sub_(lse.unsqueeze(-1)).exp_().mul_(-grad.unsqueeze(-1))
        body.scatter_add_(2, target, grad.unsqueeze(-1))
        return out.to(logits.dtype), None


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
    def __init__(self, out_dir, name, resume_step=None, enabled=True):
        self.path = os.path.join(out_dir, f"{name}.jsonl")
        self.enabled = enabled
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
        parts = [f"step {step:5d}"]
        for k, v in metrics.items():
            parts.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
        print(" | ".join(parts), flush=True)
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics, "time": round(time.time() - self.t0, 3)}) + "\n")
