"""
Direct Preference Optimization (Rafailov et al. 2023) and its relatives, starting from the SFT
policy and learning from pairs (prompt, chosen, rejected) with no reward model and no sampling.

    python data/toy/prepare.py && python train_sft.py && python data/toy/label.py  # world, SFT, labels
    python train_dpo.py                                   # CPU toy default, a few minutes
    python train_dpo.py config/dpo_gpt2_hh.py             # one GPU, GPT-2 124M on Anthropic HH
    torchrun --standalone --nproc_per_node=8 train_dpo.py config/dpo_gpt2_hh.py \
        --grad_accum=1                                    # 8 GPUs, the same 64 pairs per step
    torchrun --standalone --nproc_per_node=8 train_dpo.py config/dpo_gpt2_xl_hh.py \
        --fsdp=True --grad_accum=1                        # GPT-2 XL sharded over 8 GPUs (FSDP)
    python train_dpo.py --loss_type=simpo                 # reference-free: SimPO or ORPO
    python train_dpo.py --help                            # every config key and its default

The policy starts as the SFT model; the reference is a frozen copy of it. Each pair's chosen and
rejected answers go through the policy in one forward (chosen rows, then rejected rows), and a
sequence's log-prob is the sum over its response tokens (the prompt and the padding are masked).
With share_prompt a row holds the prompt once and both answers after it, each answer seeing only
the prompt and itself (layouts.py): the same log-probs for fewer positions, which
pays where prompts are long (HH: about a third fewer positions per step, README "Speed").
loss_type picks the loss: 'sigmoid' (DPO; conservative DPO with label_smoothing), 'robust',
'ipo', 'hinge' need the reference; 'simpo' and 'orpo' need none, and then none is built.
Every default is the published loss. rpo_alpha > 0 adds an NLL term on the chosen answer to
the reference-based losses and SimPO; that is RPO (Pang et al. 2024), a different objective,
so call such a run "rpo" (or "dpo+nll"), not DPO. ORPO has its NLL term built in. With
precompute_ref_logps the reference log-probs are computed once before training, cached in
out_dir, and the reference model is freed. Watch logps_chosen in the log: with plain DPO it
usually falls while the margin rises (both answers become less likely, the rejected one faster).
The optional "margin" field of a preference record is not used here. KTO, which learns from
single labelled answers instead of pairs, is train_kto.py (it shares this script's pieces).

One step:
  1. this step's pairs, chosen and rejected answers of each micro-batch in one forward;
  2. the reference's log-probs of the same answers (live, cached, or none);
  3. the loss of the policy's log-ratios against the reference's, forward and backward;
  4. clip, check, update.

Deliberately left out: online/iterative DPO (no sampling here:
see train_ppo.py for that), sampling-based evaluation during training (data/toy/judge.py scores
samples of a finished policy), a reference model that is re-synchronised to the policy, and
padding-free packing of sequences.
"""

import math
import os
import time
from functools import partial

import torch
import torch.nn.functional as F

import checkpoint
import config
import layouts
import ops
import optim
import runtime
from data import loader
from model import GPT
from run import Run
from runtime import print0
from tokenizer import get_tokenizer, token_texts

