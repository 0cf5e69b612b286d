"""
Direct Preference Optimization (Rafailov et al. 2023) and its relatives, starting from the SFT
policy and learning from pairs (prompt, chosen, rejected) with no reward model and no sampling.

    python data/toy/prepare.py && python train_sft.py     # the toy world and its SFT policy
    python train_dpo.py                                   # CPU toy default, a few minutes
    python train_dpo.py config/dpo_gpt2_hh.py             # one GPU, GPT-2 124M on Anthropic HH
    torchrun --standalone --nproc_per_node=8 train_dpo.py config/dpo_gpt2_hh.py \
        --grad_accum=1                                    # 8 GPUs, the same 64 pairs per step
    python train_dpo.py --loss_type=simpo                 # reference-free: SimPO or ORPO

The policy starts as the SFT model; the reference is a frozen copy of it. Each pair's chosen and
rejected answers go through the policy in one forward (chosen rows, then rejected rows), and a
sequence's log-prob is the sum over its response tokens (the prompt and the padding are masked).
loss_type picks the loss: 'sigmoid' (DPO; conservative DPO with label_smoothing), 'robust',
'ipo', 'hinge' need the reference; 'simpo' and 'orpo' need none, and then none is built.
Every default is the published loss. rpo_alpha > 0 adds an NLL term on the chosen answer to
the reference-based losses and SimPO; that is RPO (Pang et al. 2024), a different objective,
so call such a run "rpo" (or "dpo+nll"), not DPO. ORPO has its NLL term built in. With
precompute_ref_logps the reference log-probs are computed once before training, cached in
out_dir, and the reference model is freed. Watch logps_chosen in the log: with plain DPO it
usually falls while the margin rises (both answers become less likely, the rejected one faster).
The optional "margin" field of a preference record is not used here.

Deliberately left out: KTO and other unpaired losses, online/iterative DPO (no sampling here:
see train_ppo.py for that), sampling-based evaluation during training (data/toy/judge.py scores
samples of a finished policy), a reference model that is re-synchronised to the policy, and
padding-free packing of sequences.
"""

import math
import os
import time

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import common
from data import loader
from model import GPT, position_ids_from_mask
from tokenizer import get_tokenizer

# -----------------------------------------------------------------------------
# default config: the offline toy run (config/dpo_toy.py holds the same values)
DEFAULTS = dict(
    # I/O
    out_dir="out/dpo_toy",
    init_from="out/sft_toy/ckpt_best.pt",  # the SFT policy (a .pt checkpoint, 'gpt2', HF dir)
    ref_from="",                           # reference model; '' = the same weights as init_from
    tokenizer="byte",                      # only used when init_from is not a checkpoint
    # data: JSONL preference pairs {"prompt", "chosen", "rejected"}
    train_data="data/toy/out/prefs_train.jsonl",
    val_data="data/toy/out/prefs_val.jsonl",
    block_size=128,                        # prompt + response tokens per sequence
    length_buckets=False,                  # batch pairs of similar length: less padding (HH)
    # the loss
    loss_type="sigmoid",                   # sigmoid | robust | ipo | hinge | simpo | orpo
    beta=0.1,                              # DPO-family temperature (strength of the KL anchor)
    label_smoothing=0.0,                   # assumed fraction of flipped labels (sigmoid, robust)
    rpo_alpha=0.0,                         # weight of the chosen answer's NLL (RPO); 0 = off
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
    eval_iters=10,                         # held-out batches per evaluation; -1 = all of them
    ckpt_interval=100,
    # system
    seed=1337,
    device="auto",                         # 'auto' | 'cpu' | 'cuda' | 'mps'
    dtype="auto",                          # 'auto' (bf16 on a GPU that has it) | 'float32' | 'bfloat16'
    compile=False,
    resume=False,
    overwrite=False,
    stop_iter=-1,                          # stop with a checkpoint after this iteration
)

LOSS_TYPES = ("sigmoid", "robust", "ipo", "hinge", "simpo", "orpo")
REFERENCE_FREE = ("simpo", "orpo")

