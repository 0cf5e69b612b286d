"""
Supervised fine-tuning (SFT): the first stage. Teach a base model to answer in the chat template

    "\\n\\nHuman: {prompt}\\n\\nAssistant:" + " {response}" + <|endoftext|>

with plain next-token cross-entropy on the response tokens (and their EOS) only.

Run it:
    python train_sft.py                                  # offline CPU default: the toy world,
                                                         # a ~0.48M-param byte-level GPT from scratch
    python train_sft.py config/sft_gpt2_hh.py            # one GPU: GPT-2 124M on Anthropic HH
    torchrun --standalone --nproc_per_node=8 train_sft.py config/sft_gpt2_hh.py \
        --batch_size=8 --grad_accum=1                    # 8 GPUs, the same 64 rows per step
    torchrun --standalone --nproc_per_node=8 train_sft.py config/sft_gpt2_xl_hh.py \
        --fsdp=True --grad_accum=1                       # GPT-2 XL sharded over 8 GPUs (FSDP)
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
import time

import torch

import checkpoint
import config
import ops
import optim
import runtime
from data import loader
from model import GPT, position_ids_from_mask
from run import Run
from runtime import print0
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
    n_embd=96,
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
    max_iters=2000,
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
    eval_examples=256,          # held-out examples per evaluation (-1 = all of them)
    num_samples=3,              # held-out prompts answered at each eval
    sample_tokens=64,           # max new tokens per sampled answer
    sample_temperature=0.0,     # 0 = greedy
    ckpt_interval=400,
    # system
    seed=1337,
    device="auto",              # 'auto' | 'cpu' | 'cuda' | 'mps'
    dtype="auto",               # 'auto' (bf16 on a GPU that has it, else fp32) | 'float32' | 'bfloat16'
    compile=False,
    grad_checkpoint=False,      # recompute each block in the backward: ~1/3 more compute, a
                                # fraction of the activation memory (docs/SCALE.md)
    fsdp=False,                 # under torchrun: shard the model, its gradients and AdamW state
                                # over the processes (FSDP, docs/SCALE.md), not copy them (DDP)
    resume=False,
    overwrite=False,
    stop_iter=-1,               # stop with a checkpoint after this many steps (-1: run to max_iters)
)


def validate(cfg):
    """Bad values fail here, naming the key, before anything is loaded or written."""
    config.validate(cfg)
    config.require_files(cfg, "train_data", "val_data", "init_from", hint="toy data: python "
                         "data/toy/prepare.py; HH data: python data/hh/prepare.py")

# -----------------------------------------------------------------------------
# the loss and the step


def sft_loss(logprobs, loss_mask):
    """
    Masked next-token cross-entropy, the SFT objective of InstructGPT (Ouyang et al. 2022, 3.5):

        loss = - sum_t m[t+1] * log p(idx[t+1] | idx[:t+1]) / sum_t m[t+1]

    logprobs (B, T-1): log p of the token at t+1 (ops.token_logprobs or trained_logprobs);
    loss_mask (B, T) with 1 on response tokens and their EOS. Label t+1 is trained iff
    loss_mask[:, t+1] == 1: prompt and padding add exactly zero loss and zero gradient, and the
    mean is over the trained tokens of the whole batch (not per row).
    Test: tests/test_sft.py::test_sft_loss_matches_hand_computation
    """
    return -ops.masked_mean(logprobs, loss_mask[:, 1:])


def sft_step(model, micro_batches, proc):
    """
    Forward and backward of one optimizer step's micro-batches [(idx, attn, loss_mask)] (B, T)
    each. Each micro-batch is weighted by its share of the step's trained tokens, counted over
    every rank: the step's loss is then the mean over all of them, as one big batch would give,
    however the rows are split into micro-batches and ranks. Returns this rank's part of the
    loss (the all-reduced sum over ranks is the step's loss). The rows are right-padded, so the
    model runs without an attention mask (GPT.forward); their positions come from the mask.
    """
    n_trained = max(runtime.all_reduce_sum(sum(int(lm[:, 1:].sum()) for *_, lm in micro_batches)), 1)
    loss_sum = torch.zeros((), device=proc.device)
    for k, (idx, attn, loss_mask) in enumerate(micro_batches):
        idx, attn, loss_mask = idx.to(proc.device), attn.to(proc.device), loss_mask.to(proc.device)
        with runtime.no_sync_unless(model, k == len(micro_batches) - 1):
            logp = ops.trained_logprobs(model, idx, loss_mask, position_ids_from_mask(attn),
                                           proc.autocast)  # (B, T-1)
            loss = sft_loss(logp, loss_mask) * (int(loss_mask[:, 1:].sum()) / n_trained)
            (loss * proc.world_size).backward()  # DDP averages over ranks; the mean needs the sum
        loss_sum += loss.detach()
    return loss_sum.item()

# -----------------------------------------------------------------------------
# evaluation helpers


@torch.no_grad()
def estimate_val_loss(model, batches, proc):
    """Token-weighted mean SFT loss over held-out batches (this rank's share, then averaged)."""
    model.eval()
    total, count = 0.0, 0.0
    with runtime.gathered(model):  # FSDP: ranks may hold different numbers of batches
        for idx, attn, loss_mask in batches:
            idx, attn, loss_mask = (t.to(proc.device) for t in (idx, attn, loss_mask))
            logp = ops.trained_logprobs(model, idx, loss_mask, position_ids_from_mask(attn),
                                        proc.autocast)
            n = loss_mask[:, 1:].sum().item()
            total += sft_loss(logp, loss_mask).item() * n
            count += n
    model.train()
    # averaging the sums over ranks keeps the result a mean over every rank's tokens
    return runtime.all_reduce_mean(total) / max(runtime.all_reduce_mean(count), 1.0)


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


def load_model(cfg, run):
    """The policy on the device (a fresh start from init_from, a resumed run from its own last
    checkpoint) and its tokenizer."""
    model_args = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                      block_size=cfg.block_size, bias=cfg.bias)
    model, tok_name = run.model(GPT, lambda: checkpoint.init_policy(
        cfg.init_from, cfg.tokenizer, model_args, cfg.dropout), cfg.dropout)
    checkpoint.check_block_size(model, cfg.block_size)
    model.to(run.proc.device)
    model.transformer.grad_checkpoint = cfg.grad_checkpoint
    print0(f"model: {model.num_params() / 1e6:.2f}M parameters, {model.config.n_layer} layers, "
           f"n_embd {model.config.n_embd}, tokenizer '{tok_name}', from "
           f"{run.resume_path or cfg.init_from}, device {run.proc.device}, dtype {run.proc.dtype}")
    return model, get_tokenizer(tok_name)


def evaluate_and_keep_best(run, model, val_batches, step, state, snapshot):
    """The held-out loss into state.val_loss (logged at `step`), and ckpt_best.pt, where the
    downstream stages start, when it beats state.best_val_loss."""
    state.val_loss = estimate_val_loss(model, val_batches, run.proc)
    optim.check_finite(step, val_loss=state.val_loss)  # a broken model is never saved
    run.log(step, val_loss=state.val_loss)
    if state.val_loss < state.best_val_loss:
        state.best_val_loss = state.val_loss
        run.save("ckpt_best.pt", snapshot(False))


def print_samples(model, enc, samples, max_new, cfg, device):
    """The model's answers to a few held-out prompts, beside the reference answers."""
    answers = sample_answers(model, enc, [p for p, _ in samples], max_new,
                             cfg.sample_temperature, cfg.seed, device)
    for (prompt, ref), ans in zip(samples, answers):
        print(f"  prompt: {decode(enc, prompt)[-200:]!r}\n"
              f"  model:  {decode(enc, ans)!r}{' [EOS]' if enc.eot_token in ans else ''}\n"
              f"  target: {decode(enc, ref)!r}")


def load_data(cfg, enc, model, proc):
    """Training and held-out examples, (ids, loss_mask) each after the loader's length policy;
    this rank's share of the held-out ones, collated once; the lengths length bucketing sorts
    by; and a few held-out (prompt, reference answer) pairs to answer at each evaluation."""
    train = loader.load_sft(cfg.train_data, enc, cfg.block_size)
    val = loader.load_sft(cfg.val_data, enc, cfg.block_size)
    lengths = tuple(len(ids) for ids, _ in train) if cfg.length_buckets else None
    n_val = len(val) if cfg.eval_examples == -1 else min(cfg.eval_examples, len(val))
    rows = list(range(proc.rank, n_val, proc.world_size))
    val_batches = [loader.collate([val[i] for i in rows[k:k + cfg.batch_size]], enc.eot_token)
                   for k in range(0, len(rows), cfg.batch_size)]
    max_new = min(cfg.sample_tokens, model.config.block_size - 1)
    samples = [split_last_answer(*val[i]) for i in range(min(cfg.num_samples, len(val)))]
    samples = [(p, a) for p, a in samples if 0 < len(p) <= model.config.block_size - max_new]
    print0(f"data: {len(train)} train, {len(val)} val examples ({n_val} used per eval); "
           f"{cfg.batch_size * cfg.grad_accum * proc.world_size} rows per step")
    return train, val_batches, lengths, samples, max_new


def main(argv=None):
    cfg = config.parse_config(DEFAULTS, argv, __doc__)
    validate(cfg)
    run = Run(cfg, "sft")  # device, DDP, seeds, out_dir and its lock, the resume point
    proc = run.proc

    # -------------------------------------------------------------------------
    # model: a fresh start comes from init_from, a resumed run from its own last checkpoint;
    # then the data
    model, enc = load_model(cfg, run)
    train, val_batches, lengths, samples, max_new = load_data(cfg, enc, model, proc)
    runtime.shard(model, proc, cfg.compile)  # FSDP: each rank keeps its share of the weights

    # -------------------------------------------------------------------------
    # optimizer, and the loop state a resumed run picks up
    optimizer = optim.make_optimizer(model, cfg, proc)
    state = run.restore(optimizer, best_val_loss=math.inf, train_loss=math.nan, val_loss=math.nan)
    step = state.step
    wrapped = runtime.wrap(model, cfg.compile, proc)  # what the step calls; model stays plain

    def snapshot(with_optimizer):
        return checkpoint.make_checkpoint(model, "policy", "sft", enc.name, cfg, step,
                                          optimizer if with_optimizer else None,
                                          best_val_loss=state.best_val_loss,
                                          train_loss=state.train_loss, val_loss=state.val_loss)

    def evaluate():
        evaluate_and_keep_best(run, model, val_batches, step, state, snapshot)
        with runtime.gathered(model):  # FSDP: rank 0 generates alone
            if proc.master and samples:
                print_samples(model, enc, samples, max_new, cfg, proc.device)

    # -------------------------------------------------------------------------
    # training loop. `step` counts optimizer updates done; the batch of each step is a function
    # of the step alone (loader.batch_indices), so resuming needs no data-loader state.
    if step == 0:
        evaluate()
    losses = []
    while step < cfg.max_iters:
        t0 = time.time()
        lr = optim.get_lr(step, cfg.lr, cfg.min_lr, cfg.warmup_iters, cfg.max_iters)
        optim.set_lr(optimizer, lr)
        # 1. this step's rows, as grad_accum right-padded micro-batches
        micro = [loader.collate([train[i] for i in loader.batch_indices(
                     len(train), cfg.batch_size, step * cfg.grad_accum + k, cfg.seed,
                     proc.rank, proc.world_size, lengths)], enc.eot_token)
                 for k in range(cfg.grad_accum)]
        # 2. the masked cross-entropy of the answers, forward and backward
        loss = sft_step(wrapped, micro, proc)
        # 3. clip, check, update
        grad_norm = optim.optimizer_step(model, optimizer, cfg.grad_clip, loss, update=step + 1)
        step += 1
        state.train_loss = runtime.all_reduce_sum(loss)  # each rank holds its share of the mean
        losses.append(state.train_loss)

        if step % cfg.log_interval == 0 or step == 1 or step == cfg.max_iters:
            dt, n_tokens = time.time() - t0, sum(int(attn.sum()) for _, attn, _ in micro)
            run.log(step, loss=state.train_loss, lr=lr, grad_norm=grad_norm,
                    tok_per_s=round(n_tokens * proc.world_size / dt),
                    ms_per_iter=round(1000 * dt, 1))
        if step % cfg.eval_interval == 0 or step == cfg.max_iters:
            evaluate()
        stopping = run.should_stop(step)
        if step % cfg.ckpt_interval == 0 or step == cfg.max_iters or stopping:
            run.save("ckpt_last.pt", snapshot(True))
        if stopping:
            print0(f"stopping at step {step}; continue with --resume=True")
            break

    run.finish()
    return dict(train_loss=state.train_loss, val_loss=state.val_loss,
                best_val_loss=state.best_val_loss, step=step, train_losses=losses,
                out_dir=cfg.out_dir)


if __name__ == "__main__":
    config.cli(main)
