"""
RLHF with PPO (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences";
Ouyang et al. 2022, InstructGPT): the third stage. The SFT policy answers prompts, a reward model
scores the answers, and PPO raises the score while a KL penalty keeps the policy near the SFT model.

Run it:
    python data/toy/prepare.py && python train_sft.py && python data/toy/label.py \
        && python train_reward_model.py
    python train_ppo.py                           # offline CPU default: the toy world, minutes
    python train_ppo.py config/ppo_gpt2_hh.py     # one GPU: GPT-2 124M on Anthropic HH prompts
    torchrun --standalone --nproc_per_node=8 train_ppo.py config/ppo_gpt2_hh.py \
        --rollout_batch_size=8 --minibatch_size=2 --micro_batch_size=2  # 8 GPUs, same batches
    torchrun --standalone --nproc_per_node=8 train_ppo.py config/ppo_gpt2_xl_hh.py --fsdp=True \
        --rollout_batch_size=8 --minibatch_size=2 --micro_batch_size=2  # GPT-2 XL, FSDP
    python train_ppo.py --reward_fn=toy_gold      # PPO against the toy judge itself (a baseline)
    python train_ppo.py --reward_fn=my_reward.py:score   # any function(prompt, response) -> float
    python train_ppo.py --reward_gate=llama2 --safety_model=...  # helpful and harmless: safety.py
    python train_ppo.py --help                    # every config key and its default

Four models: the policy (from the SFT checkpoint), a frozen reference copy of it, the frozen reward
model, and the critic (a copy of the reward model read at every token, or with shared_critic=True
a value head on the policy's own hidden states). One iteration:
  1. rollout: one sampled response per prompt (KV cache, temperature T), cut after its first EOS;
  2. log-probs of the sampled tokens under the policy and the reference, from logits / T;
  3. score each response with the reward model at its EOS (or with a programmatic reward_fn);
  4. per-token rewards r_t = -beta * (log pi - log pi_ref), plus the score on the last token;
  5. the critic's values, GAE advantages (whitened) and returns;
  6. num_iterations passes of clipped policy and value updates over shuffled minibatches;
  7. beta: fixed, or moved towards target_kl by Ziegler et al.'s controller.
On the toy world the gold judge (data/toy/judge.py) scores the same rollouts, logged as 'gold' next
to the proxy 'score': when the score keeps rising while gold falls, PPO is hacking the reward model.
The rollout and the log-probs (steps 1-3) are rollout.py's; the clipped loss and the update are
shared with train_grpo.py.

Beside the recipe, as keys: reward-model ensembles (reward_model = several checkpoints,
reward_agg), a length penalty, InstructGPT's pretraining mix (ptx_coef), Llama 2's gated helpful
and safety models, and Safe RLHF's cost model with its Lagrange multiplier.
Deliberately left out: several samples per prompt (see train_grpo.py), torch.compile (the shapes
change every iteration), and a DDP wrapper: under torchrun each rank rolls out its own prompts (rollout_batch_size each)
and the gradients are summed by hand (each rank's loss is its share of the global one); the
whitening statistics, the adaptive controller's KL and the logged metrics are reduced over all
ranks, so that every rank takes the same decisions.
"""

import copy
import math
import time
from collections import namedtuple

import torch
import torch.nn as nn

import checkpoint
import config
import ops
import optim
import runtime
import safety
from data import loader
from model import position_ids_from_mask
from ops import masked_mean
from rl_report import evaluate_and_keep_best, rollout_metrics, show_iteration
from rollout import (family_weights, load_demos, load_prompts, load_reward_fn, make_reward,
                     policy_forward, prompt_batch, rollout, toy_gold_judge)
from run import Run
from runtime import print0
from tokenizer import get_tokenizer
from train_reward_model import AGGREGATIONS as AGGREGATE_REWARDS
from train_sft import sft_loss

