"""
Constitutional AI (data/toy/cai.py): the worked revisions refuse harm and answer lookalikes, the
principles are drawn seeded and cover the constitution, the judge learns from no human
harmlessness comparison, the soft labels average both orders and every principle, SL-CAI's data
holds the policy's own revisions, and the pipeline runs SL-CAI and RL-CAI end to end.
"""

import json
import math

import pytest
import torch

import ai_feedback
import ai_stages
import checkpoint
import config
import pipeline
from data.toy import cai, judge, label, prepare, rlaif
from data.toy.prepare import write_jsonl
from tests.test_label import ENC, tiny_policy
from tests.test_rlaif import SlotOneJudge

PRINCIPLES = cai.read_constitution(cai.CONSTITUTION)


@pytest.mark.unit
def test_the_worked_revisions_refuse_harm_and_never_a_lookalike():
    rows = cai.revision_examples(1337, 200, PRINCIPLES)
    harmful = [r for r in rows if r["family"] == "harmful"]
    look = [r for r in rows if r["family"] == "lookalike"]
    assert len(harmful) == len(look) == 100
    assert all(judge.parse_prompt(r["prompt"])[0] == r["family"] for r in rows)
    # a complying answer to a harmful request revises into a polite refusal (the judge's best)
    complied = [r for r in harmful if judge.gold_cost(r["prompt"], r["answer"])]
    assert len(complied) > 30
    for r in harmful:
        assert judge.gold_cost(r["prompt"], r["revision"]) == 0 and judge.is_refusal(r["revision"])
        assert judge.gold_reward(r["prompt"], r["revision"]) == judge.MAX_REWARD
    # a lookalike never revises into a refusal; a refusal of one revises into the answer
    refused = [r for r in look if judge.is_over_refusal(r["prompt"], r["answer"])]
    assert len(refused) > 10
    for r in look:
        assert not judge.is_refusal(r["revision"])
        assert judge.gold_reward(r["prompt"], r["revision"]) == judge.MAX_REWARD
    # an answer already as the constitution asks stays as it is, and makes no comparison
    kept = [r for r in rows if r["answer"] == r["revision"]]
    assert kept and len(cai.revision_pairs(rows)) == len(rows) - len(kept)
    # on training requests only: no held-out (phrasing, subject) of the evaluation
    held = {p["prompt"] for p in prepare.make_world(1337)["prompts_eval_safety.jsonl"]}
    assert not {r["prompt"] for r in rows} & held


@pytest.mark.unit
def test_principles_are_drawn_seeded_and_cover_the_constitution():
    draw = cai.draw_principles(PRINCIPLES, 200, 1337, "revisions")
    assert draw == cai.draw_principles(PRINCIPLES, 200, 1337, "revisions")
    assert draw != cai.draw_principles(PRINCIPLES, 200, 1338, "revisions")
    assert draw != cai.draw_principles(PRINCIPLES, 200, 1337, "examples")  # streams apart
    assert set(draw) == set(PRINCIPLES) and 3 <= len(PRINCIPLES) <= 6
    assert {r["principle"] for r in cai.revision_examples(1, 50, PRINCIPLES)} == set(PRINCIPLES)


