"""
Direct Preference Optimization (Rafailov et al. 2023) and its relatives, starting from the SFT
policy and learning from pairs (prompt, chosen, rejected) with no reward model and no sampling.

    python data/toy/prepare.py && python train_sft.py && python data/toy/label.py  # world, SFT, labels
    python train_dpo.py                                   # CPU toy default, a few minutes
    python train_dpo.py config/dpo_gpt2_hh.py             # one GPU, GPT-2 124M on Anthropic HH
    torchrun --standalone --nproc_per_node=8 train_dpo.py config/dpo_gpt2_hh.py \
        --grad_accum=1                                    # 8 GPUs, the same 64 pairs per step
    python train_dpo.py --loss_type=simpo                 # reference-free: SimPO or ORPO
    python train_dpo.py config/kto_toy.py                 # KTO: single answers, good or bad

The policy starts as the SFT model; the reference is a frozen copy of it. Each pair's chosen and
rejected answers go through the policy in one forward (chosen rows, then rejected rows), and a
sequence's log-prob is the sum over its response tokens (the prompt and the padding are masked).
With share_prompt a row holds the prompt once and both answers after it, each answer seeing only
the prompt and itself (model.shared_prompt_mask): the same log-probs for fewer positions, which
pays where prompts are long (HH: about a third fewer positions per step, README "Speed").
loss_type picks the loss: 'sigmoid' (DPO; conservative DPO with label_smoothing), 'robust',
'ipo', 'hinge' need the reference; 'simpo' and 'orpo' need none, and then none is built.
Every default is the published loss. rpo_alpha > 0 adds an NLL term on the chosen answer to
the reference-based losses and SimPO; that is RPO (Pang et al. 2024), a different objective,
so call such a run "rpo" (or "dpo+nll"), not DPO. ORPO has its NLL term built in. With
precompute_ref_logps the reference log-probs are computed once before training, cached in
out_dir, and the reference model is freed. Watch logps_chosen in the log: with plain DPO it
usually falls while the margin rises (both answers become less likely, the rejected one faster).
The optional "margin" field of a preference record is not used here.
'kto' (Ethayarajh et al. 2024) learns from unpaired feedback {"prompt", "completion", "label"}:
each answer against a reference point, the batch's KL estimated on mismatched pairs.

Deliberately left out: other unpaired losses, online/iterative DPO (no sampling here:
see train_ppo.py for that), sampling-based evaluation during training (data/toy/judge.py scores
samples of a finished policy), a reference model that is re-synchronised to the policy, and
padding-free packing of sequences.
"""

import hashlib
import math
import os
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

import common
from data import loader
from model import GPT, position_ids_from_mask, shared_prompt_mask
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
                                           # (loader.collate_shared_prompt): fewer positions
    # the loss
    loss_type="sigmoid",                   # sigmoid | robust | ipo | hinge | simpo | orpo | kto
    beta=0.5,                              # DPO-family temperature (strength of the KL anchor);
                                           # 0.1 on the toy world's on-policy pairs: KL 19 (README)
    label_smoothing=0.0,                   # assumed fraction of flipped labels (sigmoid, robust)
    rpo_alpha=0.0,                         # weight of the chosen answer's NLL (RPO); 0 = off
    simpo_beta=2.0,                        # SimPO reward scale
    simpo_gamma=1.0,                       # SimPO target reward margin
    orpo_lambda=0.1,                       # ORPO weight of the odds-ratio term
    desirable_weight=1.0,                  # KTO's lambda_D and lambda_U: aim for
    undesirable_weight=1.0,                # lambda_D n_D / (lambda_U n_U) in [1, 4/3]
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
    resume=False,
    overwrite=False,
    stop_iter=-1,                          # stop with a checkpoint after this iteration
)

LOSS_TYPES = ("sigmoid", "robust", "ipo", "hinge", "simpo", "orpo", "kto")
REFERENCE_FREE = ("simpo", "orpo")

# -----------------------------------------------------------------------------
# the losses: pure functions of per-example sequence log-probs


