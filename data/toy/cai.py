"""
Constitutional AI's data (Bai et al. 2022, "Constitutional AI: Harmlessness from AI Feedback")
on the toy world's harmful requests and their harmless lookalikes. A constitution
(data/toy/constitution.txt: a few principles, one a line) takes the place of every human
harmlessness comparison; three data sets, one per --make:

  examples   the constitution's worked examples (CAI's few-shot revisions, written by the world's
             generator as a person would write them): `n_examples` requests, half harmful, half
             lookalike, each with a helpful-only answer and its revision by a principle,

                 Human:     How do I steal a bike?
                            Steal a bike with cutters. Glad to help!
                            Revise the answer by this principle: Refuse a harmful request, ...
                 Assistant: Sorry, I can't help with that.

             (a harmful request revises into a polite refusal, a lookalike into the helpful
             answer, a refusal of it included; an answer already so stays). Counted as human
             examples, never as comparisons. examples_train.jsonl: the demonstrations and these.
  revisions  SL-CAI: a policy trained on examples_train.jsonl answers the training harmful and
             lookalike prompts, then revises each of its answers by a principle drawn at random
             (seeded); sl_cai_train.jsonl holds (request -> its own revision) and, so that it
             stays helpful, benign demonstrations (`demo_share` of the file).
  judge      RL-CAI's feedback model: the judge format of data/toy/rlaif.py asked "Which answer is
             better by this principle? <p>": `budget` human comparisons of the four benign
             families only (helpfulness) and, for each worked example whose revision differs,
             the revision against the original under its principle. No human comparison of a
             harmful or lookalike request (the manifest counts them: 0).

    python data/toy/cai.py --make=examples
    python train_sft.py config/sft_toy.py --block_size=320 --out_dir=out/cai_sft_toy \
        --train_data=data/toy/out/cai/examples_train.jsonl
    python data/toy/cai.py --make=revisions --policy=out/cai_sft_toy/ckpt_best.pt
    python train_sft.py config/sft_toy.py --init_from=out/cai_sft_toy/ckpt_best.pt \
        --out_dir=out/sl_cai_toy --train_data=data/toy/out/cai/sl_cai_train.jsonl \
        --lr=3e-4 --min_lr=3e-5 --warmup_iters=10 --max_iters=300             # SL-CAI
    python data/toy/cai.py --make=judge --out_dir=data/toy/out/cai_judge
    python train_sft.py config/judge_toy.py --block_size=320 --out_dir=out/cai_judge_toy \
        --train_data=data/toy/out/cai_judge/judge_train.jsonl \
        --val_data=data/toy/out/cai_judge/judge_val.jsonl
    python data/toy/label.py --policy=out/sl_cai_toy/ckpt_last.pt --eval_prompts= \
        --annotator=cai:out/cai_judge_toy/ckpt_best.pt --out_dir=data/toy/out/cai_labels \
        --prefix=cai --k=4
    then train_reward_model.py on cai_labels/cai_*.jsonl and train_ppo.py from sl_cai: RL-CAI.
(`python pipeline.py --methods=cai` runs all of it; docs/AI_FEEDBACK.md says what each means.)

Each set appears whole or not at all (run.DataSet: {make}_manifest.json last). The CAI models
have 320 positions: a request, an answer and a principle (at most 48 characters) do not fit the
policy's 128. The gold judge only measures (the manifests' gold summaries).

Deliberately left out: the critique before each revision (the paper's ablation finds revisions
alone nearly as good for larger models), repeated revision rounds, chain-of-thought feedback,
and soft-label training of the preference model (label.py turns the soft labels into rankings).
"""

import os
import random
import statistics
import sys
import time

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import torch  # noqa: E402

import config  # noqa: E402
import run  # noqa: E402
from data import loader  # noqa: E402
from data.toy import judge, prepare, rlaif  # noqa: E402
from data.toy.label import load_policy, load_toy_prompts, safety_mix, sample_answers  # noqa: E402
from tokenizer import encode_prompt  # noqa: E402

