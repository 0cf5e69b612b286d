"""
dose.py end to end at the miniature budget: two doses of refusal demonstrations, each its own
world files, SFT, labels, reward model, PPO and DPO, one evaluation per dose, the table, the
JSON and the figure; a second run retrains nothing.
"""

import json
import os

import pytest

import checkpoint
import dose
import pipeline


@pytest.mark.unit
def test_dose_names_and_each_dose_its_own_world():
    import config
    from data.toy import prepare
    assert [dose.dose_name(x) for x in (0.0, 0.03, 0.1, 0.3)] == ["dose0", "dose3", "dose10",
                                                                  "dose30"]
    for x in (0.0, 0.3):
        stages, ran = dose.dose_stages(config.parse_config(dose.DEFAULTS, []), x)
        world = config.parse_config(prepare.DEFAULTS, stages[f"{dose.dose_name(x)}_prepare"][1][1:])
        assert (world.refusal_share, world.safety_share) == (x, prepare.SAFETY_SHARE)
        assert world.out_dir == ran.data


@pytest.mark.unit
def test_the_dose_evaluation_reads_several_answers_a_prompt():
    import config
    ran = dose.dose_stages(config.parse_config(dose.DEFAULTS, []), 0.1)[1]
    for argv, n in (([], 8), (["--eval_samples=2"], 2)):
        cmd = dose.eval_stage(config.parse_config(dose.DEFAULTS, argv), ran)[1]
        assert f"--num_samples_per_prompt={n}" in cmd and f"--out_dir={ran.run}/eval" in cmd


@pytest.mark.slow
def test_mini_dose_sweep_then_skip(tmp_path):
    out = tmp_path / "dose"
    args = [f"--out={out}", "--budget=mini", "--doses=0,0.3"]
    rows = dose.main(args)
    assert [(r["dose"], r["policy"]) for r in rows] == [
        (x, p) for x in (0.0, 0.3) for p in ("sft", "ppo", "dpo")]
    for r in rows:
        for key in ("harmful_compliance", "over_refusal", "gold_benign", "harmful_refusal"):
            assert r[key] is None or 0 <= r[key] <= 1 or key == "gold_benign", (r, key)
    # each dose its own world: only the SFT demonstrations differ
    a, b = (out / "dose0" / "data", out / "dose30" / "data")
    assert (a / "prompts_train.jsonl").read_bytes() == (b / "prompts_train.jsonl").read_bytes()
    assert (a / "sft_train.jsonl").read_bytes() != (b / "sft_train.jsonl").read_bytes()
    assert "Sorry" not in (a / "sft_train.jsonl").read_text()  # no refusal at dose 0
    table = (out / "dose.md").read_text()
    assert "| 30% | ppo |" in table and "| 0% | sft |" in table
    assert json.loads((out / "dose.json").read_text())["rows"] == json.loads(json.dumps(rows))
    assert (out / "dose.png").stat().st_size > 5000
    before = {p: os.path.getmtime(p) for p in out.glob("*/*_toy/ckpt_last.pt")}
    # sft, the pipeline's reward models (an ensemble by default), ppo and dpo per dose
    assert len(before) == 2 * (3 + pipeline.DEFAULTS["rm_members"])
    assert checkpoint.load_checkpoint(str(out / "dose30" / "ppo_toy" / "ckpt_last.pt"))["step"] == 2
    dose.main(args)
    assert {p: os.path.getmtime(p) for p in out.glob("*/*_toy/ckpt_last.pt")} == before
