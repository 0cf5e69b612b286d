"""
Helpful and harmless: two ways to weigh a harmlessness signal against a helpfulness one in PPO
(train_ppo.py; the gate also in train_grpo.py), as pure functions, then the plumbing they need.

  Llama 2 (Touvron et al. 2023, sec. 3.2.2): a helpfulness and a safety reward model; a gate
      takes the safety model's score on unsafe prompts and on answers it finds unsafe, the
      helpful one's elsewhere; the chosen score is whitened over the batch.
          python train_ppo.py --reward_model=out/rm_helpful_toy/ckpt_best.pt \\
              --safety_model=out/rm_safety_toy/ckpt_best.pt --reward_gate=llama2
  Safe RLHF (Dai et al. 2023): a reward model and a cost model (higher = more harmful); PPO
      maximises the reward subject to E[cost] <= d through a Lagrange multiplier lambda >= 0,
      learned in log space, and a second critic for the cost.
          python train_ppo.py --reward_model=out/rm_helpful_toy/ckpt_best.pt \\
              --cost_model=out/cost_toy/ckpt_best.pt --cost_budget=-0.5

The cost model is train_reward_model.py --reverse=True on the harmless rankings (label.py
--kinds=separate): the annotators' order reversed, so the worse answer scores higher. It never
sees a benign prompt, so its score there means nothing: with cost_scope='unsafe' (the default)
an answer's cost is the model's score on prompts tagged harmful (the prompt's family, Llama 2's
IS_SAFETY) and 0 elsewhere. Its zero is the SFT policy's mean cost on harmful requests
(reward_bias over label.py's harmless samples): d = 0 asks "no more harmful than the SFT policy
on average", d < 0 asks for less, in the cost model's units per answer of the batch.
Deliberately left out: Dai et al.'s classification term on the cost's sign (Eq. 6: the toy
annotators rank, they label no answer safe or unsafe, so the budget is relative to the SFT
policy rather than to an absolute line between safe and unsafe), their cap on lambda, and
Llama 2's separate reward models per round.
"""

import copy
import math
from types import SimpleNamespace

import torch

import checkpoint
import config
import optim
import runtime

# -----------------------------------------------------------------------------
# the math: pure functions


def safety_gated_rewards(helpful, safety, unsafe, threshold=0.15):
    """
    Llama 2's combination of a helpfulness and a safety reward model (Touvron et al. 2023,
    sec. 3.2.2, the equation for R_c), with R_s = sigmoid(safety), R_h = sigmoid(helpful):

        R_c = R_s   if IS_SAFETY(p) or R_s < threshold,     else R_h
        R   = WHITEN(LOGIT(R_c))

    IS_SAFETY(p) is the prompt's own tag (unsafe), not a guess from the answer; the threshold
    catches answers the safety model finds unsafe on any prompt. LOGIT undoes the sigmoid, so
    LOGIT(R_c) is the chosen model's score itself: returned here; the caller whitens it over
    the batch (train_ppo.whiten over every rank's answers: mean 0, std 1). Our scores are
    centred on the SFT policy's answers (reward_bias), so R_s < 0.15 reads "safety score more
    than logit(0.85) = 1.73 below the SFT policy's mean". helpful, safety (B,) scores; unsafe (B,)
    bool -> (scores (B,), gate (B,) bool: True where the safety model's score was taken).
    Test: tests/test_safety.py::test_llama2_gate_by_hand
    """
    gate = unsafe.bool() | (torch.sigmoid(safety.float()) < threshold)
    return torch.where(gate, safety.float(), helpful.float()), gate


def lagrange_step(log_lambda, mean_cost, budget, lr):
    """
    Safe RLHF's multiplier update (Dai et al. 2023, Eq. 10-12 and Alg. 1). The policy solves
    max_theta min_{lambda >= 0} J_R(theta) - lambda * J_C(theta), J_C = E[C] - d, and lambda takes
    a step of gradient ascent on J_C, in log space (lambda = exp(log lambda) stays >= 0):

        log lambda <- log lambda + lr * (E[C] - d)

    so lambda grows while the policy's mean cost exceeds the budget d and shrinks towards 0 once
    it is below. The paper writes the step with the chain rule's factor lambda_k (ln lambda_{k+1}
    = ln lambda_k + alpha * lambda_k * J_C), which runs away once lambda is large; the authors'
    code steps Adam, whose steps do not grow with lambda. Here a step is lr * J_C whatever
    lambda is (as the design notes, item 33, write it). floats -> float.
    Test: tests/test_safety.py::test_lagrange_step_by_hand
    """
    return log_lambda + lr * (mean_cost - budget)


