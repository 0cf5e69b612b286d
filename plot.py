"""
Figures from the training logs and the evaluation, as PNG files.

    python plot.py                                          # out/*_toy and out/eval -> out/plots
    python plot.py --runs=out --eval_dir=out/eval --out_dir=out/plots
    python plot.py --tag=gpt2_hh                            # out/sft_gpt2_hh, out/rm_gpt2_hh, ...

Reads {runs}/{stage}_{tag}/log.jsonl of each stage present (one JSON object per line with "step"
and metric keys; held-out metrics prefixed 'val_') and {eval_dir}/overoptimization.json
(written by eval.py --sweep), and writes:
    sft.png               training and held-out loss
    rm.png                loss, accuracy and margin of the reward model
    ppo.png               RM score and gold reward, KL, beta, entropy, clip fractions, length
    dpo.png               loss, implicit-reward margin and accuracy, log-probs of both answers
    overoptimization.png  gold reward and reward-model score against KL from the reference,
                          across PPO checkpoints: the proxy keeps rising while the gold reward
                          turns down (Gao et al. 2022, "Scaling Laws for Reward Model
                          Overoptimization")
A metric missing from a log is left out of its panel, a stage without a log is skipped with a
note. matplotlib is needed here only (pip install matplotlib); training never imports it.
"""

import json
import math
import os
import sys

import common
from common import parse_config

DEFAULTS = dict(
    runs="out",          # the runs are {runs}/{stage}_{tag} for stage in sft, rm, ppo, dpo
    tag="toy",           # e.g. 'gpt2_hh' for out/sft_gpt2_hh, out/rm_gpt2_hh, ...
    eval_dir="",         # where eval.py wrote overoptimization.json ('' = {runs}/eval)
    out_dir="out/plots",  # the PNG files
    dpi=120,             # resolution of the PNG files
)

# figure -> (title, x label, [(panel title, [metric keys, plotted when present])])
FIGURES = {
    "sft": ("SFT", "step", [
        ("loss (answer tokens)", ["loss", "val_loss"])]),
    "rm": ("Reward model", "step", [
        ("Bradley-Terry loss", ["loss", "val_loss"]),
        ("accuracy (r_chosen > r_rejected)", ["accuracy", "val_accuracy"]),
        ("margin r_chosen - r_rejected", ["margin", "val_margin"])]),
    "ppo": ("PPO", "iteration", [
        ("reward-model score and gold reward", ["score", "gold", "val_score", "val_gold"]),
        ("KL to the reference (nats / answer)", ["kl", "kl_k3", "val_kl"]),
        ("beta (KL coefficient)", ["beta", "kl_coef"]),
        ("entropy (nats / token)", ["entropy"]),
        ("clip fraction", ["clipfrac", "vclipfrac"]),
        ("response length (tokens)", ["resp_len", "length"]),
        ("EOS rate", ["eos_rate"])]),
    "dpo": ("DPO", "step", [
        ("loss", ["loss", "val_loss"]),
        ("implicit-reward margin", ["margin", "val_margin"]),
        ("accuracy (chosen reward > rejected)", ["accuracy", "val_accuracy"]),
        ("log-probs of the answers", ["logps_chosen", "logps_rejected", "chosen_logp",
                                      "rejected_logp", "val_logps_chosen", "val_logps_rejected"]),
        ("implicit rewards", ["rewards_chosen", "rewards_rejected"])]),
}
MISSING_MATPLOTLIB = "plot.py needs matplotlib: pip install matplotlib"


def import_pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display), or exit with a message."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(MISSING_MATPLOTLIB, file=sys.stderr)
        sys.exit(1)
    return plt


def read_log(path):
    """The records of a log.jsonl; a line that does not parse (a run killed mid-write) is
    skipped with a note."""
    records = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                print(f"{path}, line {lineno}: not JSON, skipped")
                continue
            if isinstance(rec, dict) and "step" in rec:
                records.append(rec)
    return records


def series(records, key):
    """(steps, values) of the records holding a finite number under key."""
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(r["step"])
            ys.append(v)
    return xs, ys


