"""
Reliability: a run that dies loses at most the work since its last checkpoint, and bad input fails
before any training, saying what is wrong and where.

- fault injection: each training script, run as a real process on a tiny config, is SIGKILLed at
  random steps and resumed until it finishes; its checkpoints and metrics must equal, bit for bit,
  those of an uninterrupted run. SIGINT and SIGTERM must checkpoint at a step boundary and exit 0;
- numerics: a NaN or infinite loss or gradient stops the run naming the step and the quantity,
  and leaves the last good checkpoint byte-identical;
- a checkpoint write that dies halfway leaves the previous file whole;
- a corpus of malformed inputs (data files, config values, CLI arguments, checkpoints, out_dir),
  each rejected with the project's error type, a message naming the file/line/field or the key,
  and nothing written to out_dir.
"""

import ast
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest
import torch

import common
import export_hf
import train_dpo
import train_grpo
import train_ppo
import train_reward_model
import train_sft
from common import CheckpointError, ConfigError
from data.loader import DataError
from data.toy.prepare import prepare, write_jsonl
from model import GPT, GPTConfig, ScalarModel

SCRIPTS = {"sft": train_sft, "rm": train_reward_model, "ppo": train_ppo, "dpo": train_dpo,
           "grpo": train_grpo}
TINY_MODEL = dict(block_size=128, vocab_size=257, n_layer=1, n_head=2, n_embd=32)
# wall-clock fields of the logs: everything else must be reproduced exactly
TIMING_KEYS = {"time", "tok_per_s", "ms_per_iter", "ms", "rollout_frac", "s_per_iter"}
RUN_TIMEOUT_S = 300  # one process of a tiny run takes seconds; this only catches a hang


def save_model(path, model, kind, stage, tokenizer="byte"):
    common.save_checkpoint(str(path), common.make_checkpoint(model, kind, stage, tokenizer,
                                                             SimpleNamespace(), step=0))
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The toy world cut to a few hundred rows, a tiny random 'SFT' policy and reward model."""
    root = tmp_path_factory.mktemp("reliability")
    prepare(str(root / "full"), seed=1337)
    sizes = dict(sft_train=300, sft_val=40, prefs_train=300, prefs_val=40, prompts_train=64,
                 prompts_eval=16)
    for name, n in sizes.items():
        with open(root / "full" / f"{name}.jsonl") as f:
            lines = f.readlines()[:n]
        with open(root / f"{name}.jsonl", "w") as f:
            f.writelines(lines)
    torch.manual_seed(0)
    policy = GPT(GPTConfig(**TINY_MODEL))
    with torch.no_grad():  # answers that end: EOS is likely
        policy.transformer.wte.weight[256] *= 8
    save_model(root / "sft.pt", policy, "policy", "sft")
    save_model(root / "rm.pt", ScalarModel(GPTConfig(**TINY_MODEL)), "scalar", "rm")
    return root


@pytest.fixture(autouse=True)
def keep_signal_handlers():
    """In-process runs install the scripts' SIGINT/SIGTERM handlers: give pytest its own back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)

# -----------------------------------------------------------------------------
# tiny but complete configs: every run below saves several checkpoints and evaluates mid-run


def sft_args(w):
    return [f"--train_data={w / 'sft_train.jsonl'}", f"--val_data={w / 'sft_val.jsonl'}",
            "--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=128", "--batch_size=8",
            "--max_iters=24", "--warmup_iters=4", "--lr=3e-3", "--min_lr=3e-4",
            "--dropout=0.1",  # dropout draws from the RNG: its state must resume too
            "--eval_interval=8", "--eval_examples=16", "--num_samples=1", "--sample_tokens=8",
            "--log_interval=1", "--ckpt_interval=4", "--device=cpu", "--dtype=float32"]


def rm_args(w):
    return [f"--init_from={w / 'sft.pt'}", f"--train_data={w / 'prefs_train.jsonl'}",
            f"--val_data={w / 'prefs_val.jsonl'}", f"--bias_data={w / 'sft_train.jsonl'}",
            "--block_size=128", "--batch_size=8", "--max_iters=24", "--warmup_iters=4",
            "--dropout=0.1", "--eval_interval=8", "--eval_examples=32", "--bias_examples=32",
            "--log_interval=1", "--ckpt_interval=4", "--device=cpu", "--dtype=float32"]


def dpo_args(w):
    # eval_interval a multiple of ckpt_interval: a run resumed at an evaluated step must
    # neither repeat nor skip that evaluation
    return [f"--init_from={w / 'sft.pt'}", f"--train_data={w / 'prefs_train.jsonl'}",
            f"--val_data={w / 'prefs_val.jsonl'}", "--block_size=128", "--batch_size=8",
            "--max_iters=24", "--warmup_iters=4", "--dropout=0.1", "--precompute_ref_logps=True",
            "--eval_interval=8", "--eval_examples=16", "--log_interval=1", "--ckpt_interval=4",
            "--device=cpu", "--dtype=float32"]


def ppo_args(w):
    # adaptive KL: the coefficient is state that a resumed run must pick up
    return [f"--init_from={w / 'sft.pt'}", f"--reward_model={w / 'rm.pt'}",
            f"--train_prompts={w / 'prompts_train.jsonl'}",
            f"--val_prompts={w / 'prompts_eval.jsonl'}", "--gold_judge=toy", "--block_size=96",
            "--rollout_batch_size=8", "--minibatch_size=4", "--micro_batch_size=4",
            "--max_new_tokens=12", "--num_iterations=2", "--max_iters=12", "--adaptive_kl=True",
            "--kl_horizon=50", "--target_kl=0.5", "--lr=1e-3", "--critic_lr=1e-3",
            "--eval_interval=4", "--eval_examples=8", "--sample_interval=100", "--num_samples=0",
            "--ckpt_interval=2", "--save_every=0", "--log_interval=1", "--device=cpu",
            "--dtype=float32"]