# -----------------------------------------------------------------------------
# default config: the offline toy run (config/ppo_toy.py holds the same values)
DEFAULTS = dict(
    # I/O
    out_dir="out/ppo_toy",
    init_from="out/sft_toy/ckpt_best.pt",    # the SFT policy: a .pt checkpoint, 'gpt2', an HF dir
    ref_from="",              # the KL anchor: '' = init_from, the policy's own start | another
                              # policy checkpoint (a later round starting from round 1's policy,
                              # still anchored to SFT); the same tokenizer and sizes
    reward_model="out/rm_toy/ckpt_best.pt",  # a scalar checkpoint from train_reward_model.py
    reward_fn="",             # '' = reward_model | 'toy_gold' (the toy judge: PPO against the true
                              # reward) | 'byte_count:c' (count of c) | 'file.py:function'
    reward_agg="mean",        # an ensemble's scores (reward_model = several checkpoints or an
                              # ensemble's out_dir): 'mean' | 'min' (worst case) | 'uwo'
    uwo_lambda=1.0,           # uwo: the members' mean - uwo_lambda * their variance
    # helpful and harmless (safety.py): Llama 2's gate of two reward models, Safe RLHF's cost
    reward_gate="",           # 'llama2': reward_model is the helpful RM, gated with safety_model
    safety_model="",          # Llama 2's safety RM: a scalar checkpoint (or an ensemble spec)
    gate_threshold=0.15,      # the safety RM's score is taken where sigmoid(it) < this
    cost_model="",            # Safe RLHF's cost model (higher = more harmful); '' = off
    cost_scope="unsafe",      # the cost on the prompts tagged harmful only (0 elsewhere) | 'all'
    cost_budget=0.0,          # d: E[cost] <= d, in the cost model's units (0 = the SFT's mean)
    lambda_init=1.0,          # the Lagrange multiplier's start, learned in log space
    lambda_lr=1.0,            # log lambda += lambda_lr * (mean cost - d), every iteration
                              # (from the rs policy 1.0 swung lambda between ~0 and hundreds;
                              # 0.1 let it settle near 2 on two seeds: docs/RESULTS.md)
    gold_judge="toy",         # 'toy': also score every rollout with data/toy/judge.py | ''
    # data: JSONL {"prompt"} records, read by data/loader.py
    train_prompts="data/toy/out/prompts_train.jsonl",
    prompt_weights="",        # 'harmful=3,lookalike=3': each training prompt of a family k times
                              # (its "family" tag), drawn k times as often; '' = as in the file
    val_prompts="data/toy/out/prompts_eval.jsonl",  # '' = no held-out evaluation
    block_size=128,           # prompt + response tokens; longer prompts lose tokens on the left
    # rollout
    rollout_batch_size=64,    # prompts (= responses) per iteration, per process
    max_new_tokens=64,
    temperature=1.0,          # sampling AND every log-prob use logits / temperature
    top_k=0,                  # 0 = off; filtering makes the sampler differ from the pi we train
    top_p=1.0,                # 1.0 = off
    missing_eos_penalty=1.0,  # for responses cut at max_new_tokens without an EOS:
    missing_eos_mode="replace",  # 'replace' the score by -penalty | 'subtract' it | '' = none
    length_penalty=0.0,       # subtracted from the score per response token (EOS included)
    # reward shaping, KL control, advantages
    beta=0.2,                 # KL coefficient (the initial one when adaptive_kl)
    adaptive_kl=False,        # Ziegler et al.'s proportional controller towards target_kl
    target_kl=6.0,            # nats per response
    kl_horizon=10000,         # responses
    gamma=1.0,
    lam=0.95,
    whiten_rewards=False,
    # PPO update
    num_iterations=4,         # passes over each rollout batch (PPO's epochs; GRPO's mu)
    minibatch_size=16,        # responses per optimizer step
    micro_batch_size=16,      # responses per forward/backward (gradient accumulation)
    epsilon_low=0.2,          # clip the ratio to [1 - epsilon_low, 1 + epsilon_high]
    epsilon_high=0.2,
    cliprange_value=0.2,
    vf_coef=0.1,
    ent_coef=0.0,             # entropy bonus; 0 = off
    ptx_coef=0.0,             # PPO-ptx's gamma: each minibatch adds -gamma * the mean per-token
                              # log-likelihood of ptx_batch_size rows of ptx_data; 0 = off
    ptx_data="data/toy/out/sft_train.jsonl",  # SFT-format records, or {"text"} pretraining text
    ptx_batch_size=16,
    demo_val_data="data/toy/out/sft_val.jsonl",  # held-out demonstrations: val_demo_nll at every
                              # evaluation (the forgetting ptx prevents); '' = none
    demo_val_examples=256,
    shared_critic=False,      # a value head on the policy trunk instead of a separate critic
    critic_warmup=0,          # iterations that train the critic alone before the policy moves
    # optimisation: Adam for each model, constant learning rates after warmup unless decay_lr
    lr=5e-5,                  # policy (3e-4: a KL of 4-7 nats within 10 iterations)
    critic_lr=5e-5,
    warmup_iters=0,
    decay_lr=False,           # linear decay to 0 at max_iters
    weight_decay=0.0,
    beta1=0.9,
    beta2=0.999,
    eps=1e-5,                 # not PyTorch's 1e-8, which makes the first updates too aggressive
    grad_clip=1.0,            # on each model's gradient norm; 0 = off
    max_iters=30,
    # evaluation, samples, logging, checkpoints
    log_interval=1,
    eval_interval=10,         # held-out rollouts with a fixed sampling seed; ckpt_best.pt
    eval_examples=96,         # held-out prompts per evaluation (-1 = all)
    sample_interval=10,       # print a few prompts, responses and scores
    num_samples=3,
    ckpt_interval=20,
    save_every=5,             # also keep ckpt_iter{N}.pt every N iterations (over-optimisation plot)
    # system
    seed=1337,
    device="auto",
    dtype="auto",             # 'auto' | 'float32' | 'bfloat16'
    grad_checkpoint=False,    # recompute each block in the backward (policy and critic): less
                              # activation memory, ~1/3 more update compute (docs/SCALE.md)
    fsdp=False,               # under torchrun: shard the policy and the critic (weights, gradients,
                              # AdamW state) over the processes (FSDP, docs/SCALE.md)
    resume=False,
    overwrite=False,
    stop_iter=-1,             # stop with a checkpoint after this many iterations (-1: max_iters)
)

# -----------------------------------------------------------------------------
# estimators and losses: pure functions of (B, T) tensors aligned with the response tokens;
# `mask` is 1 on the valid response tokens (up to and including the EOS), 0 after them.


