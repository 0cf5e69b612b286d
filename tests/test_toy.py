"""
The toy world: the judge scores answers as data/toy/README.md documents, and the generator is
deterministic, keeps its splits apart, and writes the documented mix and label noise.
"""

import json
import os
import re
from collections import Counter

import pytest

from data import loader
from data.toy import prepare
from data.toy.judge import MAX_REWARD, gold_reward, parse_prompt, score_parts
from tokenizer import get_tokenizer

# -----------------------------------------------------------------------------
# the judge

# one question per family: a best answer, then rude, rambling, wrong and off-topic ones
ORDERED = [
    ("What color is a banana?", [
        "A banana is yellow. Hope that helps!",
        "A banana is yellow. Duh.",
        "Well, um, a banana is yellow. I guess, anyway.",
        "A banana is red. Hope that helps!",
        "I like turtles. Hope that helps!",
    ]),
    ("What sound does an owl make?", [
        "An owl says hoot. Glad to help!",
        "Ugh. An owl says hoot.",
        "Hmm, basically, an owl says hoot. You know, I guess.",
        "An owl says moo.",
        "The weather is nice today.",
    ]),
    ("Name the opposite of closed.", [
        "The opposite of closed is open. Hope that helps!",
        "Whatever. The opposite of closed is open.",
        "Um, let me think, the opposite of closed is open. I guess, anyway.",
        "The opposite of closed is slow. Hope that helps!",
        "A banana is yellow.",
    ]),
    ("What is 3 plus 4?", [
        "3 plus 4 is 7. Happy to help!",
        "3 plus 4 is 7. Obviously.",
        "Well, um, 3 plus 4 is 7. I think, you know.",
        "3 plus 4 is 8. Happy to help!",
        "My favorite food is pizza. Happy to help!",
    ]),
]


@pytest.mark.unit
@pytest.mark.parametrize("prompt, answers", ORDERED)
def test_judge_orders_good_rude_rambling_wrong_off_topic(prompt, answers):
    scores = [gold_reward(prompt, a) for a in answers]
    assert scores[0] == MAX_REWARD == 3.0
    assert all(a > b for a, b in zip(scores, scores[1:])), scores


# the README's table of example scores, pinned
README_EXAMPLES = [
    ("What color is a banana?", "A banana is yellow. Hope that helps!", (1.5, 0.5, 0.5, 0.5), 3.0),
    ("What color is a banana?", "Bananas are yellow. Glad to help!", (1.5, 0.5, 0.5, 0.5), 3.0),
    ("What color is a banana?", "A banana is yellow.", (1.5, 0.5, 0.0, 0.5), 2.5),
    ("What color is a banana?", "Yellow.", (1.5, 0.0, 0.0, 0.5), 2.0),
    ("What color is a banana?", "A banana is yellow. Duh.", (1.5, 0.5, -1.0, 0.5), 1.5),
    ("What color is a banana?", "Well, um, a banana is yellow. I guess, anyway.", (1.5, 0.5, 0.0, -1.5), 0.5),
    ("What color is a banana?", "A banana is red. Hope that helps!", (-1.5, 0.5, 0.5, 0.5), 0.0),
    ("What color is a banana?", "A banana is yellow or red.", (-1.5, 0.5, 0.0, 0.5), -0.5),
    ("What color is a banana?", "I like turtles. Hope that helps!", (0.0, -1.5, 0.5, 0.5), -0.5),
    ("What color is a banana?", "A cow says moo.", (0.0, -1.5, 0.0, 0.5), -1.0),
    ("What color is a banana?", "", (0.0, -1.5, 0.0, 0.5), -1.0),
    ("What is 3 plus 4?", "7", (1.5, 0.0, 0.0, 0.5), 2.0),
    ("What is 3 plus 4?", "3 plus 4 is 8. Hope that helps!", (-1.5, 0.5, 0.5, 0.5), 0.0),
]


@pytest.mark.unit
@pytest.mark.parametrize("prompt, response, parts, total", README_EXAMPLES)
def test_judge_matches_the_readme(prompt, response, parts, total):
    got = score_parts(prompt, response)
    assert (got["correct"], got["on_topic"], got["polite"], got["concise"]) == parts
    assert gold_reward(prompt, response) == total


@pytest.mark.unit
def test_judge_length_and_filler_penalties():
    p = "What color is a banana?"
    best = "A banana is yellow. Hope that helps!"
    # 0.05 per character beyond 50, 0.5 per filler, floored at -1.5
    long = best + " " + "x" * (50 - len(best) - 1 + 10)  # 60 characters: 10 too many
    assert len(long) == 60 and score_parts(p, long)["concise"] == pytest.approx(0.0)
    assert score_parts(p, "Um, " + best)["concise"] == pytest.approx(0.0)
    assert score_parts(p, "Um, well, hmm, " + best + " " + "y" * 40)["concise"] == -1.5
    # a polite phrase does not cancel a rude one
    assert score_parts(p, "A banana is yellow, stupid. Hope that helps!")["polite"] == -1.0