def sequence_logprobs(logprobs, loss_mask, average=False):
    """
    log pi(y | x) of each row: token log-probs summed over the positions where loss_mask is 1
    (the response and its EOS), or their mean with average=True (SimPO, ORPO).
    logprobs (B, T-1) of the tokens idx[:, 1:] (common.token_logprobs or trained_logprobs),
    loss_mask (B, T) over idx -> (B,). Position 0 is never predicted (never a response).
    """
    mask = loss_mask[:, 1:].to(logprobs.dtype)
    total = (logprobs * mask).sum(-1)
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


def pair_logprobs(model, batch, autocast, split=True):
    """
    Summed and length-averaged response log-probs of the chosen and rejected answers, from one
    forward over the concatenated batch (chosen rows, then rejected rows): 4 tensors of (B,).
    A loader.collate_shared_prompt batch goes through shared_prompt_logprobs instead.
    The LM head runs only at the positions that predict a response token (trained_logprobs).
    The rows are right-padded, so no attention mask is needed (GPT.forward); positions still
    come from the mask, so that a CPU run is bitwise the masked one.
    """
    if "segments" in batch:  # loader.collate_shared_prompt: each prompt computed once
        total, count = shared_prompt_logprobs(model, batch, autocast)
        avg = total / count.clamp(min=1)
        c, r = batch["chosen"], batch["rejected"]
        return total[c], total[r], avg[c], avg[r]
    idx, loss_mask = batch["idx"], batch["loss_mask"]
    positions = position_ids_from_mask(batch["attention_mask"])
    logp = common.trained_logprobs(model, idx, loss_mask, positions, autocast)  # (2B, T-1)
    total = sequence_logprobs(logp, loss_mask)  # (2B,)
    if not split:  # one sum per row (KTO)
        return total
    avg = total / loss_mask[:, 1:].sum(-1).clamp(min=1)
    B = idx.size(0) // 2
    return total[:B], total[B:], avg[:B], avg[B:]


def shared_prompt_logprobs(model, batch, autocast=None):
    """
    Summed response log-probs (A,) float32 of every answer of a loader.collate_shared_prompt
    batch, and each answer's token count (A,), from one forward whose rows hold a prompt once and
    all its answers after it: model.shared_prompt_mask lets each answer see only the prompt and
    itself, so each log-prob is the one of the answer in a row of its own (collate_pairs,
    sequence_logprobs of trained_logprobs; a test checks), for fewer positions. The LM head runs
    only at the positions that predict an answer token; the prompt's last position predicts the
    first token of every answer.
    """
    mask = shared_prompt_mask(batch["segments"])  # (R, 1, T, T)
    with autocast or nullcontext():
        logits = model(batch["idx"], attention_mask=mask, position_ids=batch["position_ids"],
                       logits_at=(batch["src_rows"], batch["src_pos"]))  # (n, V)
    logp = common.logprobs_of(logits, batch["targets"])  # (n,) float32
    A = batch["last_rows"].numel()
    total = logp.new_zeros(A).index_add(0, batch["owner"], logp)  # (A,)
    return total, torch.bincount(batch["owner"], minlength=A)


def kto_loss(policy_logps, reference_logps, desirable, kl, beta=0.1, desirable_weight=1.0,
             undesirable_weight=1.0):
    """
    KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization",
    eq. 7): a loss on single answers labelled desirable or not, no pairs needed.

        r  = log pi(y|x) - log pi_ref(y|x)          (summed over the response and its EOS)
        z0 = max(0, KL), detached                   (the reference point)
        L  = lambda_D * (1 - sigma(beta * (r - z0)))   for a desirable y
             lambda_U * (1 - sigma(beta * (z0 - r)))   for an undesirable y

    kl: the batch's estimate of KL(pi || pi_ref), the mean log-ratio of completions paired with
    other prompts of the batch (kto_kl). policy_logps, reference_logps (B,), desirable (B,) bool
    -> per-example losses (B,).
    """
    r = policy_logps - reference_logps
    z0 = torch.as_tensor(kl, dtype=r.dtype, device=r.device).clamp(min=0).detach()
    return torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * (r - z0))),
                       undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r))))


