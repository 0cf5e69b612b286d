"""
Reward modelling: the second stage. Learn a scalar reward r(prompt, response) from preference
pairs (prompt, chosen, rejected), so that PPO can ask "how good is this answer?" of any text.

Run it:
    python data/toy/prepare.py && python train_sft.py && python data/toy/label.py  # world, SFT, labels
    python train_reward_model.py                          # offline CPU default, about 3 minutes
    python train_reward_model.py config/rm_gpt2_hh.py     # one GPU: GPT-2 124M on Anthropic HH
    torchrun --standalone --nproc_per_node=8 train_reward_model.py config/rm_gpt2_hh.py \
        --batch_size=8 --grad_accum=1                     # 8 GPUs, the same 64 pairs per step
    torchrun --standalone --nproc_per_node=8 train_reward_model.py config/rm_gpt2_xl_hh.py \
        --fsdp=True --grad_accum=1                        # GPT-2 XL sharded over 8 GPUs (FSDP)
    python train_reward_model.py --help                   # every config key and its default
    python train_reward_model.py --resume=True            # continue an interrupted run
    python train_reward_model.py --ensemble=3             # three members: out_dir/member{0,1,2}

The model is the SFT model's trunk with a fresh linear head (model.ScalarModel); the score of a
text is the head's output at its last real token, the response's EOS. Training minimises the
Bradley-Terry loss -log sigma(r_chosen - r_rejected) over pairs, optionally with a per-pair
margin from the data (use_margin, as Llama 2 does) and a term that keeps the scores centred
(center_coef). The chosen and rejected rows of a batch go through the model in ONE forward;
with share_prompt each prompt is computed once, its answers after it in the same row (each sees
only the prompt and itself: layouts.py), the same scores for fewer positions.
K-wise rankings {"prompt", "responses", "ranks"} are expanded by data/loader.py into their
K(K-1)/2 pairs (fewer with ties). With reverse=True every pair's order is reversed: a cost
model (Safe RLHF, safety.py), higher = worse, trained on the harmless rankings.

After training, the mean score of reference responses (the SFT data's answers, or the chosen
answers, on training prompts: bias_ref) is stored in the checkpoint as the model's reward_bias,
which ScalarModel subtracts from every score, so PPO starts from centred rewards.

Other scripts score token ids with `ScalarModel.score(idx, attention_mask)` (the ids the
policy produced, never re-tokenised).

With group_rankings=True a batch holds whole rankings, as InstructGPT batches them: each distinct
answer of a ranking is scored once and every pair of the ranking is a term of the loss, so a
K-wise ranking costs K forwards instead of K(K-1) (and its answers are not seen K-1 times per
epoch, which InstructGPT found to overfit). The loss is the mean over the batch's pairs.

Ensembles (Coste et al. 2023, "Reward Model Ensembles Help Mitigate Overoptimization"; Eisenstein
et al. 2023, "Helping or Herding?"): --ensemble=K trains K members one after another, each an
ordinary run in out_dir/member{k} with seed + k (its head, its data order, and with bootstrap=True
its own resample of the rankings), each centred on the same reference answers, so their scores
share one scale. Every consumer (PPO, GRPO, eval, sample.py, frontier.py) reads them together
(reward_model=out_dir, or a comma-separated list of checkpoints) and combines the K scores with
aggregate_rewards: the mean, the worst case, or the mean minus their variance.

Deliberately left out: members that differ in their pretraining (only the head, the data order
and the data resample differ here), InstructGPT's 1/C(K,2) weighting of each prompt
(the loss weighs every pair alike), an auxiliary language-modelling loss, and label smoothing /
noisy-label losses.
"""

import math
import os
import random
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F

import checkpoint
import config
import layouts
import optim
import runtime
from data import loader
from model import ScalarModel
from run import Run
from runtime import print0
from tokenizer import get_tokenizer

