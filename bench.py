"""
Speed of every training stage, measured on the real code path with random weights, on random
token ids (no data, checkpoints or network needed) or on the rows of a real preference file.

Run it:
    python bench.py                                       # CPU: tiny and GPT-2 124M, a few minutes
    python bench.py --sizes=gpt2 --stages=sft,dpo --batch_size=16 --block_size=1024 \
        --compile=True --peak_flops=989e12                # one H100, bf16: MFU of 989 TFLOP/s
    python bench.py --data=hh --block_size=512 --sizes=gpt2 --dtype=bfloat16 --steps=8
                                                          # real HH rows, as the HH recipes batch them
    python bench.py --data=path/to/prefs.jsonl ...        # the rows of any preference file
    python bench.py --out=out/bench.json                  # also write the rows as JSON
    python bench.py --help                                # every config key and its default

--data: '' (the default) times one batch of random ids again and again: every row block_size
tokens, a quarter prompt, no padding. --data=hh reads data/hh/out/prefs_train.jsonl (or
prefs_test.jsonl where only the test split was converted: python data/hh/prepare.py), and any
other value is a preference JSONL file {prompt, chosen, rejected}. Its records go through the
scripts' own loader (data/loader.py: the length policy of block_size, prompts cut from the left)
with the tokenizer of the model size (GPT-2 BPE for gpt2, bytes for tiny and micro): the pairs for
rm and dpo, prompt + chosen rows for sft (what prepare.py's sft file holds), and the distinct
prompts, cut to leave gen_tokens, for ppo and grpo. Each step then takes the next batch of the
epoch the scripts would draw (loader.batch_indices with the script's seed), right-padded, and
length-bucketed as the HH recipes do (length_buckets=True; ppo and grpo never bucket): warmup +
steps different batches, so the mean covers real lengths and padding (ppo: prompts of real
lengths, still gen_tokens new tokens each).

--variants times other versions of the sft, rm and dpo steps beside the default one, call by
call in turn (measure), as rows named stage_variant: full_logits runs the LM head at every
position and ops.token_logprobs on the (B, T, V) logits instead of ops.trained_logprobs
(the path before GPT.forward's logits_at; sft and dpo); no_buckets draws the same epoch's batches
without length bucketing (with --data); shared_prompt lays the same pairs out with each prompt
once (share_prompt=True, layouts.collate_shared_prompt; rm and dpo, the reference too, and
dpo_cached_ref_shared_prompt beside dpo_cached_ref). A summary line compares each with its
default row; tokens and FLOPs are counted alike for all (the pairs as separate rows).

For each model size (tiny: the toy world's 4-layer byte-level GPT; gpt2: GPT-2 124M, 50257
tokens) and stage it runs `warmup` untimed steps, then `steps` timed ones, and prints one row:
    sft             one optimizer step of train_sft.py: forward, sft_loss, backward, clip, AdamW
    rm              one step of train_reward_model.py: chosen + rejected in one forward,
                    reward_model_loss, backward, clip, AdamW
    dpo             one step of train_dpo.py: pair_logprobs of the policy (one forward for chosen +
                    rejected), the reference's (inference mode), the DPO loss, backward, AdamW
    dpo_cached_ref  the same with precompute_ref_logps=True: the reference's log-probs are looked up
    ppo_gen         rollout.rollout's generation: model.generate, prefill + KV-cache decoding
    ppo_gen_nocache the same tokens without a KV cache: the whole sequence again for every token
    ppo_score       the rest of rollout(): log-probs of policy and reference, reward model, critic
    ppo_update      rewards, GAE, whitening, then num_iterations clipped policy + value steps
    ppo_iter        ppo_gen + ppo_score + ppo_update: one PPO iteration (no KV-free generation)
    grpo_iter       one train_grpo.py iteration: batch_size answers (batch_size / 4 prompts x 4),
                    their group advantages, one on-policy update of the policy (no critic)
batch_size counts sequences (sft), pairs (rm, dpo: 2 x batch_size rows of block_size tokens) and
prompts (ppo: prompt_len tokens each, gen_tokens new tokens per response; one minibatch of them
per pass, in micro-batches of micro_batch_size rows of similar prompt lengths). Every PPO response
runs to gen_tokens (the end-of-text id lies outside the random vocabulary, as with a fixed
response length), so rows of equal sizes do equal work from run to run.

Columns: tokens/s (real tokens, padding not counted, through the model per second: sft B*T, rm
and dpo 2*B*T, ppo_gen new tokens B*N, ppo_score B*(P+N), ppo_update num_iterations*B*(P+N),
ppo_iter new tokens B*N, with --data the real lengths of the rows instead of T and P);
s/step (seconds per optimizer step; per generate() call, per scoring pass, per iteration for
those rows); peak MB (CUDA: torch.cuda.max_memory_allocated over the stage, weights included;
CPU: the process's peak resident set size (VmHWM, reset through /proc/self/clear_refs on Linux)
above its size before the stage's models were built, once glibc has handed back the memory of
earlier stages); act MB (the peak above state_mb: every model's weights, the trained ones'
gradients and AdamW state, counted from the tensors; what is left is activations, logits and
the allocator's slack, the part --grad_checkpoint=True shrinks); TFLOP/s achieved and MFU =
TFLOP/s / peak_flops (only when peak_flops is given; -1: the measured matmul_ceiling); pad (the
share of the padded batch positions that is padding: 0 on random ids; ppo: of the positions its
micro-batches compute, each without its padding columns). The JSON rows also hold step_s, the
seconds of every timed step, and state_mb.

Model FLOPs, PaLM appendix B (Chowdhury et al. 2022), as nanoGPT's estimate_mfu: a forward costs
per token 2 FLOPs per matmul weight, 2 * (12 * L * d^2 + d * V) with the LM head (d^2 terms: qkv
3, attention projection 1, MLP 8; biases, norms and embedding lookups left out; a scalar head
counts d instead of d * V), plus 4 * L * T * d for attention's QK^T and AV over T keys (causality
not discounted, as PaLM). Training costs 3x the forward (backward = 2 forwards), so the familiar
6N + 12 * L * T * d. Frozen models (DPO's reference, PPO's scoring) count one forward. Counted is
the work the algorithm needs (batch_flops): the trunk on each row's real tokens (T its own
length), the LM head only at the positions whose log-prob is read (those predicting a response
token); padding, and logits nothing reads, are no work, so skipping them does not raise MFU.
Generation rows have no MFU: decoding one token at a time is bound by memory, not FLOPs.

Deliberately left out: data loading and tokenisation (the scripts do them on the CPU between
steps), evaluation and checkpointing, DDP, and torch.compile for PPO (train_ppo.py does not
compile: its shapes change every iteration). Timings of a shared machine are noisy: run it on a
quiet one, with the thread count you mean (OMP_NUM_THREADS).
"""

