"""
Critic-free online RL: GRPO (Shao et al. 2024, DeepSeekMath), Dr. GRPO (Liu et al. 2025), RLOO
(Ahmadian et al. 2024) and REINFORCE++-baseline (Hu 2025), beside train_ppo.py. Each prompt gets
group_size sampled answers; an answer's advantage is its reward against the others of its group,
so no critic is trained. Everything else (the rollout, the log-probs, the clipped loss, the
update loop) is train_ppo.py's, imported.

Run it:
    python train_grpo.py                           # CPU toy default: GRPO against the reward model
    python train_grpo.py --advantage=rloo          # RLOO: leave-one-out baseline, KL in the reward
    python train_grpo.py --reward_fn=toy_gold      # against the toy judge: a verifiable reward
    python train_grpo.py --reward_fn=my_reward.py:score   # any function(prompt, response) -> float
    torchrun --standalone --nproc_per_node=8 train_grpo.py --rollout_batch_size=8 \
        --minibatch_size=8 --micro_batch_size=8    # 8 GPUs: the toy's 64 answers per iteration
                                                   # (--fsdp=True: the policy sharded)
    python train_grpo.py --help                    # every config key and its default

One iteration, and where it differs from PPO:
  1. rollout: rollout_batch_size / group_size prompts, each answered group_size times (one
     generate call; rows 0..k-1 are the answers to prompt 0, and so on);
  2. the sequence reward: the score, minus beta * KL (the kl_estimator, summed) when
     kl_in='reward' (RLOO: k1);
  3. group baselines instead of a critic: group_advantages, one number per answer, given to
     every token of that answer (an answer whose group all scored alike gets 0: no signal);
  4. num_iterations passes of train_ppo.ppo_update with no critic, the clipped surrogate
     aggregated as loss_agg says, plus beta * KL in the loss when kl_in='loss' (GRPO, k3).
With beta = 0 no reference model is built at all.

The `advantage` preset sets the baseline, the scale, the loss aggregation and where the KL goes:
    grpo          group mean, / group std,  seq_mean_token_mean,     KL in the loss (k3)
    dr_grpo       group mean, no scale,     seq_mean_token_sum_norm, KL in the loss (k3)
    rloo          leave-one-out mean, none, token_mean,              KL in the reward (k1)
    reinforce_pp  group mean, / batch std,  token_mean,              KL in the reward (k1)
and loss_agg, kl_in, kl_estimator override them one by one.

Deliberately left out: DAPO's dynamic sampling (re-drawing groups with no signal), process
(per-step) rewards, a reference model that is re-synchronised to the policy, and the
pretraining or SFT loss some recipes add.
"""

import dataclasses
import math
import time

import torch

import checkpoint
import config
import ops
import optim
import runtime
import safety
from data import loader
from rollout import load_demos, load_prompts, prompt_batch, rollout
from run import Run
from runtime import print0
# shared with PPO (train_ppo.py): the KL estimators, the clipped loss and its aggregation, the
# update loop, the held-out evaluation, what a person sees, the checkpoints
from rl_report import evaluate_and_keep_best, rollout_metrics, show_iteration
from train_ppo import (AGGREGATIONS, LossSettings, kl_estimates, kl_penalty, load_models,
                       ppo_update, save_and_check_stop, validate as validate_rl)

