"""
DPO and its relatives: every loss pinned to its formula on hand-made numbers, the init and
gradient sanity checks, then short end-to-end runs on the toy world (learning, precomputed
reference log-probs, exact resume, config errors).
"""

import copy
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import checkpoint
import config
import layouts
import ops
import train_dpo
from model import GPT, GPTConfig
from tokenizer import encode_example, get_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# hand-made per-example sequence log-probs: two pairs
PC = [-1.0, -2.0]   # policy, chosen
PR = [-3.0, -1.5]   # policy, rejected
RC = [-1.5, -2.0]   # reference, chosen
RR = [-2.0, -1.0]   # reference, rejected
H = [(pc - rc) - (pr - rr) for pc, pr, rc, rr in zip(PC, PR, RC, RR)]  # [1.5, 0.5]


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def dpo(loss_type, beta=0.1, label_smoothing=0.0):
    return train_dpo.dpo_loss(t(PC), t(PR), t(RC), t(RR), beta=beta, loss_type=loss_type,
                              label_smoothing=label_smoothing)

# -----------------------------------------------------------------------------
# the losses against their formulas


@pytest.mark.unit
def test_sequence_logprobs_masks_prompt_and_padding():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    idx = torch.tensor([[1, 2, 3, 4, 0], [5, 6, 1, 0, 0]])
    mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 0, 0]])
    logp = torch.log_softmax(logits, -1)
    want0 = logp[0, 1, 3] + logp[0, 2, 4]  # logits at t predict the token at t+1
    want1 = logp[1, 0, 6] + logp[1, 1, 1]
    got = ops.sequence_logprobs(ops.token_logprobs(logits, idx), mask)
    assert torch.allclose(got, torch.stack([want0, want1]), atol=1e-6)
    avg = ops.sequence_logprobs(ops.token_logprobs(logits, idx), mask, average=True)
    assert torch.allclose(avg, got / 2, atol=1e-6)
    # what sits under the mask does not matter
    logits2 = logits.clone()
    logits2[0, 3:] = 100 * torch.randn(2, 7)
    idx2 = idx.clone()
    idx2[1, 3:] = 6
    got2 = ops.sequence_logprobs(ops.token_logprobs(logits2, idx2), mask)
    assert torch.allclose(got2, got, atol=1e-6)


@pytest.mark.unit
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_sigmoid_and_conservative_dpo(eps):
    losses, cr, rr = dpo("sigmoid", beta=0.1, label_smoothing=eps)
    want = [-(1 - eps) * log_sigmoid(0.1 * h) - eps * log_sigmoid(-0.1 * h) for h in H]
    assert losses.tolist() == pytest.approx(want, abs=1e-12)
    assert cr.tolist() == pytest.approx([0.1 * 0.5, 0.0], abs=1e-12)
    assert rr.tolist() == pytest.approx([0.1 * -1.0, 0.1 * -0.5], abs=1e-12)


@pytest.mark.unit
def test_robust_dpo():
    eps = 0.2
    losses, _, _ = dpo("robust", beta=0.5, label_smoothing=eps)
    want = [(-(1 - eps) * log_sigmoid(0.5 * h) + eps * log_sigmoid(-0.5 * h)) / (1 - 2 * eps)
            for h in H]
    assert losses.tolist() == pytest.approx(want, abs=1e-12)
    # without noise it is plain DPO
    assert dpo("robust", 0.5)[0].tolist() == pytest.approx(dpo("sigmoid", 0.5)[0].tolist())


@pytest.mark.unit
def test_ipo_and_hinge():
    losses, _, _ = dpo("ipo", beta=0.5)
    assert losses.tolist() == pytest.approx([(1.5 - 1.0) ** 2, (0.5 - 1.0) ** 2], abs=1e-12)
    losses, _, _ = dpo("hinge", beta=1.0)
    assert losses.tolist() == pytest.approx([0.0, 0.5], abs=1e-12)  # max(0, 1 - h)