def safe_rlhf_advantages(reward_advantages, cost_advantages, lam):
    """
    Safe RLHF's PPO advantage (Dai et al. 2023, Eq. 11; the authors' actor loss): the reward's
    advantage minus lambda times the cost's, over 1 + lambda so that its scale stays bounded
    however large lambda grows:

        A = (A_r - lambda * A_c) / (1 + lambda)

    A_r, A_c (B, T) from GAE on the reward's and the cost's per-token rewards, each with its own
    critic -> (B, T). The KL penalty is paid on both sides (-beta KL in the reward, +beta KL in
    the cost), so its weight in A is beta at every lambda. train_ppo.py then whitens A as PPO's.
    Test: tests/test_safety.py::test_safe_rlhf_advantages_by_hand
    """
    return (reward_advantages - lam * cost_advantages) / (1.0 + lam)

# -----------------------------------------------------------------------------
# the plumbing of PPO (and GRPO's gate)


def validate(cfg):
    """The keys of the gate and of Safe RLHF (those the script has), before anything loads."""
    rules = {"reward_gate": (lambda v: v in ("", "llama2"), "'' or 'llama2'"),
             "gate_threshold": (lambda v: 0 < v < 1, "in (0, 1): a probability"),
             "lambda_init": (lambda v: v > 0, "> 0 (lambda is learned in log space)"),
             "lambda_lr": (lambda v: v >= 0, ">= 0")}
    rules["cost_scope"] = (lambda v: v in ("unsafe", "all"), "'unsafe' or 'all'")
    config.validate(cfg, {k: r for k, r in rules.items() if hasattr(cfg, k)})
    gate, cost = getattr(cfg, "reward_gate", ""), getattr(cfg, "cost_model", "")
    config.require(not gate or (cfg.safety_model and not cfg.reward_fn),
                   "reward_gate='llama2' needs safety_model (and reward_model, not reward_fn)")
    config.require(not cost or not cfg.reward_fn, "cost_model needs a reward_model, not reward_fn")
    config.require(not cost or not getattr(cfg, "fsdp", False), "cost_model: Safe RLHF's cost "
                   "critic is not sharded; run it without fsdp (DDP under torchrun)")
    config.require_files(cfg, *(["safety_model"] * bool(gate)), *(["cost_model"] * bool(cost)),
                         hint="toy: pipeline.py --methods=ppo_gate,ppo_safe trains them")


def load(cfg, reward, reward_model, prompts, enc, policy, run):
    """What a run needs of the two methods, after its own models: the step-3 scorer (Llama 2's
    gate around reward_model with reward_gate='llama2', else `reward` as it was), the dict the
    gate fills with its numbers, and Safe RLHF's cost (load_cost, and a resumed run's cost
    critic; None without cost_model). prompts: every prompt the run asks (loader.load_prompts's,
    with their family); run: run.Run (its device and the checkpoint it resumes)."""
    vocab_size, device = policy.config.vocab_size, run.proc.device
    reward, gate_stats = gated_reward(cfg, reward_model, prompts, enc.name, vocab_size,
                                      device) if cfg.reward_gate else (reward, {})
    cost = load_cost(cfg, enc.name, vocab_size, run.proc, prompts) \
        if getattr(cfg, "cost_model", "") else None
    resume_cost(run, cost)
    return reward, gate_stats, cost


def loop_state(cfg):
    """The loop state Safe RLHF adds to PPO's (run.restore brings it back on resume): log lambda."""
    return {"log_lambda": math.log(cfg.lambda_init)} if getattr(cfg, "cost_model", "") else {}


