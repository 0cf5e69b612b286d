"""
Supervised fine-tuning (SFT): the first stage. Teach a base model to answer in the chat template

    "\\n\\nHuman: {prompt}\\n\\nAssistant:" + " {response}" + <|endoftext|>

with plain next-token cross-entropy on the response tokens (and their EOS) only.

Run it:
    python train_sft.py                                  # offline CPU default: the toy world,
                                                         # a ~0.8M-param byte-level GPT from scratch
    python train_sft.py config/sft_gpt2_hh.py            # one GPU: GPT-2 124M on Anthropic HH
    torchrun --standalone --nproc_per_node=8 train_sft.py config/sft_gpt2_hh.py \
        --batch_size=8 --grad_accum=1                    # 8 GPUs, the same 64 rows per step
    python train_sft.py --help                           # every config key and its default
    python train_sft.py --out_dir=out/sft_toy --resume=True   # continue an interrupted run

The data is JSONL in any format data/loader.py reads for SFT: {"prompt", "response"},
{"prompt", "completion"} or {"messages": [...]} (every assistant turn is trained).
Toy data: `python data/toy/prepare.py`; HH data: `python data/hh/prepare.py`.

What it deliberately leaves out: sequence packing (each example is one right-padded row, so a
batch wastes some compute on padding but never attends across examples), LoRA and other
parameter-efficient methods, mixed-in pretraining data, and a learning-rate finder.
"""

import math
import os
import time

import torch

import common
from common import print0
from data import loader
from model import GPT, GPTConfig, position_ids_from_mask
from tokenizer import decode, get_tokenizer

# -----------------------------------------------------------------------------
# default config: the offline toy run (config/sft_toy.py holds the same values)
DEFAULTS = dict(
    # I/O
    out_dir="out/sft_toy",
    init_from="scratch",        # 'scratch' | 'gpt2'...'gpt2-xl' | a Hugging Face dir | a .pt file
    tokenizer="byte",           # used with init_from='scratch'; otherwise the source decides
    train_data="data/toy/out/sft_train.jsonl",
    val_data="data/toy/out/sft_val.jsonl",
    # model (only for init_from='scratch')
    n_layer=4,
    n_head=4,
    n_embd=128,
    bias=True,
    dropout=0.0,
    # data
    block_size=128,             # tokens per example: longer prompts lose their start, too-long
                                # answers are dropped (data/loader.py prints the counts)
    batch_size=16,              # rows per micro-step (per process)
    grad_accum=1,               # micro-steps per optimizer step
    length_buckets=False,       # batch examples of similar length: less padding, but in the toy
                                # world length tracks the answer's style, so batches would be
                                # one style at a time (noisier steps); on for HH
    # optimisation: AdamW, linear warmup then cosine decay to min_lr
    max_iters=1200,
    lr=5e-3,
    min_lr=5e-4,
    warmup_iters=50,
    weight_decay=0.1,
    beta1=0.9,
    beta2=0.95,
    eps=1e-8,
    grad_clip=1.0,              # clip the global grad norm at this value; 0 = off
    # evaluation, samples, logging, checkpoints
    log_interval=50,
    eval_interval=200,
    eval_iters=16,              # held-out batches per evaluation (-1 = all of them)
    num_samples=3,              # held-out prompts answered at each eval
    sample_tokens=64,           # max new tokens per sampled answer
    sample_temperature=0.0,     # 0 = greedy
    ckpt_interval=400,
    # system
    seed=1337,
    device="auto",              # 'auto' | 'cpu' | 'cuda' | 'mps'
    dtype="auto",               # 'auto' (bf16 on a GPU that has it, else fp32) | 'float32' | 'bfloat16'
    compile=False,
    resume=False,
    overwrite=False,
    stop_iter=-1,               # stop with a checkpoint after this many steps (-1: run to max_iters)
)

# -----------------------------------------------------------------------------
# the loss


def sft_loss(logits, idx, loss_mask):
    """
    Masked next-token cross-entropy, the SFT objective of InstructGPT (Ouyang et al. 2022, 3.5):

        loss = - sum_t m[t+1] * log p(idx[t+1] | idx[:t+1]) / sum_t m[t+1]

    logits (B, T, V), idx (B, T) long, loss_mask (B, T) with 1 on response tokens and their EOS.
    Label t+1 is trained iff loss_mask[:, t+1] == 1: prompt and padding add exactly zero loss and
    zero gradient, and the mean is over the trained tokens of the whole batch (not per row).
    """
    logp = common.token_logprobs(logits, idx)  # (B, T-1): log p of the token at t+1
    return -common.masked_mean(logp, loss_mask[:, 1:])

