"""
FSDP (fsdp=True under torchrun: PyTorch's fully_shard) on CPU with the gloo backend, two
processes. SFT, the reward model and DPO train as one process does with the same global batch
(the first step's loss and gradients within 1e-5, every logged loss within 1e-5, the weights
within what Adam makes of float noise); KTO, PPO and GRPO as their unsharded two-process runs
(the same seeds draw the same samples); a sharded run resumes exactly; its checkpoint is the
one-process format (the tied embedding once, the optimizer keyed by parameter number), which one
process loads, resumes and exports, and a one-process checkpoint resumes sharded.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

import checkpoint
import train_reward_model
import train_sft
from conftest import adam_noise_tolerance
from export_hf import export_hf
from model import GPT
from test_distributed import (MODEL, ROOT, assert_same_series, assert_same_weights,  # noqa: F401
                              assert_written_once, read_log, series, torchrun, world)

pytestmark = pytest.mark.slow

# a worker that runs a script with a spy on the first clip: every parameter's whole gradient
# (FSDP: gathered from the shards) of the first optimizer step, written by rank 0 as a .pt file
GRAD_WORKER = r"""
import os, runpy, sys
import torch
clip_grad_norm = torch.nn.utils.clip_grad_norm_
first = []


def spy_clip(params, max_norm):
    params = list(params)
    if not first:
        grads = [p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
                 for p in params]
        first.append([g.clone() for g in grads])
        if os.environ.get("RANK", "0") == "0":
            torch.save(first[0], out)
    return clip_grad_norm(params, max_norm)


torch.nn.utils.clip_grad_norm_ = spy_clip
out, sys.argv = sys.argv[1], sys.argv[2:]  # the script and its arguments
sys.path.insert(0, os.getcwd())
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def grad_worker(tmp_path):
    script = tmp_path / "grad_worker.py"
    script.write_text(GRAD_WORKER)
    return str(script)


def first_grads(tmp_path, script, args, nproc):
    """The first step's gradients of a run of `script` (nproc processes under torchrun; 0: one
    plain process), and what it printed."""
    path = tmp_path / f"grads{nproc}_{len(os.listdir(tmp_path))}.pt"
    cmd = [str(path), os.path.join(ROOT, script), *args]
    if nproc:
        printed = torchrun(grad_worker(tmp_path), cmd, nproc)
    else:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
        printed = subprocess.run([sys.executable, grad_worker(tmp_path), *cmd], cwd=ROOT, env=env,
                                 check=True, capture_output=True, text=True).stdout
    return torch.load(path, weights_only=True), printed


def assert_first_step_equal(one_dir, two_dir, one_grads, two_grads, loss_key="loss"):
    """The first step: the same loss and gradients within 1e-5 (float sums in another order)."""
    a, b = series(read_log(one_dir), loss_key), series(read_log(two_dir), loss_key)
    assert a[0][0] == b[0][0] == 1 and abs(a[0][1] - b[0][1]) <= 1e-5
    assert len(one_grads) == len(two_grads)
    for g1, g2 in zip(one_grads, two_grads):
        torch.testing.assert_close(g2, g1, atol=1e-5, rtol=0)


def sft_args(world, *extra):
    return [f"--train_data={world / 'sft_train.jsonl'}", f"--val_data={world / 'sft_val.jsonl'}",
            "--device=cpu", "--dtype=float32", "--block_size=96", "--max_iters=4",
            "--warmup_iters=1", "--lr=1e-3", "--log_interval=1", "--eval_interval=2",
            "--eval_examples=15", "--num_samples=1", "--sample_tokens=16", *MODEL, *extra]


