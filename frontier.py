"""
The reward-KL frontier on the toy world (the DPO paper's Figure 2, on a laptop): every method
trained at several strengths of its KL anchor, every result judged on the same held-out prompts.

    python pipeline.py && python frontier.py        # --budget=small: about 20 minutes, 2 cores
    python frontier.py --budget=full                # more points and two seeds: a few hours
    python frontier.py --methods=dpo,ppo --jobs=1   # a subset, one run at a time

The knob of each method: beta for DPO, IPO, KTO and RPO (DPO + NLL), the KL coefficient beta for
PPO, GRPO and RLOO, and N for best-of-N (no training: eval.py --bon_sweep). Each point is an
ordinary run directory, {out}/frontier/{method}_beta{b}_s{seed}_{budget}_{key}, the key a hash of
its command and the bytes of its inputs (point_key): a finished point is skipped when the command
is run again, an unfinished one resumed, so Ctrl-C loses nothing; a point of another budget, or
of an SFT policy, reward model or data changed since, is another directory. The runs start
from the pipeline's SFT policy, reward model and comparisons ({out}). Then eval.py judges every
point (gold reward, RM score, KL to the SFT policy, with standard errors over prompts) and this
script draws {out}/frontier/frontier.png:
  left   gold reward against KL(pi || pi_ref), a curve per method (error bars: over prompts, and
         over seeds where there are several);
  right  the over-optimisation view: gold and RM score against sqrt(KL) for PPO and best-of-N,
         with Gao et al.'s fitted forms R_bon(d) = d (a - b d) and R_RL(d) = d (a - b log d)
         (d = sqrt(KL), R the gain over the SFT policy; Gao et al. 2022, eqs. 1-2).
"""

import hashlib
import json
import math
import os
import time

import config
import checkpoint
from pipeline import ROOT, run_stages, stage_path

DEFAULTS = dict(
    out="out",                # the pipeline's runs: {out}/sft_toy, {out}/rm_toy, ...
    data_dir="data/toy/out",  # the toy world's files (and the labelling step's)
    budget="small",           # 'small' (about 20 minutes on 2 cores) | 'full' | 'mini' (tests)
    methods="dpo,ipo,kto,rpo,ppo,grpo,rloo,bon",  # which curves
    jobs=2,                   # runs side by side, one thread each
    seed=1337,
    reward_model="",          # the RL methods' and best-of-N's reward model: '' = the pipeline's
                              # ({out}/rm_toy/ckpt_best.pt, or {out}/rm_toy's ensemble members)
    reward_agg="mean",        # an ensemble's aggregation: 'mean' | 'min' | 'uwo' (the pipeline's)
    uwo_lambda=1.0,
)

# method -> (script and fixed arguments, the betas of the small and the full budget)
METHODS = {
    "dpo": (["train_dpo.py", "config/dpo_toy.py"], [0.1, 0.5, 2.0], [0.1, 0.2, 0.5, 1.0, 2.0]),
    "ipo": (["train_dpo.py", "config/dpo_toy.py", "--loss_type=ipo"], [0.1, 0.3, 1.0],
            [0.03, 0.1, 0.3, 1.0, 3.0]),
    "kto": (["train_kto.py", "config/kto_toy.py"], [0.1, 0.5, 2.0], [0.1, 0.2, 0.5, 1.0, 2.0]),
    "rpo": (["train_dpo.py", "config/dpo_toy.py", "--rpo_alpha=1.0"], [0.1, 0.5, 2.0],
            [0.1, 0.2, 0.5, 1.0, 2.0]),
    "ppo": (["train_ppo.py", "config/ppo_toy.py"], [0.02, 0.1, 0.5], [0.01, 0.03, 0.1, 0.2, 0.5]),
    "grpo": (["train_grpo.py"], [0.01, 0.04, 0.2], [0.0, 0.01, 0.04, 0.1, 0.3]),
    "rloo": (["train_grpo.py", "--advantage=rloo"], [0.02, 0.1, 0.5], [0.01, 0.03, 0.1, 0.2, 0.5]),
}
SEEDS = {"mini": 1, "small": 1, "full": 2}
BON_N = {"mini": 4, "small": 64, "full": 128}
# seconds one run takes on one thread of a 2-core machine (the pipeline's stage times)
EST_SECONDS = {"dpo": 70, "ipo": 70, "kto": 90, "rpo": 70, "ppo": 150, "grpo": 110, "rloo": 110}
MINI = {"rl": ["--max_iters=2", "--eval_examples=4", "--eval_interval=2", "--rollout_batch_size=8",
               "--minibatch_size=8", "--micro_batch_size=4", "--max_new_tokens=8",
               "--num_samples=0", "--save_every=0"],
        "pairs": ["--max_iters=2", "--eval_examples=4", "--eval_interval=2", "--batch_size=4"]}