def gated_reward(cfg, helpful, prompts, tok_name, vocab_size, device):
    """Llama 2's step-3 scorer reward(prompts, responses, seq, mask) -> (B,): the safety model
    (cfg.safety_model) beside the helpful one, gated by safety_gated_rewards, unsafe = the prompt
    file's family is 'harmful' (prompts: every prompt the run asks, loader.load_prompts's), and
    a dict the scorer fills with the last batch's gate_share (answers the safety model scored),
    unsafe_share and both models' mean scores."""
    safety = checkpoint.load_reward_model(cfg.safety_model, tok_name, vocab_size, cfg.reward_agg,
                                          cfg.uwo_lambda).to(device).eval()
    checkpoint.check_block_size(safety, cfg.block_size, f"safety_model {cfg.safety_model}")
    unsafe_texts = {p["prompt"] for p in prompts if p.get("family") == "harmful"}
    stats = {}

    def reward(texts, responses, seq, mask):
        h = helpful.score(seq, mask, cfg.micro_batch_size)  # (B,)
        s = safety.score(seq, mask, cfg.micro_batch_size)  # (B,)
        unsafe = torch.tensor([t in unsafe_texts for t in texts], device=seq.device)
        scores, gate = safety_gated_rewards(h, s, unsafe, cfg.gate_threshold)
        stats.update(gate_share=gate.float().mean().item(), unsafe_share=unsafe.float().mean().item(),
                     helpful_score=h.float().mean().item(), safety_score=s.float().mean().item())
        return scores
    print(f"llama2 gate: safety model {cfg.safety_model}, threshold {cfg.gate_threshold}, "
          f"{len(unsafe_texts)} prompts tagged unsafe (family 'harmful')")
    return reward, stats


def load_cost(cfg, tok_name, vocab_size, proc, prompts):
    """Safe RLHF's frozen cost model, its critic (a trainable copy of it, or of an ensemble's
    first member: its values start at the costs it pays, as PPO's critic starts as the reward
    model), the critic's optimizer (critic_lr) and, with cost_scope='unsafe', the texts of the
    prompts tagged harmful (prompts: loader.load_prompts's, every prompt the run asks); None
    without cost_model."""
    if not cfg.cost_model:
        return None
    model = checkpoint.load_reward_model(cfg.cost_model, tok_name, vocab_size).to(proc.device)
    checkpoint.check_block_size(model, cfg.block_size, f"cost_model {cfg.cost_model}")
    critic = copy.deepcopy(getattr(model, "members", [model])[0]).requires_grad_(True).eval()
    runtime.broadcast_parameters(critic)
    unsafe = {p["prompt"] for p in prompts if p.get("family") == "harmful"} \
        if cfg.cost_scope == "unsafe" else None
    return SimpleNamespace(model=model.eval(), critic=critic, unsafe=unsafe,
                           optimizer=optim.make_optimizer(critic, cfg, proc, lr=cfg.critic_lr))


@torch.no_grad()
def cost_rollout(cost, rollouts, cfg, proc):
    """Step 3 of Safe RLHF: the cost of each answer, costs (B,), at its EOS as the reward
    model's score (with cost_scope='unsafe': 0 for the answers to prompts not tagged harmful),
    and the cost critic's values (B, N) of the states before each response token, in
    micro-batches. Returns SimpleNamespace(costs, values); lagrangian_advantages adds the rest."""
    seq, mask, P, mbs = rollouts.seq, rollouts.mask, rollouts.P, cfg.micro_batch_size
    with proc.autocast:
        costs = cost.model.score(seq, mask, mbs).float()
    if cost.unsafe is not None:
        costs = costs * torch.tensor([p in cost.unsafe for p in rollouts.prompts], device=costs.device)
    with proc.autocast:
        values = torch.cat([cost.critic.values(seq[i:i + mbs], mask[i:i + mbs])[:, P - 1:-1]
                            for i in range(0, seq.size(0), mbs)]).float()
    return SimpleNamespace(costs=costs, values=values)


def lagrangian_advantages(advantages, costed, rollouts, state, cfg):
    """Step 5 of Safe RLHF: the cost's GAE on its own per-token rewards (the cost at the EOS,
    +beta * KL on every token), lambda's step on every rank's mean cost (lagrange_step, into
    state.log_lambda), then safe_rlhf_advantages. advantages (B, N): the reward's, from PPO's
    GAE -> (B, N). Keeps the cost's returns and mean in costed for the cost critic's update."""
    from train_ppo import compute_gae, kl_shaped_rewards  # (it imports us)
    mask = rollouts.resp_mask
    cost_rewards = kl_shaped_rewards(costed.costs, rollouts.logprobs, rollouts.ref_logprobs, mask,
                                     -state.beta)
    cost_advantages, costed.returns = compute_gae(cost_rewards, costed.values, mask, cfg.gamma,
                                                  cfg.lam)
    costed.mean = runtime.all_reduce_mean(costed.costs.mean().item())
    state.log_lambda = lagrange_step(state.log_lambda, costed.mean, cfg.cost_budget, cfg.lambda_lr)
    return safe_rlhf_advantages(advantages, cost_advantages, math.exp(state.log_lambda))


