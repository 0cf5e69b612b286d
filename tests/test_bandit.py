"""
The bandit (data/bandit/): one prompt, eight one-letter answers with known rewards, a world small
enough that every trainer's destination is known. First the theory, pinned to the repository's
own loss functions: at each derived fixed point the exact expected gradient of the real loss
(dpo_loss, simpo_loss, kto_loss, kl_penalty + group_advantages) is zero. Then each trainer, run
through its real main(argv) on the bandit's files from a tiny SFT policy, lands on it:

    KL(pi* || pi) <= 0.02 nats              DPO (sigmoid), PPO (k1 in the reward), RLOO
    KL(fixed point || pi) <= 0.02 nats      IPO, Dr. GRPO and GRPO (k3 in the loss), SimPO, KTO,
                                            whose fixed points are NOT pi*: the test also shows
                                            by how much (KL(pi* || fixed point))

Each slow test prints its row of data/bandit/README.md's table (run with -s to see it).
"""

import itertools
import math
import os
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import train_dpo
import train_grpo
import train_kto
import train_ppo
import train_sft
from data import loader
from data.bandit import prepare
from data.bandit.prepare import ANSWERS, BETA, PROMPT, REWARDS, kl, kl_tilt, normalise
from data.bandit.reward import R_OFF, reward
from tokenizer import encode_response, get_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REWARD_FN = os.path.join(ROOT, "data", "bandit", "reward.py") + ":reward"
K = len(ANSWERS)
TOL = 0.02  # nats, KL(target || pi) for every trainer

# -----------------------------------------------------------------------------
# the world


def test_the_world_files_and_reward(tmp_path):
    counts = prepare.prepare(str(tmp_path))
    enc = get_tokenizer("byte")
    # one byte per answer: ' ', the letter, EOS (SimPO's |y|)
    assert {len(encode_response(enc, y)) for y in ANSWERS} == {prepare.RESPONSE_TOKENS}
    pairs = loader.load_preferences(str(tmp_path / "prefs_train.jsonl"), enc, 48)
    kto = loader.load_unpaired(str(tmp_path / "kto_train.jsonl"), enc, 48)
    assert len(pairs) == counts["prefs_train.jsonl"] == prepare.N_PAIRS
    assert sum(e["desirable"] for e in kto) == len(kto) - sum(e["desirable"] for e in kto)
    assert len(loader.load_prompts(str(tmp_path / "prompts.jsonl"), enc, 48, 3)) == 64
    # the labels are Bradley-Terry draws: their fitted scores recover r (up to 20000 labels' noise)
    W = prepare.win_counts(str(tmp_path / "prefs_train.jsonl"))
    r = np.array(REWARDS)
    np.testing.assert_allclose(prepare.bt_mle(W), r - r.mean(), atol=0.1)
    assert [reward(PROMPT, y) for y in ANSWERS] == list(REWARDS)
    assert {reward(PROMPT, y) for y in ("", "h", "AB", " A", "I")} == {R_OFF} and R_OFF < r.min()

# -----------------------------------------------------------------------------
# the theory against the real losses: expected gradients in the answer logits z (tabular pi)


def t64(x):
    return torch.tensor(np.asarray(x, float), dtype=torch.float64)


def grad_at(pi, loss_of_logp):
    """d loss / d z at z = log pi, loss_of_logp(log_softmax(z)) -> scalar."""
    z = t64(np.log(np.maximum(pi, 1e-30))).requires_grad_(True)
    loss_of_logp(torch.log_softmax(z, 0)).backward()
    return z.grad.numpy()


def pair_loss(W, pi_ref, loss):
    """The data-weighted mean of a pair loss over W's pairs, as a function of the policy's
    log-probs: loss(logp_chosen, logp_rejected, ref_chosen, ref_rejected) -> (n,)."""
    a, b = np.nonzero(W)
    weight = t64(W[a, b] / W.sum())
    ref = torch.log(t64(normalise(pi_ref)))
    return lambda logp: (weight * loss(logp[a], logp[b], ref[a], ref[b])).sum()


