"""
The tensor math every loss is built from: the log-prob of a token (logprobs_of, with its own
backward), the log-probs of a batch's tokens, and masked means. Pure functions of tensors (only
global_masked_mean_var talks to the other DDP ranks).
"""

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from model import logprobs_of  # noqa: F401  (the log-prob of a token lives beside the LM head)
from runtime import all_reduce_sum

# -----------------------------------------------------------------------------
# tensor helpers shared by the losses


def token_logprobs(logits, idx):
    """
    log p(idx[:, t+1] | idx[:, :t+1]) for every t: (B, T, V), (B, T) -> (B, T-1), float32.
    Logits at t predict the token at t+1: the one-position shift of a language model. Fine for
    small vocabularies; the training paths of GPT-2 use trained_logprobs, which runs the LM head
    only where a log-prob is read.
    Test: tests/test_ops.py::test_token_logprobs_shift_by_one
    """
    return logprobs_of(logits[:, :-1], idx[:, 1:])


def predicting_positions(loss_mask):
    """(B, T) bool: the positions whose logits predict a trained token, t where
    loss_mask[:, t + 1] is 1 (the last position predicts nothing)."""
    return F.pad(loss_mask[:, 1:] != 0, (0, 1), value=False)


def trained_logprobs(model, idx, loss_mask, position_ids=None, autocast=None):
    """
    log p(idx[:, t+1] | idx[:, :t+1]) (B, T-1), float32, at the positions where loss_mask[:, t+1]
    is 1, and 0 elsewhere. The model's LM head and log-softmax run only at those positions
    (GPT.forward's logits_at): on real data most positions are prompt or padding, whose logits
    nothing reads. Equal to token_logprobs(model(idx), idx) * loss_mask[:, 1:] (a test checks).
    Rows are right-padded, so no attention mask is needed (GPT.forward).
    Test: tests/test_sft.py::test_masked_positions_get_exactly_zero_gradient
    """
    at = predicting_positions(loss_mask)  # (B, T)
    targets = idx[:, 1:][at[:, :-1]]  # (n,): the token each selected position predicts
    with autocast or nullcontext():
        logp = model(idx, position_ids=position_ids, logits_at=at, targets=targets)  # (n,)
    out = torch.zeros(idx.size(0), idx.size(1) - 1, device=idx.device)
    return out.masked_scatter(at[:, :-1], logp)


def sequence_logprobs(logprobs, loss_mask, average=False):
    """
    log pi(y | x) of each row: token log-probs summed over the positions where loss_mask is 1
    (the response and its EOS), or their mean with average=True (SimPO, ORPO).
    logprobs (B, T-1) of the tokens idx[:, 1:] (token_logprobs or trained_logprobs),
    loss_mask (B, T) over idx -> (B,). Position 0 is never predicted (never a response).
    Test: tests/test_dpo.py::test_sequence_logprobs_masks_prompt_and_padding
    """
    mask = loss_mask[:, 1:].to(logprobs.dtype)
    total = (logprobs * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1) if average else total


def masked_mean(x, mask, dim=None):
    """Mean of x where mask is 1 (over all elements, or along dim).
    Test: tests/test_ops.py::test_masked_mean"""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def global_masked_mean_var(x, mask, unbiased=False):
    """
    Mean and variance of x over the entries where mask is 1 of EVERY rank's x under DDP (sums and
    counts all-reduced, so each rank gets the same two numbers), of this process's x otherwise.
    Two passes, mean then squared deviations, with masked_mean's operations: in one process the
    result is bitwise masked_mean's. unbiased divides by n - 1 instead of n. A collective: every
    rank must call it. x, mask (any shape, the same) -> (mean, var), 0-d tensors.
    Test: tests/test_distributed.py::test_collective_helpers_see_the_whole_global_batch
    """
    mask = mask.to(x.dtype)
    n = all_reduce_sum(mask.sum())
    mean = all_reduce_sum((x * mask).sum()) / n.clamp(min=1)
    var = all_reduce_sum(((x - mean) ** 2 * mask).sum()) / n.clamp(min=1)
    if unbiased:
        var = var * n / (n - 1).clamp(min=1)
    return mean, var


def entropy_from_logits(logits):
    """Entropy of softmax(logits) per position, logsumexp(z) - sum_a p_a z_a: (B, T, V) -> (B, T).
    Test: tests/test_ppo.py::test_entropy_from_logits"""
    return torch.logsumexp(logits, -1) - (F.softmax(logits, -1) * logits).sum(-1)