# -----------------------------------------------------------------------------
# evaluation helpers


@torch.no_grad()
def estimate_val_loss(model, batches, rt):
    """Token-weighted mean SFT loss over held-out batches (this rank's share, then averaged)."""
    model.eval()
    total, count = 0.0, 0.0
    for idx, attn, loss_mask in batches:
        idx, attn, loss_mask = idx.to(rt.device), attn.to(rt.device), loss_mask.to(rt.device)
        with rt.autocast:
            logits = model(idx, attention_mask=attn)
        n = loss_mask[:, 1:].sum().item()
        total += sft_loss(logits, idx, loss_mask).item() * n
        count += n
    model.train()
    # averaging the sums over ranks keeps the result a mean over every rank's tokens
    return common.all_reduce_mean(total) / max(common.all_reduce_mean(count), 1.0)


def split_last_answer(ids, mask):
    """(prompt ids, answer ids) of an encoded example: the answer is the last run of mask == 1,
    so this works for single-turn and multi-turn (messages) data alike."""
    end = len(mask)
    while end > 0 and mask[end - 1] == 0:
        end -= 1
    start = end
    while start > 0 and mask[start - 1] == 1:
        start -= 1
    return list(ids[:start]), list(ids[start:end])


@torch.no_grad()
def sample_answers(model, enc, prompts, max_new_tokens, temperature, seed, device):
    """Answer a list of prompts (token-id lists), left-padded into one batch. A fixed generator
    seed makes the samples comparable from one eval to the next and leaves the global RNG alone
    (so evaluating does not change the training run). Returns one list of answer ids per prompt."""
    model.eval()
    idx, attn = loader.collate_left(prompts, enc.eot_token)  # (B, P): every prompt ends at P-1
    gen = torch.Generator(device=device).manual_seed(seed)
    greedy = temperature == 0.0
    tokens, mask, _ = model.generate(idx.to(device), attention_mask=attn.to(device),
                                     max_new_tokens=max_new_tokens, greedy=greedy,
                                     temperature=1.0 if greedy else temperature,
                                     eos_token_id=enc.eot_token, generator=gen)
    model.train()
    return [[t for t, m in zip(row, keep) if m] for row, keep in zip(tokens.tolist(), mask.tolist())]

# -----------------------------------------------------------------------------


