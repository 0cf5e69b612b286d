"""
The bandit: a world small enough to enumerate, where every trainer's answer is known in closed
form (or by a few lines of numerics), so the tests can check that each one converges to it.

    python data/bandit/prepare.py [--seed=1337] [--out_dir=data/bandit/out]     # a second
    python data/bandit/prepare.py --measure=out/dpo_bandit/ckpt_last.pt \
        --reference=out/sft_bandit/ckpt_last.pt     # a policy against every fixed point
    OMP_NUM_THREADS=1 python -m pytest -q -s tests/test_bandit.py    # every trainer, ~2 minutes

One prompt, eight answers: the letters A..H, one byte each, so a response is the three tokens
[' ', letter, EOS] of the chat template. The bandit is tabular: log pi(y) of the whole sequence
(what every trainer sums) is log p(' ') + log p(letter | ' ') + log p(EOS | letter), the first
shared by all answers and the last ~0, so over the answer set pi is the softmax of ONE
position's logits, and the per-token and per-sequence KL, k1, k3 and length-normalisation
questions collapse into one number per answer. pi(y) is measured exactly by teacher forcing
(answer_logprobs); distributions are compared over the answer set, each normalised over it, and
the mass a policy puts outside the set is reported beside (a loss that sees only differences of
answers' log-probs never sees the shared log p(' '), and nothing holds it: see the README).

The reference pi_ref is a tiny GPT SFT-trained on answers drawn from PI_0 (non-uniform), and
known by measurement, not assumed. r(y) is data/bandit/reward.py's table. Files, in out_dir:
    sft_train.jsonl   2000 {"prompt", "response"}     answers drawn from PI_0
    sft_val.jsonl      200 the same
    prefs_train.jsonl N_PAIRS {"prompt", "chosen", "rejected"}: two different answers drawn
                      uniformly, the first chosen with probability sigma(r_a - r_b) (Bradley-Terry)
    prefs_val.jsonl    200 the same
    kto_train.jsonl   2 N_PAIRS {"prompt", "completion", "label"}: each training pair split, as
                      the KTO paper turns pairs into unpaired feedback: its chosen answer
                      desirable, its rejected answer undesirable
    kto_val.jsonl      400 the same, from prefs_val
    prompts.jsonl       64 {"prompt"}, the one prompt, for PPO and GRPO

What each method converges to (data/bandit/README.md has the derivations at more length and the
measured numbers). beta is the KL strength, pi_ref the SFT policy, rho = log pi/pi_ref, mu the law
of the pairs (here uniform over the 56 ordered pairs of different answers), p(a > b) =
sigma(r_a - r_b).
  KL-regularised RL   max E_pi[r] - beta KL(pi || pi_ref)  ->  pi*(y) = pi_ref(y) exp(r(y)/beta) / Z
                      (kl_tilt). PPO and RLOO with k1 in the reward: the summed reward is r - beta
                      rho, and E_pi[(r - beta rho) grad log pi] is this objective's gradient (the
                      extra term beta E_pi[grad log pi] is 0). Baselines and whitening do not move
                      the fixed point; GAE with lambda < 1 is biased by the critic's error (none at
                      lambda = 1).
  DPO (sigmoid)       -log sigma(beta h) is minimised at sigma(beta h(a, b)) = p(a > b) on every
                      pair mu draws: beta rho = r + const, pi* again (when mu's pairs connect all
                      answers). On a finite data set the minimiser is the Bradley-Terry fit s_hat
                      of its labels: pi_ref exp(s_hat / beta) / Z (dpo_fixed_point).
  IPO                 (h - 1/(2 beta))^2 is least squares: beta h(a, b) is fitted to p(a > b) - 1/2,
                      a PROBABILITY, not to r_a - r_b. For pairs from mu x mu, rho(y) = p(y > mu) /
                      beta + const (Azar et al. 2023, the PsiPO optimum with Psi = identity): a
                      bounded tilt, its log-ratios spanning less than 1/beta, far flatter than pi*
                      at the same beta (ipo_fixed_point: the least squares over the data's pairs).
  GRPO, k3 in loss    the k3 term's expected gradient E_pi[(1 - pi_ref/pi) grad log pi] =
                      grad KL(pi_ref || pi), the REVERSE KL (train_ppo.kl_penalty). A group-mean
                      baseline that includes the answer itself gives E[(r_i - mean_g r) grad log
                      pi(y_i)] = (k-1)/k grad E_pi[r]. So Dr. GRPO (no std) climbs E_pi[r] -
                      beta' KL(pi_ref || pi), beta' = beta k/(k-1), whose optimum is the RATIONAL
                      tilt pi(y) = beta' pi_ref(y) / (lambda - r(y)), lambda = E_pi[r] + beta'
                      (grpo_k3_fixed_point, scale='none'). GRPO's std scaling divides a group's
                      advantages by its own std, which grows them as the policy sharpens: no closed
                      form (scale='group' finds the zero of the exact expected gradient,
                      enumerating the groups). Every answer is 3 tokens, so the loss aggregations
                      scale both terms alike and do not move these fixed points.
  SimPO               -log sigma(beta_s/|y| log pi(y_w) - beta_s/|y| log pi(y_l) - gamma), no
                      reference, |y| = 3: u = beta_s/3 log pi is fitted to the pairs with a margin.
                      gamma = 0 is Bradley-Terry on u: pi = softmax(3 r / beta_s), the tilt of a
                      UNIFORM reference; gamma > 0 pushes the answers further apart
                      (simpo_fixed_point, a convex fit over the data's pairs). pi_ref plays no part.
  KTO                 with z0 detached the expected loss of answer y is nu(y) [d(y) lD - w(y)
                      sigma(beta (rho(y) - z0))], d(y) its share of desirable labels (here its win
                      rate), w = d lD - (1 - d) lU: the gradient in rho(y) has the sign of w(y)
                      whatever rho is, so there is no interior fixed point like pi*. Every answer
                      with w < 0 (here: losing to the average answer) is driven to probability 0;
                      the others share the mass at the maximum of sum nu w sigma(beta rho), concave
                      in pi for beta <= 1 (kto_fixed_point, z0 = 0: in a one-prompt world the
                      "mismatched" pairs are the same prompt with other answers, so the estimate is
                      the mean log-ratio of the data's answers, which falls below 0 and is clamped
                      as the undesirable answers vanish). KL(pi* || pi_KTO) grows without bound.
"""

