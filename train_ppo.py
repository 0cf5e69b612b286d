"""
RLHF with PPO (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences";
Ouyang et al. 2022, InstructGPT): the third stage. The SFT policy answers prompts, a reward model
scores the answers, and PPO raises the score while a KL penalty keeps the policy near the SFT model.

Run it:
    python data/toy/prepare.py && python train_sft.py && python train_reward_model.py
    python train_ppo.py                           # offline CPU default: the toy world, minutes
    python train_ppo.py config/ppo_gpt2_hh.py     # one GPU: GPT-2 124M on Anthropic HH prompts
    torchrun --standalone --nproc_per_node=8 train_ppo.py config/ppo_gpt2_hh.py \
        --rollout_batch_size=8 --minibatch_size=2 --micro_batch_size=2  # 8 GPUs, same batches
    python train_ppo.py --reward_fn=toy_gold      # PPO against the toy judge itself (a baseline)
    python train_ppo.py --help                    # every config key and its default

Four models: the policy (from the SFT checkpoint), a frozen reference copy of it, the frozen reward
model, and the critic (a copy of the reward model read at every token, or with shared_critic=True
a value head on the policy's own hidden states). One iteration:
  1. rollout: one sampled response per prompt (KV cache, temperature T), cut after its first EOS;
  2. log-probs of the sampled tokens under the policy and the reference, from logits / T;
  3. score each response with the reward model at its EOS (or with a programmatic reward_fn);
  4. per-token rewards r_t = -beta * (log pi - log pi_ref), plus the score on the last token;
  5. the critic's values, GAE advantages (whitened) and returns;
  6. ppo_epochs passes of clipped policy and value updates over shuffled minibatches;
  7. beta: fixed, or moved towards target_kl by Ziegler et al.'s controller.
On the toy world the gold judge (data/toy/judge.py) scores the same rollouts, logged as 'gold' next
to the proxy 'score': when the score keeps rising while gold falls, PPO is hacking the reward model.

Deliberately left out: InstructGPT's pretraining-mix loss (PPO-ptx), several samples per prompt
(RLOO/GRPO-style baselines), reward-model ensembles, a critic warm-up phase, torch.compile (the
shapes change every iteration), and a DDP wrapper: under torchrun each rank rolls out its own
prompts (rollout_batch_size each) and the gradients are averaged by hand; the whitening statistics,
the adaptive controller's KL and the logged metrics are reduced over all ranks, so that every rank
takes the same decisions.
"""

import copy
import math
import os
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import common
from common import masked_mean, print0, token_logprobs
from data import loader
from model import row_generators
from tokenizer import decode_response, get_tokenizer

# -----------------------------------------------------------------------------
# default config: the offline toy run (config/ppo_toy.py holds the same values)
DEFAULTS = dict(
    # I/O
    out_dir="out/ppo_toy",
    init_from="out/sft_toy/ckpt_best.pt",    # the SFT policy: a .pt checkpoint, 'gpt2', an HF dir
    reward_model="out/rm_toy/ckpt_best.pt",  # a scalar checkpoint from train_reward_model.py
    reward_fn="",             # '' = reward_model | 'byte_count:c' (count of c in the response) |
                              # 'toy_gold' (the toy judge: PPO against the true reward)
    gold_judge="toy",         # 'toy': also score every rollout with data/toy/judge.py | ''
    # data: JSONL {"prompt"} records, read by data/loader.py
    train_prompts="data/toy/out/prompts_train.jsonl",
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
    # reward shaping, KL control, advantages
    kl_coef=0.2,              # beta (the initial one when adaptive_kl)
    adaptive_kl=False,        # Ziegler et al.'s proportional controller towards target_kl
    target_kl=6.0,            # nats per response
    kl_horizon=10000,         # responses
    gamma=1.0,
    lam=0.95,
    whiten_rewards=False,
    # PPO update
    ppo_epochs=4,
    minibatch_size=16,        # responses per optimizer step
    micro_batch_size=16,      # responses per forward/backward (gradient accumulation)
    cliprange=0.2,
    cliprange_value=0.2,
    vf_coef=0.1,
    ent_coef=0.0,             # entropy bonus; 0 = off
    shared_critic=False,      # a value head on the policy trunk instead of a separate critic
    # optimisation: Adam for each model, constant learning rates after warmup unless decay_lr
    lr=3e-4,                  # policy
    critic_lr=3e-4,
    warmup_iters=0,
    decay_lr=False,           # linear decay to 0 at max_iters
    weight_decay=0.0,
    beta1=0.9,
    beta2=0.999,
    eps=1e-5,                 # not PyTorch's 1e-8, which makes the first updates too aggressive
    grad_clip=1.0,            # on each model's gradient norm; 0 = off
    max_iters=60,
    # evaluation, samples, logging, checkpoints
    log_interval=1,
    eval_interval=10,         # held-out rollouts with a fixed sampling seed; ckpt_best.pt
    eval_prompts=96,          # held-out prompts per evaluation
    sample_interval=10,       # print a few prompts, responses and scores
    num_samples=3,
    ckpt_interval=20,
    save_every=10,            # also keep ckpt_iter{N}.pt every N iterations (over-optimisation plot)
    # system
    seed=1337,
    device="auto",
    dtype="auto",             # 'auto' | 'float32' | 'bfloat16'
    resume=False,
    overwrite=False,
    stop_iter=-1,             # stop with a checkpoint after this many iterations (-1: max_iters)
)

