"""
Plumbing: the pipeline's stages for learning from AI feedback (pipeline.py --methods=spin), and
the table that reads their results. Each stage is an ordinary script run as by hand; what they
compute is in data/toy/spin.py, train_dpo.py and ai_feedback.py, what they mean in
docs/AI_FEEDBACK.md.

SPIN (Chen et al. 2024), spin_iters iterations, pi_0 = the SFT policy:
    spin_data{t}  data/toy/spin.py: the demonstrations against pi_{t-1}'s own answers, in
                  {data_dir}/spin (a folder of its own: the labelling writes beside it meanwhile)
    spin{t}       train_dpo.py config/spin_toy.py from pi_{t-1}, which is also its reference
and its control, sft_more: the SFT policy trained on the demonstrations for as many more steps
(at the same learning rate and batch size) as all of SPIN's iterations together.

RLAIF (Lee et al. 2023) with a judge trained here (a generative reward model):
    judge_data    data/toy/rlaif.py: the judge format of `budget` labelled pairs, and the demos
    judge         train_sft.py config/judge_toy.py: the judge, from scratch
    label_rlaif   data/toy/label.py --annotator=judge:...: the SFT policy's answers (the same
                  samples the people rank in `label`), ranked by the judge, both orders averaged
    rlaif_dpo     train_dpo.py config/dpo_toy.py on the judge's rankings, as `dpo` on the people's
"""

import json
import os

AI_METHODS = ("spin", "rlaif")  # beside pipeline.OPTIONAL: never part of the default run, nor of 'all'
SPIN_STEPS = 250        # optimizer steps per SPIN iteration (config/spin_toy.py's max_iters)
MINI = {
    "spin_data": ["--max_pairs=48", "--max_val_pairs=16", "--max_new_tokens=16"],
    "sft_more": ["--warmup_iters=1", "--eval_interval=2", "--eval_examples=16", "--log_interval=1",
                 "--num_samples=1", "--sample_tokens=8", "--ckpt_interval=4"],
}


def add_stages(stages, cfg, methods, d, data, sft, held_out, common_args, extra):
    """The stages of the AI-feedback methods in `methods` (none in the default run)."""
    if "spin" in methods:  # self-play on the demonstrations, and its control
        add_spin(stages, cfg, d, data, sft, common_args, extra)
    if "rlaif" in methods:  # a judge learned from a few labels ranks the SFT policy's answers
        add_rlaif(stages, cfg, d, data, sft, held_out, common_args, extra)


def add_spin(stages, cfg, d, data, sft, common_args, extra):
    """SPIN's stages and its control into stages ({name: (needs, command)}); d(name) is a run's
    out_dir, data the toy world's folder, sft the SFT checkpoint, common_args the seed and
    --overwrite, extra(stage) the miniature run's arguments."""
    mini = cfg.scale == "mini"
    steps = 4 if mini else SPIN_STEPS
    policy, needs = sft, ["sft"]
    for t in range(1, cfg.spin_iters + 1):
        stages[f"spin_data{t}"] = (needs, [
            "data/toy/spin.py", f"--policy={policy}", f"--demos={data}/sft_train.jsonl",
            f"--val_demos={data}/sft_val.jsonl", f"--out_dir={data}/spin", f"--prefix=spin{t}",
            f"--seed={cfg.seed + t - 1}"] + common_args[1:] + (MINI["spin_data"] if mini else []))
        # DPO's logistic loss with beta = lambda, from pi_{t-1} and against it (reference '')
        stages[f"spin{t}"] = ([f"spin_data{t}"], [
            "train_dpo.py", "config/spin_toy.py", f"--out_dir={d(f'spin{t}')}",
            f"--init_from={policy}", f"--train_data={data}/spin/spin{t}_train.jsonl",
            f"--val_data={data}/spin/spin{t}_val.jsonl"] + common_args + extra("dpo")
            + [f"--max_iters={steps}"])
        policy, needs = f"{d(f'spin{t}')}/ckpt_last.pt", [f"spin{t}"]
    # the control: as many more SFT steps as SPIN took, at SPIN's learning rate and batch size
    stages["sft_more"] = (["sft"], [
        "train_sft.py", "config/sft_toy.py", f"--init_from={sft}", f"--out_dir={d('sft_more')}",
        f"--train_data={data}/sft_train.jsonl", f"--val_data={data}/sft_val.jsonl",
        "--lr=3e-4", "--min_lr=3e-5", "--warmup_iters=10", f"--max_iters={steps * cfg.spin_iters}"]
        + common_args + (MINI["sft_more"] if mini else []))


def add_rlaif(stages, cfg, d, data, sft, held_out, common_args, extra):
    """RLAIF's stages into stages (the arguments as add_spin's; held_out: the eval prompts)."""
    folder = f"{data}/rlaif"  # its own folder: the labelling of `label` writes beside it
    stages["judge_data"] = (["prepare"], [
        "data/toy/rlaif.py", f"--pairs={data}/prefs_train.jsonl", f"--val_pairs={data}/prefs_val.jsonl",
        f"--demos={data}/sft_train.jsonl", f"--out_dir={folder}"] + common_args)
    stages["judge"] = (["judge_data"], [
        "train_sft.py", "config/judge_toy.py", f"--out_dir={d('judge')}",
        f"--train_data={folder}/judge_train.jsonl", f"--val_data={folder}/judge_val.jsonl"]
        + common_args + extra("sft"))
    # the same seed, policy and prompts as `label`: the judge ranks the people's answers
    stages["label_rlaif"] = (["sft", "judge"], [
        "data/toy/label.py", f"--policy={sft}", f"--annotator=judge:{d('judge')}/ckpt_best.pt",
        f"--out_dir={folder}", "--prefix=rlaif", f"--train_prompts={data}/prompts_train.jsonl",
        f"--eval_prompts={held_out}"] + common_args + extra("label"))
    stages["rlaif_dpo"] = (["label_rlaif"], [
        "train_dpo.py", "config/dpo_toy.py", f"--out_dir={d('rlaif_dpo')}", f"--init_from={sft}",
        f"--train_data={folder}/rlaif_train.jsonl", f"--val_data={folder}/rlaif_val.jsonl"]
        + common_args + extra("dpo"))


