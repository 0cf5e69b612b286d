"""The whole pipeline, end to end, at a miniature scale: every stage runs as a real subprocess."""

import json
import os

import pytest

import pipeline


@pytest.mark.slow
def test_mini_pipeline_runs_every_stage(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the stages must not depend on the caller's directory
    pipeline.main(["--scale=mini", "--out=runs", "--data_dir=runs/data"])
    out = tmp_path / "runs"
    for stage in ("sft", "rm", "ppo", "dpo"):
        assert (out / f"{stage}_toy" / "log.jsonl").stat().st_size > 0, stage
    assert (out / "ppo_toy" / "ckpt_iter1.pt").exists() and (out / "ppo_toy" / "ckpt_iter2.pt").exists()
    res = json.loads((out / "eval" / "results.json").read_text())
    assert set(res["policies"]) == {"sft", "ppo", "dpo"}
    assert res["n_prompts"] == 8
    for name, m in res["policies"].items():
        for key in ("win_rate_vs_sft", "gold_reward", "rm_score", "kl", "rm_accuracy"):
            assert key in m, (name, key)
    assert res["policies"]["sft"]["win_rate_vs_sft"] == 0.5  # the baseline against itself
    assert res["policies"]["sft"]["kl"] == 0.0                # the reference is the SFT policy
    sweep = json.loads((out / "eval" / "overoptimization.json").read_text())
    assert sweep["iter"] == [0, 1, 2]
    pngs = sorted(os.listdir(out / "plots"))
    assert {"sft.png", "rm.png", "ppo.png", "dpo.png", "overoptimization.png"} <= set(pngs), pngs
    printed = capsys.readouterr().out
    assert "pipeline done" in printed and "| sft |" in printed and "win vs sft (gold)" in printed


def test_bad_config_is_rejected(tmp_path):
    import common
    for arg in ("--scale=huge", "--data=both", "--rounds=0"):
        with pytest.raises(common.ConfigError, match=arg[2:].split("=")[0]):
            pipeline.main([arg, f"--out={tmp_path}"])
