"""
How a batch of preference pairs is laid out for one forward, chosen once at setup: the collate
function that builds the batch and the forward that reads each pair's two numbers from it, for a
scalar model (scores: the reward model) and for a policy (log-probs: DPO's family).

    rows           chosen rows, then rejected rows: 2B right-padded rows (every script's default)
    rankings       each distinct answer of a K-wise ranking once, every pair of the ranking read
                   from those rows: K rows instead of K(K-1) (the reward model's group_rankings)
    shared_prompt  a row per pair (or per ranking) holding the prompt ONCE and its answers after
                   it, each answer seeing only the prompt and itself (shared_prompt_mask): the
                   same numbers as separate rows, for P + C + R positions instead of 2 (P + max)

    collate, forward = layouts.score_layout(share_prompt, rankings)
    rc, rr = forward(model, collate(pairs, pad_id), autocast)     # (P,), (P,)

The shared-prompt machinery (the mask, the collate, reading scores and log-probs from it) lives
here and nowhere else; model.py only takes the 4-D mask it is given.
"""

from collections import namedtuple
from contextlib import nullcontext

import torch

import ops
from data import loader
from model import position_ids_from_mask

# collate(pairs, pad_id) -> batch dict (CPU); forward(model, batch on the device, autocast) -> the
# pairs' numbers
Layout = namedtuple("Layout", "collate forward")


def score_layout(share_prompt=False, rankings=False):
    """(collate, forward) for a scalar model: forward -> (chosen, rejected) raw scores (P,) each.
    rankings: the pairs of whole rankings, each answer scored once (with share_prompt a row per
    ranking); else each pair on its own."""
    if share_prompt:
        return Layout(lambda pairs, pad_id: collate_shared_prompt(pairs, pad_id, rankings),
                      shared_prompt_scores)
    return Layout(collate_rankings, ranking_scores) if rankings else Layout(collate_pairs, row_scores)


def logprob_layout(share_prompt=False):
    """(collate, forward) for a policy: forward -> the summed and the length-averaged response
    log-probs of the chosen and the rejected answers, 4 tensors (P,)."""
    if share_prompt:
        return Layout(collate_shared_prompt, shared_prompt_pair_logprobs)
    return Layout(collate_pairs, pair_logprobs)

# -----------------------------------------------------------------------------
# rows: chosen rows, then rejected rows


def collate_pairs(pairs, pad_id):
    """
    One batch for a single forward over chosen and rejected answers: a dict with idx,
    attention_mask, loss_mask (2B, T), rows 0..B-1 the chosen answers and B..2B-1 the rejected
    ones in the same order, margin (B,) float, and both answers' lengths (answer_lengths).
    """
    rows = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    idx, attn, loss = loader.collate(rows, pad_id)  # (2B, T) each
    margin = torch.tensor([p["margin"] for p in pairs], dtype=torch.float)
    return dict(idx=idx, attention_mask=attn, loss_mask=loss, margin=margin,
                **answer_lengths(pairs))


def answer_lengths(pairs):
    """chosen_len, rejected_len (B,) long: each answer's tokens, its EOS included (R-DPO's
    |y_w| and |y_l|)."""
    return {f"{side}_len": torch.tensor([sum(p[side][1]) for p in pairs], dtype=torch.long)
            for side in ("chosen", "rejected")}


def row_scores(model, batch, autocast=None):
    """Raw scores (P,), (P,) of a collate_pairs batch (reward_bias is 0 while training). The rows
    are right-padded: ScalarModel runs its trunk without the mask and reads each row at its last
    real token."""
    with autocast or nullcontext():
        r = model(batch["idx"], attention_mask=batch["attention_mask"]).float()  # (2P,)
    B = r.size(0) // 2
    return r[:B], r[B:]


def row_logprobs(model, batch, autocast=None):
    """
    Summed response log-probs (N,) float32 of every row of a right-padded batch (idx,
    attention_mask, loss_mask (N, T)), and each row's response token count (N,). The LM head runs
    only at the positions that predict a response token (ops.trained_logprobs); the rows need no
    attention mask (GPT.forward), but their positions still come from it.
    """
    idx, loss_mask = batch["idx"], batch["loss_mask"]
    positions = position_ids_from_mask(batch["attention_mask"])
    logp = ops.trained_logprobs(model, idx, loss_mask, positions, autocast)  # (N, T-1)
    return ops.sequence_logprobs(logp, loss_mask), loss_mask[:, 1:].sum(-1)  # (N,), (N,)


