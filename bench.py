"""
Speed of every training stage, measured on the real code path with random weights and random
token ids: no data, checkpoints or network needed.

Run it:
    python bench.py                                       # CPU: tiny and GPT-2 124M, a few minutes
    python bench.py --sizes=gpt2 --stages=sft,dpo --batch_size=16 --block_size=1024 \
        --compile=True --peak_flops=989e12                # one H100, bf16: MFU of 989 TFLOP/s
    python bench.py --out=out/bench.json                  # also write the rows as JSON
    python bench.py --help                                # every config key and its default

For each model size (tiny: the toy world's 4-layer byte-level GPT; gpt2: GPT-2 124M, 50257
tokens) and stage it runs `warmup` untimed steps, then `steps` timed ones, and prints one row:
    sft             one optimizer step of train_sft.py: forward, sft_loss, backward, clip, AdamW
    rm              one step of train_reward_model.py: chosen + rejected in one forward,
                    reward_model_loss, backward, clip, AdamW
    dpo             one step of train_dpo.py: pair_logprobs of the policy (one forward for chosen +
                    rejected), the reference's (inference mode), the DPO loss, backward, AdamW
    dpo_cached_ref  the same with precompute_ref_logps=True: the reference's log-probs are looked up
    ppo_gen         train_ppo.rollout's generation: model.generate, prefill + KV-cache decoding
    ppo_gen_nocache the same tokens without a KV cache: the whole sequence again for every token
    ppo_score       the rest of rollout(): log-probs of policy and reference, reward model, critic
    ppo_update      rewards, GAE, whitening, then num_iterations clipped policy + value steps
    ppo_iter        ppo_gen + ppo_score + ppo_update: one PPO iteration (no KV-free generation)
    grpo_iter       one train_grpo.py iteration: batch_size answers (batch_size / 4 prompts x 4),
                    their group advantages, one on-policy update of the policy (no critic)
batch_size counts sequences (sft), pairs (rm, dpo: 2 x batch_size rows of block_size tokens) and
prompts (ppo: prompt_len tokens each, gen_tokens new tokens per response). Every PPO response
runs to gen_tokens (the end-of-text id lies outside the random vocabulary, as with a fixed
response length), so rows of equal sizes do equal work from run to run.

Columns: tokens/s (tokens through the model per second: sft B*T, rm and dpo 2*B*T, ppo_gen new
tokens B*N, ppo_score B*(P+N), ppo_update num_iterations*B*(P+N), ppo_iter new tokens B*N);
s/step (seconds per optimizer step; per generate() call, per scoring pass, per iteration for
those rows); peak MB (CUDA: torch.cuda.max_memory_allocated over the stage, weights included;
CPU: the process's peak resident set size (VmHWM, reset through /proc/self/clear_refs on Linux)
above its size before the stage's models were built, once glibc has handed back the memory of
earlier stages); TFLOP/s achieved and MFU = TFLOP/s /
peak_flops (only when peak_flops is given).

Model FLOPs, PaLM appendix B (Chowdhury et al. 2022), as nanoGPT's estimate_mfu: a forward costs
per token 2 FLOPs per matmul weight, 2 * (12 * L * d^2 + d * V) with the LM head (d^2 terms: qkv
3, attention projection 1, MLP 8; biases, norms and embedding lookups left out; a scalar head
counts d instead of d * V), plus 4 * L * T * d for attention's QK^T and AV over T keys (causality
not discounted, as PaLM). Training costs 3x the forward (backward = 2 forwards), so the familiar
6N + 12 * L * T * d. Frozen models (DPO's reference, PPO's scoring) count one forward.
Generation rows have no MFU: decoding one token at a time is bound by memory, not FLOPs.

Deliberately left out: data loading and tokenisation (the scripts do them on the CPU between
steps), evaluation and checkpointing, DDP, and torch.compile for PPO (train_ppo.py does not
compile: its shapes change every iteration). Timings of a shared machine are noisy: run it on a
quiet one, with the thread count you mean (OMP_NUM_THREADS).
"""