import argparse
import itertools
import json
import math
import os
import random
import sys
import time

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from data.bandit.reward import ANSWERS, REWARDS, R_OFF  # noqa: E402,F401

# -----------------------------------------------------------------------------
# the world

PROMPT = "Pick a letter."
PI_0 = (0.30, 0.20, 0.15, 0.10, 0.08, 0.07, 0.06, 0.04)  # what the SFT data says, per answer
BETA = 0.25  # the KL strength the tests train with; pi* depends on it, the data does not
N_SFT_TRAIN, N_SFT_VAL = 2000, 200
N_PAIRS, N_PAIRS_VAL = 20000, 200
N_PROMPTS = 64
RESPONSE_TOKENS = 3  # ' ', the letter, EOS: |y| of SimPO's length normalisation
PI_STAR = "pi*"  # fixed_points' name for the KL-regularised optimum


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


def make_sft(rng, n):
    return [{"prompt": PROMPT, "response": y} for y in rng.choices(ANSWERS, weights=PI_0, k=n)]


def make_pairs(rng, n):
    """n Bradley-Terry pairs: two different answers drawn uniformly, the first chosen with
    probability sigma(r_a - r_b)."""
    rows = []
    for _ in range(n):
        a, b = rng.sample(range(len(ANSWERS)), 2)
        if rng.random() >= 1.0 / (1.0 + math.exp(-(REWARDS[a] - REWARDS[b]))):
            a, b = b, a
        rows.append({"prompt": PROMPT, "chosen": ANSWERS[a], "rejected": ANSWERS[b]})
    return rows


