"""
The math of learning from AI feedback: pure functions, each pinned to a hand computation in
tests/test_ai_feedback.py. Every "AI" here is a model trained in this repository; the toy
world's gold judge only measures.

SPIN (Chen et al. 2024) needs no function of its own at training time: its loss is DPO's
logistic loss with the demonstration as the chosen answer, a sample of pi_t as the rejected one
and pi_t as the reference, which train_dpo.py computes. `spin_loss` writes Eq. 4.7 out, so the
test can show the two are one.

RLAIF (Lee et al. 2023) reads a judge's preference from its next-token log-probs of "1" and "2"
after a prompt that shows both answers; a judge that has learned from labels is a generative
reward model, not zero-shot feedback (docs/AI_FEEDBACK.md).

Constitutional AI (Bai et al. 2022) asks the same judge once per principle of a constitution and
averages: `principle_ensemble`.
"""

import torch
import torch.nn.functional as F


def spin_loss(policy_demo_logps, policy_sample_logps, prev_demo_logps, prev_sample_logps, lam=0.1):
    """
    SPIN's loss (Chen et al. 2024, "Self-Play Fine-Tuning Converts Weak Language Models to
    Strong Language Models", Eq. 4.7) with the logistic loss l(t) = log(1 + exp(-t)):

        l( lam log p_theta(y|x) / p_t(y|x)  -  lam log p_theta(y'|x) / p_t(y'|x) )

    y the demonstration, y' ~ p_t(.|x) the previous iterate's own answer; summed log-probs, (B,)
    each -> (B,). This is DPO's sigmoid loss (train_dpo.dpo_loss) with beta = lam, chosen = y,
    rejected = y' and the reference = p_t: the pipeline trains SPIN with train_dpo.py.
    Test: tests/test_ai_feedback.py::test_spin_loss_by_hand_and_as_dpo
    """
    t = lam * ((policy_demo_logps - prev_demo_logps) - (policy_sample_logps - prev_sample_logps))
    return F.softplus(-t)  # log(1 + exp(-t)), finite for any t


def judge_preference(logp_one, logp_two):
    """
    The judge's soft label: P(answer 1 is better) = softmax over its log-probs of the tokens
    "1" and "2" (Lee et al. 2023, "RLAIF", sec. 2.1.1) = sigma(logp_one - logp_two). Tensors of
    any shape, the same shape out. The rest of the vocabulary does not count: the two
    probabilities are renormalised.
    Test: tests/test_ai_feedback.py::test_judge_preference_is_a_two_way_softmax
    """
    return torch.sigmoid(logp_one - logp_two)


def debiased_preference(p_first_ab, p_first_ba):
    """
    P(a is better than b), averaged over both orders (Lee et al. 2023, sec. 2.1.2): p_first_ab
    is the judge's P(slot 1 is better) with a in slot 1, p_first_ba with b in slot 1, so
    1 - p_first_ba is P(a is better) read from the second order. A judge that always prefers slot
    1 gives 0.5: its position bias cancels. (N,) each -> (N,).
    Test: tests/test_ai_feedback.py::test_debiasing_averages_both_orders
    """
    return 0.5 * (p_first_ab + (1.0 - p_first_ba))


def principle_ensemble(p_first_ab, p_first_ba):
    """
    P(a is better than b) by a whole constitution: the judge's P(slot 1 is better) read under
    each of P principles, in both orders, (P, N) each, debiased per principle
    (debiased_preference) and averaged over the principles -> (N,). Bai et al. 2022
    ("Constitutional AI: Harmlessness from AI Feedback", sec. 4.1) use the feedback model's
    normalised probabilities as soft labels and find ensembling over principles makes the
    preference model more robust; a principle the judge reads as irrelevant (0.5) dilutes the
    others rather than flipping them.
    Test: tests/test_cai.py::test_principle_ensemble_by_hand
    """
    return debiased_preference(p_first_ab, p_first_ba).mean(0)


def position_stats(p_first_ab, p_first_ba):
    """
    How a pairwise judge depends on the order of the answers, from its P(slot 1 is better) in
    both orders, (N,) each:
      slot1_share  the share of its 2N decisions (p > 0.5) that prefer slot 1; an unbiased judge
                   of random pairs is near 0.5, Lee et al. report strong bias in small judges;
      agreement    the share of the N pairs whose two orders pick the same answer
                   (p_first_ab > 0.5 and p_first_ba < 0.5, or the reverse); ties (p = 0.5) agree
                   with nothing.
    Returns a dict of floats.
    Test: tests/test_ai_feedback.py::test_position_stats_by_hand
    """
    ab, ba = p_first_ab > 0.5, p_first_ba > 0.5
    decided_ab, decided_ba = p_first_ab != 0.5, p_first_ba != 0.5
    same = ((ab & ~ba) | (~ab & ba)) & decided_ab & decided_ba
    return dict(slot1_share=torch.cat([ab, ba]).float().mean().item(),
                agreement=same.float().mean().item())


def agreement_with(p_better, truth):
    """
    The share of pairs where a soft label p_better = P(a better than b), (N,), picks the answer
    the truth (N,) bool, True = a is better, picks; p = 0.5 counts half, as win rates do.
    Test: tests/test_ai_feedback.py::test_agreement_counts_ties_half
    """
    right = torch.where(truth, p_better > 0.5, p_better < 0.5).float()
    return (right + 0.5 * (p_better == 0.5).float()).mean().item()
