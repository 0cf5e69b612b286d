"""
The one data loader every training script uses: read and validate JSONL, encode each record with
the chat template of tokenizer.py, apply an explicit length policy, and collate batches.

Formats (TRL's conventions), one JSON object per line; extra fields are ignored:
    SFT          {"prompt", "response"} or {"prompt", "completion"}, or conversational
                 {"messages": [{"role": "system"|"user"|"assistant", "content"}, ...]} ending
                 with an assistant turn; every assistant turn is trained, the rest is context;
                 or plain {"text"} with no template, every token trained (pretraining text,
                 e.g. PPO-ptx's mix), cut to its first block_size tokens.
    preferences  {"prompt", "chosen", "rejected"} with an optional numeric "margin", or a K-wise
                 ranking {"prompt", "responses": [...], "ranks": [...]} (rank 1 = best) or
                 {..., "scores": [...]} (higher = better), expanded to all C(K, 2) pairs with the
                 better answer as chosen, as in InstructGPT (Ouyang et al. 2022, sec. 3.5);
                 tied answers (equal ranks or scores) form no pair with each other.
    unpaired     {"prompt", "completion", "label": true|false}: one answer and whether it is
                 desirable (KTO's feedback, TRL's unpaired preference format).
    RL prompts   {"prompt"}.

Bad input raises DataError naming the file, the line and the field. Nothing is skipped silently:
    - a prompt too long for block_size keeps its END (the latest turn and the 'Assistant:' cue
      the answer follows); tokens are dropped from its left;
    - an example whose answer does not fit in block_size with at least MIN_PROMPT_TOKENS of its
      prompt is dropped;
    - each file prints one line: "loaded N examples from F: T prompts truncated, D dropped
      (response too long)".

Batches are a pure function of (seed, step): see batch_indices.
"""

import json
import math
import os
from functools import lru_cache

import torch

from config import ConfigError, DataError
from runtime import print0
from tokenizer import encode_messages, encode_prompt, encode_response, encode_text

MIN_PROMPT_TOKENS = 16  # an answer is only worth training with some of its question in view
ROLES = ("system", "user", "assistant")
BUCKET_BATCHES = 64  # length bucketing sorts chunks of this many global batches


def _error(path, lineno, msg):
    """DataError('{file}:{line}: {msg}'), msg starting with the field when there is one."""
    return DataError(f"{path}:{lineno}: {msg}")


def _json_type(value):
    names = {str: "a string", bool: "a boolean", int: "a number", float: "a number",
             list: "an array", dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)

# -----------------------------------------------------------------------------
# reading and validating


def _no_duplicate_keys(pairs):
    """json.loads' object hook: a key given twice is an error, not 'the last one wins'."""
    obj = {}
    for k, v in pairs:
        if k in obj:
            raise ValueError(f"field {k!r}: given twice in one record")
        obj[k] = v
    return obj