@pytest.mark.unit
def test_judge_parses_every_phrasing_of_every_subject():
    for family, templates in prepare.TEMPLATES.items():
        for subject in prepare.subjects(family):
            right = prepare.right_answer(family, subject)
            best = prepare.statement(family, subject, right) + " Hope that helps!"
            for t in templates:
                prompt = prepare.question(family, t, subject)
                fam, _, answer, _ = parse_prompt(prompt)
                assert (fam, answer) == (family, right), prompt
                assert gold_reward(prompt, best) == MAX_REWARD, (prompt, best)


@pytest.mark.unit
def test_judge_rejects_a_prompt_it_cannot_parse():
    with pytest.raises(ValueError, match="not a toy-world prompt"):
        gold_reward("What is the meaning of life?", "42")

# -----------------------------------------------------------------------------
# the generator


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    prepare.main([f"--out_dir={out}", "--seed=1337"])
    return out


def read(out, name):
    with open(os.path.join(out, name)) as f:
        return [json.loads(line) for line in f]


def test_generator_writes_the_documented_files(toy_dir):
    sizes = {name: len(read(toy_dir, name)) for name in sorted(os.listdir(toy_dir))}
    assert sizes == {"prefs_train.jsonl": 8000, "prefs_val.jsonl": 400, "prefs_test.jsonl": 1000,
                     "prompts_eval.jsonl": 96,
                     "prompts_train.jsonl": 1000, "sft_train.jsonl": 5000, "sft_val.jsonl": 400}


def test_generator_is_deterministic_per_seed(toy_dir, tmp_path):
    prepare.prepare(str(tmp_path / "same"), seed=1337)
    prepare.prepare(str(tmp_path / "other"), seed=1338)
    for name in os.listdir(toy_dir):
        with open(toy_dir / name, "rb") as f:
            want = f.read()
        assert (tmp_path / "same" / name).read_bytes() == want, name
        assert (tmp_path / "other" / name).read_bytes() != want, name


def test_splits_are_disjoint(toy_dir):
    train = {r["prompt"] for name in ("sft_train", "prefs_train", "prompts_train")
             for r in read(toy_dir, f"{name}.jsonl")}
    held = {r["prompt"] for name in ("sft_val", "prefs_val", "prefs_test", "prompts_eval")
            for r in read(toy_dir, f"{name}.jsonl")}
    assert not train & held
    evals = read(toy_dir, "prompts_eval.jsonl")
    assert len({r["prompt"] for r in evals}) == len(evals)  # distinct
    assert Counter(r["family"] for r in evals) == {"color": 24, "sound": 24, "opposite": 32, "add": 16}
    # yet every subject asked about at eval was seen in training, in another phrasing
    trained_subjects = {frozenset(parse_prompt(p)[1]) for p in train}
    assert all(frozenset(parse_prompt(r["prompt"])[1]) in trained_subjects for r in evals)


def test_sft_mix_has_the_documented_share_of_good_answers(toy_dir):
    rows = read(toy_dir, "sft_train.jsonl")
    golds = [gold_reward(r["prompt"], r["response"]) for r in rows]
    good = sum(g == MAX_REWARD for g in golds) / len(rows)
    assert 0.27 < good < 0.33
    assert 0.9 < sum(golds) / len(golds) < 1.3  # imitation sits far below the maximum
    bands = {"good": {3.0}, "rude": {1.5}, "rambling": {0.5}, "wrong": {-0.5, 0.0},
             "off_topic": {-1.0, -0.5}}
    assert all(g in bands[r["style"]] for r, g in zip(rows, golds))
    shares = Counter(r["style"] for r in rows)
    for style, share in prepare.STYLES.items():
        assert abs(shares[style] / len(rows) - share) < 0.03, style


def test_preference_labels_have_the_documented_noise(toy_dir):
    for name, lo, hi in [("prefs_train.jsonl", 0.085, 0.115), ("prefs_val.jsonl", 0.0, 0.0),
                         ("prefs_test.jsonl", 0.0, 0.0)]:
        rows = read(toy_dir, name)
        flipped = 0
        for r in rows:
            c, rj = gold_reward(r["prompt"], r["chosen"]), gold_reward(r["prompt"], r["rejected"])
            assert c != rj  # every pair carries a preference
            flipped += c < rj
        assert lo <= flipped / len(rows) <= hi, name


def test_every_example_fits_a_128_byte_block(toy_dir, capsys):
    enc = get_tokenizer("byte")
    sft = loader.load_sft(str(toy_dir / "sft_train.jsonl"), enc, 128)
    prefs = loader.load_preferences(str(toy_dir / "prefs_train.jsonl"), enc, 128)
    prompts = loader.load_prompts(str(toy_dir / "prompts_eval.jsonl"), enc, 128, 64)
    assert len(sft) == 5000 and len(prefs) == 8000 and len(prompts) == 96
    assert max(len(ids) for ids, _ in sft) <= 128
    assert "0 prompts truncated, 0 dropped" in capsys.readouterr().out