@pytest.fixture(scope="module")
def world():
    """pi_ref = PI_0 stands in for the SFT policy here; W = the training pairs' counts."""
    import random
    rows = prepare.make_pairs(random.Random(0), 20000)
    index = {y: i for i, y in enumerate(ANSWERS)}
    W = np.zeros((K, K))
    for p in rows:
        W[index[p["chosen"]], index[p["rejected"]]] += 1
    return SimpleNamespace(pi_ref=np.array(prepare.PI_0), W=W, W_pop=prepare.expected_win_counts())


def test_bt_mle_and_dpo_on_the_population_give_pi_star(world):
    s = prepare.bt_mle(world.W_pop)
    np.testing.assert_allclose(s, np.array(REWARDS) - np.mean(REWARDS), atol=1e-10)
    np.testing.assert_allclose(prepare.dpo_fixed_point(world.pi_ref, world.W_pop, BETA),
                               kl_tilt(world.pi_ref, REWARDS, BETA), atol=1e-10)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_and_ipo_fixed_points_zero_the_real_loss_gradient(world, loss_type):
    loss = pair_loss(world.W, world.pi_ref, lambda c, r, rc, rr: train_dpo.dpo_loss(
        c, r, rc, rr, BETA, loss_type)[0])
    fixed = (prepare.dpo_fixed_point if loss_type == "sigmoid" else prepare.ipo_fixed_point)(
        world.pi_ref, world.W, BETA)
    start = np.abs(grad_at(world.pi_ref, loss)).max()
    assert start > 1e-2  # the reference is not already there
    assert np.abs(grad_at(fixed, loss)).max() < 1e-9


def test_ipo_population_fixed_point_is_the_win_rate_tilt(world):
    """Azar et al.: log pi/pi_ref = p(y > mu) / beta + const; for pairs of different answers
    drawn uniformly this is the win rate against a uniform answer, a tie with itself 1/2."""
    r = np.array(REWARDS)
    p_vs_uniform = prepare.sigmoid(r[:, None] - r[None, :]).mean(1)  # the diagonal is 1/2
    np.testing.assert_allclose(prepare.ipo_fixed_point(world.pi_ref, world.W_pop, BETA),
                               kl_tilt(world.pi_ref, p_vs_uniform, BETA), atol=1e-10)


def test_simpo_fixed_point_zeroes_the_real_loss_and_needs_no_reference(world):
    L = prepare.RESPONSE_TOKENS
    loss = pair_loss(world.W, world.pi_ref,
                     lambda c, r, rc, rr: train_dpo.simpo_loss(c / L, r / L, 2.0, 1.0)[0])
    fixed = prepare.simpo_fixed_point(world.W, 2.0, 1.0)
    assert np.abs(grad_at(fixed, loss)).max() < 1e-9
    # without the margin it is Bradley-Terry on log pi: a softmax of the reward at beta_s / |y|
    np.testing.assert_allclose(prepare.simpo_fixed_point(world.W_pop, 2.0, 0.0),
                               normalise(np.exp(L * np.array(REWARDS) / 2.0)), atol=1e-10)