def test_a_bad_constitution_or_record_fails_in_one_line_naming_its_line(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("# a comment\nBe kind.\n" + "x" * 49 + "\n")
    with pytest.raises(config.ConfigError, match=r"c\.txt:3: a principle of 49 characters"):
        cai.read_constitution(str(path))
    path.write_text("# nothing but a comment\n\n")
    with pytest.raises(config.ConfigError, match="no principle"):
        cai.read_constitution(str(path))
    bad = write_jsonl(tmp_path / "e.jsonl", [dict(prompt="How do I kill time?", answer="a",
                                                  principle="p", revision="b"),
                                             dict(prompt="How do I kill time?", answer="a")])
    with pytest.raises(config.DataError, match=r"e\.jsonl:2: a record needs the text fields"):
        cai.read_records(bad, ("prompt", "answer", "principle", "revision"))


@pytest.mark.unit
def test_principle_ensemble_by_hand():
    ab = torch.tensor([[0.9, 0.2], [0.6, 0.5]])  # (principles, pairs): P(slot 1) with a in slot 1
    ba = torch.tensor([[0.3, 0.7], [0.6, 0.5]])  # with b in slot 1
    # per principle 0.5 (ab + 1 - ba): [0.8, 0.25] and [0.5, 0.5]; then their mean
    assert ai_feedback.principle_ensemble(ab, ba).tolist() == pytest.approx([0.65, 0.375])
    one = ai_feedback.principle_ensemble(ab[:1], ba[:1])  # one principle: plain debiasing
    assert one.tolist() == pytest.approx(ai_feedback.debiased_preference(ab[0], ba[0]).tolist())


class PrincipledJudge(SlotOneJudge):
    """SlotOneJudge that favours `favour` in slot 1 only when asked by `principle`."""

    def __init__(self, favour, principle):
        super().__init__(favour)
        self.principle = principle

    def forward(self, idx):
        logits = SlotOneJudge.forward(self, idx)
        for b in range(idx.shape[0]):
            if self.principle not in ENC.decode(idx[b].tolist()):
                logits[b, :, ord("1")] = 0.0  # the other principle: pure slot-1 bias
        return logits


@pytest.mark.unit
def test_the_soft_label_averages_orders_and_principles_on_a_fake_judge():
    prompt, better, worse = "How do I steal a bike?", "Sorry, I can't help with that.", "Ugh."
    fake = PrincipledJudge(better, PRINCIPLES[0])
    annotate = rlaif.judge_annotator((fake, "byte"), orders=2, gold=label.GOLD,
                                     principles=PRINCIPLES[:2])
    s3, s2 = 1 / (1 + math.exp(-3)), 1 / (1 + math.exp(-2))
    # principle 0: sigma(3) in one order, 1 - sigma(2) in the other; principle 1: 0.5 (bias)
    p = 0.5 * (0.5 * (s3 + 1 - s2) + 0.5)
    assert annotate(prompt, [worse, better]) == [-round((1 - p) * 1e6), -round(p * 1e6)]
    assert annotate.summary()["agree_gold"] == 1.0


def test_the_judges_data_holds_no_human_harmlessness_comparison(tmp_path):
    world = tmp_path / "world"
    prepare.prepare(str(world))
    rules = f"--constitution={cai.CONSTITUTION}"  # wherever the tests run from
    cai.main([f"--demos={world}/sft_train.jsonl", f"--out_dir={tmp_path}/cai", "--n_examples=40",
              rules])
    cai.main(["--make=judge", rules, f"--pairs={world}/prefs_train.jsonl", "--budget=50",
              f"--val_pairs={world}/prefs_val.jsonl", f"--examples={tmp_path}/cai/examples.jsonl",
              f"--demos={world}/sft_train.jsonl", f"--out_dir={tmp_path}/judge"])
    manifest = json.loads((tmp_path / "judge" / "judge_manifest.json").read_text())
    assert manifest["harmlessness_comparisons"] == 0 and manifest["helpfulness_comparisons"] == 50
    examples = [json.loads(line) for line in open(tmp_path / "cai" / "examples.jsonl")]
    revisions = {(r["prompt"], r["chosen"], r["rejected"]) for r in cai.revision_pairs(examples)}
    assert manifest["revision_comparisons"] == len(revisions) > 0
    rows = [json.loads(line) for line in open(tmp_path / "judge" / "judge_train.jsonl")]
    judged = [r for r in rows if "\n1: " in r["prompt"]]
    assert len(judged) == 2 * (50 + len(revisions)) == manifest["judge_examples"]
    # every judged pair of a harmful or lookalike request is a worked revision, never a person's
    safety = [r for r in judged if not cai.is_benign(r["prompt"].split("\n")[0])]
    assert len(safety) == 2 * len(revisions)
    for r in safety:
        q, one, two, ask = r["prompt"].split("\n")
        better, worse = (one, two) if r["response"] == "Better: 1" else (two, one)
        assert (q, better[3:], worse[3:]) in revisions
    assert all(r["prompt"].split("\n")[-1].split("? ", 1)[1] in PRINCIPLES for r in judged)


def fake_sampler(model, enc, rows, k, cfg, stream, device):
    """A helpful-only policy that complies, then revises every answer into a refusal."""
    texts = [enc.decode(r["ids"]) for r in rows]
    return [["Sorry, I can't help with that."] if "Revise the answer" in t else
            ["Steal a bike with cutters. Glad to help!"] for t in texts]


def test_sl_cai_data_is_the_policys_own_revisions_and_benign_demos(tmp_path, monkeypatch):
    _, policy = tiny_policy(tmp_path)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [dict(prompt=p) for p in [
        "How do I steal a bike?", "What is 2 plus 2?", "How can I rob a bank?",
        "How do I kill time?"]])
    demos = write_jsonl(tmp_path / "demos.jsonl", [
        dict(prompt="What is 2 plus 2?", response="2 plus 2 is 4."),
        dict(prompt="How do I rob a bank?", response="Rob a bank in a mask."),
        dict(prompt="What does a cow say?", response="A cow says moo.")])
    monkeypatch.setattr(cai, "sample_answers", fake_sampler)
    out = tmp_path / "cai"
    cai.main(["--make=revisions", f"--constitution={cai.CONSTITUTION}", f"--policy={policy}",
              f"--prompts={prompts}", f"--demos={demos}", f"--out_dir={out}", "--block_size=128",
              "--max_new_tokens=16", "--demo_share=0.4"])
    rows = [json.loads(line) for line in open(out / "revisions.jsonl")]
    assert [r["prompt"] for r in rows] == ["How do I steal a bike?", "How can I rob a bank?",
                                           "How do I kill time?"]  # the benign prompt is not asked
    assert all(r["principle"] in PRINCIPLES for r in rows)
    train = [json.loads(line) for line in open(out / "sl_cai_train.jsonl")]
    # round(0.4 / 0.6 * 3) = 2 benign demonstrations; the harmful one never joins
    assert train[:3] == [dict(prompt=r["prompt"], response=r["revision"]) for r in rows]
    assert sorted(d["prompt"] for d in train[3:]) == ["What does a cow say?", "What is 2 plus 2?"]
    s = json.loads((out / "revisions_manifest.json").read_text())["summary"]
    assert (s["compliance_before"], s["compliance_after"]) == (1.0, 0.0)
    assert (s["over_refusal_before"], s["over_refusal_after"]) == (0.0, 1.0)  # measured, kept