def split_pairs(pairs):
    """KTO feedback from pairs: the chosen answer desirable, the rejected one undesirable."""
    return [{"prompt": p["prompt"], "completion": p[k], "label": k == "chosen"}
            for p in pairs for k in ("chosen", "rejected")]


def prepare(out_dir, seed=1337):
    """Write the seven files into out_dir; returns {file name: number of lines}."""
    rng = random.Random(seed)
    pairs, pairs_val = make_pairs(rng, N_PAIRS), make_pairs(rng, N_PAIRS_VAL)
    files = {
        "sft_train.jsonl": make_sft(rng, N_SFT_TRAIN),
        "sft_val.jsonl": make_sft(rng, N_SFT_VAL),
        "prefs_train.jsonl": pairs,
        "prefs_val.jsonl": pairs_val,
        "kto_train.jsonl": split_pairs(pairs),
        "kto_val.jsonl": split_pairs(pairs_val),
        "prompts.jsonl": [{"prompt": PROMPT}] * N_PROMPTS,
    }
    os.makedirs(out_dir, exist_ok=True)
    for name, rows in files.items():
        write_jsonl(os.path.join(out_dir, name), rows)
    return {name: len(rows) for name, rows in files.items()}

# -----------------------------------------------------------------------------
# the data as counts: W[a, b] = how often a was chosen over b


def win_counts(path):
    """(K, K) counts W[a, b] of the pairs of a preference file where a was chosen over b."""
    index = {y: i for i, y in enumerate(ANSWERS)}
    W = np.zeros((len(ANSWERS), len(ANSWERS)))
    with open(path) as f:
        for line in f:
            p = json.loads(line)
            W[index[p["chosen"]], index[p["rejected"]]] += 1
    return W


def expected_win_counts(r=REWARDS, mu=None):
    """The population version of win_counts, as shares: W[a, b] = (mu(a, b) + mu(b, a)) p(a > b),
    mu(a, b) the probability that the pair is drawn as (a, b) before its label, uniform over
    pairs of different answers by default (what make_pairs draws). Sums to 1."""
    r = np.asarray(r, float)
    K = len(r)
    mu = np.full((K, K), 1.0 / (K * (K - 1))) if mu is None else np.asarray(mu, float)
    mu = mu * (1 - np.eye(K))
    return (mu + mu.T) * sigmoid(r[:, None] - r[None, :])

# -----------------------------------------------------------------------------
# fixed points: pure functions of pi_ref (K,), r (K,), beta and the data (W)


def normalise(p):
    p = np.asarray(p, float)
    return p / p.sum()


def kl(p, q):
    """KL(p || q) in nats over the answers, 0 log 0 = 0."""
    p, q = normalise(p), normalise(q)
    nz = p > 0
    if (q[nz] == 0).any():
        return math.inf
    return float(np.sum(p[nz] * (np.log(p[nz]) - np.log(q[nz]))))


def kl_tilt(pi_ref, r, beta):
    """pi*(y) = pi_ref(y) exp(r(y) / beta) / Z: the optimum of E_pi[r] - beta KL(pi || pi_ref)."""
    logits = np.log(normalise(pi_ref)) + np.asarray(r, float) / beta
    return normalise(np.exp(logits - logits.max()))


def _laplacian(N):
    """The weighted graph Laplacian of symmetric pair weights N (K, K)."""
    return np.diag(N.sum(1)) - N


def bt_mle(W, iters=100):
    """
    Bradley-Terry scores s (K,), mean 0, maximising sum W[a, b] log sigma(s_a - s_b): the reward
    the labels of W reveal. Newton's method on a concave objective (its Hessian is minus a
    Laplacian, singular along the constant: pinv keeps the mean at 0).
    """
    W = np.asarray(W, float)
    s = np.zeros(len(W))
    for _ in range(iters):
        p = sigmoid(s[:, None] - s[None, :])  # P(a beats b) under s
        grad = (W * (1 - p)).sum(1) - (W.T * (1 - p.T)).sum(1)
        N = (W + W.T) * p * (1 - p)
        step = np.linalg.pinv(_laplacian(N)) @ grad
        s = s + step
        if np.abs(step).max() < 1e-12:
            break
    return s - s.mean()