@pytest.mark.unit
def test_k3_in_the_loss_descends_the_reverse_kl():
    """E_{y~pi}[grad k3(y)] = grad KL(pi_ref || pi), not grad KL(pi || pi_ref): kl_penalty's
    k3 as a loss, its expectation taken by enumeration with pi detached (the sampler's)."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(K, generator=g, dtype=torch.float64).requires_grad_(True)
    ref = torch.log_softmax(torch.randn(K, generator=g, dtype=torch.float64), 0)
    logp = torch.log_softmax(z, 0)
    k3 = train_ppo.kl_penalty(logp, ref, "k3")
    (grad_k3,) = torch.autograd.grad((logp.exp().detach() * k3).sum(), z, retain_graph=True)
    reverse = (ref.exp() * (ref - logp)).sum()  # KL(pi_ref || pi)
    forward = (logp.exp() * (logp - ref)).sum()  # KL(pi || pi_ref)
    (grad_reverse,) = torch.autograd.grad(reverse, z, retain_graph=True)
    (grad_forward,) = torch.autograd.grad(forward, z)
    torch.testing.assert_close(grad_k3, grad_reverse)
    assert (grad_k3 - grad_forward).abs().max() > 0.05


def grpo_expected_loss(pi, pi_ref, k, scale):
    """The expected GRPO loss in the logits, with the real group_advantages and k3 kl_penalty:
    every group of k answers enumerated, weighted by its (detached) probability under pi."""
    groups = np.array(list(itertools.product(range(K), repeat=k)))  # (K^k, k)
    weight = t64(np.prod(pi[groups], axis=1))
    scores = t64(np.array(REWARDS)[groups]).flatten()
    adv = train_grpo.group_advantages(scores, k, "mean", scale).double().view(-1, k)
    ref = torch.log(t64(normalise(pi_ref)))
    idx = torch.as_tensor(groups)

    def loss(logp):
        per_answer = -adv * logp[idx] + BETA * train_ppo.kl_penalty(logp[idx], ref[idx], "k3")
        return (weight[:, None] * per_answer).sum() / k
    return loss


@pytest.mark.parametrize("scale", ["none", "group"])
def test_grpo_k3_fixed_point_zeroes_the_expected_gradient(world, scale):
    k = 4
    fixed = prepare.grpo_k3_fixed_point(world.pi_ref, REWARDS, BETA, k, scale)
    grad = grad_at(fixed, grpo_expected_loss(fixed, world.pi_ref, k, scale))
    assert np.abs(grad).max() < 1e-6
    if scale == "none":  # the rational tilt: pi (lambda - r) / pi_ref is constant
        beta_eff = BETA * k / (k - 1)
        lam = fixed @ np.array(REWARDS) + beta_eff
        np.testing.assert_allclose(fixed * (lam - np.array(REWARDS)) / normalise(world.pi_ref),
                                   beta_eff, rtol=1e-8)


def test_kto_fixed_point_zeroes_the_real_loss_on_the_desirable_answers(world):
    nu, w = prepare.kto_weights(world.W)
    fixed = prepare.kto_fixed_point(world.pi_ref, world.W, BETA)
    good = w > 0
    wins, losses = t64(world.W.sum(1)), t64(world.W.sum(0))
    ref = torch.log(t64(normalise(world.pi_ref)))

    def loss(logp):  # every answer once desirable (its wins), once not (its losses); z0 = 0
        yes = train_kto.kto_loss(logp, ref, torch.ones(K, dtype=torch.bool), 0.0, BETA)
        no = train_kto.kto_loss(logp, ref, torch.zeros(K, dtype=torch.bool), 0.0, BETA)
        return (wins * yes + losses * no).sum() / (wins + losses).sum()
    grad = grad_at(fixed, loss)
    assert np.abs(grad[good]).max() < 1e-9  # stationary where the mass is
    assert (grad[~good] > 0).all()           # and pushing the rest down, forever
    # the answers kept are those that beat the average answer, in the data as in the population
    assert (prepare.kto_weights(world.W_pop)[1] > 0).tolist() == good.tolist()
    assert [y for y, g in zip(ANSWERS, good) if g] == ["B", "D", "F", "H"]
    assert fixed[~good].sum() == 0 and kl(kl_tilt(world.pi_ref, REWARDS, BETA), fixed) == math.inf

# -----------------------------------------------------------------------------
# the trainers, end to end: a tiny SFT policy as pi_ref, then each method from it

SFT = dict(n_layer=1, n_head=2, n_embd=32, block_size=48, max_iters=300, batch_size=32, lr=1e-2,
           min_lr=1e-3, warmup_iters=20, log_interval=100, eval_interval=300, eval_examples=64,
           num_samples=0, ckpt_interval=1000, device="cpu", dtype="float32")
COMMON = dict(device="cpu", dtype="float32", block_size=48)
PAIRS = dict(COMMON, beta=BETA, eval_interval=10**6, eval_examples=32, num_samples=0,
             log_interval=100, ckpt_interval=10**6, warmup_iters=10, min_lr=1e-5)
ONLINE = dict(COMMON, reward_fn=REWARD_FN, gold_judge="", val_prompts="", demo_val_data="",
              max_new_tokens=3,
              temperature=1.0, top_k=0, top_p=1.0, missing_eos_mode="", beta=BETA,
              rollout_batch_size=64, decay_lr=True, log_interval=20, sample_interval=10**6,
              num_samples=0, ckpt_interval=10**6, save_every=0, eval_interval=10**6)


def args(**kw):
    return [f"--{k}={v}" for k, v in kw.items()]


@pytest.fixture(scope="module")
def bandit(tmp_path_factory):
    """The bandit's files, its SFT policy (train_sft.main) and pi_ref measured from it."""
    root = tmp_path_factory.mktemp("bandit")
    data = root / "data"
    prepare.prepare(str(data))
    t0 = time.time()
    train_sft.main(args(**SFT, out_dir=root / "sft", train_data=data / "sft_train.jsonl",
                        val_data=data / "sft_val.jsonl"))
    sft = root / "sft" / "ckpt_last.pt"
    pi_ref, outside = prepare.measure(str(sft))
    print(f"\nSFT {time.time() - t0:.1f}s: pi_ref {np.round(pi_ref, 3)}, mass outside "
          f"{outside:.1e}; PI_0 {prepare.PI_0}")
    assert outside < 1e-2 and kl(np.array(prepare.PI_0), pi_ref) < 0.02
    return SimpleNamespace(root=root, data=data, sft=str(sft), pi_ref=pi_ref,
                           fixed=prepare.fixed_points(pi_ref, str(data), BETA))


