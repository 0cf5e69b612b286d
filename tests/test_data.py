"""
data/loader.py and data/hh/prepare.py: every validation error names its file, line and field;
masks cover exactly the answers; the length policy keeps the prompt's end and reports what it
did; collation pads the right side; batches are a pure function of the step; HH converts exactly.
"""

import gzip
import json
import os
import shutil

import pytest
import torch

import layouts
from data import loader
from data.hh import prepare as hh
from data.loader import DataError
from tokenizer import decode, encode_example, encode_prompt, get_tokenizer, render_prompt

ENC = get_tokenizer("byte")
EOT = ENC.eot_token
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "hh")


def write(tmp_path, lines, name="data.jsonl"):
    """Write records (dicts as JSON, str and bytes as they are) one per line."""
    path = tmp_path / name
    with open(path, "wb") as f:
        for x in lines:
            if isinstance(x, dict):
                x = json.dumps(x)
            f.write((x.encode("utf-8") if isinstance(x, str) else x) + b"\n")
    return str(path)


def runs(mask):
    """[(start, end)] of the runs of 1 in a mask."""
    out, start = [], None
    for i, m in enumerate(list(mask) + [0]):
        if m and start is None:
            start = i
        if not m and start is not None:
            out.append((start, i))
            start = None
    return out

# -----------------------------------------------------------------------------
# validation errors: the file, the 1-based line and the field


GOOD_SFT = {"prompt": "Hi", "response": "Hello"}
GOOD_PREF = {"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"}

SFT_ERRORS = [
    # (second line of the file, words the message must hold)
    ('{"prompt": "a", "response": ', ["malformed JSON"]),
    ("[1, 2]", ["JSON object", "an array"]),
    ({"prompt": "a"}, ["'response'"]),
    ({"response": "a"}, ["'prompt'", "missing"]),
    ({"prompt": "", "response": "b"}, ["'prompt'", "empty"]),
    ({"prompt": "a", "response": "   "}, ["'response'", "empty"]),
    ({"prompt": 3, "response": "b"}, ["'prompt'", "string", "number"]),
    ({"prompt": "a", "completion": ["b"]}, ["'completion'", "string"]),
    ({"prompt": "a", "response": "b", "completion": "c"}, ["'response'", "exactly one"]),
    (b'{"prompt": "caf\xe9", "response": "b"}', ["invalid UTF-8"]),
    ({"messages": []}, ["'messages'", "array"]),
    ({"messages": "hi"}, ["'messages'", "array"]),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]},
     ["'messages[1].role'", "unknown role", "'bot'"]),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant"}]},
     ["'messages[1].content'", "missing"]),
    ({"messages": [{"role": "user", "content": "a"}, "b"]}, ["'messages[1]'", "object"]),
    ({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]},
     ["'messages[1].role'", "last message"]),
    # JSON that Python's json module accepts but that is not one clean record
    ('{"prompt": "a", "response": "b", "prompt": "c"}', ["'prompt'", "given twice"]),
    ('{"prompt": "\\ud800", "response": "b"}', ["lone surrogate"]),
    ('{"prompt": "a", "response": "b", "n": ' + "9" * 5000 + "}", ["4300"]),
    ('{"prompt": "a", "response": "b", "x": ' + "[" * 100000 + "]" * 100000 + "}",
     ["nested too deeply"]),
]


@pytest.mark.unit
@pytest.mark.parametrize("line, words", SFT_ERRORS)
def test_sft_errors_name_file_line_and_field(tmp_path, line, words):
    path = write(tmp_path, [GOOD_SFT, line, GOOD_SFT])
    with pytest.raises(DataError) as e:
        loader.load_sft(path, ENC, 64)
    msg = str(e.value)
    assert msg.startswith(f"{path}:2: "), msg
    for w in words:
        assert w in msg, (w, msg)