# -----------------------------------------------------------------------------
# default config: the offline toy run (config/rm_toy.py holds the same values)
DEFAULTS = dict(
    # I/O
    out_dir="out/rm_toy",
    init_from="out/sft_toy/ckpt_best.pt",  # SFT checkpoint | 'gpt2'...'gpt2-xl' | HF dir | 'scratch'
    tokenizer="byte",                      # only used with init_from='scratch'
    # data: JSONL pairs {"prompt", "chosen", "rejected"[, "margin"]} or K-wise rankings
    train_data="data/toy/out/onpolicy_train.jsonl",  # several files: comma-separated
    val_data="data/toy/out/onpolicy_val.jsonl",
    block_size=128,                        # prompt + response tokens per sequence
    # model (only for init_from='scratch')
    n_layer=4,
    n_head=4,
    n_embd=128,
    bias=True,
    dropout=0.0,
    # the loss
    use_margin=False,                      # subtract each pair's "margin" field inside the sigmoid
    center_coef=0.0,                       # lambda of the centering term lambda*(r_c + r_r)^2
    reverse=False,                         # learn a cost (Safe RLHF): every pair's order reversed,
                                           # the worse answer scores higher (safety.py)
    # ensembles: K members in out_dir/member{k}, member k seeded seed + k
    ensemble=1,                            # number of members (1: one model in out_dir itself)
    bootstrap=False,                       # each member trains on its own resample (with
                                           # replacement) of the rankings, seeded by its seed
    # reward normalisation after training: the mean score of these reference responses
    bias_ref="sft",                        # 'sft' (answers in bias_data) | 'chosen' | 'none'
    bias_data="data/toy/out/onpolicy_samples.jsonl",  # SFT-format JSONL (bias_ref='sft'): the
                                           # SFT policy's own answers (data/toy/label.py)
    bias_examples=1024,                    # reference responses to average (-1 = all)
    # optimisation: AdamW, linear warmup then cosine decay to min_lr
    batch_size=8,                          # pairs (or rankings) per micro-step
    grad_accum=1,
    length_buckets=True,                   # batches of similar lengths: less compute on padding
    group_rankings=True,                   # InstructGPT's batching: a K-wise ranking is one batch
                                           # element, each answer scored once for all its pairs
                                           # (K forwards, not K(K-1)); batch_size counts rankings
    share_prompt=False,                    # each prompt computed once for all its answers
                                           # (layouts.py): fewer positions
    num_epochs=5.0,                        # sets max_iters when max_iters = -1
    max_iters=-1,                          # -1: num_epochs over the training pairs
    lr=1e-3,
    min_lr=1e-4,
    warmup_iters=10,
    weight_decay=0.1,
    beta1=0.9,
    beta2=0.95,
    eps=1e-8,
    grad_clip=1.0,                         # clip the global grad norm; 0 = off
    # evaluation, logging, checkpoints
    log_interval=10,
    eval_interval=50,
    eval_examples=-1,                      # held-out pairs per evaluation (-1 = all)
    ckpt_interval=100,
    # system
    seed=1337,
    device="auto",                         # 'auto' | 'cpu' | 'cuda' | 'mps'
    dtype="auto",                          # 'auto' | 'float32' | 'bfloat16'
    compile=False,
    grad_checkpoint=False,                 # recompute each block in the backward: ~1/3 more
                                           # compute, a fraction of the activation memory
    fsdp=False,                            # under torchrun: shard the trained model, its grads and
                                           # AdamW state over the processes (FSDP, docs/SCALE.md)
    resume=False,
    overwrite=False,
    stop_iter=-1,                          # stop with a checkpoint after this step (-1: max_iters)
)

# -----------------------------------------------------------------------------
# the loss, and how an ensemble's scores combine