import copy
import datetime
import json
import os
import platform
import time
from contextlib import contextmanager, nullcontext
from functools import partial
from types import SimpleNamespace

import torch

import config
import layouts
import ops
import optim
import rollout
import runtime
import train_dpo
import train_grpo
import train_ppo
import train_reward_model
import train_sft
from data.bench_rows import (GROUP, SIZES, batch_flops, checked_shapes, data_file, padding_share,
                             real_positions, shared_prompt_batch, stage_batches, timed_batches)
from model import GPT, GPTConfig, ScalarModel, sample_next

# -----------------------------------------------------------------------------
# default config: the CPU comparison (tests/bench_trl.py runs Hugging Face TRL at the same sizes)
DEFAULTS = dict(
    sizes="tiny,gpt2",          # comma-separated: micro (the tests) | tiny | gpt2 (124M) |
                                # gpt2-medium (355M) | gpt2-large (774M) | gpt2-xl (1.56B)
    stages="sft,rm,dpo,ppo",    # comma-separated: sft | rm | dpo | ppo
    batch_size=4,               # sequences (sft), pairs (rm, dpo) or prompts (ppo) per step
    block_size=256,             # tokens per training row (sft, rm, dpo)
    prompt_len=64,              # ppo: prompt tokens per row
    gen_tokens=32,              # ppo: new tokens per response
    num_iterations=4,           # ppo: optimizer steps per iteration (one minibatch per pass)
    steps=2,                    # timed steps per stage
    warmup=1,                   # untimed steps before them (allocator, kernels, torch.compile)
    device="auto",              # 'auto' | 'cpu' | 'cuda' | 'mps'
    dtype="auto",               # 'auto' (bf16 on a GPU that has it) | 'float32' | 'bfloat16'
    compile=False,              # torch.compile the trained model (sft, rm, dpo) as the scripts do
    grad_checkpoint=False,      # the scripts' key: recompute each block of the trained models in
                                # the backward (less activation memory, ~1/3 more compute)
    micro_batch_size=0,         # ppo, grpo: rows per scoring and update forward (0 = batch_size);
                                # rows of similar prompt lengths, each without its padding columns
    peak_flops=0.0,             # device peak FLOP/s for MFU: 989e12 = H100 SXM bf16; 0 = no MFU;
                                # -1 = this device's measured matmul rate at each size's width
    data="",                    # '' random ids | 'hh' (data/hh/out/prefs_train.jsonl) | a prefs JSONL
    length_buckets=True,        # with data: batch rows of similar lengths, as the HH recipes do
    variants="",                # also time, step by step beside the default: full_logits,
                                # no_buckets,shared_prompt
    seed=1337,
    out="",                     # also write the results to this JSON file
)

# -----------------------------------------------------------------------------
# FLOPs, time and memory


def sync(proc):
    """Wait for the GPU, so that a wall-clock time covers the kernels it launched."""
    if proc.device_type == "cuda":
        torch.cuda.synchronize()