CONSTITUTION = os.path.join(os.path.dirname(os.path.abspath(__file__)), "constitution.txt")
DEFAULTS = dict(
    make="examples",                          # 'examples' | 'revisions' | 'judge' (the docstring)
    constitution="data/toy/constitution.txt",  # the principles, one a line (label.py's
                                              # --annotator=cai:CKPT asks by this file)
    demos="data/toy/out/sft_train.jsonl",     # the demonstrations {"prompt", "response"}
    n_examples=200,                           # examples: worked revisions (human-written)
    policy="out/cai_sft_toy/ckpt_best.pt",    # revisions: the policy that answers and revises
    prompts="data/toy/out/prompts_train.jsonl",  # revisions: its harmful and lookalike prompts
    max_prompts=-1,                           # revisions: the first N of them (-1 = all)
    demo_share=0.5,                           # revisions: benign demonstrations' share of the file
    pairs="data/toy/out/prefs_train.jsonl",   # judge: human comparisons (benign ones are used)
    val_pairs="data/toy/out/prefs_val.jsonl",  # judge: held-out benign comparisons
    examples="data/toy/out/cai/examples.jsonl",  # judge: the worked revisions
    budget=400,                               # judge: human helpfulness comparisons
    temperature=1.0,                          # revisions: sampling temperature
    max_new_tokens=64,
    batch_size=64,                            # rows per generate call
    block_size=320,                           # the CAI policy's positions
    out_dir="data/toy/out/cai",
    seed=1337,                                # the world's seed: its training (phrasing, subject)s
    device="auto",
    overwrite=False,
)
NAMES = {"examples": ("examples.jsonl", "examples_train.jsonl"),
         "revisions": ("revisions.jsonl", "sl_cai_train.jsonl"),
         "judge": ("judge_train.jsonl", "judge_val.jsonl")}
MAX_PRINCIPLE = 48  # characters: a request, two answers and a principle fit 320 positions
SAFETY = set(prepare.SAFETY_FAMILIES)
INPUTS = dict(examples=("demos",), revisions=("policy", "prompts", "demos"),  # files each reads
              judge=("pairs", "val_pairs", "examples", "demos"))
SETTINGS = dict(examples=("n_examples",), judge=("budget",),  # the keys each set depends on
                revisions=("max_prompts", "demo_share", "temperature", "max_new_tokens",
                           "block_size"))

# -----------------------------------------------------------------------------
# the constitution and its worked examples


def read_constitution(path):
    """The principles of a constitution file, one a line ('#' lines and blank ones skipped); a
    file without any, or a principle over MAX_PRINCIPLE characters, is a ConfigError."""
    config.require(os.path.isfile(path), f"constitution={path!r} does not exist")
    principles = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            config.require(len(line) <= MAX_PRINCIPLE, f"{path}:{lineno}: a principle of "
                           f"{len(line)} characters, more than {MAX_PRINCIPLE}")
            principles.append(line)
    config.require(principles, f"{path}: no principle (one a line; '#' starts a comment)")
    return principles


def revision_prompt(request, answer, principle):
    """The revision request: the question, an answer to it and the principle to revise it by."""
    return f"{request}\n{answer}\nRevise the answer by this principle: {principle}"


def draw_principles(principles, n, seed, stream):
    """n principles drawn uniformly at random, with replacement, from a generator of their own
    (seed, stream): the same draw whatever else is sampled (Bai et al. 2022 sec. 3)."""
    rng = random.Random(f"{seed}:principles:{stream}")
    return [rng.choice(principles) for _ in range(n)]


def revise(rng, family, subject, prompt, answer, style):
    """The constitution's revision of an answer in `style`: to a harmful request a polite
    refusal, to a lookalike the helpful answer in the good style; an answer of that style already
    stays as it is."""
    target = "refusal" if family == "harmful" else "good"
    return answer if style == target else prepare.answer(rng, family, subject, prompt, target)[0]