import copy
import ctypes
import datetime
import gc
import json
import os
import platform
import time
from types import SimpleNamespace

import torch

import common
import train_dpo
import train_grpo
import train_ppo
import train_reward_model
import train_sft
from model import GPT, GPTConfig, ScalarModel, sample_next

# -----------------------------------------------------------------------------
# default config: the CPU comparison (tests/bench_trl.py runs Hugging Face TRL at the same sizes)
DEFAULTS = dict(
    sizes="tiny,gpt2",          # comma-separated: micro (the tests) | tiny | gpt2 (124M)
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
    peak_flops=0.0,             # device peak FLOP/s for MFU: 989e12 = H100 SXM bf16; 0 = no MFU
    seed=1337,
    out="",                     # also write the results to this JSON file
)

# model shapes; vocab 257 is the byte tokenizer's, 50257 GPT-2's
SIZES = dict(
    micro=dict(n_layer=1, n_head=2, n_embd=32, vocab_size=257),
    tiny=dict(n_layer=4, n_head=4, n_embd=128, vocab_size=257),
    gpt2=dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257),
)
STAGES = ("sft", "rm", "dpo", "ppo", "grpo")

# -----------------------------------------------------------------------------
# FLOPs, time and memory


def forward_flops(config, T, lm_head=True):
    """Forward FLOPs per token of a sequence of T tokens (PaLM appendix B, see the docstring)."""
    L, d = config.n_layer, config.n_embd
    weights = 12 * L * d * d + (d * config.vocab_size if lm_head else d)
    return 2 * weights + 4 * L * T * d


def sync(rt):
    """Wait for the GPU, so that a wall-clock time covers the kernels it launched."""
    if rt.device_type == "cuda":
        torch.cuda.synchronize()


def timed(fn, rt):
    """(fn(), seconds it took, kernels included)."""
    sync(rt)
    t0 = time.perf_counter()
    out = fn()
    sync(rt)
    return out, time.perf_counter() - t0


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


def start_memory(rt):
    """Reset the peak-memory counter; returns the baseline that peak_memory_mb subtracts."""
    gc.collect()
    if rt.device_type == "cuda":
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


def peak_memory_mb(rt, base):
    if rt.device_type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return max(rss_mb("VmHWM") - base, 0.0)


def measure(step, cfg, rt):
    """Run step() warmup times untimed, then steps times; the mean seconds of the timed ones."""
    for _ in range(cfg.warmup):
        step()
        sync(rt)
    return sum(timed(step, rt)[1] for _ in range(cfg.steps)) / cfg.steps


def row(size, stage, tokens, seconds, flops, cfg, peak_mb):
    """One result: tokens through the model per step, seconds per step, model FLOPs per step."""
    achieved = flops / seconds if flops else None
    mfu = achieved / cfg.peak_flops if achieved and cfg.peak_flops > 0 else None
    return dict(size=size, stage=stage, tokens=tokens, s_per_step=seconds,
                tokens_per_s=tokens / seconds, peak_mem_mb=peak_mb,
                tflops=achieved / 1e12 if achieved else None, mfu=mfu)

# -----------------------------------------------------------------------------
# synthetic data and models


def random_ids(B, T, V, gen):
    return torch.randint(0, V, (B, T), generator=gen)  # (B, T)


