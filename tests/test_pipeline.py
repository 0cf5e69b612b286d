"""The whole pipeline, end to end, at a miniature scale: every stage runs as a real subprocess."""

import json
import math
import os

import pytest

import config
import checkpoint
import eval as eval_script
import frontier
import pipeline
import train_grpo
import train_ppo
import train_reward_model
from data.toy import label as label_script


POLICIES = {"sft", "bon16", "ppo", "ppo_r1", "grpo", "rloo", "dpo", "kto", "ppo_gold",
            "grpo_gold", "ppo_gate", "ppo_safe", "rs", "ppo_rs", "ppo_rs_r3"}


@pytest.mark.slow
def test_mini_pipeline_runs_every_stage_then_the_frontier(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the stages must not depend on the caller's directory
    pipeline.main(["--scale=mini", "--out=runs", "--data_dir=runs/data", "--methods=all"])
    out = tmp_path / "runs"
    for stage in POLICIES - {"sft", "bon16", "ppo_r1"} | {"sft", "rm", "ppo_r2"}:
        assert (out / f"{stage}_toy" / "log.jsonl").stat().st_size > 0, stage
    # the reward model, DPO and KTO learned from the annotators' rankings of SFT samples, and
    # round 2's reward models also from round 1's PPO policy's (two rounds: the default)
    for name in ("train", "test", "unpaired", "unpaired_val", "samples", "r2_train", "r3_train"):
        assert (out / "data" / f"onpolicy_{name}.jsonl").stat().st_size > 0, name
    # helpful and harmless: the rankings by kind, three more models from the SFT trunk
    read_cfg = lambda stage: checkpoint.load_checkpoint(str(out / f"{stage}_toy" / "ckpt_best.pt"))["config"]  # noqa: E731
    assert [os.path.basename(read_cfg(s)["train_data"]) for s in ("rm_helpful", "rm_safety", "cost")] \
        == ["onpolicy_helpful_train.jsonl", "onpolicy_safety_train.jsonl", "onpolicy_harmless_train.jsonl"]
    assert read_cfg("cost")["reverse"] and not read_cfg("rm_safety")["reverse"]
    assert read_cfg("ppo_gate")["reward_gate"] == "llama2" and read_cfg("ppo_safe")["cost_model"]
    rm_cfg = checkpoint.load_checkpoint(str(out / "rm_toy" / "ckpt_best.pt"))["config"]
    assert rm_cfg["train_data"].endswith("onpolicy_train.jsonl") and rm_cfg["group_rankings"]
    assert rm_cfg["bias_data"].endswith("onpolicy_samples.jsonl")
    assert (out / "ppo_toy" / "ckpt_iter1.pt").exists() and (out / "ppo_toy" / "ckpt_iter2.pt").exists()
    # rejection sampling: SFT on the last round's reward models' favourites, then PPO from it
    assert read_cfg("rs")["train_data"].endswith("rs_train.jsonl")
    rs_ppo = checkpoint.load_checkpoint(str(out / "ppo_rs_toy" / "ckpt_last.pt"))["config"]
    assert rs_ppo["init_from"].endswith("rs_toy/ckpt_last.pt") and rs_ppo["ref_from"] == ""
    assert "rm_r2_toy" in rs_ppo["reward_model"]
    # relabel: a third round ranks ppo_rs's answers; its reward models learn from all three
    # rounds and PPO starts from rs again against them
    assert read_cfg("rm_m1_r3")["train_data"].split(",")[-1].endswith("onpolicy_r3_train.jsonl")
    r3_ppo = checkpoint.load_checkpoint(str(out / "ppo_rs_r3_toy" / "ckpt_last.pt"))["config"]
    assert r3_ppo["init_from"].endswith("rs_toy/ckpt_last.pt") and "rm_r3_toy" in r3_ppo["reward_model"]
    kept = [json.loads(line) for line in open(out / "data" / "rs_train.jsonl")]
    assert len(kept) > 100 and all(r["response"].strip() for r in kept)
    res = json.loads((out / "eval" / "results.json").read_text())
    assert set(res["policies"]) == POLICIES
    assert res["n_prompts"] == 8
    for name, m in res["policies"].items():
        for key in ("win_rate_vs_sft", "gold_reward", "rm_score", "kl", "rm_accuracy", "distinct"):
            assert key in m, (name, key)
        assert 1 <= m["distinct"] <= 8, name
    # the reward model's accuracy on the static test pairs and on noise-free on-policy pairs
    assert [os.path.basename(p) for p in res["rm_accuracies"]] == ["prefs_test.jsonl",
                                                                  "onpolicy_test.jsonl"]
    assert res["policies"]["sft"]["win_rate_vs_sft_shared"] == 0.5  # the baseline against itself
    assert res["policies"]["sft"]["kl"] == 0.0                # the reference is the SFT policy
    sweep = json.loads((out / "eval" / "overoptimization.json").read_text())
    # the reference at KL 0, then the last round's PPO checkpoints, then GRPO's
    assert [(os.path.basename(r), i) for r, i in zip(sweep["run"], sweep["iter"])] == [
        ("reference", 0), ("ppo_r2_toy", 1), ("ppo_r2_toy", 2), ("grpo_toy", 1), ("grpo_toy", 2)]
    pngs = sorted(os.listdir(out / "plots"))
    assert {"sft.png", "rm.png", "ppo.png", "grpo.png", "dpo.png", "kto.png",
            "overoptimization.png"} <= set(pngs), pngs
    printed = capsys.readouterr().out
    assert "pipeline done" in printed and "| sft |" in printed and "win vs sft (gold)" in printed

    # the frontier on the pipeline's runs: two betas per method, then best-of-N
    curves = frontier.main(["--budget=mini", "--out=runs", "--data_dir=runs/data",
                            "--methods=dpo,kto,ppo,grpo,bon"])
    assert set(curves) == {"dpo", "kto", "ppo", "grpo", "bon", "_reference"}
    for m in ("dpo", "kto", "ppo", "grpo"):
        assert sorted(p["knob"] for p in curves[m]["points"]) == sorted(frontier.METHODS[m][1][:2])
    assert [p["knob"] for p in curves["bon"]["points"]] == [1, 2, 4]
    assert (out / "frontier" / "frontier.png").stat().st_size > 0
    # run again: every point is finished, nothing is retrained
    point, = (out / "frontier").glob("dpo_beta0.1_s1337_mini_*")  # keyed by budget and inputs
    mtime = (point / "ckpt_last.pt").stat().st_mtime
    frontier.main(["--budget=mini", "--out=runs", "--data_dir=runs/data", "--methods=dpo"])
    assert (point / "ckpt_last.pt").stat().st_mtime == mtime


@pytest.mark.unit
def test_gao_fits_recover_their_coefficients():
    d = [0.5, 1.0, 1.5, 2.0, 3.0]
    a, b = frontier.gao_fit(d, [x * (2.0 - 0.3 * x) for x in d], "bon")
    assert (a, b) == (pytest.approx(2.0), pytest.approx(0.3))
    a, b = frontier.gao_fit(d, [x * (1.5 - 0.4 * math.log(x)) for x in d], "rl")
    assert (a, b) == (pytest.approx(1.5), pytest.approx(0.4))
    assert frontier.gao_fit([0.0, 1.0], [0.0, 1.0], "rl") is None  # one usable point


@pytest.mark.unit
def test_frontier_curves_average_seeds_and_add_their_spread():
    grid = [("dpo", 0.1, s, "") for s in (1, 2)]
    r = lambda g: dict(gold_reward=g, gold_reward_stderr=0.1, rm_score=0.0, rm_score_stderr=0.0,  # noqa: E731
                       kl=1.0, kl_stderr=0.0)
    results = {"dpo_beta0.1_s1": r(1.0), "dpo_beta0.1_s2": r(2.0), "sft": r(0.0)}
    p = frontier.frontier_curves(grid, results)["dpo"]["points"][0]
    assert p["gold"] == pytest.approx(1.5)
    # prompts: sqrt(0.1^2 + 0.1^2) / 2; seeds: sd 0.707 / sqrt(2) = 0.5
    assert p["gold_stderr"] == pytest.approx(math.hypot(math.sqrt(0.02) / 2, 0.5))


def test_bad_config_is_rejected(tmp_path):
    for arg in ("--scale=huge", "--data=both", "--rounds=0", "--methods=ppo,sft",
                "--rm_members=0", "--reward_agg=max", "--eval_samples=0", "--ppo_rollouts=6",
                "--safety_share=1.5", "--refusal_share=-0.1"):
        with pytest.raises(config.ConfigError, match=arg[2:].split("=")[0]):
            pipeline.main([arg, f"--out={tmp_path}"])


@pytest.mark.unit
def test_the_world_keys_reach_prepare_and_a_world_of_other_shares_is_refused(tmp_path):
    from data.toy import prepare

    def world(*argv):
        cfg = config.parse_config(pipeline.DEFAULTS, [f"--data_dir={tmp_path}/data", *argv])
        cmd = pipeline.build_stages(cfg, {"dpo"})[0]["prepare"][1]
        got = config.parse_config(prepare.DEFAULTS, cmd[1:])
        return cfg, (got.safety_share, got.refusal_share)
    cfg, shares = world()
    assert shares == (prepare.SAFETY_SHARE, prepare.REFUSAL_SHARE) == (0.2, 0.1)
    assert world("--safety_share=0", "--refusal_share=0.3")[1] == (0.0, 0.3)
    # a world of seed 1337's default shares on disk: the same keys pass, other shares are refused
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sft_train.jsonl").write_text("")
    (tmp_path / "data" / "world_manifest.json").write_text(
        json.dumps(dict(settings=prepare.world_settings(1337))))
    pipeline.check_stages(cfg, {"prepare": pipeline.build_stages(cfg, {"dpo"})[0]["prepare"]})
    cfg = world("--safety_share=0")[0]
    with pytest.raises(config.ConfigError, match="other settings .* safety_share 0.0"):
        pipeline.check_stages(cfg, {"prepare": pipeline.build_stages(cfg, {"dpo"})[0]["prepare"]})


@pytest.mark.unit
def test_the_evaluation_asks_eval_samples_answers_per_prompt_and_the_mini_run_one():
    def samples(*argv):
        cfg = config.parse_config(pipeline.DEFAULTS, list(argv))
        cmd = pipeline.build_stages(cfg, {"dpo"})[0]["eval"][1]
        return config.parse_config(eval_script.DEFAULTS, cmd[1:]).num_samples_per_prompt
    assert samples() == pipeline.DEFAULTS["eval_samples"] == 4
    assert samples("--eval_samples=2") == 2 and samples("--scale=mini") == 1


@pytest.mark.unit
def test_an_ensemble_is_one_stage_per_member_and_every_consumer_gets_all_members():
    from types import SimpleNamespace

    def stages(**kw):
        cfg = SimpleNamespace(**{**pipeline.DEFAULTS, "rounds": 1, **kw})
        return pipeline.build_stages(cfg, {"grpo", "dpo", "kto"})[0]

    def arg(cmd, key):
        return [a.split("=", 1)[1] for a in cmd if a.startswith(f"--{key}=")]

    one, ens = stages(rm_members=1), stages(rm_members=3, reward_agg="uwo", uwo_lambda=0.5)
    assert stages()["ppo"] == stages(rm_members=3, reward_agg="mean", uwo_lambda=1.0)["ppo"]
    assert set(ens) - set(one) == {"rm_m1", "rm_m2"}
    for k, name in enumerate(("rm", "rm_m1", "rm_m2")):  # the same data, seeds 1337 + k
        cmd = ens[name][1]
        assert arg(cmd, "seed") == [str(1337 + k)] and arg(cmd, "out_dir") == [f"out/{name}_toy"]
        assert [a for a in cmd if not a.startswith(("--seed=", "--out_dir="))] == \
            [a for a in one["rm"][1] if not a.startswith(("--seed=", "--out_dir="))]
    assert one["rm"][1] == ens["rm"][1]  # member 0 is the one reward model
    members = ",".join(f"out/{m}_toy/ckpt_best.pt" for m in ("rm", "rm_m1", "rm_m2"))
    for name in ("ppo", "grpo", "eval"):
        needs, cmd = ens[name]
        assert arg(cmd, "reward_model") == [members], name
        assert arg(cmd, "reward_agg") == ["uwo"] and arg(cmd, "uwo_lambda") == ["0.5"], name
        assert {"rm", "rm_m1", "rm_m2"} <= set(needs), name
        assert arg(one[name][1], "reward_model") == ["out/rm_toy/ckpt_best.pt"], name
        assert not arg(one[name][1], "reward_agg"), name
    assert ens["dpo"][0] == ["label"]  # DPO does not wait for the reward models
    two = stages(rounds=2, rm_members=2)
    assert arg(two["ppo_r2"][1], "reward_model") == [
        "out/rm_r2_toy/ckpt_best.pt,out/rm_m1_r2_toy/ckpt_best.pt"]
    assert arg(two["rm_r2"][1], "train_data") == [
        "data/toy/out/onpolicy_train.jsonl,data/toy/out/onpolicy_r2_train.jsonl"]
    # DPO and KTO learn from round 1's comparisons (the SFT policy's answers), as with one round
    for name in ("dpo", "kto"):
        assert two[name] == one[name], name
    # the evaluation judges the last round's PPO as 'ppo', and round 1's beside it; two rounds
    # are the default
    policies = dict(p.split(":") for p in arg(two["eval"][1], "policies")[0].split(","))
    assert (policies["ppo"], policies["ppo_r1"]) == ("out/ppo_r2_toy/ckpt_last.pt",
                                                     "out/ppo_toy/ckpt_last.pt")
    assert "ppo_r1" not in arg(one["eval"][1], "policies")[0]
    # the last round's PPO sees ppo_rollouts answers an iteration (minibatches of a quarter),
    # earlier rounds' the config's
    for name, want in (("ppo", []), ("ppo_r2", ["128"])):
        assert arg(two[name][1], "rollout_batch_size") == want, name
        assert arg(two[name][1], "minibatch_size") == [str(int(w) // 4) for w in want], name
    assert arg(stages(rounds=1, ppo_rollouts=64)["ppo"][1], "rollout_batch_size") == ["64"]
    default = pipeline.build_stages(SimpleNamespace(**pipeline.DEFAULTS), {"grpo", "dpo", "kto"})[0]
    assert default == stages(rounds=2)


@pytest.mark.slow
def test_mini_pipeline_with_static_pairs_and_with_two_rounds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(config.ConfigError, match="rounds=1"):  # no policy's answers to label
        pipeline.main(["--out=static", "--data=static"])
    pipeline.main(["--scale=mini", "--out=static", "--data_dir=static/data", "--data=static",
                   "--rounds=1", "--methods=dpo", "--plots=False"])
    assert not (tmp_path / "static" / "data" / "onpolicy_train.jsonl").exists()  # no labelling
    rm_cfg = checkpoint.load_checkpoint(str(tmp_path / "static" / "rm_toy" / "ckpt_best.pt"))["config"]
    assert rm_cfg["train_data"].endswith("prefs_train.jsonl") and not rm_cfg["group_rankings"]
    res = json.loads((tmp_path / "static" / "eval" / "results.json").read_text())
    assert set(res["policies"]) == {"sft", "bon16", "ppo", "dpo"}
    assert [os.path.basename(p) for p in res["rm_accuracies"]] == ["prefs_test.jsonl"]

    pipeline.main(["--scale=mini", "--out=rounds", "--data_dir=rounds/data", "--rounds=2",
                   "--methods=", "--plots=False"])
    out = tmp_path / "rounds"
    # round 2 labels round 1's PPO policy; its reward model learns from both rounds' rankings
    for name in ("onpolicy_train.jsonl", "onpolicy_r2_train.jsonl"):
        assert (out / "data" / name).stat().st_size > 0, name
    rm2 = checkpoint.load_checkpoint(str(out / "rm_r2_toy" / "ckpt_best.pt"))["config"]
    assert [os.path.basename(p) for p in rm2["train_data"].split(",")] == [
        "onpolicy_train.jsonl", "onpolicy_r2_train.jsonl"]
    for stage in ("rm", "ppo", "rm_r2", "ppo_r2"):
        assert (out / f"{stage}_toy" / "ckpt_last.pt").exists(), stage
    res = json.loads((out / "eval" / "results.json").read_text())
    assert set(res["policies"]) == {"sft", "bon16", "ppo", "ppo_r1"}


def test_a_stage_that_runs_alone_overlaps_no_other(tmp_path):
    # two seeds' SFT stages (each on every thread) side by side would oversubscribe the cores.
    # Each stage appends 'start' and 'end' to one file; the others wait (up to 20 s) until a
    # second stage has started, so two of them running at once is seen without timing luck
    code = ("import sys, time; name, log = sys.argv[1:]; f = open(log, 'a'); "
            "f.write(f'start {name}\\n'); f.flush(); t = time.time()\n"
            "while name not in 'ab' and time.time() - t < 20 and "
            "sum(l.startswith('start') for l in open(log)) - "
            "sum(l.startswith('end') for l in open(log)) < 2: time.sleep(0.05)\n"
            "time.sleep(0.3); f.write(f'end {name}\\n')")
    log = tmp_path / "events"
    stages = {n: (["a"] if n == "d" else [], ["-c", code, n, str(log)]) for n in "abcde"}
    pipeline.run_stages(stages, 2, str(tmp_path / "logs"), alone=("a", "b"))
    events = log.read_text().split("\n")[:-1]
    for x in "ab":  # nothing between its start and its end
        assert events.index(f"end {x}") == events.index(f"start {x}") + 1, events
    active, most = 0, 0
    for e in events:
        active += 1 if e.startswith("start") else -1
        most = max(most, active)
    assert most == 2 and len(events) == 10, events  # the others: two at a time


def test_spin_runs_its_iterations_in_a_chain_beside_an_sft_control(tmp_path):
    cfg = config.parse_config(pipeline.DEFAULTS, ["--methods=spin", "--spin_iters=3",
                                                  f"--out={tmp_path}/o", f"--data_dir={tmp_path}/d"])
    stages, _ = pipeline.build_stages(cfg, {"spin"})
    args = {name: dict(a[2:].split("=", 1) for a in cmd[1:] if a.startswith("--"))
            for name, (_, cmd) in stages.items()}
    # iteration t: pi_{t-1}'s answers against the demonstrations, then DPO from pi_{t-1} and
    # against it (no reference given: the init's weights), beta = the paper's lambda
    assert stages["spin_data1"][0] == ["sft"] and args["spin_data1"]["policy"].endswith("sft_toy/ckpt_best.pt")
    for t in (2, 3):
        assert stages[f"spin_data{t}"][0] == [f"spin{t - 1}"]
        assert args[f"spin_data{t}"]["policy"] == args[f"spin{t}"]["init_from"] == \
            f"{args[f'spin{t - 1}']['out_dir']}/ckpt_last.pt"
        assert args[f"spin_data{t}"]["seed"] == str(1337 + t - 1)
    for t in (1, 2, 3):
        assert stages[f"spin{t}"][1][:2] == ["train_dpo.py", "config/spin_toy.py"]
        assert "reference" not in args[f"spin{t}"]
        assert args[f"spin{t}"]["train_data"].endswith(f"spin/spin{t}_train.jsonl")
    # the control: as many SFT steps as the three iterations together, at SPIN's learning rates
    assert int(args["sft_more"]["max_iters"]) == 3 * int(args["spin1"]["max_iters"])
    import train_dpo
    spin = config.parse_config(train_dpo.DEFAULTS, [os.path.join(pipeline.ROOT, "config",
                                                                 "spin_toy.py")])
    assert (float(args["sft_more"]["lr"]), float(args["sft_more"]["min_lr"])) == \
        (spin.lr, spin.min_lr) == (3e-5, 3e-6)
    assert args["sft_more"]["init_from"] == args["spin_data1"]["policy"]
    names = [p.split(":")[0] for p in args["eval"]["policies"].split(",")]
    assert names[-4:] == ["sft_more", "spin1", "spin2", "spin3"]
    # the default run has none of it
    stages, _ = pipeline.build_stages(config.parse_config(pipeline.DEFAULTS, []),
                                      {"grpo", "dpo", "kto"})
    assert not any(n.startswith(("spin", "sft_more")) for n in stages)
    with pytest.raises(config.ConfigError, match="spin_iters"):
        pipeline.main(["--spin_iters=0", f"--out={tmp_path}"])


def test_rlaif_ranks_the_peoples_samples_with_a_judge_of_its_own(tmp_path):
    cfg = config.parse_config(pipeline.DEFAULTS, ["--methods=dpo,rlaif", f"--out={tmp_path}/o",
                                                  f"--data_dir={tmp_path}/d"])
    stages, _ = pipeline.build_stages(cfg, {"dpo", "rlaif"})
    args = {name: dict(a[2:].split("=", 1) for a in cmd[1:] if a.startswith("--"))
            for name, (_, cmd) in stages.items()}
    assert stages["judge"][1][:2] == ["train_sft.py", "config/judge_toy.py"]
    assert args["label_rlaif"]["annotator"] == f"judge:{args['judge']['out_dir']}/ckpt_best.pt"
    # the same answers as the people's: the same policy, prompts and seed
    for key in ("policy", "train_prompts", "seed"):
        assert args["label_rlaif"][key] == args["label"][key], key
    assert args["label_rlaif"]["out_dir"] != args["label"]["out_dir"]  # no lock between them
    assert args["rlaif_dpo"]["train_data"].endswith("rlaif/rlaif_train.jsonl")
    # RLHF's round 1 with the judge as the labeller: its members, seeds and PPO command
    assert stages["ppo_rlaif"][0] == ["rm_rlaif", "rm_rlaif_m1", "rm_rlaif_m2"]
    for mine, theirs in zip(stages["ppo_rlaif"][0], stages["ppo"][0]):
        assert stages[mine][0] == ["label_rlaif"]
        assert args[mine]["train_data"] == args["rlaif_dpo"]["train_data"]
        assert args[mine]["bias_data"].endswith("rlaif/rlaif_samples.jsonl")
        assert args[mine]["seed"] == args[theirs]["seed"]
        assert args[mine]["init_from"] == args[theirs]["init_from"]
    assert args["ppo_rlaif"]["reward_model"] == ",".join(
        f"{args[m]['out_dir']}/ckpt_best.pt" for m in stages["ppo_rlaif"][0])
    assert {k: v for k, v in args["ppo_rlaif"].items() if k not in ("out_dir", "reward_model")} \
        == {k: v for k, v in args["ppo"].items() if k not in ("out_dir", "reward_model")}
    assert [p.split(":")[0] for p in args["eval"]["policies"].split(",")][-3:] == [
        "dpo", "rlaif_dpo", "ppo_rlaif"]


def test_the_rlaif_table_reads_the_judge_and_counts_agreement_by_hand(tmp_path):
    import ai_stages
    (tmp_path / "data" / "rlaif").mkdir(parents=True)
    (tmp_path / "eval").mkdir()
    write = lambda path, obj: (tmp_path / path).write_text(json.dumps(obj) + "\n")  # noqa: E731
    write("data/rlaif/rlaif_manifest.json", dict(judge=dict(
        slot1_share=0.6, agreement=0.5, agree_gold_one_order=0.5, agree_gold=0.75)))
    write("data/rlaif/judge_manifest.json", dict(labelled_pairs=400))
    m = dict(gold_reward=0.5, win_rate_vs_sft=0.5, kl=0.1, distinct=90)
    ppo = lambda gold: dict(m, gold_reward=gold)  # noqa: E731
    write("eval/results.json", dict(policies=dict(sft=m, dpo=m, rlaif_dpo=m, ppo_r1=ppo(1.5),
                                                  ppo=ppo(2.0), ppo_rlaif=ppo(1.3))))
    write("data/onpolicy_train.jsonl", dict(prompt="p", responses=["a", "b", "c"], ranks=[1, 2, 3],
                                            gold=[3.0, 1.5, 1.5]))
    write("data/rlaif/rlaif_train.jsonl", dict(prompt="p", responses=["a", "b", "c"],
                                               ranks=[2, 1, 3], gold=[3.0, 1.5, 0.0]))
    # the judge's ranking: b over a against gold, a and b over c with it: 2 of 3
    assert ai_stages.ranking_agreement(str(tmp_path / "data/rlaif/rlaif_train.jsonl")) == 2 / 3
    table = ai_stages.rlaif_table(str(tmp_path), "eval", "data", have_dpo=True)
    assert "slot 1 in 60.0%" in table and "the judge's 66.7%, the simulated people's 100.0%" in table
    assert [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ") and
            "policy" not in line] == ["| sft", "| dpo", "| rlaif_dpo", "| ppo_r1", "| ppo_rlaif"]
    # round 1's PPO (+1.0 over SFT) is the comparison, not round 2's: (1.3 - 0.5) / 1.0
    assert "RLAIF's PPO gains +0.800 gold over SFT, RLHF's +1.000" in table and ": 80% of it." in table


@pytest.mark.unit
def test_relabel_stages_rank_ppo_rs_answers_and_need_rs(tmp_path):
    args = [f"--data_dir={tmp_path}/data", f"--out={tmp_path}/o"]
    cfg = config.parse_config(pipeline.DEFAULTS, args)
    stages = pipeline.build_stages(cfg, {"rs", "relabel"})[0]
    assert "label_r3" not in pipeline.build_stages(cfg, {"rs"})[0]  # only when asked for
    # round 3 labels PPO-from-rs's answers with the next seed; its reward models are round 2's
    # commands with these rankings added and validated on, and PPO starts from rs against them
    label = config.parse_config(label_script.DEFAULTS, stages["label_r3"][1][1:])
    assert stages["label_r3"][0] == ["ppo_rs"] and label.policy.endswith("ppo_rs_toy/ckpt_last.pt")
    assert (label.prefix, label.seed) == ("onpolicy_r3", 1339)
    for k, name in enumerate(["rm_r3", "rm_m1_r3", "rm_m2_r3"]):
        rm = config.parse_config(train_reward_model.DEFAULTS, stages[name][1][2:])
        before = config.parse_config(train_reward_model.DEFAULTS,
                                     stages[name.replace("_r3", "_r2")][1][2:])
        assert stages[name][0] == ["label_r3"] and rm.seed == before.seed == 1337 + k
        assert rm.train_data == before.train_data + f",{tmp_path}/data/onpolicy_r3_train.jsonl"
        assert rm.val_data.endswith("onpolicy_r3_val.jsonl") and rm.out_dir.endswith(f"{name}_toy")
    ppo = config.parse_config(train_ppo.DEFAULTS, stages["ppo_rs_r3"][1][1:])
    rs = config.parse_config(train_ppo.DEFAULTS, stages["ppo_rs"][1][1:])
    assert stages["ppo_rs_r3"][0] == ["rm_r3", "rm_m1_r3", "rm_m2_r3"]
    assert ppo.reward_model.split(",") == [f"{tmp_path}/o/{n}_toy/ckpt_best.pt"
                                           for n in ("rm_r3", "rm_m1_r3", "rm_m2_r3")]
    assert {**vars(ppo), "reward_model": "", "out_dir": ""} == \
        {**vars(rs), "reward_model": "", "out_dir": ""}  # the same PPO as ppo_rs's otherwise
    assert "ppo_rs_r3:" in " ".join(stages["eval"][1])
    for methods, data in (("dpo,relabel", "onpolicy"), ("rs,relabel", "static")):
        with pytest.raises(config.ConfigError, match="relabel"):
            pipeline.main(args + [f"--methods={methods}", f"--data={data}", "--rounds=1"])


def test_label_prompts_and_rm_epochs_reach_every_labelling_and_reward_model(tmp_path):
    args = [f"--data_dir={tmp_path}/data", f"--out={tmp_path}/o", "--label_prompts=900",
            "--rm_epochs=2.5", "--label_refusals=True"]
    cfg = config.parse_config(pipeline.DEFAULTS, args)
    stages = pipeline.build_stages(cfg, {"rs", "relabel", "ppo_gate", "ppo_safe", "rlaif"})[0]
    default = pipeline.build_stages(config.parse_config(pipeline.DEFAULTS, args[:2]), {"rs"})[0]
    labels = ["label", "label_r2", "label_r3", "label_rlaif"]
    for name in labels:  # every round's annotators rank the answers to the first 900 prompts
        label_cfg = config.parse_config(label_script.DEFAULTS, stages[name][1][1:])
        assert label_cfg.max_prompts == 900 and label_cfg.add_refusals is True, name
    for name in ("label", "label_r2"):  # the default: the policy's answers only
        assert config.parse_config(label_script.DEFAULTS, default[name][1][1:]).add_refusals is False
    models = [n for n, (_, cmd) in stages.items() if cmd[0] == "train_reward_model.py"]
    assert len(models) == 15  # three rounds of three, the RLAIF three, helpful, safety, cost
    for name in models:
        rm = config.parse_config(train_reward_model.DEFAULTS, stages[name][1][2:])
        # the safety and cost models see a tenth of the rankings: four times the epochs
        assert rm.num_epochs == (10.0 if name in ("rm_safety", "cost") else 2.5), name
    # the static pairs keep their one epoch; the miniature its few prompts and steps
    static = pipeline.build_stages(config.parse_config(
        pipeline.DEFAULTS, args + ["--data=static", "--rounds=1"]), set())[0]
    assert config.parse_config(train_reward_model.DEFAULTS, static["rm"][1][2:]).num_epochs == 1
    mini = pipeline.build_stages(config.parse_config(pipeline.DEFAULTS, args + ["--scale=mini"]),
                                 set())[0]
    assert config.parse_config(label_script.DEFAULTS, mini["label"][1][1:]).max_prompts == 96
    for key in ("--label_prompts=0", "--rm_epochs=0"):
        with pytest.raises(config.ConfigError, match=key[2:].split("=")[0]):
            pipeline.main(args[:2] + [key])


def test_prompt_weights_reach_every_rl_run_and_a_bad_one_fails_before_any_stage(tmp_path):
    args = [f"--data_dir={tmp_path}/data", f"--out={tmp_path}/o"]
    cfg = config.parse_config(pipeline.DEFAULTS, args + ["--prompt_weights=harmful=3,lookalike=2"])
    stages = pipeline.build_stages(cfg, {"grpo", "rloo", "rs", "relabel", "ppo_gate", "ppo_safe",
                                         "ppo_gold", "grpo_gold", "rlaif", "cai"})[0]
    rl = [n for n, (_, cmd) in stages.items() if cmd[0] in ("train_ppo.py", "train_grpo.py")]
    assert {"ppo", "ppo_r2", "grpo", "rloo", "ppo_rs", "ppo_rs_r3", "ppo_gate", "ppo_safe",
            "ppo_gold", "grpo_gold", "ppo_rlaif", "rl_cai"} <= set(rl)
    for name in rl:
        script = train_ppo if stages[name][1][0] == "train_ppo.py" else train_grpo
        run_cfg = config.parse_config(script.DEFAULTS, [a for a in stages[name][1][1:]
                                                        if not a.endswith(".py")])
        assert run_cfg.prompt_weights == "harmful=3,lookalike=2", name
    default = pipeline.build_stages(config.parse_config(pipeline.DEFAULTS, args), set())[0]
    assert config.parse_config(train_ppo.DEFAULTS, default["ppo"][1][2:]).prompt_weights == ""
    with pytest.raises(config.ConfigError, match="prompt_weights"):
        pipeline.main(args + ["--prompt_weights=harmful=0"])
    assert not os.path.exists(f"{tmp_path}/o")  # nothing ran


def test_rejection_sampling_stages_and_a_set_on_disk_is_refused(tmp_path):
    cfg = config.parse_config(pipeline.DEFAULTS, [f"--data_dir={tmp_path}/data",
                                                  f"--out={tmp_path}/o", "--methods=rs"])
    stages = pipeline.build_stages(cfg, {"rs"})[0]
    assert "rs" not in pipeline.build_stages(cfg, {"dpo"})[0]  # only when asked for
    # the last round's reward models pick; PPO starts from the RS policy with 128 rollouts
    assert stages["rs_data"][0] == ["rm_r2", "rm_m1_r2", "rm_m2_r2"]
    assert stages["rs"][0] == ["rs_data"] and stages["ppo_rs"][0] == ["rs"]
    ppo = config.parse_config(train_ppo.DEFAULTS, stages["ppo_rs"][1][1:])
    assert ppo.init_from.endswith("rs_toy/ckpt_last.pt") and ppo.rollout_batch_size == 128
    eval_cmd = " ".join(stages["eval"][1])
    assert "rs:" in eval_cmd and "ppo_rs:" in eval_cmd
    pipeline.check_stages(cfg, {"rs_data": stages["rs_data"]})  # nothing there yet
    os.makedirs(tmp_path / "data")
    open(tmp_path / "data" / "rs_train.jsonl", "w").close()
    with pytest.raises(config.ConfigError, match=r"rs_data: .* holds a data set \(rs_\*\)"):
        pipeline.check_stages(cfg, {"rs_data": stages["rs_data"]})