PREF_ERRORS = [
    ({"prompt": "a", "chosen": "x", "rejected": "x"}, ["'rejected'", "identical to 'chosen'"]),
    ({"prompt": "a", "chosen": "x", "rejected": "y", "margin": 10 ** 400}, ["'margin'", "finite"]),
    ({"prompt": "a", "chosen": "x"}, ["'rejected'", "missing"]),
    ({"prompt": "a", "chosen": "x", "rejected": None}, ["'rejected'", "string", "null"]),
    ({"prompt": "a", "chosen": "x", "rejected": "y", "margin": "big"}, ["'margin'", "number"]),
    ({"prompt": "a", "chosen": "x", "rejected": "y", "margin": True}, ["'margin'", "number"]),
    ({"prompt": "a", "responses": ["x", "y"], "ranks": [1, 1]}, ["'ranks'", "tied", "no comparison"]),
    ({"prompt": "a", "responses": ["x", "y", "z"], "scores": [0.5, 0.5, 0.5]}, ["'scores'", "tied"]),
    ({"prompt": "a", "responses": ["x", "y", "z"], "ranks": [1, 1, 3]}, ["'ranks'", "dense", "1..m"]),
    ({"prompt": "a", "responses": ["x", "y", "z"], "ranks": [2, 2, 3]}, ["'ranks'", "dense"]),
    ({"prompt": "a", "responses": ["x", "y"], "ranks": [1, 1.5]}, ["'ranks'", "whole numbers"]),
    ({"prompt": "a", "responses": ["x", "y"], "ranks": [0, 1]}, ["'ranks'", "dense"]),
    ({"prompt": "a", "responses": ["x", "y", "z"], "ranks": [1, 2]}, ["'ranks'", "2 items", "3"]),
    ({"prompt": "a", "responses": ["x", "y"], "scores": [1.0, 2.0, 3.0]}, ["'scores'", "3 items"]),
    ({"prompt": "a", "responses": ["x", "y"], "ranks": [1, 3]}, ["'ranks'", "dense"]),
    ({"prompt": "a", "responses": ["x", "y"]}, ["'ranks' or 'scores'"]),
    ({"prompt": "a", "responses": ["x", "y"], "ranks": [1, 2], "scores": [1, 2]}, ["exactly one"]),
    ({"prompt": "a", "responses": ["x"], "ranks": [1]}, ["'responses'", "at least 2"]),
    ({"prompt": "a", "responses": ["x", "x"], "ranks": [1, 2]}, ["'responses'", "same answer"]),
    ({"prompt": "a", "responses": ["x", ""], "ranks": [1, 2]}, ["'responses[1]'", "empty"]),
    ({"prompt": "a", "responses": ["x", "y"], "ranks": [1, "2"]}, ["'ranks[1]'", "number"]),
    ({"prompt": "a", "responses": ["x", "y"], "ranks": [1, 2], "chosen": "x"}, ["'responses'", "'chosen'"]),
]


@pytest.mark.unit
@pytest.mark.parametrize("line, words", PREF_ERRORS)
def test_preference_errors_name_file_line_and_field(tmp_path, line, words):
    path = write(tmp_path, [GOOD_PREF, GOOD_PREF, line])
    with pytest.raises(DataError) as e:
        loader.load_preferences(path, ENC, 64)
    msg = str(e.value)
    assert msg.startswith(f"{path}:3: "), msg
    for w in words:
        assert w in msg, (w, msg)