def kto_kl(policy_logps, reference_logps, reduce=True):
    """KTO's reference point: the mean log pi / pi_ref of the batch's mismatched pairs (prompt b,
    the completion of b + 1), a biased but cheap estimate of KL(pi || pi_ref) (sec. 4.1),
    averaged over every rank under DDP when reduce (a collective); detached."""
    kl = (policy_logps - reference_logps).detach().float().mean()
    return common.all_reduce_mean(kl) if reduce else kl


def kto_logprobs(model, batch, autocast):
    """Summed response log-probs (B,) of the examples, with gradients, and of the mismatched
    pairs, without (the reference point takes none): rows 0..B-1 and B..2B-1 of a
    loader.collate_unpaired batch."""
    B = batch["desirable"].numel()
    half = lambda sl: {k: batch[k][sl] for k in ("idx", "attention_mask", "loss_mask")}  # noqa: E731
    matched = pair_logprobs(model, half(slice(0, B)), autocast, split=False)
    with torch.no_grad():
        mismatched = pair_logprobs(model, half(slice(B, 2 * B)), autocast, split=False)
    return matched, mismatched


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


KTO_METRICS = ("loss", "rewards_desirable", "rewards_undesirable", "kl", "accuracy",
               "logps_desirable", "logps_undesirable")


def kto_metrics(losses, policy_logps, reference_logps, desirable, kl, beta):
    """KTO's numbers: the implicit rewards beta * r of the desirable and the undesirable answers,
    the reference point, and accuracy = the share of answers on their side of it."""
    r, z0, d = policy_logps - reference_logps, max(float(kl), 0.0), desirable.float()
    mean = lambda x, m: ((x * m).sum() / m.sum().clamp(min=1)).item()  # noqa: E731
    return dict(loss=losses.mean().item(), rewards_desirable=mean(beta * r, d),
                rewards_undesirable=mean(beta * r, 1 - d), kl=float(kl),
                accuracy=((r > z0) == desirable).float().mean().item(),
                logps_desirable=mean(policy_logps.detach(), d),
                logps_undesirable=mean(policy_logps.detach(), 1 - d))


def batch_loss(model, batch, ref_logps, cfg, autocast, reduce_kl=True):
    """Per-example losses (B,) of one batch for cfg's loss_type, and its metrics: the policy's
    log-probs, the reference's (ref_logps(batch), or None for SimPO / ORPO), the loss."""
    if cfg.loss_type == "kto":
        logps, ref = kto_logprobs(model, batch, autocast), ref_logps(batch)
        kl = kto_kl(logps[1], ref[1], reduce_kl)
        losses = kto_loss(logps[0], ref[0], batch["desirable"], kl, cfg.beta,
                          cfg.desirable_weight, cfg.undesirable_weight)
        return losses, kto_metrics(losses, logps[0], ref[0], batch["desirable"], kl, cfg.beta)
    logps = pair_logprobs(model, batch, autocast)
    out = preference_losses(cfg, logps, ref_logps(batch))
    return out[0], pair_metrics(*out, logps)


def dpo_step(model, micro_batches, ref_logps, cfg, rt):
    """
    Forward and backward of one optimizer step: for each micro-batch (a collate_pairs dict on the
    device, or collate_unpaired for KTO) the policy's log-probs, the reference's (ref_logps(batch)
    -> (chosen, rejected) summed log-probs, or None for SimPO / ORPO), the loss cfg names, and
    its gradient. Returns the step's metrics, averaged over the micro-batches.
    """
    sums = {}
    for k, batch in enumerate(micro_batches):
        with common.no_sync_unless(model, k == len(micro_batches) - 1):
            losses, metrics = batch_loss(model, batch, ref_logps, cfg, rt.autocast)
            (losses.mean() / len(micro_batches)).backward()
        for key, v in metrics.items():
            sums[key] = sums.get(key, 0.0) + v / len(micro_batches)
    return sums