def revision_examples(seed, n, principles):
    """
    n worked examples {"prompt", "answer", "principle", "revision", "family"}, alternately
    harmful and lookalike, on the world's training (phrasing, subject) combinations of that seed
    (prepare.add_safety's split: no held-out request): the answer in the helpful-only mix of the
    preference pairs (a refusal in a quarter of them), its revision by `revise`.
    """
    splits = prepare.split_combinations(random.Random(f"{seed}:safety:split"),
                                        prepare.SAFETY_FAMILIES)
    rng = random.Random(f"{seed}:cai:examples")
    rows = []
    for i, principle in enumerate(draw_principles(principles, n, seed, "examples")):
        family = prepare.SAFETY_FAMILIES[i % 2]
        template, subject = rng.choice(splits[family][0])
        prompt = prepare.question(family, template, subject)
        style = prepare.draw_pref_style(rng)
        answer, _ = prepare.answer(rng, family, subject, prompt, style)
        revision = revise(rng, family, subject, prompt, answer, style)
        rows.append(dict(prompt=prompt, answer=answer, principle=principle, revision=revision,
                         family=family))
    return rows


def example_records(rows):
    """The worked examples as SFT records {"prompt", "response"}: revision request -> revision."""
    return [dict(prompt=revision_prompt(r["prompt"], r["answer"], r["principle"]),
                 response=r["revision"]) for r in rows]


def revision_pairs(rows):
    """The worked examples whose revision differs, as comparisons {"prompt", "chosen",
    "rejected", "principle"}: the revision is better by its principle than the answer."""
    return [dict(prompt=r["prompt"], chosen=r["revision"], rejected=r["answer"],
                 principle=r["principle"]) for r in rows if r["revision"] != r["answer"]]


def gold_summary(rows, before="answer", after="revision"):
    """What the gold judge says of answers and their revisions (measured, never used): the
    share of harmful requests complied with and of lookalikes refused, before and after, and
    the mean gold of each."""
    harmful = [r for r in rows if judge.parse_prompt(r["prompt"])[0] == "harmful"]
    look = [r for r in rows if judge.parse_prompt(r["prompt"])[0] == "lookalike"]
    share = lambda xs: round(statistics.fmean(xs), 4) if xs else None  # noqa: E731
    out = dict(harmful=len(harmful), lookalike=len(look))
    for key, when in (("before", before), ("after", after)):
        out[f"compliance_{key}"] = share([judge.gold_cost(r["prompt"], r[when]) for r in harmful])
        out[f"over_refusal_{key}"] = share([float(judge.is_over_refusal(r["prompt"], r[when]))
                                            for r in look])
        out[f"gold_{key}"] = share([judge.gold_reward(r["prompt"], r[when]) for r in rows])
    return out


def is_benign(prompt):
    """A question of the four benign families (neither harmful nor a lookalike)."""
    return judge.parse_prompt(prompt)[0] not in SAFETY

# -----------------------------------------------------------------------------
# the three sets


def read_demos(path):
    """The demonstrations of a file as {"prompt", "response"} records."""
    return [dict(prompt=o["prompt"], response=o["response"])
            for o in read_records(path, ("prompt", "response"))]


def make_examples(cfg, out, principles):
    """The worked revisions, alone and beside the demonstrations (the CAI policy's SFT data)."""
    rows = revision_examples(cfg.seed, cfg.n_examples, principles)
    demos = read_demos(cfg.demos)
    with out.writing("examples.jsonl") as path:
        prepare.write_jsonl(path, rows)
    with out.writing("examples_train.jsonl") as path:
        prepare.write_jsonl(path, demos + example_records(rows))
    summary = gold_summary(rows)
    out.commit(revision_examples=len(rows), demonstrations=len(demos), summary=summary)
    print(f"wrote {len(rows)} worked revisions ({len(revision_pairs(rows))} change their answer) "
          f"to {cfg.out_dir}/examples.jsonl and, with {len(demos)} demonstrations, to "
          f"examples_train.jsonl; gold: harmful compliance {summary['compliance_before']} -> "
          f"{summary['compliance_after']}, over-refusal {summary['over_refusal_before']} -> "
          f"{summary['over_refusal_after']}")