def timed(fn, proc):
    """(fn(), seconds it took, kernels included)."""
    sync(proc)
    t0 = time.perf_counter()
    out = fn()
    sync(proc)
    return out, time.perf_counter() - t0


def matmul_ceiling(n_embd, proc, rows=1024, repeats=20):
    """
    FLOP/s of this device's fastest dense matmul at a model's width: a (rows, d) x (d, 4d)
    product (the MLP's first layer, the biggest of a block) in the run's dtype, best of `repeats`.
    What a stage could reach if all its counted FLOPs ran at the speed of its largest matmuls;
    with peak_flops=-1 it is the MFU's denominator, where a spec sheet's peak means little (a
    CPU's depends on its vector units, clocks and threads).
    """
    dtype = torch.bfloat16 if proc.dtype == "bfloat16" else torch.float32
    g = torch.Generator().manual_seed(0)
    a = torch.randn(rows, n_embd, generator=g).to(proc.device, dtype)
    b = torch.randn(n_embd, 4 * n_embd, generator=g).to(proc.device, dtype)
    a @ b  # warm-up: thread pool, kernel choice
    best = min(timed(lambda: a @ b, proc)[1] for _ in range(repeats))
    return 2 * rows * n_embd * 4 * n_embd / best


def state_mb(models, optimizers):
    """MB of what a step holds besides its activations: every model's weights, the gradients of
    the trained ones and the optimizers' state (AdamW: two tensors per weight), counted from the
    tensors themselves. A stage's peak minus this is its activation memory (act MB): the part
    that gradient checkpointing shrinks."""
    seen, total = set(), 0
    for model in models:
        for p in model.parameters():
            if id(p) not in seen:  # a tied weight counts once
                seen.add(id(p))
                total += p.numel() * p.element_size() * (2 if p.requires_grad else 1)
    for optimizer in optimizers:
        for state in optimizer.state.values():
            total += sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t))
    return total / 2**20


def measure(steps, cfg, proc):
    """
    Time several variants of a step side by side: {name: step(i)} -> {name: [seconds]}. Call i
    (0 .. warmup + steps - 1; with --data it picks the i-th batch) runs every variant once, the
    first warmup calls untimed; the order rotates from call to call, so that a machine whose speed
    drifts, or whatever one variant leaves in the caches, favours none of them.
    """
    names, times = list(steps), {name: [] for name in steps}
    for i in range(cfg.warmup + cfg.steps):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            _, seconds = timed(lambda: steps[name](i), proc)
            if i >= cfg.warmup:
                times[name].append(seconds)
    return times


def mean(xs):
    return sum(xs) / len(xs)


def row(size, stage, tokens, seconds, flops, cfg, peak_mb, padding=None, state=None):
    """One result. seconds: the timed steps' seconds (a list; its mean is s/step); tokens and
    flops: real tokens through the model and model FLOPs per step (means over the timed steps);
    padding: the share of the batches' positions that is padding; state: state_mb of the stage
    (act_mb is the peak above it)."""
    step_s, seconds = list(seconds), mean(seconds)
    achieved = flops / seconds if flops else None
    mfu = achieved / cfg.peak_flops if achieved and cfg.peak_flops > 0 else None
    act = max(peak_mb - state, 0.0) if peak_mb is not None and state is not None else None
    return dict(size=size, stage=stage, tokens=tokens, s_per_step=seconds,
                tokens_per_s=tokens / seconds, peak_mem_mb=peak_mb, state_mb=state, act_mb=act,
                tflops=achieved / 1e12 if achieved else None, mfu=mfu, padding=padding,
                step_s=step_s)

# -----------------------------------------------------------------------------
# the batches: random ids, or the rows of a real preference file


def full_logprobs(model, idx, loss_mask, position_ids=None, autocast=None):
    """ops.trained_logprobs' result the way it was computed before GPT.forward's logits_at:
    logits at every position (B, T, V), then ops.token_logprobs (the --full_logits variant)."""
    with autocast or nullcontext():
        logits = model(idx, position_ids=position_ids)  # (B, T, V)
    return ops.token_logprobs(logits, idx) * loss_mask[:, 1:]  # (B, T-1)


@contextmanager
def full_logits_path():
    """While active, the scripts' steps compute their log-probs with full_logprobs."""
    saved = ops.trained_logprobs
    ops.trained_logprobs = full_logprobs
    try:
        yield
    finally:
        ops.trained_logprobs = saved


def on_full_logits(step):
    """step(i) run under full_logits_path (the full_logits variant)."""
    def run(i):
        with full_logits_path():
            step(i)
    return run


def build(cls, size, T, proc, grad_checkpoint=False):
    """A randomly initialised GPT or ScalarModel of a named size on the device (grad_checkpoint:
    the scripts' key, for a model that trains)."""
    config = GPTConfig(block_size=T, dropout=0.0, **SIZES[size])
    model = cls(config).to(proc.device)
    model.transformer.grad_checkpoint = grad_checkpoint
    return model