def reward_model_loss(chosen_rewards, rejected_rewards, margin=None, center_coef=0.0):
    """
    Bradley-Terry loss of a batch of pairs (Ouyang et al. 2022, InstructGPT, Eq. 1):

        loss = mean[ -log sigma(r_c - r_r - m) ] + center_coef * mean[ (r_c + r_r)^2 ]

    chosen_rewards, rejected_rewards (B,) scores; margin (B,) or None: how much better the chosen
    answer is required to be (Touvron et al. 2023, Llama 2, Eq. 2); the second term is the
    reward-centering auxiliary loss of Eisenstein et al. 2023 ("Helping or Herding? Reward Model
    Ensembles Mitigate but do not Eliminate Reward Hacking", Sec. 3), which pins the otherwise
    arbitrary offset of the scores near 0 (the BT term only sees differences).
    Returns (loss, metrics): metrics are floats (loss, accuracy = fraction with r_c > r_r,
    margin = mean r_c - r_r, chosen/rejected = mean scores).
    Test: tests/test_reward_model.py::test_loss_matches_hand_computation
    """
    diff = chosen_rewards.float() - rejected_rewards.float()  # (B,)
    target = diff if margin is None else diff - margin.to(diff)
    bt = -F.logsigmoid(target).mean()  # logsigmoid, not log(sigmoid): finite for any margin
    loss = bt
    if center_coef > 0:
        loss = loss + center_coef * ((chosen_rewards.float() + rejected_rewards.float()) ** 2).mean()
    metrics = dict(loss=loss.item(), bt_loss=bt.item(), accuracy=(diff > 0).float().mean().item(),
                   margin=diff.mean().item(), chosen=chosen_rewards.float().mean().item(),
                   rejected=rejected_rewards.float().mean().item())
    return loss, metrics

# -----------------------------------------------------------------------------


AGGREGATIONS = ("mean", "min", "uwo")


def aggregate_rewards(scores, how="mean", uwo_lambda=1.0):
    """
    One reward from the scores of an ensemble's K members (Coste et al. 2023, "Reward Model
    Ensembles Help Mitigate Overoptimization", sec. 3): scores (K, B) -> (B,).
        mean   1/K sum_k R_k                                  the ensemble's average
        min    min_k R_k                                      worst-case optimisation (WCO)
        uwo    1/K sum_k R_k - uwo_lambda * Var_k(R_k)        uncertainty-weighted (UWO): the
               variance over members (ddof = 0) penalises answers the members disagree on
    The members must share one scale: each is centred on the same reference answers
    (reward_bias). Test: tests/test_reward_model.py::test_aggregate_rewards_by_hand
    """
    scores = torch.as_tensor(scores).float()
    if how == "mean":
        return scores.mean(0)
    if how == "min":
        return scores.min(0).values
    if how == "uwo":
        return scores.mean(0) - uwo_lambda * scores.var(0, correction=0)
    raise ValueError(f"unknown aggregation {how!r}: expected one of {AGGREGATIONS}")


def validate(cfg):
    """Bad values fail here, naming the key, before anything is loaded or written."""
    config.validate(cfg, {
        "max_iters": (lambda v: v == -1 or v > 0, "> 0, or -1 to derive it from num_epochs"),
        "num_epochs": (lambda v: v > 0, "> 0 (it sets max_iters when max_iters=-1)"),
        "bias_ref": (lambda v: v in ("sft", "chosen", "none"), "'sft', 'chosen' or 'none'"),
        "bias_examples": (lambda v: v == -1 or v > 0, "> 0, or -1 for all"),
        "ensemble": (lambda v: 1 <= v <= 64, "in 1..64")})
    config.require_files(cfg, "train_data", "val_data", *(["bias_data"] * (cfg.bias_ref == "sft")),
                         hint="toy data: python data/toy/prepare.py; HH: python data/hh/prepare.py")
    if not cfg.resume:
        config.require_files(cfg, "init_from", hint="the toy SFT model: python train_sft.py; or "
                                                    "init_from='scratch'")


def rm_step(model, micro_batches, pair_scores, cfg, proc):
    """
    Forward and backward of one optimizer step's micro-batches (batches of the run's layout, on
    the device), each holding batch_size pairs or rankings; pair_scores(model, batch, autocast)
    -> (chosen, rejected) scores (P,) each is the layout's forward (layouts.score_layout).
    Each micro-batch is weighted by its share of the step's pairs, counted over every rank: the
    step's loss is the mean over all of its pairs, however they are split into micro-batches
    and ranks (whole rankings hold 1 to C(K, 2) pairs each, so a plain mean of micro-batch means
    would weigh a lone pair as much as a ranking of ten). Returns this rank's share of the
    step's metrics (reward_model_loss's, pair-weighted): their all-reduced sum is the step's.
    """
    n_pairs = max(runtime.all_reduce_sum(float(sum(b["margin"].numel() for b in micro_batches))), 1)
    sums = {}
    for k, batch in enumerate(micro_batches):
        with runtime.no_sync_unless(model, k == len(micro_batches) - 1):
            rc, rr = pair_scores(model, batch, proc.autocast)  # (P,), (P,)
            loss, m = reward_model_loss(rc, rr, batch["margin"] if cfg.use_margin else None,
                                        cfg.center_coef)
            weight = rc.numel() / n_pairs
            (loss * weight * proc.world_size).backward()  # DDP averages ranks; the mean needs the sum
        for key, v in m.items():
            sums[key] = sums.get(key, 0.0) + v * weight
    return sums