def pair_logprobs(model, batch, autocast=None):
    """Summed and length-averaged response log-probs of the chosen and the rejected answers of
    a collate_pairs batch, from one forward over its 2B rows: 4 tensors (B,)."""
    total, count = row_logprobs(model, batch, autocast)  # (2B,) each
    avg = total / count.clamp(min=1)
    B = total.size(0) // 2
    return total[:B], total[B:], avg[:B], avg[B:]

# -----------------------------------------------------------------------------
# rankings: each distinct answer once


def collate_rankings(pairs, pad_id):
    """
    The pairs of whole rankings as one batch: each distinct answer of a ranking (its loader
    'record') once, right-padded into idx, attention_mask (N, T), and each pair's two rows in it,
    chosen_row and rejected_row (P,) long; margin (P,) float.
    """
    rows, row_of, sides = [], {}, ([], [])
    for p in pairs:
        for side, out in zip(("chosen", "rejected"), sides):
            key = (p["record"], tuple(p[side][0]))  # an answer of one ranking is scored once
            if key not in row_of:
                row_of[key] = len(rows)
                rows.append(p[side])
            out.append(row_of[key])
    idx, attn, _ = loader.collate(rows, pad_id)
    return dict(idx=idx, attention_mask=attn, chosen_row=torch.tensor(sides[0]),
                rejected_row=torch.tensor(sides[1]),
                margin=torch.tensor([p["margin"] for p in pairs], dtype=torch.float),
                **answer_lengths(pairs))


def ranking_scores(model, batch, autocast=None):
    """Raw scores (P,), (P,) of each pair's chosen and rejected answer of a collate_rankings
    batch: one forward over its distinct answers, every pair read from them."""
    with autocast or nullcontext():
        r = model(batch["idx"], attention_mask=batch["attention_mask"]).float()  # (rows,)
    return r[batch["chosen_row"]], r[batch["rejected_row"]]

# -----------------------------------------------------------------------------
# shared_prompt: each prompt once, its answers after it


def shared_prompt_scores(model, batch, autocast=None):
    """Raw scores (P,), (P,) of a collate_shared_prompt batch: one forward under
    shared_prompt_mask, read at each answer's last token (its EOS): the scores of separate
    rows.
    Test: tests/test_reward_model.py::test_shared_prompt_scores_equal_separate_rows"""
    with autocast or nullcontext():
        r = model(batch["idx"], attention_mask=shared_prompt_mask(batch["segments"]),
                  position_ids=batch["position_ids"],
                  score_at=(batch["last_rows"], batch["last_pos"])).float()  # (answers,)
    return r[batch["chosen"]], r[batch["rejected"]]


def shared_prompt_logprobs(model, batch, autocast=None):
    """
    Summed response log-probs (A,) float32 of every answer of a collate_shared_prompt
    batch, and each answer's token count (A,), from one forward whose rows hold a prompt once and
    all its answers after it: shared_prompt_mask lets each answer see only the prompt and
    itself, so each log-prob is the one of the answer in a row of its own (collate_pairs,
    row_logprobs; a test checks), for fewer positions. The LM head runs
    only at the positions that predict an answer token; the prompt's last position predicts the
    first token of every answer.
    """
    mask = shared_prompt_mask(batch["segments"])  # (R, 1, T, T)
    with autocast or nullcontext():
        logp = model(batch["idx"], attention_mask=mask, position_ids=batch["position_ids"],
                     logits_at=(batch["src_rows"], batch["src_pos"]),
                     targets=batch["targets"])  # (n,) float32
    A = batch["last_rows"].numel()
    total = logp.new_zeros(A).index_add(0, batch["owner"], logp)  # (A,)
    return total, torch.bincount(batch["owner"], minlength=A)


def shared_prompt_pair_logprobs(model, batch, autocast=None):
    """pair_logprobs of a collate_shared_prompt batch: the same 4 tensors (P,), each prompt
    computed once.
    Test: tests/test_dpo.py::test_shared_prompt_logprobs_and_gradients_equal_separate_rows"""
    total, count = shared_prompt_logprobs(model, batch, autocast)  # (A,) each
    avg = total / count.clamp(min=1)
    c, r = batch["chosen"], batch["rejected"]
    return total[c], total[r], avg[c], avg[r]


