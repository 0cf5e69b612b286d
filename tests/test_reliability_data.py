"""
Reliability of the steps that feed every training stage, and of the outputs around them: the data
steps (label.py, the toy world's and HH's prepare.py) write a set whole or not at all, under a
lock, and never replace another run's set without --overwrite=True; the pipeline checks every
stage before it runs one and passes its stop signals on; a resume under another config is refused;
eval's policy names and outputs; the reward contract; OS errors as one line. The world and the
helpers are tests/test_reliability.py's.
"""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import checkpoint
import config
import eval as eval_script
import frontier
import pipeline
import run
import train_dpo
from config import CheckpointError, ConfigError, DataError, FileError
from data.toy import label
from data.toy import prepare as toy_prepare
from data.toy.prepare import write_jsonl
from model import GPT, GPTConfig
from rollout import load_reward_fn, reward_contract
from test_label import fake_sampler
from test_reliability import (ARGS, RUN_TIMEOUT_S, TINY_MODEL, keep_signal_handlers,  # noqa: F401
                              save_model, snapshot, world)

ROOT = os.path.dirname(run.__file__)


def cli(script, *args, timeout=RUN_TIMEOUT_S, **kw):
    """Run a script as a real process: (exit code, stdout, stderr)."""
    p = subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)],
                       capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                       env=dict(os.environ, OMP_NUM_THREADS="1"), **kw)
    return p.returncode, p.stdout, p.stderr


def assert_one_error_line(rc, err, *words):
    lines = err.strip().splitlines()
    assert rc == 1 and "Traceback" not in err, err[-3000:]
    assert lines[-1].startswith("error: ") and sum(l.startswith("error:") for l in lines) == 1, err
    for w in words:
        assert w in lines[-1], (w, lines[-1])


def label_args(w, out, **kw):
    args = dict(policy=w / "sft.pt", train_prompts=w / "prompts_train.jsonl",
                eval_prompts=w / "prompts_eval.jsonl", out_dir=out, max_prompts=16,
                num_val_prompts=8, k=4, k_eval=4, max_new_tokens=8, device="cpu")
    args.update(kw)
    return [f"--{k}={v}" for k, v in args.items()]


@pytest.fixture
def labelled(world, tmp_path, monkeypatch):
    """A complete labelling (the fake annotators' sampler) in tmp_path/d, and its bytes."""
    monkeypatch.setattr(label, "sample_answers", fake_sampler)
    out = tmp_path / "d"
    label.main(label_args(world, out, seed=1, kinds="separate"))
    return out, snapshot(out)

# -----------------------------------------------------------------------------
# label.py: a set appears whole or not at all, and replaces another only when asked


def test_a_labelling_is_one_set_with_a_manifest(labelled):
    out, files = labelled
    manifest = json.loads(files["onpolicy_manifest.json"])
    assert sorted(manifest["files"]) == sorted(n for n in files if n.endswith(".jsonl"))
    assert manifest["settings"]["seed"] == 1 and len(manifest["inputs"]) == 3
    for name, meta in manifest["files"].items():
        assert meta["lines"] == files[name].count(b"\n") > 0
    assert not [n for n in os.listdir(out) if n.startswith(".staging")]