def test_sft_sharded_equals_one_process_resumes_exactly_and_loads_anywhere(world, tmp_path):
    # 15 held-out examples: rank 0 holds 8, rank 1 7 (uneven batches); a sample printed by rank 0
    args = sft_args(world)
    two = tmp_path / "two"
    two_grads, printed = first_grads(tmp_path, "train_sft.py", [
        f"--out_dir={two}", "--batch_size=2", "--grad_accum=2", "--fsdp=True", *args], 2)
    assert_written_once(two, printed, ["ckpt_best.pt", "ckpt_last.pt", "log.jsonl"])
    assert printed.count("  prompt: ") == 3  # rank 0's samples at steps 0, 2 and 4
    one = tmp_path / "one"
    one_grads, _ = first_grads(tmp_path, "train_sft.py", [f"--out_dir={one}", "--batch_size=8",
                                                          "--grad_accum=1", *args], 0)
    assert_first_step_equal(one, two, one_grads, two_grads)
    for key in ("loss", "val_loss", "grad_norm"):
        assert_same_series(read_log(one), read_log(two), key)
    # Adam turns float noise in a near-zero gradient into a step of up to lr: after 4 steps at lr
    # 1e-3 the weights agree to adam_noise_tolerance(1e-3, 4) = 0.008 (observed: ~1e-6)
    assert_same_weights(one, two, lr=1e-3, steps=4)

    # the checkpoint is the one-process format: the same keys, the tied embedding one tensor
    # (the same file size to within a few kB), the optimizer state keyed by parameter number
    a, b = (checkpoint.load_checkpoint(str(d / "ckpt_last.pt")) for d in (one, two))
    assert a["model"].keys() == b["model"].keys()
    assert abs(os.path.getsize(one / "ckpt_last.pt") - os.path.getsize(two / "ckpt_last.pt")) < 4096
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for i, s in a["optimizer"]["state"].items():
        for k, t in s.items():
            assert t.shape == b["optimizer"]["state"][i][k].shape, (i, k)

    # exact resume of a sharded run: stopped after step 2, resumed under FSDP, bitwise
    res = tmp_path / "resumed"
    shard2 = [f"--out_dir={res}", "--batch_size=2", "--grad_accum=2", "--fsdp=True", *args]
    torchrun(os.path.join(ROOT, "train_sft.py"), shard2 + ["--stop_iter=2"])
    torchrun(os.path.join(ROOT, "train_sft.py"), shard2 + ["--resume=True"])
    c = checkpoint.load_checkpoint(str(res / "ckpt_last.pt"))
    for k, t in b["model"].items():
        assert torch.equal(c["model"][k], t), k
    for i, s in b["optimizer"]["state"].items():
        for k, t in s.items():
            assert torch.equal(c["optimizer"]["state"][i][k], t), (i, k)
    timing = ("time", "tok_per_s", "ms_per_iter")
    assert [{k: v for k, v in r.items() if k not in timing} for r in read_log(res)] == \
        [{k: v for k, v in r.items() if k not in timing} for r in read_log(two)]

    # one process loads it (model_from_checkpoint), exports it, and resumes it; and a
    # one-process checkpoint resumes sharded: each ends near the uninterrupted runs
    model = checkpoint.model_from_checkpoint(GPT, b, str(two / "ckpt_last.pt"))
    hf = export_hf(str(two / "ckpt_last.pt"), str(tmp_path / "hf"))
    assert sorted(os.listdir(hf)) == ["config.json", "model.safetensors"]
    assert model.config.n_embd == 32
    cross = tmp_path / "cross"
    torchrun(os.path.join(ROOT, "train_sft.py"), shard2[1:] + [f"--out_dir={cross}",
                                                              "--stop_iter=2"])
    train_sft.main([f"--out_dir={cross}", "--batch_size=8", "--grad_accum=1", "--resume=True",
                    *args])
    assert_same_weights(one, cross, lr=1e-3, steps=4)
    back = tmp_path / "back"
    train_sft.main([f"--out_dir={back}", "--batch_size=8", "--grad_accum=1", "--stop_iter=2",
                    *args])
    torchrun(os.path.join(ROOT, "train_sft.py"), shard2[1:] + [f"--out_dir={back}",
                                                              "--resume=True"])
    assert_same_weights(one, back, lr=1e-3, steps=4)
    for d in (cross, back):
        assert_same_series(read_log(one), read_log(d), "loss")


