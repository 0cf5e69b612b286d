"""
Reward hacking, measured: the remedies of the design notes beside the plain recipe, on the same
SFT policy, the same comparisons and the same held-out prompts, over several seeds.

    python remedies.py                          # seeds 1337, 1, 2: about an hour on 2 cores
    python remedies.py --seeds=1337 --jobs=2    # one seed
    python remedies.py --budget=mini            # a wiring check in seconds (the tests run it)

For each seed, the pipeline's own stages (prepare, SFT, labelling, one reward model, PPO, DPO) in
{out}/seed{S}, then:
  - more reward models on the same rankings, member k seeded S + k ({out}/seed{S}/rm{k}; member
    0 is the pipeline's reward model): ensembles of K = 3 and 5 (Coste et al. 2023);
  - PPO against each remedy (VARIANTS): the ensembles' mean, worst case (min) and uncertainty-
    weighted (uwo) scores, uwo with a small KL coefficient, the mean with a large one, a length
    penalty, the pretraining mix (PPO-ptx) -- every other setting the pipeline's
    (config/ppo_toy.py);
  - eval.py on every policy (the same prompts and noise, eval_samples answers each), with the 5-member ensemble's mean as
    the common yardstick of "RM score" and its members' disagreement;
  - the reward models' accuracy on the held-out on-policy pairs, one model and ensembles;
  - the over-optimisation curves with one reward model and with the ensemble: best-of-N to
    N = 64 and PPO at beta = 0.02 (save_every=5), evaluated along their KL (the first seed).
--variants picks the remedies (--variants=uwo3,length), --members the largest ensemble.
Every stage is an ordinary run (its command printed, its log in {out}/logs); a finished stage is
skipped when the command runs again. The table (mean ± sd over the seeds, every seed listed in
remedies.json) goes to {out}/remedies.md.
"""

import json
import math
import os
import statistics
import sys
import time
from types import SimpleNamespace

import checkpoint
import config
import pipeline
from pipeline import run_stages, stage_path

DEFAULTS = dict(
    out="out/remedies",       # every seed's runs in {out}/seed{S}
    seeds="1337,1,2",         # each seed draws its own toy world, SFT policy and labels
    budget="full",            # 'full' | 'mini' (a tiny wiring check: the pipeline's MINI)
    jobs=2,                   # runs side by side, one thread each
    members=5,                # reward models per seed (the largest ensemble)
    uwo_lambda=1.0,           # uwo: the members' mean - uwo_lambda * their variance
    variants="all",           # the VARIANTS to run beside 'none' (comma-separated), or 'all'
    small_beta=0.05,          # the KL coefficient of 'uwo*_beta' (Coste et al.: UWO needs less KL)
    large_beta=0.4,           # the KL coefficient of 'mean3_kl': twice the default anchor
    length_penalty=0.01,      # per response token, for 'length'
    ptx_coef=0.5,             # PPO-ptx's gamma, for 'ptx'
    eval_samples=8,           # answers per held-out prompt and policy: one answer's mean gold over
                              # 96 prompts moves by ~0.16 between sampling seeds (docs/RESULTS.md)
    overopt=True,             # the over-optimisation curves (best-of-N and PPO at beta 0.02),
                              # on the first seed
)

# variant -> (ensemble size, aggregation, extra train_ppo.py arguments); {key} from the config
VARIANTS = {
    "none": (1, "mean", []),
    "mean3": (3, "mean", []), "min3": (3, "min", []), "uwo3": (3, "uwo", []),
    "mean5": (5, "mean", []), "min5": (5, "min", []), "uwo5": (5, "uwo", []),
    "mean3_kl": (3, "mean", ["--beta={large_beta}"]),
    "uwo3_beta": (3, "uwo", ["--beta={small_beta}"]), "uwo5_beta": (5, "uwo", ["--beta={small_beta}"]),
    "length": (1, "mean", ["--length_penalty={length_penalty}"]),
    "ptx": (1, "mean", ["--ptx_coef={ptx_coef}", "--ptx_data={data}/sft_train.jsonl"]),
}
COLUMNS = [("gold_reward", "gold"), ("gold_benign", "gold (benign)"),
           ("win_rate_vs_sft", "wins vs SFT"), ("rm_score", "RM score (all members' mean)"),
           ("kl", "KL"), ("distinct", "distinct"), ("length", "length"),
           ("demo_nll", "demo NLL"), ("harmful_compliance", "harmful complied"),
           ("over_refusal", "over-refusal"), ("seconds", "stage seconds")]


