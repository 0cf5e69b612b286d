"""
Plumbing: one process of a run. Device, precision, seeds and DDP (init_runtime), rank-0 printing,
the all-reduce helpers that make every rank take the same decisions, and the wrappers a training
step calls through (torch.compile, DDP, FSDP) and how to see past them.
"""

import ctypes
import gc
import os
import platform
import sys
from contextlib import contextmanager, nullcontext
from types import SimpleNamespace

import torch
import torch.distributed as dist

# -----------------------------------------------------------------------------
# the process: device, precision, seeds, DDP


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
    fsdp = getattr(cfg, "fsdp", False)
    if fsdp and not ddp:
        from config import ConfigError
        raise ConfigError("fsdp=True shards the trained models over torchrun's processes: run "
                          "the script under torchrun (torchrun --standalone --nproc_per_node=N "
                          "...; N=1 works too)")
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
                           fsdp=fsdp, rank=rank, local_rank=local_rank, world_size=world_size,
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


def broadcast_parameters(*modules):
    """Under DDP, every rank takes rank 0's weights and buffers, as the DDP wrapper does when it
    is built: a module drawn from each rank's own seed (a fresh value head) becomes one model on
    every rank. Nothing in a single process. A collective: every rank calls it."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def all_reduce_grads(model, average=False):
    """Sum the gradients over DDP ranks in one flat buffer (each rank's loss is its share of the
    global loss, so the global gradient is the sum); nothing in a single process. What the DDP
    wrapper does during backward, for a script that calls its model unwrapped (PPO, GRPO).
    average=True divides the sum by the number of ranks (under FSDP the losses are scaled by
    it). A sharded model's gradients (FSDP: reduced in the backward) are left alone."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not (dist.is_available() and dist.is_initialized()) or not grads or is_sharded(model):
        return
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    if average:
        flat /= dist.get_world_size()
    for g, new in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(new.view_as(g))


def maybe_compile(model, compile):
    return torch.compile(model) if compile else model


def wrap(model, compile, proc):
    """The module a training step calls: torch.compile'd if asked, DDP-wrapped under torchrun;
    under FSDP the model itself (shard() compiled and sharded it in place)."""
    if getattr(proc, "fsdp", False):
        return model
    model = maybe_compile(model, compile)
    if proc.ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[proc.local_rank] if proc.device_type == "cuda" else None)
    return model


# -----------------------------------------------------------------------------
# FSDP: every rank keeps a 1/world_size share of a trained model's weights, gradients and AdamW
# state (PyTorch's fully_shard; docs/SCALE.md)


def is_sharded(model):
    """True for a module sharded by shard() (FSDP)."""
    if not dist.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule
    return isinstance(model, FSDPModule)


def shard(model, proc, compile=False):
    """
    Under fsdp=True, shard a GPT or ScalarModel in place with PyTorch's fully_shard: each block
    is one unit (its weights are all-gathered just before its forward and its backward, and freed
    after), the root holds the rest (embeddings, final LayerNorm, the tied LM head or the scalar
    head). Every rank first takes rank 0's weights and buffers (as DDP does: a fresh model or head
    is drawn from each rank's own seed). Call it before the optimizer is built: AdamW must hold the
    sharded parameters. The root's weights stay gathered from a forward to its backward (FSDP's own
    choice for a root), so the LM head may run on hidden_states' output; hidden_states, values and
    generate are registered as forward methods (they run the model outside forward). compile: each
    block torch.compile'd before it is sharded. Without fsdp: nothing. Returns the model.
    """
    if not getattr(proc, "fsdp", False) or not hasattr(model, "transformer"):
        return model
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
    broadcast_parameters(model)
    for block in model.transformer.h:
        if compile:
            block.compile()
        fully_shard(block)
    fully_shard(model, reshard_after_forward=False)
    for method in ("hidden_states", "values", "generate"):
        if hasattr(model, method):
            register_fsdp_forward_method(model, method)
    return model


@contextmanager
def gathered(*models):
    """
    Inside, every rank holds the whole weights of the sharded models, and their forwards talk to
    no other rank: code that runs the model on some ranks only (rank 0's held-out generation and
    samples, held-out batches that ranks hold in different numbers, generation whose length
    differs between ranks) cannot leave another rank waiting in an all-gather. Entering and
    leaving are collectives: every rank calls it. For no-grad work only. Costs the whole weights'
    memory while inside; for a model that is not sharded, nothing.
    """
    from_fsdp = [m for model in models if model is not None and is_sharded(model)
                 for m in model.modules() if is_sharded(m)]
    for m in from_fsdp:
        m.set_reshard_after_forward(False)
        m.unshard()
    try:
        yield
    finally:
        roots = {id(model) for model in models}
        for m in from_fsdp:  # blocks free their weights after each forward again; roots do not
            m.set_reshard_after_forward(id(m) not in roots)
            m.reshard()


# -----------------------------------------------------------------------------
# peak memory of a stretch of work (bench.py): the GPU's allocator, or the process's resident set


def rss_mb(field):
    """VmRSS (now) or VmHWM (peak since the last reset) of this process in MB, from /proc; falls
    back to getrusage's lifetime peak where /proc is missing (macOS), and to 0 on Windows."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    try:
        import resource  # Unix only
    except ImportError:
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if platform.system() == "Darwin" else peak / 1024


def start_memory(proc):
    """Reset the peak-memory counter; returns the baseline that peak_memory_mb subtracts."""
    gc.collect()
    if proc.device_type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return 0.0
    try:  # hand the freed memory of earlier stages back to the OS (glibc), or reusing it later
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # would not show up as growth
    except (OSError, AttributeError):
        pass
    try:  # '5' resets the kernel's VmHWM to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return rss_mb("VmRSS")


def peak_memory_mb(proc, base):
    """MB at the peak since start_memory: CUDA's max_memory_allocated, or on a CPU the process's
    peak resident set above the baseline start_memory returned."""
    if proc.device_type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return max(rss_mb("VmHWM") - base, 0.0)
