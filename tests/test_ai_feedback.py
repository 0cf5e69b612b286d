"""
The math of AI feedback (ai_feedback.py) against hand computations: SPIN's loss is DPO's with the
demonstration chosen and pi_t as the reference; a judge's soft label, its debiasing over both
orders, its position bias and its agreement with the truth.
"""

import math

import pytest
import torch

import ai_feedback
from train_dpo import dpo_loss


@pytest.mark.unit
def test_spin_loss_by_hand_and_as_dpo():
    demo, sample = torch.tensor([-3.0, -6.0]), torch.tensor([-5.0, -2.0])          # p_theta
    prev_demo, prev_sample = torch.tensor([-4.0, -6.0]), torch.tensor([-4.5, -4.0])  # p_t
    got = ai_feedback.spin_loss(demo, sample, prev_demo, prev_sample, lam=0.1)
    # row 0: t = 0.1 ((-3 + 4) - (-5 + 4.5)) = 0.15, l(t) = log(1 + e^-0.15) = 0.620957
    # row 1: t = 0.1 ((-6 + 6) - (-2 + 4)) = -0.2,  l(t) = log(1 + e^0.2)  = 0.798139
    assert got.tolist() == pytest.approx([0.620957, 0.798139], abs=1e-6)
    # DPO's sigmoid loss with beta = lam, chosen = the demonstration, reference = p_t
    dpo, _, _ = dpo_loss(demo, sample, prev_demo, prev_sample, beta=0.1)
    assert torch.allclose(got, dpo)
    # at the start of an iteration p_theta = p_t: every pair costs log 2
    assert ai_feedback.spin_loss(demo, sample, demo, sample).tolist() == pytest.approx(
        [math.log(2)] * 2)


@pytest.mark.unit
def test_judge_preference_is_a_two_way_softmax():
    # log p("1") = -1.2, log p("2") = -2.0: e^-1.2 / (e^-1.2 + e^-2.0) = 1 / (1 + e^-0.8) = 0.68997
    p = ai_feedback.judge_preference(torch.tensor([-1.2, -3.0]), torch.tensor([-2.0, -3.0]))
    assert p.tolist() == pytest.approx([0.6899745, 0.5])
    # the rest of the vocabulary does not count: the same ratio, far less mass, the same label
    assert ai_feedback.judge_preference(torch.tensor(-11.2), torch.tensor(-12.0)).item() == \
        pytest.approx(0.6899745)


@pytest.mark.unit
def test_debiasing_averages_both_orders():
    ab = torch.tensor([0.9, 0.8, 0.6])  # P(slot 1 better), a in slot 1
    ba = torch.tensor([0.9, 0.1, 0.7])  # P(slot 1 better), b in slot 1
    # (0.9 + 0.1) / 2, (0.8 + 0.9) / 2, (0.6 + 0.3) / 2
    assert ai_feedback.debiased_preference(ab, ba).tolist() == pytest.approx([0.5, 0.85, 0.45])


@pytest.mark.unit
def test_position_stats_by_hand():
    ab = torch.tensor([0.9, 0.8, 0.3, 0.5])
    ba = torch.tensor([0.9, 0.1, 0.7, 0.2])
    s = ai_feedback.position_stats(ab, ba)
    # slot 1 wins 0.9, 0.8 | 0.9, 0.7: 4 of 8 decisions (0.5 is no preference for slot 1)
    assert s["slot1_share"] == pytest.approx(4 / 8)
    # pair 0 flips with the order, pair 1 (a, a) and pair 2 (b, b) agree, pair 3 has a tie
    assert s["agreement"] == pytest.approx(2 / 4)


@pytest.mark.unit
def test_agreement_counts_ties_half():
    p = torch.tensor([0.9, 0.2, 0.5, 0.6])
    truth = torch.tensor([True, True, False, False])
    assert ai_feedback.agreement_with(p, truth) == pytest.approx((1 + 0 + 0.5 + 0) / 4)