def optimizer_for(model, proc, defaults):
    """AdamW as the stage's script configures it (fused), with its default settings."""
    return optim.configure_optimizer(model, defaults["lr"], defaults["weight_decay"],
                                      (defaults["beta1"], defaults["beta2"]), defaults["eps"],
                                      proc.device_type)


@torch.no_grad()
def generate_no_cache(model, idx, attention_mask, max_new_tokens, greedy=False, temperature=1.0,
                      generator=None):
    """
    The baseline the KV cache of GPT.generate removes: every new token runs the whole sequence so
    far (B, T0 + t) through the model again, left padding handled by the mask, and the LM head
    only at the last position. Same sampling as generate() (no EOS stopping). Returns the new
    tokens (B, max_new_tokens).
    """
    for _ in range(max_new_tokens):
        h = model.hidden_states(idx, attention_mask)[:, -1]  # (B, C)
        logits = model.lm_head(h).float() / temperature  # (B, V)
        tok = sample_next(logits, greedy=greedy, generator=generator)  # generate()'s sampler
        idx = torch.cat([idx, tok[:, None]], 1)
        attention_mask = torch.cat([attention_mask, torch.ones_like(tok[:, None])], 1)
    return idx[:, -max_new_tokens:]

# -----------------------------------------------------------------------------
# the stages: each builds its models, times its steps and returns result rows. A training stage
# times its default step and the variants of cfg.variants side by side (measure), as rows named
# stage_variant: full_logits (the LM head at every position), no_buckets (unbucketed batches)


def variant_batches(kind, size, cfg, gen, proc):
    """{'': the stage's batches, 'no_buckets': unbucketed ones, 'shared_prompt': the same pairs
    with each prompt once (kind 'pairs'), when asked}."""
    out = {"": stage_batches(kind, size, cfg, gen, proc)}
    if "no_buckets" in cfg.variant_list:
        out["no_buckets"] = stage_batches(kind, size, cfg, gen, proc, buckets=False)
    if "shared_prompt" in cfg.variant_list and kind == "pairs":
        pad = SIZES[size]["vocab_size"] - 1
        out["shared_prompt"] = [shared_prompt_batch(b, pad) for b in out[""]]
    return out


def training_rows(size, times, stage, cfg, peak, state=None):
    """The rows of a training stage's timed variants: times {row name: [seconds]}, stage the
    namespace of *_steps (batches, flops and tokens per row name and batch); peak and state: the
    stage's peak_memory_mb and state_mb."""
    rows = []
    for name, seconds in times.items():
        timed_b = timed_batches(stage.batches[name], cfg)
        masks = [real_positions(b) for b in timed_b]
        # the padding of the batches the step ran (shared-prompt rows: their own layout)
        ran = timed_batches(getattr(stage, "layouts", {}).get(name) or stage.batches[name], cfg)
        rows.append(row(size, name, mean([int(m.sum()) for m in masks]), seconds,
                        mean([stage.flops(name, b) for b in timed_b]), cfg, peak,
                        padding_share([real_positions(b) for b in ran]), state))
    return rows


def sft_steps(size, cfg, proc, gen):
    """train_sft.py's step on its own functions, one micro-batch: a namespace of steps {row name:
    step(i)}, their batches {row name: [batch]} and flops(row name, batch)."""
    model = build(GPT, size, cfg.block_size, proc, cfg.grad_checkpoint)
    optimizer = optimizer_for(model, proc, train_sft.DEFAULTS)
    wrapped = runtime.maybe_compile(model, cfg.compile)
    batches = {("sft_" + v if v else "sft"): b  # [(idx, attn, loss_mask)] each
               for v, b in variant_batches("sft", size, cfg, gen, proc).items()}

    def make_step(batches):
        def step(i):
            loss = train_sft.sft_step(wrapped, [batches[i % len(batches)]], proc)
            optim.optimizer_step(model, optimizer, 1.0, loss, update=1)
        return step

    steps = {name: make_step(b) for name, b in batches.items()}
    if "full_logits" in cfg.variant_list:
        steps["sft_full_logits"] = on_full_logits(steps["sft"])
        batches["sft_full_logits"] = batches["sft"]
    return SimpleNamespace(steps=steps, batches=batches, models=[model], optimizers=[optimizer],
                           flops=lambda name, b: 3 * batch_flops(model.config, b[1], b[2]))