# -----------------------------------------------------------------------------
# default config: the offline toy run, against the toy reward model
DEFAULTS = dict(
    # I/O
    out_dir="out/grpo_toy",
    init_from="out/sft_toy/ckpt_best.pt",    # the SFT policy: a .pt checkpoint, 'gpt2', an HF dir
    ref_from="",              # the KL anchor: '' = init_from | another policy checkpoint
    reward_model="out/rm_toy/ckpt_best.pt",  # a scalar checkpoint from train_reward_model.py
    reward_fn="",             # '' = reward_model | 'toy_gold' | 'byte_count:c' | 'file.py:function'
    reward_agg="mean",        # an ensemble's scores: 'mean' | 'min' (worst case) | 'uwo'
    uwo_lambda=1.0,           # uwo: the members' mean - uwo_lambda * their variance
    reward_gate="",           # 'llama2': Llama 2's gate of reward_model (helpful) and safety_model
    safety_model="",          # (safety.py; the group baseline stands for the whitening)
    gate_threshold=0.15,
    gold_judge="toy",         # 'toy': also score every rollout with data/toy/judge.py | ''
    # data: JSONL {"prompt"} records
    train_prompts="data/toy/out/prompts_train.jsonl",
    prompt_weights="",        # 'harmful=3,lookalike=3': each training prompt of a family k times
                              # (its "family" tag), drawn k times as often; '' = as in the file
    val_prompts="data/toy/out/prompts_eval.jsonl",  # '' = no held-out evaluation
    block_size=128,
    # rollout
    group_size=4,             # k answers per prompt, drawn in one generate call
    rollout_batch_size=64,    # answers per iteration and process: 64 / 4 = 16 prompts
    max_new_tokens=64,
    temperature=1.0,          # sampling AND every log-prob use logits / temperature
    top_k=0,
    top_p=1.0,
    missing_eos_penalty=1.0,  # for answers cut at max_new_tokens without an EOS: 'replace' the
    missing_eos_mode="replace",  # score by -penalty | 'subtract' it | 'mask' them out of the
                              # loss (DAPO's overlong filtering) | '' = none
    length_penalty=0.0,       # subtracted from the score per response token (EOS included)
    # advantages and the KL
    advantage="grpo",         # grpo | dr_grpo | rloo | reinforce_pp (the presets above)
    loss_agg="",              # '' = the preset's | token_mean | seq_mean_token_mean |
                              # seq_mean_token_sum_norm
    kl_in="",                 # '' = the preset's | 'loss' (GRPO) | 'reward' (RLOO)
    kl_estimator="",          # '' = the preset's | k1 | k2 | k3
    beta=0.04,                # KL coefficient; 0 = no reference model at all
    # the update (train_ppo.ppo_update without a critic)
    num_iterations=1,         # passes over each batch (GRPO's mu); 1 = on-policy, ratio 1
    minibatch_size=64,        # answers per optimizer step: the whole batch, so that with
                              # num_iterations=1 every step is on-policy (ratio 1 to float precision)
    micro_batch_size=16,      # answers per forward/backward
    epsilon_low=0.2,          # clip the ratio to [1 - epsilon_low, 1 + epsilon_high]; a larger
    epsilon_high=0.2,         # epsilon_high is DAPO's clip-higher
    ent_coef=0.0,
    ptx_coef=0.0,             # PPO-ptx's gamma (train_ppo.py): the demonstrations' NLL in the loss
    ptx_data="data/toy/out/sft_train.jsonl",
    ptx_batch_size=16,
    demo_val_data="data/toy/out/sft_val.jsonl",  # val_demo_nll at every evaluation; '' = none
    demo_val_examples=256,
    # optimisation
    lr=3e-4,
    warmup_iters=0,
    decay_lr=False,
    weight_decay=0.0,
    beta1=0.9,
    beta2=0.999,
    eps=1e-5,
    grad_clip=1.0,
    max_iters=30,
    # evaluation, samples, logging, checkpoints
    log_interval=1,
    eval_interval=10,
    eval_examples=96,
    sample_interval=10,
    num_samples=3,
    ckpt_interval=20,
    save_every=5,             # also keep ckpt_iter{N}.pt every N iterations (over-optimisation)
    # system
    seed=1337,
    device="auto",
    dtype="auto",
    grad_checkpoint=False,    # recompute each block of the policy in the backward: less
                              # activation memory, ~1/3 more update compute (docs/SCALE.md)
    fsdp=False,               # under torchrun: shard the policy (weights, gradients, AdamW state)
                              # over the processes (FSDP, docs/SCALE.md)
    resume=False,
    overwrite=False,
    stop_iter=-1,
)

# advantage preset -> (baseline, scale, loss_agg, kl_in, kl_estimator)
PRESETS = {
    "grpo": ("mean", "group", "seq_mean_token_mean", "loss", "k3"),
    "dr_grpo": ("mean", "none", "seq_mean_token_sum_norm", "loss", "k3"),
    "rloo": ("leave_one_out", "none", "token_mean", "reward", "k1"),
    "reinforce_pp": ("mean", "batch", "token_mean", "reward", "k1"),
}

# -----------------------------------------------------------------------------
# the group baseline; kl_penalty and aggregate_loss are train_ppo's


def group_advantages(scores, group_size, baseline="mean", scale="group", eps=1e-4):
    """
    One advantage per answer from the rewards of its group, (B,) -> (B,). Groups are consecutive
    rows: rows 0..k-1 are the k = group_size answers to prompt 0, and so on.
      baseline 'mean'            A_i = r_i - mean_g(r)                        (GRPO, eq. in 4.1.2)
               'leave_one_out'   A_i = r_i - mean of the other k-1 answers    (RLOO, eq. 9)
      scale    'group'           / (std_g(r) + eps), unbiased as torch.std    (GRPO)
               'none'            no division                                  (Dr. GRPO, RLOO)
               'batch'           / (std of the baselined A over the whole batch + eps), over
                                 every rank under DDP                         (REINFORCE++-baseline)
    A group whose answers all scored the same gives 0 to each: it carries no signal.
    Test: tests/test_grpo.py::test_group_advantages_by_hand
    """
    r = scores.float().view(-1, group_size)  # (G, k)
    k = group_size
    if baseline == "mean":
        adv = r - r.mean(1, keepdim=True)
    elif baseline == "leave_one_out":
        adv = r - (r.sum(1, keepdim=True) - r) / max(k - 1, 1)
    else:
        raise ValueError(f"unknown baseline {baseline!r}: expected 'mean' or 'leave_one_out'")
    if scale == "group":
        adv = adv / (r.std(1, keepdim=True) + eps)
    elif scale == "batch":
        _, var = ops.global_masked_mean_var(adv, torch.ones_like(adv), unbiased=True)
        adv = adv / (var.sqrt() + eps)
    elif scale != "none":
        raise ValueError(f"unknown scale {scale!r}: expected 'group', 'none' or 'batch'")
    return adv.flatten()


