"""
ops.py, the tensor math every loss is built from: the log-prob of a token (values and gradients
against log_softmax, finite for huge logits), the one-position shift, and masked means.
"""

import pytest
import torch
import torch.nn.functional as F

import ops


@pytest.mark.unit
def test_token_logprobs_shift_by_one():
    torch.manual_seed(0)
    logits, idx = torch.randn(2, 4, 5), torch.randint(0, 5, (2, 4))
    lp = ops.token_logprobs(logits, idx)
    assert lp.shape == (2, 3)
    expected = F.log_softmax(logits[1, 2], -1)[idx[1, 3]]
    assert torch.allclose(lp[1, 2], expected)


@pytest.mark.unit
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_logprobs_values_and_gradients_match_log_softmax(dtype):
    # the reference: log_softmax over the vocabulary, then the target's entry
    torch.manual_seed(0)
    logits = (3 * torch.randn(3, 6, 11)).to(dtype).requires_grad_()
    idx, w = torch.randint(0, 11, (3, 6)), torch.randn(3, 5)
    lp = ops.token_logprobs(logits, idx)
    (lp * w).sum().backward()
    grad, logits.grad = logits.grad, None
    ref = F.log_softmax(logits[:, :-1].float(), -1).gather(2, idx[:, 1:, None]).squeeze(-1)
    (ref * w).sum().backward()
    assert lp.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(lp, ref, atol=2e-6, rtol=0)
    torch.testing.assert_close(grad, logits.grad, atol=1e-6 if dtype == torch.float32 else 0,
                               rtol=0)
    assert (grad[:, -1] == 0).all()  # the last position predicts nothing
    if dtype == torch.float32:  # d log p / d logits = onehot - softmax: rows sum to zero
        assert grad[:, :-1].sum(-1).abs().max() < 1e-5


@pytest.mark.unit
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_logprobs_gradient_is_finite_with_huge_logits(dtype):
    # the last position predicts nothing: a logit that overflows exp() there (200, or a raw 9
    # through a temperature of 0.1) once made its zero gradient inf * 0 = NaN everywhere
    torch.manual_seed(0)
    raw = (3 * torch.randn(2, 5, 7)).to(dtype)
    raw[:, -1, 3] = 200.0
    raw[0, 1, 2] = 9.0
    for temperature in (1.0, 0.1):
        logits = raw.clone().requires_grad_()
        idx, w = torch.randint(0, 7, (2, 5)), torch.randn(2, 4)
        lp = ops.token_logprobs(logits.float() / temperature, idx)
        (lp * w).sum().backward()
        grad, logits.grad = logits.grad, None
        ref = F.log_softmax(logits[:, :-1].float() / temperature, -1).gather(
            2, idx[:, 1:, None]).squeeze(-1)
        (ref * w).sum().backward()
        assert torch.isfinite(grad).all() and (grad[:, -1] == 0).all()
        torch.testing.assert_close(lp, ref, atol=2e-5, rtol=0)
        torch.testing.assert_close(grad, logits.grad, atol=1e-5, rtol=0)


@pytest.mark.unit
def test_masked_mean():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert ops.masked_mean(x, m).item() == 2.0
    assert ops.masked_mean(x, m, dim=1).tolist() == [1.5, 3.0]
