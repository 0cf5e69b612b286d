"""
RLAIF's learned judge (data/toy/rlaif.py): its training format, the soft label read from the
log-probs of "1" and "2", position debiasing, and the judge as label.py's annotator.
"""

import json
import random

import pytest
import torch

from data.toy import label, rlaif
from data.toy.prepare import write_jsonl
from tests.test_label import ENC, PROMPT, ANSWERS, tiny_policy


@pytest.mark.unit
def test_judge_records_put_the_chosen_answer_in_each_slot():
    pair = dict(prompt="What is 2 plus 2?", chosen="4.", rejected="5.")
    both = rlaif.judge_records(pair, True, random.Random(0))
    assert both == [
        dict(prompt="What is 2 plus 2?\n1: 4.\n2: 5.\nWhich answer is better?", response="Better: 1"),
        dict(prompt="What is 2 plus 2?\n1: 5.\n2: 4.\nWhich answer is better?", response="Better: 2")]
    one = [rlaif.judge_records(pair, False, random.Random(i))[0] for i in range(40)]
    assert {r["response"] for r in one} == {"Better: 1", "Better: 2"}  # a coin, seeded
    assert all(r in both for r in one)


@pytest.mark.unit
def test_the_verdict_differs_in_the_slot_token_alone():
    prefix, one, two = rlaif.verdict_ids(ENC)
    assert ENC.decode(prefix) == " Better: " and (ENC.decode([one]), ENC.decode([two])) == ("1", "2")


class SlotOneJudge(torch.nn.Module):
    """A judge that always says "1": log p("1") = 0 and log p("2") = -2 wherever it is read,
    plus a little in favour of the answer of `favour` when it is in slot 1."""

    def __init__(self, favour=None):
        super().__init__()
        self.config = type("C", (), dict(block_size=512))()
        self.favour = favour

    def forward(self, idx):
        B, T = idx.shape
        logits = torch.full((B, T, ENC.n_vocab), -30.0)
        logits[:, :, ord("1")], logits[:, :, ord("2")] = 0.0, -2.0
        if self.favour is not None:
            for b in range(B):
                text = ENC.decode(idx[b].tolist())
                if f"1: {self.favour}\n" in text:
                    logits[b, :, ord("1")] = 1.0
        return logits


@pytest.mark.unit
def test_a_judge_that_always_says_one_is_all_position_bias():
    answers = [ANSWERS["best"], ANSWERS["rude"], ANSWERS["off"]]
    # one order: the earlier answer always wins, P = sigma(2) = 0.881 for every pair
    one = rlaif.judge_annotator((SlotOneJudge(), "byte"), orders=1, gold=label.GOLD)
    # wins: 2 s, s + (1 - s), 2 (1 - s) with s = 0.880797, as ints (x 1e6), lower = better
    assert one(PROMPT, answers) == [-1761594, -1000000, -238406]
    s = one.summary()
    assert s["agree_gold_one_order"] == 1.0  # gold order happens to be the sample order
    # both orders: averaged, every pair is 0.5: the bias cancels and nothing is preferred
    both = label.annotator_contract(rlaif.judge_annotator((SlotOneJudge(), "byte"), orders=2,
                                                          gold=label.GOLD), "judge")
    assert label.label_prompt_by(both, PROMPT, answers) == (None, [])
    judge = rlaif.judge_annotator((SlotOneJudge(), "byte"), orders=2, gold=label.GOLD)
    judge(PROMPT, answers[::-1])
    s = judge.summary()
    assert s["slot1_share"] == 1.0 and s["agreement"] == 0.0 and s["agree_gold"] == 0.5
    assert s["agree_gold_one_order"] == 0.0  # reversed: slot 1 always holds the worse answer


@pytest.mark.unit
def test_debiasing_keeps_what_the_judge_knows_beyond_the_slot():
    answers = [ANSWERS["rude"], ANSWERS["best"]]  # gold 1.5, 3.0
    judge = rlaif.judge_annotator((SlotOneJudge(favour=ANSWERS["best"]), "byte"), orders=2,
                                  gold=label.GOLD)
    ranks = label.annotator_contract(judge, "judge")(PROMPT, answers)
    assert ranks == [2, 1]  # best wins: sigma(3) in slot 1 beats sigma(2) in slot 1
    assert judge.summary()["agree_gold"] == 1.0


def test_the_judges_data_counts_its_budget(tmp_path):
    pairs = write_jsonl(tmp_path / "p.jsonl", [dict(prompt=f"What is {i} plus 1?", chosen=f"{i + 1}.",
                                                    rejected="0.") for i in range(1, 260)])
    demos = write_jsonl(tmp_path / "d.jsonl", [dict(prompt="What is 1 plus 1?", response="2.")])
    out = tmp_path / "out"
    rlaif.main([f"--pairs={pairs}", f"--val_pairs={pairs}", f"--demos={demos}", f"--out_dir={out}",
                "--budget=30"])
    rows = [json.loads(line) for line in open(out / "judge_train.jsonl")]
    assert len(rows) == 1 + 2 * 30 and rows[0] == dict(prompt="What is 1 plus 1?", response="2.")
    assert len(open(out / "judge_val.jsonl").readlines()) == 2 * rlaif.N_VAL
    assert json.loads((out / "judge_manifest.json").read_text())["labelled_pairs"] == 30


def test_a_trained_judge_checkpoint_labels_through_label_py(tmp_path, monkeypatch):
    _, policy = tiny_policy(tmp_path)  # an untrained judge: any ranks, but the contract holds
    from tests.test_label import fake_sampler
    train = write_jsonl(tmp_path / "prompts_train.jsonl",
                        [dict(prompt=p) for p in ["What color is a crow?", "What is 2 plus 2?"] * 3])
    monkeypatch.setattr(label, "sample_answers", fake_sampler)
    label.main([f"--policy={policy}", f"--train_prompts={train}", "--eval_prompts=", "--k=4",
                "--num_val_prompts=0", f"--out_dir={tmp_path / 'o'}", f"--annotator=judge:{policy}"])
    manifest = json.loads((tmp_path / "o" / "onpolicy_manifest.json").read_text())
    assert {"slot1_share", "agreement", "agree_gold", "agree_gold_one_order"} <= set(manifest["judge"])
    assert policy in manifest["inputs"]