def test_reward_model_sharded_equals_one_process(world, tmp_path):
    # a fresh scalar head drawn from each rank's seed: rank 0's, as DDP; the final normalisation
    # (reward_bias) by rank 0 with the whole weights
    args = [f"--init_from={world / 'sft.pt'}", f"--train_data={world / 'prefs_train.jsonl'}",
            f"--val_data={world / 'prefs_val.jsonl'}", f"--bias_data={world / 'sft_train.jsonl'}",
            "--device=cpu", "--dtype=float32", "--block_size=96", "--max_iters=4", "--lr=1e-4",
            "--warmup_iters=0", "--log_interval=1", "--eval_interval=2", "--eval_examples=15"]
    two, one = tmp_path / "two", tmp_path / "one"
    two_grads, printed = first_grads(tmp_path, "train_reward_model.py", [
        f"--out_dir={two}", "--batch_size=4", "--fsdp=True", *args], 2)
    assert_written_once(two, printed, ["ckpt_best.pt", "ckpt_last.pt", "log.jsonl"])
    one_grads, _ = first_grads(tmp_path, "train_reward_model.py", [
        f"--out_dir={one}", "--batch_size=8", *args], 0)
    assert_first_step_equal(one, two, one_grads, two_grads)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert_same_series(read_log(one), read_log(two), key)
    ckpt = checkpoint.load_checkpoint(str(two / "ckpt_last.pt"), expect_kind="scalar")
    assert ckpt["step"] == 4 and ckpt["reward_bias"] != 0.0
    assert float(ckpt["model"]["reward_bias"]) == ckpt["reward_bias"]
    # the Bradley-Terry loss sees score differences only: the weights that shift every score
    # alike get float-noise gradients (test_distributed explains); lr 1e-4, 4 steps, beta2 0.95
    rm = train_reward_model.DEFAULTS
    assert_same_weights(one, two, lr=1e-4, steps=4, betas=(rm["beta1"], rm["beta2"]),
                        skip=("reward_bias",))


def test_dpo_sharded_equals_one_process(world, tmp_path):
    # the frozen reference stays whole on every rank; held-out batches uneven over the ranks;
    # the per-token log-ratio heatmap by rank 0 alone
    args = [f"--init_from={world / 'sft.pt'}", f"--train_data={world / 'prefs_train.jsonl'}",
            f"--val_data={world / 'prefs_val.jsonl'}", "--device=cpu", "--dtype=float32",
            "--block_size=96", "--max_iters=4", "--warmup_iters=0", "--lr=1e-4",
            "--log_interval=1", "--eval_interval=2", "--eval_examples=15", "--num_samples=2",
            "--share_prompt=True"]
    two, one = tmp_path / "two", tmp_path / "one"
    two_grads, printed = first_grads(tmp_path, "train_dpo.py", [
        f"--out_dir={two}", "--batch_size=2", "--grad_accum=2", "--fsdp=True", *args], 2)
    assert_written_once(two, printed, ["ckpt_best.pt", "ckpt_last.pt", "log.jsonl",
                                       "tokens.jsonl"])
    one_grads, _ = first_grads(tmp_path, "train_dpo.py", [f"--out_dir={one}", "--batch_size=8",
                                                          *args], 0)
    assert_first_step_equal(one, two, one_grads, two_grads)
    for key in ("loss", "margin", "val_loss"):
        assert_same_series(read_log(one), read_log(two), key)
    assert_same_weights(one, two, lr=1e-4, steps=4)


