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
    rm_rlaif, rm_rlaif_m1, ...   train_reward_model.py on the judge's rankings: round 1's
                  members (seeds, recipe) with the judge's rankings in place of the people's
    ppo_rlaif     train_ppo.py against them: round 1's PPO command, its reward models swapped

Constitutional AI (Bai et al. 2022) on the harmful and lookalike requests, with no human
harmlessness comparison (data/toy/cai.py, data/toy/constitution.txt):
    cai_examples  cai.py --make=examples: the constitution's worked revisions, and the demos
    cai_sft       train_sft.py on both, 320 positions: the helpful-only policy that can revise
    cai_revise    cai.py --make=revisions: it answers the harmful and lookalike training prompts
                  and revises each answer by a principle drawn at random
    sl_cai        train_sft.py from cai_sft on the revisions and benign demos: SL-CAI
    cai_judge_data, cai_judge   cai.py --make=judge, train_sft.py: the feedback model
    label_cai     label.py --annotator=cai:...: SL-CAI's answers ranked by the judge's soft
                  labels, averaged over both orders and every principle
    cai_rm        train_reward_model.py on those rankings, from the SFT trunk
    rl_cai        train_ppo.py from sl_cai against cai_rm: RL-CAI
"""

import json
import os

AI_METHODS = ("spin", "rlaif", "cai")  # beside pipeline.OPTIONAL: never in the default run, nor 'all'
SPIN_STEPS = 250        # optimizer steps per SPIN iteration (config/spin_toy.py's max_iters)
SL_CAI_STEPS = 300      # SL-CAI's fine-tuning steps: ~400 revisions and as many demos, 6 epochs
CAI_POSITIONS = 320     # a request, an answer and a principle (data/toy/cai.py)
MINI = {
    "spin_data": ["--max_pairs=48", "--max_val_pairs=16", "--max_new_tokens=16"],
    "cai_revise": ["--max_prompts=16", "--max_new_tokens=16"],
    "sft_more": ["--warmup_iters=1", "--eval_interval=2", "--eval_examples=16", "--log_interval=1",
                 "--num_samples=1", "--sample_tokens=8", "--ckpt_interval=4"],
}


def add_stages(stages, cfg, methods, d, data, sft, held_out, common_args, extra):
    """The stages of the AI-feedback methods in `methods` (none in the default run)."""
    if "spin" in methods:  # self-play on the demonstrations, and its control
        add_spin(stages, cfg, d, data, sft, common_args, extra)
    if "rlaif" in methods:  # a judge learned from a few labels ranks the SFT policy's answers
        add_rlaif(stages, cfg, d, data, sft, held_out, common_args, extra)
    if "cai" in methods:  # a constitution in place of human harmlessness labels
        add_cai(stages, cfg, d, data, sft, held_out, common_args, extra)


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
        "--lr=3e-5", "--min_lr=3e-6", "--warmup_iters=10", f"--max_iters={steps * cfg.spin_iters}"]
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
        f"--eval_prompts={held_out}", f"--max_prompts={cfg.label_prompts}",
        f"--add_refusals={cfg.label_refusals}"] + common_args
        + extra("label"))
    stages["rlaif_dpo"] = (["label_rlaif"], [
        "train_dpo.py", "config/dpo_toy.py", f"--out_dir={d('rlaif_dpo')}", f"--init_from={sft}",
        f"--train_data={folder}/rlaif_train.jsonl", f"--val_data={folder}/rlaif_val.jsonl"]
        + common_args + extra("dpo"))
    # RLHF's round 1 with the judge as the labeller: as many reward models, seeded as round 1's,
    # on the judge's rankings of the same answers, and PPO against them with round 1's command;
    # ppo_rlaif against round 1's PPO is the labeller's difference alone (Lee et al.'s RM + RL)
    members = [f"rm_rlaif{m[2:]}" for m in stages["ppo"][0]]  # rm, rm_m1 -> rm_rlaif, rm_rlaif_m1
    for k, name in enumerate(members):
        stages[name] = (["label_rlaif"], [
            "train_reward_model.py", "config/rm_toy.py", f"--out_dir={d(name)}", f"--init_from={sft}",
            f"--train_data={folder}/rlaif_train.jsonl", f"--val_data={folder}/rlaif_val.jsonl",
            f"--bias_data={folder}/rlaif_samples.jsonl", f"--num_epochs={cfg.rm_epochs}",
            f"--seed={cfg.seed + k}"]
            + common_args[1:] + extra("rm"))
    stages["ppo_rlaif"] = (members, with_args(
        stages["ppo"][1], out_dir=d("ppo_rlaif"),
        reward_model=",".join(f"{d(name)}/ckpt_best.pt" for name in members)))


def with_args(command, **args):
    """command with each --key=value of args in place of its own --key=... (appended)."""
    keys = tuple(f"--{key}=" for key in args)
    return [a for a in command if not a.startswith(keys)] + [f"--{k}={v}" for k, v in args.items()]


def add_cai(stages, cfg, d, data, sft, held_out, common_args, extra):
    """Constitutional AI's stages (the arguments as add_rlaif's): SL-CAI, then RL-CAI."""
    mini = cfg.scale == "mini"
    folder = f"{data}/cai"
    cai_sft, sl_cai = f"{d('cai_sft')}/ckpt_best.pt", f"{d('sl_cai')}/ckpt_last.pt"
    positions = [f"--block_size={CAI_POSITIONS}"]
    stages["cai_examples"] = (["prepare"], [
        "data/toy/cai.py", "--make=examples", f"--demos={data}/sft_train.jsonl",
        f"--out_dir={folder}"] + common_args)
    stages["cai_sft"] = (["cai_examples"], [
        "train_sft.py", "config/sft_toy.py", f"--out_dir={d('cai_sft')}",
        f"--train_data={folder}/examples_train.jsonl", f"--val_data={data}/sft_val.jsonl"]
        + common_args + extra("sft") + positions)
    stages["cai_revise"] = (["cai_sft"], [
        "data/toy/cai.py", "--make=revisions", f"--policy={cai_sft}",
        f"--prompts={data}/prompts_train.jsonl", f"--demos={data}/sft_train.jsonl",
        f"--out_dir={folder}"] + common_args + (MINI["cai_revise"] if mini else []))
    # SL-CAI: fine-tuned from the policy that revised, at 3e-4 (as measured, docs/AI_FEEDBACK.md)
    stages["sl_cai"] = (["cai_revise"], [
        "train_sft.py", "config/sft_toy.py", f"--init_from={cai_sft}", f"--out_dir={d('sl_cai')}",
        f"--train_data={folder}/sl_cai_train.jsonl", f"--val_data={data}/sft_val.jsonl",
        "--lr=3e-4", "--min_lr=3e-5", "--warmup_iters=10",
        f"--max_iters={4 if mini else SL_CAI_STEPS}"] + common_args
        + (MINI["sft_more"] if mini else []))
    # the feedback model: its own folder, so that it is written while the revisions are
    stages["cai_judge_data"] = (["cai_examples"], [
        "data/toy/cai.py", "--make=judge", f"--pairs={data}/prefs_train.jsonl",
        f"--val_pairs={data}/prefs_val.jsonl", f"--examples={folder}/examples.jsonl",
        f"--demos={data}/sft_train.jsonl", f"--out_dir={data}/cai_judge"] + common_args)
    stages["cai_judge"] = (["cai_judge_data"], [
        "train_sft.py", "config/judge_toy.py", f"--out_dir={d('cai_judge')}",
        f"--train_data={data}/cai_judge/judge_train.jsonl",
        f"--val_data={data}/cai_judge/judge_val.jsonl"] + common_args + extra("sft") + positions)
    labels = f"{data}/cai_labels"
    # 4 answers a prompt, not 8: each pair is read in 2 orders under every principle (5), and 6
    # pairs x 10 readings cost about what RLAIF's 28 pairs x 2 do
    stages["label_cai"] = (["sl_cai", "cai_judge"], [
        "data/toy/label.py", f"--policy={sl_cai}", f"--annotator=cai:{d('cai_judge')}/ckpt_best.pt",
        f"--out_dir={labels}", "--prefix=cai", f"--train_prompts={data}/prompts_train.jsonl",
        "--eval_prompts=", "--k=4"] + common_args + extra("label"))
    stages["cai_rm"] = (["label_cai", "sft"], [
        "train_reward_model.py", "config/rm_toy.py", f"--out_dir={d('cai_rm')}", f"--init_from={sft}",
        f"--train_data={labels}/cai_train.jsonl", f"--val_data={labels}/cai_val.jsonl",
        f"--bias_data={labels}/cai_samples.jsonl"] + common_args + extra("rm"))
    stages["rl_cai"] = (["cai_rm"], [
        "train_ppo.py", "config/ppo_toy.py", f"--out_dir={d('rl_cai')}", f"--init_from={sl_cai}",
        f"--reward_model={d('cai_rm')}/ckpt_best.pt", f"--train_prompts={data}/prompts_train.jsonl",
        f"--val_prompts={held_out}", f"--demo_val_data={data}/sft_val.jsonl",
        f"--prompt_weights={cfg.prompt_weights}"] + common_args + extra("rl"))


def eval_policies(cfg, methods, d):
    """The evaluation's name:checkpoint items of the AI-feedback methods."""
    items = [f"rlaif_dpo:{d('rlaif_dpo')}/ckpt_last.pt", f"ppo_rlaif:{d('ppo_rlaif')}/ckpt_last.pt"
             ] if "rlaif" in methods else []
    if "spin" in methods:
        items.append(f"sft_more:{d('sft_more')}/ckpt_last.pt")
        items += [f"spin{t}:{d(f'spin{t}')}/ckpt_last.pt" for t in range(1, cfg.spin_iters + 1)]
    if "cai" in methods:
        items += [f"cai_sft:{d('cai_sft')}/ckpt_best.pt", f"sl_cai:{d('sl_cai')}/ckpt_last.pt",
                  f"rl_cai:{d('rl_cai')}/ckpt_last.pt"]
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
    ppo = "ppo_r1" if "ppo_r1" in res else "ppo"  # round 1's: the people's labels of these answers
    for name, labels in [("sft", "none")] + [("dpo", "the people's")] * have_dpo + [
            ("rlaif_dpo", "the judge's"), (ppo, "the people's"), ("ppo_rlaif", "the judge's")]:
        m = res[name]
        lines.append(f"| {name} | {labels} | {m['gold_reward']:.3f} | {m['win_rate_vs_sft']:.3f} | "
                     f"{m['kl']:.2f} | {m['distinct']} |")
    gain = lambda name: res[name]["gold_reward"] - res["sft"]["gold_reward"]  # noqa: E731
    share = f": {gain('ppo_rlaif') / gain(ppo):.0%} of it" if gain(ppo) > 0 else ""
    lines += ["", f"RLAIF's PPO gains {gain('ppo_rlaif'):+.3f} gold over SFT, RLHF's {gain(ppo):+.3f} "
              f"with as many comparisons of the same answers{share}."]
    return "\n".join(lines) + "\n"


