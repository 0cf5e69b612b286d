"""
Figures from the training logs and the evaluation, as PNG files.

    python plot.py                                          # out/*_toy and out/eval -> out/plots
    python plot.py --runs=out --eval_dir=out/eval --out_dir=out/plots
    python plot.py --tag=gpt2_hh                            # out/sft_gpt2_hh, out/rm_gpt2_hh, ...

Reads {runs}/{name}_{tag}/log.jsonl of every run there (one JSON object per line with "step"
and metric keys; held-out metrics prefixed 'val_'), the tokens.jsonl some of them write, and
{eval_dir}/overoptimization.json (eval.py --sweep / --bon_sweep), and writes:
    {name}.png            per run, by what wrote it: SFT loss; the reward model's loss, accuracy
                          and margin; PPO / GRPO score and gold reward, KL, entropy, clipping,
                          length (GRPO also the share of groups with no signal); DPO and KTO loss,
                          implicit rewards, accuracy and log-probs
    {name}_tokens.png     credit assignment per token of a few sampled answers: where the reward
                          lands and how the update spreads it (PPO: KL penalty, value, advantage,
                          reward; GRPO: token advantages; DPO / KTO: log pi / pi_ref per token)
    safety.png            helpful and harmless, a point per policy (and per eval dir of --safety,
                          e.g. one per seed): harmlessness (1 - harmful compliance) against
                          helpfulness (gold on the benign families), the over-refusal of the
                          harmless lookalikes as the marker's size and in a second panel
    overoptimization.png  gold reward and reward-model score against KL from the reference,
                          across PPO / GRPO checkpoints and best-of-N: the proxy keeps rising
                          while the gold reward turns down (Gao et al. 2022, "Scaling Laws for
                          Reward Model Overoptimization")
A metric missing from a log is left out of its panel. matplotlib is needed here only (a runtime
requirement; training never imports it).
"""

import glob
import json
import math
import os
import sys

import config
from config import parse_config

DEFAULTS = dict(
    runs="out",          # the runs are {runs}/{name}_{tag}, e.g. out/ppo_toy, out/rloo_toy
    tag="toy",           # e.g. 'gpt2_hh' for out/sft_gpt2_hh, out/rm_gpt2_hh, ...
    eval_dir="",         # where eval.py wrote overoptimization.json ('' = {runs}/eval)
    out_dir="out/plots",  # the PNG files
    dpi=120,             # resolution of the PNG files
    safety="",           # eval dirs (comma-separated: seeds) whose results.json make safety.png
                         # ('' = eval_dir's)
)

SCORES = ("reward-model score and gold reward", ["score", "gold", "val_score", "val_gold"])
# figure kind -> (title, x label, [(panel title, [metric keys, plotted when present])])
FIGURES = {
    "sft": ("SFT", "step", [
        ("loss (answer tokens)", ["loss", "val_loss"])]),
    "rm": ("Reward model", "step", [
        ("Bradley-Terry loss", ["loss", "val_loss"]),
        ("accuracy (r_chosen > r_rejected)", ["accuracy", "val_accuracy"]),
        ("margin r_chosen - r_rejected", ["margin", "val_margin"])]),
    "ppo": ("PPO", "iteration", [
        SCORES,
        ("KL to the reference (nats / answer)", ["kl", "kl_k3", "val_kl"]),
        ("beta (KL coefficient)", ["beta"]),
        ("entropy (nats / token)", ["entropy"]),
        ("clip fraction", ["clipfrac", "vclipfrac"]),
        ("response length (tokens)", ["resp_len"]),
        ("EOS rate", ["eos_rate"]),
        ("Safe RLHF: the Lagrange multiplier lambda", ["lambda"]),
        ("cost per answer: the cost model's, the judge's", ["cost", "gold_cost"]),
        ("Llama 2's gate: answers the safety RM scored", ["gate_share", "unsafe_share"])]),
    "grpo": ("GRPO / RLOO", "iteration", [
        SCORES,
        ("KL to the reference (nats / answer)", ["kl", "kl_k3", "val_kl"]),
        ("groups with no signal (all rewards equal)", ["no_signal"]),
        ("reward std within the batch", ["score_std"]),
        ("entropy (nats / token)", ["entropy"]),
        ("clip fraction", ["clipfrac"]),
        ("response length (tokens)", ["resp_len"])]),
    "dpo": ("DPO", "step", [
        ("loss", ["loss", "val_loss"]),
        ("implicit-reward margin", ["margin", "val_margin"]),
        ("accuracy (chosen reward > rejected)", ["accuracy", "val_accuracy"]),
        ("log-probs of the answers", ["logps_chosen", "logps_rejected", "val_logps_chosen",
                                      "val_logps_rejected"]),
        ("implicit rewards", ["rewards_chosen", "rewards_rejected"])]),
    "kto": ("KTO", "step", [
        ("loss", ["loss", "val_loss"]),
        ("accuracy (answers on their side of the reference point)", ["accuracy", "val_accuracy"]),
        ("log-probs of the answers", ["logps_desirable", "logps_undesirable",
                                      "val_logps_desirable", "val_logps_undesirable"]),
        ("implicit rewards", ["rewards_desirable", "rewards_undesirable",
                              "val_rewards_desirable", "val_rewards_undesirable"]),
        ("reference point (KL estimate)", ["kl", "val_kl"])]),
}
# the script that wrote a run, from the keys of its log (run names are free: rloo_toy, ...)
KIND_KEYS = [("grpo", "no_signal"), ("ppo", "vf_loss"), ("dpo", "logps_chosen"),
             ("kto", "logps_desirable"), ("rm", "bt_loss"), ("sft", "loss")]