def test_kto_sharded_equals_unsharded(world, tmp_path):
    # KTO's reference point is averaged over the ranks: the unsharded two-process run is the one
    # to equal
    for split in ("train", "val"):
        rows = [json.loads(line) for line in open(world / f"prefs_{split}.jsonl")]
        with open(tmp_path / f"kto_{split}.jsonl", "w") as f:
            for r in rows:
                for side in ("chosen", "rejected"):
                    f.write(json.dumps(dict(prompt=r["prompt"], completion=r[side],
                                            label=side == "chosen")) + "\n")
    args = [f"--init_from={world / 'sft.pt'}", f"--train_data={tmp_path / 'kto_train.jsonl'}",
            f"--val_data={tmp_path / 'kto_val.jsonl'}", "--device=cpu", "--dtype=float32",
            "--block_size=96", "--max_iters=3", "--warmup_iters=0", "--lr=1e-4",
            "--log_interval=1", "--eval_interval=3", "--eval_examples=15", "--batch_size=4"]
    for fsdp in (False, True):
        torchrun(os.path.join(ROOT, "train_kto.py"), [f"--out_dir={tmp_path / str(fsdp)}",
                                                      f"--fsdp={fsdp}", *args])
    a, b = tmp_path / "False", tmp_path / "True"
    for key in ("loss", "kl", "val_loss"):
        assert_same_series(read_log(a), read_log(b), key)
    assert_same_weights(a, b, lr=1e-4, steps=3)


RL = ["--device=cpu", "--dtype=float32", "--block_size=96", "--max_new_tokens=8", "--lr=3e-3",
      "--eval_interval=2", "--eval_examples=8", "--sample_interval=100", "--gold_judge=toy",
      "--missing_eos_mode="]


def rl_args(world):
    return [f"--init_from={world / 'sft.pt'}", f"--reward_model={world / 'rm.pt'}",
            f"--train_prompts={world / 'prompts_train.jsonl'}",
            f"--val_prompts={world / 'prompts_eval.jsonl'}",
            f"--demo_val_data={world / 'sft_val.jsonl'}", *RL]


@pytest.mark.parametrize("script, extra", [
    ("train_ppo.py", ["--rollout_batch_size=4", "--minibatch_size=2", "--micro_batch_size=1",
                      "--num_iterations=2", "--max_iters=3", "--critic_lr=3e-3",
                      "--adaptive_kl=True", "--target_kl=0.05", "--kl_horizon=40",
                      "--whiten_rewards=True", "--critic_warmup=1", "--save_every=3"]),
    ("train_ppo.py", ["--rollout_batch_size=4", "--minibatch_size=4", "--micro_batch_size=2",
                      "--num_iterations=2", "--max_iters=2", "--shared_critic=True",
                      "--save_every=0"]),
    ("train_grpo.py", ["--group_size=4", "--rollout_batch_size=8", "--minibatch_size=8",
                       "--micro_batch_size=4", "--num_iterations=2", "--max_iters=2",
                       "--save_every=0"]),
], ids=["ppo", "ppo_shared_critic", "grpo"])
def test_rl_sharded_equals_unsharded(world, tmp_path, script, extra):
    # the same seeds draw the same prompts and samples in both two-process runs: generation on
    # the gathered weights, the update sharded (the critic too, or the shared critic's unsharded
    # head), the frozen reference and reward model whole on each rank, rank 0's held-out
    # evaluation and ckpt_best.pt decision; the losses within 1e-5, the weights within Adam noise
    args = rl_args(world) + extra
    for fsdp in (False, True):
        out = tmp_path / str(fsdp)
        printed = torchrun(os.path.join(ROOT, script), [f"--out_dir={out}", f"--fsdp={fsdp}",
                                                        *args])
    files = ["ckpt_best.pt", "ckpt_last.pt", "log.jsonl", "tokens.jsonl"]
    if "--save_every=3" in extra:
        files.append("ckpt_iter3.pt")
    assert_written_once(out, printed, files)
    a, b = read_log(tmp_path / "False"), read_log(tmp_path / "True")
    for key in ("score", "kl", "pg_loss", "val_score", "val_kl"):
        assert_same_series(a, b, key)
    steps = 2 * 3 * 2
    lr = 3e-3
    betas = (0.9, 0.999)
    ca, cb = (checkpoint.load_checkpoint(str(tmp_path / d / "ckpt_last.pt"))
              for d in ("False", "True"))
    tol = adam_noise_tolerance(lr, steps, betas)
    for part in ("model", "critic")[:1 + ("critic" in ca)]:
        for k, t in ca[part].items():
            diff = (t.double() - cb[part][k].double()).abs().max().item() if t.numel() else 0.0
            assert diff <= tol, (part, k, diff, tol)