# -----------------------------------------------------------------------------
# estimators and losses: pure functions of (B, T) tensors aligned with the response tokens;
# `mask` is 1 on the valid response tokens (up to and including the EOS), 0 after them.


def kl_shaped_rewards(scores, logprobs, ref_logprobs, mask, kl_coef):
    """
    Per-token RLHF reward (Ziegler et al. 2019, eq. 2; Stiennon et al. 2020, eq. 1):

        r_t = -beta * (log pi(a_t|s_t) - log pi_ref(a_t|s_t))  +  [t = last valid token] * score

    The KL term is the k1 estimator, an unbiased sample of KL(pi || pi_ref), so a response's
    rewards sum to score - beta * KL. scores (B,); logprobs, ref_logprobs, mask (B, T)
    -> rewards (B, T), 0 where mask is 0. Every row needs at least one valid token.
    """
    mask = mask.to(logprobs.dtype)
    rewards = -kl_coef * (logprobs - ref_logprobs) * mask
    last = (mask * torch.arange(mask.size(1), device=mask.device)).argmax(1)  # (B,)
    return rewards.scatter_add(1, last[:, None], scores[:, None].to(rewards.dtype))


def kl_estimates(logprobs, ref_logprobs, mask):
    """
    Per-response KL(pi || pi_ref) from tokens sampled from pi (Schulman 2020, "Approximating KL
    divergence"), with log r = log pi_ref - log pi per token:
        k1 = -log r             unbiased, noisy, negative for some samples (the reward's)
        k3 = (r - 1) - log r    unbiased, >= 0, lower variance (a monitor)
    Returns (k1, k3), each (B,): sums over the valid tokens.
    """
    mask = mask.to(logprobs.dtype)
    log_r = ref_logprobs - logprobs
    return (-log_r * mask).sum(1), ((torch.exp(log_r) - 1 - log_r) * mask).sum(1)


def whiten(x, mask, shift_mean=True):
    """
    Normalise x to unit variance over the entries where mask is 1, the advantage "whitening" of
    PPO implementations since OpenAI baselines (masked as in Ziegler et al.'s lm-human-preferences).
    shift_mean=False adds the mean back (for rewards, whose sign matters). The variance is the
    unbiased one. Entries where mask is 0 come back as 0. Under DDP the mean and variance are
    those of every rank's batch, so all ranks scale alike (a collective: every rank calls it).
    """
    mask = mask.to(x.dtype)
    mean, var = common.global_masked_mean_var(x, mask, unbiased=True)
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


