"""
Bigger models on the same machines: gradient checkpointing in every training script (the same
numbers as the plain backward), and PPO's scoring and update without the padding columns (the
first update's ratio 1 to float precision). FSDP has its own file, tests/test_fsdp.py.
"""

import json
import os
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch
import torch.utils.checkpoint

import checkpoint
import ops
import rollout
import train_dpo
import train_grpo
import train_kto
import train_ppo
import train_reward_model
import train_sft
from data import loader
from data.toy.prepare import write_jsonl
from model import GPT, GPTConfig, ScalarModel
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
          f"--train_prompts={world / 'prompts_train.jsonl'}", "--val_prompts=", "--demo_val_data=",
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

# -----------------------------------------------------------------------------
# PPO without the padding columns


@pytest.mark.unit
def test_trim_padding_by_hand():
    # prompts of 2 and 3 tokens left-padded to P = 4, answers of 1 and 2 tokens in N = 3 columns
    seq = torch.arange(14).view(2, 7)
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0],
                         [0, 1, 1, 1, 1, 1, 0]])
    s, m, P, n = rollout.trim_padding(seq, mask, 4)
    assert (P, n) == (3, 2)  # column 0 is padding in both rows, column 6 after both answers
    assert torch.equal(s, seq[:, 1:6]) and torch.equal(m, mask[:, 1:6])


def left_padded_rollout(seed=0):
    """A tiny policy's answers to prompts of very different lengths: (policy, seq, mask, P)."""
    torch.manual_seed(seed)
    policy = GPT(GPTConfig(block_size=96, vocab_size=257, n_layer=2, n_head=2, n_embd=32)).eval()
    with torch.no_grad():
        policy.transformer.wte.weight[256] *= 20  # EOS likely: answers of different lengths
    prompts = [torch.randint(0, 256, (n,)).tolist() for n in (3, 40, 7, 22, 5, 31)]
    ids, attn = loader.collate_left(prompts, 256)
    tokens, resp_mask, _ = policy.generate(ids, attn, max_new_tokens=12, eos_token_id=256)
    assert resp_mask.sum(1).min() < resp_mask.sum(1).max()  # some padding after an EOS
    return policy, torch.cat([ids, tokens], 1), torch.cat([attn, resp_mask], 1), ids.size(1)


@pytest.mark.unit
@pytest.mark.parametrize("head", ["critic", "linear"])
def test_policy_forward_without_padding_equals_the_padded_forward(head):
    # the trimmed forward gives each row the numbers of the whole padded batch (fp32, 1e-5),
    # and 0 after the batch's longest answer
    policy, seq, mask, P = left_padded_rollout()
    critic = ScalarModel.from_gpt(policy) if head == "critic" else torch.nn.Linear(32, 1)
    rows = torch.tensor([0, 2, 4])  # the short prompts: 33 columns of padding in every row
    with torch.no_grad():
        got = rollout.policy_forward(policy, seq[rows], mask[rows], P, 0.7, critic, True)
        h = policy.hidden_states(seq[rows], mask[rows])[:, P - 1:-1]  # untrimmed
        logits = policy.lm_head(h).float() / 0.7
        values = critic(h).squeeze(-1) if head == "linear" else \
            critic.values(seq[rows], mask[rows])[:, P - 1:-1]
    want = (ops.logprobs_of(logits, seq[rows, P:]), ops.entropy_from_logits(logits), values)
    n = int(mask[rows, P:].sum(1).max())
    for g, w in zip(got, want):
        assert g.shape == w.shape
        torch.testing.assert_close(g[:, :n], w[:, :n], atol=1e-5, rtol=0)
        assert not g[:, n:].any()


@pytest.mark.unit
def test_scores_without_padding_equal_the_padded_forward():
    policy, seq, mask, P = left_padded_rollout(1)
    rm = ScalarModel.from_gpt(policy).eval()
    with torch.no_grad():
        want = rm(seq, mask)  # one forward of the whole padded batch
    for batch_size in (None, 1, 2, 4):
        torch.testing.assert_close(rm.score(seq, mask, batch_size), want, atol=1e-5, rtol=0)


@pytest.mark.unit
def test_rollout_and_update_run_micro_batches_of_similar_lengths_without_their_padding():
    # a spy on the policy's trunk: the rollout's and the update's micro-batches hold rows of
    # similar prompt lengths, each as wide as its own longest prompt plus its longest answer
    policy, seq, mask, P = left_padded_rollout()
    widths, forward = [], policy.hidden_states
    policy.hidden_states = lambda s, m: widths.append(s.size(1)) or forward(s, m)
    cfg = SimpleNamespace(micro_batch_size=2, minibatch_size=6, num_iterations=1,
                          max_new_tokens=12, temperature=1.0, top_k=0, top_p=1.0,
                          missing_eos_penalty=1.0, missing_eos_mode="", length_penalty=0.0,
                          epsilon_low=0.2,
                          epsilon_high=0.2, ent_coef=0.0, grad_clip=1.0)
    proc = SimpleNamespace(autocast=nullcontext(), device="cpu", world_size=1, fsdp=False)
    enc = SimpleNamespace(eot_token=256, decode=lambda ids: "")
    reward = lambda prompts, responses, s, m: torch.zeros(len(prompts))  # noqa: E731
    out = rollout.rollout(policy, None, None, reward, (seq[:, :P], mask[:, :P], [""] * 6), enc,
                          cfg, proc)
    prompt, answer = out.mask[:, :P].sum(1).tolist(), out.resp_mask.sum(1).long().tolist()
    pairs = [(0, 4), (2, 3), (5, 1)]  # by prompt length: 3 5 | 7 22 | 31 40
    want = [max(prompt[i], prompt[j]) + max(answer[i], answer[j]) for i, j in pairs]
    assert widths == want and sum(want) < 0.75 * len(want) * out.seq.size(1)
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.0)
    train_ppo.ppo_update(out, torch.ones_like(out.resp_mask), None, policy=(policy, optimizer),
                         update=1, cfg=cfg, proc=proc)
    assert widths[3:] == want  # one minibatch of all six rows, sorted the same way