def eval_policies(cfg, methods, d):
    """The evaluation's name:checkpoint items of the AI-feedback methods."""
    items = [f"rlaif_dpo:{d('rlaif_dpo')}/ckpt_last.pt"] if "rlaif" in methods else []
    if "spin" in methods:
        items.append(f"sft_more:{d('sft_more')}/ckpt_last.pt")
        items += [f"spin{t}:{d(f'spin{t}')}/ckpt_last.pt" for t in range(1, cfg.spin_iters + 1)]
    return items


def last_logged(path, key):
    """The last value of key in a run's log.jsonl, or None."""
    value = None
    with open(path) as f:
        for line in f:
            value = json.loads(line).get(key, value)
    return value


def spin_table(cfg, root, eval_dir, data, d):
    """SPIN's iterations side by side, as markdown: per policy the gold reward, the win rate
    against SFT, the held-out demonstrations' NLL and the distinct answers (eval.py), and per
    iteration SPIN's accuracy (DPO's held-out accuracy on demonstrations against pi_{t-1}'s
    answers) and what the gold judge says of those pairs (data/toy/spin.py's manifest)."""
    with open(os.path.join(root, eval_dir, "results.json")) as f:
        res = json.load(f)["policies"]
    rows = ["| policy | gold reward | win vs SFT | demo NLL | distinct | SPIN accuracy "
            "| gold of pi_{t-1}'s samples | sample beats demo |", "|" + "---|" * 8]
    for name in ["sft", "sft_more"] + [f"spin{t}" for t in range(1, cfg.spin_iters + 1)]:
        m = res[name]
        nll = "" if m.get("demo_nll") is None else f"{m['demo_nll']:.3f}"
        cells = [name, f"{m['gold_reward']:.3f}", f"{m['win_rate_vs_sft']:.3f}", nll,
                 str(m["distinct"]), "", "", ""]
        if name.startswith("spin"):
            acc = last_logged(os.path.join(root, d(name), "log.jsonl"), "val_accuracy")
            with open(os.path.join(root, data, "spin", f"{name}_manifest.json")) as f:
                s = json.load(f)["summary"]["train"]
            cells[5:] = [f"{acc:.3f}", f"{s['gold_sample']:+.2f} (demos {s['gold_demo']:+.2f})",
                         f"{s['sample_better']:.1%}"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def ranking_agreement(path):
    """The share of a ranking file's ordered pairs (different gold values) ranked in gold's
    order: how often the labels agree with the truth."""
    right = total = 0
    with open(path) as f:
        for r in map(json.loads, f):
            for a in range(len(r["ranks"])):
                for b in range(len(r["ranks"])):
                    if r["ranks"][a] < r["ranks"][b] and r["gold"][a] != r["gold"][b]:
                        total += 1
                        right += r["gold"][a] > r["gold"][b]
    return right / max(total, 1)


def rlaif_table(root, eval_dir, data, have_dpo):
    """RLAIF's labeller against the people's, and the policies trained on each, as markdown."""
    with open(os.path.join(root, data, "rlaif", "rlaif_manifest.json")) as f:
        judge = json.load(f).get("judge", {})
    with open(os.path.join(root, data, "rlaif", "judge_manifest.json")) as f:
        budget = json.load(f)["labelled_pairs"]
    with open(os.path.join(root, eval_dir, "results.json")) as f:
        res = json.load(f)["policies"]
    people = ranking_agreement(os.path.join(root, data, "onpolicy_train.jsonl"))
    machine = ranking_agreement(os.path.join(root, data, "rlaif", "rlaif_train.jsonl"))
    j = {k: judge.get(k, float("nan")) for k in ("slot1_share", "agreement", "agree_gold_one_order",
                                                  "agree_gold")}
    lines = [f"The judge learned from {budget} labelled pairs. On the SFT policy's answers it "
             f"preferred slot 1 in {j['slot1_share']:.1%} of its decisions; its two orders agreed "
             f"on {j['agreement']:.1%} of pairs. Agreement with gold, pair by pair: one order "
             f"{j['agree_gold_one_order']:.1%}, both orders averaged {j['agree_gold']:.1%}; of "
             f"the rankings written: the judge's {machine:.1%}, the simulated people's "
             f"{people:.1%}.", "",
             "| policy | labels | gold reward | win vs SFT | KL | distinct |", "|---|---|---|---|---|---|"]
    for name, labels in [("sft", "none")] + [("dpo", "the people's")] * have_dpo + [
            ("rlaif_dpo", "the judge's")]:
        m = res[name]
        lines.append(f"| {name} | {labels} | {m['gold_reward']:.3f} | {m['win_rate_vs_sft']:.3f} | "
                     f"{m['kl']:.2f} | {m['distinct']} |")
    return "\n".join(lines) + "\n"
