"""
The plumbing modules: config (resolution, --help, errors), checkpoint (round trips, refusing
pickled code), optim (schedule, decay groups, fused AdamW, finite checks), runtime (malloc
settings), run (out_dir: never silently overwritten, staged --overwrite, locks; the JSONL log; one
config error under torchrun).
"""

import json
import math
import os
import sys
from types import SimpleNamespace

import pytest
import torch

import checkpoint
import config
import optim
import run
import runtime
from model import GPT, GPTConfig
from run import Run


DEFAULTS = dict(n_layer=2, lr=1e-3, name="run", compile=False, betas=[0.9, 0.95])


@pytest.mark.unit
def test_parse_config_file_then_cli(tmp_path):
    cfg_file = tmp_path / "c.py"
    cfg_file.write_text("import math\nn_layer = 4\nlr = 3\n_private = 1\n")
    cfg = config.parse_config(DEFAULTS, [str(cfg_file), "--name=hello", "--compile=True",
                                         "--lr=0.5"])
    assert vars(cfg) == dict(n_layer=4, lr=0.5, name="hello", compile=True, betas=[0.9, 0.95])
    assert isinstance(cfg.lr, float)


@pytest.mark.unit
@pytest.mark.parametrize("argv, msg", [
    (["--nlayer=3"], "unknown config key 'nlayer'"),
    (["--n_layer=2.5"], "'n_layer' must be int"),
    (["--lr=abc"], "cannot parse --lr=abc"),
    (["--compile=yes"], "cannot parse --compile=yes"),
    (["n_layer=3"], "config file 'n_layer=3' does not exist"),
    (["--n_layer"], "expected --key=value"),
])
def test_parse_config_errors_name_the_key(argv, msg):
    with pytest.raises(config.ConfigError, match=msg):
        config.parse_config(DEFAULTS, argv)


@pytest.mark.unit
def test_config_file_with_unknown_key_names_the_file(tmp_path):
    f = tmp_path / "bad.py"
    f.write_text("n_layers = 4\n")
    with pytest.raises(config.ConfigError, match=r"bad\.py: unknown config key 'n_layers'"):
        config.parse_config(DEFAULTS, [str(f)])


@pytest.mark.unit
def test_help_lists_every_key(capsys):
    with pytest.raises(SystemExit):
        config.parse_config(DEFAULTS, ["--help"], "the doc")
    out = capsys.readouterr().out
    assert "the doc" in out and all(f"--{k}" in out for k in DEFAULTS)


def _tiny():
    return GPT(GPTConfig(block_size=16, vocab_size=11, n_layer=1, n_head=2, n_embd=8))


@pytest.mark.unit
def test_checkpoint_round_trip_and_prefix_stripping(tmp_path):
    torch.manual_seed(0)
    model = _tiny()
    opt = optim.configure_optimizer(model, 1e-3, 0.1, (0.9, 0.95), 1e-8, "cpu")
    model(torch.randint(0, 11, (2, 5)))[..., 0].sum().backward()
    opt.step()
    cfg = config.parse_config(DEFAULTS, [])
    ckpt = checkpoint.make_checkpoint(model, "policy", "sft", "byte", cfg, step=7, optimizer=opt)
    ckpt["model"] = {"_orig_mod.module." + k: v for k, v in ckpt["model"].items()}
    path = str(tmp_path / "ckpt_last.pt")
    checkpoint.save_checkpoint(path, ckpt)
    assert os.listdir(tmp_path) == ["ckpt_last.pt"]  # no temp file left behind
    back = checkpoint.load_checkpoint(path, expect_kind="policy", expect_tokenizer="byte")
    assert back["step"] == 7 and back["config"]["n_layer"] == 2 and back["stage"] == "sft"
    model2 = GPT(GPTConfig(**back["model_args"]))
    model2.load_state_dict(back["model"])  # prefixes gone
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    opt2 = optim.configure_optimizer(model2, 1e-3, 0.1, (0.9, 0.95), 1e-8, "cpu")
    opt2.load_state_dict(back["optimizer"])
    with pytest.raises(config.CheckpointError, match="holds a 'policy' model"):
        checkpoint.load_checkpoint(path, expect_kind="scalar")
    with pytest.raises(config.CheckpointError, match="trained with the 'byte' tokenizer"):
        checkpoint.load_checkpoint(path, expect_tokenizer="gpt2")


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.unit
def test_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "model_args": {}, "payload": Evil()}, path)
    with pytest.raises(config.CheckpointError, match="refused to load"):
        checkpoint.load_checkpoint(str(path))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(config.CheckpointError, match="junk.pt"):
        checkpoint.load_checkpoint(str(tmp_path / "junk.pt"))
    with pytest.raises(config.CheckpointError, match="does not exist"):
        checkpoint.load_checkpoint(str(tmp_path / "missing.pt"))


