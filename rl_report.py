"""
What PPO and GRPO show, log and measure the same way, out of the scripts' loops: the metrics of a
rollout, a few answers and their per-token numbers (tokens.jsonl, plot.py's heatmaps), the
held-out rollouts that pick ckpt_best.pt, and the held-out demonstrations' NLL (the forgetting
PPO-ptx counters).
"""

import math
import time

import torch

import ops
import optim
import runtime
from data import loader
from model import position_ids_from_mask, row_generators
from rollout import rollout
from runtime import print0
from tokenizer import token_texts

# -----------------------------------------------------------------------------
# a rollout's numbers, and a few of its answers


def rollout_metrics(rollouts, beta, kl_k1, kl_k3):
    """What a person watches, per iteration, as floats averaged over every rank's responses:
    the score, the objective (score - beta * KL), both KL estimates, entropy, length, EOS rate,
    and the largest gap between sampling and training log-probs (a temperature or masking
    mismatch shows up there first)."""
    n = runtime.all_reduce_sum(float(rollouts.seq.size(0)))
    mean = lambda x: runtime.all_reduce_sum(x.float().sum().item()) / n  # noqa: E731
    gap = ((rollouts.sample_logprobs - rollouts.logprobs).abs() * rollouts.resp_mask).max().item()
    scores = rollouts.scores
    return dict(score=mean(scores), reward=mean(scores - beta * kl_k1), kl=mean(kl_k1),
                kl_k3=mean(kl_k3), score_std=math.sqrt(max(mean(scores ** 2) -
                                                           mean(scores) ** 2, 0.0)),
                entropy=ops.global_masked_mean_var(rollouts.entropy, rollouts.resp_mask)[0].item(),
                resp_len=mean(rollouts.resp_mask.sum(1)), eos_rate=mean(rollouts.has_eos),
                logprob_gap=runtime.all_reduce_max(gap))


def log_token_samples(run, step, rollouts, enc, n, **per_token):
    """The per-token numbers ((B, N) tensors, e.g. kl, value, advantage, reward) of the first n
    answers, with each token's text, to out_dir/tokens.jsonl: plot.py's credit-assignment
    heatmaps (rank 0)."""
    for i in range(min(n, rollouts.seq.size(0))):
        length = int(rollouts.resp_mask[i].sum())
        run.log_tokens(step, prompt=rollouts.prompts[i], tokens=token_texts(
            enc, rollouts.seq[i, rollouts.P:rollouts.P + length].tolist()), **{
            k: [round(x, 5) for x in v[i, :length].tolist()] for k, v in per_token.items()})


def print_samples(rollouts, n, gold=None, kl=None):
    """A few prompts, responses and their scores (rank 0)."""
    for i in range(min(n, len(rollouts.prompts))):
        extra = (f", gold {gold[i]:+.2f}" if gold is not None else "") + (
            f", kl {kl[i].item():.3f}" if kl is not None else "")
        print0(f"  prompt:   {rollouts.prompts[i][-200:]!r}\n"
               f"  response: {rollouts.responses[i]!r}{'' if rollouts.has_eos[i] else ' [no EOS]'}"
               f"\n  score {rollouts.scores[i].item():+.3f}{extra}")


@torch.no_grad()
def evaluate_policy(policy, ref, reward, gold_fn, val, enc, cfg, proc, beta):
    """Held-out rollouts (rank 0): prompt i draws the noise of (seed + 1, i) every time, and
    the training RNG is left alone, so the curve compares policies, not luck. Returns the mean
    score, KL (k1), score - beta * KL and, with a gold judge, gold."""
    from train_ppo import kl_estimates  # the PPO script's estimator (it imports this module)
    rows = []
    for i in range(0, len(val), cfg.rollout_batch_size):
        part = val[i:i + cfg.rollout_batch_size]
        ids, attn = loader.collate_left([e["ids"] for e in part], enc.eot_token)
        rollouts = rollout(policy, ref, None, reward, (ids.to(proc.device), attn.to(proc.device),
                           [e["prompt"] for e in part]), enc, cfg, proc,
                           row_generators(cfg.seed + 1, range(i, i + len(part))))
        k1 = kl_estimates(rollouts.logprobs, rollouts.ref_logprobs, rollouts.resp_mask)[0] \
            if ref else 0 * rollouts.scores
        gold = torch.tensor([gold_fn(p, r) for p, r in zip(rollouts.prompts,
                                                           rollouts.responses)]) \
            if gold_fn else torch.zeros(len(part))
        rows.append(torch.stack([rollouts.scores.cpu(), k1.cpu(), gold.to(k1.dtype)], 1))
    score, kl, gold = torch.cat(rows).mean(0).tolist()
    return dict(val_score=score, val_kl=kl, val_reward=score - beta * kl,
                **(dict(val_gold=gold) if gold_fn else {}))