@pytest.mark.unit
@pytest.mark.parametrize("line, words", [
    ({"prompt": "a", "completion": "b"}, ["'label'", "true or false", "nothing"]),
    ({"prompt": "a", "completion": "b", "label": 1}, ["'label'", "a number"]),
    ({"prompt": "a", "completion": "b", "label": "yes"}, ["'label'", "a string"]),
    ({"prompt": "a", "label": True}, ["'completion'", "missing"]),
    ({"prompt": "a", "completion": "", "label": False}, ["'completion'", "empty"]),
])
def test_unpaired_errors_name_file_line_and_field(tmp_path, line, words):
    good = {"prompt": "What color is a lime?", "completion": "Green.", "label": True}
    path = write(tmp_path, [good, line])
    with pytest.raises(DataError) as e:
        loader.load_unpaired(path, ENC, 64)
    assert str(e.value).startswith(f"{path}:2: ") and all(w in str(e.value) for w in words), e.value
    ex = loader.load_unpaired(write(tmp_path, [good, {**good, "label": False}], "ok.jsonl"), ENC, 64)
    assert [e["desirable"] for e in ex] == [True, False]
    assert ENC.decode(ex[0]["completion"][:-1]) == " Green." and ex[0]["completion"][-1] == 256


@pytest.mark.unit
def test_prompt_errors_and_file_level_errors(tmp_path):
    path = write(tmp_path, [{"prompt": "a"}, {"prompt": ["a"]}])
    with pytest.raises(DataError, match=r":2: field 'prompt': must be a string"):
        loader.load_prompts(path, ENC, 64, 16)
    empty = write(tmp_path, [], name="empty.jsonl")
    with pytest.raises(DataError, match=r"empty\.jsonl: empty file"):
        loader.load_sft(empty, ENC, 64)
    blank = write(tmp_path, ["", "   "], name="blank.jsonl")
    with pytest.raises(DataError, match="empty file"):
        loader.load_prompts(blank, ENC, 64, 16)
    with pytest.raises(DataError, match="no such file"):
        loader.load_sft(str(tmp_path / "missing.jsonl"), ENC, 64)
    with pytest.raises(ValueError, match="max_new_tokens"):
        loader.load_prompts(path, ENC, 64, 64)


@pytest.mark.unit
def test_line_numbers_count_blank_lines(tmp_path):
    path = write(tmp_path, [GOOD_SFT, "", GOOD_SFT, {"prompt": "a"}])
    with pytest.raises(DataError, match=r":4: field 'response'"):
        loader.load_sft(path, ENC, 64)

# -----------------------------------------------------------------------------
# formats and masks


@pytest.mark.unit
def test_sft_single_turn_mask_is_exactly_the_response(tmp_path, capsys):
    path = write(tmp_path, [{"prompt": "Hi there", "response": "Hello!", "id": 7},
                            {"prompt": "Bye", "completion": "See you."}])
    (ids0, mask0), (ids1, mask1) = loader.load_sft(path, ENC, 128)
    assert (ids0, mask0) == encode_example(ENC, "Hi there", "Hello!")
    assert (ids1, mask1) == encode_example(ENC, "Bye", "See you.")
    for ids, mask, prompt, response in [(ids0, mask0, "Hi there", "Hello!"), (ids1, mask1, "Bye", "See you.")]:
        (s, e), = runs(mask)
        assert e == len(ids) and ids[-1] == EOT  # the answer runs to the end, its EOS trained
        assert ENC.decode(ids[s:e - 1]) == " " + response
        assert ENC.decode(ids[:s]) == render_prompt(prompt)
    assert f"loaded 2 examples from {path}: 0 prompts truncated, 0 dropped (response too long)" \
        in capsys.readouterr().out


@pytest.mark.unit
def test_plain_text_records_train_every_token_without_a_template(tmp_path):
    # pretraining text for PPO-ptx: no chat template, every token and the EOS trained, cut to
    # its first block_size tokens
    path = write(tmp_path, [{"text": "Cows say moo."}, {"text": "x" * 50}])
    (ids0, mask0), (ids1, mask1) = loader.load_sft(path, ENC, 20)
    assert ids0 == list("Cows say moo.".encode()) + [EOT] and mask0 == [1] * len(ids0)
    assert ids1 == [ord("x")] * 20 and mask1 == [1] * 20
    with pytest.raises(DataError, match="text"):
        loader.load_sft(write(tmp_path, [{"text": 7}], "bad.jsonl"), ENC, 20)