def dpo_fixed_point(pi_ref, W, beta):
    """DPO's minimiser on the pairs W: beta log pi/pi_ref = the BT fit of W (+ const)."""
    return kl_tilt(pi_ref, bt_mle(W), beta)


def ipo_fixed_point(pi_ref, W, beta):
    """
    IPO's minimiser on the pairs W: rho = log pi/pi_ref minimising
    sum W[a, b] (rho_a - rho_b - 1/(2 beta))^2, a weighted least squares whose normal equations
    are L rho = (wins - losses) / (2 beta), L the Laplacian of the pair counts W + W^T. For the
    population counts (expected_win_counts) rho(y) = p(y > mu) / beta + const (Azar et al.).
    """
    W = np.asarray(W, float)
    rho = np.linalg.pinv(_laplacian(W + W.T)) @ ((W.sum(1) - W.sum(0)) / (2 * beta))
    return normalise(normalise(pi_ref) * np.exp(rho - rho.max()))


def simpo_fixed_point(W, beta_s=2.0, gamma=1.0, length=RESPONSE_TOKENS, iters=200):
    """
    SimPO's minimiser on the pairs W: u = beta_s / length * log pi minimising
    sum W[a, b] softplus(-(u_a - u_b - gamma)) (convex; Newton), then pi ∝ exp(length u / beta_s).
    No reference model in it. gamma = 0 gives the BT fit: pi = softmax(length s_hat / beta_s).
    """
    W = np.asarray(W, float)
    u = np.zeros(len(W))
    for _ in range(iters):
        m = sigmoid(-(u[:, None] - u[None, :] - gamma))  # the loss's slope, per ordered pair
        grad = -(W * m).sum(1) + (W * m).sum(0)  # d loss / d u
        N = W * m * (1 - m)
        step = np.linalg.pinv(_laplacian(N + N.T)) @ grad
        u = u - step
        if np.abs(step).max() < 1e-12:
            break
    logits = length * u / beta_s
    return normalise(np.exp(logits - logits.max()))


def _rational_tilt(pi_ref, r, beta):
    """argmax E_pi[r] - beta KL(pi_ref || pi): pi = beta pi_ref / (lambda - r), sum pi = 1,
    lambda in (max r, max r + beta] (the sum falls from inf to <= 1 there): bisection."""
    pi_ref, r = normalise(pi_ref), np.asarray(r, float)
    lo, hi = r.max(), r.max() + beta
    for _ in range(200):
        lam = 0.5 * (lo + hi)
        if np.sum(beta * pi_ref / (lam - r)) > 1:
            lo = lam
        else:
            hi = lam
    return normalise(beta * pi_ref / (hi - r))


def group_advantage_means(pi, r, k, eps=1e-4):
    """
    g(y) = E[A_1 | y_1 = y] for GRPO's std-scaled advantage A_1 = (r_1 - mean_g r) / (std_g r
    + eps) (unbiased std, as train_grpo.group_advantages) of a group of k answers drawn from pi:
    the other k - 1 answers are enumerated (K^(k-1) groups). (K,)
    """
    pi, r = normalise(pi), np.asarray(r, float)
    K = len(pi)
    others = np.array(list(itertools.product(range(K), repeat=k - 1)))  # (K^(k-1), k-1)
    weight = np.prod(pi[others], axis=1)  # (n,)
    g = np.zeros(K)
    for y in range(K):
        rewards = np.concatenate([np.full((len(others), 1), r[y]), r[others]], 1)  # (n, k)
        adv = (rewards[:, 0] - rewards.mean(1)) / (rewards.std(1, ddof=1) + eps)
        g[y] = weight @ adv
    return g