def parse_record(line):
    """One JSONL line as a dict, or ValueError saying why not: malformed JSON, a key given
    twice, an integer too long to read (Python's 4300-digit limit), nesting too deep, text that
    is not valid Unicode (a lone surrogate such as \\ud800)."""
    try:
        obj = json.loads(line, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as e:
        raise ValueError(f"malformed JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise ValueError("malformed JSON (nested too deeply)") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {_json_type(obj)}")
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a string holds a lone surrogate (e.g. \\ud800): not valid Unicode") from None
    return obj


def read_jsonl(path):
    """[(1-based line number, dict)] of a JSONL file; blank lines are not records."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: {'a directory, not a file' if os.path.isdir(path) else 'no such file'}")
    records = []
    try:
        f = open(path, "rb")
    except OSError as e:  # permissions, a file that vanished
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None
    with f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _error(path, lineno, f"invalid UTF-8 ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                records.append((lineno, parse_record(line)))
            except ValueError as e:  # also the 4300-digit limit, which json raises as ValueError
                raise _error(path, lineno, str(e)[:300]) from None
    if not records:
        raise DataError(f"{path}: empty file (no examples)")
    return records


def _short(value):
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


def _text(path, lineno, obj, key, name=None):
    """obj[key] as a non-empty string, or a DataError naming the field."""
    name = name or key
    if key not in obj:
        raise _error(path, lineno, f"field {name!r}: missing")
    return _check_text(path, lineno, obj[key], name)


def _check_text(path, lineno, value, name):
    if not isinstance(value, str):
        raise _error(path, lineno, f"field {name!r}: must be a string, got {_json_type(value)}")
    if not value.strip():
        raise _error(path, lineno, f"field {name!r}: empty")
    return value


def _number(path, lineno, value, name):
    huge = isinstance(value, int) and abs(value) > 2**53  # beyond what a float holds exactly
    if huge or isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value):
        raise _error(path, lineno, f"field {name!r}: must be a finite number, got {_short(value)}")
    return float(value)


def _array(path, lineno, obj, key, min_len=1):
    if key not in obj:
        raise _error(path, lineno, f"field {key!r}: missing")
    value = obj[key]
    if not isinstance(value, list) or len(value) < min_len:
        raise _error(path, lineno, f"field {key!r}: must be an array of at least {min_len} items, "
                                   f"got {_json_type(value) if not isinstance(value, list) else len(value)}")
    return value


def _messages(path, lineno, obj):
    """The validated 'messages' list of a conversational SFT record."""
    messages = _array(path, lineno, obj, "messages")
    for i, m in enumerate(messages):
        name = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _error(path, lineno, f"field {name!r}: must be an object, got {_json_type(m)}")
        role = _text(path, lineno, m, "role", f"{name}.role")
        if role not in ROLES:
            raise _error(path, lineno, f"field '{name}.role': unknown role {role!r} (expected "
                                       f"{', '.join(ROLES)})")
        _text(path, lineno, m, "content", f"{name}.content")
    if messages[-1]["role"] != "assistant":
        raise _error(path, lineno, f"field 'messages[{len(messages) - 1}].role': the last message "
                                   f"must be the assistant's answer, got {messages[-1]['role']!r}")
    return messages


def _ranked_pairs(path, lineno, obj):
    """
    The (better, worse) pairs of a K-wise ranking, best answer first: all C(K, 2) of them when
    every answer has its own rank, fewer with ties. Tied answers (the same rank, or the same
    score) are equally good to the annotator: no pair is formed between them, exactly as
    InstructGPT's labellers could mark two answers as ties. Ranks are dense (1 = best, tied
    answers share a rank, the m distinct ranks are 1..m); a ranking needs two different ranks.
    """
    responses = _array(path, lineno, obj, "responses", min_len=2)
    for i, r in enumerate(responses):
        _check_text(path, lineno, r, f"responses[{i}]")
    if len(set(responses)) < len(responses):
        raise _error(path, lineno, "field 'responses': holds the same answer twice")
    if ("ranks" in obj) == ("scores" in obj):
        raise _error(path, lineno, "field 'ranks' or 'scores': exactly one of them is needed with 'responses'")
    key = "ranks" if "ranks" in obj else "scores"
    values = _array(path, lineno, obj, key, min_len=2)
    if len(values) != len(responses):
        raise _error(path, lineno, f"field {key!r}: has {len(values)} items but 'responses' has "
                                   f"{len(responses)}")
    values = [_number(path, lineno, v, f"{key}[{i}]") for i, v in enumerate(values)]
    distinct = sorted(set(values))
    if key == "ranks" and (any(v != int(v) for v in values)
                           or distinct != list(range(1, len(distinct) + 1))):
        raise _error(path, lineno, f"field 'ranks': must be dense whole numbers: the m distinct "
                                   f"ranks are 1..m (1 = best, tied answers share a rank), got "
                                   f"{obj['ranks']}")
    if len(distinct) < 2:
        raise _error(path, lineno, f"field {key!r}: every answer is tied, so the ranking holds "
                                   f"no comparison")
    # best first: smallest rank, or highest score (a stable sort keeps tied answers in file order)
    order = sorted(range(len(values)), key=lambda i: values[i] if key == "ranks" else -values[i])
    return [(responses[order[a]], responses[order[b]])
            for a in range(len(order)) for b in range(a + 1, len(order))
            if values[order[a]] != values[order[b]]]

# -----------------------------------------------------------------------------
# the length policy


def fit_prompt(prompt_ids, response_len, block_size):
    """
    The prompt ids to use with a response of response_len tokens, and whether they were cut.
    A prompt that does not fit keeps its END: its latest turn and the 'Assistant:' cue. Returns
    (None, False) when the response leaves no room for min(len(prompt), MIN_PROMPT_TOKENS) tokens.
    """
    room = block_size - response_len
    if room < min(len(prompt_ids), MIN_PROMPT_TOKENS):
        return None, False
    if len(prompt_ids) <= room:
        return prompt_ids, False
    return prompt_ids[len(prompt_ids) - room:], True


def _fit_conversation(ids, mask, block_size):
    """(ids, mask, truncated) of a multi-turn example, or None if its last answer cannot fit.
    The last answer is the final run of mask == 1; everything before it is its prompt."""
    start = len(mask)
    while start > 0 and mask[start - 1] == 1:
        start -= 1
    prompt, truncated = fit_prompt(ids[:start], len(ids) - start, block_size)
    if prompt is None:
        return None
    cut = start - len(prompt)
    ids, mask = ids[cut:], mask[cut:]
    if cut > 0 and mask[0] == 1:
        # the cut went through an earlier answer: its tail is context now, not a target
        k = 0
        while mask[k] == 1:
            k += 1
        mask = [0] * k + mask[k:]
    return ids, mask, truncated


def _report(path, n, truncated, dropped, note=""):
    print0(f"loaded {n} examples from {path}: {truncated} prompts truncated, {dropped} dropped "
           f"(response too long){note}")
    if n == 0:
        raise DataError(f"{path}: no example fits in block_size (all {dropped} dropped)")

# -----------------------------------------------------------------------------
# the three formats


def load_sft(path, enc, block_size):
    """[(ids, mask)]: mask is 1 on every trained answer token and its EOS, 0 elsewhere (a
    {"text"} record: 1 everywhere)."""
    examples, truncated, dropped = [], 0, 0
    for lineno, obj in read_jsonl(path):
        if "messages" in obj:
            ids, mask = encode_messages(enc, _messages(path, lineno, obj))
            fitted = _fit_conversation(ids, mask, block_size)
        elif "text" in obj and "prompt" not in obj:  # pretraining text: every token trained
            ids = encode_text(enc, _text(path, lineno, obj, "text"))
            fitted = (ids[:block_size], [1] * min(len(ids), block_size), len(ids) > block_size)
        else:
            prompt = _text(path, lineno, obj, "prompt")
            if ("response" in obj) == ("completion" in obj):
                raise _error(path, lineno, "field 'response' (or 'completion'): exactly one of "
                                           "the two is needed (or a 'messages' conversation)")
            response = _text(path, lineno, obj, "response" if "response" in obj else "completion")
            p, r = encode_prompt(enc, prompt), encode_response(enc, response)
            p, cut = fit_prompt(p, len(r), block_size)
            fitted = None if p is None else (p + r, [0] * len(p) + [1] * len(r), cut)
        if fitted is None:
            dropped += 1
            continue
        ids, mask, cut = fitted
        truncated += cut
        examples.append((ids, mask))
    _report(path, len(examples), truncated, dropped)
    return examples


def load_preferences(path, enc, block_size):
    """
    [dict(chosen=(ids, mask), rejected=(ids, mask), margin, prompt, chosen_text, rejected_text,
    record)]: record is (file, line number) of the record the pair came from. Both answers share
    one (possibly truncated) prompt; K-wise rankings become their C(K, 2) pairs (fewer with ties:
    tied answers form no pair) with margin 0. path may list several files, comma-separated (the
    rounds of on-policy labels): their pairs in that order.
    """
    if "," in path:
        return [p for part in path.split(",") for p in load_preferences(part, enc, block_size)]
    pairs, truncated, dropped, n_ranked = [], 0, 0, 0
    for lineno, obj in read_jsonl(path):
        prompt = _text(path, lineno, obj, "prompt")
        if "responses" in obj:
            if "chosen" in obj or "rejected" in obj:
                raise _error(path, lineno, "field 'responses': cannot be combined with 'chosen'/'rejected'")
            answers, margin = _ranked_pairs(path, lineno, obj), 0.0
            n_ranked += len(answers)
        else:
            chosen = _text(path, lineno, obj, "chosen")
            rejected = _text(path, lineno, obj, "rejected")
            if chosen == rejected:
                raise _error(path, lineno, "field 'rejected': identical to 'chosen'")
            answers = [(chosen, rejected)]
            margin = _number(path, lineno, obj["margin"], "margin") if "margin" in obj else 0.0
        prompt_ids = encode_prompt(enc, prompt)
        for chosen, rejected in answers:
            c, r = encode_response(enc, chosen), encode_response(enc, rejected)
            p, cut = fit_prompt(prompt_ids, max(len(c), len(r)), block_size)
            if p is None:
                dropped += 1
                continue
            truncated += cut
            pairs.append(dict(chosen=(p + c, [0] * len(p) + [1] * len(c)),
                              rejected=(p + r, [0] * len(p) + [1] * len(r)),
                              margin=margin, prompt=prompt, chosen_text=chosen, rejected_text=rejected,
                              record=(path, lineno)))
    _report(path, len(pairs), truncated, dropped,
            f"; {n_ranked} pairs from K-wise rankings" if n_ranked else "")
    return pairs


def load_unpaired(path, enc, block_size):
    """
    [dict(prompt=ids, completion=ids, desirable, prompt_text)] of unpaired feedback records
    {"prompt", "completion", "label": true|false} (TRL's unpaired format, for KTO): one answer
    and whether it is desirable, no pair needed. completion ids end with the EOS.
    """
    examples, truncated, dropped = [], 0, 0
    for lineno, obj in read_jsonl(path):
        prompt, completion = _text(path, lineno, obj, "prompt"), _text(path, lineno, obj, "completion")
        if not isinstance(obj.get("label"), bool):
            raise _error(path, lineno, f"field 'label': must be true or false, got "
                                       f"{_json_type(obj['label']) if 'label' in obj else 'nothing'}")
        c = encode_response(enc, completion)
        p, cut = fit_prompt(encode_prompt(enc, prompt), len(c), block_size)
        if p is None:
            dropped += 1
            continue
        truncated += cut
        examples.append(dict(prompt=p, completion=c, desirable=obj["label"], prompt_text=prompt))
    _report(path, len(examples), truncated, dropped)
    return examples


def load_prompts(path, enc, block_size, max_new_tokens):
    """[dict(prompt, ids)]: prompts for generation, cut from the left to leave max_new_tokens;
    several files (comma-separated) one after the other. A record's "family" (the toy world's
    tag: 'harmful' marks an unsafe prompt, Llama 2's IS_SAFETY) is kept when present."""
    if "," in path:
        return [p for part in path.split(",")
                for p in load_prompts(part, enc, block_size, max_new_tokens)]
    room = block_size - max_new_tokens
    if room < 1:
        raise ConfigError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in "
                         f"block_size={block_size}")
    prompts, truncated = [], 0
    for lineno, obj in read_jsonl(path):
        prompt = _text(path, lineno, obj, "prompt")
        ids = encode_prompt(enc, prompt)
        if len(ids) > room:
            ids, truncated = ids[len(ids) - room:], truncated + 1
        prompts.append(dict(prompt=prompt, ids=ids, **{k: obj[k] for k in ("family",) if k in obj}))
    _report(path, len(prompts), truncated, 0)
    return prompts