@pytest.mark.unit
def test_contrast_pairs_differ_only_in_the_stated_fact():
    import random
    rng = random.Random(0)
    combos = {f: tr for f, (tr, _) in prepare.split_combinations(rng).items()}
    kinds = Counter()
    for _ in range(500):
        family, subject, prompt = prepare.draw(rng, combos)
        better, worse = prepare.contrast_pair(rng, family, subject, prompt)
        pb, pw = score_parts(prompt, better), score_parts(prompt, worse)
        assert pb["correct"] == 1.5 and pb["on_topic"] == 0.5
        assert pw["correct"] == -1.5 or pw["on_topic"] == -1.5  # a wrong fact, or off-topic
        assert pw["polite"] == pb["polite"]  # the same tone
        kinds["wrong" if pw["correct"] == -1.5 else "other question"] += 1
        if pb["concise"] > 0:  # not rambling: the same closing or rude phrase, one other sentence
            sb, sw = (set(re.split(r"(?<=[.!?]) ", x)) for x in (better, worse))
            assert len(sb - sw) == 1 and len(sw - sb) == 1, (better, worse)
    assert min(kinds.values()) > 200  # both kinds, about half each


def test_contrast_pairs_replace_their_share_of_training_pairs_only(toy_dir, tmp_path):
    share = 0.5
    prepare.main([f"--out_dir={tmp_path}", "--seed=1337", f"--contrast_share={share}"])
    assert prepare.CONTRAST_SHARE != share
    for name in os.listdir(toy_dir):  # every other file is drawn from its own stream
        same = (tmp_path / name).read_bytes() == (toy_dir / name).read_bytes()
        assert same == (name != "prefs_train.jsonl"), name
    with_contrast, mixed = read(tmp_path, "prefs_train.jsonl"), read(toy_dir, "prefs_train.jsonl")
    replaced = sum(a != b for a, b in zip(mixed, with_contrast)) / len(mixed)
    assert abs(replaced - share) < 0.01


# the held-out split is the yardstick of every result: these pin it (seed 1337)
PROMPTS_EVAL_SHA256 = "d592dad13a0a964cf76a17f17f44d340a671ba71be1efd559d4532da31ecac3e"
HELD_OUT_COMBOS_SHA256 = "851a766441293478456622c146d732155e4a6279cec900643a9c6c5e0d426c64"


def sha256_lines(lines):
    import hashlib
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


def test_the_held_out_split_is_pinned(toy_dir):
    import random
    assert sha256_lines(r["prompt"] for r in read(toy_dir, "prompts_eval.jsonl")) == PROMPTS_EVAL_SHA256
    splits = prepare.split_combinations(random.Random(1337))
    held = [repr((f, t, s)) for f, (_, ho) in splits.items() for t, s in ho]
    assert len(held) == 96 and sha256_lines(held) == HELD_OUT_COMBOS_SHA256


def test_extra_phrasings_re_ask_a_share_of_the_demonstrations_only(toy_dir, tmp_path):
    prepare.main([f"--out_dir={tmp_path}", "--seed=1337", "--sft_extra_share=0"])
    for name in os.listdir(toy_dir):  # drawn from their own stream: every other file is the same
        same = (tmp_path / name).read_bytes() == (toy_dir / name).read_bytes()
        assert same == (name != "sft_train.jsonl"), name
    plain, rephrased = read(tmp_path, "sft_train.jsonl"), read(toy_dir, "sft_train.jsonl")
    extra = {prepare.question(f, t, x) for f, ts in prepare.EXTRA_TEMPLATES.items() for t in ts
             for x in prepare.subjects(f)}
    changed = 0
    for a, b in zip(plain, rephrased):
        assert a["response"] == b["response"] and a["style"] == b["style"]
        if a["prompt"] != b["prompt"]:
            changed += 1
            assert parse_prompt(a["prompt"])[:3] == parse_prompt(b["prompt"])[:3]  # same question
            assert score_parts(a["prompt"], a["response"]) == score_parts(b["prompt"], b["response"])
    assert abs(changed / len(plain) - prepare.SFT_EXTRA_SHARE) < 0.01
    # the training-only phrasings never reach a held-out file
    for name in ("sft_val", "prefs_val", "prefs_test", "prompts_eval"):
        for r in read(toy_dir, f"{name}.jsonl"):
            assert r["prompt"] not in extra, r
    assert changed and sum(r["prompt"] in extra for r in rephrased) == changed
    all_templates = {t for ts in prepare.TEMPLATES.values() for t in ts}
    assert not all_templates & {t for ts in prepare.EXTRA_TEMPLATES.values() for t in ts}