def after_update(cfg, cost, costed, rollouts, state, gate_stats, gold_fn, proc, update, lr_scale):
    """After PPO's update (step 6): the cost critic's update at critic_lr * lr_scale, and the
    numbers of both methods for the log (cost, lambda, the cost critic's, harm_metrics'); {} for
    a run with neither."""
    out = harm_metrics(cfg, gate_stats, rollouts, gold_fn)
    if cost is not None:
        optim.set_lr(cost.optimizer, cfg.critic_lr * lr_scale)
        out.update(cost_critic_update(cost, rollouts, costed.values, costed.returns, cfg, proc,
                                      update), cost=costed.mean, log_lambda=state.log_lambda,
                   **{"lambda": math.exp(state.log_lambda)})
    return out


def cost_critic_update(cost, rollouts, old_values, returns, cfg, proc, update):
    """The cost critic's half of step 6: num_iterations passes of PPO's clipped value loss
    (times vf_coef, as the reward critic's) on the cost's returns, in shuffled minibatches of
    minibatch_size answers accumulated over micro-batches. Returns its mean loss and clip
    fraction, and how much of the returns' variance its values (before the update) explain."""
    from train_ppo import explained_variance, loss_normalizer, ppo_value_loss  # (it imports us)
    critic, opt, P, mask = cost.critic, cost.optimizer, rollouts.P, rollouts.resp_mask
    losses, clips = [], []
    for _ in range(cfg.num_iterations):
        for rows in torch.randperm(mask.size(0)).to(proc.device).split(cfg.minibatch_size):
            n_tokens, mb_loss = loss_normalizer(mask[rows], "token_mean"), 0.0
            for mb in rows.split(cfg.micro_batch_size):
                with proc.autocast:
                    values = critic.values(rollouts.seq[mb], rollouts.mask[mb])[:, P - 1:-1].float()
                loss, vclip = ppo_value_loss(values, old_values[mb], returns[mb], mask[mb],
                                             cfg.cliprange_value, n_tokens)
                (cfg.vf_coef * loss).backward()
                mb_loss += loss.item()
                clips.append(vclip.item())
            runtime.all_reduce_grads(critic)
            optim.optimizer_step(critic, opt, cfg.grad_clip, mb_loss, update=update)
            losses.append(runtime.all_reduce_sum(mb_loss))
    return dict(cost_vf_loss=sum(losses) / len(losses),
                cost_vclipfrac=runtime.all_reduce_mean(sum(clips) / len(clips)),
                cost_explained_var=explained_variance(old_values, returns, mask))


def cost_state(cost, state, with_optimizer):
    """What a checkpoint keeps of Safe RLHF: log lambda (exactly: resume restores it as beta),
    the cost critic and, for resuming, its optimizer; {} without a cost model."""
    if cost is None:
        return {}
    out = dict(log_lambda=state.log_lambda, cost_critic=cost.critic.state_dict())
    if with_optimizer:
        out["cost_critic_optimizer"] = cost.optimizer.state_dict()
    return out


def resume_cost(run, cost):
    """A resumed run's cost critic and its optimizer (log lambda comes back with run.restore)."""
    if run.resume is None or cost is None:
        return
    checkpoint.require_keys(run.resume, run.resume_path, "cost_critic", "cost_critic_optimizer")
    cost.critic.load_state_dict(run.resume["cost_critic"])
    cost.optimizer.load_state_dict(run.resume["cost_critic_optimizer"])


def harm_metrics(cfg, gate_stats, rollouts, gold_fn):
    """The gate's numbers of the last batch (gated_reward's dict) averaged over the ranks, and
    with the toy judge gold_cost: its cost of the rollouts (data/toy/judge.gold_cost, 1 = complied
    with a harmful request), the truth beside the cost model; {} for a run with neither method."""
    if not (cfg.reward_gate or getattr(cfg, "cost_model", "")):
        return {}
    out = {k: runtime.all_reduce_mean(v) for k, v in gate_stats.items()}
    if gold_fn is not None:
        from data.toy.judge import gold_cost
        costs = [gold_cost(p, r) for p, r in zip(rollouts.prompts, rollouts.responses)]
        out["gold_cost"] = runtime.all_reduce_mean(sum(costs) / max(len(costs), 1))
    return out
