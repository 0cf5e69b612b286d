"""
remedies.py end to end at the miniature budget: the pipeline's stages, reward-model members that
differ only in their seed, PPO against every remedy, one evaluation of them all, the reward
models' accuracies, the over-optimisation sweeps; a second run retrains nothing.
"""

import json
import os

import pytest

import checkpoint
import config
import remedies


@pytest.mark.slow
def test_mini_remedies_run_every_variant_then_skip_them(tmp_path):
    out = tmp_path / "rem"
    args = [f"--out={out}", "--budget=mini", "--seeds=5", "--members=3"]
    res = remedies.main(args)
    run = out / "seed5"
    names = {n for n, (K, _, _) in remedies.VARIANTS.items() if K <= 3}
    assert set(res["results"][5]) == {"sft", "bon16", "dpo"} | names
    # member k is the pipeline's reward model run with seed 5 + k
    seeds = [checkpoint.load_checkpoint(str(p))["config"]["seed"] for p in
             (run / "rm_toy" / "ckpt_last.pt", run / "rm1" / "ckpt_last.pt",
              run / "rm2" / "ckpt_last.pt")]
    assert seeds == [5, 6, 7]
    ens = checkpoint.load_checkpoint(str(run / "ppo_uwo3" / "ckpt_last.pt"))["config"]
    assert ens["reward_agg"] == "uwo" and len(ens["reward_model"].split(",")) == 3
    assert checkpoint.load_checkpoint(str(run / "ppo_ptx" / "ckpt_last.pt"))["config"]["ptx_coef"] > 0
    acc = res["rm_accuracy"][5]
    assert {"K1_mean", "K3_mean", "K3_min", "K3_uwo"} <= set(acc) and len(acc["members"]) == 3
    for name in ("overopt_one", "overopt_ens"):
        sweep = json.loads((run / f"eval_{name}" / "overoptimization.json").read_text())
        assert sweep["iter"][0] == 0 and len(sweep["bon"]["n"]) == 3
    table = (out / "remedies.md").read_text()
    assert "| uwo3 |" in table and "K3_uwo" in table
    saved = json.loads((out / "remedies.json").read_text())
    assert set(saved["results"]["5"]) == set(res["results"][5])
    # a second run finds every stage finished and every policy evaluated: it only reports,
    # here on fewer variants (their rows of the same evaluation)
    before = {p: os.path.getmtime(p) for p in run.glob("*/ckpt_last.pt")}
    evaluated = os.path.getmtime(run / "eval" / "results.json")
    again = remedies.main(args + ["--variants=uwo3", "--overopt=False"])
    assert {p: os.path.getmtime(p) for p in run.glob("*/ckpt_last.pt")} == before
    assert os.path.getmtime(run / "eval" / "results.json") == evaluated
    assert set(again["results"][5]) == {"sft", "bon16", "dpo", "none", "uwo3"}
    assert again["results"][5]["uwo3"]["gold_reward"] == res["results"][5]["uwo3"]["gold_reward"]
    # a policy trained again after the evaluation is judged again
    os.utime(run / "ppo_uwo3" / "ckpt_last.pt")
    remedies.main(args + ["--variants=uwo3", "--overopt=False"])
    assert os.path.getmtime(run / "eval" / "results.json") > evaluated


@pytest.mark.unit
def test_the_variants_run_are_those_named_within_the_ensembles_size():
    from types import SimpleNamespace
    cfg = lambda **kw: SimpleNamespace(**{**remedies.DEFAULTS, **kw})  # noqa: E731
    assert remedies.chosen(cfg(members=3)) == [
        "mean3", "min3", "uwo3", "mean3_kl", "uwo3_beta", "length", "ptx"]
    assert remedies.chosen(cfg(members=5, variants="uwo5,length")) == ["uwo5", "length"]
    assert remedies.chosen(cfg(members=3, variants="uwo5,length")) == ["length"]
    stages, _ = remedies.seed_stages(cfg(members=3, variants="uwo3_beta"), 9, overopt=False)
    assert {n for n in stages if "ppo_" in n or "overopt" in n} == {"s9_ppo_uwo3_beta"}
    cmd = stages["s9_ppo_uwo3_beta"][1]
    assert "--beta=0.05" in cmd and "--reward_agg=uwo" in cmd
    stages, _ = remedies.seed_stages(cfg(members=3, variants="mean3_kl"), 9, overopt=False)
    cmd = stages["s9_ppo_mean3_kl"][1]
    assert "--beta=0.4" in cmd and "--reward_agg=mean" in cmd and "config/ppo_toy.py" in cmd
    with pytest.raises(config.ConfigError, match="variants"):
        remedies.main(["--variants=uwo7"])