# -----------------------------------------------------------------------------
# held-out measurements


@torch.no_grad()
def demo_nll(policy, batches, proc):
    """The mean NLL per answer token of held-out demonstrations under the policy (the SFT loss
    on sft_val): how much of what SFT taught the RL run has forgotten. No collective: rank 0
    alone calls it. Restores the model's mode."""
    was_training, total, count = policy.training, 0.0, 0.0
    policy.eval()
    for idx, attn, loss_mask in batches:
        idx, attn, loss_mask = (t.to(proc.device) for t in (idx, attn, loss_mask))
        logp = ops.trained_logprobs(policy, idx, loss_mask, position_ids_from_mask(attn),
                                    proc.autocast)  # 0 where not trained
        total -= logp.sum().item()
        count += loss_mask[:, 1:].sum().item()
    policy.train(was_training)
    return total / max(count, 1.0)


def evaluate_and_keep_best(run, iteration, state, snapshot, models, val, enc, cfg, beta,
                           demo_val=()):
    """Rank 0's held-out rollouts (evaluate_policy of models = (policy, ref, reward, gold_fn)),
    and the policy's NLL of held-out demonstrations (demo_val batches: val_demo_nll, the
    forgetting PPO-ptx counters), logged at `iteration`, and ckpt_best.pt when the rollouts'
    score - beta * KL (the objective the run maximises, not gold) beats state.best_val (a
    decision every rank takes: under FSDP the snapshot is a collective). Returns the metrics ({}
    without them, and on other ranks)."""
    if not val:
        return {}
    metrics = {}
    with runtime.gathered(models[0]):  # FSDP: rank 0 generates alone, with the whole policy
        if run.proc.master:
            metrics = evaluate_policy(*models, val, enc, cfg, run.proc, beta)
            if demo_val:
                metrics["val_demo_nll"] = demo_nll(models[0], demo_val, run.proc)
            # never save a broken model
            optim.check_finite(iteration, val_reward=metrics["val_reward"])
            run.log(iteration, **metrics)
    val_reward = runtime.all_reduce_max(metrics.get("val_reward", -math.inf))  # rank 0's
    if val_reward > state.best_val:
        state.best_val = val_reward
        run.save("ckpt_best.pt", snapshot(False))
    return metrics


def show_iteration(run, iteration, rollouts, metrics, gold_fn, kl, enc, cfg, per_token, *,
                   lr, t0, t_rollout):
    """What a person sees after an iteration: the gold judge's mean over every rank's rollouts
    (into metrics, a collective), the log line (every log_interval: the metrics, lr, response
    tokens per second and the rollout's share of the time since t0), and a few answers with
    their per-token numbers (kl: (B,), per_token: (B, N) each; rank 0, every sample_interval)."""
    dt = time.time() - t0
    n_tokens = runtime.all_reduce_sum(rollouts.resp_mask.sum().item())
    gold = [gold_fn(p, r) for p, r in zip(rollouts.prompts, rollouts.responses)] if gold_fn else None
    if gold:
        metrics["gold"] = runtime.all_reduce_mean(sum(gold) / len(gold))
    if iteration % cfg.log_interval == 0 or iteration == 1 or iteration == cfg.max_iters:
        run.log(iteration, **metrics, tok_per_s=round(n_tokens / dt), lr=lr,
                rollout_frac=round(t_rollout / dt, 2))
    if run.proc.master and cfg.num_samples and (iteration % cfg.sample_interval == 0
                                                or iteration == 1):
        print_samples(rollouts, cfg.num_samples, gold, kl)
        log_token_samples(run, iteration, rollouts, enc, cfg.num_samples, **per_token)
