"""
Plumbing of the update: AdamW with weight decay where it belongs, the learning-rate schedules
(SFT, the reward model and DPO: warmup and cosine; PPO and GRPO: warmup and an optional linear
decay), and the end of every update (clip, check finite, step).
"""

import math

import torch

from config import NonFiniteError
from runtime import unwrap

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


def make_optimizer(model, cfg, proc, lr=None):
    """configure_optimizer with a script's own keys (lr, weight_decay, beta1, beta2, eps)."""
    return configure_optimizer(model, lr or cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2),
                               cfg.eps, proc.device_type)


def get_lr(step, lr, min_lr, warmup_iters, max_iters):
    """SFT's, the reward model's and DPO's schedule: linear warmup for warmup_iters, then cosine
    decay from lr to min_lr at max_iters. step: the updates done before this one."""
    if step < warmup_iters:
        return lr * (step + 1) / (warmup_iters + 1)
    if step >= max_iters:
        return min_lr
    ratio = (step - warmup_iters) / max(1, max_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def rl_lr_scale(iteration, warmup_iters, max_iters, decay_lr):
    """PPO's and GRPO's schedule, as a factor of each model's lr: linear warmup over
    warmup_iters, then constant, or with decay_lr a linear decay to 0 at max_iters.
    iteration: the iterations done before this one."""
    return min(1.0, (iteration + 1) / (warmup_iters + 1)) * (
        1.0 - iteration / max_iters if decay_lr else 1.0)


def set_lr(optimizer, lr):
    for g in optimizer.param_groups:
        g["lr"] = lr


def set_rl_lr(iteration, cfg, *optimizers):
    """rl_lr_scale of cfg's schedule at `iteration`, applied to each (optimizer, its peak lr);
    returns the scale."""
    scale = rl_lr_scale(iteration, cfg.warmup_iters, cfg.max_iters, cfg.decay_lr)
    for optimizer, lr in optimizers:
        set_lr(optimizer, lr * scale)
    return scale


def check_finite(update, **quantities):
    """Stop the run, naming the update (numbered as the log numbers it: the first is 1) and the
    quantity, when a loss or gradient is NaN or inf."""
    for name, value in quantities.items():
        v = float(value)
        if not math.isfinite(v):
            raise NonFiniteError(f"step {update}: {name} is {v}; stopping without writing a "
                                 f"checkpoint (the last good one is kept)")


def optimizer_step(model, optimizer, grad_clip, loss, *, update):
    """The end of every update: clip the gradient norm (grad_clip 0 = off), stop on a non-finite
    loss or norm (naming `update`, the number of this update: the first is 1), step, zero the
    gradients. Returns the norm as a float."""
    norm = torch.nn.utils.clip_grad_norm_(unwrap(model).parameters(), grad_clip or math.inf)
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP: the global norm
    check_finite(update, loss=float(loss), grad_norm=norm.item())
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm.item()