@pytest.mark.unit
def test_r_dpo_by_hand():
    # h = [1.5, 0.5]; R-DPO: -log sigma(beta h + alpha (|y_w| - |y_l|)), lengths in tokens
    losses, cr, rr = train_dpo.dpo_loss(t(PC), t(PR), t(RC), t(RR), beta=0.5, length_alpha=0.1,
                                        chosen_lengths=torch.tensor([10, 4]),
                                        rejected_lengths=torch.tensor([6, 8]))
    want = [-log_sigmoid(0.5 * 1.5 + 0.1 * 4), -log_sigmoid(0.5 * 0.5 + 0.1 * -4)]
    assert losses.tolist() == pytest.approx(want, abs=1e-12)
    assert cr.tolist() == pytest.approx([0.25, 0.0])  # the implicit rewards do not change
    plain, _, _ = train_dpo.dpo_loss(t(PC), t(PR), t(RC), t(RR), beta=0.5)
    assert plain.tolist() == pytest.approx([-log_sigmoid(0.75), -log_sigmoid(0.25)], abs=1e-12)


@pytest.mark.unit
def test_simpo():
    # length-averaged log-probs
    losses, cr, rr = train_dpo.simpo_loss(t([-0.5, -1.0]), t([-0.8, -0.6]), beta=2.0, gamma=1.0)
    want = [-log_sigmoid(2 * -0.5 - 2 * -0.8 - 1), -log_sigmoid(2 * -1.0 - 2 * -0.6 - 1)]
    assert losses.tolist() == pytest.approx(want, abs=1e-12)
    assert cr.tolist() == pytest.approx([-1.0, -2.0]) and rr.tolist() == pytest.approx([-1.6, -1.2])


@pytest.mark.unit
def test_orpo():
    lw, ll = -0.5, -0.8
    losses, cr, _ = train_dpo.orpo_loss(t([lw]), t([ll]), lam=0.1)
    odds = lambda lp: math.exp(lp) / (1 - math.exp(lp))
    want = 0.5 - 0.1 * log_sigmoid(math.log(odds(lw) / odds(ll)))
    assert losses.item() == pytest.approx(want, abs=1e-12)
    assert cr.item() == pytest.approx(0.1 * lw)


@pytest.mark.unit
def test_log1mexp_is_accurate_at_both_ends():
    x = t([-1e-10, -1e-3, -0.5, -0.7, -5.0, -50.0])
    want = [math.log(-math.expm1(v)) for v in x.tolist()]
    assert train_dpo.log1mexp(x).tolist() == pytest.approx(want, rel=1e-12)


def cfg_for(**kw):
    base = {k: v for k, v in train_dpo.DEFAULTS.items()}
    base.update(kw)
    return SimpleNamespace(**base)


@pytest.mark.unit
def test_every_default_is_the_published_loss():
    # the review found rpo_alpha=1.0 by default: "DPO" was DPO + NLL, and ORPO trained its NLL
    # twice (loss 1.65 instead of 0.85 on the review's example)
    avg_c, avg_r = t([-0.5, -1.0]), t([-0.8, -0.6])
    logps = (t(PC), t(PR), avg_c, avg_r)
    assert train_dpo.DEFAULTS["rpo_alpha"] == 0.0
    beta = train_dpo.DEFAULTS["beta"]
    for lt, want in (("sigmoid", dpo("sigmoid", beta)[0]), ("ipo", dpo("ipo", beta)[0]),
                     ("simpo", train_dpo.simpo_loss(avg_c, avg_r)[0]),
                     ("orpo", train_dpo.orpo_loss(avg_c, avg_r)[0])):
        got, _, _ = train_dpo.preference_losses(cfg_for(loss_type=lt), logps, (t(RC), t(RR)))
        assert got.tolist() == pytest.approx(want.tolist(), abs=1e-12)


@pytest.mark.unit
def test_rpo_adds_the_chosen_nll_to_any_loss_but_orpo():
    avg_c, avg_r = t([-0.5, -1.0]), t([-0.8, -0.6])
    logps = (t(PC), t(PR), avg_c, avg_r)
    for lt in ("sigmoid", "ipo", "simpo"):
        plain, _, _ = train_dpo.preference_losses(cfg_for(loss_type=lt, rpo_alpha=0.0), logps,
                                                  (t(RC), t(RR)))
        rpo, _, _ = train_dpo.preference_losses(cfg_for(loss_type=lt, rpo_alpha=0.5), logps,
                                                (t(RC), t(RR)))
        assert (rpo - plain).tolist() == pytest.approx([0.25, 0.5], abs=1e-12)


@pytest.mark.unit
def test_unknown_loss_type_raises():
    with pytest.raises(ValueError, match="loss_type"):
        dpo("simpo")  # a reference-free loss: simpo_loss, not dpo_loss


