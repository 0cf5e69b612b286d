"""
Reward modelling: the second stage. Learn a scalar reward r(prompt, response) from preference
pairs (prompt, chosen, rejected), so that PPO can ask "how good is this answer?" of any text.

Run it:
    python data/toy/prepare.py && python train_sft.py    # the toy world and its SFT model
    python train_reward_model.py                          # offline CPU default, about 1.5 minutes
    python train_reward_model.py config/rm_gpt2_hh.py     # one GPU: GPT-2 124M on Anthropic HH
    torchrun --standalone --nproc_per_node=8 train_reward_model.py config/rm_gpt2_hh.py \
        --batch_size=8 --grad_accum=1                     # 8 GPUs, the same 64 pairs per step
    python train_reward_model.py --help                   # every config key and its default
    python train_reward_model.py --resume=True            # continue an interrupted run

The model is the SFT model's trunk with a fresh linear head (model.ScalarModel); the score of a
text is the head's output at its last real token, the response's EOS. Training minimises the
Bradley-Terry loss -log sigma(r_chosen - r_rejected) over pairs, optionally with a per-pair
margin from the data (use_margin, as Llama 2 does) and a term that keeps the scores centred
(center_coef). The chosen and rejected rows of a batch go through the model in ONE forward.
K-wise rankings {"prompt", "responses": [best, ..., worst]} are expanded by data/loader.py into
their K(K-1)/2 pairs. One epoch by default: reward models overfit quickly.

After training, the mean score of reference responses (the SFT data's answers, or the chosen
answers, on training prompts: bias_ref) is stored in the checkpoint as the model's reward_bias,
which ScalarModel subtracts from every score, so PPO starts from centred rewards.

Other scripts score texts with `score(model, prompts, responses)` and token ids with
`score_ids(model, idx, attention_mask)` (the ids the policy produced, never re-tokenised).

Deliberately left out: reward-model ensembles, InstructGPT's grouping of a prompt's K(K-1)/2
comparisons into one batch element (here they are ordinary, shuffled pairs), an auxiliary
language-modelling loss, label smoothing / noisy-label losses, and gradient checkpointing.
"""

import copy
import math
import os
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

import common
from common import print0
from tokenizer import encode_example, get_tokenizer

# -----------------------------------------------------------------------------
# default config: the offline toy run (config/rm_toy.py holds the same values)
DEFAULTS = dict(
    # I/O
    out_dir="out/rm_toy",
    init_from="out/sft_toy/ckpt_best.pt",  # SFT checkpoint | 'gpt2'...'gpt2-xl' | HF dir | 'scratch'
    tokenizer="byte",                      # only used with init_from='scratch'
    # data: JSONL pairs {"prompt", "chosen", "rejected"[, "margin"]} or K-wise rankings
    train_data="data/toy/out/prefs_train.jsonl",
    val_data="data/toy/out/prefs_val.jsonl",
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
    # reward normalisation after training: the mean score of these reference responses
    bias_ref="sft",                        # 'sft' (answers in bias_data) | 'chosen' | 'none'
    bias_data="data/toy/out/sft_train.jsonl",  # SFT-format JSONL, used when bias_ref='sft'
    bias_examples=1024,                    # reference responses to average (-1 = all)
    # optimisation: AdamW, linear warmup then cosine decay to min_lr
    batch_size=32,                         # pairs per micro-step (2x sequences per forward)
    grad_accum=1,
    group_by_length=True,                  # batches of similar lengths: less compute on padding
    num_epochs=1.0,                        # sets max_iters when max_iters = -1
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
    eval_pairs=-1,                         # held-out pairs per evaluation (-1 = all)
    ckpt_interval=100,
    # system
    seed=1337,
    device="auto",                         # 'auto' | 'cpu' | 'cuda' | 'mps'
    dtype="auto",                          # 'auto' | 'float32' | 'bfloat16'
    compile=False,
    resume=False,
    overwrite=False,
    stop_iter=-1,                          # stop with a checkpoint after this step (-1: max_iters)
)

# -----------------------------------------------------------------------------
# the loss


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
# scoring: what PPO and the evaluation call


@torch.no_grad()
def score_ids(model, idx, attention_mask, batch_size=None):
    """
    Scores (B,) float of token ids the caller already has, e.g. PPO's prompt + sampled response,
    so the reward model sees exactly the ids the policy produced. idx, attention_mask (B, T), left
    or right padding; the score is read at each row's last mask == 1 token and reward_bias is
    subtracted. Runs in eval mode (no dropout), then restores the model's mode.
    """
    was_training = model.training
    model.eval()
    B = idx.size(0)
    step = batch_size or max(B, 1)
    out = torch.cat([model(idx[i:i + step], attention_mask[i:i + step]).float()
                     for i in range(0, B, step)]) if B else idx.new_zeros(0, dtype=torch.float)
    model.train(was_training)
    return out