RL = ("ppo", "grpo", "rloo")


def points(cfg, methods):
    """[(method, beta, seed, run_dir)] of the sweep. A point's directory is keyed by everything
    that defines it (point_key): a point of another budget, or one trained from an SFT policy,
    reward model or data that have changed since, is another directory, never taken for this one."""
    grid = []
    for m in methods:
        betas = METHODS[m][1] if cfg.budget != "full" else METHODS[m][2]
        betas = betas[:2] if cfg.budget == "mini" else betas
        for seed in range(cfg.seed, cfg.seed + SEEDS[cfg.budget]):
            for b in betas:
                name = f"{m}_beta{b}_s{seed}_{cfg.budget}_{point_key(cfg, m, b, seed)}"
                grid.append((m, b, seed, os.path.join(stage_path(cfg.out), "frontier", name)))
    return grid


_file_hashes = {}


def point_key(cfg, method, beta, seed):
    """8 hex digits of a SHA-256 of a point's command (script, method, beta, seed, the budget's
    arguments) and of the bytes of every input file it names."""
    import run
    h = hashlib.sha256()
    for arg in point_command(cfg, method, beta, seed):
        h.update(arg.encode() + b"\0")
        path = os.path.join(ROOT, arg.split("=", 1)[-1])
        if arg.startswith("--") and os.path.isfile(path):
            if path not in _file_hashes:
                _file_hashes[path] = run.sha256_of(path)
            h.update(_file_hashes[path].encode())
    return h.hexdigest()[:8]


def finished(run_dir):
    """Whether a run dir holds a finished run (its last checkpoint is at its max_iters)."""
    path = os.path.join(run_dir, "ckpt_last.pt")
    if not os.path.isfile(path):
        return False
    ckpt = checkpoint.load_checkpoint(path)
    return ckpt["step"] >= ckpt["config"]["max_iters"]


def run_args(cfg, method, beta, seed, run_dir):
    """The command of one point: the method's script at this beta, from the pipeline's SFT
    policy, on the pipeline's data, resumed if it was started before."""
    resume = os.path.isfile(os.path.join(run_dir, "ckpt_last.pt"))
    return point_command(cfg, method, beta, seed) + [f"--out_dir={run_dir}"] + (
        ["--resume=True"] if resume else ["--overwrite=True"])


def point_command(cfg, method, beta, seed):
    """run_args without the out_dir and the resume flag: what defines the point."""
    out, data = stage_path(cfg.out), stage_path(cfg.data_dir)
    sft = f"{out}/sft_toy/ckpt_best.pt"
    cmd = METHODS[method][0] + [f"--init_from={sft}", f"--beta={beta}", f"--seed={seed}"]
    if method in RL:
        cmd += [f"--reward_model={reward_model(cfg)}", f"--reward_agg={cfg.reward_agg}",
                f"--uwo_lambda={cfg.uwo_lambda}",
                f"--train_prompts={data}/prompts_train.jsonl",
                f"--val_prompts={data}/prompts_eval.jsonl,{data}/prompts_eval_safety.jsonl",
                f"--demo_val_data={data}/sft_val.jsonl"]
    elif method == "kto":
        cmd += [f"--train_data={data}/onpolicy_unpaired.jsonl",
                f"--val_data={data}/onpolicy_unpaired_val.jsonl"]
    else:
        cmd += [f"--train_data={data}/onpolicy_train.jsonl", f"--val_data={data}/onpolicy_val.jsonl"]
    if cfg.budget == "mini":
        cmd += MINI["rl" if method in RL else "pairs"]
    return cmd