def grpo_k3_fixed_point(pi_ref, r, beta, k, scale="none", iters=20000, lr=0.5):
    """
    Where GRPO with k3 in the loss stops: the zero of its expected gradient in the answer
    logits z, pi * g(pi) - beta (pi - pi_ref) (the k3 term gives grad KL(pi_ref || pi) =
    pi - pi_ref; g(y) = E[A | y], whose pi-weighted mean is 0).
      scale='none' (Dr. GRPO): g = (k-1)/k (r - E_pi r): the closed-form rational tilt with
                   beta' = beta k / (k - 1).
      scale='group' (GRPO): g from group_advantage_means, the zero found by running that flow.
    """
    pi_ref = normalise(pi_ref)
    if scale == "none":
        return _rational_tilt(pi_ref, r, beta * k / (k - 1))
    if scale != "group":
        raise ValueError(f"unknown scale {scale!r}: expected 'none' or 'group'")
    z = np.log(_rational_tilt(pi_ref, r, beta * k / (k - 1)))  # a close start
    for _ in range(iters):
        pi = normalise(np.exp(z - z.max()))
        step = pi * group_advantage_means(pi, r, k) - beta * (pi - pi_ref)
        z = z + lr * step / np.maximum(pi, 1e-3)  # a preconditioned flow: same zeros
        if np.abs(step).max() < 1e-10:
            break
    return normalise(np.exp(z - z.max()))


def kto_weights(W, desirable_weight=1.0, undesirable_weight=1.0):
    """(nu, w): each answer's share of the KTO examples split from the pairs W, and its net
    desirability w = d lD - (1 - d) lU, d its share of desirable labels (= its win rate)."""
    W = np.asarray(W, float)
    wins, losses = W.sum(1), W.sum(0)
    n = wins + losses
    d = wins / np.maximum(n, 1e-300)
    return n / n.sum(), d * desirable_weight - (1 - d) * undesirable_weight


def kto_fixed_point(pi_ref, W, beta, desirable_weight=1.0, undesirable_weight=1.0):
    """
    KTO's limit on feedback split from the pairs W, with z0 = 0: pi(y) = 0 where w(y) <= 0; on
    the desirable answers, the maximiser of sum nu w sigma(beta rho) subject to sum pi = 1,
    whose stationarity nu w beta sigma'(beta rho) = lambda pi_ref e^rho has one solution rho(y)
    per lambda (log sigma'(beta rho) - rho falls strictly for beta < 1): two bisections.
    """
    if not beta < 1:
        raise ValueError("the interior solution needs beta < 1")
    pi_ref = normalise(pi_ref)
    nu, w = kto_weights(W, desirable_weight, undesirable_weight)
    good = w > 0

    def log_h(rho):  # log sigma'(beta rho) - rho, decreasing
        x = beta * rho
        return -np.logaddexp(0, x) - np.logaddexp(0, -x) - rho

    def rho_of(log_lam):
        target = log_lam + np.log(pi_ref[good]) - np.log(beta * nu[good] * w[good])
        lo, hi = np.full(target.shape, -200.0), np.full(target.shape, 200.0)
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            above = log_h(mid) > target  # rho too small
            lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
        return 0.5 * (lo + hi)

    lo, hi = -100.0, 100.0  # log lambda; the mass falls as lambda rises
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if np.sum(pi_ref[good] * np.exp(rho_of(mid))) > 1:
            lo = mid
        else:
            hi = mid
    pi = np.zeros(len(pi_ref))
    pi[good] = pi_ref[good] * np.exp(rho_of(hi))
    return normalise(pi)


def implicit_reward_spread(pi, pi_ref, r, beta, weights=None):
    """The std of beta log(pi/pi_ref) - r over the answers (uniform weights, or `weights`):
    0 exactly when pi is the exponential tilt pi* of r."""
    x = beta * (np.log(normalise(pi)) - np.log(normalise(pi_ref))) - np.asarray(r, float)
    w = np.full(len(x), 1.0 / len(x)) if weights is None else normalise(weights)
    return float(np.sqrt(w @ (x - w @ x) ** 2))

# -----------------------------------------------------------------------------
# measuring a policy over the answers