@pytest.mark.unit
def test_sft_multi_turn_trains_every_assistant_turn(tmp_path):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"}]
    path = write(tmp_path, [{"messages": messages}])
    [(ids, mask)] = loader.load_sft(path, ENC, 256)
    spans = runs(mask)
    assert len(spans) == 2
    assert [ENC.decode(ids[s:e - 1]) for s, e in spans] == [" Hello.", " 4"]
    assert all(ids[e - 1] == EOT for _, e in spans)
    text = decode(ENC, ids)  # everything outside the masks is context
    assert text == "Be brief.\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: 2+2?\n\nAssistant: 4"


@pytest.mark.unit
def test_kwise_rankings_expand_to_all_ordered_pairs(tmp_path, capsys):
    path = write(tmp_path, [
        {"prompt": "p", "responses": ["a", "b", "c"], "ranks": [2, 1, 3]},
        {"prompt": "q", "responses": ["a", "b", "c", "d"], "scores": [0.1, 2.0, -1.0, 0.5]},
        {"prompt": "r", "chosen": "yes", "rejected": "no", "margin": 2},
    ])
    pairs = loader.load_preferences(path, ENC, 64)
    got = [(p["prompt"], p["chosen_text"], p["rejected_text"]) for p in pairs]
    # ranks: b > a > c; scores: b > d > a > c; C(3,2) + C(4,2) + 1 pairs, best-first order
    assert got == [("p", "b", "a"), ("p", "b", "c"), ("p", "a", "c"),
                   ("q", "b", "d"), ("q", "b", "a"), ("q", "b", "c"), ("q", "d", "a"),
                   ("q", "d", "c"), ("q", "a", "c"), ("r", "yes", "no")]
    assert [p["margin"] for p in pairs] == [0.0] * 9 + [2.0]
    for p in pairs:
        assert p["chosen"] == encode_example(ENC, p["prompt"], p["chosen_text"])
        assert p["rejected"] == encode_example(ENC, p["prompt"], p["rejected_text"])
    assert "loaded 10 examples" in capsys.readouterr().out

@pytest.mark.unit
def test_tied_answers_form_no_pair(tmp_path, capsys):
    path = write(tmp_path, [
        # a and c tie for first, d and e tie for third: 2 x 1 + 2 x 2 + 1 x 2 = 8 of C(5, 2)
        {"prompt": "p", "responses": ["a", "b", "c", "d", "e"], "ranks": [1, 2, 1, 3, 3]},
        {"prompt": "q", "responses": ["a", "b", "c"], "scores": [0.5, 0.1, 0.5]},
        {"prompt": "r", "responses": ["a", "b", "c"], "ranks": [2, 1, 2]},  # one best, two tied
    ])
    got = [(p["prompt"], p["chosen_text"], p["rejected_text"])
           for p in loader.load_preferences(path, ENC, 64)]
    assert got == [("p", "a", "b"), ("p", "a", "d"), ("p", "a", "e"), ("p", "c", "b"),
                   ("p", "c", "d"), ("p", "c", "e"), ("p", "b", "d"), ("p", "b", "e"),
                   ("q", "a", "b"), ("q", "c", "b"), ("r", "b", "a"), ("r", "b", "c")]
    assert "loaded 12 examples" in capsys.readouterr().out


# -----------------------------------------------------------------------------
# the length policy


@pytest.mark.unit
def test_truncation_keeps_the_end_of_the_prompt(tmp_path, capsys):
    prompt = "start " + "x" * 100 + " the real question?"
    path = write(tmp_path, [{"prompt": prompt, "response": "ok"}, GOOD_SFT])
    [(ids, mask), short] = loader.load_sft(path, ENC, 64)
    assert len(ids) == 64 and short == encode_example(ENC, "Hi", "Hello")
    s, = [i for i in range(len(mask)) if mask[i]][:1]
    assert ENC.decode(ids[:s]).endswith("x the real question?\n\nAssistant:")
    assert ENC.decode(ids[s:-1]) == " ok" and ids[-1] == EOT
    assert f"loaded 2 examples from {path}: 1 prompts truncated, 0 dropped" in capsys.readouterr().out


