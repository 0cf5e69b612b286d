"""
COMPUTED GPU memory of the GPT-2 recipes (docs/SCALE.md and the headers of config/*_gpt2_*_hh.py),
per GPU: one GPU with gradient checkpointing, and 8 GPUs with FSDP and checkpointing. A
development tool: nothing in nanoRLHF imports it. Nothing here is measured: it counts bytes
from the model's shapes and the recipes' batches (docs/SCALE.md compares the count with
bench.py's CPU measurement at GPT-2 124M).

    python dev/scale_memory.py                  # the table, in GB
    python dev/scale_memory.py --gpus=4         # FSDP over 4 GPUs instead of 8

What it counts, in bytes (bf16 autocast over float32 master weights, as the recipes train):
  trained model    16 per parameter: weights 4, gradients 4, AdamW's two moments 8; under FSDP
                   1/gpus of it, plus the root's weights and one block whole while it runs
  frozen model     4 per parameter, whole on every GPU (PPO's reference and reward model; DPO's
                   reference only without precompute_ref_logps, which the recipes turn on)
  activations      per token of a micro-batch: without checkpointing ACT_PLAIN * d per block (the
                   tensors a block keeps for its backward), with it 4 * d per block (the block's
                   input, fp32) plus one block's ACT_PLAIN * d while it is recomputed
  logits           (2 + 4 + 4) * V per position whose log-prob is read: the bf16 logits, their
                   fp32 copy (model.logprobs_of) and its gradient; with checkpointing only for
                   GPT.logprob_chunk positions at a time (model.head_logprobs)
  PPO's rollout    the KV cache of a whole rollout (2 * L * rows * (P + N) * d * 2 bytes, bf16) and,
                   under FSDP, the policy's and critic's whole weights (runtime.gathered)
The peak is the larger of the update's (states, activations, logits) and, for PPO, the
rollout's (states, KV cache, gathered weights); allocator slack, temporaries and CUDA's own
context are not counted.
"""

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from config import cli, parse_config
from data.bench_rows import SIZES
from model import GPT, GPTConfig

DEFAULTS = dict(
    gpus=8,                     # FSDP over this many GPUs
    sizes="gpt2,gpt2-medium,gpt2-large,gpt2-xl",
)
# bytes a block keeps for its backward per token and unit of width with 16-bit activations:
# Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models"),
# 34 without the attention scores (scaled-dot-product attention keeps none); an upper count
ACT_PLAIN = 34
ACT_CKPT = 4  # the block's input, kept in fp32 (the residual stream under autocast)
GB = 2**30
# the recipes' micro-batches per GPU (config/*_gpt2_*_hh.py): rows x tokens through the model,
# and the positions whose log-prob is read per row (HH at block_size 512: SPEED.md's share of
# response tokens); PPO on 8 GPUs: 8 prompts per GPU, micro-batches of 2 (the same 64 a step)
RECIPES = dict(
    sft=dict(rows=8, T=512, read=0.25 * 512, trained=1, frozen=0),
    rm=dict(rows=16, T=512, read=0, trained=1, frozen=0),  # 8 pairs as shared-prompt rows
    dpo=dict(rows=8, T=512, read=0.37 * 512, trained=1, frozen=0),  # 8 pairs, shared prompts
    ppo=dict(rows=8, T=512, read=128, trained=2, frozen=2, rollout_rows=64, rollout_T=512,
             sharded=dict(rows=2, rollout_rows=8)),
)


def n_params(size):
    """Parameters of a GPT-2 size (the tied embedding once), counted on a model without storage."""
    with torch.device("meta"):
        model = GPT(GPTConfig(block_size=1024, **SIZES[size]))
    return model.num_params(), model.config


def memory(size, stage, gpus=1, checkpointing=True):
    """Bytes per GPU of one recipe: a dict of the parts and the peak."""
    N, c = n_params(size)
    r = RECIPES[stage]
    r = {**r, **r.get("sharded", {})} if gpus > 1 else r
    L, d, V = c.n_layer, c.n_embd, c.vocab_size
    block = 12 * d * d + 13 * d  # one block's weights
    root = (V + 1024) * d + 2 * d  # embeddings and final LayerNorm
    trained = r["trained"] * (16 * N / gpus + (4 * (root + block) if gpus > 1 else 0))
    frozen = r["frozen"] * 4 * N
    tokens = r["rows"] * r["T"]
    per_block = ACT_CKPT * d * L + ACT_PLAIN * d if checkpointing else ACT_PLAIN * d * L
    models_in_backward = 2 if stage == "ppo" else 1  # PPO: policy and critic in one backward
    acts = models_in_backward * tokens * per_block
    read = r["rows"] * r["read"]  # positions whose log-prob is read
    logits = (min(read, GPT.logprob_chunk) if checkpointing else read) * V * (2 + 4 + 4)
    out = dict(params=N, trained=trained, frozen=frozen, activations=acts, logits=logits)
    update = trained + frozen + acts + logits
    rollout = 0.0
    if stage == "ppo":
        kv = 2 * L * r["rollout_rows"] * r["rollout_T"] * d * 2
        gathered = 2 * 4 * N * (1 - 1 / gpus) if gpus > 1 else 0.0
        rollout = trained + frozen + kv + gathered
        out.update(kv_cache=kv, gathered=gathered)
    out.update(update=update, rollout=rollout, peak=max(update, rollout))
    return out


def table(cfg):
    sizes = [s.strip() for s in cfg.sizes.split(",")]
    lines = [f"{'size':<12} {'params':>7} {'stage':<5} {'1 GPU, ckpt':>12} {'1 GPU, plain':>13} "
             f"{f'{cfg.gpus} GPUs FSDP, ckpt':>19}   (GB per GPU, computed)"]
    for size in sizes:
        for stage in RECIPES:
            one, plain, many = (memory(size, stage, g, ck) for g, ck in
                                ((1, True), (1, False), (cfg.gpus, True)))
            lines.append(f"{size:<12} {one['params'] / 1e6:>6.0f}M {stage:<5} "
                         f"{one['peak'] / GB:>12.1f} {plain['peak'] / GB:>13.1f} "
                         f"{many['peak'] / GB:>19.1f}")
    return lines


def main(argv=None):
    cfg = parse_config(DEFAULTS, argv, __doc__)
    print("\n".join(table(cfg)))
    return cfg


if __name__ == "__main__":
    cli(main)
