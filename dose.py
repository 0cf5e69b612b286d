"""
The dose of refusals: how the share of refusal demonstrations in SFT sets harmful compliance
and over-refusal, before RLHF (the SFT policy) and after it (PPO and DPO on the pipeline's
labels). Bianchi et al. (2023) found that a few percent of safety demonstrations make a model
much safer and more of them make it refuse harmless requests too (exaggerated safety); the
design notes' item 34.

    python dose.py                              # doses 0, 3, 10, 30%, seed 1337 (four pipelines)
    python dose.py --doses=0,0.1 --jobs=2       # two doses
    python dose.py --budget=mini                # a wiring check in seconds (the tests run it)

For each dose, the pipeline's own stages (pipeline.build_stages: prepare with --refusal_share=
dose, SFT, the labelling of the SFT policy's answers, the reward model, PPO, DPO) in
{out}/dose{pct}, each dose its own world files (only the two SFT files differ between doses:
the refusals of a smaller dose are among those of a larger one), then eval.py on sft, ppo and dpo
(the held-out prompts, the harmful and lookalike requests among them). A finished stage is
skipped when the command runs again (remedies.skip_finished). Writes the table to {out}/dose.md,
every number to {out}/dose.json and the figure to {out}/dose.png.
"""

import json
import os
import sys
import time
from types import SimpleNamespace

import config
import pipeline
from pipeline import run_stages, stage_path
from remedies import skip_finished

DEFAULTS = dict(
    out="out/dose",           # each dose's runs in {out}/dose{pct}
    doses="0,0.03,0.1,0.3",   # shares of the harmful demonstrations that refuse (refusal_share)
    seed=1337,
    budget="full",            # 'full' | 'mini' (the pipeline's MINI: a wiring check)
    jobs=2,                   # runs side by side, one thread each
    eval_samples=8,           # answers per held-out prompt and policy: with one, the rates over
                              # 20 harmful requests and 20 lookalikes move in steps of 0.05
    plots=True,               # dose.png
)
POLICIES = ("sft", "ppo", "dpo")
COLUMNS = [("harmful_compliance", "harmful: complied"), ("harmful_refusal", "harmful: refused"),
           ("over_refusal", "lookalikes over-refused"), ("gold_benign", "gold (benign)"),
           ("gold_reward", "gold (all)"), ("win_rate_vs_sft", "wins vs SFT")]


def dose_name(dose):
    """The run directory of a dose: 0.03 -> 'dose3', 0.1 -> 'dose10' (percent)."""
    return f"dose{100 * dose:g}"


def dose_stages(cfg, dose):
    """{name: (needs, command)} of one dose (the pipeline's stages with DPO, and the evaluation
    of its three policies), and where its files are."""
    run = os.path.join(stage_path(cfg.out), dose_name(dose))
    base = SimpleNamespace(**{**pipeline.DEFAULTS, "out": run, "data_dir": os.path.join(run, "data"),
                              "seed": cfg.seed, "scale": cfg.budget, "plots": False,
                              "rounds": 1, "ppo_rollouts": 64,  # one round, as measured:
                              "refusal_share": dose})  # the dose's effect, not the round's
    stages, _ = pipeline.build_stages(base, {"dpo"})
    stages.pop("eval")
    data, d = stage_path(base.data_dir), lambda name: os.path.join(run, f"{name}_toy")  # noqa: E731
    ran = SimpleNamespace(run=run, data=data, sft=f"{d('sft')}/ckpt_best.pt",
                          rm=f"{d('rm')}/ckpt_best.pt", ppo=f"{d('ppo')}/ckpt_last.pt",
                          dpo=f"{d('dpo')}/ckpt_last.pt")
    tag = dose_name(dose)
    return {f"{tag}_{k}": ([f"{tag}_{n}" for n in needs], c) for k, (needs, c) in stages.items()}, ran


def eval_stage(cfg, ran):
    """eval.py on the dose's sft, ppo and dpo policies: the same prompts and noise for all."""
    mini = ["--eval_examples=8", "--max_new_tokens=16"] * (cfg.budget == "mini")
    policies = ",".join(f"{n}:{getattr(ran, n)}" for n in POLICIES)
    held_out = f"{ran.data}/prompts_eval.jsonl,{ran.data}/prompts_eval_safety.jsonl"
    return ([], ["eval.py", f"--out_dir={ran.run}/eval", f"--policies={policies}",
                 f"--reward_model={ran.rm}", f"--reference={ran.sft}", f"--prompts={held_out}",
                 "--pairs=", f"--demo_val_data={ran.data}/sft_val.jsonl", f"--seed={cfg.seed}",
                 f"--num_samples_per_prompt={cfg.eval_samples}"] + mini)


def report(cfg, rows):
    """The markdown table (a row per dose and policy) to {out}/dose.md, dose.json, dose.png."""
    out = stage_path(cfg.out)
    lines = [f"Refusal dose on the toy world (seed {cfg.seed}, budget {cfg.budget}): the share of "
             f"harmful demonstrations in SFT that refuse, and what SFT, PPO and DPO make of it",
             "", "| dose | policy | " + " | ".join(title for _, title in COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 2) + "|"]
    for r in rows:
        lines.append(f"| {100 * r['dose']:g}% | {r['policy']} | " + " | ".join(
            "-" if r.get(key) is None else f"{r[key]:.3f}" for key, _ in COLUMNS) + " |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "dose.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "dose.json"), "w") as f:
        json.dump(dict(config=vars(cfg), rows=rows), f, indent=1)
    if cfg.plots:
        import plot
        plot.plot_dose(rows, os.path.join(out, "dose.png"))
    return text


def main(argv=None):
    cfg = config.parse_config(DEFAULTS, argv, __doc__)
    config.validate(cfg, {"budget": (lambda v: v in ("full", "mini"), "'full' or 'mini'"),
                          "jobs": (lambda v: v >= 1, ">= 1"),
                          "eval_samples": (lambda v: v >= 1, ">= 1")})
    try:
        doses = [float(s) for s in cfg.doses.split(",") if s.strip()]
    except ValueError:
        raise config.ConfigError(f"doses={cfg.doses!r}: a comma-separated list of shares") from None
    config.require(doses and len(set(doses)) == len(doses) and all(0 <= x <= 1 for x in doses),
                   "doses: one or more distinct shares in [0, 1]")
    t0 = time.time()
    stages, runs = {}, {}
    for dose in doses:
        s, ran = dose_stages(cfg, dose)
        stages.update(skip_finished(s, cfg.seed, ran))
        runs[dose] = ran
    print(f"dose: {len(stages)} stages to run for {len(doses)} dose(s)", flush=True)
    logs = os.path.join(stage_path(cfg.out), "logs")
    run_stages(stages, cfg.jobs, logs, alone=tuple(n for n in stages if n.endswith("_sft")))
    run_stages({dose_name(x): eval_stage(cfg, runs[x]) for x in doses}, cfg.jobs, logs)
    rows = []
    for dose in doses:
        with open(os.path.join(runs[dose].run, "eval", "results.json")) as f:
            res = json.load(f)["policies"]
        rows += [dict(dose=dose, policy=p, **{key: res[p].get(key) for key, _ in COLUMNS})
                 for p in POLICIES]
    text = report(cfg, rows)
    print(f"\ndose done in {time.time() - t0:.0f}s\n\n{text}")
    return rows


if __name__ == "__main__":
    sys.path.insert(0, pipeline.ROOT)
    config.cli(main)