@pytest.mark.unit
def test_comparisons_are_counted_by_kind(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [
        dict(prompt="How do I steal a bike?", responses=["a", "b", "c"], ranks=[1, 2, 2]),
        dict(prompt="How do I kill time?", responses=["a", "b", "c"], ranks=[1, 2, 3]),
        dict(prompt="What is 1 plus 1?", chosen="2.", rejected="3.")])
    assert ai_stages.comparisons_by_kind(path) == (3 + 1, 2)  # a lookalike is helpfulness


def test_cai_is_a_chain_from_the_revising_policy_to_rl_cai(tmp_path):
    cfg = config.parse_config(pipeline.DEFAULTS, ["--methods=cai", f"--out={tmp_path}/o"])
    stages, _ = pipeline.build_stages(cfg, {"cai"})
    args = {n: dict(a[2:].split("=", 1) for a in cmd if a.startswith("--"))
            for n, (_, cmd) in stages.items()}
    assert stages["cai_sft"][0] == ["cai_examples"] and args["cai_sft"]["block_size"] == "320"
    assert args["cai_revise"]["policy"] == args["sl_cai"]["init_from"] == \
        f"{args['cai_sft']['out_dir']}/ckpt_best.pt"
    assert args["label_cai"]["policy"] == args["rl_cai"]["init_from"] == \
        f"{args['sl_cai']['out_dir']}/ckpt_last.pt"
    assert args["label_cai"]["annotator"] == f"cai:{args['cai_judge']['out_dir']}/ckpt_best.pt"
    assert args["cai_rm"]["train_data"].endswith("cai_labels/cai_train.jsonl")
    assert args["rl_cai"]["reward_model"] == f"{args['cai_rm']['out_dir']}/ckpt_best.pt"
    # the judge learns from the worked revisions, never from the people's safety rankings
    assert "onpolicy" not in " ".join(stages["cai_judge_data"][1] + stages["cai_judge"][1])
    assert [p.split(":")[0] for p in args["eval"]["policies"].split(",")][-3:] == \
        ["cai_sft", "sl_cai", "rl_cai"]
    default, _ = pipeline.build_stages(config.parse_config(pipeline.DEFAULTS, []), {"grpo"})
    assert not any("cai" in n for n in default)


@pytest.mark.slow
def test_mini_pipeline_runs_sl_cai_and_rl_cai(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    pipeline.main(["--scale=mini", "--out=runs", "--data_dir=runs/data", "--methods=cai",
                   "--rm_members=1", "--plots=False"])
    res = json.loads((tmp_path / "runs" / "eval" / "results.json").read_text())["policies"]
    assert {"sft", "ppo", "cai_sft", "sl_cai", "rl_cai"} <= set(res)
    table = (tmp_path / "runs" / "eval" / "cai.md").read_text()
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in table.splitlines()
            if line.startswith("| ") and "policy" not in line}
    assert list(rows) == ["sft", "ppo", "cai_sft", "sl_cai", "rl_cai"]
    assert rows["rl_cai"][-1] == "0 |" and rows["ppo"][-1] != "0 |"  # harmlessness comparisons
    # RLHF's labels: every round's rankings that the evaluated (last round's) PPO's reward model saw
    rm_data = checkpoint.load_checkpoint(str(tmp_path / "runs" / "rm_r2_toy" / "ckpt_best.pt")
                                         )["config"]["train_data"].split(",")
    assert len(rm_data) == 2
    counts = [ai_stages.comparisons_by_kind(str(tmp_path / p)) for p in rm_data]
    assert rows["ppo"][6] == str(sum(h for h, _ in counts))
    assert rows["ppo"][7] == f"{sum(s for _, s in counts)} |"
    assert rows["sl_cai"][5] == "200"  # the worked revisions
    assert "Constitutional AI" in capsys.readouterr().out
