"""
Helpful and harmless (safety.py): Llama 2's gate, Safe RLHF's multiplier step and advantage
pinned to hand-computed numbers; the prompt's family read from its file; short PPO runs in which
lambda rises above its budget and falls below it, resume restores lambda and the cost critic
exactly, and the gate scores the prompts tagged harmful with the safety model.
"""

import json
import math
from types import SimpleNamespace

import pytest
import torch

import checkpoint
import config
import safety
import train_ppo
from data import loader
from model import GPT, GPTConfig, ScalarModel
from tokenizer import get_tokenizer
from train_ppo import compute_gae, kl_shaped_rewards, whiten

# -----------------------------------------------------------------------------
# the math, by hand


@pytest.mark.unit
def test_llama2_gate_by_hand():
    # answer 0: a safe prompt, sigmoid(0.5) = 0.62 >= 0.15: the helpful score 1.0
    # answer 1: a safe prompt, but sigmoid(-2.0) = 0.119 < 0.15: the safety score -2.0
    # answer 2: a prompt tagged unsafe: the safety score 1.0, however helpful the answer
    # answer 3: sigmoid(-1.0) = 0.269 >= 0.15: the helpful score 0.3
    helpful = torch.tensor([1.0, 2.0, -0.5, 0.3])
    safety_scores = torch.tensor([0.5, -2.0, 1.0, -1.0])
    unsafe = torch.tensor([False, False, True, False])
    scores, gate = safety.safety_gated_rewards(helpful, safety_scores, unsafe, 0.15)
    assert gate.tolist() == [False, True, True, False]
    torch.testing.assert_close(scores, torch.tensor([1.0, -2.0, 1.0, 0.3]))
    # LOGIT(R_c) is the chosen score; WHITEN over the batch: mean 0.075, deviations 0.925,
    # -2.075, 0.925, 0.225, unbiased variance 6.0675 / 3 = 2.0225, std 1.42215
    std = math.sqrt(2.0225)
    torch.testing.assert_close(whiten(scores, torch.ones(4)), torch.tensor(
        [0.925 / std, -2.075 / std, 0.925 / std, 0.225 / std]))
    assert torch.special.logit(torch.sigmoid(torch.tensor(-2.0))).item() == pytest.approx(-2.0)
    # a threshold of 0.1 lets answer 1 through: sigmoid(-2) = 0.119 >= 0.1
    assert safety.safety_gated_rewards(helpful, safety_scores, unsafe, 0.1)[1].tolist() == [
        False, False, True, False]


@pytest.mark.unit
def test_lagrange_step_by_hand():
    # log lambda += lr * (E[C] - d): above the budget lambda grows, below it shrinks
    assert safety.lagrange_step(0.0, 0.3, -0.1, 0.5) == pytest.approx(0.2)       # 0.5 * 0.4
    assert safety.lagrange_step(0.0, -0.3, -0.1, 0.5) == pytest.approx(-0.1)     # 0.5 * -0.2
    assert safety.lagrange_step(math.log(2.0), 0.0, 0.0, 1.0) == math.log(2.0)   # at the budget
    # three steps at E[C] - d = 0.4 and lr 0.5: lambda = 1 * e^0.6
    log_lam = 0.0
    for _ in range(3):
        log_lam = safety.lagrange_step(log_lam, 0.3, -0.1, 0.5)
    assert math.exp(log_lam) == pytest.approx(math.exp(0.6))


@pytest.mark.unit
def test_safe_rlhf_advantages_by_hand():
    a_r, a_c = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 1.0]])
    # lambda = 3: (1 - 1.5) / 4 = -0.125, (-2 - 3) / 4 = -1.25; lambda = 0: A_r itself
    torch.testing.assert_close(safety.safe_rlhf_advantages(a_r, a_c, 3.0),
                               torch.tensor([[-0.125, -1.25]]))
    torch.testing.assert_close(safety.safe_rlhf_advantages(a_r, a_c, 0.0), a_r)
    # the KL paid on both sides keeps its weight beta at any lambda. beta = 0.5, per-token k1 =
    # log pi - log pi_ref = [0.2, -0.1], score 2, cost 1, values 0, gamma = lam = 1 (A_t = the
    # rewards from t on): A_0 = -0.5 * 0.1 + (2 - 3 * 1) / 4 = -0.3, A_1 = 0.05 - 0.25 = -0.2
    lp, ref, mask = torch.tensor([[0.0, 0.0]]), torch.tensor([[-0.2, 0.1]]), torch.ones(1, 2)
    zeros = torch.zeros(1, 2)
    adv_r, _ = compute_gae(kl_shaped_rewards(torch.tensor([2.0]), lp, ref, mask, 0.5), zeros, mask,
                           1.0, 1.0)
    adv_c, _ = compute_gae(kl_shaped_rewards(torch.tensor([1.0]), lp, ref, mask, -0.5), zeros, mask,
                           1.0, 1.0)
    torch.testing.assert_close(safety.safe_rlhf_advantages(adv_r, adv_c, 3.0),
                               torch.tensor([[-0.3, -0.2]]))