def train_and_measure(bandit, name, main, **kw):
    out = bandit.root / name
    t0 = time.time()
    main(args(init_from=bandit.sft, out_dir=out, **kw))
    pi, outside = prepare.measure(str(out / "ckpt_last.pt"))
    return pi, outside, time.time() - t0


def check(bandit, name, pi, outside, seconds, target):
    """Print the README's row, then assert KL(target || pi) <= TOL."""
    star, fixed = bandit.fixed[prepare.PI_STAR], bandit.fixed[target]
    row = prepare.report(pi, bandit.pi_ref, fixed)
    apart = "" if target == prepare.PI_STAR else \
        f" | KL({target}||pi) {row['kl_target']:.4f} | KL(pi*||{target}) {kl(star, fixed):.4f}"
    print(f"\n{name}: KL(pi*||pi) {row['kl_star']:.4f}{apart} | spread {row['spread']:.4f} "
          f"(pi*-weighted {row['spread_star_weighted']:.4f}) | outside {outside:.1e} | "
          f"{seconds:.1f}s\n  pi     {np.round(pi, 3)}\n  target {np.round(fixed, 3)}")
    assert row["kl_target"] <= TOL, (name, row)
    return row


@pytest.mark.slow
def test_dpo_converges_to_pi_star(bandit):
    pi, outside, s = train_and_measure(
        bandit, "dpo", train_dpo.main, **PAIRS, loss_type="sigmoid", rpo_alpha=0.0,
        train_data=bandit.data / "prefs_train.jsonl", val_data=bandit.data / "prefs_val.jsonl",
        batch_size=64, max_iters=400, lr=3e-3)
    # its fixed point on these 20000 labels is their Bradley-Terry fit; pi* is the population's
    row = check(bandit, "dpo", pi, outside, s, "dpo")
    assert row["kl_star"] <= TOL


@pytest.mark.slow
def test_ppo_converges_to_pi_star(bandit):
    pi, outside, s = train_and_measure(
        bandit, "ppo", train_ppo.main, **ONLINE, train_prompts=bandit.data / "prompts.jsonl",
        max_iters=60, minibatch_size=32, micro_batch_size=32, num_iterations=2, lr=3e-3,
        critic_lr=3e-3)
    check(bandit, "ppo", pi, outside, s, prepare.PI_STAR)


@pytest.mark.slow
def test_rloo_converges_to_pi_star(bandit):
    pi, outside, s = train_and_measure(
        bandit, "rloo", train_grpo.main, **ONLINE, train_prompts=bandit.data / "prompts.jsonl",
        advantage="rloo", group_size=4, max_iters=100, minibatch_size=64, micro_batch_size=64,
        num_iterations=1, lr=3e-3)
    check(bandit, "rloo", pi, outside, s, prepare.PI_STAR)


