"""
GRPO and its family: the group baselines, the KL estimators and the loss aggregations pinned to
hand-computed numbers (and their micro-batch and DDP splits to the whole batch), the on-policy
ratio of 1 to float precision, no reference model at beta = 0, programmatic rewards from a file, a short
run that raises a reward, and exact resume.
"""

import json
import math
import os
import sys
import textwrap

import pytest
import torch

import config
import checkpoint
import train_grpo
import train_ppo
from train_grpo import group_advantages
from train_ppo import aggregate_loss, kl_penalty

# -----------------------------------------------------------------------------
# pure functions


@pytest.mark.unit
def test_group_advantages_by_hand():
    # two groups of 3: rewards [1, 2, 6] (mean 3, unbiased std sqrt(7)) and [4, 4, 4] (no signal)
    r = torch.tensor([1.0, 2.0, 6.0, 4.0, 4.0, 4.0])
    mean = group_advantages(r, 3, "mean", "none")
    assert mean.tolist() == [-2.0, -1.0, 3.0, 0.0, 0.0, 0.0]
    grpo = group_advantages(r, 3, "mean", "group")
    want = [-2 / (7 ** 0.5 + 1e-4), -1 / (7 ** 0.5 + 1e-4), 3 / (7 ** 0.5 + 1e-4), 0, 0, 0]
    assert grpo.tolist() == pytest.approx(want, abs=1e-6)
    # leave-one-out: 1 - (2 + 6) / 2 = -3, 2 - 3.5 = -1.5, 6 - 1.5 = 4.5 (= k/(k-1) * mean's)
    loo = group_advantages(r, 3, "leave_one_out", "none")
    assert loo.tolist() == pytest.approx([-3.0, -1.5, 4.5, 0, 0, 0])
    # batch scale: the baselined rewards [-2, -1, 3, 0, 0, 0] over their own unbiased std
    std = torch.tensor([-2.0, -1.0, 3.0, 0.0, 0.0, 0.0]).std().item()
    batch = group_advantages(r, 3, "mean", "batch")
    assert batch.tolist() == pytest.approx([x / (std + 1e-4) for x in mean.tolist()], abs=1e-6)
    assert train_grpo.no_signal_share(r, 3) == 0.5
    with pytest.raises(ValueError, match="baseline"):
        group_advantages(r, 3, "median")


@pytest.mark.unit
def test_kl_estimators_by_hand():
    lp, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    log_r = torch.tensor([[-0.5, 1.0]])  # ref - logp
    assert kl_penalty(lp, ref, "k1").tolist()[0] == pytest.approx([0.5, -1.0])
    assert kl_penalty(lp, ref, "k2").tolist()[0] == pytest.approx([0.125, 0.5])
    k3 = (torch.exp(log_r) - 1 - log_r).tolist()[0]
    assert kl_penalty(lp, ref, "k3").tolist()[0] == pytest.approx(k3)
    assert min(k3) >= 0 and kl_penalty(lp, lp, "k3").abs().max() == 0
    # k1 and k3 are unbiased for KL(pi || ref): average them over many samples of pi
    torch.manual_seed(0)
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.3, 0.3, 0.4])
    x = torch.multinomial(p, 200000, replacement=True)
    exact = (p * (p / q).log()).sum().item()
    for est in ("k1", "k3"):
        got = kl_penalty(p.log()[x], q.log()[x], est).mean().item()
        assert got == pytest.approx(exact, abs=0.01), est


@pytest.mark.unit
def test_loss_aggregations_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0]])
    m = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    assert aggregate_loss(x, m, "token_mean").item() == pytest.approx(10 / 4)
    assert aggregate_loss(x, m, "seq_mean_token_mean").item() == pytest.approx((2 + 4) / 2)
    assert aggregate_loss(x, m, "seq_mean_token_sum_norm").item() == pytest.approx(10 / (2 * 4))
    # GRPO's length bias: a long answer's tokens each weigh less than a short answer's
    g = torch.ones(2, 4, requires_grad=True)
    aggregate_loss(g, m, "seq_mean_token_mean").backward()
    assert g.grad[0, 0].item() == pytest.approx(1 / 6) and g.grad[1, 0].item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="aggregation"):
        aggregate_loss(x, m, "sum")


@pytest.mark.unit
@pytest.mark.parametrize("mode", train_ppo.AGGREGATIONS)
def test_micro_batches_sum_to_the_whole_batch(mode):
    # with the whole batch's denominator, the micro-batch losses add up to the batch's loss
    torch.manual_seed(0)
    x = torch.randn(6, 5)
    m = (torch.rand(6, 5) > 0.3).long()
    m[:, 0] = 1
    whole = aggregate_loss(x, m, mode)
    total = train_ppo.loss_normalizer(m, mode)
    parts = sum(aggregate_loss(x[i:i + 2], m[i:i + 2], mode, total) for i in range(0, 6, 2))
    assert parts.item() == pytest.approx(whole.item(), abs=1e-6)