def main(argv=None):
    cfg = common.parse_config(DEFAULTS, argv, __doc__)
    # reject bad values before anything is loaded or trained
    common.require_positive(cfg, "n_layer", "n_head", "n_embd", "block_size", "batch_size",
                            "grad_accum", "max_iters", "lr", "log_interval", "eval_interval",
                            "ckpt_interval", "sample_tokens", "eps")
    common.require(cfg.n_embd % cfg.n_head == 0,
                   f"n_embd={cfg.n_embd} must be divisible by n_head={cfg.n_head}")
    common.require(0.0 <= cfg.min_lr <= cfg.lr, f"min_lr={cfg.min_lr} must be in [0, lr={cfg.lr}]")
    common.require(cfg.warmup_iters >= 0, f"warmup_iters={cfg.warmup_iters} must be >= 0")
    common.require(0.0 <= cfg.dropout < 1.0, f"dropout={cfg.dropout} must be in [0, 1)")
    common.require(cfg.weight_decay >= 0 and cfg.grad_clip >= 0,
                   "weight_decay and grad_clip must be >= 0 (grad_clip=0 turns clipping off)")
    common.require(0.0 <= cfg.beta1 < 1.0 and 0.0 <= cfg.beta2 < 1.0,
                   "beta1, beta2 must be in [0, 1)")
    common.require(cfg.num_samples >= 0 and cfg.sample_temperature >= 0,
                   "num_samples and sample_temperature must be >= 0 (temperature 0 = greedy)")
    common.require(cfg.eval_iters == -1 or cfg.eval_iters > 0,
                   f"eval_iters={cfg.eval_iters} must be > 0, or -1 for all held-out batches")
    common.require(cfg.stop_iter == -1 or 0 < cfg.stop_iter <= cfg.max_iters,
                   f"stop_iter={cfg.stop_iter} must be -1 or in 1..max_iters={cfg.max_iters}")
    common.require(cfg.tokenizer in ("byte", "gpt2"),
                   f"tokenizer={cfg.tokenizer!r}: 'byte' or 'gpt2'")
    common.require(cfg.dtype in ("auto", "float32", "bfloat16"),
                   f"dtype={cfg.dtype!r}: 'auto', 'float32' or 'bfloat16'")
    for key in ("train_data", "val_data"):
        path = getattr(cfg, key)
        common.require(os.path.isfile(path), f"{key}={path!r} does not exist (toy data: "
                       f"python data/toy/prepare.py; HH data: python data/hh/prepare.py)")
    rt = common.init_runtime(cfg)
    resume_path = common.prepare_out_dir(cfg.out_dir, cfg.resume, cfg.overwrite, rt.master)
    common.install_stop_handlers()

    # -------------------------------------------------------------------------
    # model: a fresh start comes from init_from; a resumed run from its own last checkpoint
    if resume_path:
        ckpt = common.load_checkpoint(resume_path, expect_kind="policy", expect_stage="sft")
        model = GPT(GPTConfig(**{**ckpt["model_args"], "dropout": cfg.dropout}))
        model.load_state_dict(ckpt["model"])
        tok_name = ckpt["tokenizer"]
    else:
        model_args = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                          block_size=cfg.block_size, bias=cfg.bias)
        model, tok_name = common.init_policy(cfg.init_from, cfg.tokenizer, model_args, cfg.dropout)
    common.check_block_size(model, cfg.block_size)
    model.to(rt.device)
    enc = get_tokenizer(tok_name)
    print0(f"model: {model.num_params() / 1e6:.2f}M parameters, {model.config.n_layer} layers, "
           f"n_embd {model.config.n_embd}, tokenizer '{tok_name}', from "
           f"{resume_path or cfg.init_from}, device {rt.device}, dtype {rt.dtype}")

    # -------------------------------------------------------------------------
    # data: every example is (ids, loss_mask); the loader applies the length policy
    train = loader.load_sft(cfg.train_data, enc, cfg.block_size)
    val = loader.load_sft(cfg.val_data, enc, cfg.block_size)
    common.require(len(train) > 0 and len(val) > 0, "train_data and val_data need >= 1 example")
    # batches of similar lengths waste less compute on padding (the order is still seeded)
    lengths = tuple(len(ids) for ids, _ in train) if cfg.length_buckets else None
    n_val = len(val) if cfg.eval_iters == -1 else min(cfg.eval_iters * cfg.batch_size, len(val))
    # this rank's share of the held-out examples, collated once
    val_rows = list(range(rt.rank, n_val, rt.world_size))
    val_batches = [loader.collate([val[i] for i in val_rows[k:k + cfg.batch_size]], enc.eot_token)
                   for k in range(0, len(val_rows), cfg.batch_size)]
    # a few fixed held-out prompts to answer at each eval, with their reference answers
    max_new = min(cfg.sample_tokens, model.config.block_size - 1)
    samples = [split_last_answer(*val[i]) for i in range(min(cfg.num_samples, len(val)))]
    samples = [(p, a) for p, a in samples if 0 < len(p) <= model.config.block_size - max_new]
    print0(f"data: {len(train)} train, {len(val)} val examples ({n_val} used per eval); "
           f"{cfg.batch_size * cfg.grad_accum * rt.world_size} rows per step")

    # -------------------------------------------------------------------------
    # optimizer, and the loop state a resumed run picks up
    optimizer = common.configure_optimizer(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2),
                                           cfg.eps, rt.device_type)
    step, best_val, train_loss, val_loss = 0, math.inf, math.nan, math.nan
    if resume_path:
        optimizer.load_state_dict(ckpt["optimizer"])
        step, best_val = ckpt["step"], ckpt["best_val_loss"]
        train_loss, val_loss = ckpt["train_loss"], ckpt["val_loss"]
        common.set_rng_state(ckpt["rng"])  # dropout masks continue where they stopped
        print0(f"resumed from {resume_path} at step {step}")
        del ckpt
    raw_model = model  # eval, sampling and checkpoints use the plain module
    model = common.maybe_compile(model, cfg.compile)
    if rt.ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[rt.local_rank] if rt.device_type == "cuda" else None)
    logger = common.MetricsLogger(cfg.out_dir, "log", resume_step=step if resume_path else None,
                                  enabled=rt.master)

    def save(name, with_optimizer):
        if rt.master:
            ckpt = common.make_checkpoint(raw_model, "policy", "sft", tok_name, cfg, step,
                                          optimizer if with_optimizer else None,
                                          best_val_loss=best_val, train_loss=train_loss,
                                          val_loss=val_loss)
            common.save_checkpoint(os.path.join(cfg.out_dir, name), ckpt)

    def evaluate():
        nonlocal best_val, val_loss
        val_loss = estimate_val_loss(raw_model, val_batches, rt)
        logger.log(step, val_loss=val_loss)
        if val_loss < best_val:
            best_val = val_loss
            save("ckpt_best.pt", with_optimizer=False)  # downstream stages start from this one
        if rt.master and samples:
            answers = sample_answers(raw_model, enc, [p for p, _ in samples], max_new,
                                     cfg.sample_temperature, cfg.seed, rt.device)
            for (prompt, ref), ans in zip(samples, answers):
                print(f"  prompt: {decode(enc, prompt)[-200:]!r}\n"
                      f"  model:  {decode(enc, ans)!r}{' [EOS]' if enc.eot_token in ans else ''}\n"
                      f"  target: {decode(enc, ref)!r}")

    # -------------------------------------------------------------------------
    # training loop. `step` counts optimizer updates done; the batch of each step is a function
    # of the step alone (loader.batch_indices), so resuming needs no data-loader state.
    if not resume_path:  # every input has loaded: only now may --overwrite=True drop the old run
        common.clear_out_dir(cfg.out_dir, rt.master)
    if step == 0:
        evaluate()
    losses = []
    while step < cfg.max_iters:
        t0 = time.time()
        lr = common.get_lr(step, cfg.lr, cfg.min_lr, cfg.warmup_iters, cfg.max_iters)
        common.set_lr(optimizer, lr)
        micro = [loader.collate([train[i] for i in loader.batch_indices(
                     len(train), cfg.batch_size, step * cfg.grad_accum + k, cfg.seed,
                     rt.rank, rt.world_size, lengths)], enc.eot_token)
                 for k in range(cfg.grad_accum)]
        # weight each micro-batch by its share of the step's trained tokens, counted over every
        # rank: the step's loss is then the mean over all of them, as one big batch would give,
        # however the rows are split into micro-batches and ranks
        n_trained = max(common.all_reduce_sum(sum(int(lm[:, 1:].sum()) for _, _, lm in micro)), 1)
        n_tokens = sum(int(attn.sum()) for _, attn, _ in micro)  # real (non-pad) tokens
        loss_sum = torch.zeros((), device=rt.device)
        for k, (idx, attn, loss_mask) in enumerate(micro):
            share = int(loss_mask[:, 1:].sum()) / n_trained
            idx, attn, loss_mask = idx.to(rt.device), attn.to(rt.device), loss_mask.to(rt.device)
            with common.no_sync_unless(model, k == cfg.grad_accum - 1):
                with rt.autocast:
                    # right-padded rows need no attention mask (GPT.forward): the same logits
                    # at real positions, and SDPA keeps its fast causal (flash) kernel on a GPU.
                    # Positions still come from the mask: the pads' position gradients then sum
                    # in the same order, and a CPU run is bitwise the masked one.
                    logits = model(idx, position_ids=position_ids_from_mask(attn))  # (B, T, V)
                loss = sft_loss(logits, idx, loss_mask) * share
                # DDP averages the gradients over ranks; the global mean needs their sum
                (loss * rt.world_size).backward()
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            raw_model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf).item()
        loss_sum = loss_sum.item()
        common.check_finite(step + 1, loss=loss_sum, grad_norm=grad_norm)  # the log's number
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        train_loss = common.all_reduce_sum(loss_sum)  # each rank holds its share of the mean
        losses.append(train_loss)
        dt = time.time() - t0

        if step % cfg.log_interval == 0 or step == 1 or step == cfg.max_iters:
            logger.log(step, loss=train_loss, lr=lr, grad_norm=grad_norm,
                       tok_per_s=round(n_tokens * rt.world_size / dt),
                       ms_per_iter=round(1000 * dt, 1))
        if step % cfg.eval_interval == 0 or step == cfg.max_iters:
            evaluate()
        stopping = step == cfg.stop_iter or common.stop_requested()
        if step % cfg.ckpt_interval == 0 or step == cfg.max_iters or stopping:
            save("ckpt_last.pt", with_optimizer=True)
        if stopping:
            print0(f"stopping at step {step}; continue with --resume=True")
            break

    if rt.ddp:
        torch.distributed.barrier()  # no rank tears gloo down while another still uses it
        torch.distributed.destroy_process_group()
    return dict(train_loss=train_loss, val_loss=val_loss, best_val_loss=best_val, step=step,
                train_losses=losses, out_dir=cfg.out_dir)


if __name__ == "__main__":
    main()
