"""
The single-file reading path cannot drift from the real scripts: minimal/ppo.py's first
iteration and minimal/dpo.py's first steps, on a tiny config and seed, give the numbers of
train_ppo.py and train_dpo.py (scores, KL, losses, and the weights after them) to 1e-5.
"""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import checkpoint
import train_dpo
import train_ppo
from minimal import dpo as minimal_dpo
from minimal import ppo as minimal_ppo
from model import GPT, GPTConfig, ScalarModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-5


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The toy world's files, a tiny random policy ('SFT') and a tiny random reward model."""
    root = tmp_path_factory.mktemp("minimal")
    subprocess.run([sys.executable, os.path.join(ROOT, "data", "toy", "prepare.py"),
                    f"--out_dir={root}"], check=True, capture_output=True)
    torch.manual_seed(0)
    config = GPTConfig(block_size=128, vocab_size=257, n_layer=1, n_head=2, n_embd=32)
    policy = GPT(config)
    with torch.no_grad():  # answers that end: EOS is likely
        policy.transformer.wte.weight[256] *= 8
    for name, model, kind in (("sft", policy, "policy"), ("rm", ScalarModel(config), "scalar")):
        ckpt = checkpoint.make_checkpoint(model, kind, name, "byte", SimpleNamespace(), step=0)
        checkpoint.save_checkpoint(str(root / f"{name}.pt"), ckpt)
    return root


def assert_weights_close(a, b):
    assert a.keys() == b.keys()
    for k in a:
        diff = (a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0
        assert diff <= TOL, f"{k}: {diff:.3g}"


@pytest.mark.slow
def test_minimal_ppo_is_train_ppo_first_iteration(world, tmp_path):
    shape = dict(block_size=96, rollout_batch_size=8, minibatch_size=4, max_new_tokens=12,
                 num_iterations=2, max_iters=1, lr=1e-3, seed=7)
    full = train_ppo.main([
        f"--init_from={world / 'sft.pt'}", f"--reward_model={world / 'rm.pt'}",
        f"--train_prompts={world / 'prompts_train.jsonl'}", "--val_prompts=", "--demo_val_data=",
        "--gold_judge=toy",
        "--micro_batch_size=4", f"--critic_lr={shape['lr']}", "--num_samples=0", "--save_every=0",
        f"--out_dir={tmp_path / 'ppo'}", "--device=cpu", "--dtype=float32",
        *[f"--{k}={v}" for k, v in shape.items()]])
    mini = minimal_ppo.main([], init_from=str(world / "sft.pt"), reward_model=str(world / "rm.pt"),
                            train_prompts=str(world / "prompts_train.jsonl"), **shape)
    first = mini["history"][0]
    for key in ("score", "gold", "kl", "reward", "pg_loss", "vf_loss", "clipfrac"):
        assert first[key] == pytest.approx(full[key], abs=TOL), key
    ckpt = checkpoint.load_checkpoint(str(tmp_path / "ppo" / "ckpt_last.pt"))
    assert_weights_close(mini["policy"], ckpt["model"])
    assert_weights_close(mini["critic"], ckpt["critic"])


@pytest.mark.slow
def test_minimal_dpo_is_train_dpo_first_steps(world, tmp_path):
    shape = dict(batch_size=8, max_iters=4, warmup_iters=2, lr=1e-3, min_lr=1e-4, beta=0.5,
                 seed=7)
    data = dict(train_data=str(world / "prefs_train.jsonl"), val_data=str(world / "prefs_val.jsonl"))
    train_dpo.main([f"--init_from={world / 'sft.pt'}", f"--out_dir={tmp_path / 'dpo'}",
                    "--log_interval=1", "--eval_interval=100", "--eval_examples=16",
                    "--device=cpu", "--dtype=float32",
                    *[f"--{k}={v}" for k, v in {**shape, **data}.items()]])
    with open(tmp_path / "dpo" / "log.jsonl") as f:
        logged = [r["loss"] for r in map(json.loads, f) if "loss" in r]
    mini = minimal_dpo.main([], init_from=str(world / "sft.pt"), eval_interval=100,
                            eval_examples=16, **shape, **data)
    assert len(logged) == len(mini["losses"]) == 4
    assert mini["losses"] == pytest.approx(logged, abs=TOL)
    ckpt = checkpoint.load_checkpoint(str(tmp_path / "dpo" / "ckpt_last.pt"))
    assert_weights_close(mini["model"], ckpt["model"])