def rm_steps(size, cfg, proc, gen):
    """train_reward_model.py's step (chosen and rejected rows in one forward), as sft_steps; the
    reward model has no LM head, so no full_logits variant."""
    model = build(ScalarModel, size, cfg.block_size, proc, cfg.grad_checkpoint)
    optimizer = optimizer_for(model, proc, train_reward_model.DEFAULTS)
    wrapped = runtime.maybe_compile(model, cfg.compile)
    by_variant = variant_batches("pairs", size, cfg, gen, proc)
    rm_cfg = SimpleNamespace(**train_reward_model.DEFAULTS)

    def make_step(batches, scores):  # scores: the layout's forward (layouts.score_layout)
        def step(i):
            metrics = train_reward_model.rm_step(wrapped, [batches[i % len(batches)]], scores,
                                                 rm_cfg, proc)
            optim.optimizer_step(model, optimizer, 1.0, metrics["loss"], update=1)
        return step

    steps = {("rm_" + v if v else "rm"): make_step(b, layouts.shared_prompt_scores if
                                                   v == "shared_prompt" else layouts.row_scores)
             for v, b in by_variant.items()}
    # tokens and FLOPs are counted on the pairs as separate rows: the same job for every variant
    batches = {("rm_" + v if v else "rm"): by_variant["" if v == "shared_prompt" else v]
               for v in by_variant}
    return SimpleNamespace(steps=steps, batches=batches, models=[model], optimizers=[optimizer],
                           flops=lambda name, b: 3 * batch_flops(
        model.config, b["attention_mask"]), layouts={"rm_shared_prompt": by_variant.get(
            "shared_prompt")})


def dpo_steps(size, cfg, proc, gen):
    """train_dpo.py's step on its own functions, as sft_steps: dpo (the reference's forward every
    step), dpo_cached_ref (precompute_ref_logps: looked up), and the variants (live reference)."""
    model = build(GPT, size, cfg.block_size, proc, cfg.grad_checkpoint)
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = optimizer_for(model, proc, train_dpo.DEFAULTS)
    wrapped = runtime.maybe_compile(model, cfg.compile)
    by_variant = variant_batches("pairs", size, cfg, gen, proc)
    dpo_cfg = SimpleNamespace(**train_dpo.DEFAULTS)  # the sigmoid loss, beta 0.1


    def live_ref(batch, pair_logprobs=layouts.pair_logprobs):  # train_dpo's, without a cache
        with torch.inference_mode():
            c, r, _, _ = pair_logprobs(ref, batch, proc.autocast)
        return c.clone(), r.clone()

    # what precompute_ref_logps stores before training, looked up by the batch
    cached = {id(b): live_ref(b) for b in by_variant[""]}

    def make_step(batches, ref_logps, pair_logprobs=layouts.pair_logprobs):
        loss_fn = partial(train_dpo.batch_loss, pair_logprobs=pair_logprobs, ref_logps=ref_logps,
                          cfg=dpo_cfg, autocast=proc.autocast)

        def step(i):
            metrics = train_dpo.dpo_step(wrapped, [batches[i % len(batches)]], loss_fn)
            optim.optimizer_step(model, optimizer, 1.0, metrics["loss"], update=1)
        return step

    steps = dict(dpo=make_step(by_variant[""], live_ref),
                 dpo_cached_ref=make_step(by_variant[""], lambda b: cached[id(b)]))
    batches = dict(dpo=by_variant[""], dpo_cached_ref=by_variant[""])
    if "full_logits" in cfg.variant_list:  # policy and reference both on the old path
        steps["dpo_full_logits"] = on_full_logits(steps["dpo"])
        batches["dpo_full_logits"] = by_variant[""]
    if "no_buckets" in cfg.variant_list:
        steps["dpo_no_buckets"] = make_step(by_variant["no_buckets"], live_ref)
        batches["dpo_no_buckets"] = by_variant["no_buckets"]
    if "shared_prompt" in cfg.variant_list:  # policy and reference: each prompt once
        shared, forward = by_variant["shared_prompt"], layouts.shared_prompt_pair_logprobs
        cached.update({id(b): live_ref(b, forward) for b in shared})
        steps["dpo_shared_prompt"] = make_step(shared, partial(live_ref, pair_logprobs=forward),
                                               forward)
        steps["dpo_cached_ref_shared_prompt"] = make_step(shared, lambda b: cached[id(b)],
                                                          forward)
        # counted on the pairs as separate rows, as the default rows: the same job
        batches.update(dpo_shared_prompt=by_variant[""], dpo_cached_ref_shared_prompt=by_variant[""])

    def flops(name, b):  # the policy trains (3 forwards), a live reference adds one forward
        passes = 3 if name.startswith("dpo_cached_ref") else 4
        return passes * batch_flops(model.config, b["attention_mask"], b["loss_mask"])
    shared_batches = dict.fromkeys(("dpo_shared_prompt", "dpo_cached_ref_shared_prompt"),
                                   by_variant.get("shared_prompt"))
    return SimpleNamespace(steps=steps, batches=batches, flops=flops, layouts=shared_batches,
                           models=[model, ref], optimizers=[optimizer])


TRAINING = dict(sft=sft_steps, rm=rm_steps, dpo=dpo_steps)


