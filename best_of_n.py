"""
Best-of-N, the baseline with no training: N answers of a base policy per prompt, the reward model
keeps its favourite (the gold judge never chooses). Its KL to the base, as Beirami et al.'s bound
and exactly (or by a plug-in estimate). eval.py runs it (bonN policies, the sweep over N).
"""

import math

import torch

# -----------------------------------------------------------------------------
# the choice and its KL: pure functions


def best_of_n_kl_bound(n):
    """KL(best-of-n || base) <= log n - (n - 1) / n (Beirami et al. 2024, "Theoretical guarantees
    on the best-of-n alignment policy", Thm. 1): an upper bound, met with equality only when no
    two samples can tie (a continuous distribution of rewards); when the base repeats answers it
    is loose (16 equally likely answers at n = 64: exact 2.689, bound 3.175). best_of_n_kl gives
    the exact value when the answers' probabilities are known.
    Test: tests/test_eval.py::test_best_of_n_picks_the_reward_models_choice_and_its_kl_bound"""
    return math.log(n) - (n - 1) / n


def best_of_n_kl(probs, rewards, n):
    """
    The exact KL(best-of-n || base) of a discrete base distribution: probs (K,) of its distinct
    answers, rewards (K,) the scores the choice is made by. With F(r) = P(reward <= r), the
    best of n samples lands on reward level L with probability F(L)^n - F(L^-)^n (Beirami et
    al. 2024, Lemma 1), shared among the level's answers in proportion to their base
    probability (ties go to the earlier sample, which is any of them alike). Returns nats.
    Test: tests/test_eval.py::test_best_of_n_kl_exact_against_the_bound_and_by_sampling
    """
    p = torch.as_tensor(probs, dtype=torch.float64)
    r = torch.as_tensor(rewards, dtype=torch.float64)
    p = p / p.sum()
    kl = 0.0
    for level in torch.unique(r):
        at = r == level
        upper, lower = p[r <= level].sum().item(), p[r < level].sum().item()
        mass = upper ** n - lower ** n  # P(the best of n is on this level)
        if mass > 0:
            share = p[at] / p[at].sum()
            q = mass * share  # best-of-n's probability of each answer on the level
            kl += (q * (q / p[at]).log()).sum().item()
    return kl


def best_of_n_kl_plugin(answers, rewards, n):
    """best_of_n_kl of one prompt's empirical base distribution: answers (the N_max sampled
    texts, repeats kept) and their rewards. A plug-in estimate (answers never sampled have
    probability 0), below the truth when the base has answers the samples missed."""
    counts, reward_of = {}, {}
    for a, r in zip(answers, rewards):
        counts[a] = counts.get(a, 0) + 1
        reward_of[a] = r
    return best_of_n_kl(list(counts.values()), [reward_of[a] for a in counts], n)


def best_of_n(scores, n):
    """Index in 0..n-1 of the highest of the first n scores of each row: (P, N_max) -> (P,).
    Ties go to the earlier sample."""
    return torch.as_tensor(scores, dtype=torch.float64)[:, :n].argmax(1)


def pick_best_of_n(s, n, n_max, k):
    """From samples of n_max answers per (prompt, sample slot) (prompt-major, k slots per
    prompt), keep, per slot, the one the reward model scores highest among the first n."""
    rm = torch.tensor(s["rm"]).view(-1, n_max)  # (prompts * k, n_max)
    keep = [row * n_max + j for row, j in enumerate(best_of_n(rm, n).tolist())]
    out = {key: [s[key][i] for i in keep] if s.get(key) else None
           for key in ("tokens", "rm", "rm_members", "length", "eos")}
    out["kl"] = [best_of_n_kl_bound(n)] * len(keep)
    return out