@pytest.mark.unit
def test_examples_whose_answer_cannot_fit_are_dropped_and_counted(tmp_path, capsys):
    # 60 answer bytes + space + EOS leave 2 < min(len(prompt), 16) prompt tokens in 64
    path = write(tmp_path, [{"prompt": "q", "response": "y" * 60}, GOOD_SFT], name="sft.jsonl")
    assert loader.load_sft(path, ENC, 64) == [encode_example(ENC, "Hi", "Hello")]
    assert f"loaded 1 examples from {path}: 0 prompts truncated, 1 dropped (response too long)" \
        in capsys.readouterr().out
    # a pair is dropped when its longer answer cannot fit
    path = write(tmp_path, [GOOD_PREF, {"prompt": "q", "chosen": "c" * 60, "rejected": "r"}],
                 name="prefs.jsonl")
    assert [p["prompt"] for p in loader.load_preferences(path, ENC, 64)] == ["Hi"]
    assert "loaded 1 examples" in capsys.readouterr().out
    # a file where nothing fits is an error, not an empty dataset
    with pytest.raises(DataError, match="all 1 dropped"):
        loader.load_sft(write(tmp_path, [{"prompt": "q", "response": "y" * 80}], name="x.jsonl"), ENC, 64)


@pytest.mark.unit
def test_preference_pairs_share_one_truncated_prompt(tmp_path):
    prompt = "w" * 100 + " last words?"
    path = write(tmp_path, [{"prompt": prompt, "chosen": "long answer here", "rejected": "no"}])
    [p] = loader.load_preferences(path, ENC, 64)
    c_ids, c_mask = p["chosen"]
    r_ids, r_mask = p["rejected"]
    assert len(c_ids) == 64 and len(r_ids) < 64  # the longer answer sets the prompt's budget
    n = c_mask.index(1)
    assert r_mask.index(1) == n and c_ids[:n] == r_ids[:n]
    assert ENC.decode(c_ids[:n]).endswith(" last words?\n\nAssistant:")


@pytest.mark.unit
def test_multi_turn_truncation_keeps_the_last_turns(tmp_path):
    messages = [{"role": "user", "content": "first question " * 3},
                {"role": "assistant", "content": "a fairly long first answer"},
                {"role": "user", "content": "next?"},
                {"role": "assistant", "content": "last"}]
    path = write(tmp_path, [{"messages": messages}])
    full_ids, _ = loader.load_sft(path, ENC, 1000)[0]
    # cut 10 tokens into the first answer: its tail becomes context, the last answer stays whole
    block = len(ENC.encode("\n\nHuman: next?\n\nAssistant: last")) + 1 + 10
    [(ids, mask)] = loader.load_sft(path, ENC, block)
    assert len(ids) == block and ids == full_ids[-block:]
    assert decode(ENC, ids[:10]) == "st answer" and ids[9] == EOT  # the first answer's tail...
    (s, e), = runs(mask)  # ...is not trained
    assert ENC.decode(ids[s:e - 1]) == " last" and e == len(ids)
    assert decode(ENC, ids).endswith("\n\nHuman: next?\n\nAssistant: last")


@pytest.mark.unit
def test_prompts_leave_room_for_generation(tmp_path, capsys):
    path = write(tmp_path, [{"prompt": "z" * 100 + " end?", "family": "x"}, {"prompt": "Hi"}])
    long, short = loader.load_prompts(path, ENC, 64, 24)
    assert len(long["ids"]) == 64 - 24 and long["prompt"].startswith("zzz")
    assert ENC.decode(long["ids"]).endswith(" end?\n\nAssistant:")
    assert short == dict(prompt="Hi", ids=encode_prompt(ENC, "Hi"))
    assert f"loaded 2 examples from {path}: 1 prompts truncated" in capsys.readouterr().out

