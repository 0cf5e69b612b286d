"""
SPIN's data step (data/toy/spin.py): the demonstration is chosen, the policy's own sample
rejected; identical and empty samples make no pair; the files read as pairs and train_dpo.py
trains on them unchanged with the policy as its own reference.
"""

import json

import pytest

import config
from data import loader
from data.toy import spin
from data.toy.prepare import write_jsonl
from tests.test_label import ENC, tiny_policy

DEMOS = [dict(prompt="What color is a banana?", response="A banana is yellow. Hope that helps!"),
         dict(prompt="What does a cow say?", response="A cow says moo. Duh."),
         dict(prompt="What is 2 plus 2?", response="2 plus 2 is 5."),
         dict(prompt="What is 1 plus 3?", response="1 plus 3 is 4. Glad to help!")]


@pytest.mark.unit
def test_spin_pairs_choose_the_demonstration_and_skip_identical_and_empty_samples():
    samples = ["I like turtles.", "A cow says moo. Duh.", None, "1 plus 3 is 4."]
    pairs, skipped = spin.spin_pairs(DEMOS, samples)
    assert pairs == [dict(prompt=DEMOS[0]["prompt"], chosen=DEMOS[0]["response"],
                          rejected="I like turtles."),
                     dict(prompt=DEMOS[3]["prompt"], chosen=DEMOS[3]["response"],
                          rejected="1 plus 3 is 4.")]
    assert skipped == 2


@pytest.mark.unit
def test_gold_summary_measures_how_often_the_sample_is_better():
    pairs = [dict(prompt="What is 2 plus 2?", chosen="2 plus 2 is 5.",                 # wrong: 0.5
                  rejected="2 plus 2 is 4. Hope that helps!"),                          # good: 3.0
             dict(prompt="What color is a banana?", chosen="A banana is yellow. Hope that helps!",
                  rejected="I like turtles.")]                                          # -1.0
    s = spin.gold_summary(pairs)
    assert s["sample_better"] == 0.5
    assert s["gold_sample"] == pytest.approx((3.0 - 1.0) / 2)


def fake_sampler(model, enc, prompts, k, cfg, stream, device):
    """The second prompt's demonstration itself, an empty answer to the third, small talk else."""
    return [[DEMOS[1]["response"]] if p["prompt"] == DEMOS[1]["prompt"] else
            [] if p["prompt"] == DEMOS[2]["prompt"] else [f"I like turtles {stream}."]
            for p in prompts]


def test_the_pairs_are_written_as_a_set_and_read_as_preferences(tmp_path, monkeypatch):
    _, policy = tiny_policy(tmp_path)
    demos = write_jsonl(tmp_path / "demos.jsonl", DEMOS)
    val = write_jsonl(tmp_path / "val.jsonl", DEMOS[:2])
    monkeypatch.setattr(spin, "sample_answers", fake_sampler)
    out = tmp_path / "out"
    spin.main([f"--policy={policy}", f"--demos={demos}", f"--val_demos={val}", f"--out_dir={out}",
               "--prefix=spin1", "--max_pairs=3"])
    rows = [json.loads(line) for line in open(out / "spin1_train.jsonl")]
    assert rows == [dict(prompt=DEMOS[0]["prompt"], chosen=DEMOS[0]["response"],
                         rejected="I like turtles 0.")]  # max_pairs=3: the fourth is not asked
    assert len(loader.load_preferences(str(out / "spin1_val.jsonl"), ENC, 128)) == 1
    manifest = json.loads((out / "spin1_manifest.json").read_text())
    assert manifest["summary"]["train"]["no_pair"] == 2
    assert manifest["summary"]["val"]["pairs"] == 1
    # the same settings again: the same bytes; other settings need --overwrite=True
    spin.main([f"--policy={policy}", f"--demos={demos}", f"--val_demos={val}", f"--out_dir={out}",
               "--prefix=spin1", "--max_pairs=3"])
    with pytest.raises(config.ConfigError, match="overwrite"):
        spin.main([f"--policy={policy}", f"--demos={demos}", f"--val_demos={val}",
                   f"--out_dir={out}", "--prefix=spin1", "--max_pairs=2"])


def test_bad_settings_and_data_are_one_line_errors(tmp_path):
    _, policy = tiny_policy(tmp_path)
    with pytest.raises(config.ConfigError, match="'max_pairs' must be"):
        spin.main([f"--policy={policy}", "--max_pairs=0"])
    with pytest.raises(config.ConfigError, match="'prefix' must be"):
        spin.main([f"--policy={policy}", "--prefix=../x"])
    bad = write_jsonl(tmp_path / "bad.jsonl", [dict(prompt="Hello there", response="Hi.")])
    with pytest.raises(config.DataError, match="bad.jsonl:1: 'Hello there' is not a toy-world"):
        spin.main([f"--policy={policy}", f"--demos={bad}", "--val_demos=",
                   f"--out_dir={tmp_path / 'o'}"])