def answer_logprobs(model, enc=None):
    """log pi(y) of each answer's whole response [' ', letter, EOS] after the prompt, by teacher
    forcing: (K,) numpy float64, not normalised (their exps sum to 1 - the mass outside)."""
    import torch

    import checkpoint
    import ops
    from tokenizer import encode_example, get_tokenizer
    enc = enc or get_tokenizer("byte")
    rows = [encode_example(enc, PROMPT, y) for y in ANSWERS]
    idx = torch.tensor([ids for ids, _ in rows])
    mask = torch.tensor([m for _, m in rows])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logp = ops.trained_logprobs(model, idx.to(device), mask.to(device))  # (K, T-1)
    model.train(was_training)
    return logp.sum(1).double().cpu().numpy()


def measure(ckpt_path):
    """(pi over the answers, normalised over them; the mass outside them) of a policy checkpoint."""
    import checkpoint
    import ops
    from model import GPT
    ckpt = checkpoint.load_checkpoint(ckpt_path, expect_kind="policy")
    model = checkpoint.model_from_checkpoint(GPT, ckpt, ckpt_path)
    logp = answer_logprobs(model)
    inside = float(np.exp(logp).sum())
    return normalise(np.exp(logp - logp.max())), 1.0 - inside


def fixed_points(pi_ref, data_dir, beta=BETA, group_size=4, simpo_beta=2.0, simpo_gamma=1.0):
    """Every method's fixed point on this world, {method: pi (K,)}."""
    W = win_counts(os.path.join(data_dir, "prefs_train.jsonl"))
    return {
        PI_STAR: kl_tilt(pi_ref, REWARDS, beta),
        "dpo": dpo_fixed_point(pi_ref, W, beta),
        "ipo": ipo_fixed_point(pi_ref, W, beta),
        "dr_grpo_k3": grpo_k3_fixed_point(pi_ref, REWARDS, beta, group_size, "none"),
        "grpo_k3": grpo_k3_fixed_point(pi_ref, REWARDS, beta, group_size, "group"),
        "simpo": simpo_fixed_point(W, simpo_beta, simpo_gamma),
        "kto": kto_fixed_point(pi_ref, W, beta),
    }


def report(pi, pi_ref, target, beta=BETA):
    """The numbers the README's table holds: KL(pi* || pi), KL(target || pi) and the spread."""
    star = kl_tilt(pi_ref, REWARDS, beta)
    return dict(kl_star=kl(star, pi), kl_target=kl(target, pi),
                spread=implicit_reward_spread(pi, pi_ref, REWARDS, beta),
                spread_star_weighted=implicit_reward_spread(pi, pi_ref, REWARDS, beta, star))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--out_dir", default=os.path.join("data", "bandit", "out"),
                        help="where the files go (with --measure: the files it was trained on)")
    parser.add_argument("--measure", default="", help="a policy checkpoint to compare with theory")
    parser.add_argument("--reference", default="", help="the SFT checkpoint (pi_ref)")
    parser.add_argument("--beta", type=float, default=BETA)
    args = parser.parse_args(argv)
    if args.measure:
        if not args.reference:
            parser.error("--measure needs --reference=the SFT checkpoint")
        pi_ref, _ = measure(args.reference)
        pi, outside = measure(args.measure)
        print(f"{'answer':<10} " + " ".join(f"{y:>6}" for y in ANSWERS))
        print(f"{'r':<10} " + " ".join(f"{x:6.2f}" for x in REWARDS))
        print(f"{'pi_ref':<10} " + " ".join(f"{x:6.3f}" for x in pi_ref))
        print(f"{'pi':<10} " + " ".join(f"{x:6.3f}" for x in pi) + f"   mass outside {outside:.2e}")
        for name, target in fixed_points(pi_ref, args.out_dir, args.beta).items():
            print(f"{name:<10} " + " ".join(f"{x:6.3f}" for x in target)
                  + f"   KL({name} || pi) {kl(target, pi):.4f}")
        return
    t0 = time.time()
    counts = prepare(args.out_dir, args.seed)
    for name, n in counts.items():
        print(f"wrote {n:5d} lines to {os.path.join(args.out_dir, name)}")
    print(f"done in {time.time() - t0:.1f}s (seed {args.seed})")


if __name__ == "__main__":
    main()