# -----------------------------------------------------------------------------
# default config: the offline toy run (config/dpo_toy.py holds the same values)
DEFAULTS = dict(
    # I/O
    out_dir="out/dpo_toy",
    init_from="out/sft_toy/ckpt_best.pt",  # the SFT policy (a .pt checkpoint, 'gpt2', HF dir)
    reference="",                          # reference model; '' = the same weights as init_from
    tokenizer="byte",                      # only used when init_from is not a checkpoint
    # data: JSONL preference pairs {"prompt", "chosen", "rejected"}
    train_data="data/toy/out/onpolicy_train.jsonl",  # several files: comma-separated
    val_data="data/toy/out/onpolicy_val.jsonl",
    block_size=128,                        # prompt + response tokens per sequence
    length_buckets=False,                  # batch pairs of similar length: less padding (HH)
    share_prompt=False,                    # a pair's prompt computed once for both answers
                                           # (layouts.py): fewer positions
    # the loss
    loss_type="sigmoid",                   # sigmoid | robust | ipo | hinge | simpo | orpo
    beta=0.5,                              # DPO-family temperature (strength of the KL anchor);
                                           # 0.1 on the toy world's on-policy pairs: KL 19 (README)
    label_smoothing=0.0,                   # assumed fraction of flipped labels (sigmoid, robust)
    rpo_alpha=0.0,                         # weight of the chosen answer's NLL (RPO); 0 = off
    length_alpha=0.0,                      # R-DPO: + length_alpha (|y_w| - |y_l|) inside the
                                           # sigmoid, so length does not pay; 0 = off
    simpo_beta=2.0,                        # SimPO reward scale
    simpo_gamma=1.0,                       # SimPO target reward margin
    orpo_lambda=0.1,                       # ORPO weight of the odds-ratio term
    precompute_ref_logps=False,            # reference log-probs once before training, then free it
    # optimisation: AdamW, linear warmup then cosine decay to min_lr
    batch_size=16,                         # pairs per micro-batch (2x sequences per forward)
    grad_accum=1,
    max_iters=400,
    lr=3e-4,
    min_lr=3e-5,
    warmup_iters=10,
    weight_decay=0.0,
    beta1=0.9,
    beta2=0.95,
    eps=1e-8,
    grad_clip=1.0,                         # clip the global grad norm at this value; 0 = off
    dropout=0.0,
    # evaluation, logging, checkpoints
    log_interval=10,
    eval_interval=50,
    eval_examples=160,                     # held-out pairs per evaluation; -1 = all of them
    num_samples=3,                         # held-out pairs whose per-token log pi / pi_ref is
                                           # logged at each evaluation (plot.py's heatmaps)
    ckpt_interval=100,
    # system
    seed=1337,
    device="auto",                         # 'auto' | 'cpu' | 'cuda' | 'mps'
    dtype="auto",                          # 'auto' (bf16 on a GPU that has it) | 'float32' | 'bfloat16'
    compile=False,
    grad_checkpoint=False,                 # recompute each block in the backward: ~1/3 more
                                           # compute, a fraction of the activation memory
    fsdp=False,                            # under torchrun: shard the trained model, its grads and
                                           # AdamW state over the processes (FSDP, docs/SCALE.md)
    resume=False,
    overwrite=False,
    stop_iter=-1,                          # stop with a checkpoint after this iteration
)

LOSS_TYPES = ("sigmoid", "robust", "ipo", "hinge", "simpo", "orpo")
REFERENCE_FREE = ("simpo", "orpo")

# -----------------------------------------------------------------------------
# the losses: pure functions of per-example sequence log-probs (ops.sequence_logprobs)


def dpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
             reference_rejected_logps, beta=0.1, loss_type="sigmoid", label_smoothing=0.0,
             length_alpha=0.0, chosen_lengths=None, rejected_lengths=None):
    """
    Per-example DPO-family losses from summed sequence log-probs, all (B,) -> (B,) x 3.

    h = [log pi(y_w) - log ref(y_w)] - [log pi(y_l) - log ref(y_l)], the difference of log-ratios;
    the implicit rewards are beta * (log pi(y) - log ref(y)) (returned detached, for metrics).
    - 'sigmoid': -log sigma(beta h), DPO (Rafailov et al. 2023, Eq. 7). With label_smoothing
      eps it is conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences"):
      -(1-eps) log sigma(beta h) - eps log sigma(-beta h), as in the DPO authors' code.
    - 'robust': (-(1-eps) log sigma(beta h) + eps log sigma(-beta h)) / (1 - 2 eps), an unbiased
      loss under eps label noise (Chowdhury et al. 2024, "Provably Robust DPO", Eq. 5).
    - 'ipo': (h - 1/(2 beta))^2 (Azar et al. 2023, "A General Theoretical Paradigm to Understand
      Learning from Human Preferences", Eq. 17). We use summed log-probs, as the DPO authors'
      code does; TRL length-normalises the log-ratios for IPO.
    - 'hinge': max(0, 1 - beta h), the SLiC hinge on the log-ratios (Zhao et al. 2023, "SLiC-HF").
    length_alpha > 0 is R-DPO (Park et al. 2024, "Disentangling Length from Quality in Direct
    Preference Optimization", Eq. 9): beta h becomes beta h + length_alpha (|y_w| - |y_l|), with
    |y| the answers' lengths in response tokens (B,) each, so a chosen answer that is longer
    needs less of a log-ratio margin: the length no longer pays.
    Test: tests/test_dpo.py::test_sigmoid_and_conservative_dpo (and test_robust_dpo, test_ipo_and_hinge,
    test_r_dpo_by_hand)
    """
    if loss_type not in ("sigmoid", "robust", "ipo", "hinge"):
        raise ValueError(f"unknown loss_type {loss_type!r}: expected sigmoid, robust, ipo or hinge")
    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    h = chosen_logratios - rejected_logratios
    if length_alpha:  # R-DPO: the length difference, in units of beta h
        h = h + length_alpha / beta * (chosen_lengths - rejected_lengths).to(h.dtype)
    eps = label_smoothing
    if loss_type == "sigmoid":
        # logsigmoid, not log(sigmoid): finite for any margin
        losses = -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    elif loss_type == "robust":
        losses = (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        losses = torch.relu(1 - beta * h)
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def simpo_loss(policy_chosen_logps, policy_rejected_logps, beta=2.0, gamma=1.0):
    """
    SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free
    Reward", Eq. 6): -log sigma(beta/|y_w| log pi(y_w) - beta/|y_l| log pi(y_l) - gamma).
    Takes LENGTH-AVERAGED log-probs (sequence_logprobs(..., average=True)), (B,) each; the
    rewards are beta * average log-prob. No reference model.
    Test: tests/test_dpo.py::test_simpo
    """
    chosen_rewards = beta * policy_chosen_logps
    rejected_rewards = beta * policy_rejected_logps
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


def log1mexp(x):
    """log(1 - exp(x)) for x < 0, accurate near 0 and for very negative x (Maechler 2012).
    Test: tests/test_dpo.py::test_log1mexp_is_accurate_at_both_ends"""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(policy_chosen_logps, policy_rejected_logps, lam=0.1):
    """
    ORPO (Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model",
    Eq. 6-7): L = NLL(y_w) - lam * log sigma(log odds(y_w) - log odds(y_l)), with
    log odds(y) = logp - log(1 - exp(logp)) on LENGTH-AVERAGED log-probs logp, (B,) each.
    The NLL is the mean per-token NLL of the chosen answer. Rewards are lam * logp (as in TRL).
    Test: tests/test_dpo.py::test_orpo
    """
    log_odds = (policy_chosen_logps - log1mexp(policy_chosen_logps)) - (
        policy_rejected_logps - log1mexp(policy_rejected_logps))
    losses = -policy_chosen_logps - lam * F.logsigmoid(log_odds)
    return losses, lam * policy_chosen_logps.detach(), lam * policy_rejected_logps.detach()


def preference_losses(cfg, logps, ref_logps=None, lengths=(None, None)):
    """
    The loss cfg asks for, per example. logps: (chosen_sum, rejected_sum, chosen_avg,
    rejected_avg) of the policy; ref_logps: (chosen_sum, rejected_sum) of the reference, or None
    for SimPO/ORPO; lengths: (chosen, rejected) response tokens, for R-DPO (length_alpha).
    rpo_alpha adds alpha * NLL(y_w), the chosen answer's mean per-token NLL
    (Pang et al. 2024, "Iterative Reasoning Preference Optimization", Eq. 2: the RPO remedy for
    chosen log-probs that fall while the margin rises).
    Test: tests/test_dpo.py::test_rpo_adds_the_chosen_nll_to_any_loss_but_orpo
    """
    chosen, rejected, chosen_avg, rejected_avg = logps
    if cfg.loss_type == "simpo":
        out = simpo_loss(chosen_avg, rejected_avg, cfg.simpo_beta, cfg.simpo_gamma)
    elif cfg.loss_type == "orpo":
        out = orpo_loss(chosen_avg, rejected_avg, cfg.orpo_lambda)
    else:
        out = dpo_loss(chosen, rejected, ref_logps[0], ref_logps[1], cfg.beta, cfg.loss_type,
                       cfg.label_smoothing, cfg.length_alpha, *lengths)
    losses, chosen_rewards, rejected_rewards = out
    if cfg.rpo_alpha > 0:
        losses = losses - cfg.rpo_alpha * chosen_avg
    return losses, chosen_rewards, rejected_rewards

METRICS = ("loss", "rewards_chosen", "rewards_rejected", "margin", "accuracy", "logps_chosen",
           "logps_rejected")


def pair_metrics(losses, chosen_rewards, rejected_rewards, logps):
    """The numbers worth watching (METRICS), as floats: the chosen log-prob often falls while
    the margin rises. accuracy is the implicit-reward accuracy: chosen reward > rejected, ties
    half."""
    return dict(loss=losses.mean().item(),
                rewards_chosen=chosen_rewards.mean().item(),
                rewards_rejected=rejected_rewards.mean().item(),
                margin=(chosen_rewards - rejected_rewards).mean().item(),
                # ties count half, as eval.py's win rates: at the start every pair is a tie
                accuracy=((chosen_rewards > rejected_rewards).float()
                          + 0.5 * (chosen_rewards == rejected_rewards).float()).mean().item(),
                logps_chosen=logps[0].detach().mean().item(),
                logps_rejected=logps[1].detach().mean().item())



def batch_loss(model, batch, pair_logprobs, ref_logps, cfg, autocast):
    """Per-example losses (B,) of one batch of pairs for cfg's loss_type, and its metrics: the
    policy's log-probs (pair_logprobs: the layout's forward), the reference's (ref_logps(batch),
    or None for SimPO / ORPO), the loss."""
    logps = pair_logprobs(model, batch, autocast)
    lengths = (batch["chosen_len"], batch["rejected_len"]) if cfg.length_alpha else (None, None)
    out = preference_losses(cfg, logps, ref_logps(batch), lengths)
    return out[0], pair_metrics(*out, logps)


def dpo_step(model, micro_batches, loss_fn):
    """
    Forward and backward of one optimizer step (DPO's family and KTO): for each micro-batch (a
    batch of the run's layout on the device) loss_fn(model, batch) -> (per-example losses (B,),
    metrics), and the gradient of their mean. Returns the step's metrics, averaged over the
    micro-batches.
    """
    sums = {}
    for k, batch in enumerate(micro_batches):
        with runtime.no_sync_unless(model, k == len(micro_batches) - 1):
            losses, metrics = loss_fn(model, batch)
            (losses.mean() / len(micro_batches)).backward()
        for key, v in metrics.items():
            sums[key] = sums.get(key, 0.0) + v / len(micro_batches)
    return sums


@torch.no_grad()
def evaluate(model, batches, loss_fn, names):
    """loss_fn's metrics `names` on held-out batches (this rank's; each with its 'rows'),
    averaged over the examples of every rank, as val_{name}. No collective in the loop: ranks may
    hold different numbers of batches."""
    model.eval()
    sums, n = dict.fromkeys(names, 0.0), 0
    with runtime.gathered(model):  # FSDP: no all-gather in a loop of uneven length
        for batch in batches:
            for k, v in loss_fn(model, batch)[1].items():
                sums[k] += v * len(batch["rows"])
            n += len(batch["rows"])
    model.train()
    n = runtime.all_reduce_mean(float(n))
    return {f"val_{k}": runtime.all_reduce_mean(v) / max(n, 1) for k, v in sums.items()}


def evaluate_and_keep_best(run, step, state, snapshot, metrics):
    """evaluate()'s metrics logged at `step`, and ckpt_best.pt (snapshot()) when their held-out
    loss beats state.best_val_loss. Returns the metrics."""
    optim.check_finite(step, val_loss=metrics["val_loss"])  # a broken model is never saved
    run.log(step, **metrics)
    if metrics["val_loss"] < state.best_val_loss:
        state.best_val_loss = metrics["val_loss"]
        run.save("ckpt_best.pt", snapshot())
    return metrics


def save_and_check_stop(run, step, cfg, snapshot):
    """ckpt_last.pt (snapshot()) every ckpt_interval steps, at the end and when stopping; returns
    whether to stop (stop_iter, or a signal on any rank: a collective)."""
    stopping = run.should_stop(step)
    if step % cfg.ckpt_interval == 0 or step == cfg.max_iters or stopping:
        run.save("ckpt_last.pt", snapshot())
    if stopping:
        print0(f"stopped at step {step}; continue with --resume=True")
    return stopping


def held_out_batches(get_batch, n, cfg, proc):
    """This rank's share of the n held-out examples, batch_size at a time (get_batch('val',
    rows) builds each)."""
    B, W = cfg.batch_size, proc.world_size
    return (get_batch("val", range(start, min(start + B, n)))
            for start in range(proc.rank * B, n, B * W))

# -----------------------------------------------------------------------------
# the reference's log-probs: live, or once before training and cached in out_dir


def reference_fn(ref_model, cache, pair_logprobs, proc):
    """ref_logps(batch) -> the reference's summed log-probs (chosen, rejected) of a batch: looked
    up in the precomputed cache ({'train', 'val'}: (N, 2) by the batch's split and rows), or one
    no-grad forward of ref_model, or None (SimPO, ORPO: no reference)."""
    def ref_logps(batch):
        if cache is not None:
            row = cache[batch["split"]][batch["rows"]]  # (B, 2)
            return row[:, 0], row[:, 1]
        if ref_model is None:
            return None
        with torch.inference_mode():
            c, r, _, _ = pair_logprobs(ref_model, batch, proc.autocast)
        return c.clone(), r.clone()  # plain tensors, usable in the autograd graph
    return ref_logps


@torch.inference_mode()
def reference_logps(ref_model, data, layout, cfg, proc, pad_id):
    """(N, 2) summed log-probs of (chosen, rejected) of every pair under the reference, in the
    run's layout (collate, pair_logprobs), the ranks sharing the work (a collective under DDP)."""
    out = torch.zeros(len(data), 2, device=proc.device)
    B = cfg.batch_size * 2  # no gradients, so twice the training batch fits
    # pairs of similar lengths pad less (real HH: 60% fewer positions); rows go back in place
    order = sorted(range(len(data)), key=lambda i: loader.pair_length(data[i]))
    for start in range(proc.rank * B, len(data), B * proc.world_size):
        rows = order[start:start + B]
        batch = to_device(layout.collate([data[i] for i in rows], pad_id), proc)
        c, r, _, _ = layout.forward(ref_model, batch, proc.autocast)
        out[rows, 0], out[rows, 1] = c.float(), r.float()
    return runtime.all_reduce_mean(out) * proc.world_size  # every row came from one rank


def cache_problem(cache, sizes):
    """What is wrong with a loaded reference cache for data of `sizes`, or None."""
    if set(cache) != {"train", "val", "key"}:
        return "not a reference cache (expected the keys 'train', 'val', 'key')"
    if not all(torch.is_tensor(cache[k]) and tuple(cache[k].shape) == (sizes[k], 2)
               and cache[k].dtype == torch.float32 and bool(cache[k].isfinite().all())
               for k in sizes):
        return f"its tensors are not finite float32 of shapes {sizes} x 2"
    return None


def precompute_reference(cfg, run, ref_model, layout, train, val, enc):
    """The reference's log-probs of every pair, once, before training: {'train': (N, 2),
    'val': (N, 2), 'key'}, cached in out_dir under a key of what they depend on (the bytes of
    both data files, the reference's weights, block_size, its config and the precision): a
    resumed run reuses its cache unless one of them changed."""
    proc, path = run.proc, run.path("ref_logps.pt")
    key = checkpoint.content_key(f"{cfg.block_size} {proc.dtype} {ref_model.config}",
                                 cfg.train_data.split(",") + [cfg.val_data],
                                 ref_model.state_dict())
    sizes, cache = dict(train=len(train), val=len(val)), None
    if run.resume and os.path.isfile(path):
        cache = checkpoint.read_cache(path, key, "the reference log-probs", "data, another "
                                      "reference model, block_size or dtype",
                                      partial(cache_problem, sizes=sizes), proc.device)
    # computing is a collective: every rank recomputes when any rank could not use the file
    if runtime.all_reduce_max(float(cache is None)) > 0:
        t0 = time.time()
        cache = dict(train=reference_logps(ref_model, train, layout, cfg, proc, enc.eot_token),
                     val=reference_logps(ref_model, val, layout, cfg, proc, enc.eot_token),
                     key=key)
        print0(f"reference log-probs of {len(train) + len(val)} pairs in "
               f"{time.time() - t0:.1f}s, cached in {path}")
        run.save("ref_logps.pt", cache)
    return cache

# -----------------------------------------------------------------------------


@torch.no_grad()
def log_token_ratios(run, step, model, ref_model, batch, enc, autocast, rows=None):
    """Per-token log pi / pi_ref of each response of a right-padded batch (collate_pairs: chosen
    rows, then rejected ones) to tokens.jsonl, for plot.py's heatmaps: where the preference
    lands. rows: one {name: row} per record logged (by default each pair's chosen and rejected
    rows). In eval mode, as the held-out metrics."""
    idx, lm = batch["idx"], batch["loss_mask"]
    was_training = model.training
    model.eval()
    ratio = (ops.trained_logprobs(model, idx, lm, autocast=autocast)
             - ops.trained_logprobs(ref_model, idx, lm, autocast=autocast))  # (N, T-1)
    model.train(was_training)
    B = idx.size(0) // 2
    for names in rows or [{"chosen": b, "rejected": B + b} for b in range(B)]:
        fields = {}
        for name, r in names.items():
            at = lm[r, 1:].bool()  # the positions that predict a response token
            fields[f"tokens_{name}"] = token_texts(enc, idx[r, 1:][at].tolist())
            fields[f"log_ratio_{name}"] = [round(x, 5) for x in ratio[r][at].tolist()]
        run.log_tokens(step, **fields)


def to_device(batch, proc):
    return {k: v.to(proc.device) for k, v in batch.items()}


def validate(cfg):
    """Bad values fail here, with the key's name, before anything is loaded or written."""
    config.require(cfg.loss_type != "kto", "loss_type='kto': KTO is train_kto.py (python "
                   "train_kto.py config/kto_toy.py)")
    config.validate(cfg, {
        "loss_type": (lambda v: v in LOSS_TYPES, f"one of {', '.join(LOSS_TYPES)}"),
        "beta": (lambda v: v > 0, "> 0"),
        "label_smoothing": (lambda v: 0 <= v < 0.5, "in [0, 0.5): the assumed fraction of "
                                                   "flipped preference labels")})
    config.require(cfg.length_alpha == 0 or cfg.loss_type not in REFERENCE_FREE, "length_alpha "
                   f"(R-DPO) applies to the DPO family's losses, not {cfg.loss_type!r}")
    config.require(cfg.label_smoothing == 0 or cfg.loss_type in ("sigmoid", "robust"),
                   f"label_smoothing applies to loss_type sigmoid or robust, not {cfg.loss_type!r}")
    config.require(cfg.rpo_alpha == 0 or cfg.loss_type != "orpo", "loss_type='orpo' has its NLL "
                   "term built in: rpo_alpha must be 0 (it would add the NLL a second time)")
    config.require(not (cfg.loss_type in REFERENCE_FREE and cfg.precompute_ref_logps),
                   f"loss_type={cfg.loss_type!r} uses no reference model: precompute_ref_logps "
                   f"must be False")
    config.require_files(cfg, "train_data", "val_data", hint="toy data: python data/toy/prepare.py")
    config.require_files(cfg, "init_from", "reference", hint="the toy SFT model: python train_sft.py")


def load_models(cfg, run, with_reference=True):
    """The policy (from the SFT checkpoint, or the run we resume) on the device, its frozen
    reference (None without one: SimPO and ORPO), and the tokenizer."""
    proc = run.proc
    model, tok_name = run.model(GPT, lambda: checkpoint.init_policy(
        cfg.init_from, cfg.tokenizer, dropout=cfg.dropout), cfg.dropout)
    checkpoint.check_block_size(model, cfg.block_size)
    ref_model = None
    if with_reference:
        ref_from = cfg.reference or cfg.init_from
        ref_model, ref_tok = checkpoint.init_policy(ref_from, cfg.tokenizer)
        config.require(ref_tok == tok_name, f"the reference {ref_from} uses the {ref_tok!r} "
                       f"tokenizer, the policy {tok_name!r}")
        checkpoint.check_block_size(ref_model, cfg.block_size, f"the reference {ref_from}")
        ref_model.to(proc.device).eval().requires_grad_(False)
    model.transformer.grad_checkpoint = cfg.grad_checkpoint  # the reference never needs it
    return model.to(proc.device), ref_model, get_tokenizer(tok_name)


def load_data(cfg, enc):
    """Training and held-out pairs, right-padded at batch time (a batch's position in the data
    is its step: exact resume), and the lengths length bucketing sorts by."""
    train = loader.load_preferences(cfg.train_data, enc, cfg.block_size)
    val = loader.load_preferences(cfg.val_data, enc, cfg.block_size)
    val = val[:cfg.eval_examples] if cfg.eval_examples > 0 else val
    print0(f"{len(train)} training pairs, {len(val)} held-out, loss {cfg.loss_type}, "
           f"tokenizer {enc.name}")
    lengths = tuple(loader.pair_length(e) for e in train) if cfg.length_buckets else None
    return train, val, lengths


def main(argv=None):
    cfg = config.parse_config(DEFAULTS, argv, __doc__)
    validate(cfg)
    run = Run(cfg, "dpo")  # device, DDP, seeds, out_dir and its lock, the resume point
    proc = run.proc

    # -------------------------------------------------------------------------
    # models (the policy and its frozen reference), data, and the batch layout (layouts.py)
    model, ref_model, enc = load_models(cfg, run, cfg.loss_type not in REFERENCE_FREE)
    train, val, lengths = load_data(cfg, enc)
    runtime.shard(model, proc, cfg.compile)  # FSDP: each rank keeps its share of the policy; the
    # frozen reference stays whole on every rank (no gradients, no AdamW state: a quarter of it)
    layout = layouts.logprob_layout(cfg.share_prompt)
    # the reference's log-probs: none (SimPO, ORPO), live, or once, cached (and it is freed)
    cache = precompute_reference(cfg, run, ref_model, layout, train, val, enc) \
        if cfg.precompute_ref_logps else None
    ref_model = None if cache else ref_model
    ref_logps = reference_fn(ref_model, cache, layout.forward, proc)
    loss_fn = partial(batch_loss, pair_logprobs=layout.forward, ref_logps=ref_logps, cfg=cfg,
                      autocast=proc.autocast)

    def get_batch(split, rows):  # a batch of the layout, and where its pairs sit in the data
        data = [(train if split == "train" else val)[i] for i in rows]
        return dict(to_device(layout.collate(data, enc.eot_token), proc), split=split,
                    rows=torch.as_tensor(rows, device=proc.device))

    # -------------------------------------------------------------------------
    # optimizer, and the loop state a resumed run picks up
    optimizer = optim.make_optimizer(model, cfg, proc)
    state = run.restore(optimizer, best_val_loss=math.inf)
    step = state.step
    wrapped = runtime.wrap(model, cfg.compile, proc)  # what the step calls; model stays plain

    def snapshot():
        return checkpoint.make_checkpoint(model, "policy", "dpo", enc.name, cfg, step, optimizer,
                                          best_val_loss=state.best_val_loss)

    def evaluate_held_out():
        batches = held_out_batches(get_batch, len(val), cfg, proc)
        with runtime.gathered(model):  # FSDP: rank 0 runs the policy alone here
            if proc.master and ref_model is not None and cfg.num_samples:  # plot.py's heatmaps
                log_token_ratios(run, step, model, ref_model, to_device(layouts.collate_pairs(
                    val[:cfg.num_samples], enc.eot_token), proc), enc, proc.autocast)
        return evaluate_and_keep_best(run, step, state, snapshot,
                                      evaluate(model, batches, loss_fn, METRICS))

    # -------------------------------------------------------------------------
    # the loop. Step s is evaluated before its checkpoint is written, so a run resumed from
    # that checkpoint neither repeats the evaluation nor skips it.
    model.train()
    train_metrics, val_metrics = {}, {}
    if step == 0:
        val_metrics = evaluate_held_out()
    while step < cfg.max_iters:
        t0 = time.time()
        lr = optim.get_lr(step, cfg.lr, cfg.min_lr, cfg.warmup_iters, cfg.max_iters)
        optim.set_lr(optimizer, lr)
        # 1. this step's pairs: chosen and rejected answers of each micro-batch in one forward
        micro = [get_batch("train", loader.batch_indices(
                     len(train), cfg.batch_size, step * cfg.grad_accum + k, cfg.seed, proc.rank,
                     proc.world_size, lengths)) for k in range(cfg.grad_accum)]
        # 2-3. the reference's log-probs and the loss of the policy's log-ratios, fwd and bwd
        metrics = dpo_step(wrapped, micro, loss_fn)
        # 4. clip, check, update
        grad_norm = optim.optimizer_step(model, optimizer, cfg.grad_clip, metrics["loss"],
                                         update=step + 1)
        step += 1

        train_metrics = {k: runtime.all_reduce_mean(v) for k, v in metrics.items()}
        if step % cfg.log_interval == 0 or step == cfg.max_iters:
            run.log(step, **train_metrics, grad_norm=grad_norm, lr=lr,
                    ms_per_iter=round(1000 * (time.time() - t0), 1))
        if step % cfg.eval_interval == 0 or step == cfg.max_iters:
            val_metrics = evaluate_held_out()
        if save_and_check_stop(run, step, cfg, snapshot):
            break

    run.finish()
    return dict(out_dir=cfg.out_dir, step=step, **train_metrics, **val_metrics)


if __name__ == "__main__":
    config.cli(main)