@torch.no_grad()
def score(model, prompts, responses, enc=None, batch_size=64, device=None):
    """
    Scores (B,) float on the CPU of lists of prompt and response strings, rendered with the chat
    template exactly as in training. The tokenizer follows the model's vocabulary (257 -> 'byte',
    else 'gpt2') unless enc is given. Rows are sorted by length and right-padded in batches of
    batch_size; the result does not depend on the padding or on the other rows. A text longer
    than block_size keeps its last block_size tokens (the start of the prompt is cut, never the
    response's end, where the score is read).
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if enc is None:
        enc = get_tokenizer("byte" if model.config.vocab_size == 257 else "gpt2")
    device = device or next(model.parameters()).device
    T_max = model.config.block_size
    rows = [encode_example(enc, p, r)[0][-T_max:] for p, r in zip(prompts, responses)]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths pad less
    out = torch.zeros(len(rows))
    out[order] = score_rows(model, [rows[i] for i in order], enc.eot_token, batch_size, device)
    return out


def score_rows(model, rows, pad_id, batch_size, device, autocast=None):
    """Scores (N,) float on the CPU of token-id lists, right-padded in consecutive chunks of
    batch_size (in the order given) and scored with score_ids."""
    from data import loader
    out = []
    for k in range(0, len(rows), batch_size):
        idx, attn, _ = loader.collate([(r, []) for r in rows[k:k + batch_size]], pad_id)
        with autocast or nullcontext():
            out.append(score_ids(model, idx.to(device), attn.to(device)).cpu())
    return torch.cat(out) if out else torch.zeros(0)

# -----------------------------------------------------------------------------


def validate(cfg):
    """Bad values fail here, naming the key, before any model is built."""
    common.require_positive(cfg, "n_layer", "n_head", "n_embd", "block_size", "batch_size",
                            "grad_accum", "lr", "log_interval", "eval_interval", "ckpt_interval",
                            "eps")
    common.require(cfg.n_embd % cfg.n_head == 0,
                   f"n_embd={cfg.n_embd} must be divisible by n_head={cfg.n_head}")
    common.require(cfg.max_iters == -1 or cfg.max_iters > 0,
                   f"max_iters={cfg.max_iters} must be > 0, or -1 to derive it from num_epochs")
    common.require(cfg.max_iters != -1 or cfg.num_epochs > 0,
                   f"num_epochs={cfg.num_epochs} must be > 0 (it sets max_iters when max_iters=-1)")
    common.require(cfg.center_coef >= 0, f"center_coef={cfg.center_coef} must be >= 0")
    common.require(cfg.bias_ref in ("sft", "chosen", "none"),
                   f"bias_ref={cfg.bias_ref!r}: expected 'sft', 'chosen' or 'none'")
    common.require(cfg.bias_examples == -1 or cfg.bias_examples > 0,
                   f"bias_examples={cfg.bias_examples} must be > 0, or -1 for all")
    common.require(cfg.eval_pairs == -1 or cfg.eval_pairs > 0,
                   f"eval_pairs={cfg.eval_pairs} must be > 0, or -1 for all")
    common.require(0.0 <= cfg.min_lr <= cfg.lr, f"min_lr={cfg.min_lr} must be in [0, lr={cfg.lr}]")
    common.require(cfg.warmup_iters >= 0, f"warmup_iters={cfg.warmup_iters} must be >= 0")
    common.require(0.0 <= cfg.dropout < 1.0, f"dropout={cfg.dropout} must be in [0, 1)")
    common.require(cfg.weight_decay >= 0 and cfg.grad_clip >= 0,
                   "weight_decay and grad_clip must be >= 0 (grad_clip=0 turns clipping off)")
    common.require(0.0 <= cfg.beta1 < 1.0 and 0.0 <= cfg.beta2 < 1.0, "beta1, beta2 must be in [0, 1)")
    common.require(cfg.stop_iter == -1 or cfg.stop_iter > 0, f"stop_iter={cfg.stop_iter} must be "
                   f"-1 or > 0")
    common.require(cfg.tokenizer in ("byte", "gpt2"), f"tokenizer={cfg.tokenizer!r}: 'byte' or 'gpt2'")
    common.require(cfg.dtype in ("auto", "float32", "bfloat16"),
                   f"dtype={cfg.dtype!r}: 'auto', 'float32' or 'bfloat16'")
    data_keys = ["train_data", "val_data"] + (["bias_data"] if cfg.bias_ref == "sft" else [])
    for key in data_keys:
        path = getattr(cfg, key)
        common.require(os.path.isfile(path), f"{key}={path!r} does not exist (toy data: "
                       f"python data/toy/prepare.py; HH data: python data/hh/prepare.py)")
    if not cfg.resume and cfg.init_from not in ("scratch", "gpt2", "gpt2-medium", "gpt2-large",
                                                "gpt2-xl"):
        common.require(os.path.exists(cfg.init_from), f"init_from={cfg.init_from!r} does not "
                       f"exist (the toy SFT model: python train_sft.py; or init_from='scratch')")


def main(argv=None):
    cfg = common.parse_config(DEFAULTS, argv, __doc__)
    validate(cfg)
    rt = common.init_runtime(cfg)
    resume_path = common.prepare_out_dir(cfg.out_dir, cfg.resume, cfg.overwrite, rt.master)
    common.install_stop_handlers()

    # -------------------------------------------------------------------------
    # model: a new scalar head on the SFT trunk, or the run we resume (a scalar checkpoint)
    model_args = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                      block_size=cfg.block_size, bias=cfg.bias)
    if resume_path:  # our own last checkpoint: it must be a reward model's run
        ckpt = common.load_checkpoint(resume_path, expect_kind="scalar", expect_stage="rm")
        model, tok_name = common.scalar_from_checkpoint(ckpt, cfg.dropout, resume_path)
    else:
        model, tok_name = common.init_scalar(cfg.init_from, cfg.tokenizer, model_args, cfg.dropout)
    model.reward_bias.zero_()  # training sees raw scores; the offset is set once, at the end
    common.check_block_size(model, cfg.block_size)
    model.to(rt.device)
    enc = get_tokenizer(tok_name)
    n_params = sum(p.numel() for p in model.parameters())
    print0(f"model: {n_params / 1e6:.2f}M parameters, {model.config.n_layer} layers, n_embd "
           f"{model.config.n_embd}, tokenizer '{tok_name}', from {resume_path or cfg.init_from}, "
           f"device {rt.device}, dtype {rt.dtype}")

    # -------------------------------------------------------------------------
    # data: right-padded pairs; a batch's position in the data is its step (exact resume)
    from data import loader
    train = loader.load_preferences(cfg.train_data, enc, cfg.block_size)
    val = loader.load_preferences(cfg.val_data, enc, cfg.block_size)
    common.require(len(train) > 0 and len(val) > 0, "train_data and val_data need >= 1 pair")
    if cfg.eval_pairs > 0:
        val = val[:cfg.eval_pairs]
    pairs_per_step = cfg.batch_size * cfg.grad_accum * rt.world_size
    max_iters = cfg.max_iters
    if max_iters == -1:  # one epoch by default: reward models overfit quickly
        max_iters = max(1, math.ceil(cfg.num_epochs * len(train) / pairs_per_step))
    common.require(cfg.warmup_iters <= max_iters,
                   f"warmup_iters={cfg.warmup_iters} must be <= max_iters={max_iters}")
    common.require(cfg.stop_iter <= max_iters,
                   f"stop_iter={cfg.stop_iter} must be -1 or in 1..max_iters={max_iters}")
    # the reference texts of the normalisation at the end: a bad bias_data fails now, not after
    # the whole run
    ref_rows = reference_rows(cfg, loader, enc, train)
    if cfg.use_margin and not any(p["margin"] for p in train):
        print0(f"note: use_margin=True but no pair in {cfg.train_data} has a non-zero 'margin'")
    print0(f"data: {len(train)} train pairs, {len(val)} held-out pairs; {pairs_per_step} pairs "
           f"per step, {max_iters} steps ({max_iters * pairs_per_step / len(train):.2f} epochs)")

    # a pair's padded length is its longer answer's; bucketing only reorders within an epoch
    lengths = tuple(max(len(p["chosen"][0]), len(p["rejected"][0])) for p in train) \
        if cfg.group_by_length else None

    def get_batch(data, indices):
        batch = loader.collate_pairs([data[i] for i in indices], pad_id=enc.eot_token)
        margin = batch["margin"].to(rt.device) if cfg.use_margin else None  # (B,)
        return batch["idx"].to(rt.device), batch["attention_mask"].to(rt.device), margin

    def pair_rewards(m, idx, attn):
        """One forward over chosen rows then rejected rows: (B,), (B,) raw scores."""
        with rt.autocast:
            r = m(idx, attention_mask=attn).float()  # (2B,)
        B = idx.size(0) // 2
        return r[:B], r[B:]

    # -------------------------------------------------------------------------
    # optimizer, and the loop state a resumed run picks up
    optimizer = common.configure_optimizer(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2),
                                           cfg.eps, rt.device_type)
    step, best, train_metrics, val_metrics = 0, (-1.0, 0.0), {}, {}
    reward_bias = None  # set at the end; a resumed checkpoint that has it is a finished run
    if resume_path:
        optimizer.load_state_dict(ckpt["optimizer"])
        step, best = ckpt["step"], tuple(ckpt["best"])
        train_metrics, val_metrics = ckpt["train_metrics"], ckpt["val_metrics"]
        reward_bias = ckpt.get("reward_bias")
        common.set_rng_state(ckpt["rng"])
        print0(f"resumed from {resume_path} at step {step}")
        del ckpt
    raw_model = model  # evaluation and checkpoints use the plain module
    model = common.maybe_compile(model, cfg.compile)
    if rt.ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[rt.local_rank] if rt.device_type == "cuda" else None)
    logger = common.MetricsLogger(cfg.out_dir, "log", resume_step=step if resume_path else None,
                                  enabled=rt.master)

    def save(name, with_optimizer=True, **extra):
        if rt.master:
            ckpt = common.make_checkpoint(raw_model, "scalar", "rm", tok_name, cfg, step,
                                          optimizer if with_optimizer else None, best=list(best),
                                          train_metrics=train_metrics, val_metrics=val_metrics,
                                          max_iters=max_iters, **extra)
            common.save_checkpoint(os.path.join(cfg.out_dir, name), ckpt)

    @torch.no_grad()
    def evaluate():
        """Held-out accuracy (r_c > r_r), mean margin, loss, and the mean and std of all scores."""
        raw_model.eval()
        s = dict(n=0.0, correct=0.0, margin=0.0, loss=0.0, r=0.0, r2=0.0)
        for start in range(rt.rank * cfg.batch_size, len(val), cfg.batch_size * rt.world_size):
            idx, attn, margin = get_batch(val, range(start, min(start + cfg.batch_size, len(val))))
            rc, rr = pair_rewards(raw_model, idx, attn)
            _, m = reward_model_loss(rc, rr, margin, cfg.center_coef)
            n = rc.numel()
            s["n"] += n
            s["correct"] += m["accuracy"] * n
            s["margin"] += m["margin"] * n
            s["loss"] += m["loss"] * n
            s["r"] += (rc.sum() + rr.sum()).item()
            s["r2"] += (rc.pow(2).sum() + rr.pow(2).sum()).item()
        raw_model.train()
        s = {k: common.all_reduce_mean(v) for k, v in s.items()}  # sums / world_size: ratios hold
        n = max(s["n"], 1e-9)
        mean = s["r"] / (2 * n)
        return dict(val_accuracy=s["correct"] / n, val_margin=s["margin"] / n,
                    val_loss=s["loss"] / n, val_reward_mean=mean,
                    val_reward_std=math.sqrt(max(s["r2"] / (2 * n) - mean ** 2, 0.0)))

    def eval_and_save_best():
        nonlocal val_metrics, best
        val_metrics = evaluate()
        logger.log(step, **val_metrics)
        # best = highest held-out accuracy; ties go to the lower held-out loss
        key = (val_metrics["val_accuracy"], -val_metrics["val_loss"])
        if key > best:
            best = key
            save("ckpt_best.pt", with_optimizer=False, best_step=step)  # PPO starts from it

    # -------------------------------------------------------------------------
    # training loop. `step` counts optimizer updates done; the batch of each step is a function
    # of the step alone (loader.batch_indices), so resuming needs no data-loader state.
    if not resume_path:  # every input has loaded: only now may --overwrite=True drop the old run
        common.clear_out_dir(cfg.out_dir, rt.master)
    t_start = time.time()
    if step == 0:
        eval_and_save_best()
    model.train()
    while step < max_iters:
        t0 = time.time()
        lr = common.get_lr(step, cfg.lr, cfg.min_lr, cfg.warmup_iters, max_iters)
        common.set_lr(optimizer, lr)
        sums = {}
        for micro in range(cfg.grad_accum):
            indices = loader.batch_indices(len(train), cfg.batch_size, step * cfg.grad_accum + micro,
                                           cfg.seed, rt.rank, rt.world_size, lengths)
            idx, attn, margin = get_batch(train, indices)
            with common.no_sync_unless(model, micro == cfg.grad_accum - 1):
                rc, rr = pair_rewards(model, idx, attn)  # (B,), (B,)
                loss, m = reward_model_loss(rc, rr, margin, cfg.center_coef)
                (loss / cfg.grad_accum).backward()  # every micro-batch holds batch_size pairs
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + v / cfg.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_(
            raw_model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf).item()
        common.check_finite(step + 1, loss=sums["loss"], grad_norm=grad_norm)  # the log's number
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        train_metrics = {k: common.all_reduce_mean(v) for k, v in sums.items()}
        dt = time.time() - t0

        if step % cfg.log_interval == 0 or step == 1 or step == max_iters:
            logger.log(step, **train_metrics, lr=lr, grad_norm=grad_norm,
                       ms_per_iter=round(1000 * dt, 1))
        if step % cfg.eval_interval == 0 or step == max_iters:
            eval_and_save_best()
        stopping = step == cfg.stop_iter or common.stop_requested()
        if (step % cfg.ckpt_interval == 0 or stopping) and step < max_iters:
            save("ckpt_last.pt")
        if stopping:
            print0(f"stopping at step {step}; continue with --resume=True")
            break

    # -------------------------------------------------------------------------
    # normalisation: reward_bias = the mean raw score of reference responses, so that the scores
    # PPO sees are centred on "as good as the SFT answers". Done for the final weights and for the
    # best ones (ckpt_best.pt may hold an earlier step), each with its own mean. ckpt_last.pt is
    # written last: until it holds reward_bias, a resumed run redoes this block (idempotent).
    if step == max_iters and rt.master and reward_bias is None:
        reward_bias = set_reward_bias(raw_model, ref_rows, cfg, enc, rt, "final")
        best_path = os.path.join(cfg.out_dir, "ckpt_best.pt")
        ckpt = common.load_checkpoint(best_path, expect_kind="scalar")
        if ckpt["best_step"] == step:  # the best weights are the final ones
            ckpt["model"]["reward_bias"].fill_(reward_bias)
            ckpt["reward_bias"] = reward_bias
        else:
            best_model = copy.deepcopy(raw_model)
            best_model.load_state_dict(ckpt["model"])
            ckpt["reward_bias"] = set_reward_bias(best_model, ref_rows, cfg, enc, rt,
                                                  f"best, step {ckpt['best_step']}")
            ckpt["model"] = best_model.state_dict()
        common.save_checkpoint(best_path, ckpt)
        logger.log(step, reward_bias=reward_bias, best_reward_bias=ckpt["reward_bias"],
                   best_step=ckpt["best_step"])
        save("ckpt_last.pt", reward_bias=reward_bias)

    print0(f"done in {time.time() - t_start:.0f}s: step {step}, held-out accuracy "
           f"{val_metrics.get('val_accuracy', math.nan):.4f} (best {best[0]:.4f})")
    if rt.ddp:
        torch.distributed.barrier()  # no rank tears gloo down while another still uses it
        torch.distributed.destroy_process_group()
    return dict(time_s=time.time() - t_start, val_accuracy=val_metrics.get("val_accuracy"), best_val_accuracy=best[0],
                reward_bias=reward_bias, step=step, max_iters=max_iters, out_dir=cfg.out_dir,
                **{k: v for k, v in val_metrics.items() if k != "val_accuracy"},
                **{f"train_{k}": v for k, v in train_metrics.items()})

# -----------------------------------------------------------------------------
# normalisation helpers


def reference_rows(cfg, loader, enc, train):
    """Token ids (lists) of the reference texts whose mean score becomes reward_bias."""
    if cfg.bias_ref == "none":
        return []
    if cfg.bias_ref == "sft":
        rows = [ids for ids, _ in loader.load_sft(cfg.bias_data, enc, cfg.block_size)]
    else:  # the chosen answers of the training pairs, one per distinct (prompt, chosen)
        rows = [list(ids) for ids in dict.fromkeys(tuple(p["chosen"][0]) for p in train)]
    n = len(rows) if cfg.bias_examples == -1 else min(cfg.bias_examples, len(rows))
    return rows[:n]


@torch.no_grad()
def set_reward_bias(model, rows, cfg, enc, rt, name):
    """Score the reference rows with the raw head, store their mean in model.reward_bias."""
    model.reward_bias.zero_()
    if not rows:
        return 0.0
    scores = score_rows(model, rows, enc.eot_token, 2 * cfg.batch_size, rt.device, rt.autocast)
    bias = scores.mean().item()
    model.reward_bias.fill_(bias)
    print0(f"reward_bias ({name} weights) = {bias:.4f}: the mean score of {len(rows)} "
           f"'{cfg.bias_ref}' reference responses (std {scores.std().item() if len(rows) > 1 else 0:.4f})")
    return bias


if __name__ == "__main__":
    main()