def kl_penalty(logprobs, ref_logprobs, estimator="k1"):
    """
    Per-token estimates of KL(pi || pi_ref) from tokens sampled from pi (Schulman 2020,
    "Approximating KL divergence"), with log r = log pi_ref - log pi:
        k1 = -log r               unbiased, noisy, negative for some samples (PPO's reward term)
        k2 = (log r)^2 / 2        biased, >= 0, low variance
        k3 = (r - 1) - log r      unbiased, >= 0, low variance (GRPO's loss term; a monitor)
    As a LOSS, k3's gradient is not that of KL(pi || pi_ref): its expectation under pi is the
    gradient of KL(pi_ref || pi), the reverse direction (see train_grpo.py). (B, T) -> (B, T).
    Test: tests/test_grpo.py::test_kl_estimators_by_hand
    """
    log_r = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r ** 2
    if estimator == "k3":
        return torch.exp(log_r) - 1 - log_r
    raise ValueError(f"unknown KL estimator {estimator!r}: expected k1, k2 or k3")


def kl_shaped_rewards(scores, logprobs, ref_logprobs, mask, beta):
    """
    Per-token RLHF reward (Ziegler et al. 2019, eq. 2; Stiennon et al. 2020, eq. 1):

        r_t = -beta * (log pi(a_t|s_t) - log pi_ref(a_t|s_t))  +  [t = last valid token] * score

    The KL term is the k1 estimator, an unbiased sample of KL(pi || pi_ref), so a response's
    rewards sum to score - beta * KL. scores (B,); logprobs, ref_logprobs, mask (B, T)
    -> rewards (B, T), 0 where mask is 0. Every row needs at least one valid token.
    Test: tests/test_ppo.py::test_kl_shaped_rewards_hand_example
    """
    mask = mask.to(logprobs.dtype)
    rewards = -beta * kl_penalty(logprobs, ref_logprobs, "k1") * mask
    last = (mask * torch.arange(mask.size(1), device=mask.device)).argmax(1)  # (B,)
    return rewards.scatter_add(1, last[:, None], scores[:, None].to(rewards.dtype))


def kl_estimates(logprobs, ref_logprobs, mask):
    """Per-response KL(pi || pi_ref): the k1 and k3 estimates (kl_penalty) summed over the valid
    tokens, (B,) each. k1 is what the reward pays; k3 is the >= 0 monitor.
    Test: tests/test_ppo.py::test_kl_shaped_rewards_hand_example"""
    mask = mask.to(logprobs.dtype)
    return tuple((kl_penalty(logprobs, ref_logprobs, k) * mask).sum(1) for k in ("k1", "k3"))


def whiten(x, mask, shift_mean=True):
    """
    Normalise x to unit variance over the entries where mask is 1, the advantage "whitening" of
    PPO implementations since OpenAI baselines (masked as in Ziegler et al.'s lm-human-preferences).
    shift_mean=False adds the mean back (for rewards, whose sign matters). The variance is the
    unbiased one. Entries where mask is 0 come back as 0. Under DDP the mean and variance are
    those of every rank's batch, so all ranks scale alike (a collective: every rank calls it).
    Test: tests/test_ppo.py::test_whiten_uses_only_masked_entries
    """
    mask = mask.to(x.dtype)
    mean, var = ops.global_masked_mean_var(x, mask, unbiased=True)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return (out if shift_mean else out + mean) * mask


def compute_gae(rewards, values, mask, gamma=1.0, lam=0.95):
    """
    Generalised advantage estimation (Schulman et al. 2016, eqs. 11-16), computed backwards:

        delta_t = r_t + gamma * V_{t+1} - V_t,     A_t = delta_t + gamma * lam * A_{t+1}

    An episode ends where its mask ends: the value (and advantage) after the last valid token is 0,
    since the response is over and its whole reward has been paid. returns = A + V, the critic's
    targets (lambda-returns). rewards, values, mask (B, T), mask 1 on a prefix of each row
    -> (advantages, returns), each (B, T), 0 where mask is 0.
    Test: tests/test_ppo.py::test_compute_gae_hand_example
    """
    mask = mask.to(values.dtype)
    values = values * mask
    advantages = torch.zeros_like(values)
    next_adv = next_value = torch.zeros_like(values[:, 0])  # (B,)
    for t in reversed(range(values.size(1))):  # over response tokens; each step is a (B,) op
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * mask[:, t]  # a pad resets the recursion
        advantages[:, t] = next_adv
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


def loss_normalizer(mask, mode="token_mean", budget=None):
    """
    The denominator of aggregate_loss for a whole (mini)batch, counted over EVERY rank under DDP
    (a collective): valid tokens (token_mean), sequences (seq_mean_token_mean), or sequences x
    the generation budget (seq_mean_token_sum_norm; budget = max_new_tokens, by default the
    padded length T, the largest of the ranks'). Pass it as aggregate_loss's `total` in each micro-batch: their losses then
    sum to the loss of the whole batch in one process, however it is split into micro-batches
    and ranks.
    Test: tests/test_grpo.py::test_micro_batches_sum_to_the_whole_batch
    """
    if mode == "token_mean":
        return runtime.all_reduce_sum(mask.sum().float())
    n = runtime.all_reduce_sum(torch.tensor(float(mask.size(0)), device=mask.device))
    if mode == "seq_mean_token_mean":
        return n
    if budget is None:  # the padded length, the largest of the ranks'
        budget = runtime.all_reduce_max(torch.tensor(float(mask.size(1)), device=mask.device))
    return n * budget