def kl_penalised_scores(scores, logprobs, ref_logprobs, mask, beta, estimator="k1"):
    """
    The sequence reward of RLOO and REINFORCE++ (Ahmadian et al. 2024, eq. 1): the score minus
    beta times the chosen KL estimator (train_ppo.kl_penalty: k1, k2 or k3) summed over the
    answer's valid tokens,   R_i = r_i - beta * sum_t KL_t.
    With k1 a response's R is PPO's KL-shaped reward summed over its tokens. scores (B,);
    logprobs, ref_logprobs, mask (B, N) -> (B,).
    Test: tests/test_grpo.py::test_kl_penalised_scores_use_the_chosen_estimator_by_hand
    """
    kl = (kl_penalty(logprobs, ref_logprobs, estimator) * mask.to(logprobs.dtype)).sum(1)
    return scores - beta * kl


def no_signal_share(scores, group_size):
    """The share of groups whose rewards are all equal: their advantages are 0, so they train
    nothing (DAPO filters them out and samples again). (B,) -> float.
    Test: tests/test_grpo.py::test_no_signal_is_measured_on_what_the_advantages_see"""
    r = scores.view(-1, group_size)
    return (r == r[:, :1]).all(1).float().mean().item()

# -----------------------------------------------------------------------------


def settings(cfg):
    """(baseline, scale, loss_agg, kl_in, kl_estimator): the preset, with any key given."""
    baseline, scale, agg, kl_in, est = PRESETS[cfg.advantage]
    return baseline, scale, cfg.loss_agg or agg, cfg.kl_in or kl_in, cfg.kl_estimator or est


def describe(cfg, device):
    """The start-up line: the advantage preset as resolved, where the KL is paid, the reward."""
    baseline, scale, loss_agg, kl_in, kl_estimator = settings(cfg)
    print0(f"{cfg.advantage}: baseline {baseline}, scale {scale}, loss {loss_agg}, KL "
           f"{f'{kl_estimator} in the {kl_in}' if cfg.beta > 0 else 'none'}, group of "
           f"{cfg.group_size}; reward {cfg.reward_fn or cfg.reward_model}; device {device}")


def validate(cfg):
    """Bad values fail here, naming the key, before anything is loaded or written."""
    validate_rl(cfg, {
        "advantage": (lambda v: v in PRESETS, f"one of {', '.join(PRESETS)}"),
        "loss_agg": (lambda v: v in ("",) + AGGREGATIONS, f"'' or one of {', '.join(AGGREGATIONS)}"),
        "kl_in": (lambda v: v in ("", "loss", "reward"), "'', 'loss' or 'reward'"),
        "kl_estimator": (lambda v: v in ("", "k1", "k2", "k3"), "'', 'k1', 'k2' or 'k3'"),
        "group_size": (lambda v: v >= 2, ">= 2 (a group baseline needs two answers)"),
        "missing_eos_mode": (lambda v: v in ("", "replace", "subtract", "mask"),
                             "'replace', 'subtract', 'mask' or ''")})
    config.require(cfg.rollout_batch_size % cfg.group_size == 0, f"group_size={cfg.group_size} "
                   f"must divide rollout_batch_size={cfg.rollout_batch_size}")
    kl_in, estimator = settings(cfg)[3:]
    config.require(not (kl_in == "loss" and estimator == "k1" and cfg.beta > 0), "kl_in='loss' "
                   "with kl_estimator='k1': k1 as a loss has zero expected gradient (E_pi[grad log "
                   "pi] = 0), so it would not anchor the policy; use k3 or k2 in the loss, or k1 "
                   "in the reward (kl_in='reward')")