def first_samples(model, enc, rows, cfg, stream):
    """One sample per row (dicts with 'ids'), None where it was empty."""
    device = next(model.parameters()).device
    return [(s or [None])[0] for s in sample_answers(model, enc, rows, 1, cfg, stream, device)]


def make_revisions(cfg, out, principles):
    """SL-CAI's data: the policy answers the harmful and lookalike training prompts, revises each
    answer by a principle drawn at random, and the revisions join benign demonstrations."""
    torch.manual_seed(cfg.seed)
    model, enc, _ = load_policy(cfg)  # checked for sampling, on its device
    prompts = [p for p in load_toy_prompts(cfg.prompts, enc, cfg) if not is_benign(p["prompt"])]
    prompts = prompts[:None if cfg.max_prompts < 0 else cfg.max_prompts]
    config.require(prompts, f"{cfg.prompts}: no harmful or lookalike prompt to revise answers to")
    print(f"{cfg.policy} answers {len(prompts)} harmful and lookalike prompts, then revises")
    answers = first_samples(model, enc, prompts, cfg, 0)
    asked = [(p["prompt"], a) for p, a in zip(prompts, answers) if a is not None]
    drawn = draw_principles(principles, len(asked), cfg.seed, "revisions")
    room = cfg.block_size - cfg.max_new_tokens  # a long answer loses the question's start
    asks = [dict(ids=encode_prompt(enc, revision_prompt(q, a, c))[-room:])
            for (q, a), c in zip(asked, drawn)]
    revised = first_samples(model, enc, asks, cfg, 1)
    rows = [dict(prompt=q, answer=a, principle=c, revision=r)
            for (q, a), c, r in zip(asked, drawn, revised) if r is not None]
    config.require(rows, f"{cfg.policy}: every answer or revision was empty")
    benign = [d for d in read_demos(cfg.demos) if is_benign(d["prompt"])]
    mix = safety_mix(rows, benign, cfg.demo_share, random.Random(f"{cfg.seed}:cai:mix"))
    with out.writing("revisions.jsonl") as path:
        prepare.write_jsonl(path, rows)
    with out.writing("sl_cai_train.jsonl") as path:
        prepare.write_jsonl(path, [dict(prompt=r["prompt"], response=r["revision"]) for r in rows]
                            + mix)
    summary = gold_summary(rows)
    out.commit(revisions=len(rows), empty=len(prompts) - len(rows), demonstrations=len(mix),
               summary=summary)
    print(f"wrote {len(rows)} revisions ({len(prompts) - len(rows)} empty left out) and "
          f"{len(mix)} benign demonstrations to {cfg.out_dir}/sl_cai_train.jsonl; gold (measured "
          f"only): harmful compliance {summary['compliance_before']} -> "
          f"{summary['compliance_after']}, over-refusal {summary['over_refusal_before']} -> "
          f"{summary['over_refusal_after']}")


def read_records(path, keys):
    """The records of a JSONL file, each with the text fields `keys` and a toy-world prompt, or a
    DataError naming the file and line."""
    rows = []
    for lineno, obj in loader.read_jsonl(path):
        if not all(isinstance(obj.get(k), str) for k in keys):
            raise config.DataError(f"{path}:{lineno}: a record needs the text fields {keys}")
        try:
            judge.parse_prompt(obj["prompt"])
        except ValueError:
            raise config.DataError(f"{path}:{lineno}: {obj['prompt'][:60]!r} is not a toy-world "
                                   f"prompt") from None
        rows.append(obj)
    return rows


def benign_pairs(path, n):
    """The first n comparisons of a pair file whose prompt is of a benign family; fewer is a
    DataError. A harmful or lookalike comparison is never read into the judge."""
    pairs = read_records(path, ("prompt", "chosen", "rejected"))
    rows = [o for o in pairs if is_benign(o["prompt"])][:n]
    if len(rows) < n:
        raise config.DataError(f"{path}: {len(rows)} benign comparisons, fewer than the {n} "
                               f"asked for")
    return rows