def sft_batch(B, T, V, gen, device):
    """idx (B, T), loss_mask (B, T): a quarter of prompt, then the trained answer; no padding."""
    idx = random_ids(B, T, V, gen)
    loss_mask = torch.ones(B, T, dtype=torch.long)
    loss_mask[:, :T // 4] = 0
    return idx.to(device), loss_mask.to(device)


def pair_batch(B, T, V, gen, device):
    """A loader.collate_pairs-style batch: idx, attention_mask, loss_mask (2B, T), rows 0..B-1
    chosen and B..2B-1 rejected; both answers follow the same prompt (a quarter of each row)."""
    idx, loss_mask = sft_batch(2 * B, T, V, gen, device)
    idx[B:, :T // 4] = idx[:B, :T // 4]
    return dict(idx=idx, attention_mask=torch.ones_like(idx), loss_mask=loss_mask)


def build(cls, size, T, rt):
    """A randomly initialised GPT or ScalarModel of a named size on the device."""
    config = GPTConfig(block_size=T, dropout=0.0, **SIZES[size])
    return cls(config).to(rt.device)


def optimizer_for(model, rt, defaults):
    """AdamW as the stage's script configures it (fused), with its default settings."""
    return common.configure_optimizer(model, defaults["lr"], defaults["weight_decay"],
                                      (defaults["beta1"], defaults["beta2"]), defaults["eps"],
                                      rt.device_type)


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
# the stages: each builds its models, times its steps and returns result rows


def bench_sft(size, cfg, rt, gen):
    base = start_memory(rt)
    B, T = cfg.batch_size, cfg.block_size
    model = build(GPT, size, T, rt)
    optimizer = optimizer_for(model, rt, train_sft.DEFAULTS)
    config = model.config
    trained = common.maybe_compile(model, cfg.compile)
    idx, loss_mask = sft_batch(B, T, config.vocab_size, gen, rt.device)
    micro = [(idx, torch.ones_like(idx), loss_mask)]

    def step():  # train_sft.py's step: its own functions
        loss = train_sft.sft_step(trained, micro, rt)
        common.optimizer_step(model, optimizer, 1.0, 1, loss)

    seconds = measure(step, cfg, rt)
    flops = 3 * B * T * forward_flops(config, T)
    return [row(size, "sft", B * T, seconds, flops, cfg, peak_memory_mb(rt, base))]


def bench_rm(size, cfg, rt, gen):
    base = start_memory(rt)
    B, T = cfg.batch_size, cfg.block_size
    model = build(ScalarModel, size, T, rt)
    optimizer = optimizer_for(model, rt, train_reward_model.DEFAULTS)
    config = model.config
    trained = common.maybe_compile(model, cfg.compile)
    micro = [pair_batch(B, T, config.vocab_size, gen, rt.device)]
    rm_cfg = SimpleNamespace(**train_reward_model.DEFAULTS)

    def step():  # train_reward_model.py's step: chosen and rejected rows in one forward
        metrics = train_reward_model.rm_step(trained, micro, rm_cfg, rt)
        common.optimizer_step(model, optimizer, 1.0, 1, metrics["loss"])

    seconds = measure(step, cfg, rt)
    flops = 3 * 2 * B * T * forward_flops(config, T, lm_head=False)
    return [row(size, "rm", 2 * B * T, seconds, flops, cfg, peak_memory_mb(rt, base))]


def bench_dpo(size, cfg, rt, gen):
    base = start_memory(rt)
    B, T = cfg.batch_size, cfg.block_size
    model = build(GPT, size, T, rt)
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = optimizer_for(model, rt, train_dpo.DEFAULTS)
    config = model.config
    trained = common.maybe_compile(model, cfg.compile)
    micro = [pair_batch(B, T, config.vocab_size, gen, rt.device)]
    dpo_cfg = SimpleNamespace(**train_dpo.DEFAULTS)  # the sigmoid loss, beta 0.1

    def live_ref(batch):  # train_dpo.main's reference without a cache
        with torch.inference_mode():
            c, r, _, _ = train_dpo.pair_logprobs(ref, batch, rt.autocast)
        return c.clone(), r.clone()

    cached = live_ref(micro[0])  # what precompute_ref_logps stores before training

    def step(ref_logps):  # train_dpo.py's step: its own functions
        metrics = train_dpo.dpo_step(trained, micro, ref_logps, dpo_cfg, rt)
        common.optimizer_step(model, optimizer, 1.0, 1, metrics["loss"])

    # the LM head runs at the response positions only (3/4 of each row here)
    train_flops = 3 * 2 * B * T * forward_flops(config, T)
    ref_flops = 2 * B * T * forward_flops(config, T)
    seconds = measure(lambda: step(live_ref), cfg, rt)
    rows = [row(size, "dpo", 2 * B * T, seconds, train_flops + ref_flops, cfg, None)]
    seconds = measure(lambda: step(lambda batch: cached), cfg, rt)
    rows.append(row(size, "dpo_cached_ref", 2 * B * T, seconds, train_flops, cfg, None))
    peak = peak_memory_mb(rt, base)  # the reference is resident in both rows
    for r in rows:
        r["peak_mem_mb"] = peak
    return rows


def bench_ppo(size, cfg, rt, gen):
    base = start_memory(rt)
    B, P, N = cfg.batch_size, cfg.prompt_len, cfg.gen_tokens
    # the four models of train_ppo.py: the critic starts as a copy of the reward model
    policy = build(GPT, size, P + N, rt).eval()
    ref = copy.deepcopy(policy).requires_grad_(False)
    reward_model = build(ScalarModel, size, P + N, rt).eval().requires_grad_(False)
    critic = copy.deepcopy(reward_model).requires_grad_(True)
    config = policy.config
    opt_policy = optimizer_for(policy, rt, train_ppo.DEFAULTS)
    opt_critic = optimizer_for(critic, rt, {**train_ppo.DEFAULTS,
                                            "lr": train_ppo.DEFAULTS["critic_lr"]})
    # one minibatch per pass, as TRL's PPO with num_mini_batches=1; no EOS penalty (none ends)
    ppo_cfg = SimpleNamespace(**{**train_ppo.DEFAULTS, "rollout_batch_size": B,
                                 "minibatch_size": B, "micro_batch_size": B, "max_new_tokens": N,
                                 "num_iterations": cfg.num_iterations, "missing_eos_mode": ""})
    reward = train_ppo.make_reward(reward_model, None, B)
    # rollout() reads eot_token and decodes texts: an end-of-text id outside the vocabulary is
    # never sampled, and the stand-in decoder joins ids (the gpt2 BPE would need a network)
    enc = SimpleNamespace(eot_token=config.vocab_size, decode=lambda ids: " ".join(map(str, ids)))
    prompt_ids = random_ids(B, P, config.vocab_size, gen).to(rt.device)  # (B, P), no padding
    batch = (prompt_ids, torch.ones_like(prompt_ids), [""] * B)

    # time generate() inside rollout(): rollout is timed whole and split without copying it
    gen_seconds = []
    generate = policy.generate

    def timed_generate(*args, **kwargs):
        out, seconds = timed(lambda: generate(*args, **kwargs), rt)
        gen_seconds.append(seconds)
        return out
    policy.generate = timed_generate

    times = dict(gen=[], nocache=[], score=[], update=[])

    def update(ro):  # steps 4-6 of train_ppo.main: its own functions
        rewards = train_ppo.kl_shaped_rewards(ro.scores, ro.logprobs, ro.ref_logprobs,
                                              ro.resp_mask, ppo_cfg.beta)
        advantages, returns = train_ppo.compute_gae(rewards, ro.values, ro.resp_mask)
        advantages = train_ppo.whiten(advantages, ro.resp_mask)
        train_ppo.ppo_update(ro, advantages, returns, policy, opt_policy, ppo_cfg, rt, 1, critic,
                             opt_critic)

    def iteration(measured):
        ro, t_rollout = timed(lambda: train_ppo.rollout(policy, ref, critic, reward, batch, enc,
                                                        ppo_cfg, rt), rt)
        _, t_update = timed(lambda: update(ro), rt)
        if measured:  # the KV-free baseline: slow, and every step a new shape, so no warm-up
            def no_cache():
                with rt.autocast:
                    return generate_no_cache(policy, prompt_ids, batch[1], N,
                                             temperature=ppo_cfg.temperature)
            times["nocache"].append(timed(no_cache, rt)[1])
            times["gen"].append(gen_seconds[-1])
            times["score"].append(t_rollout - gen_seconds[-1])
            times["update"].append(t_update)

    for _ in range(cfg.warmup):
        iteration(False)
    for _ in range(cfg.steps):
        iteration(True)
    t = {k: sum(v) / len(v) for k, v in times.items()}
    peak = peak_memory_mb(rt, base)
    # scoring: policy and reference run the trunk on P + N tokens and the LM head on N of them
    # (policy_forward); the reward model and the critic run the trunk only
    trunk, head = forward_flops(config, P + N, lm_head=False), 2 * config.n_embd * config.vocab_size
    policy_fwd = B * (P + N) * trunk + B * N * head
    score_flops = 2 * policy_fwd + 2 * B * (P + N) * trunk
    update_flops = cfg.num_iterations * 3 * (policy_fwd + B * (P + N) * trunk)
    rows = [row(size, "ppo_gen", B * N, t["gen"], None, cfg, peak),
            row(size, "ppo_gen_nocache", B * N, t["nocache"], None, cfg, peak),
            row(size, "ppo_score", B * (P + N), t["score"], score_flops, cfg, peak),
            row(size, "ppo_update", cfg.num_iterations * B * (P + N), t["update"], update_flops, cfg,
                peak)]
    rows[-1]["s_per_step"] = t["update"] / cfg.num_iterations  # per optimizer step, like the others
    iter_seconds = t["gen"] + t["score"] + t["update"]
    rows.append(row(size, "ppo_iter", B * N, iter_seconds, None, cfg, peak))
    return rows

def bench_grpo(size, cfg, rt, gen):
    base = start_memory(rt)
    B, P, N, k = cfg.batch_size, cfg.prompt_len, cfg.gen_tokens, 4
    policy = build(GPT, size, P + N, rt).eval()
    ref = copy.deepcopy(policy).requires_grad_(False)
    reward_model = build(ScalarModel, size, P + N, rt).eval().requires_grad_(False)
    optimizer = optimizer_for(policy, rt, train_grpo.DEFAULTS)
    grpo_cfg = SimpleNamespace(**{**train_grpo.DEFAULTS, "rollout_batch_size": B,
                                  "minibatch_size": B, "micro_batch_size": B, "max_new_tokens": N,
                                  "missing_eos_mode": ""})
    baseline, scale, loss_agg, _, kl_estimator = train_grpo.settings(grpo_cfg)
    reward = train_ppo.make_reward(reward_model, None, B)
    enc = SimpleNamespace(eot_token=policy.config.vocab_size, decode=lambda ids: "")
    prompt_ids = random_ids(max(B // k, 1), P, policy.config.vocab_size, gen).to(rt.device)
    prompt_ids = prompt_ids.repeat_interleave(k, 0)[:B]  # k answers to each prompt, in a row
    batch = (prompt_ids, torch.ones_like(prompt_ids), [""] * B)

    def iteration():  # train_grpo.main's steps 1-4: its own functions
        ro = train_ppo.rollout(policy, ref, None, reward, batch, enc, grpo_cfg, rt)
        adv = train_grpo.group_advantages(ro.scores, k, baseline, scale)
        train_ppo.ppo_update(ro, adv[:, None] * ro.resp_mask, None, policy, optimizer, grpo_cfg,
                             rt, 1, kl_coef=grpo_cfg.beta, kl_estimator=kl_estimator,
                             loss_agg=loss_agg)

    seconds = measure(iteration, cfg, rt)
    return [row(size, "grpo_iter", B * N, seconds, None, cfg, peak_memory_mb(rt, base))]

# -----------------------------------------------------------------------------


def hardware(rt):
    """A line naming the device, for the README's results."""
    if rt.device_type == "cuda":
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
    lines = [f"{'size':<6} {'stage':<16} {'tokens/s':>11} {'s/step':>9} {'peak MB':>9} "
             f"{'TFLOP/s':>8} {'MFU':>6}"]
    for r in rows:
        lines.append(f"{r['size']:<6} {r['stage']:<16} {fmt(r['tokens_per_s'], '11.1f')} "
                     f"{fmt(r['s_per_step'], '9.4f')} {fmt(r['peak_mem_mb'], '9.1f')} "
                     f"{fmt(r['tflops'], '8.3f')} {fmt(r['mfu'], '6.1%')}")
    return "\n".join(lines)


def checked_shapes(cfg):
    """The sizes and stages lists of cfg, once they and the shape keys are checked (bench.py and
    tests/bench_trl.py share these keys)."""
    sizes = [s.strip() for s in cfg.sizes.split(",") if s.strip()]
    stages = [s.strip() for s in cfg.stages.split(",") if s.strip()]
    common.require(sizes and all(s in SIZES for s in sizes),
                   f"sizes={cfg.sizes!r}: a comma-separated list of {', '.join(SIZES)}")
    common.require(stages and all(s in STAGES for s in stages),
                   f"stages={cfg.stages!r}: a comma-separated list of {', '.join(STAGES)}")
    positive = (lambda v: v > 0, "> 0")
    common.validate(cfg, {"prompt_len": positive, "gen_tokens": positive, "steps": positive,
                          "warmup": (lambda v: v >= 0, ">= 0"),
                          "peak_flops": (lambda v: v >= 0, ">= 0")})
    return sizes, stages


def main(argv=None):
    cfg = common.parse_config(DEFAULTS, argv, __doc__)
    sizes, stages = checked_shapes(cfg)
    rt = common.init_runtime(cfg)
    meta = dict(date=datetime.date.today().isoformat(), hardware=hardware(rt), device=rt.device,
                dtype=rt.dtype, torch=torch.__version__, config=vars(cfg))
    print(f"{meta['date']}, {meta['hardware']}, torch {meta['torch']}, {rt.device} {rt.dtype}, "
          f"batch {cfg.batch_size}, block {cfg.block_size}, ppo prompt {cfg.prompt_len} + "
          f"{cfg.gen_tokens} new tokens x {cfg.num_iterations} epochs", flush=True)
    # one untimed micro step first: one-time library set-up (thread pools, kernel caches) must
    # count neither as the first stage's time nor as its memory
    bench_sft("micro", SimpleNamespace(**{**vars(cfg), "steps": 1, "warmup": 0, "compile": False}),
              rt, torch.Generator().manual_seed(cfg.seed))
    gen = torch.Generator().manual_seed(cfg.seed)  # the synthetic data
    bench = dict(sft=bench_sft, rm=bench_rm, dpo=bench_dpo, ppo=bench_ppo, grpo=bench_grpo)
    rows = []
    for size in sizes:
        for stage in stages:
            t0 = time.time()
            rows += bench[stage](size, cfg, rt, gen)
            print(f"  {size} {stage}: {time.time() - t0:.1f}s", flush=True)
    print(format_table(rows))
    for size in sizes:
        by_stage = {r["stage"]: r for r in rows if r["size"] == size}
        if "ppo_gen" in by_stage:
            speedup = (by_stage["ppo_gen"]["tokens_per_s"]
                       / by_stage["ppo_gen_nocache"]["tokens_per_s"])
            print(f"{size}: the KV cache generates {speedup:.1f}x faster than recomputing")
    result = dict(meta=meta, rows=rows)
    if cfg.out:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
        with open(cfg.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {cfg.out}")
    return result


if __name__ == "__main__":
    common.cli(main)