@pytest.mark.unit
@pytest.mark.parametrize("loss_type", ["sigmoid", "robust", "ipo", "hinge"])
def test_gradient_raises_chosen_and_lowers_rejected(loss_type):
    pc, pr = t(PC).requires_grad_(), t(PR).requires_grad_()
    eps = 0.1 if loss_type == "robust" else 0.0
    losses, _, _ = train_dpo.dpo_loss(pc, pr, t(RC), t(RR), beta=0.1, loss_type=loss_type,
                                      label_smoothing=eps)
    losses.sum().backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()  # descent raises chosen, lowers rejected
    for fn, kw in ((train_dpo.simpo_loss, dict(beta=2.0, gamma=1.0)),
                   (train_dpo.orpo_loss, dict(lam=0.1))):
        c, r = t([-0.5, -1.0]).requires_grad_(), t([-0.8, -0.6]).requires_grad_()
        fn(c, r, **kw)[0].sum().backward()
        assert (c.grad < 0).all() and (r.grad > 0).all()

# -----------------------------------------------------------------------------
# with a real (tiny) model


def tiny_pairs():
    enc = get_tokenizer("byte")
    rows = []
    for prompt, good, bad in [("2+2?", "4", "five"), ("Say hi", "hi there", "no")]:
        rows.append(encode_example(enc, prompt, good))
        rows.append(encode_example(enc, prompt, bad))
    chosen, rejected = rows[0::2], rows[1::2]
    seqs = chosen + rejected  # chosen rows, then rejected rows
    T = max(len(ids) for ids, _ in seqs)
    idx = torch.full((len(seqs), T), enc.eot_token)
    attn, loss_mask = torch.zeros(len(seqs), T, dtype=torch.long), torch.zeros(len(seqs), T, dtype=torch.long)
    for i, (ids, m) in enumerate(seqs):  # right-padded
        idx[i, :len(ids)], attn[i, :len(ids)], loss_mask[i, :len(ids)] = torch.tensor(ids), 1, torch.tensor(m)
    return dict(idx=idx, attention_mask=attn, loss_mask=loss_mask)


def tiny_gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=64, vocab_size=257, n_layer=2, n_head=2, n_embd=32))


@pytest.mark.unit
def test_at_init_the_loss_is_log2_and_the_rewards_are_zero():
    policy = tiny_gpt()
    ref = copy.deepcopy(policy).eval()
    batch = tiny_pairs()
    from contextlib import nullcontext
    logps = layouts.pair_logprobs(policy, batch, nullcontext())
    with torch.no_grad():
        ref_logps = layouts.pair_logprobs(ref, batch, nullcontext())[:2]
    losses, cr, rr = train_dpo.dpo_loss(logps[0], logps[1], *ref_logps)
    assert torch.equal(losses, torch.full_like(losses, math.log(2)))
    assert torch.equal(cr, torch.zeros_like(cr)) and torch.equal(rr, torch.zeros_like(rr))
    assert (logps[0] < 0).all() and (logps[1] < 0).all()


@pytest.mark.unit
def test_one_step_widens_the_policy_margin():
    from contextlib import nullcontext
    policy = tiny_gpt()
    ref = copy.deepcopy(policy).eval()
    batch = tiny_pairs()
    with torch.no_grad():
        ref_c, ref_r, _, _ = layouts.pair_logprobs(ref, batch, nullcontext())
    opt = torch.optim.SGD(policy.parameters(), lr=1.0)
    c, r, _, _ = layouts.pair_logprobs(policy, batch, nullcontext())
    train_dpo.dpo_loss(c, r, ref_c, ref_r, beta=0.1)[0].mean().backward()
    opt.step()
    with torch.no_grad():
        c2, r2, _, _ = layouts.pair_logprobs(policy, batch, nullcontext())
    assert ((c2 - r2) - (c - r)).min() > 0  # every pair's margin grew

# -----------------------------------------------------------------------------
# each prompt once (share_prompt): the same log-probs and gradients as separate rows


def toy_pairs(enc):
    """Four pairs of different prompt and answer lengths, encoded as the loader encodes them."""
    rows = [("What color is a banana?", "A banana is yellow. Glad to help!", "Blue."),
            ("What does a cow say, and why does it say it so loudly every morning?", "Moo.",
             "A cow says woof, I think, but I am not sure at all."),
            ("2 + 3?", "5", "7"),
            ("Name a fruit.", "An apple is a fruit.", "I like turtles very much.")]
    return [dict(chosen=encode_example(enc, prompt, chosen),
                 rejected=encode_example(enc, prompt, rejected), margin=0.0)
            for prompt, chosen, rejected in rows]