def plot_log(records, title, xlabel, panels, path, dpi=120):
    """One figure, a panel per metric group that has data; None (nothing written) if none has.
    Held-out ('val_') curves get markers: they have a point per evaluation only."""
    plt = import_pyplot()
    filled = [(name, [(k, series(records, k)) for k in keys if series(records, k)[0]])
              for name, keys in panels]
    filled = [(name, curves) for name, curves in filled if curves]
    if not filled:
        return None
    ncols = min(3, len(filled))
    nrows = math.ceil(len(filled) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 3.3 * nrows), squeeze=False)
    for ax, (name, curves) in zip(axes.flat, filled):
        for key, (xs, ys) in curves:
            style = dict(marker="o", markersize=3) if key.startswith("val_") else {}
            ax.plot(xs, ys, label=key, linewidth=1.2, **style)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(filled):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_overoptimization(sweep, path, dpi=120):
    """
    Gold reward (left axis) and reward-model score (right axis) against KL from the reference,
    one line per PPO run, each starting at the reference (KL 0). sweep: the dict eval.py writes,
    lists 'run', 'iter', 'kl', 'gold', 'rm' (and '*_stderr'). Returns path, or None when the
    sweep has no KL values.
    """
    plt = import_pyplot()
    n = len(sweep.get("kl", []))
    pts = [{k: (sweep.get(k) or [None] * n)[i] for k in ("run", "iter", "kl", "gold", "rm",
                                                        "gold_stderr", "rm_stderr")}
           for i in range(n)]
    pts = [p for p in pts if p["kl"] is not None]
    if not pts:
        return None
    ref = [p for p in pts if p["run"] == "reference"]
    runs = sorted({p["run"] for p in pts} - {"reference"}) or ["reference"]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax_rm = ax.twinx()  # the two rewards live on different scales
    for i, run in enumerate(runs):
        line = ref + sorted([p for p in pts if p["run"] == run and run != "reference"],
                            key=lambda p: p["iter"])
        kl = [p["kl"] for p in line]
        label = "" if len(runs) == 1 else f" ({os.path.basename(str(run))})"
        for a, key, color, style in ((ax, "gold", "C0", "o-"), (ax_rm, "rm", "C3", "s--")):
            keep = [j for j, p in enumerate(line) if p[key] is not None]
            if not keep:
                continue
            err = [line[j][f"{key}_stderr"] or 0.0 for j in keep]
            a.errorbar([kl[j] for j in keep], [line[j][key] for j in keep], yerr=err, fmt=style,
                       color=color, alpha=1.0 - 0.5 * i / len(runs), capsize=2, markersize=4,
                       label=("gold reward" if key == "gold" else "reward-model score") + label)
        for p in line:  # label each point with its iteration, on the gold curve if there is one
            a, y = (ax, p["gold"]) if p["gold"] is not None else (ax_rm, p["rm"])
            if y is not None:
                a.annotate(str(p["iter"]), (p["kl"], y), fontsize=7, textcoords="offset points",
                           xytext=(3, 3))
    ax.set_xlabel("KL(policy || reference), nats per answer")
    ax.set_ylabel("gold reward", color="C0")
    ax_rm.set_ylabel("reward-model score (proxy)", color="C3")
    ax.grid(alpha=0.3)
    handles = ax.get_legend_handles_labels()
    handles_rm = ax_rm.get_legend_handles_labels()
    ax.legend(handles[0] + handles_rm[0], handles[1] + handles_rm[1], fontsize=8, loc="best")
    ax.set_title("Over-optimisation: proxy reward vs gold reward (labels: PPO iteration)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def main(argv=None):
    cfg = parse_config(DEFAULTS, argv, __doc__)
    import_pyplot()  # fail at once, before reading anything, when matplotlib is missing
    os.makedirs(cfg.out_dir, exist_ok=True)
    written = {}
    for stage, (title, xlabel, panels) in FIGURES.items():
        log = os.path.join(cfg.runs, f"{stage}_{cfg.tag}", "log.jsonl")
        if not os.path.isfile(log):
            print(f"{stage}: no {log}, skipped")
            continue
        path = plot_log(read_log(log), title, xlabel, panels, os.path.join(cfg.out_dir,
                        f"{stage}.png"), cfg.dpi)
        if path is None:
            print(f"{stage}: {log} holds none of the plotted metrics, skipped")
        else:
            written[stage] = path
    sweep_path = os.path.join(cfg.eval_dir or os.path.join(cfg.runs, "eval"), "overoptimization.json")
    if os.path.isfile(sweep_path):
        with open(sweep_path) as f:
            path = plot_overoptimization(json.load(f), os.path.join(cfg.out_dir,
                                         "overoptimization.png"), cfg.dpi)
        if path is not None:
            written["overoptimization"] = path
    else:
        print(f"overoptimization: no {sweep_path} (run eval.py --sweep=...), skipped")
    for name, path in written.items():
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    common.cli(main)