@pytest.mark.unit
def test_presets_are_the_published_recipes():
    cfg = lambda **kw: type("C", (), {**dict(loss_agg="", kl_in="", kl_estimator=""), **kw})  # noqa: E731
    assert train_grpo.settings(cfg(advantage="grpo")) == (
        "mean", "group", "seq_mean_token_mean", "loss", "k3")
    assert train_grpo.settings(cfg(advantage="dr_grpo"))[1:3] == ("none", "seq_mean_token_sum_norm")
    assert train_grpo.settings(cfg(advantage="rloo"))[::3] == ("leave_one_out", "reward")
    assert train_grpo.settings(cfg(advantage="reinforce_pp"))[1] == "batch"
    assert train_grpo.settings(cfg(advantage="grpo", kl_in="reward"))[3] == "reward"

# -----------------------------------------------------------------------------
# end to end on a tiny policy (the PPO tests' world)

from test_ppo import ppo_args, world  # noqa: E402,F401  (the fixture)


def grpo_args(world, out, **kw):
    args = dict(init_from=str(world / "sft.pt"), reward_model=str(world / "rm.pt"),
                train_prompts=str(world / "train.jsonl"), val_prompts=str(world / "val.jsonl"),
                out_dir=str(out), gold_judge="", demo_val_data="", block_size=96, group_size=4,
                rollout_batch_size=16, minibatch_size=16, micro_batch_size=8, max_new_tokens=12,
                max_iters=2, eval_interval=100, eval_examples=8, sample_interval=100,
                num_samples=1, ckpt_interval=100, device="cpu", dtype="float32")
    args.update(kw)
    return [f"--{k}={v}" for k, v in args.items()]


def test_on_policy_ratio_is_one_and_beta_zero_builds_no_reference(world, tmp_path, monkeypatch):
    # one pass over the whole batch: every micro-batch is the first minibatch's, so its ratio is
    # 1 to float precision (fp32: within 1e-5; the update's micro-batches hold other rows, at
    # other trimmed widths, than the rollout's), approx_kl and clipfrac 0 (RLHF_DETAILS item 17)
    out = train_grpo.main(grpo_args(world, tmp_path / "a", max_iters=1, gold_judge="toy"))
    assert out["ratio_mean"] == pytest.approx(1.0, abs=1e-5) and out["ratio_var"] <= 1e-10
    assert out["clipfrac"] == 0.0 and out["approx_kl"] <= 1e-10
    assert out["kl"] == pytest.approx(0.0, abs=1e-6) and math.isfinite(out["val_gold"])
    loaded = []
    load = train_grpo.load_models
    monkeypatch.setattr(train_grpo, "load_models", lambda *a, **k: loaded.append(load(*a, **k))
                        or loaded[-1])
    out = train_grpo.main(grpo_args(world, tmp_path / "b", beta=0.0, advantage="dr_grpo"))
    assert loaded[0][1] is None and math.isfinite(out["pg_loss"])  # no reference model made


def test_reward_function_from_a_file(world, tmp_path):
    path = tmp_path / "rewards.py"
    path.write_text(textwrap.dedent("""
        def count_a(prompt, response):
            return float(response.count("a"))

        def broken(prompt, response):
            return float("nan")
    """))
    out = train_grpo.main(grpo_args(world, tmp_path / "ok", reward_fn=f"{path}:count_a",
                                    advantage="rloo", max_iters=1))
    assert math.isfinite(out["score"])
    with pytest.raises(config.ConfigError, match="returned nan"):
        train_grpo.main(grpo_args(world, tmp_path / "nan", reward_fn=f"{path}:broken"))
    for spec, words in ((f"{path}:missing", "no function 'missing'"),
                        (f"{tmp_path}/nope.py:f", "does not exist"), ("count_a", "expected")):
        with pytest.raises(config.ConfigError, match=words):
            train_grpo.main(grpo_args(world, tmp_path / "bad", reward_fn=spec))
    # PPO takes the same form
    out = train_ppo.main(ppo_args(world, tmp_path / "ppo", reward_fn=f"{path}:count_a",
                                  max_iters=1))
    assert math.isfinite(out["score"])


