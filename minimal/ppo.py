"""
PPO for RLHF in one file: the reading path of train_ppo.py, CleanRL style. The same algorithm,
the same numbered steps, the same pure functions (imported, never copied), on the offline toy
world, in one process: no resume, no locks, no DDP, no evaluation runs, no checkpoints.
tests/test_minimal.py pins its first iteration to train_ppo.py's, number for number.

    python data/toy/prepare.py && python train_sft.py && python data/toy/label.py \
        && python train_reward_model.py              # the toy world, the SFT policy, the RM
    python minimal/ppo.py                            # 30 iterations, a few minutes on a CPU
    python minimal/ppo.py --beta=0.05 --lr=3e-4      # any key of ARGS below

Four models: the policy (the SFT checkpoint), a frozen copy of it (the reference), the frozen
reward model, and the critic (a copy of the reward model, read at every token). One iteration:
  1. rollout: one sampled response per prompt (KV cache, temperature T), cut after its first EOS;
  2. log-probs of the sampled tokens under the policy and the reference, from logits / T;
  3. score each response with the reward model at its EOS;
  4. per-token rewards r_t = -beta * (log pi - log pi_ref), plus the score on the last token;
  5. the critic's values, GAE advantages (whitened) and returns;
  6. num_iterations passes of clipped policy and value updates over shuffled minibatches;
  7. beta: fixed here (train_ppo.py also has Ziegler et al.'s adaptive controller).
The toy world's gold judge scores the same answers: when the reward model's score rises while
gold falls, PPO is hacking the reward model.
"""

import copy
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
from checkpoint import init_policy, load_reward_model  # noqa: E402
from config import parse_config  # noqa: E402
from data import loader  # noqa: E402
from data.toy.judge import gold_reward  # noqa: E402
from optim import configure_optimizer  # noqa: E402
from rollout import penalise_missing_eos, policy_forward  # noqa: E402
from tokenizer import decode_response, get_tokenizer  # noqa: E402
from train_ppo import (compute_gae, kl_estimates, kl_shaped_rewards, ppo_policy_loss,  # noqa: E402
                       ppo_value_loss, whiten)

# the hyperparameters: train_ppo.py's defaults for the toy world
ARGS = dict(
    init_from="out/sft_toy/ckpt_best.pt",    # the SFT policy
    reward_model="out/rm_toy/ckpt_best.pt",  # train_reward_model.py's best checkpoint
    train_prompts="data/toy/out/prompts_train.jsonl",
    block_size=128,
    seed=1337,
    max_iters=30,              # iterations (rollout + update)
    rollout_batch_size=64,     # prompts (= responses) per iteration
    max_new_tokens=64,
    temperature=1.0,           # sampling AND every log-prob use logits / T
    missing_eos_penalty=1.0,   # an answer cut without an EOS scores -penalty
    beta=0.2,                  # KL coefficient
    gamma=1.0,
    lam=0.95,
    num_iterations=4,          # passes over each rollout batch
    minibatch_size=16,         # responses per optimizer step
    epsilon=0.2,               # clip range of the ratio
    cliprange_value=0.2,
    vf_coef=0.1,
    lr=5e-5,                   # policy and critic
    eps=1e-5,                  # Adam's epsilon
    grad_clip=1.0,
)