def main(argv=None):
    cfg = config.parse_config(DEFAULTS, argv, __doc__)
    validate(cfg)  # PPO's and GRPO's keys, the gate's among them (safety.validate)
    run = Run(cfg, "grpo")  # device, DDP, seeds, out_dir and its lock, the resume point
    proc = run.proc
    baseline, scale, loss_agg, kl_in, kl_estimator = settings(cfg)

    # -------------------------------------------------------------------------
    # models: the policy, the reference (only when beta > 0), the reward; no critic
    policy, ref, rm, reward, gold_fn, enc = load_models(cfg, proc, with_reference=cfg.beta > 0)
    checkpoint.resume_and_shard(run, policy)  # rank 0's weights everywhere; FSDP shards
    train, val = load_prompts(cfg, enc)
    reward, gate_stats, _ = safety.load(cfg, reward, rm, train + val, enc, policy, run)  # the gate
    demos = load_demos(cfg, enc, proc)  # PPO-ptx's rows, and held-out demonstrations
    describe(cfg, proc.device)

    # -------------------------------------------------------------------------
    # optimizer, and the loop state a resumed run picks up
    optimizer = optim.make_optimizer(policy, cfg, proc)
    state = run.restore(optimizer, best_val=-math.inf)
    iteration = state.step  # iterations done

    def snapshot(with_state):
        return checkpoint.make_checkpoint(policy, "policy", "grpo", enc.name, cfg, iteration,
                                          optimizer if with_state else None, best_val=state.best_val)

    def evaluate():  # held-out rollouts with a fixed sampling seed; ckpt_best.pt
        return evaluate_and_keep_best(run, iteration, state, snapshot, (policy, ref, reward,
                                      gold_fn), val, enc, cfg, cfg.beta, demos.val)

    # -------------------------------------------------------------------------
    # training loop. `iteration` counts the iterations done; its prompts are a function of it.
    metrics, val_metrics = {}, evaluate() if iteration == 0 else {}
    while iteration < cfg.max_iters:
        t0 = time.time()
        lr_scale = optim.set_rl_lr(iteration, cfg, (optimizer, cfg.lr))
        # 1. rollout: group_size answers to each prompt, consecutive rows
        rows = loader.batch_indices(len(train), cfg.rollout_batch_size // cfg.group_size,
                                    iteration, cfg.seed, proc.rank, proc.world_size)
        batch = prompt_batch(train, rows, enc, proc, cfg.group_size)
        with runtime.gathered(policy):  # FSDP: answers of any length, no all-gather
            rollouts = rollout(policy, ref, None, reward, batch, enc, cfg, proc)
        t_rollout = time.time() - t0
        # 2. the sequence reward; RLOO and REINFORCE++ pay the KL here (kl_estimator, summed)
        kl_k1, kl_k3 = kl_estimates(rollouts.logprobs, rollouts.ref_logprobs, rollouts.resp_mask) \
            if ref else (torch.zeros_like(rollouts.scores),) * 2
        scores = kl_penalised_scores(rollouts.scores, rollouts.logprobs, rollouts.ref_logprobs,
                                     rollouts.resp_mask, cfg.beta, kl_estimator) \
            if kl_in == "reward" and ref else rollouts.scores
        # 3. the group baseline instead of a critic: each answer's advantage on all its tokens
        advantages = group_advantages(scores, cfg.group_size, baseline, scale)  # (B,)
        if cfg.missing_eos_mode == "mask":  # an answer cut short teaches nothing (DAPO)
            rollouts = dataclasses.replace(rollouts, loss_mask=rollouts.resp_mask
                                           * rollouts.has_eos[:, None])  # the metrics see it all
        token_advantages = advantages[:, None] * rollouts.resp_mask  # (B, N)
        # 4. the clipped update, without a critic; GRPO pays the KL here, in the loss
        loss_settings = LossSettings(loss_agg, cfg.beta if kl_in == "loss" and ref else 0.0,
                                     kl_estimator)
        stats = ppo_update(rollouts, token_advantages, None, policy=(policy, optimizer),
                           loss_settings=loss_settings, update=iteration + 1, cfg=cfg, proc=proc,
                           ptx=demos.ptx)
        iteration += 1

        # -------------------------------------------------------------------------
        # what a person sees, evaluations and checkpoints
        metrics = dict(rollout_metrics(rollouts, cfg.beta if ref else 0.0, kl_k1, kl_k3),
                       **stats, no_signal=runtime.all_reduce_mean(
                           no_signal_share(scores, cfg.group_size)),
                       **safety.harm_metrics(cfg, gate_stats, rollouts, gold_fn))
        kl_tokens = dict(kl=kl_penalty(rollouts.logprobs, rollouts.ref_logprobs)) if ref else {}
        show_iteration(run, iteration, rollouts, metrics, gold_fn, kl_k1 if ref else None, enc,
                       cfg, dict(advantage=token_advantages, **kl_tokens), lr=cfg.lr * lr_scale,
                       t0=t0, t_rollout=t_rollout)
        if iteration % cfg.eval_interval == 0 or iteration == cfg.max_iters:
            val_metrics = evaluate()
        if save_and_check_stop(run, iteration, cfg, snapshot):
            break

    run.finish()
    return dict(metrics, **val_metrics, iters=iteration, out_dir=cfg.out_dir)


if __name__ == "__main__":
    config.cli(main)