# -----------------------------------------------------------------------------
# batches


def collate(examples, pad_id):
    """
    Right-pad [(ids, mask)] into (idx, attention_mask, loss_mask), each (B, T) long with T the
    longest example. Padding is pad_id with attention 0 and loss 0: masks are explicit, never
    inferred from ids (pad_id is usually the EOS id, and the real EOS is trained).
    """
    T = max(len(ids) for ids, _ in examples)
    idx = torch.tensor([ids + [pad_id] * (T - len(ids)) for ids, _ in examples], dtype=torch.long)
    attn = torch.tensor([[1] * len(ids) + [0] * (T - len(ids)) for ids, _ in examples], dtype=torch.long)
    loss = torch.tensor([list(mask) + [0] * (T - len(mask)) for _, mask in examples], dtype=torch.long)
    return idx, attn, loss



def pair_length(pair):
    """The tokens of a pair's longer row (prompt + the longer answer): what it pads a batch to,
    and the length that bucketing and length-sorted batches sort pairs by."""
    return max(len(pair["chosen"][0]), len(pair["rejected"][0]))


def mismatched_partners(examples):
    """
    For each example b, the index of the answer KTO's reference point pairs with its prompt: the
    next example (cyclically) whose prompt is another one. Consecutive answers often share a
    prompt (the labelling step writes a prompt's answers together), and an answer paired with
    its own prompt estimates nothing of the KL; when every example has one prompt, b + 1.
    """
    B, out = len(examples), []
    for b, e in enumerate(examples):
        others = [(b + d) % B for d in range(1, B) if examples[(b + d) % B]["prompt"] != e["prompt"]]
        out.append(others[0] if others else (b + 1) % B)
    return out