def reward_model(cfg):
    """The reward model the points use: cfg.reward_model, or the pipeline's (rm_toy, and the
    ensemble's other members rm_m1_toy, rm_m2_toy, ... when it trained them)."""
    if cfg.reward_model:
        return cfg.reward_model
    out, members, k = stage_path(cfg.out), ["rm"], 1
    while os.path.isdir(os.path.join(out, f"rm_m{k}_toy")):
        members, k = members + [f"rm_m{k}"], k + 1
    return ",".join(os.path.join(out, f"{m}_toy", "ckpt_best.pt") for m in members)


def gao_fit(d, r, form):
    """
    a, b of Gao et al.'s forms through the origin, R = d (a - b d) (best-of-N) or
    R = d (a - b log d) (RL), fitted as a straight line R / d = a - b * f(d) (f = d or log d) by
    ordinary least squares on R / d over the points with d > 0: it minimises the errors of R / d,
    not of R (a point at small d weighs more than in a fit of R itself).
    Returns (a, b), or None with fewer than two points.
    """
    pts = [(x, y / x) for x, y in zip(d, r) if x > 0 and y is not None]
    if len(pts) < 2:
        return None
    f = [x if form == "bon" else math.log(x) for x, _ in pts]
    ys = [y for _, y in pts]
    fm, ym = sum(f) / len(f), sum(ys) / len(ys)
    var = sum((v - fm) ** 2 for v in f)
    if var == 0:
        return None
    b = -sum((v - fm) * (y - ym) for v, y in zip(f, ys)) / var
    return ym + b * fm, b


def main(argv=None):
    cfg = config.parse_config(DEFAULTS, argv, __doc__)
    methods = [m.strip() for m in cfg.methods.split(",") if m.strip()]
    config.validate(cfg, {"budget": (lambda v: v in SEEDS, "'small', 'full' or 'mini'"),
                          "jobs": (lambda v: v >= 1, ">= 1")})
    config.require(methods and all(m in METHODS or m == "bon" for m in methods),
                   f"methods={cfg.methods!r}: a comma-separated list of {', '.join(METHODS)}, bon")
    out = stage_path(cfg.out)
    for path in (f"{out}/sft_toy/ckpt_best.pt", *reward_model(cfg).split(",")):
        config.require(os.path.exists(path), f"{path} does not exist: run python pipeline.py first")
    grid = points(cfg, [m for m in methods if m != "bon"])
    todo = [p for p in grid if not finished(p[3])]
    cost = sum(EST_SECONDS[m] for m, *_ in todo) / cfg.jobs + 60 + 0.5 * BON_N[cfg.budget]
    print(f"frontier: {len(grid)} runs ({len(grid) - len(todo)} finished before), about "
          f"{cost / 60:.0f} minutes on this machine at {cfg.jobs} jobs, then the evaluation")
    t0 = time.time()
    run_stages({f"{m}_beta{b}_s{s}": ([], run_args(cfg, m, b, s, d)) for m, b, s, d in todo},
               cfg.jobs, os.path.join(out, "frontier", "logs"))

    # every point on the same held-out prompts, best-of-N along its KL bound
    eval_dir = os.path.join(out, "frontier", "eval")
    sft, data = f"{out}/sft_toy/ckpt_best.pt", stage_path(cfg.data_dir)
    policies = ",".join([f"sft:{sft}"] + [f"{m}_beta{b}_s{s}:{d}/ckpt_last.pt"
                                          for m, b, s, d in grid])
    bon = BON_N[cfg.budget] if "bon" in methods else 0
    run_stages({"eval": ([], ["eval.py", f"--policies={policies}", "--baseline=",
                              f"--reward_model={reward_model(cfg)}", f"--reward_agg={cfg.reward_agg}",
                              f"--uwo_lambda={cfg.uwo_lambda}", f"--reference={sft}",
                              f"--prompts={data}/prompts_eval.jsonl,{data}/prompts_eval_safety.jsonl", "--pairs=",
                              f"--demo_val_data={data}/sft_val.jsonl",
                              f"--out_dir={eval_dir}", f"--seed={cfg.seed}", f"--bon_sweep={bon}"]
                  + (["--eval_examples=8", "--max_new_tokens=16"] if cfg.budget == "mini" else []))},
               1, os.path.join(out, "frontier", "logs"))
    with open(os.path.join(eval_dir, "results.json")) as f:
        results = json.load(f)["policies"]
    sweep = {}
    if bon:
        with open(os.path.join(eval_dir, "overoptimization.json")) as f:
            sweep = json.load(f)
    curves = frontier_curves(grid, results, sweep.get("bon"))
    with open(os.path.join(out, "frontier", "frontier.json"), "w") as f:
        json.dump(curves, f, indent=1)
    from plot import plot_frontier
    path = plot_frontier(curves, os.path.join(out, "frontier", "frontier.png"))
    for m, c in curves.items():
        if m != "_reference":
            print(f"{m:>5}: " + "  ".join(f"{c['knob']}={p['knob']:g}: gold {p['gold']:.2f} KL "
                                          f"{p['kl']:.2f}" for p in c["points"]))
    print(f"frontier done in {time.time() - t0:.0f}s: {path}, {out}/frontier/frontier.json")
    return curves