def test_bad_config_is_rejected_before_anything_is_written(world, tmp_path):
    for kw, words in ((dict(group_size=3), "group_size=3 must divide"),
                      (dict(group_size=1), "group_size"), (dict(advantage="ppo"), "advantage"),
                      (dict(loss_agg="sum"), "loss_agg"), (dict(kl_in="both"), "kl_in")):
        with pytest.raises(config.ConfigError, match=words):
            train_grpo.main(grpo_args(world, tmp_path / "x", **kw))
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_grpo_raises_a_programmatic_reward(world, tmp_path):
    """reward = number of 'e': each advantage preset must raise it."""
    for advantage in ("grpo", "rloo"):
        train_grpo.main(grpo_args(world, tmp_path / advantage, reward_fn="byte_count:e",
                                  advantage=advantage, max_iters=20, lr=3e-3, beta=0.01,
                                  num_iterations=2, minibatch_size=8, missing_eos_mode=""))
        log = [json.loads(l) for l in open(tmp_path / advantage / "log.jsonl")]
        score = [r["score"] for r in log if "score" in r]
        assert sum(score[-5:]) / 5 > sum(score[:5]) / 5 + 0.5, (advantage, score)


@pytest.mark.slow
def test_resume_equals_uninterrupted_run(world, tmp_path):
    args = dict(max_iters=3, save_every=1, num_iterations=2, minibatch_size=8, lr=1e-3)
    full = train_grpo.main(grpo_args(world, tmp_path / "full", **args))
    train_grpo.main(grpo_args(world, tmp_path / "split", **args, stop_iter=1))
    resumed = train_grpo.main(grpo_args(world, tmp_path / "split", **args, resume=True))
    assert resumed["iters"] == full["iters"] == 3
    a = checkpoint.load_checkpoint(str(tmp_path / "full" / "ckpt_last.pt"))
    b = checkpoint.load_checkpoint(str(tmp_path / "split" / "ckpt_last.pt"))
    assert (a["stage"], a["step"]) == ("grpo", 3)
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], atol=1e-6, rtol=0)
    assert full["score"] == pytest.approx(resumed["score"], abs=1e-6)
    assert all(os.path.isfile(tmp_path / "full" / f"ckpt_iter{i}.pt") for i in (1, 2, 3))


WORKER = r'''
import json, os, sys
import torch
import torch.distributed as dist
import train_ppo

dist.init_process_group("gloo")
rank = dist.get_rank()
g = torch.Generator().manual_seed(0)
x = torch.randn(8, 6, generator=g)
mask = (torch.rand(8, 6, generator=g) > 0.4).float()
mask[:, 0] = 1
mask[4:, 4:] = 0  # rank 1's rows are shorter: its own counts are not the global ones
x, mask = x[4 * rank:4 * rank + 4], mask[4 * rank:4 * rank + 4, :6 - rank]  # rank 1 pads less
x = x[:, :mask.size(1)]
out = {}
for mode in train_ppo.AGGREGATIONS:
    total = train_ppo.loss_normalizer(mask, mode)
    out[mode] = train_ppo.aggregate_loss(x, mask, mode, total).item()
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
    json.dump(out, f)
dist.destroy_process_group()
'''


@pytest.mark.slow
def test_aggregations_over_two_ranks_equal_one_process(tmp_path):
    from test_distributed import torchrun
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    torchrun(str(script), [str(tmp_path)])
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 6, generator=g)
    mask = (torch.rand(8, 6, generator=g) > 0.4).float()
    mask[:, 0] = 1
    mask[4:, 4:] = 0
    for mode in train_ppo.AGGREGATIONS:  # one process holds the union, padded to 6
        whole = aggregate_loss(x, mask, mode).item()
        assert ranks[0][mode] + ranks[1][mode] == pytest.approx(whole, abs=1e-6), mode

# -----------------------------------------------------------------------------
# numbers that mean what their names say (the second review)