def bench_training(stage, size, cfg, proc, gen):
    """Time a training stage's step variants side by side; its rows (the models, the DPO
    reference included, are resident in every row's peak memory)."""
    base = runtime.start_memory(proc)
    s = TRAINING[stage](size, cfg, proc, gen)
    times = measure(s.steps, cfg, proc)
    return training_rows(size, times, s, cfg, runtime.peak_memory_mb(proc, base),
                         state_mb(s.models, s.optimizers))


def bench_ppo(size, cfg, proc, gen):
    base = runtime.start_memory(proc)
    B, N = cfg.batch_size, cfg.gen_tokens
    T = cfg.block_size if cfg.data else cfg.prompt_len + N
    # the four models of train_ppo.py: the critic starts as a copy of the reward model
    policy = build(GPT, size, T, proc, cfg.grad_checkpoint).eval()  # (the reference: no grad,
    ref = copy.deepcopy(policy).requires_grad_(False)                # so never recomputed)
    reward_model = build(ScalarModel, size, T, proc).eval().requires_grad_(False)
    critic = copy.deepcopy(reward_model).requires_grad_(True)
    critic.transformer.grad_checkpoint = cfg.grad_checkpoint  # the trained ones
    config = policy.config
    opt_policy = optimizer_for(policy, proc, train_ppo.DEFAULTS)
    opt_critic = optimizer_for(critic, proc, {**train_ppo.DEFAULTS,
                                            "lr": train_ppo.DEFAULTS["critic_lr"]})
    # one minibatch per pass, as TRL's PPO with num_mini_batches=1; no EOS penalty (none ends)
    micro = cfg.micro_batch_size or B
    ppo_cfg = SimpleNamespace(**{**train_ppo.DEFAULTS, "rollout_batch_size": B,
                                 "minibatch_size": B, "micro_batch_size": micro,
                                 "max_new_tokens": N, "num_iterations": cfg.num_iterations,
                                 "missing_eos_mode": ""})
    reward = rollout.make_reward(reward_model, None, micro)
    # rollout() reads eot_token and decodes texts: an end-of-text id outside the vocabulary is
    # never sampled, and the stand-in decoder joins ids (no tokenizer needed)
    enc = SimpleNamespace(eot_token=config.vocab_size, decode=lambda ids: " ".join(map(str, ids)))
    prompts = stage_batches("prompts", size, cfg, gen, proc)  # [(ids, attn)] left-padded (B, P)

    # time generate() inside rollout(): rollout is timed whole and split without copying it
    gen_seconds = []
    generate = policy.generate

    def timed_generate(*args, **kwargs):
        out, seconds = timed(lambda: generate(*args, **kwargs), proc)
        gen_seconds.append(seconds)
        return out
    policy.generate = timed_generate

    times = dict(gen=[], nocache=[], score=[], update=[])
    flops = dict(score=[], update=[])
    tokens = dict(score=[], computed=[])

    def update(rollouts):  # steps 4-6 of train_ppo.main: its own functions
        rewards = train_ppo.kl_shaped_rewards(rollouts.scores, rollouts.logprobs,
                                              rollouts.ref_logprobs, rollouts.resp_mask,
                                              ppo_cfg.beta)
        advantages, returns = train_ppo.compute_gae(rewards, rollouts.values, rollouts.resp_mask)
        advantages = train_ppo.whiten(advantages, rollouts.resp_mask)
        train_ppo.ppo_update(rollouts, advantages, returns, policy=(policy, opt_policy),
                             critic=(critic, opt_critic), update=1, cfg=ppo_cfg, proc=proc)

    def iteration(i, measured):
        ids, attn = prompts[i % len(prompts)]
        batch = (ids, attn, [""] * B)
        rollouts, t_rollout = timed(lambda: rollout.rollout(policy, ref, critic, reward, batch,
                                                            enc, ppo_cfg, proc), proc)
        _, t_update = timed(lambda: update(rollouts), proc)
        if measured:  # the KV-free baseline: slow, and every step a new shape, so no warm-up
            def no_cache():
                with proc.autocast:
                    return generate_no_cache(policy, ids, attn, N,
                                             temperature=ppo_cfg.temperature)
            times["nocache"].append(timed(no_cache, proc)[1])
            times["gen"].append(gen_seconds[-1])
            times["score"].append(t_rollout - gen_seconds[-1])
            times["update"].append(t_update)
            # scoring: policy and reference run the trunk on every real token and the LM head
            # on the N response positions (policy_forward); reward model and critic the trunk
            mask = torch.cat([attn, torch.ones_like(attn[:, :N])], 1)  # (B, P + N)
            heads = torch.cat([torch.zeros_like(attn), torch.ones_like(mask[:, :N])], 1)
            policy_fwd, trunk = batch_flops(config, mask, heads), batch_flops(config, mask)
            flops["score"].append(2 * policy_fwd + 2 * trunk)
            flops["update"].append(cfg.num_iterations * 3 * (policy_fwd + trunk))
            tokens["score"].append(int(mask.sum()))
            tokens["computed"].append(computed_positions(attn, N, micro))

    for i in range(cfg.warmup):
        iteration(i, False)
    for i in range(cfg.warmup, cfg.warmup + cfg.steps):
        iteration(i, True)
    return ppo_rows(size, times, flops, tokens, prompts, cfg, runtime.peak_memory_mb(proc, base),
                    state_mb([policy, ref, reward_model, critic], [opt_policy, opt_critic]))