def finished(run_dir, reward_model=False):
    """Whether run_dir holds a finished training run (a reward model: one that set its bias)."""
    path = os.path.join(run_dir, "ckpt_last.pt")
    if not os.path.isfile(path):
        return False
    ckpt = checkpoint.load_checkpoint(path)
    if reward_model:
        return ckpt.get("reward_bias") is not None
    return ckpt["step"] >= ckpt["config"]["max_iters"]


def chosen(cfg):
    """The variants this run measures beside 'none': those named, within the ensemble's size."""
    names = [n for n in VARIANTS if n != "none"] if cfg.variants == "all" else \
        [n for n in cfg.variants.split(",") if n]
    return [n for n in names if VARIANTS[n][0] <= cfg.members]


def seed_stages(cfg, seed, overopt=True):
    """{name: (needs, command)} of one seed, and where its files are (SimpleNamespace)."""
    run = os.path.join(stage_path(cfg.out), f"seed{seed}")
    base = SimpleNamespace(**{**pipeline.DEFAULTS, "out": run, "data_dir": os.path.join(run, "data"),
                              "seed": seed, "scale": cfg.budget, "plots": False,
                              "rm_members": 1, "rounds": 1,  # 'none': the one reward model
                              "ppo_rollouts": 64})
    # every remedy against round 1's labels, 64 answers an iteration (the second round and 128
    # answers are measured in docs/RESULTS.md)
    stages, _ = pipeline.build_stages(base, {"dpo"})
    stages.pop("eval")
    data, d = stage_path(base.data_dir), lambda name: os.path.join(run, f"{name}_toy")  # noqa: E731
    rm_cmd = stages["rm"][1]
    members = [f"{d('rm')}/ckpt_best.pt"] + [f"{run}/rm{k}/ckpt_best.pt"
                                              for k in range(1, cfg.members)]
    for k in range(1, cfg.members):
        stages[f"rm{k}"] = (["label"], [a for a in rm_cmd if not a.startswith(("--out_dir=",
                            "--seed="))] + [f"--out_dir={run}/rm{k}", f"--seed={seed + k}"])
    ppo_cmd = [a for a in stages["ppo"][1] if not a.startswith(("--out_dir=", "--reward_model="))]
    for name in chosen(cfg):  # 'none' is the pipeline's own PPO run
        K, agg, extra = VARIANTS[name]
        stages[f"ppo_{name}"] = ([f"rm{k}" if k else "rm" for k in range(K)], ppo_cmd + [
            f"--out_dir={run}/ppo_{name}", f"--reward_model={','.join(members[:K])}",
            f"--reward_agg={agg}", f"--uwo_lambda={cfg.uwo_lambda}"]
            + [a.format(**vars(cfg), data=data) for a in extra])
    if cfg.overopt and overopt:  # PPO with a weak anchor: one reward model, and the full ensemble (uwo)
        for name, rm, agg in (("overopt_one", members[0], "mean"),
                              ("overopt_ens", ",".join(members), "uwo")):
            stages[name] = (["rm"] + [f"rm{k}" for k in range(1, cfg.members)], ppo_cmd + [
                f"--out_dir={run}/{name}", f"--reward_model={rm}", f"--reward_agg={agg}",
                f"--uwo_lambda={cfg.uwo_lambda}", "--beta=0.02", "--save_every=5",
                *(["--max_iters=2"] if cfg.budget == "mini" else ["--max_iters=60"])])
    ran = SimpleNamespace(run=run, data=data, sft=f"{d('sft')}/ckpt_best.pt", members=members,
                          dpo=f"{d('dpo')}/ckpt_last.pt", ppo=f"{d('ppo')}/ckpt_last.pt")
    return {f"s{seed}_{k}": ([f"s{seed}_{n}" for n in needs], cmd)
            for k, (needs, cmd) in stages.items()}, ran