@pytest.mark.slow
def test_ipo_converges_to_its_least_squares_tilt(bandit):
    pi, outside, s = train_and_measure(
        bandit, "ipo", train_dpo.main, **PAIRS, loss_type="ipo",
        train_data=bandit.data / "prefs_train.jsonl", val_data=bandit.data / "prefs_val.jsonl",
        batch_size=32, max_iters=400, lr=1e-3)
    check(bandit, "ipo", pi, outside, s, "ipo")
    assert kl(bandit.fixed[prepare.PI_STAR], bandit.fixed["ipo"]) > 0.3  # far flatter than pi*


@pytest.mark.slow
@pytest.mark.parametrize("advantage", ["dr_grpo", "grpo"])
def test_grpo_with_k3_in_the_loss_converges_to_its_reverse_kl_tilt(bandit, advantage):
    pi, outside, s = train_and_measure(
        bandit, advantage, train_grpo.main, **ONLINE,
        train_prompts=bandit.data / "prompts.jsonl", advantage=advantage, group_size=4,
        max_iters=100, minibatch_size=64, micro_batch_size=64, num_iterations=1, lr=3e-3)
    target = "dr_grpo_k3" if advantage == "dr_grpo" else "grpo_k3"
    check(bandit, advantage, pi, outside, s, target)
    assert kl(bandit.fixed[prepare.PI_STAR], bandit.fixed[target]) > 0.1


@pytest.mark.slow
def test_simpo_converges_to_its_reference_free_fixed_point(bandit):
    pi, outside, s = train_and_measure(
        bandit, "simpo", train_dpo.main, **PAIRS, loss_type="simpo", simpo_beta=2.0,
        simpo_gamma=1.0, train_data=bandit.data / "prefs_train.jsonl",
        val_data=bandit.data / "prefs_val.jsonl", batch_size=32, max_iters=400, lr=1e-3)
    check(bandit, "simpo", pi, outside, s, "simpo")
    assert kl(bandit.fixed[prepare.PI_STAR], bandit.fixed["simpo"]) > 0.05


@pytest.mark.slow
def test_kto_drops_the_undesirable_answers(bandit):
    pi, outside, s = train_and_measure(
        bandit, "kto", train_kto.main, **PAIRS,
        train_data=bandit.data / "kto_train.jsonl", val_data=bandit.data / "kto_val.jsonl",
        batch_size=64, max_iters=500, lr=1e-2)
    check(bandit, "kto", pi, outside, s, "kto")
    dropped = bandit.fixed["kto"] == 0
    assert dropped.sum() == 4 and pi[dropped].sum() < 0.01


@pytest.mark.unit
def test_best_of_n_exact_kl_on_the_bandit_is_below_the_bound():
    # the bandit's answers are known with their probabilities: best-of-N's exact KL to pi_ref
    # (eval.best_of_n_kl) beside Beirami et al.'s bound, and the exact KL against sampling
    import eval as evaluate
    pi, r = torch.tensor(prepare.PI_0, dtype=torch.float64), torch.tensor(REWARDS, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 4, 8, 16, 64):
        exact, bound = evaluate.best_of_n_kl(pi, r, n), evaluate.best_of_n_kl_bound(n)
        draws = torch.multinomial(pi.expand(100000, -1), n, replacement=True, generator=g)
        best = draws.gather(1, r[draws].argmax(1, keepdim=True)).squeeze(1)
        q = torch.bincount(best, minlength=len(pi)).double() / best.numel()
        mc = (q[q > 0] * (q[q > 0] / pi[q > 0]).log()).sum().item()
        print(f"N={n}: exact {exact:.4f}, bound {bound:.4f}, sampled {mc:.4f}")
        assert exact == pytest.approx(mc, abs=5e-3) and exact <= bound + 1e-12
    # eight answers: once N is large best-of-N is the best answer alone, KL = -log pi(best)
    assert evaluate.best_of_n_kl(pi, r, 1000) == pytest.approx(-math.log(pi[r.argmax()]), abs=1e-6)