def frontier_curves(grid, results, bon=None):
    """{method: dict(points=[...] sorted by KL, knob=its name)}: per point the mean over seeds of
    the gold reward, RM score and KL to the SFT policy, with standard errors (over prompts; with
    several seeds, the spread of the seeds' means added), best-of-N from eval's sweep, Gao et
    al.'s fits for PPO and best-of-N, and the SFT policy itself ('_reference')."""
    curves, names = {}, dict(gold_reward="gold", rm_score="rm", kl="kl")
    for m in dict.fromkeys(p[0] for p in grid):
        pts = []
        for b in dict.fromkeys(p[1] for p in grid if p[0] == m):
            runs = [results[f"{m}_beta{b}_s{s}"] for mm, bb, s, _ in grid if mm == m and bb == b]
            point = dict(knob=b)
            for key, name in names.items():
                vals = [r[key] for r in runs]
                mean = sum(vals) / len(vals)
                se = math.sqrt(sum(r[f"{key}_stderr"] ** 2 for r in runs)) / len(runs)
                if len(vals) > 1:  # the seeds' own spread, beside the prompts'
                    se = math.hypot(se, math.sqrt(sum((v - mean) ** 2 for v in vals)
                                                  / (len(vals) - 1) / len(vals)))
                point[name], point[f"{name}_stderr"] = mean, se
            pts.append(point)
        curves[m] = dict(points=sorted(pts, key=lambda p: p["kl"]), knob="beta")
    if bon:
        curves["bon"] = dict(knob="N", points=[
            dict(knob=n, kl=kl, gold=g, gold_stderr=gs, rm=r, rm_stderr=rs)
            for n, kl, g, gs, r, rs in zip(*(bon[k] for k in ("n", "kl", "gold", "gold_stderr",
                                                             "rm", "rm_stderr")))])
    base = results["sft"]["gold_reward"]
    for m, form in (("ppo", "rl"), ("bon", "bon")):
        if m in curves:
            d = [math.sqrt(max(p["kl"], 0.0)) for p in curves[m]["points"]]
            curves[m]["gao_fit"] = gao_fit(d, [p["gold"] - base for p in curves[m]["points"]], form)
    curves["_reference"] = dict(gold=base, rm=results["sft"]["rm_score"])
    return curves


if __name__ == "__main__":
    config.cli(main)