def aggregate_loss(per_token, mask, mode="token_mean", total=None, budget=None):
    """
    A scalar loss from per-token losses (B, T) and the mask of valid response tokens:
      token_mean               sum_i,t m*x / sum_i,t m: every token weighs the same (DAPO)
      seq_mean_token_mean      1/B sum_i (sum_t m*x / |o_i|): each answer weighs the same, so a
                               token of a short answer weighs more (GRPO, Shao et al. 2024, eq. 3)
      seq_mean_token_sum_norm  sum_i,t m*x / (B * L), L the generation budget (max_new_tokens;
                               by default the padded length T): a constant normaliser, so a token
                               weighs the same whatever the batch's longest answer, without
                               GRPO's length bias (Dr. GRPO, Liu et al. 2025)
    total: the denominator (loss_normalizer of the whole batch) when per_token is one
    micro-batch of it; by default this batch's own.
    Test: tests/test_grpo.py::test_loss_aggregations_by_hand
    """
    mask = mask.to(per_token.dtype)
    if mode == "seq_mean_token_mean":
        numerator = ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).sum()
    elif mode in ("token_mean", "seq_mean_token_sum_norm"):
        numerator = (per_token * mask).sum()
    else:
        raise ValueError(f"unknown loss aggregation {mode!r}: expected one of {AGGREGATIONS}")
    if total is None:
        total = {"token_mean": mask.sum(), "seq_mean_token_mean": mask.size(0)}.get(
            mode, mask.size(0) * (mask.size(1) if budget is None else budget))
    return numerator / torch.as_tensor(total, dtype=per_token.dtype).clamp(min=1)