@torch.no_grad()
def evaluate(model, val_batches, layout, cfg, proc, pad_id):
    """Held-out accuracy (r_c > r_r), mean margin, loss, and the mean and std of all scores,
    over every rank's share of the batches (lists of pairs, val_batches), laid out by layout
    (collate, forward)."""
    model.eval()
    s = dict(n=0.0, correct=0.0, margin=0.0, loss=0.0, r=0.0, r2=0.0)
    with runtime.gathered(model):  # FSDP: ranks may hold different numbers of batches
        for pairs in val_batches[proc.rank::proc.world_size]:
            batch = to_device(layout.collate(pairs, pad_id), proc)
            rc, rr = layout.forward(model, batch, proc.autocast)
            _, m = reward_model_loss(rc, rr, batch["margin"] if cfg.use_margin else None,
                                     cfg.center_coef)
            n = rc.numel()
            for key, v in (("n", 1), ("margin", m["margin"]), ("loss", m["loss"])):
                s[key] += v * n
            # a count, not a float mean times n: two checkpoints right on as many pairs tie
            # exactly (and the held-out loss decides), however the pairs are batched
            s["correct"] += (rc > rr).sum().item()
            s["r"] += (rc.sum() + rr.sum()).item()
            s["r2"] += (rc.pow(2).sum() + rr.pow(2).sum()).item()
    model.train()
    s = {k: runtime.all_reduce_mean(v) for k, v in s.items()}  # sums / world_size: ratios hold
    n = max(s["n"], 1e-9)
    mean = s["r"] / (2 * n)
    return dict(val_accuracy=s["correct"] / n, val_margin=s["margin"] / n,
                val_loss=s["loss"] / n, val_reward_mean=mean,
                val_reward_std=math.sqrt(max(s["r2"] / (2 * n) - mean ** 2, 0.0)))


def evaluate_and_keep_best(run, model, val, layout, cfg, enc, step, state, snapshot):
    """Evaluate (logged at `step`) into state.val_metrics, and write ckpt_best.pt (what PPO
    starts from: snapshot(False, best_step=step)) when the held-out accuracy beats state.best,
    ties going to the lower held-out loss."""
    state.val_metrics = evaluate(model, val, layout, cfg, run.proc, enc.eot_token)
    optim.check_finite(step, val_loss=state.val_metrics["val_loss"])  # never save a broken model
    run.log(step, **state.val_metrics)
    key = (state.val_metrics["val_accuracy"], -state.val_metrics["val_loss"])
    if key > state.best:
        state.best = key
        run.save("ckpt_best.pt", snapshot(False, best_step=step))


def to_device(batch, proc):
    return {k: v.to(proc.device) for k, v in batch.items()}

# -----------------------------------------------------------------------------


def load_model(cfg, run):
    """The reward model on the device, raw (reward_bias 0: it is set once, at the end): a new
    scalar head on init_from's trunk, or the run we resume; and the tokenizer."""
    model_args = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                      block_size=cfg.block_size, bias=cfg.bias)
    model, tok_name = run.model(ScalarModel, lambda: checkpoint.init_scalar(
        cfg.init_from, cfg.tokenizer, model_args, cfg.dropout), cfg.dropout)
    model.reward_bias.zero_()  # training sees raw scores
    checkpoint.check_block_size(model, cfg.block_size)
    model.to(run.proc.device)
    model.transformer.grad_checkpoint = cfg.grad_checkpoint
    print0(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
           f"tokenizer '{tok_name}', from {run.resume_path or cfg.init_from}, device "
           f"{run.proc.device}")
    return model, get_tokenizer(tok_name)


