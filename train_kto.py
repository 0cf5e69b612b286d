"""
KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization"): learn
from single answers labelled desirable or not, {"prompt", "completion", "label"}, instead of
pairs. Like DPO it starts from the SFT policy, keeps a frozen reference, and needs no reward model
and no sampling; each answer's log-ratio r = log pi(y|x) - log pi_ref(y|x) is pushed above (a
desirable answer) or below (an undesirable one) a reference point z0, the batch's estimate of
KL(pi || pi_ref) on mismatched pairs (each prompt with another prompt's answer).

    python data/toy/prepare.py && python train_sft.py && python data/toy/label.py  # world, SFT, labels
    python train_kto.py config/kto_toy.py             # CPU toy, a few minutes
    torchrun --standalone --nproc_per_node=8 train_kto.py config/kto_toy.py --batch_size=2
    python train_kto.py --help                        # every config key and its default

One step:
  1. this step's answers, and as many mismatched pairs: prompt b with the answer of another
     prompt of the batch (loader.collate_unpaired), right-padded rows;
  2. the log-probs of both under the policy (the mismatched ones without gradient) and the
     reference;
  3. the reference point z0 = max(0, mean log-ratio of the mismatched pairs), over every rank;
  4. the KTO loss of each answer's log-ratio against z0, forward and backward;
  5. clip, check, update.
The loop, the evaluation and the checkpoints are train_dpo.py's (imported); so is its reference.

Deliberately left out: other unpaired losses, a precomputed reference (each batch's mismatched
pairs are new), a shared prompt layout (answers are single), and KTO's variants without a
reference model.
"""

import math
import time
from functools import partial

import torch

import checkpoint
import config
import layouts
import optim
import runtime
from data import loader
from run import Run
from runtime import print0
# shared with DPO (train_dpo.py): the models, the step, the held-out evaluation, the reference's
# live log-probs and the per-token ratio heatmaps
from train_dpo import (dpo_step, evaluate, evaluate_and_keep_best, held_out_batches,
                       load_models, log_token_ratios, reference_fn, save_and_check_stop,
                       to_device)