@pytest.mark.parametrize("change, words", [
    (dict(seed=2), ["already holds a labelling", "--overwrite=True", "seed"]),
    (dict(seed=1, kinds="mixed"), ["already holds a labelling", "kinds"]),
    # a bad held-out line is found before anything is sampled, even with --overwrite=True
    (dict(seed=2, overwrite=True, eval_prompts="{bad}"), ["bad_eval.jsonl:2", "'prompt'"]),
    (dict(seed=2, overwrite=True, train_prompts="{foreign}"), ["foreign.jsonl", "toy-world"]),
    (dict(prefix="../escaped"), ["'prefix'", "'..'"]),
    (dict(prefix="sub/x"), ["'prefix'"]),
    (dict(k=10 ** 9), ["'k'", "2..1024"]),
])
def test_a_rejected_labelling_leaves_the_previous_set(world, labelled, tmp_path, change, words):
    out, before = labelled
    write_jsonl(tmp_path / "bad_eval.jsonl", [{"prompt": "What color is a lime?"}, {"prompt": 5}])
    write_jsonl(tmp_path / "foreign.jsonl", [{"prompt": "Write a haiku about the sea."}])
    change = {k: str(v).format(bad=tmp_path / "bad_eval.jsonl", foreign=tmp_path / "foreign.jsonl")
              for k, v in change.items()}
    sampled = []
    with pytest.MonkeyPatch.context() as m:
        m.setattr(label, "sample_answers", lambda *a: sampled.append(1) or fake_sampler(*a))
        with pytest.raises((ConfigError, DataError)) as e:
            label.main(label_args(world, out, **change))
    for w in words:
        assert w in str(e.value), (w, e.value)
    assert not sampled  # every input is checked before any sampling
    assert snapshot(out) == before
    assert not list(tmp_path.glob("escaped*")) and not (out / "sub").exists()


def test_relabelling_with_overwrite_replaces_the_whole_set(world, labelled, monkeypatch):
    out, before = labelled
    monkeypatch.setattr(label, "sample_answers", fake_sampler)
    label.main(label_args(world, out, seed=2, overwrite=True))  # kinds=mixed: no helpful file
    after = snapshot(out)
    assert "onpolicy_helpful_train.jsonl" not in after  # the old set's extra files went too
    assert after["onpolicy_train.jsonl"] != before["onpolicy_train.jsonl"]
    assert json.loads(after["onpolicy_manifest.json"])["settings"]["seed"] == 2
    # the same settings and inputs again: the same bytes, no --overwrite needed
    label.main(label_args(world, out, seed=2))
    assert snapshot(out) == after


@pytest.mark.parametrize("bad, words", [
    ("vocab300", ["vocab_size=300", "257"]), ("nan", ["holds NaN or inf"]),
    ("block_size", ["block_size=4096", "1..128"])])
def test_label_checks_the_policy_before_sampling(world, tmp_path, bad, words):
    policy = world / "sft.pt"
    if bad == "vocab300":
        policy = save_model(tmp_path / "v.pt", GPT(GPTConfig(**{**TINY_MODEL, "vocab_size": 300})),
                            "policy", "sft")
    elif bad == "nan":
        model = GPT(GPTConfig(**TINY_MODEL))
        with torch.no_grad():
            model.lm_head.weight.fill_(float("nan"))
        policy = save_model(tmp_path / "n.pt", model, "policy", "sft")
    extra = dict(block_size=4096) if bad == "block_size" else {}
    with pytest.raises((CheckpointError, ConfigError)) as e:
        label.main(label_args(world, tmp_path / "d", policy=policy, **extra))
    assert all(w in str(e.value) for w in words), e.value
    assert [n for n in os.listdir(tmp_path / "d") if not n.startswith(".")] == []


