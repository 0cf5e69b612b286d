"""
KTO (train_kto.py): its loss pinned to the paper's value function on hand-made numbers, its
batches (each answer with another prompt's: the reference point's mismatched pairs), a short run
on the toy world, and its config errors.
"""

import math
import os

import pytest
import torch

import checkpoint
import config
import train_kto
from test_dpo import one_thread, read_log, t, toy  # noqa: F401 (fixtures)


@pytest.mark.unit
def test_kto_loss_by_hand_and_against_the_papers_value_function():
    # r = policy - reference: [1.0, -0.5, 2.0]; KL 0.4 (a negative one is floored at 0)
    pol, ref = t([-1.0, -3.0, -2.0]), t([-2.0, -2.5, -4.0])
    desirable = torch.tensor([True, False, False])
    losses = train_kto.kto_loss(pol, ref, desirable, 0.4, beta=0.5, desirable_weight=2.0,
                                undesirable_weight=0.5)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    want = [2.0 * (1 - sig(0.5 * (1.0 - 0.4))), 0.5 * (1 - sig(0.5 * (0.4 + 0.5))),
            0.5 * (1 - sig(0.5 * (0.4 - 2.0)))]
    assert losses.tolist() == pytest.approx(want, abs=1e-12)
    # the paper's form, L = lambda_y - v(x, y), v = lambda_D sigma(beta (r - z0)) for desirable
    # y and lambda_U sigma(beta (z0 - r)) otherwise
    for i, (r, d) in enumerate(zip([1.0, -0.5, 2.0], [True, False, False])):
        lam = 2.0 if d else 0.5
        v = lam * sig(0.5 * ((r - 0.4) if d else (0.4 - r)))
        assert losses[i].item() == pytest.approx(lam - v, abs=1e-12)
    # z0 = max(0, KL): a negative KL estimate counts as 0
    neg = train_kto.kto_loss(pol, ref, desirable, -3.0, beta=0.5)
    zero = train_kto.kto_loss(pol, ref, desirable, 0.0, beta=0.5)
    assert torch.equal(neg, zero)
    # the gradient raises a desirable answer's log-prob and lowers an undesirable one's
    p = pol.clone().requires_grad_()
    train_kto.kto_loss(p, ref, desirable, 0.4).sum().backward()
    assert p.grad[0] < 0 and p.grad[1] > 0 and p.grad[2] > 0


@pytest.mark.unit
def test_kto_kl_by_hand():
    # the mean log-ratio of the mismatched pairs, detached; a negative one stays negative here
    # (kto_loss floors it at 0)
    pol = t([-1.0, -2.0, -4.0]).requires_grad_()
    kl = train_kto.kto_kl(pol, t([-1.5, -1.75, -4.5]))
    assert kl.item() == (0.5 - 0.25 + 0.5) / 3 and not kl.requires_grad
    assert train_kto.kto_kl(t([-2.0]), t([-1.0]), reduce=False).item() == -1.0


@pytest.mark.unit
def test_kto_batches_pair_each_prompt_with_the_next_answer():
    from data import loader
    ex = [dict(prompt=[1, 2], completion=[7, 256], desirable=True),
          dict(prompt=[3], completion=[8, 9, 256], desirable=False)]
    b = loader.collate_unpaired(ex, 256, block_size=4)
    rows = [r[m.bool()].tolist() for r, m in zip(b["idx"], b["attention_mask"])]
    # the examples, then prompt 0 + answer 1 (its prompt cut from the left to fit 4 tokens) and
    # prompt 1 + answer 0
    assert rows == [[1, 2, 7, 256], [3, 8, 9, 256], [2, 8, 9, 256], [3, 7, 256]]
    assert b["loss_mask"].tolist()[2] == [0, 1, 1, 1] and b["desirable"].tolist() == [True, False]