# -----------------------------------------------------------------------------
# collation


@pytest.mark.unit
def test_collate_right_pads_with_explicit_masks():
    a = ([1, 2, EOT], [0, 1, 1])
    b = ([3, 4, 5, 6, EOT], [0, 0, 1, 1, 1])
    idx, attn, loss = loader.collate([a, b], pad_id=EOT)
    assert idx.dtype == attn.dtype == loss.dtype == torch.long
    assert idx.tolist() == [[1, 2, EOT, EOT, EOT], [3, 4, 5, 6, EOT]]
    assert attn.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    # the real EOS is trained, the padding (the same id) is not
    assert loss.tolist() == [[0, 1, 1, 0, 0], [0, 0, 1, 1, 1]]


@pytest.mark.unit
def test_collate_pairs_puts_chosen_rows_first():
    pairs = [dict(chosen=([1, 2], [0, 1]), rejected=([1, 3, 4], [0, 1, 1]), margin=0.5),
             dict(chosen=([5, 6, 7, 8], [0, 0, 1, 1]), rejected=([5, 9], [0, 1]), margin=0.0)]
    batch = layouts.collate_pairs(pairs, pad_id=0)
    assert batch["idx"].tolist() == [[1, 2, 0, 0], [5, 6, 7, 8], [1, 3, 4, 0], [5, 9, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]]
    assert batch["loss_mask"].tolist() == [[0, 1, 0, 0], [0, 0, 1, 1], [0, 1, 1, 0], [0, 1, 0, 0]]
    assert batch["margin"].tolist() == [0.5, 0.0]


@pytest.mark.unit
def test_collate_shared_prompt_by_hand():
    # each row: the prompt once, then the chosen answer, then the rejected one, each answer at
    # the positions it has in a row of its own
    pairs = [dict(chosen=([1, 2, 3], [0, 1, 1]), rejected=([1, 4], [0, 1]), margin=0.5),
             dict(chosen=([5, 6, 7, 8], [0, 0, 1, 1]), rejected=([5, 6, 9], [0, 0, 1]), margin=0.0)]
    b = layouts.collate_shared_prompt(pairs, pad_id=EOT)
    assert b["idx"].tolist() == [[1, 2, 3, 4, EOT], [5, 6, 7, 8, 9]]
    assert b["segments"].tolist() == [[0, 1, 1, 2, -1], [0, 0, 1, 1, 2]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 1, 0], [0, 1, 2, 3, 2]]
    # every answer token and the position that predicts it: a first token from the prompt's end
    assert b["targets"].tolist() == [2, 3, 4, 7, 8, 9]
    assert b["src_rows"].tolist() == [0, 0, 0, 1, 1, 1]
    assert b["src_pos"].tolist() == [0, 1, 0, 1, 2, 1]
    assert b["owner"].tolist() == [0, 0, 1, 2, 2, 3]
    assert b["last_rows"].tolist() == [0, 0, 1, 1] and b["last_pos"].tolist() == [2, 3, 3, 4]
    assert b["chosen"].tolist() == [0, 2] and b["rejected"].tolist() == [1, 3]
    assert b["margin"].tolist() == [0.5, 0.0]
    # the same positions computed: 9 instead of collate_pairs' 2 x 2 x 4 = 16
    assert layouts.collate_pairs(pairs, pad_id=EOT)["idx"].numel() == 16


