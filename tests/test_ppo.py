"""
PPO: the estimators and losses pinned to hand-computed numbers and naive loops, the log-prob
bookkeeping of the rollout, the invariants of the first update, a short real run against a
programmatic reward, and exact resume.
"""

import json
import math
import os

from types import SimpleNamespace

import pytest
import torch

import checkpoint
import config
import ops
import rollout
import runtime
import train_ppo
from model import GPT, GPTConfig, ScalarModel
from tokenizer import encode_example, encode_prompt, encode_text, get_tokenizer
from train_ppo import compute_gae, kl_shaped_rewards, whiten

# -----------------------------------------------------------------------------
# pure functions


@pytest.mark.unit
def test_compute_gae_hand_example():
    # gamma = 1, lam = 0.5. Row 0 has 3 valid tokens, row 1 two (its third reward and value
    # must be ignored). Row 0, backwards:
    #   t=2: delta = 1 + 0 - 0.5 = 0.5                A = 0.5
    #   t=1: delta = 0 + 0.5 - 0.25 = 0.25            A = 0.25 + 0.5 * 0.5 = 0.5
    #   t=0: delta = 0 + 0.25 - 0.5 = -0.25           A = -0.25 + 0.5 * 0.5 = 0
    # Row 1: t=1: delta = 1 + 0 - 0.25 = 0.75 (value after the last token is 0)  A = 0.75
    #        t=0: delta = 0 + 0.25 - 0.5 = -0.25      A = -0.25 + 0.5 * 0.75 = 0.125
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 5.0]])
    values = torch.tensor([[0.5, 0.25, 0.5], [0.5, 0.25, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = compute_gae(rewards, values, mask, gamma=1.0, lam=0.5)
    torch.testing.assert_close(adv, torch.tensor([[0.0, 0.5, 0.5], [0.125, 0.75, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.5, 0.75, 1.0], [0.625, 1.0, 0.0]]))


def naive_gae(rewards, values, lengths, gamma, lam):
    """The textbook sum A_t = sum_l (gamma lam)^l delta_{t+l}, one row and one token at a time."""
    B, T = rewards.shape
    adv = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        L = lengths[b]
        v = [values[b, t].item() for t in range(L)] + [0.0]  # V after the last token is 0
        deltas = [rewards[b, t].item() + gamma * v[t + 1] - v[t] for t in range(L)]
        for t in range(L):
            adv[b, t] = sum((gamma * lam) ** l * deltas[t + l] for l in range(L - t))
    return adv, (adv + values.double()) * (adv != 0).double()


@pytest.mark.unit
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.7)])
def test_compute_gae_matches_naive_loop(masked, gamma, lam):
    g = torch.Generator().manual_seed(0)
    B, T = 5, 9
    rewards, values = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    lengths = [9, 1, 4, 9, 6] if masked else [T] * B
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()
    adv, ret = compute_gae(rewards, values, mask, gamma, lam)
    ref_adv, _ = naive_gae(rewards, values, lengths, gamma, lam)
    torch.testing.assert_close(adv.double(), ref_adv, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ret.double(), (ref_adv + values.double()) * mask, atol=1e-5, rtol=1e-5)