@pytest.mark.unit
def test_kto_pairs_each_answer_with_another_prompt():
    # the labelling step writes a prompt's answers one after another: the next answer would
    # mostly be the same prompt's (82% of the held-out pairs), which estimates no KL at all
    from data import loader
    ex = [dict(prompt=[p], completion=[c, 256], desirable=True)
          for p, c in ((1, 10), (1, 11), (1, 12), (2, 20), (2, 21), (3, 30))]
    assert loader.mismatched_partners(ex) == [3, 3, 3, 5, 5, 0]
    b = loader.collate_unpaired(ex, 256, block_size=8)
    for r, m in zip(b["idx"][6:], b["attention_mask"][6:]):
        prompt, answer, _ = r[m.bool()].tolist()
        assert answer // 10 != prompt  # each answer is another prompt's
    same = [dict(prompt=[1], completion=[c, 256], desirable=False) for c in (10, 11)]
    assert loader.mismatched_partners(same) == [1, 0]  # one prompt only: the next answer


def write_unpaired(toy):
    """Unpaired feedback made from the toy pairs: chosen answers desirable, rejected ones not."""
    import json
    from data.toy.prepare import write_jsonl
    for split in ("train", "val"):
        rows = [json.loads(line) for line in open(toy / f"prefs_{split}.jsonl")]
        write_jsonl(toy / f"kto_{split}.jsonl", [
            dict(prompt=r["prompt"], completion=r[side], label=side == "chosen")
            for r in rows for side in ("chosen", "rejected")])


def run(toy, out, *args):
    argv = [f"--out_dir={out}", f"--init_from={toy / 'sft.pt'}", "--device=cpu",
            "--log_interval=1", "--warmup_iters=0", "--lr=1e-3", "--min_lr=1e-4", *args]
    return train_kto.main(argv)


@pytest.mark.slow
def test_kto_run_raises_the_desirable_log_ratio(toy, tmp_path):
    write_unpaired(toy)
    out = tmp_path / "kto"
    res = run(toy, out, f"--train_data={toy / 'kto_train.jsonl'}",
              f"--val_data={toy / 'kto_val.jsonl'}", "--max_iters=60", "--eval_interval=60",
              "--eval_examples=128", "--batch_size=32", "--lr=2e-3", "--beta=0.1")
    # batches of 32: at 16 answers and lr 3e-3 the KL estimate swings between -7 and +2 nats
    # within 40 steps, and where both rewards' common level lands is a coin toss
    first = read_log(out)[0]
    assert first["val_rewards_desirable"] == 0 and first["val_kl"] == 0  # policy == reference
    assert first["val_loss"] == pytest.approx(0.5, abs=1e-6)  # 1 - sigma(0)
    # desirable answers gain log-probability over the reference, undesirable ones less: a
    # log-ratio gap of more than a nat on held-out answers (beta = 0.1: rewards are r / 10)
    assert res["val_rewards_desirable"] > 0 and res["val_accuracy"] > 0.6, res
    assert res["val_rewards_desirable"] - res["val_rewards_undesirable"] > 0.1, res
    assert res["val_loss"] < 0.49, res
    assert checkpoint.load_checkpoint(str(out / "ckpt_last.pt"))["stage"] == "kto"


@pytest.mark.parametrize("arg, words", [
    ("--batch_size=1", "batch_size >= 2"),
    ("--beta=0", "beta"),
    ("--desirable_weight=0", "desirable_weight"),
    ("--loss_type=kto", "unknown config key 'loss_type'"),
    ("--precompute_ref_logps=True", "unknown config key 'precompute_ref_logps'"),
    ("--share_prompt=True", "unknown config key 'share_prompt'"),
])
def test_bad_config_is_a_clear_error(tmp_path, arg, words):
    with pytest.raises(config.ConfigError, match=words):
        train_kto.main([f"--out_dir={tmp_path / 'x'}", *arg.split()])
    assert not os.path.exists(tmp_path / "x")  # rejected before anything was written