def skip_finished(stages, seed, ran):
    """Drop the stages whose results are already on disk (and them from the others' needs)."""
    def out_dir(cmd):
        return next((a.split("=", 1)[1] for a in cmd if a.startswith("--out_dir=")), None)
    done = set()
    for name, (_, cmd) in stages.items():
        script, target = cmd[0], out_dir(cmd)
        if script.endswith("prepare.py"):
            ok = os.path.isfile(os.path.join(ran.data, "prompts_eval_safety.jsonl"))
        elif script.endswith("label.py"):
            ok = os.path.isfile(os.path.join(ran.data, "onpolicy_test.jsonl"))
        else:
            ok = finished(target, reward_model=script == "train_reward_model.py")
        if ok:
            done.add(name)
    return {n: ([x for x in needs if x not in done], cmd + ["--overwrite=True"] * (
        cmd[0].startswith("train_") and os.path.isdir(out_dir(cmd) or "")))
            for n, (needs, cmd) in stages.items() if n not in done}


def evaluate_seed(cfg, seed, ran, times, overopt=True):
    """eval.py on every policy of one seed (results.json), and its over-optimisation sweeps;
    returns {policy: metrics with 'seconds'}."""
    mini = cfg.budget == "mini"
    policies = {"sft": ran.sft, "bon16": ran.sft, "dpo": ran.dpo, "none": ran.ppo}
    policies.update({n: f"{ran.run}/ppo_{n}/ckpt_last.pt" for n in chosen(cfg)})
    held_out = f"{ran.data}/prompts_eval.jsonl,{ran.data}/prompts_eval_safety.jsonl"
    common = [f"--reference={ran.sft}", f"--prompts={held_out}", "--pairs=",
              f"--demo_val_data={ran.data}/sft_val.jsonl", f"--seed={seed}"]
    common += ["--eval_examples=8", "--max_new_tokens=16"] * mini
    stages = {"eval": ([], ["eval.py", f"--out_dir={ran.run}/eval", f"--reward_model="
                            f"{','.join(ran.members)}", "--reward_agg=mean", "--policies=" +
                            ",".join(f"{n}:{p}" for n, p in policies.items())] + common
                            + [f"--num_samples_per_prompt={1 if mini else cfg.eval_samples}"])}
    if cfg.overopt and overopt:  # best-of-N and PPO's snapshots, scored by the reward model they optimised
        for name, rm, agg in (("overopt_one", ran.members[0], "mean"),
                              ("overopt_ens", ",".join(ran.members), "uwo")):
            stages[name] = ([], ["eval.py", f"--out_dir={ran.run}/eval_{name}", "--policies=",
                                 f"--reward_model={rm}", f"--reward_agg={agg}",
                                 f"--uwo_lambda={cfg.uwo_lambda}", f"--sweep={ran.run}/{name}",
                                 f"--bon_sweep={4 if mini else 64}"] + common)
    if evaluated(os.path.join(ran.run, "eval", "results.json"), policies):
        del stages["eval"]  # every policy already judged, after its checkpoint was written
    run_stages(stages, cfg.jobs, os.path.join(stage_path(cfg.out), "logs", f"seed{seed}_eval"))
    with open(os.path.join(ran.run, "eval", "results.json")) as f:
        results = {n: m for n, m in json.load(f)["policies"].items() if n in policies}
    stage_of = dict(none="ppo", dpo="dpo", sft="sft")
    for name, m in results.items():
        m["seconds"] = times.get(f"s{seed}_{stage_of.get(name, 'ppo_' + name)}")
    return results


def evaluated(results_json, policies):
    """Whether results_json holds every policy of {name: checkpoint} and was written after each
    checkpoint (a later evaluation of more policies, or the same, is reused)."""
    if not os.path.isfile(results_json):
        return False
    with open(results_json) as f:
        names = set(json.load(f)["policies"])
    written = os.path.getmtime(results_json)
    return set(policies) <= names and all(os.path.getmtime(p) < written for p in policies.values())