@pytest.mark.unit
def test_load_prompts_keeps_the_family(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(dict(prompt="How do I steal a bike?", family="harmful")) + "\n"
                    + json.dumps(dict(prompt="What color is a crow?")) + "\n")
    prompts = loader.load_prompts(str(path), get_tokenizer("byte"), 128, 64)
    assert [p.get("family") for p in prompts] == ["harmful", None]
    assert set(prompts[0]) == {"prompt", "ids", "family"} and set(prompts[1]) == {"prompt", "ids"}

# -----------------------------------------------------------------------------
# short PPO runs on a tiny policy, reward model and cost model


TINY = dict(block_size=96, vocab_size=257, n_layer=1, n_head=2, n_embd=32)
HARMFUL = ["How do I steal a bike?", "How can I rob a bank?", "Tell me how to kick a puppy."]
BENIGN = ["What color is a crow?", "What does a cow say?", "How do I kill time?"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    torch.manual_seed(0)
    policy = GPT(GPTConfig(**TINY))
    with torch.no_grad():  # an "SFT" policy that ends its answers: EOS is likely
        policy.transformer.wte.weight[256] *= 8
    cfg = SimpleNamespace()
    checkpoint.save_checkpoint(str(root / "sft.pt"), checkpoint.make_checkpoint(
        policy, "policy", "sft", "byte", cfg, 0))
    for name, seed in (("rm", 1), ("safety", 2), ("cost", 3)):
        torch.manual_seed(seed)
        checkpoint.save_checkpoint(str(root / f"{name}.pt"), checkpoint.make_checkpoint(
            ScalarModel(GPTConfig(**TINY)), "scalar", "rm", "byte", cfg, 0))
    with open(root / "prompts.jsonl", "w") as f:
        for i in range(8):
            for p in HARMFUL:
                f.write(json.dumps(dict(prompt=p, family="harmful")) + "\n")
            for p in BENIGN:
                f.write(json.dumps(dict(prompt=p, family="lookalike" if "kill" in p else "color"))
                        + "\n")
    return root


def ppo_args(world, out, **kw):
    args = dict(init_from=world / "sft.pt", reward_model=world / "rm.pt",
                train_prompts=world / "prompts.jsonl", val_prompts="", out_dir=out,
                gold_judge="toy", demo_val_data="", block_size=96, rollout_batch_size=12,
                minibatch_size=6, micro_batch_size=6, max_new_tokens=8, max_iters=2,
                eval_interval=100, sample_interval=100, num_samples=1, ckpt_interval=100,
                save_every=0, device="cpu", dtype="float32")
    args.update(kw)
    return [f"--{k}={v}" for k, v in args.items()]


def log_of(out):
    return [json.loads(line) for line in open(out / "log.jsonl") if '"score"' in line]


@pytest.mark.slow
def test_lambda_rises_above_the_budget_and_falls_below_it(world, tmp_path):
    runs = {}
    for name, budget in (("over", -100.0), ("under", 100.0)):
        out = tmp_path / name
        res = train_ppo.main(ppo_args(world, out, cost_model=world / "cost.pt", cost_scope="all",
                                      cost_budget=budget, lambda_init=2.0, lambda_lr=0.01,
                                      max_iters=3))
        runs[name] = log_of(out)
        # every logged step is log lambda += lr * (mean cost - d), from lambda_init
        log_lam = math.log(2.0)
        for r in runs[name]:
            log_lam += 0.01 * (r["cost"] - budget)
            assert r["log_lambda"] == pytest.approx(log_lam, abs=1e-9)
            assert r["lambda"] == pytest.approx(math.exp(log_lam))
            for key in ("cost_vf_loss", "cost_vclipfrac", "cost_explained_var", "gold_cost"):
                assert math.isfinite(r[key]), key
        assert res["log_lambda"] == pytest.approx(log_lam, abs=1e-9)
    assert [r["lambda"] > 2.0 for r in runs["over"]] == [True] * 3
    assert runs["over"][2]["lambda"] > runs["over"][1]["lambda"] > runs["over"][0]["lambda"]
    assert runs["under"][2]["lambda"] < runs["under"][1]["lambda"] < runs["under"][0]["lambda"] < 2


@pytest.mark.slow
def test_cost_scope_unsafe_costs_only_the_harmful_prompts(world, tmp_path):
    # a cost model that scores every answer 5 (its head's bias): with cost_scope='unsafe' an
    # answer costs 5 on a prompt tagged harmful, 0 elsewhere, so the batch's mean cost is 5 x the
    # share of harmful prompts in it
    ckpt = checkpoint.load_checkpoint(str(world / "cost.pt"))
    ckpt["model"]["head.weight"].zero_()
    ckpt["model"]["head.bias"].fill_(5.0)
    checkpoint.save_checkpoint(str(tmp_path / "five.pt"), ckpt)
    cfg = config.parse_config(train_ppo.DEFAULTS, ppo_args(world, tmp_path / "x",
                                                           cost_model=tmp_path / "five.pt"))
    proc = SimpleNamespace(device="cpu", device_type="cpu", autocast=torch.autocast("cpu", enabled=False))
    prompts = loader.load_prompts(cfg.train_prompts, get_tokenizer("byte"), 96, 8)
    cost = safety.load_cost(cfg, "byte", 257, proc, prompts)
    seq = torch.randint(0, 256, (4, 12))
    rollouts = SimpleNamespace(seq=seq, mask=torch.ones_like(seq), P=4,
                               prompts=[HARMFUL[0], BENIGN[0], BENIGN[2], HARMFUL[2]])
    costed = safety.cost_rollout(cost, rollouts, cfg, proc)
    costs, values = costed.costs, costed.values
    assert costs.tolist() == [5.0, 0.0, 0.0, 5.0]  # the lookalike "kill time" is no unsafe prompt
    assert values.shape == (4, 8) and torch.allclose(values, torch.full((4, 8), 5.0))
    cfg.cost_scope = "all"
    cost = safety.load_cost(cfg, "byte", 257, proc, prompts)
    assert safety.cost_rollout(cost, rollouts, cfg, proc).costs.tolist() == [5.0] * 4


@pytest.mark.slow
def test_resume_restores_lambda_and_the_cost_critic_exactly(world, tmp_path):
    args = dict(cost_model=world / "cost.pt", cost_scope="all", cost_budget=-1.0,
                lambda_lr=0.1, max_iters=3, lr=1e-3, critic_lr=1e-3)
    full = train_ppo.main(ppo_args(world, tmp_path / "full", **args))
    train_ppo.main(ppo_args(world, tmp_path / "split", **args, stop_iter=1))
    resumed = train_ppo.main(ppo_args(world, tmp_path / "split", **args, resume=True))
    a = checkpoint.load_checkpoint(str(tmp_path / "full" / "ckpt_last.pt"))
    b = checkpoint.load_checkpoint(str(tmp_path / "split" / "ckpt_last.pt"))
    assert a["log_lambda"] == b["log_lambda"] == full["log_lambda"] == resumed["log_lambda"]
    assert a["log_lambda"] != 0.0
    for part in ("model", "critic", "cost_critic"):
        for k in a[part]:
            torch.testing.assert_close(a[part][k], b[part][k], atol=1e-6, rtol=0)
    assert [r["step"] for r in log_of(tmp_path / "split")] == [1, 2, 3]


@pytest.mark.slow
def test_the_gate_scores_the_harmful_prompts_with_the_safety_model(world, tmp_path):
    out = tmp_path / "gate"
    res = train_ppo.main(ppo_args(world, out, reward_gate="llama2",
                                  safety_model=world / "safety.pt", max_iters=2))
    for r in log_of(out):
        # every answer to a prompt tagged harmful is scored by the safety model; others may be
        assert 0 < r["unsafe_share"] <= r["gate_share"] <= 1
        assert math.isfinite(r["helpful_score"]) and math.isfinite(r["safety_score"])
    assert res["iters"] == 2
    with pytest.raises(config.ConfigError, match="safety_model"):
        train_ppo.main(ppo_args(world, tmp_path / "bad", reward_gate="llama2"))
    with pytest.raises(config.ConfigError, match="reward_gate"):
        train_ppo.main(ppo_args(world, tmp_path / "bad", reward_gate="llama3"))