@pytest.mark.unit
def test_rng_state_round_trip():
    state = checkpoint.rng_state()
    a = torch.rand(3)
    checkpoint.set_rng_state(state)
    assert torch.equal(a, torch.rand(3))


@pytest.mark.unit
def test_get_lr_warmup_then_cosine():
    lrs = [optim.get_lr(i, 1.0, 0.1, 4, 14) for i in range(16)]
    assert lrs[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert lrs[4] == pytest.approx(1.0)
    assert lrs[9] == pytest.approx(0.1 + 0.5 * (1 + math.cos(math.pi * 0.5)) * 0.9)
    assert lrs[14] == lrs[15] == 0.1
    assert all(x >= y for x, y in zip(lrs[4:], lrs[5:]))


@pytest.mark.unit
def test_optimizer_decays_only_matrices():
    opt = optim.configure_optimizer(_tiny(), 1e-3, 0.1, (0.9, 0.95), 1e-8, "cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])


@pytest.mark.unit
def test_optimizer_is_fused_on_cpu():
    opt = optim.configure_optimizer(_tiny(), 1e-3, 0.1, (0.9, 0.95), 1e-8, "cpu")
    assert opt.defaults["fused"] is True


@pytest.mark.unit
def test_keep_freed_cpu_memory():
    import platform
    if not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"):
        pytest.skip("glibc only")
    assert runtime.keep_freed_cpu_memory() is True


@pytest.mark.unit
def test_check_finite_names_step_and_quantity():
    optim.check_finite(3, loss=1.0)
    with pytest.raises(config.NonFiniteError, match="step 12: grad_norm is nan"):
        optim.check_finite(12, loss=0.5, grad_norm=float("nan"))


@pytest.mark.unit
def test_out_dir_is_never_silently_overwritten(tmp_path):
    out = str(tmp_path / "run")
    os.makedirs(out)
    assert run.prepare_out_dir(out, resume=False) == (out, None)  # fresh: written in place
    checkpoint.save_checkpoint(os.path.join(out, "ckpt_last.pt"), {"x": 1})
    with pytest.raises(config.ConfigError, match="already holds a run"):
        run.prepare_out_dir(out, resume=False)
    assert run.prepare_out_dir(out, resume=True) == (out, os.path.join(out, "ckpt_last.pt"))
    # --overwrite=True: the new run is built beside the old one, which stays whole for now
    staging, resume = run.prepare_out_dir(out, resume=False, overwrite=True)
    assert staging == os.path.join(out, ".staging") and resume is None
    assert os.path.exists(os.path.join(out, "ckpt_last.pt"))
    # an unproven staging run (killed before its first good checkpoint) is dropped next time
    open(os.path.join(staging, "log.jsonl"), "w").close()
    assert run.prepare_out_dir(out, resume=True)[1].endswith("ckpt_last.pt")
    assert not os.path.exists(staging) and os.listdir(out) == ["ckpt_last.pt"]
    # a run's files without a checkpoint (a run killed early) are a run too
    other = tmp_path / "early"
    other.mkdir()
    (other / "log.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(config.ConfigError, match="already holds a run's files"):
        run.prepare_out_dir(str(other), resume=False)
    with pytest.raises(config.ConfigError, match="does not exist"):
        run.prepare_out_dir(str(other), resume=True)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(config.ConfigError, match="not writable"):
        run.lock_out_dir(str(blocker / "sub"))


def run_cfg(out, **kw):
    return SimpleNamespace(**{**dict(out_dir=str(out), resume=False, overwrite=False, seed=0,
                                     device="cpu", dtype="float32", stop_iter=-1), **kw})


@pytest.mark.unit
def test_overwrite_replaces_the_old_run_only_after_a_trained_checkpoint(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "ckpt_last.pt").write_bytes(b"old")
    (out / "log.jsonl").write_text('{"step": 9}\n')
    run = Run(run_cfg(out, overwrite=True), "sft")
    model = _tiny()
    run.log(0, val_loss=1.0)
    run.save("ckpt_best.pt", checkpoint.make_checkpoint(model, "policy", "sft", "byte",
                                                    SimpleNamespace(), 0))
    # step 0 proves nothing (an untrained model): the old run is untouched
    assert (out / "ckpt_last.pt").read_bytes() == b"old" and not (out / "ckpt_best.pt").exists()
    run.save("ckpt_last.pt", checkpoint.make_checkpoint(model, "policy", "sft", "byte",
                                                    SimpleNamespace(), 1))
    assert sorted(os.listdir(out)) == [".lock", "ckpt_best.pt", "ckpt_last.pt", "log.jsonl"]
    assert checkpoint.load_checkpoint(str(out / "ckpt_last.pt"))["step"] == 1
    run.log(1, loss=0.5)  # the log follows the run into out_dir
    assert [json.loads(l)["step"] for l in open(out / "log.jsonl")] == [0, 1]
    run.finish()


@pytest.mark.unit
def test_a_swap_cut_short_by_a_kill_is_finished_on_the_next_start(tmp_path):
    out = tmp_path / "run"
    (out / ".replaced").mkdir(parents=True)
    (out / ".staging").mkdir()
    (out / ".replaced" / "ckpt_last.pt").write_bytes(b"old")
    (out / ".staging" / "ckpt_last.pt").write_bytes(b"new")  # proven: the swap had begun
    assert run.prepare_out_dir(str(out), resume=True)[1] == str(out / "ckpt_last.pt")
    assert os.listdir(out) == ["ckpt_last.pt"] and (out / "ckpt_last.pt").read_bytes() == b"new"


def test_a_second_run_on_the_same_out_dir_fails_at_once(tmp_path):
    import subprocess
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time, run; "
                               "run.lock_out_dir(sys.argv[1]); print('locked', flush=True); "
                               "time.sleep(60)", str(out)], stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(run.__file__))
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(config.ConfigError, match="in use by another run"):
            run.lock_out_dir(str(out))
    finally:
        holder.kill()
        holder.wait()
    # the kernel drops a killed process's lock: a stale lock never blocks a resume
    run.lock_out_dir(str(out)).close()


@pytest.mark.unit
def test_non_finite_weights_are_never_written(tmp_path):
    out = tmp_path / "run"
    run = Run(run_cfg(out), "sft")
    model = _tiny()
    good = checkpoint.make_checkpoint(model, "policy", "sft", "byte", SimpleNamespace(), 1)
    run.save("ckpt_last.pt", good)
    before = (out / "ckpt_last.pt").read_bytes()
    with torch.no_grad():
        next(model.parameters())[0] = float("inf")  # what --lr=1e30 does after a step
    bad = checkpoint.make_checkpoint(model, "policy", "sft", "byte", SimpleNamespace(), 2)
    with pytest.raises(config.NonFiniteError, match="step 2: weight model.* is not finite"):
        run.save("ckpt_last.pt", bad)
    assert (out / "ckpt_last.pt").read_bytes() == before
    run.finish()


@pytest.mark.unit
def test_metrics_logger_drops_lines_after_the_resumed_step(tmp_path, capsys):
    log = run.MetricsLogger(str(tmp_path), "log")
    for s in range(5):
        log.log(s, loss=1.0 / (s + 1))
    assert "step     4 | loss 0.2" in capsys.readouterr().out
    run.MetricsLogger(str(tmp_path), "log", resume_step=2)
    steps = [json.loads(l)["step"] for l in open(tmp_path / "log.jsonl")]
    assert steps == [0, 1, 2]


def test_cli_prints_a_config_error_once_under_torchrun(monkeypatch, capsys):
    # every rank rejects the same config: rank 0 prints the one line, the others exit quietly;
    # errors of other kinds (a rank's own data or checkpoint) are printed by every rank
    for rank, message in (("0", "error: config key 'batch_size' must be > 0, got 0"), ("1", 1)):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit) as e:
            config.cli(lambda: config.validate(SimpleNamespace(batch_size=0), {}))
        assert e.value.code == message
    with pytest.raises(SystemExit) as e:
        config.cli(lambda: (_ for _ in ()).throw(config.DataError("f.jsonl:3: field 'prompt'")))
    assert e.value.code == "error: f.jsonl:3: field 'prompt'"