def load_data(cfg, enc, proc):
    """Training and held-out pairs (right-padded at batch time; a batch's position in the data
    is its step, for exact resume), the training items (a list of pair indices each: one pair,
    or with group_rankings every pair of one ranking), the number of steps, the reference texts
    of the final normalisation (read now: a bad bias_data fails before training, not after it)
    and the lengths that length bucketing sorts the items by (a pair pads to its longer
    answer)."""
    train = loader.load_preferences(cfg.train_data, enc, cfg.block_size)
    val = loader.load_preferences(cfg.val_data, enc, cfg.block_size)
    val = val[:cfg.eval_examples] if cfg.eval_examples > 0 else val
    # evaluation sums over pairs, so their order is free: sorted by length its batches pad
    # little (real HH pairs at block_size 512: 0.86M positions instead of 2.26M)
    val = sorted(val, key=loader.pair_length)
    if cfg.reverse:  # a cost model: each pair's worse answer is the one to score higher
        train, val = ([dict(p, chosen=p["rejected"], rejected=p["chosen"], chosen_text=p[
            "rejected_text"], rejected_text=p["chosen_text"]) for p in pairs] for pairs in (train, val))
    items = ranking_items(train) if cfg.group_rankings else [[i] for i in range(len(train))]
    if cfg.bootstrap:  # an ensemble member's own resample of the rankings (or pairs)
        rng = random.Random(cfg.seed)
        items = [items[rng.randrange(len(items))] for _ in items]
    per_step = cfg.batch_size * cfg.grad_accum * proc.world_size  # pairs or rankings
    max_iters = cfg.max_iters
    if max_iters == -1:  # few epochs: reward models overfit (the toy default: 5 over rankings)
        max_iters = max(1, math.ceil(cfg.num_epochs * len(items) / per_step))
    config.require(cfg.warmup_iters <= max_iters and cfg.stop_iter <= max_iters,
                   f"warmup_iters={cfg.warmup_iters} and stop_iter={cfg.stop_iter} must be <= "
                   f"max_iters={max_iters}")
    if cfg.use_margin and not any(p["margin"] for p in train):
        print0(f"note: use_margin=True but no pair in {cfg.train_data} has a non-zero 'margin'")
    unit = "rankings" if cfg.group_rankings else "pairs"
    print0(f"data: {len(train)} train pairs" + (f" in {len(items)} rankings" * cfg.group_rankings)
           + f", {len(val)} held-out pairs; {per_step} {unit} per step, {max_iters} steps "
           f"({max_iters * per_step / len(items):.2f} epochs)")
    lengths = tuple(max(loader.pair_length(train[i]) for i in u)
                    for u in items) if cfg.length_buckets else None
    return (train, val_batches(val, cfg), items, max_iters, reference_rows(cfg, enc, train),
            lengths)


def ranking_items(pairs):
    """The pairs' indices grouped by the ranking (loader 'record') they came from, in order of
    each ranking's first pair: [[i, ...], ...]."""
    by_record = {}
    for i, p in enumerate(pairs):
        by_record.setdefault(p["record"], []).append(i)
    return list(by_record.values())


def val_batches(val, cfg):
    """The held-out pairs (sorted by length) as evaluation batches of batch_size pairs, or with
    group_rankings of batch_size whole rankings, as training lays them out: each answer of a
    ranking is then scored once for all its pairs, not once per pair (on the toy world's rankings
    of 7 answers, 6 times fewer rows). Evaluation sums over pairs, so how they are batched does
    not change what it measures."""
    items = ranking_items(val) if cfg.group_rankings else [[i] for i in range(len(val))]
    return [[val[i] for item in items[start:start + cfg.batch_size] for i in item]
            for start in range(0, len(items), cfg.batch_size)]