def ppo_policy_loss(logprobs, old_logprobs, advantages, mask, cliprange):
    """
    Clipped surrogate objective (Schulman et al. 2017, eq. 7) as a loss, mean over valid tokens:

        L = max(-A_t * rho_t, -A_t * clip(rho_t, 1 - eps, 1 + eps)),  rho_t = pi(a_t|s_t) / pi_old(a_t|s_t)

    Returns (loss, clipfrac, approx_kl, ratio): the share of tokens where the clipped term is the
    one used, KL(pi_old || pi) ~ mean of 1/2 (log rho)^2, and rho (B, T); all but loss detached.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    return loss, clipfrac, masked_mean(0.5 * log_ratio.detach() ** 2, mask), ratio.detach()


def ppo_value_loss(values, old_values, returns, mask, cliprange_value):
    """
    Clipped value loss of OpenAI baselines' PPO2, as used by Ziegler et al. 2019, mean over valid
    tokens:   L_V = 1/2 * max((V_t - R_t)^2, (clip(V_t, V_old - eps_v, V_old + eps_v) - R_t)^2)
    Returns (loss, vclipfrac): the share of tokens where the clipped term wins.
    """
    clipped = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    err_unclipped, err_clipped = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(err_unclipped, err_clipped), mask)
    return loss, masked_mean((err_clipped > err_unclipped).float(), mask)


def entropy_from_logits(logits):
    """Entropy of softmax(logits) per position, logsumexp(z) - sum_a p_a z_a: (B, T, V) -> (B, T)."""
    return torch.logsumexp(logits, -1) - (F.softmax(logits, -1) * logits).sum(-1)


def adaptive_kl_coef(kl_coef, kl, target, horizon, n_steps):
    """
    The adaptive KL controller of Ziegler et al. 2019 (sec. 2.2), proportional control of beta:

        e = clip(KL / target - 1, -0.2, 0.2),    beta <- beta * (1 + e * n_steps / horizon)

    kl: the batch's mean KL per response (nats); n_steps: responses in the batch.
    """
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + error * n_steps / horizon)


def explained_variance(values, returns, mask):
    """1 - Var[R - V] / Var[R] over valid tokens (of every rank under DDP: a collective): 1 = the
    critic predicts the returns, <= 0 = no better than a constant."""
    def var(x):
        return common.global_masked_mean_var(x, mask)[1]
    return (1.0 - var(returns - values) / var(returns).clamp(min=1e-8)).item()


def penalise_missing_eos(scores, has_eos, penalty, mode):
    """A response cut at max_new_tokens is no finished answer, and the RM scores it at a token it
    never saw as an end: 'replace' its score by -penalty (the "N+ implementation details of RLHF"
    use -1), or 'subtract' the penalty (TRL's missing_eos_penalty); '' leaves it. (B,) -> (B,)"""
    if mode == "replace":
        return torch.where(has_eos, scores, torch.full_like(scores, -penalty))
    return torch.where(has_eos, scores, scores - penalty) if mode == "subtract" else scores

# -----------------------------------------------------------------------------
# forwards and the rollout


def policy_forward(policy, seq, mask, P, temperature, critic=None):
    """
    One forward of prompt + response, seq and mask (B, P + N) with the prompts left-padded to P
    columns. Every prompt ends in column P - 1, so the hidden state in column P - 1 + t has seen the
    prompt and the response tokens < t: its logits predict response token t, and it is the state
    s_t the critic values. Returns logprobs (B, N) of the response tokens under logits / T, the
    entropy (B, N) of that distribution, and values (B, N) (None without a critic).
    critic: a ScalarModel (separate critic) or an nn.Linear value head on this policy's trunk.
    """
    h = policy.hidden_states(seq, mask)[:, P - 1:]  # (B, N + 1, C); the last column is unused
    logits = policy.lm_head(h).float() / temperature  # (B, N + 1, V); no logits for the prompt
    logprobs = token_logprobs(logits, seq[:, P - 1:])  # (B, N): the one-position shift is in there
    entropy = entropy_from_logits(logits[:, :-1])
    if isinstance(critic, nn.Linear):
        values = critic(h[:, :-1]).squeeze(-1).float()
    else:
        values = critic.values(seq, mask)[:, P - 1:-1].float() if critic is not None else None
    return logprobs, entropy, values


@torch.no_grad()
def rollout(policy, ref, critic, reward_model, prompt_ids, prompt_mask, prompts, cfg, enc, rt,
            score_fn=None, gold_fn=None, generator=None):
    """
    Steps 1-3 and the critic's values for one batch of left-padded prompts (B, P) (and their
    texts). The forwards run in micro-batches like the update's, so at the first update (policy ==
    reference == old policy) the KL is exactly 0 and the ratio exactly 1. Returns a dict of
    (B, N) tensors aligned with the response tokens (unless noted) and the decoded texts.
    """
    P, mbs = prompt_ids.size(1), cfg.micro_batch_size
    with rt.autocast:
        tokens, resp_mask, sample_logprobs = policy.generate(
            prompt_ids, attention_mask=prompt_mask, max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature, top_k=cfg.top_k or None,
            top_p=cfg.top_p if cfg.top_p < 1.0 else None, eos_token_id=enc.eot_token,
            generator=generator)
    seq = torch.cat([prompt_ids, tokens], 1)  # (B, P + N)
    mask = torch.cat([prompt_mask, resp_mask], 1)  # (B, P + N); 0 on the pads after an EOS
    parts = []
    for i in range(0, seq.size(0), mbs):
        s, m = seq[i:i + mbs], mask[i:i + mbs]
        with rt.autocast:
            logprobs, entropy, values = policy_forward(policy, s, m, P, cfg.temperature, critic)
            # frozen models need no autograd record at all; their inference tensors are only
            # read by functional ops outside (cat, arithmetic), which return normal tensors
            with torch.inference_mode():
                ref_logprobs, _, _ = policy_forward(ref, s, m, P, cfg.temperature)
                scores = reward_model(s, m).float() if reward_model is not None else None
        parts.append((logprobs, entropy, values, ref_logprobs, scores))
    logprobs, entropy, values, ref_logprobs = (torch.cat([p[k] for p in parts]) for k in range(4))
    # one device-to-host copy for the whole batch, not two small ones (and a sync) per row
    responses = [decode_response(enc, [t for t, keep in zip(row, row_mask) if keep])
                 for row, row_mask in zip(tokens.tolist(), resp_mask.tolist())]
    if score_fn is not None:
        scores = torch.tensor([score_fn(p, r) for p, r in zip(prompts, responses)], device=seq.device)
    else:
        scores = torch.cat([p[4] for p in parts])  # the RM's, at the EOS, minus its reward_bias
    has_eos = ((tokens == enc.eot_token) & resp_mask.bool()).any(1)  # (B,)
    scores = penalise_missing_eos(scores, has_eos, cfg.missing_eos_penalty, cfg.missing_eos_mode)
    gold = torch.tensor([gold_fn(p, r) for p, r in zip(prompts, responses)]) if gold_fn else None
    return dict(seq=seq, mask=mask, P=P, resp_mask=resp_mask.float(), logprobs=logprobs,
                sample_logprobs=sample_logprobs, ref_logprobs=ref_logprobs, values=values,
                entropy=entropy, scores=scores, has_eos=has_eos, gold=gold, prompts=prompts,
                responses=responses)


def make_reward_fn(spec):
    """A programmatic reward f(prompt, response) -> float: 'byte_count:c' counts the character c
    in the response; 'toy_gold' is the toy world's gold judge. '' -> None (the reward model)."""
    if spec.startswith("byte_count:"):
        return lambda prompt, response: float(response.count(spec[len("byte_count:"):]))
    if spec == "toy_gold":
        from data.toy.judge import gold_reward
        return gold_reward
    return None

# -----------------------------------------------------------------------------


def main(argv=None):
    cfg = common.parse_config(DEFAULTS, argv, __doc__)
    common.require_positive(cfg, "block_size", "rollout_batch_size", "max_new_tokens",
                            "temperature", "ppo_epochs", "minibatch_size", "micro_batch_size",
                            "lr", "critic_lr", "max_iters", "log_interval", "eval_interval",
                            "eval_prompts", "sample_interval", "ckpt_interval", "target_kl",
                            "kl_horizon", "eps")
    common.require(cfg.reward_fn in ("", "toy_gold") or (cfg.reward_fn.startswith("byte_count:")
                   and len(cfg.reward_fn) == len("byte_count:") + 1),
                   f"reward_fn={cfg.reward_fn!r}: '', 'toy_gold' or 'byte_count:<one character>'")
    common.require(cfg.gold_judge in ("", "toy"), f"gold_judge={cfg.gold_judge!r}: 'toy' or ''")
    common.require(cfg.missing_eos_mode in ("", "replace", "subtract"),
                   f"missing_eos_mode={cfg.missing_eos_mode!r}: 'replace', 'subtract' or ''")
    common.require(cfg.rollout_batch_size % cfg.minibatch_size == 0 and
                   cfg.minibatch_size % cfg.micro_batch_size == 0, "minibatch_size must divide "
                   "rollout_batch_size, and micro_batch_size must divide minibatch_size")
    common.require(min(cfg.kl_coef, cfg.ent_coef, cfg.vf_coef, cfg.warmup_iters, cfg.save_every,
                       cfg.grad_clip, cfg.weight_decay, cfg.num_samples, cfg.top_k) >= 0,
                   "kl_coef, ent_coef, vf_coef, warmup_iters, save_every, grad_clip, "
                   "weight_decay, num_samples and top_k must be >= 0")
    common.require(0 < cfg.cliprange < 1 and cfg.cliprange_value > 0 and 0 < cfg.top_p <= 1,
                   "cliprange must be in (0, 1), cliprange_value > 0, top_p in (0, 1]")
    common.require(0 <= cfg.gamma <= 1 and 0 <= cfg.lam <= 1, "gamma and lam must be in [0, 1]")
    common.require(cfg.max_new_tokens < cfg.block_size, f"max_new_tokens={cfg.max_new_tokens} "
                   f"leaves no room for a prompt in block_size={cfg.block_size}")
    common.require(cfg.stop_iter == -1 or 0 < cfg.stop_iter <= cfg.max_iters,
                   f"stop_iter={cfg.stop_iter} must be -1 or in 1..max_iters={cfg.max_iters}")
    common.require(cfg.dtype in ("auto", "float32", "bfloat16"),
                   f"dtype={cfg.dtype!r}: 'auto', 'float32' or 'bfloat16'")
    files = dict(train_prompts=cfg.train_prompts, val_prompts=cfg.val_prompts,  # '' = not used
                 reward_model=cfg.reward_model if cfg.reward_fn == "" else "",
                 init_from=cfg.init_from if cfg.init_from.endswith(".pt") else "")
    for key, path in files.items():
        common.require(not path or os.path.exists(path), f"{key}={path!r} does not exist (toy: "
                       f"python data/toy/prepare.py, then train_sft.py, train_reward_model.py)")
    rt = common.init_runtime(cfg)
    resume_path = common.prepare_out_dir(cfg.out_dir, cfg.resume, cfg.overwrite, rt.master)
    common.install_stop_handlers()

    # -------------------------------------------------------------------------
    # models. Dropout is off in all four and all stay in eval() mode: dropout would make the
    # rollout's and the update's log-probs differ (ratio != 1 before any step) and the KL noisy.
    policy, tok_name = common.init_policy(cfg.init_from, dropout=0.0)
    ref = copy.deepcopy(policy).requires_grad_(False)
    reward_model = None
    if cfg.reward_fn == "":  # a trained reward model: a policy checkpoint here is a mistake
        rm_ckpt = common.load_checkpoint(cfg.reward_model, expect_kind="scalar",
                                         expect_tokenizer=tok_name)
        reward_model, _ = common.scalar_from_checkpoint(rm_ckpt, path=cfg.reward_model)
        common.check_block_size(reward_model, cfg.block_size, f"reward_model {cfg.reward_model}")
        reward_model.requires_grad_(False)
        del rm_ckpt
    if cfg.shared_critic:  # a ScalarModel-style head on the policy's hidden states
        critic = nn.Linear(policy.config.n_embd, 1)
        nn.init.normal_(critic.weight, std=1.0 / math.sqrt(policy.config.n_embd + 1))
        nn.init.zeros_(critic.bias)
    elif reward_model is not None:  # InstructGPT: the critic starts as the reward model
        critic = copy.deepcopy(reward_model).requires_grad_(True)
    else:  # a programmatic reward: a fresh head on the SFT trunk
        critic, _ = common.init_scalar(cfg.init_from, dropout=0.0)
    for m in (policy, ref, reward_model, critic):
        if m is not None:
            m.to(rt.device).eval()
    if rt.ddp:  # as the DDP wrapper would: every rank starts from rank 0's weights (a fresh value
        # head is drawn from each rank's own seed, and the ranks must train one model)
        for t in [*policy.parameters(), *critic.parameters(), *critic.buffers()]:
            dist.broadcast(t.data, src=0)
    common.check_block_size(policy, cfg.block_size)
    enc = get_tokenizer(tok_name)
    score_fn = make_reward_fn(cfg.reward_fn)
    gold_fn = make_reward_fn("toy_gold") if cfg.gold_judge == "toy" else None
    print0(f"policy: {policy.num_params() / 1e6:.2f}M parameters from {cfg.init_from}, tokenizer "
           f"'{tok_name}'; reward: {cfg.reward_fn or cfg.reward_model}; critic: "
           f"{'a head on the policy' if cfg.shared_critic else 'separate'}; device {rt.device}")

    # -------------------------------------------------------------------------
    # data: prompts only, cut from the left when they leave less than max_new_tokens of room
    train = loader.load_prompts(cfg.train_prompts, enc, cfg.block_size, cfg.max_new_tokens)
    val = loader.load_prompts(cfg.val_prompts, enc, cfg.block_size, cfg.max_new_tokens)[
        :cfg.eval_prompts] if cfg.val_prompts else []

    def collate(examples):  # -> left-padded ids, mask (B, P) on the device, and the prompt texts
        ids, attn = loader.collate_left([e["ids"] for e in examples], enc.eot_token)
        return ids.to(rt.device), attn.to(rt.device), [e["prompt"] for e in examples]

    # -------------------------------------------------------------------------
    # optimizers, and the loop state a resumed run picks up
    betas = (cfg.beta1, cfg.beta2)
    opt_policy = common.configure_optimizer(policy, cfg.lr, cfg.weight_decay, betas, cfg.eps,
                                            rt.device_type)
    opt_critic = common.configure_optimizer(critic, cfg.critic_lr, cfg.weight_decay, betas,
                                            cfg.eps, rt.device_type)
    it, kl_coef, best_val, sanity = 0, cfg.kl_coef, -math.inf, {}
    if resume_path:
        ckpt = common.load_checkpoint(resume_path, expect_kind="policy", expect_stage="ppo")
        policy.load_state_dict(ckpt["model"])
        critic.load_state_dict(ckpt["critic"])
        opt_policy.load_state_dict(ckpt["optimizer"])
        opt_critic.load_state_dict(ckpt["critic_optimizer"])
        it, kl_coef, best_val = ckpt["step"], ckpt["kl_coef"], ckpt["best_val"]
        common.set_rng_state(ckpt["rng"])  # sampling and shuffling continue where they stopped
        print0(f"resumed from {resume_path} at iteration {it}, kl_coef {kl_coef:.4g}")
        del ckpt
    logger = common.MetricsLogger(cfg.out_dir, "log", resume_step=it if resume_path else None,
                                  enabled=rt.master)

    def save(name, with_state):
        if rt.master:
            extra = dict(critic=critic.state_dict(), kl_coef=kl_coef, best_val=best_val)
            if with_state:
                extra["critic_optimizer"] = opt_critic.state_dict()
            ckpt = common.make_checkpoint(policy, "policy", "ppo", tok_name, cfg, it,
                                          opt_policy if with_state else None, **extra)
            common.save_checkpoint(os.path.join(cfg.out_dir, name), ckpt)

    def evaluate():
        # the same held-out prompts and sampling noise every time, from a private generator that
        # leaves the training RNG alone: the curve compares policies, not luck
        nonlocal best_val
        if not val or not rt.master:
            return {}
        rows = []
        for i in range(0, len(val), cfg.rollout_batch_size):
            batch = val[i:i + cfg.rollout_batch_size]  # prompt i's noise is (seed + 1, i)'s
            gen = row_generators(cfg.seed + 1, range(i, i + len(batch)))
            ro = rollout(policy, ref, critic, reward_model, *collate(batch),
                         cfg, enc, rt, score_fn, gold_fn, gen)
            k1, _ = kl_estimates(ro["logprobs"], ro["ref_logprobs"], ro["resp_mask"])
            gold = ro["gold"].to(k1) if gold_fn else torch.zeros_like(k1)
            rows.append(torch.stack([ro["scores"], k1, gold], 1).cpu())
        score, kl, gold = torch.cat(rows).mean(0).tolist()
        metrics = dict(val_score=score, val_kl=kl, val_reward=score - kl_coef * kl)
        metrics.update(dict(val_gold=gold) if gold_fn else {})
        logger.log(it, **metrics)
        if metrics["val_reward"] > best_val:  # best by the objective PPO maximises, not by gold
            best_val = metrics["val_reward"]
            save("ckpt_best.pt", with_state=False)
        return metrics

    # -------------------------------------------------------------------------
    # training loop. `it` counts the iterations done; its prompts are a function of `it` alone.
    if not resume_path:  # every input has loaded: only now may --overwrite=True drop the old run
        common.clear_out_dir(cfg.out_dir, rt.master)
    val_metrics = evaluate() if it == 0 else {}
    policy_params, critic_params = list(policy.parameters()), list(critic.parameters())
    B, mbs, clip = cfg.rollout_batch_size, cfg.micro_batch_size, cfg.grad_clip or math.inf
    metrics = {}
    while it < cfg.max_iters:
        t0 = time.time()
        lr_scale = min(1.0, (it + 1) / (cfg.warmup_iters + 1)) * (
            1.0 - it / cfg.max_iters if cfg.decay_lr else 1.0)
        common.set_lr(opt_policy, cfg.lr * lr_scale)
        common.set_lr(opt_critic, cfg.critic_lr * lr_scale)
        # 1-3. rollout, log-probs, scores (and the values of step 5)
        rows = loader.batch_indices(len(train), B, it, cfg.seed, rt.rank, rt.world_size)
        ro = rollout(policy, ref, critic, reward_model, *collate([train[i] for i in rows]), cfg,
                     enc, rt, score_fn, gold_fn)
        t_rollout = time.time() - t0
        P, resp_mask = ro["P"], ro["resp_mask"]  # resp_mask (B, N)
        old_logprobs, old_values = ro["logprobs"], ro["values"]  # (B, N) each
        # 4. per-token rewards
        kl_k1, kl_k3 = kl_estimates(old_logprobs, ro["ref_logprobs"], resp_mask)  # (B,) each
        rewards = kl_shaped_rewards(ro["scores"], old_logprobs, ro["ref_logprobs"], resp_mask,
                                    kl_coef)
        if cfg.whiten_rewards:
            rewards = whiten(rewards, resp_mask, shift_mean=False)
        # 5. advantages and returns; advantages whitened over the valid tokens of the batch (of
        # every rank's batch under DDP)
        advantages, returns = compute_gae(rewards, old_values, resp_mask, cfg.gamma, cfg.lam)
        advantages = whiten(advantages, resp_mask)
        if it == 0 and not resume_path:  # policy == reference: this must be exactly 0
            sanity["init_kl"] = (old_logprobs - ro["ref_logprobs"]).abs().max().item()

        # 6. the update: ppo_epochs passes over shuffled minibatches of micro-batches
        stats = []
        for epoch in range(cfg.ppo_epochs):
            perm = torch.randperm(B).to(rt.device)
            for start in range(0, B, cfg.minibatch_size):
                for mb in perm[start:start + cfg.minibatch_size].split(mbs):
                    m = resp_mask[mb]
                    with rt.autocast:
                        logprobs, entropy, values = policy_forward(
                            policy, ro["seq"][mb], ro["mask"][mb], P, cfg.temperature, critic)
                    pg_loss, clipfrac, approx_kl, ratio = ppo_policy_loss(
                        logprobs, old_logprobs[mb], advantages[mb], m, cfg.cliprange)
                    vf_loss, vclipfrac = ppo_value_loss(values, old_values[mb], returns[mb], m,
                                                        cfg.cliprange_value)
                    entropy = masked_mean(entropy, m)
                    loss = pg_loss + cfg.vf_coef * vf_loss - cfg.ent_coef * entropy
                    (loss * len(mb) / cfg.minibatch_size).backward()
                    if "init_kl" in sanity and "init_ratio_dev" not in sanity:  # no step yet
                        sanity["init_ratio_dev"] = ((ratio - 1).abs() * m).max().item()
                    stats.append(torch.stack([pg_loss.detach(), vf_loss.detach(), clipfrac,
                                              vclipfrac, approx_kl, masked_mean(ratio, m),
                                              masked_mean((ratio - masked_mean(ratio, m)) ** 2, m)]))
                if rt.ddp:  # data parallel without the wrapper: average the gradients by hand
                    for p in policy_params + critic_params:
                        if p.grad is not None:
                            dist.all_reduce(p.grad)
                            p.grad /= rt.world_size
                gn_policy = torch.nn.utils.clip_grad_norm_(policy_params, clip).item()
                gn_critic = torch.nn.utils.clip_grad_norm_(critic_params, clip).item()
                # named as the log names it: iteration it + 1 is the one being done
                common.check_finite(it + 1, loss=loss.item(), grad_norm=gn_policy + gn_critic)
                opt_policy.step()
                opt_critic.step()
                opt_policy.zero_grad(set_to_none=True)
                opt_critic.zero_grad(set_to_none=True)

        # 7. the KL coefficient of the next iteration
        kl_mean, beta = common.all_reduce_mean(kl_k1.mean().item()), kl_coef
        if cfg.adaptive_kl:
            kl_coef = adaptive_kl_coef(kl_coef, kl_mean, cfg.target_kl, cfg.kl_horizon,
                                       B * rt.world_size)
        it += 1
        dt = time.time() - t0

        # -------------------------------------------------------------------------
        # what a person sees
        pg_loss, vf_loss, clipfrac, vclipfrac, approx_kl, ratio_mean, ratio_var = \
            torch.stack(stats).mean(0).tolist()
        n_tokens = resp_mask.sum().item()
        metrics = dict(
            score=ro["scores"].mean().item(),
            reward=(ro["scores"] - beta * kl_k1).mean().item(),  # sum_t r_t: the objective
            kl=kl_k1.mean().item(), kl_k3=kl_k3.mean().item(), beta=beta,
            entropy=common.global_masked_mean_var(ro["entropy"], resp_mask)[0].item(),
            approx_kl=approx_kl,
            clipfrac=clipfrac, vclipfrac=vclipfrac, pg_loss=pg_loss, vf_loss=vf_loss,
            explained_var=explained_variance(old_values, returns, resp_mask),
            ratio_mean=ratio_mean, ratio_var=ratio_var, resp_len=n_tokens / B,
            eos_rate=ro["has_eos"].float().mean().item(),
            # a temperature or masking mismatch between sampling and training shows up here
            logprob_gap=common.all_reduce_max(
                ((ro["sample_logprobs"] - old_logprobs).abs() * resp_mask).max().item()))
        metrics.update(dict(gold=ro["gold"].mean().item()) if gold_fn else {})
        # every rank has B responses and as many minibatches, so the mean over ranks of the other
        # means is the mean over all responses; these four are the same on every rank already
        same = ("beta", "entropy", "explained_var", "logprob_gap")
        metrics = {k: v if k in same else common.all_reduce_mean(v) for k, v in metrics.items()}
        if it % cfg.log_interval == 0 or it == 1 or it == cfg.max_iters:
            logger.log(it, **metrics, tok_per_s=round(n_tokens * rt.world_size / dt),
                       rollout_frac=round(t_rollout / dt, 2), lr=cfg.lr * lr_scale)
        if rt.master and cfg.num_samples and (it % cfg.sample_interval == 0 or it == 1):
            for i in range(min(cfg.num_samples, B)):
                gold = f", gold {ro['gold'][i].item():+.2f}" if gold_fn else ""
                print(f"  prompt:   {ro['prompts'][i][-200:]!r}\n  response: {ro['responses'][i]!r}"
                      f"{'' if ro['has_eos'][i] else ' [no EOS]'}\n"
                      f"  score {ro['scores'][i].item():+.3f}{gold}, kl {kl_k1[i].item():.3f}")
        if it % cfg.eval_interval == 0 or it == cfg.max_iters:
            val_metrics = evaluate()
        if cfg.save_every and it % cfg.save_every == 0:
            save(f"ckpt_iter{it}.pt", with_state=False)
        stopping = it == cfg.stop_iter or common.stop_requested()
        if it % cfg.ckpt_interval == 0 or it == cfg.max_iters or stopping:
            save("ckpt_last.pt", with_state=True)
        if stopping:
            print0(f"stopping after iteration {it}; continue with --resume=True")
            break

    if sanity:
        print0(f"sanity at the first update: max |log pi - log pi_ref| = {sanity['init_kl']:.3g}, "
               f"max |ratio - 1| = {sanity['init_ratio_dev']:.3g} (both must be 0)")
    if rt.ddp:
        dist.barrier()  # no rank tears gloo down while another still uses it
        dist.destroy_process_group()
    return dict(metrics, **val_metrics, **sanity, kl_coef=kl_coef, iters=it, out_dir=cfg.out_dir)


if __name__ == "__main__":
    main()