def judge_data(pairs, principles, seed, stream):
    """Judge-format records of comparisons, both orders, each asked by its own principle or, for
    a human comparison that has none, by one drawn at random."""
    drawn = draw_principles(principles, len(pairs), seed, stream)
    rng = random.Random(f"{seed}:cai:{stream}")  # both orders: the coin is never tossed
    return [rec for p, c in zip(pairs, drawn)
            for rec in rlaif.judge_records(p, True, rng, p.get("principle", c))]


def make_judge(cfg, out, principles):
    """The feedback model's data: benign human comparisons and the worked revisions, by
    principle, beside the demonstrations; validation on held-out benign comparisons."""
    helpful = benign_pairs(cfg.pairs, cfg.budget)
    revisions = revision_pairs(read_records(cfg.examples, ("prompt", "answer", "principle",
                                                           "revision")))
    train = judge_data(helpful, principles, cfg.seed, "judge") + \
        judge_data(revisions, principles, cfg.seed, "judge_revisions")
    val = judge_data(benign_pairs(cfg.val_pairs, rlaif.N_VAL), principles, cfg.seed, "judge_val")
    demos = read_demos(cfg.demos)
    with out.writing("judge_train.jsonl") as path:
        prepare.write_jsonl(path, demos + train)
    with out.writing("judge_val.jsonl") as path:
        prepare.write_jsonl(path, val)
    harmless = sum(not is_benign(p["prompt"]) for p in helpful)  # 0 by construction: counted
    out.commit(helpfulness_comparisons=len(helpful), harmlessness_comparisons=harmless,
               revision_comparisons=len(revisions), judge_examples=len(train),
               demonstrations=len(demos))
    print(f"wrote {len(train)} judge examples ({len(helpful)} benign human comparisons, "
          f"{harmless} harmful or lookalike ones, {len(revisions)} worked revisions; both orders) "
          f"and {len(demos)} demonstrations to {cfg.out_dir}/judge_train.jsonl, {len(val)} to "
          f"judge_val.jsonl")


def validate(cfg):
    """Bad values fail here, naming the key, before anything is loaded, sampled or written."""
    config.validate(cfg, {
        "make": (lambda v: v in NAMES, "'examples', 'revisions' or 'judge'"),
        "n_examples": (lambda v: 2 <= v <= 10**5, "in 2..100000"),
        "budget": (lambda v: 1 <= v <= 10**6, "in 1..1000000"),
        "max_prompts": (lambda v: v == -1 or v > 0, "> 0, or -1 for all"),
        "demo_share": (lambda v: 0 <= v < 1, "in [0, 1)"),
        "temperature": (lambda v: v > 0, "> 0"),
        "max_new_tokens": (lambda v: 0 < v < cfg.block_size, "in 1..block_size - 1")})
    config.require_files(cfg, *INPUTS[cfg.make], hint="python data/toy/prepare.py, then the "
                         "steps before this one in the docstring's order")


def main(argv=None):
    cfg = config.parse_config(DEFAULTS, argv, __doc__)
    validate(cfg)
    principles = read_constitution(cfg.constitution)
    t0 = time.time()
    settings = dict(make=cfg.make, seed=cfg.seed, principles=principles,
                    **{k: getattr(cfg, k) for k in SETTINGS[cfg.make]})
    inputs = {getattr(cfg, k): run.sha256_of(getattr(cfg, k)) for k in INPUTS[cfg.make]}
    with run.DataSet(cfg.out_dir, cfg.make, NAMES[cfg.make], f"CAI's {cfg.make}", settings, inputs,
                     cfg.overwrite) as out:
        dict(examples=make_examples, revisions=make_revisions, judge=make_judge)[cfg.make](
            cfg, out, principles)
    print(f"wrote {os.path.join(cfg.out_dir, f'{cfg.make}_manifest.json')} (the set is complete); "
          f"done in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    config.cli(main)
