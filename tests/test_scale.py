"""
Bigger models on the same machines: gradient checkpointing in every training script (the same
numbers as the plain backward), and PPO's scoring and update without the padding columns (the
first update's ratio 1 to float precision). FSDP has its own file, tests/test_fsdp.py.
"""

import json
import os

import pytest
import torch
import torch.utils.checkpoint

import checkpoint
import train_dpo
import train_grpo
import train_kto
import train_ppo
import train_reward_model
import train_sft
from data.toy.prepare import write_jsonl
from test_distributed import world  # noqa: F401  (the fixture: toy slices, sft.pt, rm.pt)

SYSTEM = ["--device=cpu", "--dtype=float32", "--block_size=96"]


def read_log(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def script_args(world, stage):
    """A 3-step run of each trainer on the toy slices of test_distributed's world."""
    prefs = [f"--init_from={world / 'sft.pt'}", f"--train_data={world / 'prefs_train.jsonl'}",
             f"--val_data={world / 'prefs_val.jsonl'}", "--max_iters=3", "--warmup_iters=0",
             "--log_interval=1", "--eval_interval=3", "--batch_size=4", "--lr=1e-3"]
    rl = [f"--init_from={world / 'sft.pt'}", f"--reward_model={world / 'rm.pt'}",
          f"--train_prompts={world / 'prompts_train.jsonl'}", "--val_prompts=",
          "--gold_judge=", "--max_new_tokens=8", "--max_iters=2", "--num_iterations=2",
          "--rollout_batch_size=8", "--micro_batch_size=4", "--save_every=0", "--lr=1e-3",
          "--num_samples=0"]
    if stage == "kto":
        for split in ("train", "val"):
            rows = [json.loads(line) for line in open(world / f"prefs_{split}.jsonl")]
            write_jsonl(world / f"kto_{split}.jsonl", [
                dict(prompt=r["prompt"], completion=r[side], label=side == "chosen")
                for r in rows for side in ("chosen", "rejected")])
    return dict(
        sft=[f"--train_data={world / 'sft_train.jsonl'}", f"--val_data={world / 'sft_val.jsonl'}",
             "--n_layer=2", "--n_head=2", "--n_embd=32", "--max_iters=3", "--warmup_iters=0",
             "--log_interval=1", "--eval_interval=3", "--batch_size=4", "--num_samples=0",
             "--dropout=0.1"],
        rm=prefs[:3] + [f"--bias_data={world / 'sft_train.jsonl'}", *prefs[3:]],
        dpo=prefs + ["--share_prompt=True"],
        kto=[f"--init_from={world / 'sft.pt'}", f"--train_data={world / 'kto_train.jsonl'}",
             f"--val_data={world / 'kto_val.jsonl'}", *prefs[3:]],
        ppo=rl + ["--minibatch_size=8"],
        grpo=rl + ["--minibatch_size=8", "--group_size=4"])[stage]


SCRIPTS = dict(sft=train_sft, rm=train_reward_model, dpo=train_dpo, kto=train_kto,
               ppo=train_ppo, grpo=train_grpo)


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(SCRIPTS))
def test_grad_checkpoint_key_changes_no_number(world, tmp_path, stage, monkeypatch):
    # every trainer with grad_checkpoint=True logs the losses of the plain backward and ends
    # with its weights (fp32, <= 1e-6; SFT with dropout: the recompute replays the same masks)
    runs, calls = {}, []
    recompute = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint",
                        lambda *a, **k: calls.append(1) or recompute(*a, **k))
    for on in (False, True):
        out = tmp_path / f"ckpt{on}"
        SCRIPTS[stage].main([*SYSTEM, *script_args(world, stage), f"--out_dir={out}",
                             f"--grad_checkpoint={on}"])
        runs[on] = (read_log(out), checkpoint.load_checkpoint(str(out / "ckpt_last.pt")))
        assert bool(calls) == on  # the key reaches the model, and only when set
    (log_a, ckpt_a), (log_b, ckpt_b) = runs[False], runs[True]
    key = "score" if stage in ("ppo", "grpo") else "loss"
    losses = [[r.get("pg_loss", r.get("loss")) for r in log if key in r] for log in (log_a, log_b)]
    assert losses[0] and losses[0] == pytest.approx(losses[1], abs=1e-6)
    for part in ("model", "critic"):
        for name, t in (ckpt_a.get(part) or {}).items():
            torch.testing.assert_close(ckpt_b[part][name], t, atol=1e-6, rtol=0, msg=name)