def grpo_args(w):
    # RLOO on groups of 4: no critic, the KL in the reward; samples logged to tokens.jsonl
    return [f"--init_from={w / 'sft.pt'}", f"--reward_model={w / 'rm.pt'}",
            f"--train_prompts={w / 'prompts_train.jsonl'}",
            f"--val_prompts={w / 'prompts_eval.jsonl'}", "--gold_judge=toy", "--block_size=96",
            "--advantage=rloo", "--group_size=4", "--rollout_batch_size=8", "--minibatch_size=4",
            "--micro_batch_size=4", "--max_new_tokens=12", "--num_iterations=2",
            "--max_iters=12", "--lr=1e-3", "--eval_interval=4", "--eval_examples=8",
            "--sample_interval=3", "--num_samples=1", "--ckpt_interval=2", "--save_every=0",
            "--log_interval=1", "--device=cpu", "--dtype=float32"]


ARGS = {"sft": sft_args, "rm": rm_args, "ppo": ppo_args, "dpo": dpo_args, "grpo": grpo_args}
MAX_STEPS = {"sft": 24, "rm": 24, "ppo": 12, "dpo": 24, "grpo": 12}

# -----------------------------------------------------------------------------
# driving a real training process

STEP_LINE = re.compile(r"^step\s+(\d+) \|")


def launch(stage, args, out, log_file=None):
    """Start `python train_<stage>.py args --out_dir=out`, one thread, unbuffered output."""
    script = SCRIPTS[stage].__file__
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-u", script, *args, f"--out_dir={out}"],
                            cwd=str(out.parent), env=env, text=True,
                            stdout=log_file or subprocess.PIPE, stderr=subprocess.STDOUT)


def drive(proc, stop_at=None, sig=signal.SIGKILL, rng=None):
    """
    Read a running process's output; at its first 'step N |' line with N >= stop_at, wait a
    random moment (so that signals land mid-step, mid-evaluation or mid-checkpoint-write) and
    send `sig`. Returns (exit code, output, logged steps).
    """
    watchdog = threading.Timer(RUN_TIMEOUT_S, proc.kill)
    watchdog.start()
    lines, steps, sent = [], [], False
    try:
        for line in proc.stdout:
            lines.append(line)
            m = STEP_LINE.match(line)
            if m:
                steps.append(int(m.group(1)))
            if m and stop_at is not None and not sent and steps[-1] >= stop_at:
                time.sleep(rng.uniform(0.0, 0.05))
                proc.send_signal(sig)
                sent = True
        rc = proc.wait()
    finally:
        watchdog.cancel()
    return rc, "".join(lines), steps