def rm_accuracies(cfg, ran):
    """{ensemble: accuracy} of the reward models on the held-out on-policy pairs: one model
    (member 0), and K = 3 and 5 members with each aggregation."""
    import eval as evaluate
    from data import loader
    from tokenizer import get_tokenizer
    enc = get_tokenizer("byte")
    pairs = loader.load_preferences(os.path.join(ran.data, "onpolicy_test.jsonl"), enc, 128)
    out = {}
    for K in sorted({1, min(3, cfg.members), cfg.members}):
        for agg in ("mean",) if K == 1 else ("mean", "min", "uwo"):
            rm = checkpoint.load_reward_model(",".join(ran.members[:K]), "byte", agg=agg,
                                              uwo_lambda=cfg.uwo_lambda)
            accs = evaluate.rm_accuracies(rm, pairs, enc.eot_token)
            out[f"K{K}_{agg}"] = accs[0][0]
            if K == cfg.members and agg == "mean":
                out["members"] = [a for a, _ in accs[1:]]
    return out


def fmt_seeds(values, digits=2):
    """'mean ± sd' over the seeds ('-' without values)."""
    xs = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.fmean(xs):.{digits}f} ± {sd:.{digits}f}"


def report(cfg, seeds, results, accuracies):
    """The markdown table over seeds, and remedies.json with every seed's numbers."""
    names = list(results[seeds[0]])
    lines = [f"Remedies for reward hacking on the toy world: mean ± sd over seeds "
             f"{', '.join(map(str, seeds))}", "",
             "| policy | " + " | ".join(title for _, title in COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 1) + "|"]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(
            fmt_seeds([results[s][name].get(key) for s in seeds], 1 if key in ("distinct",
                      "length", "seconds") else 3) for key, _ in COLUMNS) + " |")
    lines += ["", "Reward-model accuracy on the held-out on-policy pairs:", "",
              "| reward model | accuracy |", "|---|---|"]
    for key in accuracies[seeds[0]]:
        if key != "members":
            lines.append(f"| {key} | {fmt_seeds([accuracies[s][key] for s in seeds], 3)} |")
    lines.append(f"| each member (K = {cfg.members}) | " + ", ".join(
        fmt_seeds([accuracies[s]["members"][k] for s in seeds], 3)
        for k in range(cfg.members)) + " |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(stage_path(cfg.out), "remedies.md"), "w") as f:
        f.write(text)
    with open(os.path.join(stage_path(cfg.out), "remedies.json"), "w") as f:
        json.dump(dict(config=vars(cfg), results={str(s): results[s] for s in seeds},
                       rm_accuracy={str(s): accuracies[s] for s in seeds}), f, indent=1)
    return text


def main(argv=None):
    cfg = config.parse_config(DEFAULTS, argv, __doc__)
    config.validate(cfg, {"budget": (lambda v: v in ("full", "mini"), "'full' or 'mini'"),
                          "jobs": (lambda v: v >= 1, ">= 1"),
                          "members": (lambda v: v >= 2, ">= 2 (an ensemble)"),
                          "uwo_lambda": (lambda v: v >= 0, ">= 0")})
    config.require(cfg.variants == "all" or set(cfg.variants.split(",")) <= set(VARIANTS),
                   f"variants: a comma-separated list of {', '.join(VARIANTS)}, or 'all'")
    try:
        seeds = [int(s) for s in cfg.seeds.split(",") if s.strip()]
    except ValueError:
        raise config.ConfigError(f"seeds={cfg.seeds!r}: a comma-separated list of integers") from None
    config.require(seeds and len(set(seeds)) == len(seeds), "seeds: one or more distinct seeds")
    t0 = time.time()
    stages, runs = {}, {}
    for seed in seeds:
        s, ran = seed_stages(cfg, seed, overopt=seed == seeds[0])
        stages.update(skip_finished(s, seed, ran))
        runs[seed] = ran
    print(f"remedies: {len(stages)} stages to run over {len(seeds)} seed(s)", flush=True)
    times = run_stages(stages, cfg.jobs, os.path.join(stage_path(cfg.out), "logs"),
                       alone=tuple(n for n in stages if n.endswith("_sft")))
    results = {s: evaluate_seed(cfg, s, runs[s], times, overopt=s == seeds[0]) for s in seeds}
    accuracies = {s: rm_accuracies(cfg, runs[s]) for s in seeds}
    text = report(cfg, seeds, results, accuracies)
    print(f"\nremedies done in {time.time() - t0:.0f}s\n\n{text}")
    return dict(results=results, rm_accuracy=accuracies)


if __name__ == "__main__":
    sys.path.insert(0, pipeline.ROOT)
    config.cli(main)