@pytest.mark.unit
def test_collate_shared_prompt_by_record_puts_a_ranking_in_one_row():
    # a ranking A > B > C as its three pairs: one row, each answer once
    A, B, C = [7, 8], [9], [10, 11, 12]
    pair = lambda x, y: dict(chosen=([1, 2] + x, [0, 0] + [1] * len(x)), record=("f", 3),  # noqa
                             rejected=([1, 2] + y, [0, 0] + [1] * len(y)), margin=0.0)
    pairs = [pair(A, B), pair(A, C), pair(B, C)]
    b = layouts.collate_shared_prompt(pairs, pad_id=EOT, by_record=True)
    assert b["idx"].tolist() == [[1, 2, 7, 8, 9, 10, 11, 12]]
    assert b["segments"].tolist() == [[0, 0, 1, 1, 2, 3, 3, 3]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 2, 2, 3, 4]]
    assert b["chosen"].tolist() == [0, 0, 1] and b["rejected"].tolist() == [1, 2, 2]
    assert b["last_pos"].tolist() == [3, 4, 7]
    # without by_record: a row per pair
    assert layouts.collate_shared_prompt(pairs, pad_id=EOT)["idx"].size(0) == 3


@pytest.mark.unit
def test_collate_left_pads_prompts():
    idx, attn = loader.collate_left([[7, 8, 9], [5]], pad_id=EOT)
    assert idx.tolist() == [[7, 8, 9], [EOT, EOT, 5]]
    assert attn.tolist() == [[1, 1, 1], [0, 0, 1]]

# -----------------------------------------------------------------------------
# batches as a pure function of the step


@pytest.mark.unit
def test_batch_indices_are_a_pure_function_of_seed_and_step():
    a = loader.batch_indices(100, 8, 5, seed=3)
    assert a == loader.batch_indices(100, 8, 5, seed=3)
    assert a != loader.batch_indices(100, 8, 5, seed=4)
    assert a != loader.batch_indices(100, 8, 6, seed=3)
    # epoch e is torch.randperm(n) seeded with seed + e
    perm1 = torch.randperm(100, generator=torch.Generator().manual_seed(3 + 1)).tolist()
    assert loader.batch_indices(100, 10, 12, seed=3) == perm1[20:30]