def collate_unpaired(examples, pad_id, block_size):
    """
    One KTO batch: a dict with idx, attention_mask, loss_mask (2B, T) and desirable (B,) bool.
    Rows 0..B-1 are the examples (prompt_b + completion_b); rows B..2B-1 the mismatched pairs
    prompt_b + the completion of another prompt (mismatched_partners), whose log-ratios
    estimate KTO's reference point (Ethayarajh et al. 2024, sec. 4.1), prompts cut from the left
    to fit block_size.
    """
    rows = [(e["prompt"] + e["completion"], [0] * len(e["prompt"]) + [1] * len(e["completion"]))
            for e in examples]
    for e, partner in zip(examples, mismatched_partners(examples)):
        completion = examples[partner]["completion"]
        prompt = e["prompt"][max(0, len(e["prompt"]) + len(completion) - block_size):]
        rows.append((prompt + completion, [0] * len(prompt) + [1] * len(completion)))
    idx, attn, loss = collate(rows, pad_id)
    desirable = torch.tensor([e["desirable"] for e in examples], dtype=torch.bool)
    return dict(idx=idx, attention_mask=attn, loss_mask=loss, desirable=desirable)


def collate_left(prompts, pad_id):
    """Left-pad [ids] into (idx, attention_mask), each (B, T) long: every prompt ends at the
    last column, where generation continues (positions come from the mask)."""
    T = max(len(ids) for ids in prompts)
    idx = torch.tensor([[pad_id] * (T - len(ids)) + list(ids) for ids in prompts], dtype=torch.long)
    attn = torch.tensor([[0] * (T - len(ids)) + [1] * len(ids) for ids in prompts], dtype=torch.long)
    return idx, attn