@pytest.mark.unit
def test_shared_prompt_logprobs_and_gradients_equal_separate_rows():
    enc = get_tokenizer("byte")
    pairs = toy_pairs(enc)
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=256, vocab_size=257, n_layer=2, n_head=2, n_embd=32))
    plain = layouts.collate_pairs(pairs, enc.eot_token)
    shared = layouts.collate_shared_prompt(pairs, enc.eot_token)
    assert shared["idx"].numel() < plain["idx"].numel()
    a = layouts.pair_logprobs(model, plain, None)
    b = layouts.shared_prompt_pair_logprobs(model, shared, None)
    for x, y in zip(a, b):  # summed (chosen, rejected), then per-token averages
        torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-6)
    # each sum is the hand-computed one: full logits of each row alone
    c0 = pairs[1]["chosen"]
    logits = model(torch.tensor([c0[0]]))
    want = (ops.token_logprobs(logits, torch.tensor([c0[0]]))[0]
            * torch.tensor(c0[1][1:])).sum()
    torch.testing.assert_close(b[0][1], want, atol=1e-5, rtol=1e-6)
    grads = []
    for batch, forward in ((plain, layouts.pair_logprobs),
                           (shared, layouts.shared_prompt_pair_logprobs)):
        model.zero_grad()
        c, r, _, _ = forward(model, batch, None)
        (c - 2 * r).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for g1, g2 in zip(*grads):
        torch.testing.assert_close(g2, g1, atol=1e-5, rtol=1e-4)