@pytest.mark.parametrize("n, world", [(96, 1), (96, 4), (90, 3)])
def test_batch_indices_cover_each_epoch_once_with_disjoint_ranks(n, world):
    B = 4
    steps = -(-3 * n // (B * world))  # three epochs (and a bit when n is not a multiple)
    stream = []
    for step in range(steps):
        shards = [loader.batch_indices(n, B, step, seed=0, rank=r, world_size=world) for r in range(world)]
        flat = [i for s in shards for i in s]
        if n % (B * world) == 0:  # else a batch straddling two epochs may meet an example twice
            assert len(set(flat)) == len(flat)  # ranks never share an example within a step
        stream += flat
    for e in range(3):
        assert sorted(stream[e * n:(e + 1) * n]) == list(range(n))  # each epoch exactly once
    # the stream does not depend on how it is split over ranks
    single = [i for step in range(steps * world) for i in loader.batch_indices(n, B, step, seed=0)]
    assert single == stream


@pytest.mark.unit
def test_length_bucketing_groups_similar_lengths():
    n, B = 512, 8
    lengths = [(i * 37) % 101 for i in range(n)]
    epoch = [i for step in range(n // B) for i in loader.batch_indices(n, B, step, 0, lengths=lengths)]
    assert sorted(epoch) == list(range(n))

    def spread(order):
        return sum(max(lengths[i] for i in order[k:k + B]) - min(lengths[i] for i in order[k:k + B])
                   for k in range(0, n, B)) / (n // B)
    plain = [i for step in range(n // B) for i in loader.batch_indices(n, B, step, 0)]
    assert spread(epoch) < 0.2 * spread(plain)

# -----------------------------------------------------------------------------
# Anthropic HH-RLHF


def upstream(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_hh_converts_the_fixture_exactly(tmp_path, capsys):
    stats = hh.main([f"--input={FIXTURES}", f"--out_dir={tmp_path}"])
    assert stats["train"][0] == 5 and stats["test"][0] == 2
    assert dict(stats["train"][1]) == {"identical answers": 1, "empty final answer": 1,
                                       "chosen and rejected differ before the last turn": 1,
                                       "no Assistant turn": 1, "ends with a Human turn": 1}
    assert "dropped 5" in capsys.readouterr().out

    def read(name):
        with open(tmp_path / name, encoding="utf-8") as f:
            return [json.loads(line) for line in f]
    prefs = read("prefs_train.jsonl")
    # rendering with our template gives back the upstream transcripts, character for character
    originals = {(r["chosen"], r["rejected"]) for p in ("helpful-base", "harmless-base")
                 for r in upstream(os.path.join(FIXTURES, p, "train.jsonl.gz"))}
    for p in prefs:
        full = (render_prompt(p["prompt"]) + " " + p["chosen"], render_prompt(p["prompt"]) + " " + p["rejected"])
        assert full in originals
    multi = [p for p in prefs if p["prompt"].startswith("Can you help me bake")]
    assert multi[0]["prompt"] == ("Can you help me bake bread?\n\nAssistant: Sure! What kind of "
                                  "bread?\n\nHuman: Sourdough.")
    assert multi[0]["chosen"] == "You need a starter, flour, water and salt."
    assert any("☕" in p["chosen"] and "\n" in p["chosen"] for p in prefs)
    assert read("sft_train.jsonl") == [dict(prompt=p["prompt"], response=p["chosen"]) for p in prefs]
    prompts = [r["prompt"] for r in read("prompts_train.jsonl")]
    assert len(prompts) == 4 == len(set(prompts))  # the repeated France question listed once

    # and the loader reads every output file
    assert len(loader.load_preferences(str(tmp_path / "prefs_test.jsonl"), ENC, 256)) == 2
    assert len(loader.load_sft(str(tmp_path / "sft_train.jsonl"), ENC, 256)) == 5
    assert len(loader.load_prompts(str(tmp_path / "prompts_train.jsonl"), ENC, 256, 64)) == 4


def test_hh_single_file_and_plain_jsonl_input(tmp_path):
    src = tmp_path / "test.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in upstream(os.path.join(FIXTURES, "helpful-base", "test.jsonl.gz"))))
    stats = hh.main([f"--input={src}", f"--out_dir={tmp_path / 'out'}"])
    assert list(stats) == ["test"] and stats["test"][0] == 2
    # a directory with uncompressed files and only one subset
    d = tmp_path / "copy" / "harmless-base"
    d.mkdir(parents=True)
    shutil.copy(src, d / "train.jsonl")
    stats = hh.main([f"--input={tmp_path / 'copy'}", f"--out_dir={tmp_path / 'out2'}"])
    assert list(stats) == ["train"] and stats["train"][0] == 2


@pytest.mark.unit
@pytest.mark.parametrize("text, want", [
    ("\n\nHuman: hi\n\nAssistant: hello", ("hi", "hello")),
    ("\n\nHuman: hi\n\nAssistant: a\n\nHuman: b\n\nAssistant:  two spaces",
     ("hi\n\nAssistant: a\n\nHuman: b", " two spaces")),
    ("\n\nHuman: hi\n\nAssistant: ", (None, "empty final answer")),
    ("\n\nHuman: hi", (None, "no Assistant turn")),
    ("Human: hi\n\nAssistant: x", (None, "does not start with a Human turn")),
    ("\n\nHuman: hi\n\nAssistant: x\n\nHuman: more", (None, "ends with a Human turn")),
])
def test_hh_split_transcript(text, want):
    assert hh.split_transcript(text) == want


def test_hh_download_failure_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(hh, "URL", "http://127.0.0.1:9/{subset}/{split}.jsonl.gz")  # nothing listens
    with pytest.raises(SystemExit, match="--input"):
        hh.main([f"--cache_dir={tmp_path / 'cache'}", f"--out_dir={tmp_path / 'out'}",
                 "--subsets=helpful-base"])
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "cache").rglob("*"))