FAKE_LABEL = """
import sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
from data.toy import label
from test_label import fake_sampler
import config
def slow(model, enc, prompts, k, cfg, stream, device):
    print("sampling stream", stream, flush=True)
    time.sleep(2 if stream == 1 else 0)
    return fake_sampler(model, enc, prompts, k, cfg, stream, device)
label.sample_answers = slow
config.cli(lambda: label.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_labelling_killed_mid_sampling_leaves_the_previous_set(world, labelled, tmp_path, sig):
    # a kill while the held-out answers are drawn: the new training rankings exist by then
    out, before = labelled
    code = FAKE_LABEL.format(root=ROOT, tests=os.path.dirname(__file__))
    p = subprocess.Popen([sys.executable, "-c", code, *label_args(world, out, seed=3,
                                                                  overwrite=True)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    for line in p.stdout:
        if "stream 1" in line:
            time.sleep(0.3)
            p.send_signal(sig)
            break
    p.communicate(timeout=RUN_TIMEOUT_S)
    assert p.returncode == -sig
    assert snapshot(out) == before
    # the next labelling clears the killed one's staging folder
    with pytest.MonkeyPatch.context() as m:
        m.setattr(label, "sample_answers", fake_sampler)
        label.main(label_args(world, out, seed=3, overwrite=True))
    assert not [n for n in os.listdir(out) if n.startswith(".staging")]


def test_a_full_disk_during_a_labelling_leaves_the_previous_set(world, labelled, monkeypatch):
    out, before = labelled
    real = label.write_jsonl

    def full(path, rows):
        if path.endswith("_samples.jsonl"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, rows)
    monkeypatch.setattr(label, "write_jsonl", full)
    monkeypatch.setattr(label, "sample_answers", fake_sampler)
    with pytest.raises(FileError, match="onpolicy_samples.jsonl: cannot write it \\(No space"):
        label.main(label_args(world, out, seed=4, overwrite=True))
    assert snapshot(out) == before
    assert not [n for n in os.listdir(out) if n.startswith(".staging")]


def test_a_locked_out_dir_is_refused(world, labelled):
    out, before = labelled
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time, run; run.lock_out_dir("
                               "sys.argv[1]); print('locked', flush=True); time.sleep(60)",
                               str(out)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match="in use by another run"):
            label.main(label_args(world, out, seed=5, overwrite=True))
        with pytest.raises(ConfigError, match="in use by another run"):
            toy_prepare.prepare(str(out))
    finally:
        holder.kill()
    assert snapshot(out) == before

# -----------------------------------------------------------------------------
# the toy world's and HH's prepare.py


def test_prepare_keeps_a_world_of_other_settings(tmp_path):
    out = tmp_path / "w"
    toy_prepare.prepare(str(out), seed=1337)
    before = snapshot(out)
    toy_prepare.prepare(str(out), seed=1337)  # the same world again: allowed, the same bytes
    assert snapshot(out) == before
    rc, _, err = cli("data/toy/prepare.py", f"--out_dir={out}", "--seed=7")
    assert_one_error_line(rc, err, "already holds a toy world", "seed", "--overwrite=True")
    rc, _, err = cli("data/toy/prepare.py", f"--out_dir={out}", "--safety_share=2")
    assert_one_error_line(rc, err, "'safety_share' must be in [0, 1]")
    assert snapshot(out) == before
    toy_prepare.prepare(str(out), seed=7, overwrite=True)
    assert json.loads((out / "world_manifest.json").read_text())["settings"]["seed"] == 7


@pytest.mark.parametrize("script, args", [
    ("data/toy/prepare.py", []),
    ("data/hh/prepare.py", ["--input={hh}"]),
    ("eval.py", ["--policies=sft:{w}/sft.pt", "--reward_model={w}/rm.pt", "--reference=",
                 "--baseline=", "--prompts={w}/prompts_eval.jsonl", "--pairs=",
                 "--demo_val_data={w}/sft_val.jsonl",
                 "--eval_examples=2", "--max_new_tokens=4", "--device=cpu"]),
    ("export_hf.py", ["--ckpt={w}/sft.pt"]),
    ("data/toy/label.py", ["--policy={w}/sft.pt", "--train_prompts={w}/prompts_train.jsonl",
                           "--eval_prompts="]),
])
@pytest.mark.parametrize("where", ["a_file", "/proc/nanorlhf_test"])
def test_an_out_dir_that_cannot_be_written_is_one_line(world, tmp_path, script, args, where):
    (tmp_path / "a_file").write_text("x")
    hh = os.path.join(os.path.dirname(__file__), "fixtures", "hh", "helpful-base", "train.jsonl.gz")
    out = tmp_path / where if where == "a_file" else where
    rc, _, err = cli(script, *[a.format(w=world, hh=hh) for a in args], f"--out_dir={out}")
    assert_one_error_line(rc, err, str(out))
    assert (tmp_path / "a_file").read_text() == "x"


def test_hh_conversion_of_other_files_needs_overwrite(tmp_path):
    fixtures = os.path.join(os.path.dirname(__file__), "fixtures", "hh", "helpful-base")
    from data.hh import prepare as hh
    out = tmp_path / "out"
    hh.main([f"--input={fixtures}/train.jsonl.gz", f"--out_dir={out}"])
    before = snapshot(out)
    with pytest.raises(ConfigError, match="already holds a conversion of HH-RLHF.*--overwrite=True"):
        hh.main([f"--input={fixtures}/test.jsonl.gz", f"--out_dir={out}"])
    assert snapshot(out) == before
    hh.main([f"--input={fixtures}/test.jsonl.gz", f"--out_dir={out}", "--overwrite=True"])
    assert sorted(n for n in os.listdir(out) if n.endswith(".jsonl")) == [
        "prefs_test.jsonl", "prompts_test.jsonl", "sft_test.jsonl"]  # the train files went

# -----------------------------------------------------------------------------
# the pipeline: nothing starts if a stage would refuse; signals reach the stages


def old_pipeline_run(world, tmp_path):
    toy_prepare.prepare(str(tmp_path / "data"), seed=1337)
    out = tmp_path / "out"
    save_model(out / "ppo_toy" / "ckpt_last.pt", GPT(GPTConfig(**TINY_MODEL)), "policy", "ppo")
    return snapshot(tmp_path / "data"), snapshot(out / "ppo_toy")


@pytest.mark.parametrize("args, words", [
    (["--seed=7"], ["nothing was run", "prepare:", "ppo:", "--overwrite=True"]),
    (["--methods="], ["nothing was run", "ppo:", "holds a run"]),
])
def test_pipeline_checks_every_stage_before_it_runs_one(world, tmp_path, args, words):
    data, ppo = old_pipeline_run(world, tmp_path)
    rc, out, err = cli("pipeline.py", f"--out={tmp_path / 'out'}", f"--data_dir={tmp_path / 'data'}",
                       "--scale=mini", "--plots=False", *args, timeout=60)
    assert_one_error_line(rc, err, *words)
    assert "--resume" not in err  # the pipeline has no such key
    assert snapshot(tmp_path / "data") == data and snapshot(tmp_path / "out" / "ppo_toy") == ppo
    assert not (tmp_path / "out" / "sft_toy").exists() and "$ python" not in out


def test_pipeline_rejects_kto_on_static_data(tmp_path):
    with pytest.raises(ConfigError, match="kto .*data='onpolicy'"):
        pipeline.main([f"--out={tmp_path}", "--data=static", "--rounds=1", "--methods=kto"])
    assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_sigterm_reaches_the_running_stage_and_the_pipeline_waits(tmp_path):
    p = subprocess.Popen([sys.executable, "pipeline.py", f"--out={tmp_path / 'out'}",
                          f"--data_dir={tmp_path / 'data'}", "--plots=False", "--methods="],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    for line in p.stdout:
        if "[sft: started" in line:
            break
    log = tmp_path / "out" / "logs" / "sft.txt"
    deadline = time.time() + RUN_TIMEOUT_S
    while "step" not in (log.read_text() if log.exists() else "") and time.time() < deadline:
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=RUN_TIMEOUT_S)
    assert_one_error_line(p.returncode, err, "stopped by SIGTERM")
    assert "SIGTERM received" in log.read_text()  # the stage saved and stopped on its own
    ckpt = checkpoint.load_checkpoint(str(tmp_path / "out" / "sft_toy" / "ckpt_last.pt"))
    assert ckpt["step"] >= 1
    left = subprocess.run(["pgrep", "-f", str(tmp_path / "out")], capture_output=True, text=True)
    assert left.stdout.strip() == ""  # no stage left running

# -----------------------------------------------------------------------------
# resume: a config that changes the run is refused, naming the keys


@pytest.fixture
def stopped_dpo(world, tmp_path):
    out = tmp_path / "dpo"
    args = ARGS["dpo"](world) + [f"--out_dir={out}", "--max_iters=4", "--warmup_iters=1",
                                 "--eval_interval=2", "--ckpt_interval=2"]
    train_dpo.main(args + ["--stop_iter=2"])
    return args, out, snapshot(out)


@pytest.mark.parametrize("change, key", [
    ("--loss_type=ipo", "loss_type"), ("--beta=0.25", "beta"), ("--seed=9", "seed"),
    ("--lr=0.5", "lr"), ("--val_data={w}/prefs_train.jsonl", "val_data"),
    ("--eval_examples=4", "eval_examples")])
def test_resume_under_another_config_is_refused(world, stopped_dpo, change, key):
    args, out, before = stopped_dpo
    with pytest.raises(ConfigError, match=f"--resume=True with another config \\({key}="):
        train_dpo.main(args + ["--resume=True", change.format(w=world)])
    assert snapshot(out) == before


def test_resume_may_change_how_long_and_how_it_reports(world, stopped_dpo):
    args, out, _ = stopped_dpo
    rel = [a.replace(str(world), os.path.relpath(world)) for a in args]  # the same files
    res = train_dpo.main(rel + ["--resume=True", "--max_iters=6", "--log_interval=2",
                                "--eval_interval=3", "--grad_checkpoint=True"])  # same gradients
    assert res["step"] == 6

# -----------------------------------------------------------------------------
# frontier: a point is keyed by what defines it


def test_frontier_points_of_another_budget_are_other_runs(world, tmp_path):
    for name in ("sft_toy/ckpt_best.pt", "rm_toy/ckpt_best.pt"):
        os.makedirs(tmp_path / os.path.dirname(name), exist_ok=True)
    save_model(tmp_path / "sft_toy" / "ckpt_best.pt", GPT(GPTConfig(**TINY_MODEL)), "policy", "sft")
    cfg = lambda budget: config.parse_config(frontier.DEFAULTS, [  # noqa: E731
        f"--out={tmp_path}", f"--budget={budget}", "--methods=dpo"])
    mini, small = frontier.points(cfg("mini"), ["dpo"]), frontier.points(cfg("small"), ["dpo"])
    assert not {p[3] for p in mini} & {p[3] for p in small}
    assert mini == frontier.points(cfg("mini"), ["dpo"])  # the same inputs: the same points
    # another SFT policy under the same path: other points
    save_model(tmp_path / "sft_toy" / "ckpt_best.pt", GPT(GPTConfig(**{**TINY_MODEL, "n_embd": 64})),
               "policy", "sft")
    frontier._file_hashes.clear()
    assert not {p[3] for p in mini} & {p[3] for p in frontier.points(cfg("mini"), ["dpo"])}

# -----------------------------------------------------------------------------
# eval.py: policy names, weights and outputs


def eval_args(w, out, *extra):
    return [f"--policies=sft:{w / 'sft.pt'}", f"--reward_model={w / 'rm.pt'}",
            f"--reference={w / 'sft.pt'}", f"--prompts={w / 'prompts_eval.jsonl'}",
            f"--pairs={w / 'prefs_val.jsonl'}", f"--demo_val_data={w / 'sft_val.jsonl'}",
            "--eval_examples=4", "--max_new_tokens=8",
            "--device=cpu", f"--out_dir={out}", *extra]


@pytest.mark.parametrize("spec, words", [
    ("bon0", ["'bon0'", "1..1024"]), ("bon-16", ["'bon-16'"]), ("bon1000000000", ["'bon1000000000'"]),
    ("bon_4", ["'bon_4'"])])
def test_eval_refuses_best_of_n_typos(world, tmp_path, spec, words):
    with pytest.raises(ConfigError) as e:
        eval_script.main(eval_args(world, tmp_path / "e", f"--policies={spec}:{world / 'sft.pt'}",
                                   "--baseline="))
    assert all(w in str(e.value) for w in words), e.value
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("arg, key", [("--bon_sweep=1000000000", "bon_sweep"),
                                      ("--num_samples_per_prompt=1000000000", "num_samples_per_prompt"),
                                      ("--baseline_draws=0", "baseline_draws")])
def test_eval_bounds_its_sample_counts(world, tmp_path, arg, key):
    with pytest.raises(ConfigError, match=f"'{key}' must be in"):
        eval_script.main(eval_args(world, tmp_path / "e", arg))


def test_eval_refuses_non_finite_weights_a_large_vocabulary_and_too_many_positions(world, tmp_path):
    model = GPT(GPTConfig(**TINY_MODEL))
    with torch.no_grad():
        model.transformer.h[0].attn.c_attn.weight[0, 0] = float("nan")
    nan = save_model(tmp_path / "nan.pt", model, "policy", "sft")
    big = save_model(tmp_path / "big.pt", GPT(GPTConfig(**{**TINY_MODEL, "vocab_size": 300})),
                     "policy", "sft")
    for extra, words in (([f"--policies=sft:{world / 'sft.pt'},nan:{nan}"], ["nan.pt", "NaN"]),
                         ([f"--policies=sft:{world / 'sft.pt'},big:{big}"], ["big.pt", "300"]),
                         (["--block_size=4096"], ["block_size=4096", "1..128"])):
        with pytest.raises((CheckpointError, ConfigError)) as e:
            eval_script.main(eval_args(world, tmp_path / "e", *extra))
        assert all(w in str(e.value) for w in words), e.value
        assert snapshot(tmp_path / "e") in (None, {})


def test_a_re_evaluation_replaces_the_whole_output_set(world, tmp_path):
    out = tmp_path / "e"
    out.mkdir()
    (out / "overoptimization.json").write_text('{"run": ["an earlier sweep"]}')
    eval_script.main(eval_args(world, out))
    assert sorted(n for n in os.listdir(out) if not n.startswith(".")) == [
        "eval_manifest.json", "results.json", "results.md", "samples.jsonl"]


def test_a_full_disk_during_evaluation_keeps_the_previous_results(world, tmp_path, monkeypatch):
    out = tmp_path / "e"
    eval_script.main(eval_args(world, out))
    before = snapshot(out)
    real = eval_script.write_json

    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(eval_script, "write_json", full)
    with pytest.raises(FileError, match="No space left on device"):
        eval_script.main(eval_args(world, out, "--seed=5"))
    monkeypatch.setattr(eval_script, "write_json", real)
    assert snapshot(out) == before
    assert not [n for n in os.listdir(out) if n.startswith(".staging")]

# -----------------------------------------------------------------------------
# one reward contract


def rewards(tmp_path):
    path = tmp_path / "rewards.py"
    path.write_text("import sys\nimport numpy as np\n"
                    "def exits(p, r): sys.exit(0)\n"
                    "def raises(p, r): raise KeyError('boom')\n"
                    "def huge(p, r): return 10 ** 400\n"
                    "def big(p, r): return 1e300\n"
                    "def text(p, r): return '1.0'\n"
                    "def f32(p, r): return np.float32(0.5)\n"
                    "def i64(p, r): return np.int64(-2)\n")
    return path


@pytest.mark.unit
@pytest.mark.parametrize("fn, words", [
    ("exits", ["raised SystemExit"]), ("raises", ["raised KeyError", "boom"]),
    ("huge", ["outside the finite range"]), ("big", ["1e+300", "outside"]),
    ("text", ["returned str"])])
def test_the_reward_contract_turns_every_fault_into_one_line(tmp_path, fn, words):
    f = load_reward_fn(f"{rewards(tmp_path)}:{fn}")
    with pytest.raises(ConfigError) as e:
        f("What color is a lime?", "Green.")
    for w in [fn, "'What color is a lime?'"] + words:
        assert w in str(e.value), (w, e.value)


@pytest.mark.unit
def test_the_reward_contract_takes_numpy_scalars_and_wraps_the_gold_judge(tmp_path):
    assert load_reward_fn(f"{rewards(tmp_path)}:f32")("p", "r") == 0.5
    assert load_reward_fn(f"{rewards(tmp_path)}:i64")("p", "r") == -2.0
    assert isinstance(load_reward_fn(f"{rewards(tmp_path)}:f32")("p", "r"), float)
    with pytest.raises(ConfigError, match="not a toy-world prompt"):
        load_reward_fn("toy_gold")("Write a haiku.", "No.")
    with pytest.raises(ConfigError, match="gold_judge='toy'.*not a toy-world prompt"):
        eval_script.toy_gold("Write a haiku.", "No.")
    assert reward_contract(lambda p, r: np.float64(1.5), "f")("p", "r") == 1.5


@pytest.mark.slow
def test_a_reward_function_that_exits_stops_grpo_with_one_line(world, tmp_path):
    rc, _, err = cli("train_grpo.py", *[a for a in ARGS["grpo"](world) if "max_iters" not in a],
                     "--max_iters=1", f"--reward_fn={rewards(tmp_path)}:exits",
                     f"--out_dir={tmp_path / 'out'}")
    assert_one_error_line(rc, err, "exits", "raised SystemExit")

# -----------------------------------------------------------------------------
# operating-system errors and the rest


def test_a_full_disk_during_a_checkpoint_write_is_one_line(world, tmp_path):
    out = tmp_path / "sft"
    args = ARGS["sft"](world) + [f"--out_dir={out}", "--max_iters=4", "--ckpt_interval=2"]
    assert cli("train_sft.py", *args, "--stop_iter=2")[0] == 0
    before = snapshot(out)
    code = ("import errno, runpy, sys, torch\n"
            "def full(*a, **k): raise OSError(errno.ENOSPC, 'No space left on device')\n"
            "torch.save = full\nsys.argv = sys.argv[1:]\n"
            "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    p = subprocess.run([sys.executable, "-c", code, "train_sft.py", *args, "--resume=True"],
                       capture_output=True, text=True, cwd=ROOT, timeout=RUN_TIMEOUT_S)
    assert_one_error_line(p.returncode, p.stderr, str(out / "ckpt_"), "No space left on device",
                          "previous file is kept")
    assert {n: b for n, b in snapshot(out).items() if n.endswith(".pt")} == \
        {n: b for n, b in before.items() if n.endswith(".pt")}
    assert not [n for n in os.listdir(out) if ".tmp." in n]


@pytest.mark.parametrize("value, words", [("{w}/sft_train.jsonl,", ["empty name", "stray comma"]),
                                          ("{tmp}", ["is a directory"])])
def test_a_bad_file_list_is_one_line(world, tmp_path, value, words):
    with pytest.raises(ConfigError) as e:
        train_dpo.main(ARGS["dpo"](world) + [f"--train_data={value.format(w=world, tmp=tmp_path)}",
                                             f"--out_dir={tmp_path / 'o'}"])
    assert all(w in str(e.value) for w in words), e.value


def test_sample_with_standard_input_closed_is_one_line(world):
    rc, _, err = cli("sample.py", f"--ckpt={world / 'sft.pt'}", "--device=cpu",
                     stdin=subprocess.DEVNULL, preexec_fn=lambda: os.close(0))
    assert_one_error_line(rc, err, "standard input is closed")


def test_export_refuses_non_finite_weights_and_a_full_disk(world, tmp_path, monkeypatch):
    import export_hf
    import hf_io
    model = GPT(GPTConfig(**TINY_MODEL))
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("inf")
    with pytest.raises(CheckpointError, match="holds NaN or inf"):
        export_hf.main([f"--ckpt={save_model(tmp_path / 'inf.pt', model, 'policy', 'sft')}",
                        f"--out_dir={tmp_path / 'hf'}"])
    real = torch.Tensor.numpy

    def full(t):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch.Tensor, "numpy", full)
    with pytest.raises(FileError, match="model.safetensors: cannot write it"):
        export_hf.main([f"--ckpt={world / 'sft.pt'}", f"--out_dir={tmp_path / 'hf2'}"])
    monkeypatch.setattr(torch.Tensor, "numpy", real)
    assert [n for n in os.listdir(tmp_path / "hf2") if ".tmp." in n] == []
    assert hf_io  # the writer that cleans up its temp file


def test_kto_on_answers_of_one_label_gives_no_impossible_advice(world, tmp_path, capsys):
    import train_kto
    rows = [json.loads(l) for l in open(world / "kto_train.jsonl")]
    write_jsonl(tmp_path / "good.jsonl", [r for r in rows if r["label"]])
    train_kto.main(ARGS["kto"](world) + [f"--train_data={tmp_path / 'good.jsonl'}",
                                         f"--out_dir={tmp_path / 'o'}", "--max_iters=1"])
    printed = capsys.readouterr().out
    assert "are desirable: no weighting balances them" in printed
    assert "desirable_weight=0" not in printed


@pytest.mark.unit
@pytest.mark.parametrize("phase", ["staging", "replacing", "replaced"])
def test_a_data_set_swap_cut_short_is_completed_or_undone(tmp_path, phase):
    # a kill in each phase of the swap: staging alone (the new set unfinished) is dropped; once
    # the old files began to move aside, the new set is completed; never a mix of the two
    out = tmp_path / "d"
    names = ["x_train.jsonl", "x_test.jsonl", "x_manifest.json"]
    out.mkdir()
    for n in names:
        (out / n).write_text("old")
    (out / "other.jsonl").write_text("not the set's")
    (out / ".staging-x").mkdir()
    for n in names[::2]:  # the new set has no test file
        (out / ".staging-x" / n).write_text("new")
    if phase != "staging":
        aside = out / (".replacing-x" if phase == "replacing" else ".replaced-x")
        aside.mkdir()
        os.replace(out / "x_train.jsonl", aside / "x_train.jsonl")  # one old file moved so far
        if phase == "replaced":
            os.replace(out / "x_test.jsonl", aside / "x_test.jsonl")
            os.replace(out / "x_manifest.json", aside / "x_manifest.json")
            os.replace(out / ".staging-x" / "x_train.jsonl", out / "x_train.jsonl")  # one new in
    run._finish_swap(str(out), ".staging-x", set(names).__contains__)
    files = {n: (out / n).read_text() for n in os.listdir(out)}
    want = {n: "old" for n in names} if phase == "staging" else \
        {"x_train.jsonl": "new", "x_manifest.json": "new"}
    assert files == {**want, "other.jsonl": "not the set's"}


@pytest.mark.unit
def test_resume_may_split_the_same_global_batch_otherwise():
    from types import SimpleNamespace
    from run import check_same_run
    stored = dict(batch_size=2, grad_accum=2, lr=1e-3)
    cfg = lambda **kw: SimpleNamespace(**{**stored, **kw})  # noqa: E731
    # two processes of 2 x 2 are one of 8 x 1, or one of 4 x 2: the same step
    check_same_run(stored, cfg(batch_size=8, grad_accum=1), "ckpt", (2, 1))
    check_same_run(stored, cfg(batch_size=4, grad_accum=2), "ckpt", (2, 1))
    for new, sizes in ((dict(batch_size=8, grad_accum=1), (1, 1)),   # twice the batch
                       (dict(batch_size=1, grad_accum=1), (2, 1)),   # an eighth of it
                       (dict(batch_size=8, grad_accum=1), (None, 1))):  # an older checkpoint
        with pytest.raises(ConfigError, match="batch_size=2 -> "):
            check_same_run(stored, cfg(**new), "ckpt", sizes)
    with pytest.raises(ConfigError, match="lr=0.001 -> 0.002"):
        check_same_run(stored, cfg(batch_size=8, grad_accum=1, lr=2e-3), "ckpt", (2, 1))