def kill_steps(rng, max_steps, n):
    """n steps to kill at, one from each of n equal stretches of 2 .. 3/4 of the run: early ones
    may come before the first checkpoint, and the last one comes well before the end (so that it
    lands even when this process reads the output late on a busy machine)."""
    edges = [2 + (3 * max_steps // 4 - 2) * i // n for i in range(n + 1)]
    return [rng.randrange(lo, max(hi, lo + 1)) for lo, hi in zip(edges, edges[1:])]


def run_interrupted(stage, args, out, rng, n_kills, graceful=None):
    """
    Run a stage to completion through n_kills SIGKILLs at random steps (plus, with graceful=
    SIGINT or SIGTERM, one polite stop first), resuming from ckpt_last.pt after each, or starting
    afresh when none was written yet. Returns the number of processes that were really killed.
    """
    plan = [(s, signal.SIGKILL) for s in kill_steps(rng, MAX_STEPS[stage], n_kills)]
    if graceful is not None:
        plan.insert(0, (rng.randrange(2, plan[0][0] + 1), graceful))
    killed = 0
    for stop_at, sig in plan + [(None, None)]:
        last = out / "ckpt_last.pt"
        flag = "--resume=True" if last.exists() else "--overwrite=True"
        rc, text, steps = drive(launch(stage, args + [flag], out), stop_at, sig, rng)
        print(f"{flag}, signal {sig!r} at step >= {stop_at}: exit code {rc}, steps {steps[:1]}.."
              f"{steps[-1:]}")  # shown when the test fails
        if sig is not None and sig == graceful:
            # the stop lands at a step boundary: the checkpoint is that of the last logged step
            assert rc == 0, text[-3000:]
            assert f"{signal.Signals(sig).name} received" in text, text[-3000:]
            ckpt = common.load_checkpoint(str(last))
            assert ckpt["step"] == steps[-1] and ckpt["step"] >= stop_at, (ckpt["step"], steps)
            assert re.search(rf"(stopping|stopped) (at step|after iteration) {steps[-1]}\b", text)
            continue
        if rc == 0:  # finished before the kill landed (or no kill planned)
            break
        assert rc == -signal.SIGKILL, text[-3000:]
        killed += 1
    assert rc == 0, text[-3000:]
    return killed


def read_metrics(out, name="log.jsonl"):
    """The run's log.jsonl (or tokens.jsonl) records without their wall-clock fields."""
    if not (out / name).exists():
        return None
    with open(out / name) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in f]


def assert_same(a, b, where):
    """Two checkpoint trees equal exactly: same keys, bit-identical tensors, equal numbers."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, sorted(a), sorted(b))
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, (where, a, b)


def assert_same_run(ref, out):
    """Checkpoints (weights, optimizer, RNG, loop state; not the config, which names out_dir and
    the resume flags) and metrics of two runs are identical."""
    names = sorted(n for n in os.listdir(ref) if n.endswith(".pt"))
    assert names == sorted(n for n in os.listdir(out) if n.endswith(".pt"))
    assert "ckpt_last.pt" in names and "ckpt_best.pt" in names
    for name in names:
        a = torch.load(ref / name, map_location="cpu", weights_only=True)
        b = torch.load(out / name, map_location="cpu", weights_only=True)
        a.pop("config", None), b.pop("config", None)
        assert_same(a, b, name)
    assert read_metrics(out) == read_metrics(ref)
    assert read_metrics(out, "tokens.jsonl") == read_metrics(ref, "tokens.jsonl")
    assert not [n for n in os.listdir(out) if ".tmp." in n]  # no half-written file left behind

# -----------------------------------------------------------------------------
# fault injection: SIGKILL at random points (and SIGINT/SIGTERM) never changes the result


@pytest.mark.slow
@pytest.mark.parametrize("stage, n_kills, graceful", [
    ("sft", 2, signal.SIGTERM),
    ("rm", 3, None),
    ("dpo", 2, signal.SIGINT),
    ("ppo", 2, signal.SIGINT),
    ("grpo", 2, signal.SIGTERM),
])
def test_killed_and_resumed_run_equals_uninterrupted_run(world, tmp_path, stage, n_kills,
                                                          graceful):
    rng = random.Random(f"{stage}-1337")
    args = ARGS[stage](world)
    ref_dir, out = tmp_path / "uninterrupted", tmp_path / "interrupted"
    with open(tmp_path / "uninterrupted.txt", "w") as log:  # both at once: the machine idles less
        ref = launch(stage, args, ref_dir, log)
        killed = run_interrupted(stage, args, out, rng, n_kills, graceful)
        assert ref.wait(timeout=RUN_TIMEOUT_S) == 0, (tmp_path / "uninterrupted.txt").read_text()
    assert killed >= max(1, n_kills - 1), "the kills must land before the run ends"
    assert_same_run(ref_dir, out)


@pytest.mark.parametrize("stage", sorted(SCRIPTS))
def test_resuming_a_finished_run_changes_nothing(world, tmp_path, stage):
    # a kill between the last checkpoint and the exit looks like a crash: resuming must not redo
    # the end of the run (the reward model's normalisation, a last evaluation) or log it twice
    args = ARGS[stage](world) + [f"--out_dir={tmp_path}", "--max_iters=4", "--warmup_iters=1"]
    SCRIPTS[stage].main(args)
    before = snapshot(tmp_path)
    assert "ckpt_last.pt" in before
    SCRIPTS[stage].main(args + ["--resume=True"])
    assert snapshot(tmp_path) == before

# -----------------------------------------------------------------------------
# numerics: NaN / inf stop the run and never overwrite the last good checkpoint


def poison_loss(monkeypatch, module, name, where, value):
    """Make the training loss function `name` of a script non-finite, through its first input
    (where='input': a model output, e.g. a reward) or its result (where='output'). Calls
    without autograd (evaluation) are left alone."""
    real = getattr(module, name)

    def poisoned(first, *args, **kwargs):
        if not torch.is_grad_enabled():
            return real(first, *args, **kwargs)
        if where == "input":
            return real(first + value, *args, **kwargs)
        return real(first, *args, **kwargs) + value
    monkeypatch.setattr(module, name, poisoned)


def poison_grads(monkeypatch, value):
    """Add value (nan or inf) to the gradient of the first parameter of every optimized model."""
    real = common.configure_optimizer

    def configure(model, *args, **kwargs):
        next(model.parameters()).register_hook(lambda g: g + value)
        return real(model, *args, **kwargs)
    monkeypatch.setattr(common, "configure_optimizer", configure)


@pytest.mark.parametrize("stage, target, value, quantity", [
    ("sft", ("sft_loss", "output"), float("inf"), "loss is inf"),
    ("rm", ("reward_model_loss", "input"), float("nan"), "loss is nan"),
    ("dpo", None, float("nan"), "grad_norm is nan"),
    ("ppo", None, float("inf"), "grad_norm is inf"),
])
def test_non_finite_stops_the_run_and_keeps_the_last_checkpoint(world, tmp_path, monkeypatch,
                                                                  stage, target, value, quantity):
    module, out = SCRIPTS[stage], tmp_path / stage
    args = ARGS[stage](world) + [f"--out_dir={out}", "--eval_interval=100", "--ckpt_interval=1",
                                 "--stop_iter=2"]
    module.main(args)
    files = {n: (out / n).read_bytes() for n in os.listdir(out) if n.endswith(".pt")}
    assert "ckpt_last.pt" in files
    if target:
        poison_loss(monkeypatch, module, *target, value)
    else:
        poison_grads(monkeypatch, value)
    # resumed at step 2, the very next update is poisoned; ckpt_interval=1 would save right after
    with pytest.raises(common.NonFiniteError, match=rf"step \d+: {quantity}") as e:
        module.main([a for a in args if not a.startswith("--stop_iter")] + ["--resume=True"])
    assert {n: (out / n).read_bytes() for n in os.listdir(out) if n.endswith(".pt")} == files
    assert not [n for n in os.listdir(out) if ".tmp." in n]
    assert max(json.loads(line)["step"] for line in open(out / "log.jsonl")) <= 2
    # the error names the update as the log numbers it: the log (log_interval=1) holds the
    # training records of updates 1 and 2, so the poisoned one is step 3
    records = [json.loads(line) for line in open(out / "log.jsonl")]
    trained = [r["step"] for r in records if not any(k.startswith("val_") for k in r)]
    assert trained == [1, 2], records
    assert int(re.match(r"step (\d+):", str(e.value)).group(1)) == trained[-1] + 1, e.value

# -----------------------------------------------------------------------------
# caches: a damaged one is rebuilt, not trusted


@pytest.mark.parametrize("damage", ["truncated", "wrong-shape"])
def test_dpo_recomputes_a_damaged_reference_cache(world, tmp_path, capsys, damage):
    out = tmp_path / "dpo"
    args = ARGS["dpo"](world) + [f"--out_dir={out}", "--max_iters=4", "--warmup_iters=1",
                                 "--eval_interval=4", "--ckpt_interval=2"]
    train_dpo.main(args + ["--stop_iter=2"])
    cache = out / "ref_logps.pt"
    good = torch.load(cache, map_location="cpu", weights_only=True)
    if damage == "truncated":  # a kill mid-write on a filesystem without atomic rename
        data = cache.read_bytes()
        cache.write_bytes(data[:len(data) // 2])
    else:  # a file of the right kind, for one pair fewer: indexing it would go wrong
        common.save_checkpoint(str(cache), {**good, "train": good["train"][:-1]})
    capsys.readouterr()
    train_dpo.main(args + ["--resume=True"])
    printed = capsys.readouterr().out
    assert f"note: {cache}:" in printed and "recomputing the reference log-probs" in printed
    # the rebuilt cache is the one the run first computed
    assert_same(torch.load(cache, map_location="cpu", weights_only=True), good, "ref_logps")

# -----------------------------------------------------------------------------
# a checkpoint write that dies halfway


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_write_that_dies_halfway_leaves_the_previous_checkpoint(tmp_path, monkeypatch, failure):
    path = tmp_path / "ckpt_last.pt"
    model = GPT(GPTConfig(**TINY_MODEL))
    save_model(path, model, "policy", "sft")
    before = path.read_bytes()

    def save_half_then_fail(obj, f, *args, **kwargs):
        f.write(before[:len(before) // 2])
        raise failure
    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(type(failure)):
        save_model(path, model, "policy", "sft")
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt_last.pt"]  # the half-written temp file is gone
    monkeypatch.undo()
    assert common.load_checkpoint(str(path), expect_kind="policy")["stage"] == "sft"


def test_every_torch_load_is_weights_only():
    # a checkpoint from the internet must not run code, wherever the project reads one
    root = os.path.dirname(common.__file__)
    calls = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("tests", "out")]
        for name in (f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            with open(path) as f:
                tree = ast.parse(f.read(), path)
            calls += [(path, node) for node in ast.walk(tree) if isinstance(node, ast.Call)
                      and ast.unparse(node.func) in ("torch.load", "pickle.load", "pickle.loads")]
    assert calls, "the scan found no torch.load at all: it is looking in the wrong place"
    for path, node in calls:
        kwargs = {k.arg: k.value for k in node.keywords}
        assert ast.unparse(node.func) == "torch.load", f"{path}:{node.lineno}: pickle"
        assert "weights_only" in kwargs and ast.literal_eval(kwargs["weights_only"]) is True, \
            f"{path}:{node.lineno}: torch.load without weights_only=True"


def test_resume_clears_the_temp_file_of_a_killed_write(tmp_path):
    out = tmp_path / "run"
    save_model(out / "ckpt_last.pt", GPT(GPTConfig(**TINY_MODEL)), "policy", "sft")
    (out / "ckpt_last.pt.tmp.4242").write_bytes(b"PK\x03\x04 cut short")  # SIGKILL mid-write
    assert common.prepare_out_dir(str(out), resume=True) == (str(out), str(out / "ckpt_last.pt"))
    assert os.listdir(out) == ["ckpt_last.pt"]
    common.load_checkpoint(str(out / "ckpt_last.pt"), expect_kind="policy")


def test_resume_drops_a_log_line_cut_by_a_kill(tmp_path):
    # a SIGKILL mid-write leaves half a line; the resumed run must not choke on it, and the
    # next line must start on a line of its own
    with open(tmp_path / "log.jsonl", "w") as f:
        f.writelines(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 5))
        f.write('{"step": 5, "lo')
    log = common.MetricsLogger(str(tmp_path), "log", resume_step=3)
    log.log(4, loss=0.5)
    records = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert [(r["step"], r["loss"]) for r in records] == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.5)]

# -----------------------------------------------------------------------------
# malformed inputs: rejected before training, naming what is wrong and where


class RunsCode:
    """A pickle that would create a directory when unpickled without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture(scope="module")
def bad(world):
    """The malformed files of the corpus, written once."""
    d = world / "bad"
    d.mkdir()
    sft_row = {"prompt": "What color is a lime?", "response": "A lime is green."}
    pair = {"prompt": "What color is a lime?", "chosen": "A lime is green.",
            "rejected": "A lime is blue."}
    (d / "empty.jsonl").write_text("")
    lines = [json.dumps(sft_row)] * 2 + [json.dumps(sft_row)[:25]]  # the last line cut short
    (d / "truncated.jsonl").write_text("\n".join(lines) + "\n")
    write_jsonl(d / "prompt_int.jsonl", [sft_row, {"prompt": 5, "response": "Five."}])
    (d / "bad_utf8.jsonl").write_bytes(json.dumps(sft_row).encode() + b'\n{"prompt": "\xff"}\n')
    write_jsonl(d / "long_answer.jsonl", [{"prompt": "Say a lot.", "response": "la " * 60}])
    write_jsonl(d / "chosen_list.jsonl", [pair, {**pair, "chosen": ["A lime is green."]}])
    write_jsonl(d / "margin_str.jsonl", [{**pair, "margin": "big"}])
    write_jsonl(d / "no_rejected.jsonl", [{k: v for k, v in pair.items() if k != "rejected"}])
    (d / "prompts_array.jsonl").write_text('["What color is a lime?"]\n')
    (d / "bad_key.py").write_text("n_layers = 2\n")
    (d / "wrong_type.py").write_text("batch_size = '8'\n")
    (d / "syntax.py").write_text("batch_size = (8\n")
    (d / "a_file").write_text("not a directory")
    (d / "exit.py").write_text("import sys\nsys.exit(0)\n")
    (d / "dup_key.jsonl").write_text('{"prompt": "a", "response": "b", "response": "c"}\n')
    (d / "surrogate.jsonl").write_text('{"prompt": "\\ud800", "chosen": "x", "rejected": "y"}\n')
    (d / "huge_int.jsonl").write_text('{"prompt": "a", "chosen": "x", "rejected": "y", "margin": '
                                      + "7" * 5000 + "}\n")
    (d / "deep.jsonl").write_text('{"prompt": ' + "[" * 50000 + "]" * 50000 + "}\n")
    write_jsonl(d / "big_margin.jsonl", [{**pair, "margin": 10 ** 30}])
    write_jsonl(d / "kto_label.jsonl", [{"prompt": "a", "completion": "b", "label": "yes"}])

    # checkpoints
    (d / "random.pt").write_bytes(random.Random(0).randbytes(3000))
    common.save_checkpoint(str(d / "bomb.pt"), {  # the settings of a 100B-parameter model
        "model": {}, "model_args": dict(block_size=8192, vocab_size=257, n_layer=96, n_head=96,
                                        n_embd=12288), "kind": "policy", "stage": "sft",
        "tokenizer": "byte"})
    save_model(d / "rm_vocab300.pt", ScalarModel(GPTConfig(**{**TINY_MODEL, "vocab_size": 300})),
               "scalar", "rm")
    no_opt = common.make_checkpoint(GPT(GPTConfig(**TINY_MODEL)), "policy", "sft", "byte",
                                    SimpleNamespace(), step=3)  # written without optimizer state
    common.save_checkpoint(str(d / "no_opt_run" / "ckpt_last.pt"), no_opt)
    for name, config, weights in (
            ("hf_bad_config", '{"model_type": "gpt2", "n_embd": 32,', None),
            ("hf_bad_st", json.dumps(dict(model_type="gpt2", n_positions=32, vocab_size=257,
                                          n_layer=1, n_head=2, n_embd=32)),
             (10 ** 6).to_bytes(8, "little") + b"{}")):
        (d / name).mkdir()
        (d / name / "config.json").write_text(config)
        (d / name / "model.safetensors").write_bytes(weights or b"")
    (d / "junk.pt").write_bytes(b"this is not a checkpoint")
    whole = (world / "sft.pt").read_bytes()
    (d / "truncated.pt").write_bytes(whole[:len(whole) // 2])
    evil = {"model": {}, "model_args": {}, "payload": RunsCode(str(d / "pwned"))}
    torch.save(evil, d / "evil.pt")
    torch.manual_seed(0)
    save_model(d / "gpt2_label.pt", GPT(GPTConfig(**TINY_MODEL)), "policy", "sft", "gpt2")
    save_model(d / "small_vocab.pt", GPT(GPTConfig(**{**TINY_MODEL, "vocab_size": 200})),
               "policy", "sft")
    save_model(d / "short_ctx.pt", GPT(GPTConfig(**{**TINY_MODEL, "block_size": 32})),
               "policy", "sft")
    save_model(d / "rm_short.pt", ScalarModel(GPTConfig(**{**TINY_MODEL, "block_size": 32})),
               "scalar", "rm")
    save_model(d / "rm_gpt2.pt", ScalarModel(GPTConfig(**TINY_MODEL)), "scalar", "rm", "gpt2")
    ckpt = torch.load(world / "sft.pt", weights_only=True)
    ckpt["model_args"]["n_embd"] = 64  # the weights are n_embd=32
    common.save_checkpoint(str(d / "mismatched.pt"), ckpt)

    # run directories: a finished SFT run, and one of PPO
    for stage, name in (("sft", "sft_run"), ("ppo", "ppo_run")):
        save_model(d / name / "ckpt_last.pt", GPT(GPTConfig(**TINY_MODEL)), "policy", stage)
        (d / name / "log.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    return d


def base_args(stage, w):
    """A valid one-step config of each script; every corpus case breaks one thing in it."""
    if stage == "sft":
        return [f"--train_data={w / 'sft_train.jsonl'}", f"--val_data={w / 'sft_val.jsonl'}",
                "--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=128",
                "--batch_size=8", "--max_iters=1", "--eval_examples=8", "--num_samples=0",
                "--device=cpu", "--dtype=float32"]
    if stage == "rm":
        return [f"--init_from={w / 'sft.pt'}", f"--train_data={w / 'prefs_train.jsonl'}",
                f"--val_data={w / 'prefs_val.jsonl'}", f"--bias_data={w / 'sft_val.jsonl'}",
                "--block_size=128", "--batch_size=8", "--max_iters=1", "--eval_examples=8",
                "--bias_examples=8", "--warmup_iters=0", "--device=cpu", "--dtype=float32"]
    if stage == "dpo":
        return [f"--init_from={w / 'sft.pt'}", f"--train_data={w / 'prefs_train.jsonl'}",
                f"--val_data={w / 'prefs_val.jsonl'}", "--block_size=128", "--batch_size=8",
                "--max_iters=1", "--eval_examples=8", "--device=cpu", "--dtype=float32"]
    rl = [f"--init_from={w / 'sft.pt'}", f"--reward_model={w / 'rm.pt'}",
          f"--train_prompts={w / 'prompts_train.jsonl'}",
          f"--val_prompts={w / 'prompts_eval.jsonl'}", "--gold_judge=", "--block_size=96",
          "--rollout_batch_size=8", "--minibatch_size=4", "--micro_batch_size=4",
          "--max_new_tokens=12", "--num_iterations=1", "--max_iters=1", "--eval_examples=8",
          "--num_samples=0", "--device=cpu", "--dtype=float32"]
    return rl + ["--group_size=4"] if stage == "grpo" else rl


# (id, script, arguments added to its base config ({b}: the bad-files folder, {w}: the world),
#  the error type, words the message must hold). The out_dir is fresh unless an argument names one.
CORPUS = [
    # data files: the message names the file, and the line and field where there is one
    ("empty-data-file", "sft", ["--train_data={b}/empty.jsonl"], DataError,
     ["empty.jsonl", "empty file"]),
    ("truncated-json-line", "sft", ["--val_data={b}/truncated.jsonl"], DataError,
     ["truncated.jsonl:3:", "malformed JSON"]),
    ("prompt-not-a-string", "sft", ["--train_data={b}/prompt_int.jsonl"], DataError,
     ["prompt_int.jsonl:2:", "'prompt'", "must be a string"]),
    ("invalid-utf8", "sft", ["--train_data={b}/bad_utf8.jsonl"], DataError,
     ["bad_utf8.jsonl:2:", "UTF-8"]),
    ("answer-longer-than-context", "sft", ["--train_data={b}/long_answer.jsonl"], DataError,
     ["long_answer.jsonl", "block_size"]),
    ("chosen-is-an-array", "rm", ["--train_data={b}/chosen_list.jsonl"], DataError,
     ["chosen_list.jsonl:2:", "'chosen'", "must be a string"]),
    ("margin-is-a-string", "rm", ["--val_data={b}/margin_str.jsonl"], DataError,
     ["margin_str.jsonl:1:", "'margin'"]),
    # read for the normalisation after training, but checked before it
    ("bias-data-truncated", "rm", ["--bias_data={b}/truncated.jsonl"], DataError,
     ["truncated.jsonl:3:", "malformed JSON"]),
    ("missing-field", "dpo", ["--train_data={b}/no_rejected.jsonl"], DataError,
     ["no_rejected.jsonl:1:", "'rejected': missing"]),
    ("record-not-an-object", "ppo", ["--train_prompts={b}/prompts_array.jsonl"], DataError,
     ["prompts_array.jsonl:1:", "JSON object"]),
    ("empty-prompts-file", "ppo", ["--val_prompts={b}/empty.jsonl"], DataError,
     ["empty.jsonl", "empty file"]),
    ("missing-data-file", "dpo", ["--val_data={b}/nope.jsonl"], ConfigError,
     ["val_data", "nope.jsonl", "does not exist"]),
    # config values: the message names the key
    ("zero-batch-size", "sft", ["--batch_size=0"], ConfigError, ["batch_size", "> 0"]),
    ("negative-width", "rm", ["--init_from=scratch", "--n_embd=-32"], ConfigError,
     ["n_embd", "> 0"]),
    ("negative-rollout-batch", "ppo", ["--rollout_batch_size=-8"], ConfigError,
     ["rollout_batch_size"]),
    ("zero-max-iters", "dpo", ["--max_iters=0"], ConfigError, ["max_iters", "> 0"]),
    ("negative-grad-clip", "dpo", ["--grad_clip=-1.0"], ConfigError, ["grad_clip", ">= 0"]),
    ("prompt-longer-than-context", "ppo", ["--max_new_tokens=96"], ConfigError,
     ["max_new_tokens=96", "block_size=96"]),
    ("block-size-beyond-positions", "sft", ["--init_from={b}/short_ctx.pt"], ConfigError,
     ["block_size=128", "1..32"]),
    ("block-size-beyond-policy", "dpo", ["--block_size=256"], ConfigError,
     ["block_size=256", "1..128"]),
    ("block-size-beyond-reward-model", "ppo", ["--reward_model={b}/rm_short.pt"], ConfigError,
     ["block_size=96", "1..32", "rm_short.pt"]),
    ("config-file-unknown-key", "sft", ["{b}/bad_key.py"], ConfigError,
     ["bad_key.py", "unknown config key 'n_layers'"]),
    ("config-file-wrong-type", "rm", ["{b}/wrong_type.py"], ConfigError,
     ["wrong_type.py", "'batch_size' must be int"]),
    ("config-file-syntax-error", "dpo", ["{b}/syntax.py"], ConfigError,
     ["syntax.py", "failed to run"]),
    # command-line arguments
    ("unknown-cli-key", "sft", ["--learning_rate=0.1"], ConfigError,
     ["unknown config key 'learning_rate'"]),
    ("unparsable-cli-value", "ppo", ["--max_iters=ten"], ConfigError, ["--max_iters=ten"]),
    ("float-for-int", "rm", ["--batch_size=8.5"], ConfigError, ["'batch_size' must be int"]),
    ("not-a-boolean", "dpo", ["--resume=maybe"], ConfigError, ["--resume=maybe"]),
    ("missing-config-file", "sft", ["{b}/nope.py"], ConfigError, ["nope.py", "does not exist"]),
    ("resume-without-checkpoint", "rm", ["--resume=True"], ConfigError,
     ["ckpt_last.pt", "does not exist"]),
    # checkpoints: the message names the file
    ("missing-init-checkpoint", "sft", ["--init_from={w}/missing.pt"], ConfigError,
     ["init_from", "missing.pt"]),
    ("missing-init-checkpoint-rm", "rm", ["--init_from={w}/missing.pt"], ConfigError,
     ["init_from", "missing.pt", "does not exist"]),
    ("missing-reward-model", "ppo", ["--reward_model={w}/missing.pt"], ConfigError,
     ["reward_model", "missing.pt", "does not exist"]),
    ("not-a-checkpoint", "sft", ["--init_from={b}/junk.pt"], CheckpointError,
     ["junk.pt", "not a readable checkpoint"]),
    ("truncated-checkpoint", "rm", ["--init_from={b}/truncated.pt"], CheckpointError,
     ["truncated.pt", "not a readable checkpoint"]),
    ("pickle-that-runs-code", "dpo", ["--init_from={b}/evil.pt"], CheckpointError,
     ["evil.pt", "refused to load"]),
    ("reward-model-as-policy", "ppo", ["--init_from={w}/rm.pt"], CheckpointError,
     ["rm.pt", "'scalar' model", "'policy' model is needed"]),
    ("policy-as-reward-model", "ppo", ["--reward_model={w}/sft.pt"], CheckpointError,
     ["sft.pt", "'policy' model", "'scalar' model is needed"]),
    ("byte-model-labelled-gpt2", "dpo", ["--reference={b}/gpt2_label.pt"], CheckpointError,
     ["gpt2_label.pt", "vocab_size=257", "'gpt2' tokenizer"]),
    ("token-ids-out-of-range", "sft", ["--init_from={b}/small_vocab.pt"], CheckpointError,
     ["small_vocab.pt", "vocab_size=200", "out of range"]),
    ("reward-model-other-tokenizer", "ppo", ["--reward_model={b}/rm_gpt2.pt"], CheckpointError,
     ["rm_gpt2.pt", "'gpt2' tokenizer", "'byte'"]),
    ("weights-do-not-fit-model-args", "rm", ["--init_from={b}/mismatched.pt"], CheckpointError,
     ["mismatched.pt", "weights do not fit"]),
    ("resume-another-stages-run", "dpo", ["--out_dir={b}/sft_run", "--resume=True"],
     CheckpointError, ["sft_run", "ckpt_last.pt", "'sft' stage", "'dpo' run"]),
    # out_dir
    ("finished-run-not-overwritten", "ppo", ["--out_dir={b}/ppo_run"], ConfigError,
     ["ppo_run", "already holds a run", "--resume=True", "--overwrite=True"]),
    ("out-dir-under-a-file", "sft", ["--out_dir={b}/a_file/out"], ConfigError,
     ["a_file", "not writable"]),
    ("out-dir-under-a-file-ppo", "ppo", ["--out_dir={b}/a_file/out"], ConfigError,
     ["a_file", "not writable"]),
    # numbers that parse but are no numbers to train with
    ("infinite-beta", "dpo", ["--beta=1e999"], ConfigError, ["'beta'", "finite"]),
    ("huge-int-as-float", "sft", ["--lr=" + "9" * 400], ConfigError, ["'lr'", "finite"]),
    ("temperature-that-overflows", "ppo", ["--temperature=1e-300"], ConfigError,
     ["'temperature'", "[0.01, 100]"]),
    ("sample-temperature-that-overflows", "sft", ["--sample_temperature=1e-300"], ConfigError,
     ["'sample_temperature'"]),
    ("seed-beyond-64-bits", "rm", [f"--seed={2 ** 70}"], ConfigError, ["'seed'"]),
    ("float16-is-not-a-choice", "dpo", ["--dtype=float16"], ConfigError, ["'dtype'", "bfloat16"]),
    ("config-file-calls-exit", "sft", ["{b}/exit.py"], ConfigError,
     ["exit.py", "failed to run", "SystemExit"]),
    ("renamed-key", "sft", ["--eval_iters=4"], ConfigError, ["'eval_iters'", "renamed",
                                                             "eval_examples"]),
    ("renamed-key-ppo", "ppo", ["--kl_coef=0.1"], ConfigError, ["'kl_coef'", "renamed", "beta"]),
    ("grpo-unknown-advantage", "grpo", ["--advantage=ppo"], ConfigError, ["'advantage'"]),
    ("grpo-group-does-not-divide", "grpo", ["--group_size=3"], ConfigError, ["group_size=3"]),
    ("reward-fn-file-missing", "grpo", ["--reward_fn={b}/nope.py:f"], ConfigError,
     ["reward_fn", "does not exist"]),
    ("reward-fn-not-in-file", "ppo", ["--reward_fn={b}/exit.py:score"], ConfigError,
     ["reward_fn", "failed to run"]),
    # JSON that parses in Python but is not a clean record
    ("duplicate-key", "sft", ["--train_data={b}/dup_key.jsonl"], DataError,
     ["dup_key.jsonl:1:", "'response'", "given twice"]),
    ("lone-surrogate", "rm", ["--train_data={b}/surrogate.jsonl"], DataError,
     ["surrogate.jsonl:1:", "lone surrogate"]),
    ("integer-beyond-4300-digits", "dpo", ["--train_data={b}/huge_int.jsonl"], DataError,
     ["huge_int.jsonl:1:", "4300"]),
    ("json-nested-too-deep", "ppo", ["--train_prompts={b}/deep.jsonl"], DataError,
     ["deep.jsonl:1:", "nested too deeply"]),
    ("margin-beyond-a-float", "rm", ["--val_data={b}/big_margin.jsonl"], DataError,
     ["big_margin.jsonl:1:", "'margin'", "finite"]),
    ("kto-label-not-a-boolean", "dpo", ["--loss_type=kto", "--train_data={b}/kto_label.jsonl"],
     DataError, ["kto_label.jsonl:1:", "'label'", "true or false"]),
    # checkpoints and Hugging Face directories
    ("random-bytes-as-checkpoint", "sft", ["--init_from={b}/random.pt"], CheckpointError,
     ["random.pt", "not a readable checkpoint"]),
    ("memory-bomb-checkpoint", "dpo", ["--init_from={b}/bomb.pt"], CheckpointError,
     ["bomb.pt", "weights do not fit"]),
    ("resume-without-optimizer-state", "sft", ["--out_dir={b}/no_opt_run", "--resume=True"],
     CheckpointError, ["no_opt_run", "no 'optimizer'"]),
    ("hf-dir-malformed-config", "sft", ["--init_from={b}/hf_bad_config"], CheckpointError,
     ["hf_bad_config", "JSONDecodeError"]),
    ("hf-dir-safetensors-past-the-end", "rm", ["--init_from={b}/hf_bad_st"], CheckpointError,
     ["hf_bad_st", "claims 1000000 bytes"]),
    ("reward-model-vocab-mismatch", "grpo", ["--reward_model={b}/rm_vocab300.pt"],
     CheckpointError, ["rm_vocab300.pt", "vocab_size=300", "257"]),
] + ([] if torch.cuda.is_available() else [
    ("cuda-on-a-machine-without", "rm", ["--device=cuda"], ConfigError, ["'cuda'", "no CUDA"])])


def snapshot(d):
    """The run's files and their bytes. The lock (.lock) and an overwriting run's unproven files
    (.staging, removed when the next run starts) are the mechanism, not the run."""
    return {n: (d / n).read_bytes() for n in os.listdir(d) if not n.startswith(".")} \
        if d.is_dir() else None


@pytest.mark.parametrize("stage", sorted(SCRIPTS))
def test_corpus_base_configs_train(world, tmp_path, stage):
    """The control: without the corpus's one broken input, each base config trains a step."""
    SCRIPTS[stage].main(base_args(stage, world) + [f"--out_dir={tmp_path / 'out'}"])
    assert (tmp_path / "out" / "ckpt_last.pt").is_file()


@pytest.mark.parametrize("case", CORPUS, ids=[c[0] for c in CORPUS])
def test_malformed_input_is_rejected_before_training(world, bad, tmp_path, case):
    _, stage, extra, error, words = case
    extra = [a.format(b=bad, w=world) for a in extra]
    out_dirs = [a.split("=", 1)[1] for a in extra if a.startswith("--out_dir=")]
    out = type(tmp_path)(out_dirs[0]) if out_dirs else tmp_path / "out"
    before = snapshot(out)
    with pytest.raises((ConfigError, DataError, CheckpointError)) as e:
        SCRIPTS[stage].main(base_args(stage, world) + [f"--out_dir={tmp_path / 'out'}"] + extra)
    assert type(e.value) is error, e.value
    message = str(e.value)
    for w in words:
        assert w in message, (w, message)
    # nothing was trained or written: out_dir is as it was (a fresh one holds no file)
    after = snapshot(out)
    assert after == before or (before is None and after == {}), sorted(after or {})
    assert not os.path.exists(bad / "pwned")  # the pickle's code never ran


@pytest.fixture(scope="module")
def finished_run(world):
    """The files of a finished one-step SFT run: checkpoints and log."""
    out = world / "finished_sft"
    train_sft.main(base_args("sft", world) + [f"--out_dir={out}"])
    files = snapshot(out)
    assert {"ckpt_last.pt", "ckpt_best.pt", "log.jsonl"} <= set(files)
    return files


# the cases that can run against an out_dir of their own choosing, as a fresh run
OVERWRITABLE = [c for c in CORPUS if not any(a.startswith(("--out_dir=", "--resume="))
                                             for a in c[2])]


@pytest.mark.parametrize("case", OVERWRITABLE, ids=[c[0] for c in OVERWRITABLE])
def test_overwrite_with_a_bad_input_keeps_the_previous_run(world, bad, finished_run, tmp_path,
                                                           case):
    # --overwrite=True replaces a run only once the new one can start: an input found bad while
    # loading (a data line, a checkpoint, a block size the model cannot hold) must not cost it
    _, stage, extra, error, words = case
    out = tmp_path / "out"
    out.mkdir()
    for name, data in finished_run.items():
        (out / name).write_bytes(data)
    with pytest.raises(error) as e:
        SCRIPTS[stage].main(base_args(stage, world) + [f"--out_dir={out}", "--overwrite=True"]
                            + [a.format(b=bad, w=world) for a in extra])
    assert all(w in str(e.value) for w in words), e.value
    assert snapshot(out) == finished_run


@pytest.mark.parametrize("name, words", [
    ("bad/small_vocab.pt", ["vocab_size=200", "out of range"]),
    ("bad/gpt2_label.pt", ["vocab_size=257", "'gpt2' tokenizer"]),
    ("bad/mismatched.pt", ["weights do not fit"]),
    ("rm.pt", ["'scalar' model", "'policy' model is needed"]),
])
def test_export_checks_the_checkpoint_as_training_does(world, bad, tmp_path, name, words):
    # an exported model is used far from here: a bad file must fail now, naming itself
    with pytest.raises(CheckpointError) as e:
        export_hf.main([f"--ckpt={world / name}", f"--out_dir={tmp_path / 'hf'}"])
    for w in [str(world / name)] + words:
        assert w in str(e.value), (w, e.value)
    assert not (tmp_path / "hf").exists()


def test_overwrite_replaces_the_previous_run_once_training_starts(world, finished_run, tmp_path):
    # the control of the test above: with good inputs the old files do go
    out = tmp_path / "out"
    out.mkdir()
    for name, data in finished_run.items():
        (out / name).write_bytes(data)
    (out / "ckpt_iter7.pt").write_bytes(finished_run["ckpt_last.pt"])  # not written by this run
    train_dpo.main(base_args("dpo", world) + [f"--out_dir={out}", "--overwrite=True"])
    assert "ckpt_iter7.pt" not in os.listdir(out)
    ckpt = common.load_checkpoint(str(out / "ckpt_last.pt"), expect_stage="dpo")
    assert ckpt["step"] == 1
    records = [json.loads(line) for line in open(out / "log.jsonl")]  # DPO's alone, not SFT's
    assert records and all("margin" in r or "val_margin" in r for r in records), records


def test_corpus_is_large_and_covers_every_kind_of_input():
    assert len(CORPUS) >= 25 and len({c[0] for c in CORPUS}) == len(CORPUS)
    assert {c[1] for c in CORPUS} == set(SCRIPTS)
    assert {c[3] for c in CORPUS} == {ConfigError, DataError, CheckpointError}


# a sample of the corpus, one per kind of input and script, through the real command line
CLI_CASES = ["zero-batch-size", "renamed-key-ppo", "truncated-json-line", "lone-surrogate",
             "random-bytes-as-checkpoint", "memory-bomb-checkpoint", "grpo-unknown-advantage",
             "config-file-calls-exit"]


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CORPUS if c[0] in CLI_CASES], ids=CLI_CASES)
def test_rejected_input_is_one_line_at_the_command_line(world, bad, tmp_path, case):
    _, stage, extra, error, words = case
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, SCRIPTS[stage].__file__, *base_args(stage, world),
                           f"--out_dir={out}", *[a.format(b=bad, w=world) for a in extra]],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(w in last for w in words), last
    assert snapshot(out) in (None, {})


@pytest.mark.parametrize("stage, args", [
    ("sft", ["--lr=1e30", "--grad_clip=0"]),  # finite gradients, non-finite weights
    ("dpo", ["--beta=1e30"]),                 # an infinite loss at the first step
])
def test_a_run_that_fails_at_its_first_step_keeps_the_previous_run(world, finished_run, tmp_path,
                                                                    stage, args):
    # --overwrite=True replaces a run only once the new one has written a checkpoint after a
    # training step: a value that passes validation but breaks the first update costs nothing
    out = tmp_path / "out"
    out.mkdir()
    for name, data in finished_run.items():
        (out / name).write_bytes(data)
    with pytest.raises(common.NonFiniteError):
        SCRIPTS[stage].main(base_args(stage, world) + [f"--out_dir={out}", "--overwrite=True",
                                                       "--ckpt_interval=1", *args])
    assert snapshot(out) == finished_run


def test_dpo_reference_cache_follows_the_content(world, tmp_path, capsys):
    # the cache is keyed by the bytes of the data and the reference's weights: data edited
    # between a stop and a resume (here chosen and rejected swapped) is not read stale
    out, data = tmp_path / "dpo", tmp_path / "prefs.jsonl"
    rows = [json.loads(line) for line in open(world / "prefs_train.jsonl")]
    write_jsonl(data, rows)
    args = ARGS["dpo"](world) + [f"--out_dir={out}", f"--train_data={data}", "--max_iters=4",
                                 "--warmup_iters=1", "--eval_interval=4", "--ckpt_interval=2"]
    train_dpo.main(args + ["--stop_iter=2"])
    first = torch.load(out / "ref_logps.pt", weights_only=True)
    write_jsonl(data, [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in rows])
    capsys.readouterr()
    train_dpo.main(args + ["--resume=True"])
    assert "made for other data" in capsys.readouterr().out
    second = torch.load(out / "ref_logps.pt", weights_only=True)
    assert second["key"] != first["key"]
    torch.testing.assert_close(second["train"], first["train"].flip(1), atol=1e-4, rtol=0)