MISSING_MATPLOTLIB = "plot.py needs matplotlib: pip install matplotlib"


def run_kind(records):
    """'sft', 'rm', 'ppo', 'grpo', 'dpo' or 'kto': which kind of run wrote these log records (or
    None)."""
    keys = {k for r in records for k in r}
    return next((kind for kind, key in KIND_KEYS if key in keys), None)


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
    bon = sweep.get("bon")
    if bon and bon.get("kl"):  # best-of-N at its KL bound log N - (N - 1) / N
        for a, key, color in ((ax, "gold", "C0"), (ax_rm, "rm", "C3")):
            keep = [j for j, v in enumerate(bon[key]) if v is not None]
            if keep:
                a.errorbar([bon["kl"][j] for j in keep], [bon[key][j] for j in keep],
                           yerr=[bon[f"{key}_stderr"][j] or 0.0 for j in keep], fmt="^:",
                           color=color, capsize=2, markersize=4, alpha=0.7,
                           label=f"{'gold' if key == 'gold' else 'RM score'}, best-of-N")
        for n, kl, g in zip(bon["n"], bon["kl"], bon["gold"]):
            if g is not None:
                ax.annotate(f"N={n}", (kl, g), fontsize=6, textcoords="offset points",
                            xytext=(3, -8))
    ax.set_xlabel("KL(policy || reference), nats per answer")
    ax.set_ylabel("gold reward", color="C0")
    ax_rm.set_ylabel("reward-model score (proxy)", color="C3")
    ax.grid(alpha=0.3)
    handles = ax.get_legend_handles_labels()
    handles_rm = ax_rm.get_legend_handles_labels()
    ax.legend(handles[0] + handles_rm[0], handles[1] + handles_rm[1], fontsize=8, loc="best")
    ax.set_title("Over-optimisation: proxy reward vs gold reward (labels: iteration)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def safety_points(results):
    """[(policy, source, helpfulness, harmlessness, over_refusal)] from eval.py's results.json
    dicts ({source: results}), every policy with the three safety numbers (eval.safety_metrics):
    helpfulness = gold_benign, harmlessness = 1 - harmful_compliance.
    Test: tests/test_plot.py::test_safety_points_and_figure"""
    out = []
    for source, res in results.items():
        for name, m in res.get("policies", {}).items():
            keys = ("gold_benign", "harmful_compliance", "over_refusal")
            if all(isinstance(m.get(k), (int, float)) for k in keys):
                out.append((name, source, m["gold_benign"], 1.0 - m["harmful_compliance"],
                            m["over_refusal"]))
    return out


def plot_safety(points, path, dpi=120):
    """
    The figure of helpful and harmless, "the one a reader looks at first": left, harmlessness
    (1 - the share of harmful requests complied with) against helpfulness (the gold reward on
    the benign families), a marker per policy and source (seed), its size the over-refusal of
    the harmless lookalikes; right, harmlessness against over-refusal (XSTest's trade-off). The
    best policies sit top right on the left and top left on the right. points: safety_points'.
    Returns path, or None without points.
    """
    if not points:
        return None
    plt = import_pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    names = list(dict.fromkeys(p[0] for p in points))
    for i, name in enumerate(names):
        pts = [p for p in points if p[0] == name]
        for a, xs in ((ax, [p[2] for p in pts]), (ax2, [p[4] for p in pts])):
            a.scatter(xs, [p[3] for p in pts], s=[40 + 600 * p[4] for p in pts] if a is ax else 40,
                      color=f"C{i % 10}", alpha=0.7, edgecolors="k", linewidths=0.5, label=name)
            for x, p in zip(xs, pts):
                a.annotate(name, (x, p[3]), fontsize=7, textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("helpfulness: gold reward on the benign families")
    ax.set_ylabel("harmlessness: 1 - harmful requests complied with")
    ax.set_title("Helpful and harmless (marker size: over-refusal)", fontsize=10)
    ax2.set_xlabel("over-refusal: harmless lookalikes refused")
    ax2.set_ylabel("harmlessness: 1 - harmful requests complied with")
    ax2.set_title("The price of harmlessness: over-refusal", fontsize=10)
    for a in (ax, ax2):
        a.grid(alpha=0.3)
        a.set_ylim(-0.05, 1.05)
    ax2.set_xlim(-0.05, 1.05)
    handles, labels = ax2.get_legend_handles_labels()
    ax2.legend(handles[:len(names)], labels[:len(names)], fontsize=8, loc="best")
    sources = list(dict.fromkeys(p[1] for p in points))
    if len(sources) > 1:
        fig.suptitle(f"one marker per policy and eval dir ({len(sources)}: "
                     f"{', '.join(os.path.basename(os.path.dirname(s) or s) for s in sources)})",
                     fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_dose(rows, path, dpi=120):
    """
    dose.py's figure: harmful compliance, over-refusal and benign gold against the share of
    refusal demonstrations in SFT, a line per policy (sft before RLHF, ppo and dpo after).
    rows: [dict(dose, policy, harmful_compliance, over_refusal, gold_benign)]. Returns path, or
    None without rows.
    """
    if not rows:
        return None
    plt = import_pyplot()
    panels = [("harmful_compliance", "harmful requests complied with"),
              ("over_refusal", "harmless lookalikes refused (over-refusal)"),
              ("gold_benign", "gold reward on the benign families")]
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4))
    for i, policy in enumerate(dict.fromkeys(r["policy"] for r in rows)):
        pts = sorted((r for r in rows if r["policy"] == policy), key=lambda r: r["dose"])
        for ax, (key, title) in zip(axes, panels):
            keep = [r for r in pts if r.get(key) is not None]
            ax.plot([100 * r["dose"] for r in keep], [r[key] for r in keep], "o-",
                    color=f"C{i % 10}", label=policy)
            ax.set_title(title, fontsize=10)
    for ax in axes:
        ax.set_xlabel("refusal demonstrations in SFT (% of harmful requests)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_frontier(curves, path, dpi=120):
    """
    frontier.py's figure. Left: gold reward against KL(pi || pi_ref), a curve per method from the
    SFT policy (KL 0) outwards, error bars of both. Right: for PPO and best-of-N, the gold gain
    over the SFT policy and the RM score against d = sqrt(KL), with Gao et al.'s fitted forms
    d (a - b d) (best-of-N) and d (a - b log d) (RL). Returns path.
    """
    plt = import_pyplot()
    ref = curves["_reference"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    methods = [m for m in curves if m != "_reference"]
    for i, m in enumerate(methods):
        pts = curves[m]["points"]
        ax.errorbar([0.0] + [p["kl"] for p in pts], [ref["gold"]] + [p["gold"] for p in pts],
                    xerr=[0.0] + [p.get("kl_stderr") or 0.0 for p in pts],
                    yerr=[0.0] + [p["gold_stderr"] or 0.0 for p in pts], fmt="o-" if m != "bon"
                    else "^:", color=f"C{i}", capsize=2, markersize=4, label=m)
    ax.set_xlabel("KL(policy || SFT policy), nats per answer (best-of-N: its bound)")
    ax.set_ylabel("gold reward (held-out prompts)")
    ax.set_title("Reward-KL frontier", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    for m in (m for m in ("ppo", "bon") if m in curves):
        i = methods.index(m)  # the left panel's colour for the method
        pts, fit = curves[m]["points"], curves[m].get("gao_fit")
        d = [math.sqrt(max(p["kl"], 0.0)) for p in pts]
        ax2.plot(d, [p["gold"] - ref["gold"] for p in pts], "o" if m == "ppo" else "^",
                 color=f"C{i}", label=f"{m}: gold gain")
        ax2.plot(d, [p["rm"] - ref["rm"] for p in pts], "s" if m == "ppo" else "v", color=f"C{i}",
                 alpha=0.5, label=f"{m}: RM score gain")
        if fit:
            a, b = fit
            xs = [max(d) * j / 50 for j in range(1, 51)]
            ys = [x * (a - b * (x if m == "bon" else math.log(x))) for x in xs]
            ax2.plot(xs, ys, "--", color=f"C{i}", linewidth=1,
                     label=f"{m}: d(a - b{' d' if m == 'bon' else ' log d'}), a={a:.2f} b={b:.2f}")
    ax2.set_xlabel("d = sqrt(KL)")
    ax2.set_ylabel("gain over the SFT policy")
    ax2.set_title("Over-optimisation with Gao et al.'s fits", fontsize=10)
    ax2.grid(alpha=0.3)
    if ax2.get_legend_handles_labels()[0]:  # without PPO and best-of-N the panel stays empty
        ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_tokens(path, samples, dpi=120):
    """
    Credit assignment per token: for each logged sample (tokens.jsonl records: 'tokens' and lists
    of per-token numbers, e.g. PPO's kl, value, advantage, reward; DPO's tokens_chosen and
    log_ratio_chosen), one row per quantity, each token a cell coloured by its value (blue < 0 <
    red), the token's text on it. Returns path, or None without samples.
    """
    rows = []  # (label, tokens, values)
    for s in samples:
        for key, values in s.items():
            if key.startswith("tokens") or not isinstance(values, list):
                continue
            tokens = s.get("tokens") or s.get("tokens_" + key.split("_")[-1])
            if tokens and len(tokens) == len(values):
                rows.append((f"step {s['step']}: {key}", tokens, values))
    if not rows:
        return None
    plt = import_pyplot()
    width = max(len(t) for _, t, _ in rows)
    fig, axes = plt.subplots(len(rows), 1, figsize=(min(0.32 * width + 2, 40), 0.7 * len(rows) + 0.6),
                             squeeze=False)
    for ax, (label, tokens, values) in zip(axes[:, 0], rows):
        lim = max(max(abs(v) for v in values), 1e-6)
        ax.imshow([values], cmap="coolwarm", vmin=-lim, vmax=lim, aspect="auto")
        for j, tok in enumerate(tokens):
            ax.text(j, 0, tok.replace("\n", "\\n") or " ", ha="center", va="center", fontsize=6)
        ax.set_yticks([])
        ax.set_xticks([])
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def main(argv=None):
    cfg = parse_config(DEFAULTS, argv, __doc__)
    import_pyplot()  # fail at once, before reading anything, when matplotlib is missing
    os.makedirs(cfg.out_dir, exist_ok=True)
    written = {}
    for log in sorted(glob.glob(os.path.join(cfg.runs, f"*_{cfg.tag}", "log.jsonl"))):
        name = os.path.basename(os.path.dirname(log))[:-len(cfg.tag) - 1]
        records = read_log(log)
        kind = name.split("_")[0] if name.split("_")[0] in FIGURES else run_kind(records)
        if kind is None:
            print(f"{name}: {log} holds none of the plotted metrics, skipped")
            continue
        title, xlabel, panels = FIGURES[kind]
        path = plot_log(records, f"{title}: {name}", xlabel, panels,
                        os.path.join(cfg.out_dir, f"{name}.png"), cfg.dpi)
        if path is not None:
            written[name] = path
        tokens = os.path.join(os.path.dirname(log), "tokens.jsonl")
        if os.path.isfile(tokens):  # the first logged step's samples and the last one's
            samples = read_log(tokens)
            steps = sorted({s["step"] for s in samples})
            chosen = [s for s in samples if s["step"] in (steps[0], steps[-1])][:6]
            path = plot_tokens(os.path.join(cfg.out_dir, f"{name}_tokens.png"), chosen, cfg.dpi)
            if path is not None:
                written[f"{name}_tokens"] = path
    if not written:
        print(f"no run logs in {cfg.runs}/*_{cfg.tag}/log.jsonl")
    sweep_path = os.path.join(cfg.eval_dir or os.path.join(cfg.runs, "eval"), "overoptimization.json")
    if os.path.isfile(sweep_path):
        with open(sweep_path) as f:
            path = plot_overoptimization(json.load(f), os.path.join(cfg.out_dir,
                                         "overoptimization.png"), cfg.dpi)
        if path is not None:
            written["overoptimization"] = path
    else:
        print(f"overoptimization: no {sweep_path} (run eval.py --sweep=...), skipped")
    sources = [d.strip() for d in cfg.safety.split(",") if d.strip()] or \
        [cfg.eval_dir or os.path.join(cfg.runs, "eval")]
    results = {}
    for d in sources:
        if os.path.isfile(os.path.join(d, "results.json")):
            with open(os.path.join(d, "results.json")) as f:
                results[d] = json.load(f)
    path = plot_safety(safety_points(results), os.path.join(cfg.out_dir, "safety.png"), cfg.dpi)
    if path is not None:
        written["safety"] = path
    for name, path in written.items():
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    config.cli(main)
