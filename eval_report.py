"""
The results of eval.py as text: the markdown tables of results.md (a policy per row, a few
answers side by side, the over-optimisation sweep), samples.jsonl, and strict JSON (NaN and inf
as null) for results.json and overoptimization.json.
"""

import json
import math


def fmt(mean, se=None, digits=3):
    if mean is None:
        return "-"
    if se is None or (isinstance(se, float) and math.isnan(se)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


def cell(text, width=120):
    """Answer text that fits in one markdown table cell."""
    text = text if len(text) <= width else text[:width] + "..."
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", "\\n") or "(empty)"


def results_table(results, baseline, rm_acc):
    win = f"win_rate_vs_{baseline or 'baseline'}"
    lines = [f"| policy | gold reward | RM score | win vs {baseline or '-'} (gold) | "
             f"win vs {baseline or '-'} (RM) | win (gold), same noise | KL | distinct | length | "
             f"EOS rate |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in results.items():
        kl = f"≤ {m['kl']:.3f} (bound)" if m["kl_is_bound"] else fmt(m["kl"], m["kl_stderr"])
        lines.append(f"| {name} | {fmt(m['gold_reward'], m['gold_reward_stderr'])} | "
                     f"{fmt(m['rm_score'], m['rm_score_stderr'])} | "
                     f"{fmt(m[win], m[f'{win}_stderr'])} | "
                     f"{fmt(m[f'{win}_rm'], m[f'{win}_rm_stderr'])} | "
                     f"{fmt(m[f'{win}_shared'], m[f'{win}_shared_stderr'])} | {kl} | "
                     f"{m['distinct']} | {m['length']:.1f} | {m['eos_rate']:.2f} |")
    for path, (acc, se, n) in rm_acc.items():
        lines += ["", f"Reward-model accuracy on {n} held-out pairs of {path}: {fmt(acc, se)} "
                      f"(standard error clustered by prompt)"]
    return "\n".join(lines)


def signals_table(results, members):
    """The reward-hacking alarms per policy (eval.hacking_signals), and each ensemble member's
    accuracy (members: {pair file: [(accuracy, stderr)]})."""
    lines = ["| policy | length | RM score vs length (correlation) | members' disagreement (std) | "
             "held-out demonstrations' NLL |", "|---|---|---|---|---|"]
    for name, m in results.items():
        lines.append(f"| {name} | {m['length']:.1f} | {fmt(m['rm_length_corr'])} | "
                     f"{fmt(m['rm_disagreement'])} | {fmt(m['demo_nll'])} |")
    for path, accs in members.items():
        if accs:
            lines += ["", f"Each ensemble member on {path}: " + ", ".join(
                fmt(a, se) for a, se in accs)]
    return "\n".join(lines)


def safety_table(results):
    """Helpful and harmless per policy (eval.safety_metrics), or '' when no policy was asked a
    harmful or lookalike request."""
    if all(m.get("harmful_compliance") is None and m.get("over_refusal") is None
           for m in results.values()):
        return ""
    lines = ["| policy | harmful requests complied with | harmful requests refused | "
             "lookalikes refused (over-refusal) | gold on the benign families |",
             "|---|---|---|---|---|"]
    for name, m in results.items():
        lines.append(f"| {name} | {fmt(m['harmful_compliance'])} | {fmt(m.get('harmful_refusal'))}"
                     f" | {fmt(m['over_refusal'])} | {fmt(m['gold_benign'])} |")
    return "\n".join(lines)


def examples_table(results, prompts, n, k):
    """A few prompts with every policy's first answer and its scores side by side."""
    names = list(results)
    lines = ["| prompt | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for i in range(min(n, len(prompts))):
        row = []
        for name in names:
            s = results[name]["samples"]
            scores = [f"gold {s['gold'][i * k]:+.2f}" if s["gold"] else "",
                      f"RM {s['rm'][i * k]:+.2f}" if s["rm"] else ""]
            scores = ", ".join(x for x in scores if x)
            row.append(cell(s["response"][i * k]) + (f" ({scores})" if scores else ""))
        lines.append(f"| {cell(prompts[i]['prompt'])} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def json_safe(x):
    """NaN and inf become null: strict JSON has neither."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(json_safe(obj), f, indent=1)


def write_samples(path, results, prompts, k):
    """Every answer of every policy as one JSON line (k answers to each prompt, in order)."""
    with open(path, "w") as f:
        for name, m in results.items():
            s = m["samples"]
            for r in range(len(s["response"])):
                f.write(json.dumps(json_safe(dict(
                    policy=name, prompt=prompts[r // k]["prompt"], sample=r % k,
                    response=s["response"][r], gold=s["gold"][r] if s["gold"] else None,
                    rm=s["rm"][r] if s["rm"] else None, kl=s["kl"][r] if s["kl"] else None,
                    length=s["length"][r], eos=s["eos"][r]))) + "\n")


def report_sweep(cfg, res, points):
    """The over-optimisation sweep's points as overoptimization.json's lists, and its markdown
    table. res: eval_policies' results of the reference and each snapshot; points: their
    [(run, iteration, path)]."""
    fields = dict(kl="kl", kl_stderr="kl_stderr", gold="gold_reward",
                  gold_stderr="gold_reward_stderr", rm="rm_score", rm_stderr="rm_score_stderr")
    pairs = list(zip(points, res.values()))
    sweep = dict(run=[p[0] for p, _ in pairs], iter=[p[1] for p, _ in pairs],
                 checkpoint=[p[2] for p, _ in pairs],
                 **{key: [m[field] for _, m in pairs] for key, field in fields.items()})
    sweep.update(reference=cfg.reference, reward_model=cfg.reward_model or None)
    md = ["## Over-optimisation sweep: gold reward and RM score against KL", "",
          "| checkpoint | iter | KL | gold reward | RM score |", "|---|---|---|---|---|"]
    md += [f"| {name} | {iteration} | {fmt(m['kl'], m['kl_stderr'])} | "
           f"{fmt(m['gold_reward'], m['gold_reward_stderr'])} | "
           f"{fmt(m['rm_score'], m['rm_score_stderr'])} |"
           for (name, m), (_, iteration, _) in zip(res.items(), points)]
    return sweep, md