@lru_cache(maxsize=4)
def _epoch_order(n, seed, epoch, lengths=None, group=1):
    """The order of the n examples in one epoch: a seeded permutation, optionally bucketed."""
    gen = torch.Generator().manual_seed(seed + epoch)
    perm = torch.randperm(n, generator=gen).tolist()
    if lengths is None:
        return perm
    # length bucketing: sort chunks of BUCKET_BATCHES global batches by length, cut them into
    # global batches of similar lengths, and shuffle those batches so lengths do not cycle
    order = []
    for start in range(0, n, BUCKET_BATCHES * group):
        chunk = sorted(perm[start:start + BUCKET_BATCHES * group], key=lengths.__getitem__)
        batches = [chunk[k:k + group] for k in range(0, len(chunk), group)]
        for j in torch.randperm(len(batches), generator=gen).tolist():
            order += batches[j]
    return order


def batch_indices(n, batch_size, step, seed, rank=0, world_size=1, lengths=None):
    """
    The example indices of this rank's share of the step-th global batch: a pure function of
    (n, batch_size, step, seed, rank, world_size), so resuming at step s needs no loader state.

    Examples are consumed in the order of epoch e's permutation (torch.randperm(n) seeded with
    seed + e), one epoch after the other; global batch `step` is positions
    [step * batch_size * world_size, (step + 1) * batch_size * world_size) of that stream and
    rank r takes its r-th contiguous slice of batch_size: ranks are disjoint and an epoch is
    covered exactly once. With `lengths` (a length per example), batches hold similar lengths
    (exact when n is a multiple of the global batch; otherwise batches straddle epochs and the
    buckets blur a little).
    """
    lengths = tuple(lengths) if lengths is not None else None
    start = (step * world_size + rank) * batch_size
    orders = {e: _epoch_order(n, seed, e, lengths, batch_size * world_size)
              for e in range(start // n, (start + batch_size - 1) // n + 1)}
    return [orders[p // n][p % n] for p in range(start, start + batch_size)]