def ppo_rows(size, times, flops, tokens, prompts, cfg, peak, state=None):
    """bench_ppo's rows: generation (with and without the KV cache), scoring, the update and the
    whole iteration, from the seconds, FLOPs and tokens of the timed iterations."""
    B, N = cfg.batch_size, cfg.gen_tokens
    t = {k: mean(v) for k, v in times.items()}
    score_tokens = mean(tokens["score"])
    # of the positions the scoring and update forwards compute: micro-batches of rows sorted by
    # prompt length, each without its padding columns (rollout.policy_forward)
    padding = 1 - score_tokens / mean(tokens["computed"])
    rows = [row(size, "ppo_gen", B * N, times["gen"], None, cfg, peak, None, state),
            row(size, "ppo_gen_nocache", B * N, times["nocache"], None, cfg, peak, None, state),
            row(size, "ppo_score", score_tokens, times["score"], mean(flops["score"]), cfg, peak,
                padding, state),
            row(size, "ppo_update", cfg.num_iterations * score_tokens, times["update"],
                mean(flops["update"]), cfg, peak, padding, state)]
    # per optimizer step, like the others
    rows[-1]["s_per_step"] = t["update"] / cfg.num_iterations
    iterations = [g + s + u for g, s, u in zip(times["gen"], times["score"], times["update"])]
    rows.append(row(size, "ppo_iter", B * N, iterations, None, cfg, peak, None, state))
    return rows


def computed_positions(prompt_mask, N, micro):
    """Positions a rollout's forwards compute for left-padded prompts (B, P) and answers of N
    tokens: micro-batches of rows sorted by prompt length, each as wide as its longest prompt
    plus N (rollout.policy_forward drops the rest)."""
    lengths = prompt_mask.sum(1).sort().values
    return sum(len(part) * (int(part.max()) + N) for part in lengths.split(micro))


def bench_grpo(size, cfg, proc, gen):
    base = runtime.start_memory(proc)
    B, N = cfg.batch_size, cfg.gen_tokens
    T = cfg.block_size if cfg.data else cfg.prompt_len + N
    policy = build(GPT, size, T, proc, cfg.grad_checkpoint).eval()
    ref = copy.deepcopy(policy).requires_grad_(False)
    reward_model = build(ScalarModel, size, T, proc).eval().requires_grad_(False)
    optimizer = optimizer_for(policy, proc, train_grpo.DEFAULTS)
    micro = cfg.micro_batch_size or B
    grpo_cfg = SimpleNamespace(**{**train_grpo.DEFAULTS, "rollout_batch_size": B,
                                  "minibatch_size": B, "micro_batch_size": micro,
                                  "max_new_tokens": N, "missing_eos_mode": ""})
    baseline, scale, loss_agg, _, kl_estimator = train_grpo.settings(grpo_cfg)
    reward = rollout.make_reward(reward_model, None, micro)
    enc = SimpleNamespace(eot_token=policy.config.vocab_size, decode=lambda ids: "")
    prompts = stage_batches("groups", size, cfg, gen, proc)  # k answers to each prompt, in a row

    def iteration(i):  # train_grpo.main's steps 1-4: its own functions
        ids, attn = prompts[i % len(prompts)]
        rollouts = rollout.rollout(policy, ref, None, reward, (ids, attn, [""] * len(ids)), enc,
                                   grpo_cfg, proc)
        adv = train_grpo.group_advantages(rollouts.scores, GROUP, baseline, scale)
        train_ppo.ppo_update(rollouts, adv[:, None] * rollouts.resp_mask, None,
                             policy=(policy, optimizer), loss_settings=train_ppo.LossSettings(
                                 loss_agg, grpo_cfg.beta, kl_estimator),
                             update=1, cfg=grpo_cfg, proc=proc)

    seconds = measure(dict(grpo_iter=iteration), cfg, proc)["grpo_iter"]
    return [row(size, "grpo_iter", B * N, seconds, None, cfg, runtime.peak_memory_mb(proc, base), None,
                state_mb([policy, ref, reward_model], [optimizer]))]


# -----------------------------------------------------------------------------