# -----------------------------------------------------------------------------
# end to end on the toy world, with a tiny policy standing in for the SFT checkpoint


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Models this small run fastest on one thread (and a shared machine stays responsive)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The toy preference files and a tiny policy checkpoint (random weights, kind 'policy')."""
    root = tmp_path_factory.mktemp("dpo_toy")
    subprocess.run([sys.executable, os.path.join(ROOT, "data", "toy", "prepare.py"),
                    f"--out_dir={root}"], check=True, capture_output=True)
    with open(root / "prefs_train.jsonl") as f:  # a slice keeps the reference pass short
        lines = f.readlines()[:1024]
    with open(root / "prefs_train.jsonl", "w") as f:
        f.writelines(lines)
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=128, vocab_size=257, n_layer=2, n_head=2, n_embd=32))
    ckpt = checkpoint.make_checkpoint(model, "policy", "sft", "byte", SimpleNamespace(), step=0)
    checkpoint.save_checkpoint(str(root / "sft.pt"), ckpt)
    return root


def run(toy, out, *args):
    argv = [f"--out_dir={out}", f"--init_from={toy / 'sft.pt'}", "--device=cpu",
            f"--train_data={toy / 'prefs_train.jsonl'}", f"--val_data={toy / 'prefs_val.jsonl'}",
            "--batch_size=8", "--max_iters=6", "--eval_interval=3", "--eval_examples=16",
            "--log_interval=1", "--warmup_iters=0", "--lr=1e-3", "--min_lr=1e-4", "--rpo_alpha=0",
            *args]
    return train_dpo.main(argv)


def read_log(out):
    import json
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_short_run_raises_heldout_implicit_reward_accuracy(toy, tmp_path):
    out = tmp_path / "run"
    res = run(toy, out, "--max_iters=40", "--eval_interval=40", "--eval_examples=64",
              "--batch_size=16", "--lr=1e-2", "--beta=0.5")
    first = read_log(out)[0]
    assert first["step"] == 0  # policy == reference: DPO's fixed point
    assert first["val_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["val_margin"] == 0 and first["val_accuracy"] == 0.5  # all ties: half each
    assert res["val_accuracy"] > 0.65 and res["val_loss"] < math.log(2) - 0.1, res
    assert res["step"] == 40 and os.path.isfile(out / "ckpt_best.pt")
    ckpt = checkpoint.load_checkpoint(str(out / "ckpt_last.pt"), expect_kind="policy")
    assert ckpt["stage"] == "dpo" and ckpt["step"] == 40


@pytest.mark.slow
def test_precomputed_reference_and_exact_resume(toy, tmp_path):
    live = run(toy, tmp_path / "live")
    pre = run(toy, tmp_path / "pre", "--precompute_ref_logps=True")
    assert os.path.isfile(tmp_path / "pre" / "ref_logps.pt")
    # the cache is computed in other batch shapes than the live pass: float32 rounding of
    # the same numbers, which grows with a sum's size (logps_chosen sums ~40 token log-probs)
    for k in ("loss", "margin", "logps_chosen", "val_loss", "val_margin"):
        assert pre[k] == pytest.approx(live[k], rel=1e-5, abs=1e-5), k
    # stop after 4 iterations, then resume (reusing the cached reference log-probs)
    out = tmp_path / "resumed"
    run(toy, out, "--precompute_ref_logps=True", "--stop_iter=4")
    assert checkpoint.load_checkpoint(str(out / "ckpt_last.pt"))["step"] == 4
    res = run(toy, out, "--precompute_ref_logps=True", "--resume=True")
    for k in ("loss", "rewards_chosen", "rewards_rejected", "accuracy", "val_loss", "val_margin"):
        assert res[k] == pytest.approx(pre[k], abs=1e-6), k
    a = checkpoint.load_checkpoint(str(tmp_path / "pre" / "ckpt_last.pt"))["model"]
    b = checkpoint.load_checkpoint(str(out / "ckpt_last.pt"))["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert [r["step"] for r in read_log(out)] == [r["step"] for r in read_log(tmp_path / "pre")]


@pytest.mark.slow
def test_shared_prompt_run_equals_the_plain_run(toy, tmp_path):
    # the same pairs, each prompt computed once for both answers (the reference's too, live and
    # precomputed): the same losses to float32 rounding (the first step's gradients are pinned
    # by test_shared_prompt_logprobs_and_gradients_equal_separate_rows), and weights to what
    # Adam makes of that rounding (which differs between CPUs)
    from conftest import assert_weights_within_adam_noise
    plain = run(toy, tmp_path / "plain")
    shared = run(toy, tmp_path / "shared", "--share_prompt=True")
    pre = run(toy, tmp_path / "pre", "--share_prompt=True", "--precompute_ref_logps=True")
    for res in (shared, pre):
        for k in ("loss", "margin", "logps_chosen", "logps_rejected", "val_loss", "val_margin"):
            assert res[k] == pytest.approx(plain[k], rel=1e-5, abs=1e-5), k
    a = checkpoint.load_checkpoint(str(tmp_path / "plain" / "ckpt_last.pt"))["model"]
    for name in ("shared", "pre"):
        b = checkpoint.load_checkpoint(str(tmp_path / name / "ckpt_last.pt"))["model"]
        assert_weights_within_adam_noise(a, b, lr=1e-3, steps=6, betas=(0.9, 0.95))


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", ["simpo", "orpo"])
def test_reference_free_losses_build_no_reference(toy, tmp_path, monkeypatch, loss_type):
    calls = []
    init_policy = checkpoint.init_policy
    monkeypatch.setattr(checkpoint, "init_policy", lambda *a, **k: calls.append(a) or init_policy(*a, **k))
    res = run(toy, tmp_path / loss_type, f"--loss_type={loss_type}", "--max_iters=2",
              "--eval_interval=2", f"--rpo_alpha={0.1 if loss_type == 'simpo' else 0.0}")
    assert len(calls) == 1  # the policy only
    assert math.isfinite(res["loss"]) and math.isfinite(res["val_loss"])


@pytest.mark.parametrize("arg, words", [
    ("--loss_type=nope", "loss_type"),
    ("--beta=0", "beta"),
    ("--beta=-0.1", "beta"),
    ("--label_smoothing=0.5", "label_smoothing"),
    ("--label_smoothing=-0.1", "label_smoothing"),
    ("--loss_type=orpo --rpo_alpha=0.5", "NLL term built in"),
    ("--loss_type=kto", "KTO is train_kto.py"),
    ("--loss_type=simpo --precompute_ref_logps=True", "precompute_ref_logps must be False"),
])
def test_bad_config_is_a_clear_error(tmp_path, arg, words):
    with pytest.raises(config.ConfigError, match=words):
        train_dpo.main([f"--out_dir={tmp_path / 'x'}", *arg.split()])
    assert not os.path.exists(tmp_path / "x")  # rejected before anything was written