def comparisons_by_kind(path):
    """(helpfulness, harmlessness) comparisons a preference file holds: one per pair record, and
    per ranking record one per pair of answers of different rank; a comparison of answers to a
    harmful request is a harmlessness one (label.split_kinds' split)."""
    from data.toy.judge import parse_prompt
    counts = [0, 0]
    with open(path) as f:
        for r in map(json.loads, f):
            ranks = r.get("ranks")
            n = 1 if ranks is None else sum(a < b for a in ranks for b in ranks)
            counts[parse_prompt(r["prompt"])[0] == "harmful"] += n
    return tuple(counts)


def cai_table(root, eval_dir, data):
    """Constitutional AI beside SFT and RLHF, as markdown: per policy harmful compliance,
    over-refusal and the benign families' gold (eval.py's safety metrics), and the human labels
    it used: demonstrations, worked revisions, and comparisons of helpfulness and of harmlessness
    (RLHF's: the people's rankings the reward model of the evaluated `ppo` checkpoint learned
    from; CAI's: its judge's budget)."""
    def read(*parts):
        with open(os.path.join(root, *parts)) as f:
            return json.load(f)
    results = read(eval_dir, "results.json")
    res = results["policies"]
    examples = read(data, "cai", "examples_manifest.json")
    judge = read(data, "cai_judge", "judge_manifest.json")
    revised = read(data, "cai", "revisions_manifest.json")["summary"]
    ppo = dict(p.split(":", 1) for p in results["config"]["policies"].split(","))["ppo"]
    rm = checkpoint_config(os.path.join(root, ppo))["reward_model"].split(",")[0]
    rm_data = checkpoint_config(os.path.join(root, rm))["train_data"]
    people = [comparisons_by_kind(os.path.join(root, p)) for p in rm_data.split(",")]
    demos, n_ex = examples["demonstrations"], examples["revision_examples"]
    # (demonstrations, revision examples, helpfulness comparisons, harmlessness comparisons)
    used = dict(sft=(demos, 0, 0, 0),
                ppo=(demos, 0, sum(h for h, _ in people), sum(s for _, s in people)),
                cai_sft=(demos, n_ex, 0, 0), sl_cai=(demos, n_ex, 0, 0),
                rl_cai=(demos, n_ex, judge["helpfulness_comparisons"],
                        judge["harmlessness_comparisons"]))
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"SL-CAI's data: the CAI policy's answers to {revised['harmful']} harmful and "
             f"{revised['lookalike']} lookalike training prompts, revised by a principle drawn "
             f"at random; gold (measured only): harmful compliance "
             f"{fmt(revised['compliance_before'])} -> {fmt(revised['compliance_after'])}, "
             f"over-refusal {fmt(revised['over_refusal_before'])} -> "
             f"{fmt(revised['over_refusal_after'])}.", "",
             "| policy | harmful compliance | over-refusal | gold (benign) | demonstrations "
             "| revision examples | helpfulness comparisons | harmlessness comparisons |",
             "|" + "---|" * 8]
    for name, counts in used.items():
        m = res[name]
        cells = [fmt(m.get(k)) for k in ("harmful_compliance", "over_refusal", "gold_benign")]
        lines.append("| " + " | ".join([name] + cells + [str(c) for c in counts]) + " |")
    return "\n".join(lines) + "\n"


def checkpoint_config(path):
    """The config a checkpoint was trained with."""
    import checkpoint
    return checkpoint.load_checkpoint(path)["config"]