def shared_prompt_mask(segments):
    """
    Boolean SDPA mask of rows that hold one prompt followed by several answers to it
    (collate_shared_prompt), so that the prompt is computed once for all of them.
    segments (B, T) long: 0 for the prompt, k >= 1 for the k-th answer, -1 for padding. A query
    sees the keys before it (causal) that are the prompt or of its own answer: each answer sees
    exactly what it would see in a row of its own (prompt + answer), and never another answer.
    A padding query sees the other padding and the prompt (finite garbage nothing reads); every
    query sees itself. Returns (B, 1, T, T).
    Test: tests/test_model.py::test_shared_prompt_mask_by_hand
    """
    T = segments.size(1)
    pos = torch.arange(T, device=segments.device)
    causal = pos[None, :] <= pos[:, None]  # (Tq, Tk)
    q, k = segments[:, :, None], segments[:, None, :]  # (B, T, 1), (B, 1, T)
    allowed = causal & ((k == 0) | (k == q))  # (B, Tq, Tk)
    return allowed[:, None]


def collate_shared_prompt(pairs, pad_id, by_record=False):
    """
    Pairs with each prompt computed once (shared_prompt_mask): a row per pair holding its
    prompt, then the chosen answer, then the rejected one, right-padded. With by_record, a row per
    ranking (the pairs' loader 'record' and prompt) holding each distinct answer once, as
    collate_rankings scores them. Under shared_prompt_mask every answer sees
    the prompt and itself, at the positions it has in a row of its own (collate_pairs): the same
    numbers, for P + C + R positions instead of 2 (P + max(C, R)).
    Returns a dict (R rows, A answers, n answer tokens, P pairs):
        idx, segments, position_ids (R, T) long: segments 0 prompt, k the row's k-th answer,
            -1 padding; an answer's positions continue from the prompt's end
        src_rows, src_pos, targets, owner (n,) long: for each answer token, the position whose
            logits predict it (the prompt's last token for an answer's first one), the token
            and its answer (0..A-1)
        last_rows, last_pos (A,) long: each answer's last token (its EOS), where a reward model
            reads the score
        chosen, rejected (P,) long: each pair's two answers (0..A-1); margin (P,) float
    Test: tests/test_data.py::test_collate_shared_prompt_by_hand
    """
    rows, row_of, pair_answers = [], {}, []  # rows: [prompt ids, [answer ids, ...]]
    for i, p in enumerate(pairs):
        ids, mask = p["chosen"]
        n_prompt = list(mask).index(1)  # both answers follow the same (possibly cut) prompt
        if n_prompt < 1:
            raise ValueError("collate_shared_prompt: a pair without prompt tokens")
        prompt = list(ids[:n_prompt])
        key = (p["record"], tuple(prompt)) if by_record else i
        if key not in row_of:
            row_of[key] = len(rows)
            rows.append((prompt, []))
        r = row_of[key]
        found = []
        for side in ("chosen", "rejected"):
            answer = list(p[side][0][n_prompt:])
            if answer not in rows[r][1]:
                rows[r][1].append(answer)
            found.append((r, rows[r][1].index(answer)))
        pair_answers.append(found)
    T = max(len(prompt) + sum(map(len, answers)) for prompt, answers in rows)
    idx = torch.full((len(rows), T), pad_id, dtype=torch.long)
    segments = torch.full((len(rows), T), -1, dtype=torch.long)
    positions = torch.zeros(len(rows), T, dtype=torch.long)
    src_rows, src_pos, targets, owner, last_rows, last_pos, first = [], [], [], [], [], [], {}
    for r, (prompt, answers) in enumerate(rows):
        P = len(prompt)
        idx[r, :P], segments[r, :P], positions[r, :P] = torch.tensor(prompt), 0, torch.arange(P)
        start = P
        for k, answer in enumerate(answers):
            L, a = len(answer), len(last_rows)
            first[(r, k)] = a
            cols = slice(start, start + L)
            idx[r, cols], segments[r, cols] = torch.tensor(answer), k + 1
            positions[r, cols] = torch.arange(P, P + L)
            src_pos += [P - 1] + list(range(start, start + L - 1))  # who predicts each token
            src_rows += [r] * L
            targets += answer
            owner += [a] * L
            last_rows.append(r)
            last_pos.append(start + L - 1)
            start += L
    long = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    return dict(idx=idx, segments=segments, position_ids=positions, src_rows=long(src_rows),
                src_pos=long(src_pos), targets=long(targets), owner=long(owner),
                last_rows=long(last_rows), last_pos=long(last_pos),
                chosen=long([first[c] for c, _ in pair_answers]),
                rejected=long([first[r] for _, r in pair_answers]),
                margin=torch.tensor([p["margin"] for p in pairs], dtype=torch.float),
                **answer_lengths(pairs))