@pytest.mark.unit
def test_kl_penalised_scores_use_the_chosen_estimator_by_hand():
    # log r = ref - lp = [-0.5, 1.0] on the first row (both tokens valid), [2.0] on the second
    lp = torch.tensor([[-1.0, -2.0], [-3.0, -0.5]])
    ref = torch.tensor([[-1.5, -1.0], [-1.0, -9.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    scores = torch.tensor([1.0, 2.0])
    k1 = [0.5 - 1.0, -2.0]
    k2 = [0.5 * 0.25 + 0.5 * 1.0, 0.5 * 4.0]
    k3 = [(math.exp(-0.5) - 1 + 0.5) + (math.exp(1.0) - 1 - 1.0), math.exp(2.0) - 1 - 2.0]
    for est, kl in (("k1", k1), ("k2", k2), ("k3", k3)):
        got = train_grpo.kl_penalised_scores(scores, lp, ref, mask, 0.1, est)
        assert got.tolist() == pytest.approx([1.0 - 0.1 * kl[0], 2.0 - 0.1 * kl[1]]), est


def test_kl_in_the_reward_follows_the_estimator(world, tmp_path):
    # iteration 1 is on-policy (KL 0); iteration 2's advantages hold the estimator's KL
    weights = {}
    for est in ("k1", "k2"):
        train_grpo.main(grpo_args(world, tmp_path / est, advantage="rloo", kl_estimator=est,
                                  beta=0.5, lr=1e-2))
        weights[est] = checkpoint.load_checkpoint(str(tmp_path / est / "ckpt_last.pt"))["model"]
    assert any(not torch.equal(weights["k1"][k], weights["k2"][k]) for k in weights["k1"])


def test_k1_in_the_loss_is_rejected(world, tmp_path):
    with pytest.raises(config.ConfigError, match="zero expected gradient"):
        train_grpo.main(grpo_args(world, tmp_path / "x", kl_in="loss", kl_estimator="k1"))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("advantage", ["grpo", "dr_grpo"])
def test_logged_losses_do_not_depend_on_the_micro_batch_split(world, tmp_path, advantage):
    # the same minibatch of 16 answers as one forward or four: the same pg_loss and kl_loss
    out = {mbs: train_grpo.main(grpo_args(world, tmp_path / f"{advantage}{mbs}", max_iters=1,
                                          advantage=advantage, micro_batch_size=mbs))
           for mbs in (16, 4)}
    for key in ("pg_loss", "kl_loss"):
        assert out[4][key] == pytest.approx(out[16][key], rel=1e-5, abs=1e-7), key
    assert out[16]["kl_loss"] == pytest.approx(0.0, abs=1e-6)  # on-policy: policy == reference


def test_masked_answers_still_count_in_the_metrics(world, tmp_path):
    # with 3 new tokens most answers are cut: 'mask' leaves them out of the loss, not the logs
    logs = {}
    for mode in ("mask", ""):
        out = train_grpo.main(grpo_args(world, tmp_path / (mode or "none"), max_iters=1,
                                        max_new_tokens=3, missing_eos_mode=mode, num_samples=2,
                                        sample_interval=1))
        tokens = [json.loads(l) for l in open(tmp_path / (mode or "none") / "tokens.jsonl")]
        logs[mode] = (out["resp_len"], out["eos_rate"], [t["tokens"] for t in tokens])
    assert logs["mask"] == logs[""]  # the same rollout, the same metrics
    assert logs["mask"][1] < 1 and logs["mask"][0] > 1.5  # cut answers are counted as written


def test_no_signal_is_measured_on_what_the_advantages_see(world, tmp_path, monkeypatch):
    # RLOO's rewards hold the KL: the share of groups without signal is of those rewards
    seen = {}
    for name in ("group_advantages", "no_signal_share"):
        fn = getattr(train_grpo, name)
        monkeypatch.setattr(train_grpo, name, lambda s, *a, _fn=fn, _n=name, **k:
                            seen.setdefault(_n, []).append(s.clone()) or _fn(s, *a, **k))
    train_grpo.main(grpo_args(world, tmp_path / "rloo", advantage="rloo", beta=0.5, lr=1e-2))
    assert len(seen["no_signal_share"]) == len(seen["group_advantages"]) == 2
    for a, b in zip(seen["group_advantages"], seen["no_signal_share"]):
        assert torch.equal(a, b)


@pytest.mark.unit
def test_dr_grpo_divides_by_the_generation_budget_not_the_padded_width():
    # one 5-token answer weighs 1 / (rows x max_new_tokens) per token, whatever the batch's width
    weights = []
    for width in (12, 64):
        x = torch.ones(2, width, requires_grad=True)
        m = torch.zeros(2, width)
        m[0, :5], m[1, :width] = 1, 1
        total = train_ppo.loss_normalizer(m, "seq_mean_token_sum_norm", budget=64)
        aggregate_loss(x, m, "seq_mean_token_sum_norm", total).backward()
        weights.append(x.grad[0, 0].item())
    assert weights == pytest.approx([1 / (2 * 64)] * 2)
    assert aggregate_loss(torch.ones(1, 4), torch.ones(1, 4), "seq_mean_token_sum_norm",
                          budget=10).item() == pytest.approx(0.4)


def test_grpo_reads_prompt_weights_as_ppo_does(tmp_path):
    from tokenizer import get_tokenizer
    prompts = tmp_path / "train.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "How do I steal a bike?", "family": "harmful"},
        {"prompt": "What color is a crow?", "family": "color"},
        {"prompt": "How do I kill time?", "family": "lookalike"}]))
    cfg = config.parse_config(train_grpo.DEFAULTS, [f"--train_prompts={prompts}", "--val_prompts=",
                                                    "--prompt_weights=harmful=2,lookalike=3"])
    train, val = train_grpo.load_prompts(cfg, get_tokenizer("byte"))
    assert [p["family"] for p in train] == ["harmful"] * 2 + ["color"] + ["lookalike"] * 3
    assert val == []