@pytest.mark.unit
def test_kl_shaped_rewards_hand_example():
    scores = torch.tensor([2.0, -1.0])
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -1.0, -9.0]])
    ref_logprobs = torch.tensor([[-1.5, -2.0, -1.0], [-1.0, -1.0, -2.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # beta = 0.5: -0.5 * (logp - ref) = row 0 [-0.25, 0, 1], row 1 [-0.25, 0, (masked)];
    # the score lands on the last valid token: row 0 at t=2, row 1 at t=1
    rewards = kl_shaped_rewards(scores, logprobs, ref_logprobs, mask, 0.5)
    torch.testing.assert_close(rewards, torch.tensor([[-0.25, 0.0, 3.0], [-0.25, -1.0, 0.0]]))
    # summed over a response: score - beta * KL (k1)
    k1, k3 = train_ppo.kl_estimates(logprobs, ref_logprobs, mask)
    torch.testing.assert_close(rewards.sum(1), scores - 0.5 * k1)
    torch.testing.assert_close(k1, torch.tensor([-1.5, 0.5]))
    r = torch.tensor([math.exp(-0.5), 1.0, math.exp(2.0)])  # pi_ref / pi, row 0
    torch.testing.assert_close(k3[0], ((r - 1) - r.log()).sum())


@pytest.mark.unit
def test_whiten_uses_only_masked_entries():
    # valid entries 2, 4, 6: mean 4, unbiased variance 4; the pad (100) must not count
    x = torch.tensor([[2.0, 4.0], [6.0, 100.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    torch.testing.assert_close(whiten(x, mask), torch.tensor([[-1.0, 0.0], [1.0, 0.0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(whiten(x, mask, shift_mean=False), torch.tensor([[3.0, 4.0], [5.0, 0.0]]),
                               atol=1e-6, rtol=0)


@pytest.mark.unit
def test_policy_and_value_losses_hand_example():
    # ratios e^0 = 1, e^0.5 = 1.65 (clipped to 1.2 for A > 0), e^-0.5 = 0.61 (clipped to 0.8 for A < 0)
    old = torch.zeros(1, 4)
    logprobs = torch.tensor([[0.0, 0.5, -0.5, 0.5]])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, clipfrac, approx_kl, ratio = train_ppo.ppo_policy_loss(logprobs, old, adv, mask, 0.2)
    # per token max(-A rho, -A clip(rho)): -1, -1.2, 0.8 -> mean -0.4667; two of three clipped
    torch.testing.assert_close(loss, torch.tensor(-1.4 / 3))
    torch.testing.assert_close(clipfrac, torch.tensor(2 / 3))
    torch.testing.assert_close(approx_kl, torch.tensor(0.5 * 0.5 / 3))
    # values 0 -> 1 with returns 1 and old 0: the clipped value 0.2 gives the larger error 0.64
    v_loss, vclip = train_ppo.ppo_value_loss(torch.tensor([[1.0, 0.1]]), torch.zeros(1, 2),
                                             torch.tensor([[1.0, 0.0]]), torch.ones(1, 2), 0.2)
    torch.testing.assert_close(v_loss, torch.tensor(0.5 * (0.64 + 0.01) / 2))
    torch.testing.assert_close(vclip, torch.tensor(0.5))


@pytest.mark.unit
def test_adaptive_kl_coef():
    # KL twice the target: error clipped to +0.2; beta grows by 0.2 * 64 / 10000
    assert train_ppo.adaptive_kl_coef(0.1, 12.0, 6.0, 10000, 64) == pytest.approx(0.1 * 1.00128)
    assert train_ppo.adaptive_kl_coef(0.1, 5.4, 6.0, 100, 10) == pytest.approx(0.1 * 0.99)
    assert train_ppo.adaptive_kl_coef(0.1, 6.0, 6.0, 100, 10) == pytest.approx(0.1)


@pytest.mark.unit
def test_penalise_missing_eos_by_hand():
    scores, has_eos = torch.tensor([2.0, 2.0, -0.5]), torch.tensor([True, False, False])
    assert rollout.penalise_missing_eos(scores, has_eos, 1.0, "replace").tolist() == [2.0, -1.0, -1.0]
    assert rollout.penalise_missing_eos(scores, has_eos, 1.0, "subtract").tolist() == [2.0, 1.0, -1.5]
    assert torch.equal(rollout.penalise_missing_eos(scores, has_eos, 1.0, ""), scores)


@pytest.mark.unit
def test_length_penalty_by_hand():
    scores, lengths = torch.tensor([1.0, 1.0, -2.0]), torch.tensor([4, 10, 0])
    assert rollout.length_penalised(scores, lengths, 0.1).tolist() == pytest.approx([0.6, 0.0, -2.0])
    assert torch.equal(rollout.length_penalised(scores, lengths, 0.0), scores)


@pytest.mark.unit
def test_ptx_loss_is_the_sft_loss():
    # the mean NLL of the trained tokens: by hand from the full log-softmax
    from data import loader
    torch.manual_seed(0)
    enc = get_tokenizer("byte")
    model = GPT(tiny_config())
    rows = [encode_example(enc, "What is 2 plus 2?", "4"), (encode_text(enc, "free text"), None)]
    rows[1] = (rows[1][0], [1] * len(rows[1][0]))  # pretraining text: every token
    idx, attn, lm = loader.collate(rows, enc.eot_token)
    got = train_ppo.ptx_loss(model, (idx, attn, lm))
    logp = torch.log_softmax(model(idx).float(), -1)[:, :-1].gather(-1, idx[:, 1:, None])[..., 0]
    m = lm[:, 1:].float()
    assert got.item() == pytest.approx(-(logp * m).sum().item() / m.sum().item(), abs=1e-5)


@pytest.mark.unit
def test_entropy_from_logits():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]]])
    torch.testing.assert_close(ops.entropy_from_logits(logits), torch.tensor([[math.log(4), 0.0]]))

# -----------------------------------------------------------------------------
# rollout bookkeeping on a tiny random model


def tiny_config(**kw):
    return GPTConfig(**{**dict(block_size=96, vocab_size=257, n_layer=2, n_head=2, n_embd=32), **kw})


def left_pad(prompts, pad):
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), pad, dtype=torch.long)
    attn = torch.zeros((len(prompts), P), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, P - len(p):], attn[i, P - len(p):] = torch.tensor(p), 1
    return ids, attn


@pytest.mark.unit
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_training_logprobs_equal_sampling_logprobs(temperature):
    torch.manual_seed(0)
    enc = get_tokenizer("byte")
    policy = GPT(tiny_config()).eval()
    with torch.no_grad():  # make EOS likely so that some rows stop early and get padded
        policy.transformer.wte.weight[enc.eot_token] *= 20
    prompts = [encode_prompt(enc, p) for p in ["hi", "a longer prompt here", "mid one"]] * 2
    ids, attn = left_pad(prompts, enc.eot_token)
    tokens, mask, sample_lp = policy.generate(ids, attn, max_new_tokens=24, temperature=temperature,
                                              eos_token_id=enc.eot_token)
    assert 0 < mask.sum() < mask.numel()  # some padding after an EOS, or the test checks less
    seq, full_mask = torch.cat([ids, tokens], 1), torch.cat([attn, mask], 1)
    with torch.no_grad():
        lp, ent, values = rollout.policy_forward(policy, seq, full_mask, ids.size(1), temperature,
                                                   critic=ScalarModel.from_gpt(policy),
                                                   entropy=True)
    assert lp.shape == ent.shape == values.shape == tokens.shape
    torch.testing.assert_close(lp * mask, sample_lp, atol=1e-5, rtol=0)
    # a wrong temperature would be caught
    with torch.no_grad():
        lp_wrong, _, _ = rollout.policy_forward(policy, seq, full_mask, ids.size(1), temperature * 2)
    assert ((lp_wrong - sample_lp).abs() * mask).max() > 1e-2

# -----------------------------------------------------------------------------
# end-to-end runs on a tiny policy, a tiny reward model and a handful of prompts


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo")
    torch.manual_seed(0)
    cfg = tiny_config()
    policy = GPT(cfg)
    with torch.no_grad():  # an "SFT" policy that ends its answers: EOS is likely
        policy.transformer.wte.weight[256] *= 8
    checkpoint.save_checkpoint(str(root / "sft.pt"), checkpoint.make_checkpoint(
        policy, "policy", "sft", "byte", SimpleNamespace(), 0))
    checkpoint.save_checkpoint(str(root / "rm.pt"), checkpoint.make_checkpoint(
        ScalarModel(cfg), "scalar", "rm", "byte", SimpleNamespace(), 0))
    # toy-world questions, so that the gold judge can score the answers too
    things = ["a banana", "a crow", "a lime", "a swan", "a plum", "a carrot", "a lemon", "a frog"]
    for split, n in (("train", 64), ("val", 16)):
        with open(root / f"{split}.jsonl", "w") as f:
            for i in range(n):
                f.write(json.dumps({"prompt": f"What color is {things[(i * 3 + n) % 8]}?"}) + "\n")
    return root


def ppo_args(world, out, **kw):
    args = dict(init_from=str(world / "sft.pt"), reward_model=str(world / "rm.pt"),
                train_prompts=str(world / "train.jsonl"), val_prompts=str(world / "val.jsonl"),
                out_dir=str(out), gold_judge="", demo_val_data="", block_size=96,
                rollout_batch_size=16,
                minibatch_size=8, micro_batch_size=4, max_new_tokens=12, max_iters=3,
                eval_interval=100, eval_examples=16, sample_interval=100, num_samples=1,
                ckpt_interval=100, device="cpu", dtype="float32")
    args.update(kw)
    return [f"--{k}={v}" for k, v in args.items()]


@pytest.mark.parametrize("shared_critic", [False, True])
def test_first_update_invariants(world, shared_critic):
    """policy == reference at the start: KL exactly 0 (the rollout runs both on the same
    micro-batches), the first minibatch's ratio 1 to float precision with approx_kl and clipfrac 0
    (RLHF_DETAILS item 17: other micro-batches, other trimmed widths, other float sums), the
    training log-probs those the sampler saw, and the critic's last value the score it pays."""
    cfg = config.parse_config(train_ppo.DEFAULTS, ppo_args(world, world / "unused",
                                                           shared_critic=shared_critic))
    proc = runtime.init_runtime(cfg)
    policy, ref, reward_model, reward, _, enc = train_ppo.load_models(cfg, proc)
    critic = train_ppo.make_critic(cfg, policy, reward_model, proc)
    train, _ = train_ppo.load_prompts(cfg, enc)
    rollouts = rollout.rollout(policy, ref, critic, reward,
                               rollout.prompt_batch(train, range(16), enc, proc), enc, cfg, proc)
    assert torch.equal(rollouts.logprobs * rollouts.resp_mask, rollouts.ref_logprobs * rollouts.resp_mask)
    assert ((rollouts.sample_logprobs - rollouts.logprobs).abs() * rollouts.resp_mask).max() < 1e-4
    mb = torch.arange(8, 12)  # another micro-batch than the rollout's: the same rows' numbers
    with torch.no_grad():
        lp, _, values = rollout.policy_forward(policy, rollouts.seq[mb], rollouts.mask[mb],
                                               rollouts.P, cfg.temperature, critic)
    _, clipfrac, approx_kl, ratio = train_ppo.ppo_policy_loss(
        lp, rollouts.logprobs[mb], torch.ones_like(lp), rollouts.resp_mask[mb])
    assert ((ratio - 1).abs() * rollouts.resp_mask[mb]).max() <= 1e-5  # fp32
    assert clipfrac == 0 and approx_kl <= 1e-10
    if not shared_critic:  # the critic starts as the reward model, its reward_bias included
        last = rollouts.resp_mask.sum(1).long() - 1  # the state that emits the EOS
        with torch.no_grad():
            v_eos = critic.values(rollouts.seq, rollouts.mask)[torch.arange(16), rollouts.P + last]
        torch.testing.assert_close(v_eos, reward_model(rollouts.seq, rollouts.mask), atol=1e-5, rtol=0)
    out = train_ppo.main(ppo_args(world, world / f"run{shared_critic}", max_iters=1,
                                  shared_critic=shared_critic, gold_judge="toy"))
    assert out["kl"] == pytest.approx(0.0, abs=1e-5) and out["logprob_gap"] < 1e-4
    for key in ("vf_loss", "val_score", "val_gold", "gold"):
        assert math.isfinite(out[key]), key


@pytest.mark.slow
def test_ppo_raises_a_programmatic_reward(world, tmp_path):
    """reward = number of 'e' in the response: PPO must raise it while the KL stays bounded."""
    out = train_ppo.main(ppo_args(world, tmp_path, reward_fn="byte_count:e", max_iters=25,
                                  rollout_batch_size=32, minibatch_size=16, micro_batch_size=16,
                                  lr=3e-3, critic_lr=3e-3, beta=0.02, eval_interval=25,
                                  missing_eos_mode=""))
    log = [json.loads(l) for l in open(tmp_path / "log.jsonl")]
    val = [r["val_score"] for r in log if "val_score" in r]
    train = [r["score"] for r in log if "score" in r]
    assert val[-1] > val[0] + 1.0, val
    assert sum(train[-5:]) / 5 > sum(train[:5]) / 5 + 1.0, train
    # bounded by about the KL of the reward's optimum, twelve 'e's at ~5.5 nats each under the
    # random reference (~66 nats); a blow-up would be inf, NaN or hundreds
    assert all(math.isfinite(r["kl"]) and r["kl"] < 12 * math.log(257) + 15 for r in log if "kl" in r)


@pytest.mark.slow
def test_resume_equals_uninterrupted_run(world, tmp_path):
    args = dict(adaptive_kl=True, kl_horizon=50, beta=0.1, target_kl=0.5, lr=1e-3,
                critic_lr=1e-3, max_iters=3, eval_interval=2, save_every=1)
    full = train_ppo.main(ppo_args(world, tmp_path / "full", **args))
    train_ppo.main(ppo_args(world, tmp_path / "split", **args, stop_iter=1))
    resumed = train_ppo.main(ppo_args(world, tmp_path / "split", **args, resume=True))
    assert resumed["iters"] == full["iters"] == 3
    a = checkpoint.load_checkpoint(str(tmp_path / "full" / "ckpt_last.pt"))
    b = checkpoint.load_checkpoint(str(tmp_path / "split" / "ckpt_last.pt"))
    assert (a["kind"], a["stage"], a["step"]) == ("policy", "ppo", 3)
    assert a["beta"] == b["beta"] != 0.1
    for part in ("model", "critic"):
        for k in a[part]:
            torch.testing.assert_close(a[part][k], b[part][k], atol=1e-6, rtol=0)
    assert full["score"] == pytest.approx(resumed["score"], abs=1e-6)
    # the log is continued, not restarted: one line per iteration
    steps = [json.loads(l)["step"] for l in open(tmp_path / "split" / "log.jsonl") if '"score"' in l]
    assert steps == [1, 2, 3]
    # per-iteration snapshots for the reward-vs-KL plot
    assert all(os.path.isfile(tmp_path / "full" / f"ckpt_iter{i}.pt") for i in (1, 2, 3))


def test_bad_config_is_rejected_before_training(world, tmp_path):
    with pytest.raises(config.ConfigError, match="reward_fn"):
        train_ppo.main(ppo_args(world, tmp_path, reward_fn="bytecount:e"))
    with pytest.raises(config.ConfigError, match="minibatch_size"):
        train_ppo.main(ppo_args(world, tmp_path, minibatch_size=5))


def test_ptx_and_the_demonstrations_nll(world, tmp_path):
    # PPO-ptx's term is logged per minibatch, and the held-out demonstrations' NLL at every
    # evaluation: the first one is the SFT policy's own (its value by hand)
    from data.toy.prepare import write_jsonl
    demos = write_jsonl(tmp_path / "demos.jsonl", [
        dict(prompt=f"What color is {x}?", response=f"It is {y}.")
        for x, y in (("a crow", "black"), ("a lime", "green"), ("a swan", "white"))])
    args = dict(demo_val_data=demos, ptx_data=demos, ptx_batch_size=2, eval_interval=2,
                max_iters=2)
    out = train_ppo.main(ppo_args(world, tmp_path / "ptx", ptx_coef=1.0, **args))
    plain = train_ppo.main(ppo_args(world, tmp_path / "plain", **args))
    assert out["ptx_loss"] > 0 and "ptx_loss" not in plain
    log = [json.loads(l) for l in open(tmp_path / "ptx" / "log.jsonl")]
    nll = [r["val_demo_nll"] for r in log if "val_demo_nll" in r]
    assert len(nll) == 2  # before training and at iteration 2
    cfg = config.parse_config(train_ppo.DEFAULTS, ppo_args(world, tmp_path / "x", **args))
    proc = runtime.init_runtime(cfg)
    policy, *_, enc = train_ppo.load_models(cfg, proc)
    sft_nll = train_ppo.ptx_loss(policy, tuple(train_ppo.load_demos(cfg, enc, proc).val[0]))
    assert nll[0] == pytest.approx(sft_nll.item(), abs=1e-5)
    assert out["val_demo_nll"] != nll[0]  # the policy moved


def test_ref_from_anchors_the_kl_to_another_policy(world, tmp_path):
    """A later round starting from round 1's policy, anchored to SFT: the reference is ref_from's
    weights, not a copy of the start; the rollout's KL is the start's distance from it."""
    start = checkpoint.load_checkpoint(str(world / "sft.pt"))
    torch.manual_seed(1)
    start["model"] = {k: v + 0.05 * torch.randn_like(v) for k, v in start["model"].items()}
    checkpoint.save_checkpoint(str(tmp_path / "start.pt"), start)
    cfg = config.parse_config(train_ppo.DEFAULTS, ppo_args(
        world, tmp_path / "unused", init_from=tmp_path / "start.pt", ref_from=world / "sft.pt"))
    proc = runtime.init_runtime(cfg)
    policy, ref, *_ = train_ppo.load_models(cfg, proc)
    sft, _ = checkpoint.init_policy(str(world / "sft.pt"))
    for k, v in sft.state_dict().items():
        assert torch.equal(ref.state_dict()[k], v), k
        assert not torch.equal(policy.state_dict()[k], v), k
    assert not any(p.requires_grad for p in ref.parameters())
    out = train_ppo.main(ppo_args(world, tmp_path / "run", max_iters=1,
                                  init_from=tmp_path / "start.pt", ref_from=world / "sft.pt"))
    assert out["kl"] > 0.01  # the default (ref = the start) gives 0: test_first_update_invariants
    with pytest.raises(config.ConfigError, match="ref_from"):  # a missing file, named
        train_ppo.main(ppo_args(world, tmp_path / "bad", ref_from=tmp_path / "missing.pt"))
    with pytest.raises(checkpoint.CheckpointError, match="rm.pt"):  # a reward model is no policy
        train_ppo.main(ppo_args(world, tmp_path / "bad2", ref_from=world / "rm.pt"))


@pytest.mark.unit
def test_repeat_by_family_writes_a_weighted_familys_prompts_k_times_in_place():
    prompts = [dict(prompt="a", family="color"), dict(prompt="b", family="harmful"),
               dict(prompt="c"), dict(prompt="d", family="lookalike")]
    weights = rollout.family_weights("harmful=3,lookalike=2")
    assert weights == {"harmful": 3, "lookalike": 2} and rollout.family_weights("") == {}
    assert [p["prompt"] for p in rollout.repeat_by_family(prompts, weights)] == list("abbbcdd")
    assert rollout.repeat_by_family(prompts, {}) == prompts
    for bad in ("harmful", "harmful=0", "=3", "harmful=x", "harmful=1.5"):
        with pytest.raises(config.ConfigError, match="prompt_weights"):
            rollout.family_weights(bad)


def test_prompt_weights_reach_the_training_prompts_and_a_bad_one_fails_first(world, tmp_path):
    tagged = tmp_path / "tagged.jsonl"
    rows = [json.loads(line) for line in open(world / "train.jsonl")]
    with open(tagged, "w") as f:  # every fourth prompt tagged harmful
        for i, row in enumerate(rows):
            f.write(json.dumps(dict(row, family="harmful") if i % 4 == 0 else row) + "\n")
    enc = get_tokenizer("byte")
    for spec, n in (("", 64), ("harmful=3", 64 + 2 * 16)):
        cfg = config.parse_config(train_ppo.DEFAULTS, ppo_args(world, tmp_path / "o", train_prompts=tagged,
                                                               prompt_weights=spec))
        train, val = train_ppo.load_prompts(cfg, enc)
        assert len(train) == n and len(val) == 16
        assert sum(p.get("family") == "harmful" for p in train) == (16 if spec == "" else 48)
    with pytest.raises(config.ConfigError, match="prompt_weights"):
        train_ppo.main(ppo_args(world, tmp_path / "bad", prompt_weights="harmful=0"))
    assert not (tmp_path / "bad").exists()  # nothing written