def main(argv=None, **overrides):
    """Train; returns the metrics of every iteration and the final weights (for the test)."""
    a = parse_config(dict(ARGS, **overrides), argv, __doc__)  # --key=value, --help; a.lr, ...
    torch.manual_seed(a.seed)

    # -------------------------------------------------------------------------
    # models: policy, reference, reward model, critic; data: prompts only. Dropout is off and
    # every model stays in eval() mode: the rollout's and the update's log-probs must agree.
    policy, tok_name = init_policy(a.init_from, dropout=0.0)
    ref = copy.deepcopy(policy).requires_grad_(False)
    reward_model = load_reward_model(a.reward_model, tok_name, policy.config.vocab_size)
    critic = copy.deepcopy(reward_model).requires_grad_(True)  # values start at the scores
    for m in (policy, ref, reward_model, critic):
        m.eval()
    enc = get_tokenizer(tok_name)
    prompts = loader.load_prompts(a.train_prompts, enc, a.block_size, a.max_new_tokens)
    optimizers = [configure_optimizer(m, a.lr, 0.0, (0.9, 0.999), a.eps, "cpu")
                  for m in (policy, critic)]
    history = []

    for iteration in range(a.max_iters):
        t0 = time.time()
        # ---------------------------------------------------------------------
        # ALGO LOGIC: steps 1-3, the rollout (no gradients)
        # 1. one sampled response per prompt: left-padded prompts (B, P), answers (B, N)
        rows = loader.batch_indices(len(prompts), a.rollout_batch_size, iteration, a.seed)
        idx, attn = loader.collate_left([prompts[i]["ids"] for i in rows], enc.eot_token)
        tokens, resp_mask, _ = policy.generate(idx, attn, max_new_tokens=a.max_new_tokens,
                                               temperature=a.temperature,
                                               eos_token_id=enc.eot_token)
        seq, mask = torch.cat([idx, tokens], 1), torch.cat([attn, resp_mask], 1)  # (B, P + N)
        P, resp_mask = idx.size(1), resp_mask.float()
        # 2. log-probs of the answers under the policy and the reference, the critic's values
        with torch.no_grad():
            logprobs, _, values = policy_forward(policy, seq, mask, P, a.temperature, critic)
            ref_logprobs = policy_forward(ref, seq, mask, P, a.temperature)[0]  # (B, N) each
        # 3. the reward model's score at each answer's EOS, -penalty without one
        has_eos = ((tokens == enc.eot_token) & resp_mask.bool()).any(1)  # (B,)
        scores = reward_model.score(seq, mask)  # (B,)
        scores = penalise_missing_eos(scores, has_eos, a.missing_eos_penalty, "replace")

        # ---------------------------------------------------------------------
        # ALGO LOGIC: steps 4-5, rewards and advantages
        # 4. per-token rewards: -beta * KL on every token, the score on the last one
        kl, _ = kl_estimates(logprobs, ref_logprobs, resp_mask)  # (B,) summed k1
        rewards = kl_shaped_rewards(scores, logprobs, ref_logprobs, resp_mask, a.beta)
        # 5. GAE advantages (whitened) and returns, the critic's targets
        advantages, returns = compute_gae(rewards, values, resp_mask, a.gamma, a.lam)
        advantages = whiten(advantages, resp_mask)

        # ---------------------------------------------------------------------
        # ALGO LOGIC: step 6, the clipped policy and value updates
        stats = dict(pg_loss=[], vf_loss=[], clipfrac=[])
        for _ in range(a.num_iterations):
            for mb in torch.randperm(len(rows)).split(a.minibatch_size):
                m = resp_mask[mb]
                n_tokens = m.sum()  # the minibatch's valid tokens: each weighs the same
                new_logprobs, _, new_values = policy_forward(
                    policy, seq[mb], mask[mb], P, a.temperature, critic)
                pg_loss, clipfrac, _, _ = ppo_policy_loss(
                    new_logprobs, logprobs[mb], advantages[mb], m, a.epsilon, a.epsilon,
                    "token_mean", n_tokens)
                vf_loss, _ = ppo_value_loss(new_values, values[mb], returns[mb], m,
                                            a.cliprange_value, n_tokens)
                loss = pg_loss + a.vf_coef * vf_loss
                loss.backward()
                for model, optimizer in zip((policy, critic), optimizers):
                    torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                for k, v in (("pg_loss", pg_loss), ("vf_loss", vf_loss), ("clipfrac", clipfrac)):
                    stats[k].append(v.item())

        # ---------------------------------------------------------------------
        # 7. what a person watches: the proxy score, its gold counterpart, the KL
        responses = [decode_response(enc, [t for t, keep in zip(row, row_mask) if keep])
                     for row, row_mask in zip(tokens.tolist(), resp_mask.tolist())]
        gold = [gold_reward(prompts[i]["prompt"], r) for i, r in zip(rows, responses)]
        metrics = dict(score=scores.mean().item(), gold=sum(gold) / len(gold),
                       kl=kl.mean().item(), reward=(scores - a.beta * kl).mean().item(),
                       **{k: sum(v) / len(v) for k, v in stats.items()})
        history.append(metrics)
        print(f"iter {iteration + 1:3d} | " + " | ".join(f"{k} {v:.4g}" for k, v in metrics.items())
              + f" | {time.time() - t0:.1f}s", flush=True)
        if iteration == 0 or (iteration + 1) % 10 == 0:
            print(f"  prompt:   {prompts[rows[0]]['prompt']!r}\n  response: {responses[0]!r}"
                  f"\n  score {scores[0].item():+.3f}, gold {gold[0]:+.2f}", flush=True)
    return dict(history=history, policy=policy.state_dict(), critic=critic.state_dict())


if __name__ == "__main__":
    main()