def ppo_policy_loss(logprobs, old_logprobs, advantages, mask, epsilon_low=0.2, epsilon_high=None,
                    mode="token_mean", total=None):
    """
    Clipped surrogate objective (Schulman et al. 2017, eq. 7) as a loss, aggregated over the valid
    tokens (aggregate_loss; PPO's token_mean by default):

        L_t = max(-A_t * rho_t, -A_t * clip(rho_t, 1 - eps_low, 1 + eps_high)),
        rho_t = pi(a_t|s_t) / pi_old(a_t|s_t)

    epsilon_high > epsilon_low is DAPO's clip-higher (Yu et al. 2025): more room to raise the
    probability of unlikely tokens; None = epsilon_low. Returns (loss, clipfrac, approx_kl,
    ratio): the share of tokens where the clipped term is the one used, KL(pi_old || pi) ~ mean
    of 1/2 (log rho)^2, and rho (B, T); all but loss detached.
    Test: tests/test_ppo.py::test_policy_and_value_losses_hand_example
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    high = epsilon_low if epsilon_high is None else epsilon_high
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - epsilon_low, 1.0 + high)
    loss = aggregate_loss(torch.max(unclipped, clipped), mask, mode, total)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    return loss, clipfrac, masked_mean(0.5 * log_ratio.detach() ** 2, mask), ratio.detach()


def ppo_value_loss(values, old_values, returns, mask, cliprange_value, total=None):
    """
    Clipped value loss of OpenAI baselines' PPO2, as used by Ziegler et al. 2019, mean over valid
    tokens:   L_V = 1/2 * max((V_t - R_t)^2, (clip(V_t, V_old - eps_v, V_old + eps_v) - R_t)^2)
    total: the token count of the whole batch (loss_normalizer) for a micro-batch of it.
    Returns (loss, vclipfrac): the share of tokens where the clipped term wins.
    Test: tests/test_ppo.py::test_policy_and_value_losses_hand_example
    """
    clipped = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    err_unclipped, err_clipped = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * aggregate_loss(torch.max(err_unclipped, err_clipped), mask, "token_mean", total)
    return loss, masked_mean((err_clipped > err_unclipped).float(), mask)


def adaptive_kl_coef(beta, kl, target, horizon, n_steps):
    """
    The adaptive KL controller of Ziegler et al. 2019 (sec. 2.2), proportional control of beta:

        e = clip(KL / target - 1, -0.2, 0.2),    beta <- beta * (1 + e * n_steps / horizon)

    kl: the batch's mean KL per response (nats); n_steps: responses in the batch.
    Test: tests/test_ppo.py::test_adaptive_kl_coef
    """
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return beta * (1.0 + error * n_steps / horizon)


def explained_variance(values, returns, mask):
    """1 - Var[R - V] / Var[R] over valid tokens (of every rank under DDP: a collective): 1 = the
    critic predicts the returns, <= 0 = no better than a constant.
    Test: tests/test_distributed.py::test_collective_helpers_see_the_whole_global_batch"""
    def var(x):
        return ops.global_masked_mean_var(x, mask)[1]
    return (1.0 - var(returns - values) / var(returns).clamp(min=1e-8)).item()


def ptx_loss(policy, batch, autocast=None):
    """
    InstructGPT's pretraining mix, PPO-ptx (Ouyang et al. 2022, Eq. 2 and App. C.4): the
    objective gains gamma * E_{x ~ D_pretrain}[log pi(x)], so each minibatch's loss gains
    gamma * this: the mean per-token negative log-likelihood of a batch of pretraining (here by
    default: demonstration) rows, the SFT loss itself. batch: loader.collate's (idx,
    attention_mask, loss_mask) on the device -> a scalar, with gradients.
    Test: tests/test_ppo.py::test_ptx_loss_is_the_sft_loss
    """
    idx, attn, loss_mask = batch
    logp = ops.trained_logprobs(policy, idx, loss_mask, position_ids_from_mask(attn), autocast)
    return sft_loss(logp, loss_mask)


# -----------------------------------------------------------------------------
# the loss beside the clipped surrogate: how it is aggregated over tokens (AGGREGATIONS), and the
# KL to the reference as a term of it (GRPO: kl_coef > 0, with the kl_penalty estimator)
LossSettings = namedtuple("LossSettings", "agg kl_coef kl_estimator",
                          defaults=("token_mean", 0.0, "k3"))


def ppo_update(rollouts, advantages, returns, *, policy, critic=None,
               loss_settings=LossSettings(), train_policy=True, update, cfg, proc, ptx=None):
    """
    Step 6: num_iterations passes over the rollout in shuffled minibatches of minibatch_size
    responses, each one optimizer step of the policy (clipped surrogate on `advantages` (B, N))
    and of the critic (clipped value loss on `returns` (B, N)), accumulated over micro-batches.
    policy, critic: (model, optimizer) pairs; GRPO has no critic (None) and its own loss
    settings. train_policy=False updates the critic alone (its warm-up). `update` numbers the
    iteration in a non-finite error. ptx(update, k): the k-th minibatch's batch of PPO-ptx rows,
    whose ptx_loss (times ptx_coef) joins the policy's loss; None = no mix. Returns the mean
    statistics.
    Test: tests/test_ppo.py::test_first_update_invariants; tests/test_minimal.py pins it to minimal/ppo.py
    """
    (policy, optimizer), (critic, critic_optimizer) = policy, critic or (None, None)
    loss_agg, kl_coef, kl_estimator = loss_settings
    B, stats, losses = rollouts.seq.size(0), [], []
    loss_mask = rollouts.resp_mask if rollouts.loss_mask is None else rollouts.loss_mask  # (B, N)
    prompt_len = rollouts.mask[:, :rollouts.P].sum(1)  # (B,)
    for _ in range(cfg.num_iterations):
        for rows in torch.randperm(B).to(proc.device).split(cfg.minibatch_size):
            # over every rank's rows; Dr. GRPO's constant is rows x max_new_tokens
            total = loss_normalizer(loss_mask[rows], loss_agg, cfg.max_new_tokens)
            n_tokens = loss_normalizer(loss_mask[rows], "token_mean")
            mb_loss, parts = 0.0, {}  # parts: this rank's shares of the minibatch's losses
            # micro-batches of similar prompt lengths, each without its padding columns
            # (policy_forward); their losses sum to the minibatch's in any order
            rows = rows[prompt_len[rows].argsort(stable=True)]
            for mb in rows.split(cfg.micro_batch_size):
                m = loss_mask[mb]
                with proc.autocast:
                    logprobs, entropy, values = policy_forward(
                        policy, rollouts.seq[mb], rollouts.mask[mb], rollouts.P, cfg.temperature,
                        critic, entropy=cfg.ent_coef > 0)
                pg_loss, clipfrac, approx_kl, ratio = ppo_policy_loss(
                    logprobs, rollouts.logprobs[mb], advantages[mb], m, cfg.epsilon_low,
                    cfg.epsilon_high, loss_agg, total)
                loss, share = pg_loss, dict(pg_loss=pg_loss.item())
                s = dict(clipfrac=clipfrac, approx_kl=approx_kl, ratio_mean=masked_mean(ratio, m),
                         ratio_var=masked_mean((ratio - masked_mean(ratio, m)) ** 2, m))
                if kl_coef > 0:  # GRPO: the KL to the reference is a term of the loss
                    kl = aggregate_loss(kl_penalty(logprobs, rollouts.ref_logprobs[mb],
                                                   kl_estimator), m, loss_agg, total)
                    loss, share["kl_loss"] = loss + kl_coef * kl, kl.item()
                if cfg.ent_coef > 0:
                    loss = loss - cfg.ent_coef * aggregate_loss(entropy, m, "token_mean", n_tokens)
                loss = loss if train_policy else loss.detach()
                if critic is not None:
                    vf_loss, s["vclipfrac"] = ppo_value_loss(
                        values, rollouts.values[mb], returns[mb], m, cfg.cliprange_value, n_tokens)
                    loss, share["vf_loss"] = loss + cfg.vf_coef * vf_loss, vf_loss.item()
                if loss.requires_grad:  # FSDP averages the ranks' gradients: the global loss
                    (loss * (proc.world_size if proc.fsdp else 1)).backward()  # is their sum
                mb_loss += loss.item()
                stats.append(s)
                parts = {k: parts.get(k, 0.0) + v for k, v in share.items()}
            if ptx is not None and train_policy:  # PPO-ptx: each rank's share of the mix
                nll = ptx_loss(policy, ptx(update, len(losses)), proc.autocast)
                (cfg.ptx_coef * nll / (1 if proc.fsdp else proc.world_size)).backward()  # FSDP
                # averages the ranks' gradients, DDP's all_reduce_grads sums them
                parts["ptx_loss"] = nll.item() / proc.world_size
            losses.append(parts)
            if not train_policy:  # a shared critic's value loss reached the frozen trunk
                optimizer.zero_grad(set_to_none=True)
            for model, opt in ((policy, optimizer), (critic, critic_optimizer)):
                if model is not None and (train_policy or model is critic):
                    runtime.all_reduce_grads(model, average=proc.fsdp)  # unsharded ones
                    optim.optimizer_step(model, opt, cfg.grad_clip, mb_loss, update=update)
    # the ratio statistics: every rank has as many micro-batches, so the mean over ranks is the
    # mean over all of them; the losses: each micro-batch holds its share of its minibatch's
    # loss, so the shares sum (over micro-batches and ranks) to the minibatch's loss, averaged
    # over the minibatches
    out = {k: runtime.all_reduce_mean(torch.stack([s[k] for s in stats]).float().mean().item())
           for k in stats[0]}
    out.update({k: runtime.all_reduce_sum(sum(p[k] for p in losses) / len(losses))
                for k in losses[0]})
    return out


# -----------------------------------------------------------------------------
# what PPO and GRPO load the same way


def validate(cfg, rules=None):
    """Bad values fail here, naming the key, before anything is loaded or written (PPO's and
    GRPO's keys)."""
    config.validate(cfg, {
        "beta": (lambda v: v >= 0, ">= 0"),
        "gold_judge": (lambda v: v in ("", "toy"), "'toy' or ''"),
        "missing_eos_mode": (lambda v: v in ("", "replace", "subtract"),
                             "'replace', 'subtract' or ''"),
        "epsilon_low": (lambda v: 0 < v < 1, "in (0, 1)"),
        "epsilon_high": (lambda v: v > 0, "> 0"),
        "cliprange_value": (lambda v: v > 0, "> 0"),
        "reward_agg": (lambda v: v in AGGREGATE_REWARDS, f"one of {', '.join(AGGREGATE_REWARDS)}"),
        "uwo_lambda": (lambda v: v >= 0, ">= 0"), "length_penalty": (lambda v: v >= 0, ">= 0"),
        "ptx_coef": (lambda v: v >= 0, ">= 0"), "ptx_batch_size": (lambda v: v > 0, "> 0"),
        "demo_val_examples": (lambda v: v == -1 or v > 0, "> 0, or -1 for all"),
        **(rules or {})})
    config.require(cfg.rollout_batch_size % cfg.minibatch_size == 0 and
                   cfg.minibatch_size % cfg.micro_batch_size == 0, "minibatch_size must divide "
                   "rollout_batch_size, and micro_batch_size must divide minibatch_size")
    config.require(cfg.max_new_tokens < cfg.block_size, f"max_new_tokens={cfg.max_new_tokens} "
                   f"leaves no room for a prompt in block_size={cfg.block_size}")
    config.require_files(cfg, "train_prompts", "val_prompts", "init_from", "demo_val_data",
                         *(["ref_from"] * (cfg.ref_from != "")),
                         *(["reward_model"] * (cfg.reward_fn == "")),
                         *(["ptx_data"] * (cfg.ptx_coef > 0)), hint="toy: python "
                         "data/toy/prepare.py, then train_sft.py, label.py, train_reward_model.py")
    load_reward_fn(cfg.reward_fn)  # a bad spec, file or function fails now
    family_weights(cfg.prompt_weights)  # and a bad prompt_weights
    safety.validate(cfg)  # the gate's and Safe RLHF's keys


def load_models(cfg, proc, with_reference=True):
    """The policy (the SFT checkpoint, or the resumed run's weights are loaded by the caller),
    its frozen reference copy (or None), the reward model (None with a reward_fn), the step-3
    scorer, the gold judge (or None) and the tokenizer. Dropout is off and every model stays in
    eval() mode: dropout would make the rollout's and the update's log-probs differ (ratio != 1
    before any step) and the KL noisy."""
    policy, tok_name = checkpoint.init_policy(cfg.init_from, dropout=0.0)
    checkpoint.check_block_size(policy, cfg.block_size)
    checkpoint.check_sampling_vocab(policy, tok_name, cfg.init_from)  # it samples the rollouts
    ref = load_reference(cfg, policy, tok_name) if with_reference else None
    reward_model = None
    if cfg.reward_fn == "":  # a trained reward model: a policy checkpoint here is a mistake
        reward_model = checkpoint.load_reward_model(cfg.reward_model, tok_name,
                                                    policy.config.vocab_size, cfg.reward_agg,
                                                    cfg.uwo_lambda)
        checkpoint.check_block_size(reward_model, cfg.block_size,
                                    f"reward_model {cfg.reward_model}")
    for m in (policy, ref, reward_model):
        if m is not None:
            m.to(proc.device).eval()
    policy.transformer.grad_checkpoint = cfg.grad_checkpoint  # only the trained models use it
    reward = make_reward(reward_model, load_reward_fn(cfg.reward_fn), cfg.micro_batch_size)
    gold_fn = toy_gold_judge() if cfg.gold_judge == "toy" else None
    return policy, ref, reward_model, reward, gold_fn, get_tokenizer(tok_name)


def load_reference(cfg, policy, tok_name):
    """The frozen KL anchor: a copy of the policy's start, or ref_from's policy, which must read
    the same tokens at the same sizes (its log-probs are compared token by token)."""
    if not cfg.ref_from:
        return copy.deepcopy(policy).requires_grad_(False)
    ref, ref_tok = checkpoint.init_policy(cfg.ref_from, dropout=0.0)
    config.require(ref_tok == tok_name and ref.config.vocab_size == policy.config.vocab_size,
                   f"ref_from={cfg.ref_from}: tokenizer '{ref_tok}' ({ref.config.vocab_size} "
                   f"tokens) is not the policy's '{tok_name}' ({policy.config.vocab_size})")
    checkpoint.check_block_size(ref, cfg.block_size, f"ref_from {cfg.ref_from}")
    return ref.requires_grad_(False)


def critic_kind(cfg):
    return "a head on the policy" if cfg.shared_critic else "separate"


def make_critic(cfg, policy, reward_model, proc):
    """InstructGPT's critic: a copy of the reward model (of an ensemble's first member: its
    values start centred on the scores it pays, reward_bias included); with shared_critic a fresh head on the policy's own hidden
    states; with a programmatic reward, a fresh head on a copy of the SFT trunk."""
    if cfg.shared_critic:
        critic = nn.Linear(policy.config.n_embd, 1)
        nn.init.normal_(critic.weight, std=1.0 / math.sqrt(policy.config.n_embd + 1))
        nn.init.zeros_(critic.bias)
    elif reward_model is not None:  # an ensemble's first member
        first = getattr(reward_model, "members", [reward_model])[0]
        critic = copy.deepcopy(first).requires_grad_(True)
    else:
        critic, _ = checkpoint.init_scalar(cfg.init_from, dropout=0.0)
    if not cfg.shared_critic:
        critic.transformer.grad_checkpoint = cfg.grad_checkpoint
    return critic.to(proc.device).eval()


def rewards_and_advantages(rollouts, state, cfg, costed=None):
    """
    Steps 4-5 of an iteration, on a batch of rollouts:
      4. per-token rewards: -beta * KL on every token, the score on the last one (Llama 2's gated
         score whitened over the batch first; whiten_rewards: the rewards too, mean kept)
      5. GAE's advantages and returns (Safe RLHF: the cost's advantage folded in by lambda,
         safety.lagrangian_advantages), the advantages whitened over every rank's valid tokens.
    Returns rewards, advantages, returns, each (B, N).
    """
    mask = rollouts.resp_mask
    scores = whiten(rollouts.scores, torch.ones_like(rollouts.scores)) if cfg.reward_gate \
        else rollouts.scores
    rewards = kl_shaped_rewards(scores, rollouts.logprobs, rollouts.ref_logprobs, mask, state.beta)
    rewards = whiten(rewards, mask, False) if cfg.whiten_rewards else rewards
    advantages, returns = compute_gae(rewards, rollouts.values, mask, cfg.gamma, cfg.lam)
    if costed is not None:  # (A_r - lambda * A_c) / (1 + lambda), lambda's step first
        advantages = safety.lagrangian_advantages(advantages, costed, rollouts, state, cfg)
    return rewards, whiten(advantages, mask), returns


def ppo_checkpoint(policy, critic, opt_policy, opt_critic, enc, cfg, iteration, state, cost=None):
    """The checkpoint of both models (the critic beside the policy's weights), the loop state
    (beta, best_val), when given both optimizers' states, and Safe RLHF's (safety.cost_state).
    A collective under FSDP."""
    extra = dict(critic=checkpoint.model_state(critic), beta=state.beta, best_val=state.best_val,
                 **safety.cost_state(cost, state, opt_critic is not None))
    if opt_critic is not None:
        extra["critic_optimizer"] = checkpoint.optimizer_state(opt_critic)
    return checkpoint.make_checkpoint(policy, "policy", "ppo", enc.name, cfg, iteration,
                                      opt_policy, **extra)


def save_and_check_stop(run, iteration, cfg, snapshot):
    """The checkpoints after an iteration: ckpt_iter{N}.pt every save_every iterations (the
    over-optimisation sweep), ckpt_last.pt every ckpt_interval, at the end and when stopping.
    Returns whether to stop (stop_iter, or a signal on any rank: a collective)."""
    if cfg.save_every and iteration % cfg.save_every == 0:
        run.save(f"ckpt_iter{iteration}.pt", snapshot(False))
    stopping = run.should_stop(iteration)
    if iteration % cfg.ckpt_interval == 0 or iteration == cfg.max_iters or stopping:
        run.save("ckpt_last.pt", snapshot(True))
    if stopping:
        print0(f"stopping after iteration {iteration}; continue with --resume=True")
    return stopping

# -----------------------------------------------------------------------------


def main(argv=None):
    cfg = config.parse_config(DEFAULTS, argv, __doc__)
    validate(cfg)
    run = Run(cfg, "ppo")  # device, DDP, seeds, out_dir and its lock, the resume point
    proc = run.proc

    # -------------------------------------------------------------------------
    # models: policy, reference, reward model (or function), critic; data: prompts only
    policy, ref, reward_model, reward, gold_fn, enc = load_models(cfg, proc)
    critic = make_critic(cfg, policy, reward_model, proc)
    checkpoint.resume_and_shard(run, policy, critic)  # rank 0's weights everywhere; FSDP
    train, val = load_prompts(cfg, enc)
    demos = load_demos(cfg, enc, proc)  # PPO-ptx's rows, and held-out demonstrations
    reward, gate_stats, cost = safety.load(cfg, reward, reward_model, train + val, enc, policy, run)
    print0(f"policy: {policy.num_params() / 1e6:.2f}M parameters from {cfg.init_from} ('{enc.name}'"
           f" tokens); reward: {cfg.reward_fn or cfg.reward_model}; critic: {critic_kind(cfg)}")

    # -------------------------------------------------------------------------
    # optimizers, and the loop state a resumed run picks up
    opt_policy = optim.make_optimizer(policy, cfg, proc)
    opt_critic = optim.make_optimizer(critic, cfg, proc, lr=cfg.critic_lr)
    state = run.restore(opt_policy, beta=cfg.beta, best_val=-math.inf, **safety.loop_state(cfg))
    iteration = state.step  # iterations done
    checkpoint.resume_critic_optimizer(run, opt_critic)

    def snapshot(with_state):  # with the optimizers' state: ckpt_last.pt, which resumes
        return ppo_checkpoint(policy, critic, opt_policy if with_state else None,
                              opt_critic if with_state else None, enc, cfg, iteration, state, cost)

    def evaluate():  # held-out rollouts with a fixed sampling seed; ckpt_best.pt
        return evaluate_and_keep_best(run, iteration, state, snapshot, (policy, ref, reward,
                                      gold_fn), val, enc, cfg, state.beta, demos.val)

    # -------------------------------------------------------------------------
    # training loop. `iteration` counts the iterations done; its prompts are a function of it.
    metrics, val_metrics = {}, evaluate() if iteration == 0 else {}
    while iteration < cfg.max_iters:
        t0 = time.time()
        lr_scale = optim.set_rl_lr(iteration, cfg, (opt_policy, cfg.lr), (opt_critic, cfg.critic_lr))
        # 1-3. rollout: sample, log-probs of policy and reference, scores, the critic's values
        rows = loader.batch_indices(len(train), cfg.rollout_batch_size, iteration, cfg.seed,
                                    proc.rank, proc.world_size)
        with runtime.gathered(policy, critic):  # FSDP: answers of any length, no all-gather
            rollouts = rollout(policy, ref, critic, reward, prompt_batch(train, rows, enc, proc),
                               enc, cfg, proc)
        costed = safety.cost_rollout(cost, rollouts, cfg, proc) if cost else None  # Safe RLHF
        t_rollout = time.time() - t0
        # 4-5. per-token rewards (-beta KL, the score at the EOS), GAE's advantages and returns
        kl_k1, kl_k3 = kl_estimates(rollouts.logprobs, rollouts.ref_logprobs, rollouts.resp_mask)
        rewards, advantages, returns = rewards_and_advantages(rollouts, state, cfg, costed)
        # 6. the clipped policy and value updates (the critic alone while it warms up)
        stats = ppo_update(rollouts, advantages, returns, policy=(policy, opt_policy), critic=(
            critic, opt_critic), train_policy=iteration >= cfg.critic_warmup,
            update=iteration + 1, cfg=cfg, proc=proc, ptx=demos.ptx)
        stats.update(safety.after_update(cfg, cost, costed, rollouts, state, gate_stats, gold_fn,
                                         proc, iteration + 1, lr_scale))  # the cost critic's too
        # 7. the KL coefficient of the next iteration
        metrics = dict(rollout_metrics(rollouts, state.beta, kl_k1, kl_k3), beta=state.beta,
                       **stats, explained_var=explained_variance(rollouts.values, returns,
                                                                 rollouts.resp_mask))
        if cfg.adaptive_kl:
            state.beta = adaptive_kl_coef(state.beta, metrics["kl"], cfg.target_kl, cfg.kl_horizon,
                                          cfg.rollout_batch_size * proc.world_size)
        iteration += 1

        # -------------------------------------------------------------------------
        # what a person sees, evaluations and checkpoints
        show_iteration(run, iteration, rollouts, metrics, gold_fn, kl_k1, enc, cfg, dict(
            reward=rewards, kl=kl_penalty(rollouts.logprobs, rollouts.ref_logprobs),
            value=rollouts.values, advantage=advantages), lr=cfg.lr * lr_scale, t0=t0,
            t_rollout=t_rollout)
        if iteration % cfg.eval_interval == 0 or iteration == cfg.max_iters:
            val_metrics = evaluate()
        if save_and_check_stop(run, iteration, cfg, snapshot):
            break

    run.finish()
    return dict(metrics, **val_metrics, beta=state.beta, iters=iteration, out_dir=cfg.out_dir)


if __name__ == "__main__":
    config.cli(main)
