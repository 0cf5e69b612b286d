"""
Reliability: a run that dies loses at most the work since its last checkpoint, and bad input fails
before any training, saying what is wrong and where.

- fault injection: each training script, run as a real process on a tiny config, is SIGKILLed at
  random steps and resumed until it finishes; its checkpoints and metrics must equal, bit for bit,
  those of an uninterrupted run. SIGINT and SIGTERM must checkpoint at a step boundary and exit 0;
- numerics: a NaN or infinite loss or gradient stops the run naming the step and the quantity,
  and leaves the last good checkpoint byte-identical;
- a checkpoint write that dies halfway leaves the previous file whole; a damaged cache is rebuilt.
The corpus of malformed inputs is tests/test_reliability_cli.py; this file holds the world and
the configs both use.
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

import checkpoint
import run
import optim
import train_dpo
import train_grpo
import train_kto
import train_ppo
import train_reward_model
import train_sft
from config import NonFiniteError
from data.toy.prepare import prepare, write_jsonl
from model import GPT, GPTConfig, ScalarModel

SCRIPTS = {"sft": train_sft, "rm": train_reward_model, "ppo": train_ppo, "dpo": train_dpo,
           "kto": train_kto, "grpo": train_grpo}
TINY_MODEL = dict(block_size=128, vocab_size=257, n_layer=1, n_head=2, n_embd=32)
# wall-clock fields of the logs: everything else must be reproduced exactly
TIMING_KEYS = {"time", "tok_per_s", "ms_per_iter", "ms", "rollout_frac", "s_per_iter"}
RUN_TIMEOUT_S = 300  # one process of a tiny run takes seconds; this only catches a hang


def save_model(path, model, kind, stage, tokenizer="byte"):
    checkpoint.save_checkpoint(str(path), checkpoint.make_checkpoint(model, kind, stage, tokenizer,
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
    for split in ("train", "val"):  # KTO's unpaired feedback: chosen desirable, rejected not
        rows = [json.loads(line) for line in open(root / f"prefs_{split}.jsonl")]
        write_jsonl(root / f"kto_{split}.jsonl", [
            dict(prompt=r["prompt"], completion=r[side], label=side == "chosen")
            for r in rows for side in ("chosen", "rejected")])
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


def kto_args(w):
    return [f"--init_from={w / 'sft.pt'}", f"--train_data={w / 'kto_train.jsonl'}",
            f"--val_data={w / 'kto_val.jsonl'}", "--block_size=128", "--batch_size=8",
            "--max_iters=24", "--warmup_iters=4", "--dropout=0.1", "--eval_interval=8",
            "--eval_examples=16", "--log_interval=1", "--ckpt_interval=4", "--device=cpu",
            "--dtype=float32"]


def ppo_args(w):
    # adaptive KL: the coefficient is state that a resumed run must pick up
    return [f"--init_from={w / 'sft.pt'}", f"--reward_model={w / 'rm.pt'}",
            f"--train_prompts={w / 'prompts_train.jsonl'}",
            f"--val_prompts={w / 'prompts_eval.jsonl'}", f"--demo_val_data={w / 'sft_val.jsonl'}",
            "--gold_judge=toy", "--block_size=96",
            "--rollout_batch_size=8", "--minibatch_size=4", "--micro_batch_size=4",
            "--max_new_tokens=12", "--num_iterations=2", "--max_iters=12", "--adaptive_kl=True",
            "--kl_horizon=50", "--target_kl=0.5", "--lr=1e-3", "--critic_lr=1e-3",
            "--ptx_coef=0.5", f"--ptx_data={w / 'sft_train.jsonl'}", "--ptx_batch_size=4",
            "--eval_interval=4", "--eval_examples=8", "--sample_interval=100", "--num_samples=0",
            "--ckpt_interval=2", "--save_every=0", "--log_interval=1", "--device=cpu",
            "--dtype=float32"]


def grpo_args(w):
    # RLOO on groups of 4: no critic, the KL in the reward; samples logged to tokens.jsonl
    return [f"--init_from={w / 'sft.pt'}", f"--reward_model={w / 'rm.pt'}",
            f"--train_prompts={w / 'prompts_train.jsonl'}",
            f"--val_prompts={w / 'prompts_eval.jsonl'}", f"--demo_val_data={w / 'sft_val.jsonl'}",
            "--gold_judge=toy", "--block_size=96",
            "--advantage=rloo", "--group_size=4", "--rollout_batch_size=8", "--minibatch_size=4",
            "--micro_batch_size=4", "--max_new_tokens=12", "--num_iterations=2",
            "--max_iters=12", "--lr=1e-3", "--eval_interval=4", "--eval_examples=8",
            "--sample_interval=3", "--num_samples=1", "--ckpt_interval=2", "--save_every=0",
            "--log_interval=1", "--device=cpu", "--dtype=float32"]


ARGS = {"sft": sft_args, "rm": rm_args, "ppo": ppo_args, "dpo": dpo_args, "kto": kto_args,
        "grpo": grpo_args}
MAX_STEPS = {"sft": 24, "rm": 24, "ppo": 12, "dpo": 24, "kto": 24, "grpo": 12}

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
            ckpt = checkpoint.load_checkpoint(str(last))
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
    ("kto", 2, None),
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
    real = optim.configure_optimizer

    def configure(model, *args, **kwargs):
        next(model.parameters()).register_hook(lambda g: g + value)
        return real(model, *args, **kwargs)
    monkeypatch.setattr(optim, "configure_optimizer", configure)


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
    with pytest.raises(NonFiniteError, match=rf"step \d+: {quantity}") as e:
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
        checkpoint.save_checkpoint(str(cache), {**good, "train": good["train"][:-1]})
    capsys.readouterr()
    train_dpo.main(args + ["--resume=True"])
    printed = capsys.readouterr().out
    assert f"note: {cache}:" in printed and "recomputing the reference log-probs" in printed
    # the rebuilt cache is the one the run first computed
    assert_same(torch.load(cache, map_location="cpu", weights_only=True), good, "ref_logps")

# -----------------------------------------------------------------------------
# a checkpoint write that dies halfway


@pytest.mark.unit
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
    assert checkpoint.load_checkpoint(str(path), expect_kind="policy")["stage"] == "sft"


def test_every_torch_load_is_weights_only():
    # a checkpoint from the internet must not run code, wherever the project reads one
    root = os.path.dirname(checkpoint.__file__)
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


@pytest.mark.unit
def test_resume_clears_the_temp_file_of_a_killed_write(tmp_path):
    out = tmp_path / "run"
    save_model(out / "ckpt_last.pt", GPT(GPTConfig(**TINY_MODEL)), "policy", "sft")
    (out / "ckpt_last.pt.tmp.4242").write_bytes(b"PK\x03\x04 cut short")  # SIGKILL mid-write
    assert run.prepare_out_dir(str(out), resume=True) == (str(out), str(out / "ckpt_last.pt"))
    assert os.listdir(out) == ["ckpt_last.pt"]
    checkpoint.load_checkpoint(str(out / "ckpt_last.pt"), expect_kind="policy")


@pytest.mark.unit
def test_resume_drops_a_log_line_cut_by_a_kill(tmp_path):
    # a SIGKILL mid-write leaves half a line; the resumed run must not choke on it, and the
    # next line must start on a line of its own
    with open(tmp_path / "log.jsonl", "w") as f:
        f.writelines(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 5))
        f.write('{"step": 5, "lo')
    log = run.MetricsLogger(str(tmp_path), "log", resume_step=3)
    log.log(4, loss=0.5)
    records = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert [(r["step"], r["loss"]) for r in records] == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.5)]


def snapshot(d):
    """The run's files and their bytes. The lock (.lock) and an overwriting run's unproven files
    (.staging, removed when the next run starts) are the mechanism, not the run."""
    return {n: (d / n).read_bytes() for n in os.listdir(d) if not n.startswith(".")} \
        if d.is_dir() else None


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
    if stage in ("dpo", "kto"):
        data = "prefs" if stage == "dpo" else "kto"
        return [f"--init_from={w / 'sft.pt'}", f"--train_data={w / f'{data}_train.jsonl'}",
                f"--val_data={w / f'{data}_val.jsonl'}", "--block_size=128", "--batch_size=8",
                "--max_iters=1", "--eval_examples=8", "--device=cpu", "--dtype=float32"]
    rl = [f"--init_from={w / 'sft.pt'}", f"--reward_model={w / 'rm.pt'}",
          f"--train_prompts={w / 'prompts_train.jsonl'}",
          f"--val_prompts={w / 'prompts_eval.jsonl'}", "--demo_val_data=", "--gold_judge=",
          "--block_size=96",
          "--rollout_batch_size=8", "--minibatch_size=4", "--micro_batch_size=4",
          "--max_new_tokens=12", "--num_iterations=1", "--max_iters=1", "--eval_examples=8",
          "--num_samples=0", "--device=cpu", "--dtype=float32"]
    return rl + ["--group_size=4"] if stage == "grpo" else rl


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