def hardware(proc):
    """A line naming the device, for the README's results."""
    if proc.device_type == "cuda":
        return torch.cuda.get_device_name()
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def format_table(rows):
    """The rows as an aligned text table; '-' where a number does not apply."""
    def fmt(v, spec):
        return "-" if v is None else format(v, spec)
    lines = [f"{'size':<11} {'stage':<28} {'tokens/s':>11} {'s/step':>9} {'peak MB':>9} "
             f"{'act MB':>8} {'TFLOP/s':>8} {'MFU':>6} {'pad':>6}"]
    for r in rows:
        lines.append(f"{r['size']:<11} {r['stage']:<28} {fmt(r['tokens_per_s'], '11.1f')} "
                     f"{fmt(r['s_per_step'], '9.4f')} {fmt(r['peak_mem_mb'], '9.1f')} "
                     f"{fmt(r.get('act_mb'), '8.1f')} {fmt(r['tflops'], '8.3f')} "
                     f"{fmt(r['mfu'], '6.1%')} {fmt(r.get('padding'), '6.1%')}")
    return "\n".join(lines)


def variant_lines(rows):
    """Each variant row against its stage's default row (same size): the ratio of the seconds per
    real token, over the mean and step by step (call i of both; the same batch unless the variant
    draws its own). Above 1: the variant is slower."""
    lines, by_key = [], {(r["size"], r["stage"]): r for r in rows}
    for r in rows:
        base_name = next((s for s in ("dpo_cached_ref", "sft", "rm", "dpo")
                          if r["stage"].startswith(s + "_") and r["stage"] != "dpo_cached_ref"),
                         None)
        base = by_key.get((r["size"], base_name))
        if base is None:
            continue
        ratio = base["tokens_per_s"] / r["tokens_per_s"]
        steps = sorted(v / base_s for v, base_s in zip(r["step_s"], base["step_s"]))
        lines.append(f"{r['size']} {r['stage']}: {ratio:.2f}x the time per real token of "
                     f"{base_name} (per step: median {steps[len(steps) // 2]:.2f}, "
                     f"{steps[0]:.2f}-{steps[-1]:.2f}, {len(steps)} steps)")
    return lines


def main(argv=None):
    cfg = config.parse_config(DEFAULTS, argv, __doc__)
    sizes, stages = checked_shapes(cfg)
    proc = runtime.init_runtime(cfg)
    meta = dict(date=datetime.date.today().isoformat(), hardware=hardware(proc), device=proc.device,
                dtype=proc.dtype, torch=torch.__version__, config=vars(cfg))
    print(f"{meta['date']}, {meta['hardware']}, torch {meta['torch']}, {proc.device} {proc.dtype}, "
          f"batch {cfg.batch_size}, block {cfg.block_size}, ppo prompt {cfg.prompt_len} + "
          f"{cfg.gen_tokens} new tokens x {cfg.num_iterations} epochs, data "
          f"{data_file(cfg.data) + (' bucketed' if cfg.length_buckets else '') if cfg.data else 'random ids'}",
          flush=True)
    # one untimed micro step first: one-time library set-up (thread pools, kernel caches) must
    # count neither as the first stage's time nor as its memory
    bench_training("sft", "micro", SimpleNamespace(**{**vars(cfg), "steps": 1, "warmup": 0,
                                                      "compile": False, "data": "",
                                                      "variant_list": []}),
                   proc, torch.Generator().manual_seed(cfg.seed))
    gen = torch.Generator().manual_seed(cfg.seed)  # the synthetic data
    rl = dict(ppo=bench_ppo, grpo=bench_grpo)
    rows = []
    for size in sizes:
        size_cfg = cfg
        if cfg.peak_flops == -1:  # MFU against what this device's matmuls reach at this width
            ceiling = matmul_ceiling(SIZES[size]["n_embd"], proc)
            meta.setdefault("matmul_ceiling_flops", {})[size] = ceiling
            size_cfg = SimpleNamespace(**{**vars(cfg), "peak_flops": ceiling})
            print(f"  {size}: matmul ceiling {ceiling / 1e12:.3f} TFLOP/s ({proc.dtype})",
                  flush=True)
        for stage in stages:
            t0 = time.time()
            rows += bench_training(stage, size, size_cfg, proc, gen) if stage in TRAINING else \
                rl[stage](size, size_cfg, proc, gen)
            print(f"  {size} {stage}: {time.time() - t0:.1f}s", flush=True)
    print(format_table(rows))
    for size in sizes:
        by_stage = {r["stage"]: r for r in rows if r["size"] == size}
        if "ppo_gen" in by_stage:
            speedup = (by_stage["ppo_gen"]["tokens_per_s"]
                       / by_stage["ppo_gen_nocache"]["tokens_per_s"])
            print(f"{size}: the KV cache generates {speedup:.1f}x faster than recomputing")
    for line in variant_lines(rows):
        print(line)
    return write_result(cfg.out, dict(meta=meta, rows=rows))


def write_result(path, result):
    """Write result as JSON to path ('' = nowhere), making its directory; returns result."""
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {path}")
    return result


if __name__ == "__main__":
    config.cli(main)