def main(argv=None):
    cfg = config.parse_config(DEFAULTS, argv, __doc__)
    validate(cfg)
    if cfg.ensemble == 1:
        return train(cfg)
    # an ensemble: K ordinary runs, one after another, member k in out_dir/member{k} with seed
    # + k (a member resumes when it has a checkpoint, and is skipped when it has finished)
    results = []
    for k in range(cfg.ensemble):
        out_dir = os.path.join(cfg.out_dir, f"member{k}")
        resume = cfg.resume and os.path.isfile(os.path.join(out_dir, "ckpt_last.pt"))
        print0(f"ensemble member {k + 1}/{cfg.ensemble}: {out_dir}, seed {cfg.seed + k}")
        results.append(train(SimpleNamespace(**{**vars(cfg), "out_dir": out_dir, "ensemble": 1,
                                                "seed": cfg.seed + k, "resume": resume})))
        if results[-1]["step"] < results[-1]["max_iters"]:  # stopped (stop_iter, Ctrl-C)
            print0(f"stopped in member {k}; continue the ensemble with --resume=True")
            break
    return dict(members=results, out_dir=cfg.out_dir,
                best_val_accuracy=[r["best_val_accuracy"] for r in results])


def train(cfg):
    """One reward model, from cfg (a parsed and validated config): the recipe below."""
    run = Run(cfg, "rm")  # device, DDP, seeds, out_dir and its lock, the resume point
    proc = run.proc

    # -------------------------------------------------------------------------
    # model: a new scalar head on the SFT trunk, or the run we resume; then the data
    model, enc = load_model(cfg, run)
    train, val, items, max_iters, ref_rows, lengths = load_data(cfg, enc, proc)
    runtime.shard(model, proc, cfg.compile)  # FSDP: each rank keeps its share of the weights
    # the batch layouts (layouts.py): training and held-out batches as cfg says
    layout = layouts.score_layout(cfg.share_prompt, cfg.group_rankings)
    collate, pair_scores = layout

    # -------------------------------------------------------------------------
    # optimizer, and the loop state a resumed run picks up (one with reward_bias has finished)
    optimizer = optim.make_optimizer(model, cfg, proc)
    state = run.restore(optimizer, best=(-1.0, 0.0), train_metrics={}, val_metrics={})
    step, state.best = state.step, tuple(state.best)
    reward_bias = run.resume.get("reward_bias") if run.resume else None
    wrapped = runtime.wrap(model, cfg.compile, proc)  # what the step calls; model stays plain

    def snapshot(with_optimizer=True, **extra):
        return checkpoint.make_checkpoint(
            model, "scalar", "rm", enc.name, cfg, step, optimizer if with_optimizer else None,
            best=list(state.best), train_metrics=state.train_metrics,
            val_metrics=state.val_metrics, max_iters=max_iters, **extra)

    # -------------------------------------------------------------------------
    # training loop. `step` counts optimizer updates done; the batch of each step is a function
    # of the step alone (loader.batch_indices), so resuming needs no data-loader state.
    t_start = time.time()
    if step == 0:
        evaluate_and_keep_best(run, model, val, layout, cfg, enc, step, state, snapshot)
    model.train()
    while step < max_iters:
        t0 = time.time()
        lr = optim.get_lr(step, cfg.lr, cfg.min_lr, cfg.warmup_iters, max_iters)
        optim.set_lr(optimizer, lr)
        # 1. this step's pairs (or whole rankings), as grad_accum micro-batches of answers
        micro = [to_device(collate([train[i] for item in loader.batch_indices(
                     len(items), cfg.batch_size, step * cfg.grad_accum + k, cfg.seed, proc.rank,
                     proc.world_size, lengths) for i in items[item]], enc.eot_token), proc)
                 for k in range(cfg.grad_accum)]
        # 2. the Bradley-Terry loss of each pair's two scores, forward and backward
        metrics = rm_step(wrapped, micro, pair_scores, cfg, proc)
        # 3. clip, check, update
        grad_norm = optim.optimizer_step(model, optimizer, cfg.grad_clip, metrics["loss"],
                                         update=step + 1)
        step += 1
        state.train_metrics = {k: runtime.all_reduce_sum(v) for k, v in metrics.items()}
        if step % cfg.log_interval == 0 or step == 1 or step == max_iters:
            run.log(step, **state.train_metrics, lr=lr, grad_norm=grad_norm,
                    ms_per_iter=round(1000 * (time.time() - t0), 1))
        if step % cfg.eval_interval == 0 or step == max_iters:
            evaluate_and_keep_best(run, model, val, layout, cfg, enc, step, state, snapshot)
        stopping = run.should_stop(step)
        if (step % cfg.ckpt_interval == 0 or stopping) and step < max_iters:
            run.save("ckpt_last.pt", snapshot())
        if stopping:
            print0(f"stopping at step {step}; continue with --resume=True")
            break

    # 4. normalisation: reward_bias = the mean raw score of reference responses, so that the
    # scores PPO sees are centred on "as good as the SFT answers", for the final weights and for
    # the best ones (ckpt_best.pt may hold an earlier step), each with its own mean. ckpt_last.pt
    # is written last: until it holds reward_bias, a resumed run redoes this step.
    if step == max_iters and reward_bias is None:
        with runtime.gathered(model):  # rank 0 scores; under FSDP with the whole weights
            if proc.master:
                reward_bias = set_reward_bias(model, ref_rows, cfg, enc, proc, "final")
                normalise_best(run, model, ref_rows, cfg, enc, proc, step, reward_bias)
        run.save("ckpt_last.pt", snapshot(reward_bias=reward_bias))  # every rank: FSDP gathers

    print0(f"done in {time.time() - t_start:.0f}s: step {step}, held-out accuracy "
           f"{state.val_metrics.get('val_accuracy', math.nan):.4f} (best {state.best[0]:.4f})")
    run.finish()
    return dict(time_s=time.time() - t_start, best_val_accuracy=state.best[0], step=step,
                reward_bias=reward_bias, max_iters=max_iters, out_dir=cfg.out_dir,
                **state.val_metrics, **{f"train_{k}": v for k, v in state.train_metrics.items()})