# -----------------------------------------------------------------------------
# the losses: pure functions of per-example sequence log-probs


def sequence_logprobs(logits, idx, loss_mask, average=False):
    """
    log pi(y | x) of each row: token log-probs summed over the positions where loss_mask is 1
    (the response and its EOS), or their mean with average=True (SimPO, ORPO).
    logits (B, T, V), idx (B, T), loss_mask (B, T) over idx -> (B,).
    """
    logp = common.token_logprobs(logits, idx)  # (B, T-1): predicts idx[:, 1:]
    mask = loss_mask[:, 1:].to(logp.dtype)     # position 0 is never predicted (never a response)
    total = (logp * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1) if average else total


def dpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
             reference_rejected_logps, beta=0.1, loss_type="sigmoid", label_smoothing=0.0):
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
    """
    if loss_type not in ("sigmoid", "robust", "ipo", "hinge"):
        raise ValueError(f"unknown loss_type {loss_type!r}: expected sigmoid, robust, ipo or hinge")
    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    h = chosen_logratios - rejected_logratios
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
    """
    chosen_rewards = beta * policy_chosen_logps
    rejected_rewards = beta * policy_rejected_logps
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


def log1mexp(x):
    """log(1 - exp(x)) for x < 0, accurate near 0 and for very negative x (Maechler 2012)."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(policy_chosen_logps, policy_rejected_logps, lam=0.1):
    """
    ORPO (Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model",
    Eq. 6-7): L = NLL(y_w) - lam * log sigma(log odds(y_w) - log odds(y_l)), with
    log odds(y) = logp - log(1 - exp(logp)) on LENGTH-AVERAGED log-probs logp, (B,) each.
    The NLL is the mean per-token NLL of the chosen answer. Rewards are lam * logp (as in TRL).
    """
    log_odds = (policy_chosen_logps - log1mexp(policy_chosen_logps)) - (
        policy_rejected_logps - log1mexp(policy_rejected_logps))
    losses = -policy_chosen_logps - lam * F.logsigmoid(log_odds)
    return losses, lam * policy_chosen_logps.detach(), lam * policy_rejected_logps.detach()


def preference_losses(cfg, logps, ref_logps=None):
    """
    The loss cfg asks for, per example. logps: (chosen_sum, rejected_sum, chosen_avg,
    rejected_avg) of the policy; ref_logps: (chosen_sum, rejected_sum) of the reference, or None
    for SimPO/ORPO. rpo_alpha adds alpha * NLL(y_w), the chosen answer's mean per-token NLL
    (Pang et al. 2024, "Iterative Reasoning Preference Optimization", Eq. 2: the RPO remedy for
    chosen log-probs that fall while the margin rises).
    """
    chosen, rejected, chosen_avg, rejected_avg = logps
    if cfg.loss_type == "simpo":
        out = simpo_loss(chosen_avg, rejected_avg, cfg.simpo_beta, cfg.simpo_gamma)
    elif cfg.loss_type == "orpo":
        out = orpo_loss(chosen_avg, rejected_avg, cfg.orpo_lambda)
    else:
        out = dpo_loss(chosen, rejected, ref_logps[0], ref_logps[1], cfg.beta, cfg.loss_type,
                       cfg.label_smoothing)
    losses, chosen_rewards, rejected_rewards = out
    if cfg.rpo_alpha > 0:
        losses = losses - cfg.rpo_alpha * chosen_avg
    return losses, chosen_rewards, rejected_rewards

# -----------------------------------------------------------------------------
# the model side: one forward for a batch of pairs


def pair_logprobs(model, batch, autocast):
    """
    Summed and length-averaged response log-probs of the chosen and rejected answers, from one
    forward over the concatenated batch (chosen rows, then rejected rows): 4 tensors of (B,).
    The rows are right-padded (loader.collate_pairs), so no attention mask is needed
    (GPT.forward): the same logits at real positions, and SDPA's fast causal kernel on a GPU.
    Positions still come from the mask, so that a CPU run is bitwise the masked one.
    """
    idx, loss_mask = batch["idx"], batch["loss_mask"]
    positions = position_ids_from_mask(batch["attention_mask"])
    with autocast:
        logits = model(idx, position_ids=positions)  # (2B, T, V)
    total = sequence_logprobs(logits, idx, loss_mask)  # (2B,)
    avg = total / loss_mask[:, 1:].sum(-1).clamp(min=1)
    B = idx.size(0) // 2
    return total[:B], total[B:], avg[:B], avg[B:]


METRICS = ("loss", "rewards_chosen", "rewards_rejected", "margin", "accuracy", "logps_chosen",
           "logps_rejected")


def pair_metrics(losses, chosen_rewards, rejected_rewards, logps):
    """The numbers worth watching (METRICS), as floats: the chosen log-prob often falls while
    the margin rises. accuracy is the implicit-reward accuracy: chosen reward > rejected."""
    return dict(loss=losses.mean().item(),
                rewards_chosen=chosen_rewards.mean().item(),
                rewards_rejected=rejected_rewards.mean().item(),
                margin=(chosen_rewards - rejected_rewards).mean().item(),
                accuracy=(chosen_rewards > rejected_rewards).float().mean().item(),
                logps_chosen=logps[0].detach().mean().item(),
                logps_rejected=logps[1].detach().mean().item())


def load_ref_cache(path, meta, device):
    """
    The reference log-probs cached by an earlier process of this run: {'train': (n_train, 2),
    'val': (n_val, 2) float32 tensors, 'meta': meta}. Returns None, with a printed note, when the
    file is unreadable (cut by a kill, overwritten by hand) or was made for other data, another
    reference or another dtype: it is only a cache, and the caller recomputes it.
    """
    try:
        cache = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # truncated, not a torch file, or a pickle that is not plain data
        problem = f"unreadable ({type(e).__name__}: {str(e)[:200]})"
    else:
        want = dict(train=(meta["n_train"], 2), val=(meta["n_val"], 2))
        if not (isinstance(cache, dict) and set(cache) == {"train", "val", "meta"}):
            problem = "not a reference cache (expected the keys 'train', 'val', 'meta')"
        elif cache["meta"] != meta:
            problem = "made for another reference model, data, block_size or dtype"
        elif not all(torch.is_tensor(cache[k]) and tuple(cache[k].shape) == want[k]
                     and cache[k].dtype == torch.float32 and bool(cache[k].isfinite().all())
                     for k in want):
            problem = f"its tensors are not finite float32 of shapes {want}"
        else:
            return cache
    common.print0(f"note: {path}: {problem}; recomputing the reference log-probs")
    return None


def validate(cfg):
    """Bad values fail here, with the key's name, before any model is built."""
    common.require(cfg.loss_type in LOSS_TYPES, f"loss_type={cfg.loss_type!r}: expected one of "
                   f"{', '.join(LOSS_TYPES)}")
    common.require_positive(cfg, "beta", "simpo_beta", "orpo_lambda", "batch_size", "grad_accum",
                            "max_iters", "block_size", "log_interval", "eval_interval",
                            "ckpt_interval", "lr")
    common.require(0.0 <= cfg.label_smoothing < 0.5, f"label_smoothing={cfg.label_smoothing} must "
                   f"be in [0, 0.5): it is the assumed fraction of flipped preference labels")
    common.require(cfg.label_smoothing == 0 or cfg.loss_type in ("sigmoid", "robust"),
                   f"label_smoothing applies to loss_type sigmoid or robust, not {cfg.loss_type!r}")
    common.require(cfg.rpo_alpha >= 0, f"rpo_alpha={cfg.rpo_alpha} must be >= 0")
    common.require(cfg.rpo_alpha == 0 or cfg.loss_type != "orpo", "loss_type='orpo' has its NLL "
                   "term built in: rpo_alpha must be 0 (it would add the NLL a second time)")
    common.require(cfg.simpo_gamma >= 0, f"simpo_gamma={cfg.simpo_gamma} must be >= 0")
    common.require(0 <= cfg.min_lr <= cfg.lr, f"min_lr={cfg.min_lr} must be in [0, lr={cfg.lr}]")
    common.require(cfg.warmup_iters >= 0, f"warmup_iters={cfg.warmup_iters} must be >= 0")
    common.require(0 <= cfg.dropout < 1, f"dropout={cfg.dropout} must be in [0, 1)")
    common.require(cfg.stop_iter == -1 or 0 < cfg.stop_iter <= cfg.max_iters,
                   f"stop_iter={cfg.stop_iter} must be -1 or in 1..max_iters={cfg.max_iters}")
    common.require(not (cfg.loss_type in REFERENCE_FREE and cfg.precompute_ref_logps),
                   f"loss_type={cfg.loss_type!r} uses no reference model: "
                   f"precompute_ref_logps must be False")
    # a negative grad_clip would flip the gradient's sign inside clip_grad_norm_, silently
    common.require(cfg.weight_decay >= 0 and cfg.grad_clip >= 0 and cfg.eps > 0,
                   "weight_decay and grad_clip must be >= 0 (grad_clip=0 turns clipping off), "
                   "eps > 0")
    common.require(0 <= cfg.beta1 < 1 and 0 <= cfg.beta2 < 1, "beta1, beta2 must be in [0, 1)")
    common.require(cfg.eval_iters == -1 or cfg.eval_iters > 0,
                   f"eval_iters={cfg.eval_iters} must be > 0, or -1 for all held-out batches")
    common.require(cfg.tokenizer in ("byte", "gpt2"),
                   f"tokenizer={cfg.tokenizer!r}: 'byte' or 'gpt2'")
    common.require(cfg.dtype in ("auto", "float32", "bfloat16"),
                   f"dtype={cfg.dtype!r}: 'auto', 'float32' or 'bfloat16'")
    for key in ("train_data", "val_data"):
        common.require(os.path.isfile(getattr(cfg, key)), f"{key}={getattr(cfg, key)!r} does not "
                       f"exist (toy data: python data/toy/prepare.py)")
    hub = ("scratch", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
    for key in ("init_from", "ref_from"):  # fail before any model is built
        path = getattr(cfg, key)
        common.require(not path or path in hub or os.path.exists(path), f"{key}={path!r} does "
                       f"not exist (the toy SFT model: python train_sft.py)")


def main(argv=None):
    cfg = common.parse_config(DEFAULTS, argv, __doc__)
    validate(cfg)
    rt = common.init_runtime(cfg)
    resume_path = common.prepare_out_dir(cfg.out_dir, cfg.resume, cfg.overwrite, rt.master)
    common.install_stop_handlers()
    reference_free = cfg.loss_type in REFERENCE_FREE

    # -------------------------------------------------------------------------
    # models: the policy (from the SFT checkpoint, or the run we resume), the frozen reference
    if resume_path:  # our own last checkpoint: it must be a DPO run's
        ckpt = common.load_checkpoint(resume_path, expect_kind="policy", expect_stage="dpo")
        model = common.model_from_checkpoint(GPT, ckpt, resume_path, cfg.dropout)
        tok_name = ckpt["tokenizer"]
    else:
        model, tok_name = common.init_policy(cfg.init_from, cfg.tokenizer, dropout=cfg.dropout)
    common.check_block_size(model, cfg.block_size)
    enc = get_tokenizer(tok_name)
    model.to(rt.device)
    ref_model = None
    if not reference_free:
        ref_from = cfg.ref_from or cfg.init_from
        ref_model, ref_tok = common.init_policy(ref_from, cfg.tokenizer)
        common.require(ref_tok == tok_name, f"the reference {ref_from} uses the {ref_tok!r} "
                       f"tokenizer, the policy {tok_name!r}")
        common.check_block_size(ref_model, cfg.block_size, f"the reference {ref_from}")
        ref_model.to(rt.device).eval().requires_grad_(False)

    # -------------------------------------------------------------------------
    # data: right-padded pairs; a batch's position in the data is its step (exact resume)
    train = loader.load_preferences(cfg.train_data, enc, cfg.block_size)
    val = loader.load_preferences(cfg.val_data, enc, cfg.block_size)
    common.print0(f"{len(train)} training pairs, {len(val)} held-out pairs, "
                  f"loss {cfg.loss_type}, tokenizer {tok_name}")

    # batches of similar lengths waste less compute on padding (the order is still seeded)
    lengths = tuple(max(len(p["chosen"][0]), len(p["rejected"][0])) for p in train) \
        if cfg.length_buckets else None

    def get_batch(data, indices):
        batch = loader.collate_pairs([data[i] for i in indices], pad_id=enc.eot_token)
        return {k: v.to(rt.device) for k, v in batch.items()}

    # -------------------------------------------------------------------------
    # reference log-probs, once, before training: then the reference model can go
    @torch.inference_mode()
    def reference_logps(data):
        """(N, 2) summed log-probs of (chosen, rejected) under the reference, ranks sharing work."""
        out = torch.zeros(len(data), 2, device=rt.device)
        B = cfg.batch_size * 2  # no gradients, so twice the training batch fits
        for start in range(rt.rank * B, len(data), B * rt.world_size):
            indices = list(range(start, min(start + B, len(data))))
            c, r, _, _ = pair_logprobs(ref_model, get_batch(data, indices), rt.autocast)
            out[indices, 0], out[indices, 1] = c.float(), r.float()
        return common.all_reduce_mean(out) * rt.world_size  # every row came from one rank

    ref_cache = None
    if cfg.precompute_ref_logps:
        cache_path = os.path.join(cfg.out_dir, "ref_logps.pt")
        meta = dict(ref=cfg.ref_from or cfg.init_from, train_data=cfg.train_data,
                    val_data=cfg.val_data, block_size=cfg.block_size, n_train=len(train),
                    n_val=len(val), dtype=rt.dtype)
        if resume_path and os.path.isfile(cache_path):  # a resumed run reuses what it computed
            ref_cache = load_ref_cache(cache_path, meta, rt.device)
        # computing is a collective: every rank recomputes when any rank could not use the file
        if common.all_reduce_max(float(ref_cache is None)) > 0:
            t0 = time.time()
            ref_cache = dict(train=reference_logps(train), val=reference_logps(val), meta=meta)
            common.print0(f"reference log-probs of {len(train) + len(val)} pairs in "
                          f"{time.time() - t0:.1f}s, cached in {cache_path}")
            if rt.master:
                common.save_checkpoint(cache_path, ref_cache)
        del ref_model  # training never needs it again
        ref_model = None

    def get_ref_logps(split, indices, batch):
        if reference_free:
            return None
        if ref_cache is not None:
            row = ref_cache[split][indices]  # (B, 2)
            return row[:, 0], row[:, 1]
        with torch.inference_mode():
            c, r, _, _ = pair_logprobs(ref_model, batch, rt.autocast)
        return c.clone(), r.clone()  # plain tensors, usable in the autograd graph

    # -------------------------------------------------------------------------
    # optimizer, resume, wrappers
    optimizer = common.configure_optimizer(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2),
                                           cfg.eps, rt.device_type)
    step, best_val = 0, float("inf")
    if resume_path:
        optimizer.load_state_dict(ckpt["optimizer"])
        step, best_val = ckpt["step"], ckpt["best_val_loss"]
        common.set_rng_state(ckpt["rng"])
        del ckpt
        common.print0(f"resumed from {resume_path} at step {step}")
    model = common.maybe_compile(model, cfg.compile)
    if rt.ddp:
        model = DDP(model, device_ids=[rt.local_rank] if rt.device_type == "cuda" else None)
    logger = common.MetricsLogger(cfg.out_dir, "log", resume_step=step if resume_path else None,
                                  enabled=rt.master)

    @torch.no_grad()
    def evaluate():
        """The training metrics on held-out pairs, averaged over pairs."""
        model.eval()
        sums, n = dict.fromkeys(METRICS, 0.0), 0
        n_batches = math.ceil(len(val) / cfg.batch_size)
        if cfg.eval_iters > 0:
            n_batches = min(n_batches, cfg.eval_iters)
        for b in range(rt.rank, n_batches, rt.world_size):
            indices = list(range(b * cfg.batch_size, min((b + 1) * cfg.batch_size, len(val))))
            batch = get_batch(val, indices)
            logps = pair_logprobs(model, batch, rt.autocast)
            out = preference_losses(cfg, logps, get_ref_logps("val", indices, batch))
            for k, v in pair_metrics(*out, logps).items():
                sums[k] += v * len(indices)
            n += len(indices)
        model.train()
        sums = {k: common.all_reduce_mean(v) for k, v in sums.items()}
        n = common.all_reduce_mean(float(n))
        return {f"val_{k}": v / max(n, 1) for k, v in sums.items()}

    def save(name, step):
        ckpt = common.make_checkpoint(model, "policy", "dpo", tok_name, cfg, step, optimizer,
                                      best_val_loss=best_val)
        common.save_checkpoint(os.path.join(cfg.out_dir, name), ckpt)

    def evaluate_and_log():
        """Held-out metrics at `step`, logged; ckpt_best.pt when the held-out loss improves."""
        nonlocal val_metrics, best_val, t0
        t_eval = time.time()
        val_metrics = evaluate()
        logger.log(step, **val_metrics)
        if val_metrics["val_loss"] < best_val:
            best_val = val_metrics["val_loss"]
            if rt.master:
                save("ckpt_best.pt", step)
        t0 += time.time() - t_eval  # the step timer measures training only

    # -------------------------------------------------------------------------
    # the loop. Step s is evaluated before its checkpoint is written, so a run resumed from
    # that checkpoint neither repeats the evaluation nor skips it.
    model.train()
    train_metrics, val_metrics = {}, {}
    t0, last_logged = time.time(), step
    if not resume_path:  # every input has loaded: only now may --overwrite=True drop the old run
        common.clear_out_dir(cfg.out_dir, rt.master)
    if step == 0:
        evaluate_and_log()
    while step < cfg.max_iters:
        lr = common.get_lr(step, cfg.lr, cfg.min_lr, cfg.warmup_iters, cfg.max_iters)
        common.set_lr(optimizer, lr)
        sums = dict.fromkeys(METRICS, 0.0)
        for micro in range(cfg.grad_accum):
            indices = loader.batch_indices(len(train), cfg.batch_size, step * cfg.grad_accum + micro,
                                           cfg.seed, rt.rank, rt.world_size, lengths)
            batch = get_batch(train, indices)
            with common.no_sync_unless(model, micro == cfg.grad_accum - 1):
                logps = pair_logprobs(model, batch, rt.autocast)
                out = preference_losses(cfg, logps, get_ref_logps("train", indices, batch))
                (out[0].mean() / cfg.grad_accum).backward()
            for k, v in pair_metrics(*out, logps).items():
                sums[k] += v / cfg.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                   cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        common.check_finite(step + 1, loss=sums["loss"], grad_norm=grad_norm)  # the log's number
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        train_metrics = {k: common.all_reduce_mean(v) for k, v in sums.items()}
        if step % cfg.log_interval == 0 or step == cfg.max_iters:
            dt = (time.time() - t0) / (step - last_logged)
            t0, last_logged = time.time(), step
            logger.log(step, **train_metrics, grad_norm=float(grad_norm), lr=lr, ms=1000 * dt)
        if step % cfg.eval_interval == 0 or step == cfg.max_iters:
            evaluate_and_log()
        stopping = step == cfg.stop_iter or common.stop_requested()
        if rt.master and (step % cfg.ckpt_interval == 0 or step == cfg.max_iters or stopping):
            save("ckpt_last.pt", step)
        if stopping:
            common.print0(f"stopped at step {step}; continue with --resume=True")
            break

    if rt.ddp:
        torch.distributed.barrier()  # no rank tears gloo down while another still uses it
        torch.distributed.destroy_process_group()
    return dict(out_dir=cfg.out_dir, step=step, **train_metrics, **val_metrics)


if __name__ == "__main__":
    main()