# -----------------------------------------------------------------------------
# default config: the offline toy run (config/kto_toy.py holds the same values)
DEFAULTS = dict(
    # I/O
    out_dir="out/kto_toy",
    init_from="out/sft_toy/ckpt_best.pt",  # the SFT policy (a .pt checkpoint, 'gpt2', HF dir)
    reference="",                          # reference model; '' = the same weights as init_from
    tokenizer="byte",                      # only used when init_from is not a checkpoint
    # data: JSONL unpaired feedback {"prompt", "completion", "label": true|false}
    train_data="data/toy/out/onpolicy_unpaired.jsonl",    # noisy labels: beats its prompt's median
    val_data="data/toy/out/onpolicy_unpaired_val.jsonl",  # held-out answers, noise-free labels
    block_size=128,                        # prompt + response tokens per sequence
    length_buckets=False,                  # batch answers of similar length: less padding (HH)
    # the loss
    beta=0.5,                              # temperature of the log-ratios (0.1: KL 30 nats, README)
    desirable_weight=1.0,                  # lambda_D and lambda_U: aim for
    undesirable_weight=1.0,                # lambda_D n_D / (lambda_U n_U) in [1, 4/3]
    # optimisation: AdamW, linear warmup then cosine decay to min_lr
    batch_size=16,                         # answers per micro-batch (and as many mismatched pairs)
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
    eval_examples=160,                     # held-out answers per evaluation; -1 = all of them
    num_samples=3,                         # held-out answers whose per-token log pi / pi_ref is
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

# -----------------------------------------------------------------------------
# the loss: a pure function of per-answer sequence log-probs


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
    Test: tests/test_kto.py::test_kto_loss_by_hand_and_against_the_papers_value_function
    """
    r = policy_logps - reference_logps
    z0 = torch.as_tensor(kl, dtype=r.dtype, device=r.device).clamp(min=0).detach()
    return torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * (r - z0))),
                       undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r))))


def kto_kl(policy_logps, reference_logps, reduce=True):
    """KTO's reference point: the mean log pi / pi_ref of the batch's mismatched pairs (prompt b,
    the completion of b + 1), a biased but cheap estimate of KL(pi || pi_ref) (sec. 4.1),
    averaged over every rank under DDP when reduce (a collective); detached.
    Test: tests/test_kto.py::test_kto_kl_by_hand"""
    kl = (policy_logps - reference_logps).detach().float().mean()
    return runtime.all_reduce_mean(kl) if reduce else kl


def kto_logprobs(model, batch, autocast):
    """Summed response log-probs (B,) of the examples, with gradients, and of the mismatched
    pairs, without (the reference point takes none): rows 0..B-1 and B..2B-1 of a
    loader.collate_unpaired batch, each half in its own forward."""
    B = batch["desirable"].numel()
    half = lambda sl: {k: batch[k][sl] for k in ("idx", "attention_mask", "loss_mask")}  # noqa: E731
    matched, _ = layouts.row_logprobs(model, half(slice(0, B)), autocast)
    with torch.no_grad():
        mismatched, _ = layouts.row_logprobs(model, half(slice(B, 2 * B)), autocast)
    return matched, mismatched


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
    """Per-answer KTO losses (B,) of one batch and its metrics: the policy's log-probs of the
    answers and of the mismatched pairs, the reference's (ref_logps(batch): both halves), the
    reference point (averaged over every rank when reduce_kl: a collective), the loss."""
    logps, ref = kto_logprobs(model, batch, autocast), ref_logps(batch)
    kl = kto_kl(logps[1], ref[1], reduce_kl)
    losses = kto_loss(logps[0], ref[0], batch["desirable"], kl, cfg.beta, cfg.desirable_weight,
                      cfg.undesirable_weight)
    return losses, kto_metrics(losses, logps[0], ref[0], batch["desirable"], kl, cfg.beta)

# -----------------------------------------------------------------------------


def print_kto_balance(train, cfg):
    """KTO's advice for imbalanced feedback (sec. 4.2): lambda_D n_D / (lambda_U n_U) in [1, 4/3]."""
    n_d = sum(e["desirable"] for e in train)
    n_u = len(train) - n_d
    ratio = cfg.desirable_weight * n_d / max(cfg.undesirable_weight * n_u, 1)
    if not n_d or not n_u:  # no weighting balances one kind of answer against none
        print0(f"KTO: all {len(train)} answers are {'undesirable' if n_u else 'desirable'}: no "
               f"weighting balances them (the loss still trains, against the reference point)")
        return
    note = "" if 1 <= ratio <= 4 / 3 else (
        f"; the KTO paper advises [1, 4/3]: e.g. desirable_weight="
        f"{cfg.undesirable_weight * n_u / n_d:.3g} to {4 / 3 * cfg.undesirable_weight * n_u / n_d:.3g}")
    print0(f"KTO: {n_d} desirable and {n_u} undesirable answers; lambda_D n_D / "
           f"(lambda_U n_U) = {ratio:.3g}{note}")


def validate(cfg):
    """Bad values fail here, with the key's name, before anything is loaded or written."""
    config.validate(cfg, {"beta": (lambda v: v > 0, "> 0")})
    config.require(cfg.batch_size >= 2, "KTO needs batch_size >= 2: its reference point pairs "
                   "each prompt with another answer")
    config.require(cfg.desirable_weight > 0 and cfg.undesirable_weight > 0,
                   "desirable_weight and undesirable_weight must be > 0")
    config.require_files(cfg, "train_data", "val_data", hint="toy data: python data/toy/prepare.py "
                         "&& python data/toy/label.py")
    config.require_files(cfg, "init_from", "reference", hint="the toy SFT model: python train_sft.py")


def load_data(cfg, enc):
    """Training and held-out answers with their labels, right-padded at batch time (a batch's
    position in the data is its step: exact resume), and the lengths length bucketing sorts by."""
    train = loader.load_unpaired(cfg.train_data, enc, cfg.block_size)
    val = loader.load_unpaired(cfg.val_data, enc, cfg.block_size)
    # a fixed shuffle: a held-out batch mixes prompts, so its reference point pairs answers with
    # many other prompts, not the few of a file's consecutive lines
    val = [val[i] for i in torch.randperm(len(val), generator=torch.Generator().manual_seed(0))]
    val = val[:cfg.eval_examples] if cfg.eval_examples > 0 else val
    print0(f"{len(train)} training answers, {len(val)} held-out, loss kto, tokenizer {enc.name}")
    print_kto_balance(train, cfg)
    lengths = tuple(len(e["prompt"]) + len(e["completion"]) for e in train) \
        if cfg.length_buckets else None
    return train, val, lengths


def main(argv=None):
    cfg = config.parse_config(DEFAULTS, argv, __doc__)
    validate(cfg)
    run = Run(cfg, "kto")  # device, DDP, seeds, out_dir and its lock, the resume point
    proc = run.proc

    # -------------------------------------------------------------------------
    # models (the policy and its frozen reference) and data (single answers and their labels)
    model, ref_model, enc = load_models(cfg, run)
    train, val, lengths = load_data(cfg, enc)
    # the reference's log-probs of a batch's answers and mismatched pairs: one no-grad forward
    ref_logps = reference_fn(ref_model, None, layouts.pair_logprobs, proc)

    def get_batch(split, rows):  # the answers, then their mismatched pairs, on the device
        data = [(train if split == "train" else val)[i] for i in rows]
        return dict(to_device(loader.collate_unpaired(data, enc.eot_token, cfg.block_size), proc),
                    split=split, rows=torch.as_tensor(rows, device=proc.device))

    # -------------------------------------------------------------------------
    # optimizer, and the loop state a resumed run picks up
    optimizer = optim.make_optimizer(model, cfg, proc)
    state = run.restore(optimizer, best_val_loss=math.inf)
    step = state.step
    wrapped = runtime.wrap(model, cfg.compile, proc)  # what the step calls; model stays plain

    def snapshot():
        return checkpoint.make_checkpoint(model, "policy", "kto", enc.name, cfg, step, optimizer,
                                          best_val_loss=state.best_val_loss)

    def evaluate_held_out():
        batches = held_out_batches(get_batch, len(val), cfg, proc)
        if proc.master and cfg.num_samples:  # plot.py's heatmaps
            batch = get_batch("val", range(min(cfg.num_samples, len(val))))
            log_token_ratios(run, step, model, ref_model, batch, enc, proc.autocast, rows=[
                {"desirable" if d else "undesirable": b} for b, d in enumerate(batch["desirable"])])
        loss_fn = partial(batch_loss, ref_logps=ref_logps, cfg=cfg, autocast=proc.autocast,
                          reduce_kl=False)  # ranks may hold different numbers of batches
        return evaluate_and_keep_best(run, step, state, snapshot,
                                      evaluate(model, batches, loss_fn, KTO_METRICS))

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
        # 1. this step's answers and their mismatched pairs, as grad_accum micro-batches
        micro = [get_batch("train", loader.batch_indices(
                     len(train), cfg.batch_size, step * cfg.grad_accum + k, cfg.seed, proc.rank,
                     proc.world_size, lengths)) for k in range(cfg.grad_accum)]
        # 2-4. the log-probs, the reference point, and the KTO loss, forward and backward
        metrics = dpo_step(wrapped, micro, partial(batch_loss, ref_logps=ref_logps, cfg=cfg,
                                                   autocast=proc.autocast))
        # 5. clip, check, update
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