# -----------------------------------------------------------------------------
# normalisation helpers


def reference_rows(cfg, enc, train):
    """Token ids (lists) of the reference texts whose mean score becomes reward_bias."""
    if cfg.bias_ref == "none":
        return []
    if cfg.bias_ref == "sft":
        rows = [ids for ids, _ in loader.load_sft(cfg.bias_data, enc, cfg.block_size)]
    else:  # the chosen answers of the training pairs, one per distinct (prompt, chosen)
        rows = [list(ids) for ids in dict.fromkeys(tuple(p["chosen"][0]) for p in train)]
    n = len(rows) if cfg.bias_examples == -1 else min(cfg.bias_examples, len(rows))
    return rows[:n]


def normalise_best(run, model, ref_rows, cfg, enc, proc, step, reward_bias):
    """ckpt_best.pt with its own weights' reward_bias: the final one when the best weights are
    the final weights, else the mean score of the references under the best weights."""
    best = checkpoint.load_checkpoint(run.path("ckpt_best.pt"), expect_kind="scalar")
    best["reward_bias"] = reward_bias
    if best["best_step"] != step:  # a plain model of the best weights, however the run trains
        best_model = checkpoint.model_from_checkpoint(ScalarModel, best, run.path("ckpt_best.pt"))
        best_model.to(proc.device)
        best["reward_bias"] = set_reward_bias(best_model, ref_rows, cfg, enc, proc,
                                              f"best, step {best['best_step']}")
    best["model"]["reward_bias"].fill_(best["reward_bias"])
    run.save("ckpt_best.pt", best)
    run.log(step, reward_bias=reward_bias, best_reward_bias=best["reward_bias"],
            best_step=best["best_step"])


@torch.no_grad()
def set_reward_bias(model, rows, cfg, enc, proc, name):
    """Score the reference rows with the raw head, store their mean in model.reward_bias."""
    model.reward_bias.zero_()
    if not rows:
        return 0.0
    scores = model.score_rows(rows, enc.eot_token, 2 * cfg.batch_size, proc.autocast)
    bias = scores.mean().item()
    model.reward_bias.fill_(bias)
    print0(f"reward_bias ({name} weights) = {bias:.4f}: the mean score of {len(rows)} "
           f"'{cfg.bias_ref}' reference responses (std {scores.std().item() if len(rows) > 1 else 0:.4f})")
    return bias


if __name__ == "__main__":
    config.cli(main)