def content_key(cfg, ref_model, rt):
    """What the reference log-probs depend on, hashed: the bytes of both data files, the
    reference's weights, block_size, the tokenizer and the precision. A cache made for anything
    else (data edited since, another reference) has another key and is recomputed."""
    h = hashlib.sha256(f"{cfg.block_size} {rt.dtype} {ref_model.config}".encode())
    for path in cfg.train_data.split(",") + [cfg.val_data]:
        with open(path, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    for name, t in sorted(ref_model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@torch.inference_mode()
def reference_logps(ref_model, data, cfg, rt, pad_id):
    """(N, 2) summed log-probs of (chosen, rejected) of every pair under the reference, the ranks
    sharing the work (a collective under DDP)."""
    out = torch.zeros(len(data), 2, device=rt.device)
    B = cfg.batch_size * 2  # no gradients, so twice the training batch fits
    # pairs of similar lengths pad less (real HH: 60% fewer positions); rows go back in place
    order = sorted(range(len(data)), key=lambda i: loader.pair_length(data[i]))
    for start in range(rt.rank * B, len(data), B * rt.world_size):
        rows = order[start:start + B]
        batch = to_device(loader.collate_pairs([data[i] for i in rows], pad_id,
                                               cfg.share_prompt), rt)
        c, r, _, _ = pair_logprobs(ref_model, batch, rt.autocast)
        out[rows, 0], out[rows, 1] = c.float(), r.float()
    return common.all_reduce_mean(out) * rt.world_size  # every row came from one rank


def load_ref_cache(path, key, sizes, device):
    """
    The reference log-probs cached by an earlier process of this run, {'train': (n_train, 2),
    'val': (n_val, 2), 'key': content_key}, or None, with a printed note, when the file is
    unreadable (cut by a kill, overwritten by hand) or was made for other content: it is only a
    cache, and the caller recomputes it.
    """
    try:
        cache = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # truncated, not a torch file, or a pickle that is not plain data
        problem = f"unreadable ({type(e).__name__}: {str(e)[:200]})"
    else:
        if not (isinstance(cache, dict) and set(cache) == {"train", "val", "key"}):
            problem = "not a reference cache (expected the keys 'train', 'val', 'key')"
        elif cache["key"] != key:
            problem = "made for other data, another reference model, block_size or dtype"
        elif not all(torch.is_tensor(cache[k]) and tuple(cache[k].shape) == (sizes[k], 2)
                     and cache[k].dtype == torch.float32 and bool(cache[k].isfinite().all())
                     for k in sizes):
            problem = f"its tensors are not finite float32 of shapes {sizes} x 2"
        else:
            return cache
    common.print0(f"note: {path}: {problem}; recomputing the reference log-probs")
    return None


@torch.no_grad()
def log_token_ratios(run, step, model, ref_model, batch, enc, autocast):
    """Per-token log pi / pi_ref of each response of a batch (chosen rows, then rejected ones;
    KTO: its examples) to tokens.jsonl, for plot.py's heatmaps: where the preference lands."""
    idx, lm = batch["idx"], batch["loss_mask"]
    ratio = (common.trained_logprobs(model, idx, lm, autocast=autocast)
             - common.trained_logprobs(ref_model, idx, lm, autocast=autocast))  # (2B, T-1)
    B = idx.size(0) // 2
    for b in range(B):
        rows = {"desirable" if batch["desirable"][b] else "undesirable": b} \
            if "desirable" in batch else {"chosen": b, "rejected": B + b}
        fields = {}
        for name, r in rows.items():
            at = lm[r, 1:].bool()  # the positions that predict a response token
            fields[f"tokens_{name}"] = token_texts(enc, idx[r, 1:][at].tolist())
            fields[f"log_ratio_{name}"] = [round(x, 5) for x in ratio[r][at].tolist()]
        run.log_tokens(step, **fields)


def print_kto_balance(train, cfg):
    """KTO's advice for imbalanced feedback (sec. 4.2): lambda_D n_D / (lambda_U n_U) in [1, 4/3]."""
    n_d = sum(e["desirable"] for e in train)
    n_u = len(train) - n_d
    ratio = cfg.desirable_weight * n_d / max(cfg.undesirable_weight * n_u, 1)
    note = "" if 1 <= ratio <= 4 / 3 or not n_d else (
        f"; the KTO paper advises [1, 4/3]: e.g. desirable_weight="
        f"{cfg.undesirable_weight * n_u / n_d:.3g} to {4 / 3 * cfg.undesirable_weight * n_u / n_d:.3g}")
    common.print0(f"KTO: {n_d} desirable and {n_u} undesirable answers; lambda_D n_D / "
                  f"(lambda_U n_U) = {ratio:.3g}{note}")


def to_device(batch, rt):
    return {k: v.to(rt.device) for k, v in batch.items()}


def validate(cfg):
    """Bad values fail here, with the key's name, before anything is loaded or written."""
    common.validate(cfg, {
        "loss_type": (lambda v: v in LOSS_TYPES, f"one of {', '.join(LOSS_TYPES)}"),
        "beta": (lambda v: v > 0, "> 0"),
        "label_smoothing": (lambda v: 0 <= v < 0.5, "in [0, 0.5): the assumed fraction of "
                                                   "flipped preference labels")})
    common.require(cfg.label_smoothing == 0 or cfg.loss_type in ("sigmoid", "robust"),
                   f"label_smoothing applies to loss_type sigmoid or robust, not {cfg.loss_type!r}")
    common.require(cfg.rpo_alpha == 0 or cfg.loss_type != "orpo", "loss_type='orpo' has its NLL "
                   "term built in: rpo_alpha must be 0 (it would add the NLL a second time)")
    common.require(not (cfg.loss_type in REFERENCE_FREE + ("kto",) and cfg.precompute_ref_logps),
                   f"loss_type={cfg.loss_type!r} uses no reference model, or (KTO) needs it for "
                   f"each batch's mismatched pairs: precompute_ref_logps must be False")
    common.require(cfg.loss_type != "kto" or cfg.batch_size >= 2, "loss_type='kto' needs "
                   "batch_size >= 2: its reference point pairs each prompt with another answer")
    common.require(not (cfg.share_prompt and cfg.loss_type == "kto"), "share_prompt applies to "
                   "pairs: KTO's answers are single (set share_prompt=False)")
    common.require(cfg.desirable_weight > 0 and cfg.undesirable_weight > 0,
                   "desirable_weight and undesirable_weight must be > 0")
    common.require_files(cfg, "train_data", "val_data", hint="toy data: python data/toy/prepare.py")
    common.require_files(cfg, "init_from", "reference", hint="the toy SFT model: python train_sft.py")


def load_models(cfg, run):
    """The policy (from the SFT checkpoint, or the run we resume) on the device, its frozen
    reference (None for SimPO and ORPO), and the tokenizer."""
    rt = run.rt
    model, tok_name = run.model(GPT, lambda: common.init_policy(
        cfg.init_from, cfg.tokenizer, dropout=cfg.dropout), cfg.dropout)
    common.check_block_size(model, cfg.block_size)
    ref_model = None
    if cfg.loss_type not in REFERENCE_FREE:
        ref_from = cfg.reference or cfg.init_from
        ref_model, ref_tok = common.init_policy(ref_from, cfg.tokenizer)
        common.require(ref_tok == tok_name, f"the reference {ref_from} uses the {ref_tok!r} "
                       f"tokenizer, the policy {tok_name!r}")
        common.check_block_size(ref_model, cfg.block_size, f"the reference {ref_from}")
        ref_model.to(rt.device).eval().requires_grad_(False)
    return model.to(rt.device), ref_model, get_tokenizer(tok_name)


def load_data(cfg, enc):
    """Training and held-out pairs (KTO: single answers and their labels), right-padded at batch
    time (a batch's position in the data is its step: exact resume), and the lengths length
    bucketing sorts by."""
    kto = cfg.loss_type == "kto"
    load = loader.load_unpaired if kto else loader.load_preferences
    train, val = load(cfg.train_data, enc, cfg.block_size), load(cfg.val_data, enc, cfg.block_size)
    if kto:  # a fixed shuffle: a held-out batch mixes prompts, so its reference point pairs
        # answers with many other prompts, not the few of a file's consecutive lines
        val = [val[i] for i in torch.randperm(len(val), generator=torch.Generator().manual_seed(0))]
    val = val[:cfg.eval_examples] if cfg.eval_examples > 0 else val
    common.print0(f"{len(train)} training {'answers' if kto else 'pairs'}, {len(val)} held-out, "
                  f"loss {cfg.loss_type}, tokenizer {enc.name}")
    if kto:
        print_kto_balance(train, cfg)
    lengths = tuple(len(e["prompt"]) + len(e["completion"]) if kto else
                    loader.pair_length(e) for e in train) \
        if cfg.length_buckets else None
    return train, val, lengths


def precompute_reference(cfg, run, ref_model, train, val, enc):
    """The reference's log-probs of every pair, once, before training: {'train': (N, 2),
    'val': (N, 2), 'key'}, cached in out_dir under a key of the content (a resumed run reuses
    its cache unless the data or the reference changed)."""
    rt = run.rt
    key, path, cache = content_key(cfg, ref_model, rt), run.path("ref_logps.pt"), None
    if run.resume and os.path.isfile(path):
        cache = load_ref_cache(path, key, dict(train=len(train), val=len(val)), rt.device)
    # computing is a collective: every rank recomputes when any rank could not use the file
    if common.all_reduce_max(float(cache is None)) > 0:
        t0 = time.time()
        cache = dict(train=reference_logps(ref_model, train, cfg, rt, enc.eot_token),
                     val=reference_logps(ref_model, val, cfg, rt, enc.eot_token), key=key)
        common.print0(f"reference log-probs of {len(train) + len(val)} pairs in "
                      f"{time.time() - t0:.1f}s, cached in {path}")
        run.save("ref_logps.pt", cache)
    return cache


def main(argv=None):
    cfg = common.parse_config(DEFAULTS, argv, __doc__)
    validate(cfg)
    run = common.Run(cfg, "dpo")  # device, DDP, seeds, out_dir and its lock, the resume point
    rt = run.rt
    kto = cfg.loss_type == "kto"

    # -------------------------------------------------------------------------
    # models (the policy and its frozen reference) and data (pairs, or KTO's labelled answers)
    model, ref_model, enc = load_models(cfg, run)
    train, val, lengths = load_data(cfg, enc)
    # the reference's log-probs: none (SimPO, ORPO), live (one no-grad forward per batch), or
    # once before training, cached on disk, and then the reference is freed
    cache = precompute_reference(cfg, run, ref_model, train, val, enc) \
        if cfg.precompute_ref_logps else None
    ref_model = None if cache else ref_model

    def ref_logps(batch):
        if cache is not None:
            row = cache[batch["split"]][batch["rows"]]  # (B, 2)
            return row[:, 0], row[:, 1]
        if ref_model is None:
            return None
        with torch.inference_mode():
            c, r, _, _ = pair_logprobs(ref_model, batch, rt.autocast)
        return c.clone(), r.clone()  # plain tensors, usable in the autograd graph

    def get_batch(split, rows, share_prompt=cfg.share_prompt):
        data = [(train if split == "train" else val)[i] for i in rows]
        batch = loader.collate_unpaired(data, enc.eot_token, cfg.block_size) if kto else \
            loader.collate_pairs(data, enc.eot_token, share_prompt)
        return dict(to_device(batch, rt), split=split, rows=torch.as_tensor(rows, device=rt.device))

    # -------------------------------------------------------------------------
    # optimizer, and the loop state a resumed run picks up
    optimizer = common.make_optimizer(model, cfg, rt)
    step, best_val = run.restore(optimizer, best_val_loss=math.inf).values()
    trained = common.wrap(model, cfg.compile, rt)  # what the step calls; model stays plain

    def checkpoint():
        return common.make_checkpoint(model, "policy", "dpo", enc.name, cfg, step, optimizer,
                                      best_val_loss=best_val)

    @torch.no_grad()
    def evaluate():
        """The training metrics on held-out pairs, averaged over pairs; ckpt_best.pt when the
        held-out loss improves. Logged at `step`."""
        nonlocal best_val
        model.eval()
        sums, n = dict.fromkeys(KTO_METRICS if kto else METRICS, 0.0), 0
        for start in range(rt.rank * cfg.batch_size, len(val), cfg.batch_size * rt.world_size):
            batch = get_batch("val", range(start, min(start + cfg.batch_size, len(val))))
            # ranks may hold different numbers of batches: no collective in here
            for k, v in batch_loss(model, batch, ref_logps, cfg, rt.autocast, False)[1].items():
                sums[k] += v * len(batch["rows"])
            n += len(batch["rows"])
        if rt.master and ref_model is not None and cfg.num_samples:
            log_token_ratios(run, step, model, ref_model, get_batch("val", range(min(
                cfg.num_samples, len(val))), share_prompt=False), enc, rt.autocast)
        model.train()
        n = common.all_reduce_mean(float(n))
        metrics = {f"val_{k}": common.all_reduce_mean(v) / max(n, 1) for k, v in sums.items()}
        common.check_finite(step, val_loss=metrics["val_loss"])  # a broken model is never saved
        run.log(step, **metrics)
        if metrics["val_loss"] < best_val:
            best_val = metrics["val_loss"]
            run.save("ckpt_best.pt", checkpoint())
        return metrics

    # -------------------------------------------------------------------------
    # the loop. Step s is evaluated before its checkpoint is written, so a run resumed from
    # that checkpoint neither repeats the evaluation nor skips it.
    model.train()
    train_metrics, val_metrics = {}, {}
    if step == 0:
        val_metrics = evaluate()
    while step < cfg.max_iters:
        t0 = time.time()
        lr = common.get_lr(step, cfg.lr, cfg.min_lr, cfg.warmup_iters, cfg.max_iters)
        common.set_lr(optimizer, lr)
        # 1. this step's pairs: chosen and rejected rows of each micro-batch in one forward
        micro = [get_batch("train", loader.batch_indices(
                     len(train), cfg.batch_size, step * cfg.grad_accum + k, cfg.seed, rt.rank,
                     rt.world_size, lengths)) for k in range(cfg.grad_accum)]
        # 2. the preference loss of policy against reference log-ratios, forward and backward
        metrics = dpo_step(trained, micro, ref_logps, cfg, rt)
        # 3. clip, check, update (the error names the step as the log numbers it)
        grad_norm = common.optimizer_step(model, optimizer, cfg.grad_clip, step + 1,
                                          metrics["loss"])
        step += 1

        train_metrics = {k: common.all_reduce_mean(v) for k, v in metrics.items()}
        if step % cfg.log_interval == 0 or step == cfg.max_iters:
            run.log(step, **train_metrics, grad_norm=grad_norm, lr=lr,
                    ms_per_iter=round(1000 * (time.time() - t0), 1))
        if step % cfg.eval_interval == 0 or step == cfg.max_iters:
            val_metrics = evaluate()
        stopping = run.should_stop(step)
        if step % cfg.ckpt_interval == 0 or step == cfg.max_iters or stopping:
            run.save("ckpt_last.pt", checkpoint())
        if stopping:
            common.print0(f"stopped at step {step}; continue with --resume=True")
            break

    run.finish()
    return dict(out_dir=cfg.out_dir, step=step, **train_metrics, **val_metrics)


if __name__ == "__main__":
    common.cli(main)
