"""
The toy world's annotators: the comparison-collection step of InstructGPT (Ouyang et al. 2022,
sec. 3.5). A policy (by default the SFT model) writes K answers to each training prompt, the
annotators rank them, and the reward model and DPO learn from those rankings: comparisons of the
policy's OWN answers, the ones PPO will start from, rather than of hand-made answer styles.

    python data/toy/label.py                                  # the SFT policy's answers, ~1 minute
    python data/toy/label.py --policy=out/ppo_toy/ckpt_last.pt --prefix=round2   # a later round
    python data/toy/label.py --help                           # every config key and its default

The annotators (a noise model on top of the gold judge, data/toy/judge.py). For one prompt, each
distinct gold value g among its answers gets a perceived utility

    u(g) = g / tau + G,    G ~ Gumbel(0, 1), drawn once per prompt and gold value,

and the answers are ranked by u. Answers with the same gold value share one utility, so they
share one rank: a tie, which the loader turns into no pair at all. Because the difference of two
Gumbel(0, 1) variables is Logistic(0, 1), every pair of answers with different gold values is
ordered correctly with probability sigma((g_a - g_b) / tau): exactly the Bradley-Terry model the
reward model fits, and the ranking as a whole is a Plackett-Luce draw with weights exp(g / tau).
Close calls are often flipped, clear ones almost never (tau = 0.5: a 0.5 gap is judged right 73%
of the time, a 1.5 gap 95%). Duplicate samples are merged; a prompt whose answers all have one
gold value holds no comparison and is left out (counted and printed).

Writes, in out_dir ({prefix} = 'onpolicy' unless --prefix says otherwise):
    {prefix}_train.jsonl     {"prompt", "responses", "ranks", "gold"}: noisy K-wise rankings of the
                             policy's answers to train_prompts (rank 1 = best, ties share a rank;
                             "gold" is the judge's score, for inspection: no stage reads it)
    {prefix}_val.jsonl       the same kind of noisy rankings, of the next num_val_prompts training
                             prompts: a held-out slice of the labels, on which the reward model's
                             best checkpoint is chosen (its own kind of data: the policy's answers)
    {prefix}_test.jsonl      {"prompt", "chosen", "rejected"}: noise-free pairs of the policy's
                             answers to the held-out eval_prompts, from the gold order, ties left out
    {prefix}_unpaired.jsonl  {"prompt", "completion", "label"}: every distinct labelled answer,
                             label = its utility beats the median utility of the prompt's K samples
                             (for unpaired losses such as KTO)
    {prefix}_unpaired_val.jsonl  the same for the held-out answers, noise-free: gold above the
                             median of the prompt's samples (KTO's held-out set)
    {prefix}_samples.jsonl   {"prompt", "response", "gold"}: every training sample, duplicates kept,
                             in SFT format (the reward model's bias_data: the policy's mean answer)
  with --kinds=separate, also the training rankings split by the kind of prompt, as Anthropic's HH
  data (Bai et al. 2022) and Llama 2's (Touvron et al. 2023) keep helpfulness and harmlessness apart:
    {prefix}_helpful_train.jsonl   the rankings of answers to non-harmful prompts (the four benign
                                   families and the harmless lookalikes)
    {prefix}_harmless_train.jsonl  the rankings of answers to harmful requests
    {prefix}_helpful_val.jsonl, {prefix}_harmless_val.jsonl   the validation rankings, split alike
    {prefix}_harmless_samples.jsonl  the samples of harmful requests (a cost model's bias_data:
                                   its zero is the SFT policy's mean cost on them)
    {prefix}_safety_train.jsonl    Llama 2's safety RM data: the harmless rankings and, drawn from
                                   the helpful ones, as many more as make safety_mix of the file
                                   (Llama 2 mixed safety and helpfulness data 90/10)
  All are ranked by the one gold score (helpful and harmless together), like the mixed file; a
  cost model (Safe RLHF) trains on the harmless rankings reversed (train_reward_model.py
  --reverse=True).
    {prefix}_manifest.json   written last: the set's files (lines, sha256), settings and inputs.
  The set appears whole or not at all (run.DataSet: out_dir locked, the files staged, then swapped
  in), and replaces an earlier labelling with this prefix only with --overwrite=True (or when the
  earlier one was made with the same settings and inputs). Every prompt is read and checked (a
  toy-world question) before anything is sampled.

Other annotators (--annotator): 'toy' is the noise model above (the default), and any labeller
can take its place, rules, a person at the terminal, a call to a language-model server, as one
Python function under one contract:

    annotate(prompt: str, answers: list[str]) -> list[int]

answers: the prompt's distinct answers (duplicates merged), in sample order; the result: one rank
per answer, lower = better, equal ranks a tie (0 = best or 1 = best: only the order counts; the
files hold the dense ranks, 1 = best). Give it as --annotator=path/to/file.py:function
(data/toy/annotators_example.py holds a rule-based one and one that asks a person). A prompt it
ranks all alike holds no comparison; an answer is desirable (unpaired files) when its rank
beats the median rank of the prompt's samples. The gold judge still writes the "gold" field and
the test pairs: it measures the labels, it never makes them. Anything else it returns, or an
exception inside it, stops the run with one line naming the annotator and the prompt.

Deterministic for a seed: the sampling noise of sample j of prompt i comes from its own generator
(model.row_generators), whatever the batch, and the annotators' noise of prompt i from its own
random.Random. Deliberately left out: annotators who disagree with each other (one noise draw per
prompt), labelling budgets, and choosing which prompts to label (active learning).
"""

import json
import math
import os
import random
import re
import statistics
import sys
import time
from functools import partial

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import torch  # noqa: E402

import checkpoint  # noqa: E402
import config  # noqa: E402
import run  # noqa: E402
import runtime  # noqa: E402
from data import loader  # noqa: E402
from data.toy import judge, prepare  # noqa: E402
from model import row_generators  # noqa: E402
from rollout import load_file_function, toy_gold_judge  # noqa: E402
from tokenizer import decode_response, get_tokenizer  # noqa: E402

DEFAULTS = dict(
    policy="out/sft_toy/ckpt_best.pt",             # whose answers are labelled
    train_prompts="data/toy/out/prompts_train.jsonl",  # prompts of the training rankings
    eval_prompts="data/toy/out/prompts_eval.jsonl",    # held-out prompts of the test pairs ('' = none;
                                                       # several files: comma-separated)
    out_dir="data/toy/out",
    prefix="onpolicy",            # file names: {prefix}_train.jsonl, ...
    max_prompts=500,              # label the first N training prompts (-1 = all)
    num_val_prompts=100,          # and the next N as a validation set (the RM's best checkpoint)
    k=8,                          # answers per training prompt (C(k, 2) comparisons at most)
    k_eval=8,                     # answers per held-out prompt for the test pairs
    tau=0.5,                      # annotator noise: P(a ranked above b) = sigma((g_a - g_b) / tau)
    temperature=1.0,              # PPO's sampling temperature
    max_new_tokens=64,
    batch_size=64,                # rows per generate call
    block_size=128,
    seed=1337,
    device="auto",
    kinds="mixed",                # 'separate': also write the helpful and harmless rankings apart
    safety_mix=0.1,               # the share of helpful rankings in {prefix}_safety_train.jsonl
    annotator="toy",              # who ranks: 'toy' (the noise model on the gold judge),
                                  # 'path/to/file.py:function' (the contract above), or a judge
                                  # trained here, 'judge:CKPT' / 'judge1:CKPT' (data/toy/rlaif.py)
                                  # or 'cai:CKPT' (by a constitution's principles, data/toy/cai.py)
    add_refusals=False,           # rank one polite refusal more among the answers to every
                                  # harmful and lookalike prompt (training and validation
                                  # rankings): the annotators then say what refusing is worth
                                  # where it is right and where it over-refuses, which the
                                  # policy's own answers seldom show (docs/RESULTS.md)
    overwrite=False,              # replace an earlier labelling with this prefix in out_dir
)

# the gold judge under the reward contract (rollout.reward_contract): one line, never a traceback
GOLD = toy_gold_judge()

# -----------------------------------------------------------------------------
# the annotators: pure functions of (prompt's answers, gold values, rng)


def gumbel(rng):
    """One Gumbel(0, 1) draw, -log E with E ~ Exponential(1)."""
    return -math.log(max(rng.expovariate(1.0), 1e-300))


def utilities(golds, tau, rng):
    """{gold value: perceived utility g / tau + Gumbel}, one draw per distinct value, in
    descending order of gold (so the draws depend on the values alone, not on sample order)."""
    return {g: g / tau + gumbel(rng) for g in sorted(set(golds), reverse=True)}


def dense_ranks(values, higher_is_better=True):
    """Dense ranks of values, 1 = best, equal values share a rank: [3, 1, 3, 2] -> [1, 3, 1, 2]."""
    order = sorted(set(values), reverse=higher_is_better)
    rank = {v: r + 1 for r, v in enumerate(order)}
    return [rank[v] for v in values]


def label_prompt(prompt, answers, tau, rng):
    """
    One prompt's labelled answers: a K-wise ranking record (or None when its answers have fewer
    than two distinct gold values), and the unpaired records. answers: the K sampled texts,
    duplicates allowed (each counts once in the ranking, every time in the median).
    """
    golds = [GOLD(prompt, a) for a in answers]
    if len(set(golds)) < 2:
        return None, []
    u = utilities(golds, tau, rng)
    distinct = list(dict.fromkeys(answers))  # merged duplicates, in sample order
    gold_of = dict(zip(answers, golds))
    ranking = dict(prompt=prompt, responses=distinct,
                   ranks=dense_ranks([u[gold_of[a]] for a in distinct]),
                   gold=[gold_of[a] for a in distinct])
    median = statistics.median(u[g] for g in golds)
    unpaired = [dict(prompt=prompt, completion=a, label=u[gold_of[a]] > median) for a in distinct]
    return ranking, unpaired


def with_refusal(prompt, answers, rng):
    """
    The answers to rank, with one polite refusal more (prepare.refuse: "Sorry, I can't help you
    kill time.") where the prompt is a harmful request or a harmless lookalike; a benign
    question's answers unchanged. A policy that seldom refuses seldom shows the annotators a
    refusal, least of all an over-refusal, so a reward model learns what refusing is worth from
    the harmful requests alone and pays for it everywhere (XSTest's lookalikes, Rottger et al.
    2023, are the requests where that fails). Appended last, so the policy's own answers keep
    their order.
    """
    family = judge.parse_prompt(prompt)[0]
    if family not in ("harmful", "lookalike"):
        return answers
    words = " ".join(re.findall(r"[a-z]+", prompt.lower()))
    request = next(r for r in (*judge.HARMFUL, *judge.LOOKALIKE)
                   if re.search(rf"(?<![a-z]){r}(?![a-z])", words))
    return answers + [prepare.refuse(rng, request, "refusal")]


def answers_to_rank(cfg, prompts, answers, stream):
    """What the annotators rank for each prompt: the policy's answers and, with add_refusals, one
    polite refusal more for each safety prompt (with_refusal, each prompt its own seeded stream,
    so a benign question's ranking is the one it would be without)."""
    if not cfg.add_refusals:
        return answers
    return [with_refusal(p["prompt"], a, random.Random(f"{cfg.seed}:{stream}:{i}"))
            for i, (p, a) in enumerate(zip(prompts, answers))]


def gold_pairs(prompt, answers):
    """Noise-free (chosen, rejected) records of distinct answers with different gold values."""
    distinct = list(dict.fromkeys(answers))
    golds = [GOLD(prompt, a) for a in distinct]
    return [dict(prompt=prompt, chosen=distinct[a], rejected=distinct[b])
            for a in range(len(distinct)) for b in range(len(distinct)) if golds[a] > golds[b]]


def gold_unpaired(prompt, answers):
    """Noise-free unpaired records of the distinct answers: desirable when the answer's gold
    value beats the median gold of all the prompt's samples (KTO's held-out set). A prompt whose
    answers share one gold value gives none."""
    gold_of = {a: GOLD(prompt, a) for a in answers}  # each distinct answer once
    golds = [gold_of[a] for a in answers]
    if len(set(golds)) < 2:
        return []
    median = statistics.median(golds)
    return [dict(prompt=prompt, completion=a, label=g > median) for a, g in gold_of.items()]

def label_prompt_by(annotate, prompt, answers):
    """
    label_prompt for any annotator: annotate(prompt, distinct answers) -> dense ranks (1 = best;
    load_annotator checks the contract). Returns the ranking record (None when the annotator
    ranks every answer alike) and the unpaired records: desirable when the answer's rank beats
    the median rank of the K samples (duplicates count in the median, as in label_prompt).
    """
    distinct = list(dict.fromkeys(answers))
    if len(distinct) < 2:
        return None, []
    ranks = annotate(prompt, distinct)
    if len(set(ranks)) < 2:
        return None, []
    rank_of = dict(zip(distinct, ranks))
    ranking = dict(prompt=prompt, responses=distinct, ranks=ranks,
                   gold=[GOLD(prompt, a) for a in distinct])
    median = statistics.median(rank_of[a] for a in answers)
    return ranking, [dict(prompt=prompt, completion=a, label=rank_of[a] < median) for a in distinct]


def label_with(annotate, tau, prompt, answers, rng):
    """label_prompt (the toy annotators, annotate None) or label_prompt_by (any other)."""
    if annotate is None:
        return label_prompt(prompt, answers, tau, rng)
    return label_prompt_by(annotate, prompt, answers)


def annotator_contract(fn, name):
    """fn(prompt, answers) checked against the annotator contract (the docstring): returns the
    dense ranks, 1 = best, or raises a ConfigError naming `name` and the prompt."""
    def checked(prompt, answers):
        where = f"{name} on the prompt {prompt[:80]!r}"
        try:
            ranks = fn(prompt, list(answers))
        except (Exception, SystemExit) as e:  # one line, never a traceback or a silent exit
            raise config.ConfigError(f"{where}: raised {type(e).__name__}: {str(e)[:200]}") from None
        if not (isinstance(ranks, (list, tuple)) and len(ranks) == len(answers) and all(
                isinstance(r, int) and not isinstance(r, bool) for r in ranks)):
            raise config.ConfigError(f"{where}: returned {str(ranks)[:80]}, not a list of "
                                     f"{len(answers)} ints (one rank per answer, lower = better)")
        return dense_ranks(list(ranks), higher_is_better=False)
    return checked


def load_annotator(spec):
    """None for 'toy' (label_prompt's noise model), else the annotator of 'file.py:function', or
    the judge of 'judge:CKPT' (both orders) or 'judge1:CKPT' (one order; data/toy/rlaif.py), or
    of 'cai:CKPT' (both orders under each principle of data/toy/constitution.txt, averaged;
    data/toy/cai.py), under the contract. A judge's .summary() says how it judged, measured
    against gold."""
    if spec == "toy":
        return None
    kind, _, ckpt = spec.partition(":")
    if kind in ("judge", "judge1", "cai"):
        from data.toy import cai, rlaif
        config.require(os.path.isfile(ckpt), f"annotator={spec!r}: no checkpoint {ckpt} (train "
                       f"one: python data/toy/rlaif.py && python train_sft.py config/judge_toy.py)")
        # cai: both orders under every principle of the constitution, averaged (data/toy/cai.py)
        principles = cai.read_constitution(cai.CONSTITUTION) if kind == "cai" else (None,)
        fn = rlaif.judge_annotator(ckpt, 1 if kind == "judge1" else 2, gold=GOLD,
                                   principles=principles)
    else:
        fn = load_file_function(spec, "annotator", "'toy', 'judge:CKPT', 'judge1:CKPT' or "
                                                   "'path/to/file.py:function'")
    checked = annotator_contract(fn, f"annotator={spec!r}")
    checked.summary = getattr(fn, "summary", dict)
    return checked


def split_kinds(rankings):
    """(helpful, harmless): the rankings of answers to non-harmful prompts, and to harmful ones."""
    harmful = [judge.parse_prompt(r["prompt"])[0] == "harmful" for r in rankings]
    return ([r for r, h in zip(rankings, harmful) if not h],
            [r for r, h in zip(rankings, harmful) if h])


def safety_mix(harmless, helpful, share, rng):
    """The helpful rankings that join the harmless ones in Llama 2's safety RM data, so that
    they make `share` of it (Touvron et al. 2023, sec. 3.2.2: safety data and helpfulness data
    90/10): round(share / (1 - share) * len(harmless)) of them, drawn without replacement, at
    most all. Test: tests/test_label.py::test_safety_mix_by_hand"""
    k = min(round(share / (1 - share) * len(harmless)), len(helpful))
    return rng.sample(helpful, k)


# -----------------------------------------------------------------------------
# sampling


@torch.inference_mode()
def sample_answers(model, enc, prompts, k, cfg, noise_stream, device):
    """
    k answers to every prompt (dicts with 'ids'), as texts: [[k texts] per prompt]. Sample j of
    prompt i draws its noise from row_generators(seed, (noise_stream, i, j)) alone. Answers that are
    empty after stripping (an immediate EOS) are dropped: no annotator can rank an empty answer.
    """
    rows = [(i, j) for i in range(len(prompts)) for j in range(k)]
    out = [[] for _ in prompts]
    t0, n_empty = time.time(), 0
    for start in range(0, len(rows), cfg.batch_size):
        keys = rows[start:start + cfg.batch_size]
        gen = row_generators(cfg.seed, [(noise_stream, i, j) for i, j in keys], device=device)
        idx, attn = loader.collate_left([prompts[i]["ids"] for i, _ in keys], enc.eot_token)
        tokens, mask, _ = model.generate(idx.to(device), attention_mask=attn.to(device),
                                         max_new_tokens=cfg.max_new_tokens,
                                         temperature=cfg.temperature,
                                         eos_token_id=enc.eot_token, generator=gen)  # (B, N)
        for (i, _), row, keep in zip(keys, tokens.tolist(), mask.tolist()):
            text = decode_response(enc, [t for t, m in zip(row, keep) if m])
            if text.strip():
                out[i].append(text)
            else:
                n_empty += 1
        done = start + len(keys)
        print(f"\r  sampled {done}/{len(rows)} answers ({time.time() - t0:.0f}s)", end="",
              flush=True)
    print(f"; {n_empty} empty answers dropped")
    return out


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def write_kinds(write, cfg, rankings, val, samples):
    """--kinds=separate: the training and validation rankings split by the kind of prompt, the
    samples of harmful requests, and Llama 2's safety mix (write(name, rows) puts each file in
    the set). A file that would be empty (a few prompts, none harmful) is not written."""
    helpful, harmless = split_kinds(rankings)
    mix = safety_mix(harmless, helpful, cfg.safety_mix, random.Random(f"{cfg.seed}:mix"))
    helpful_val, harmless_val = split_kinds(val)
    files = dict(helpful_train=helpful, harmless_train=harmless, helpful_val=helpful_val,
                 harmless_val=harmless_val, harmless_samples=[
                     s for s in samples if judge.parse_prompt(s["prompt"])[0] == "harmful"],
                 safety_train=harmless + mix)
    for name, rows in files.items():
        if rows:
            write(name, rows)
    print(f"kinds: {len(helpful)} helpful rankings (non-harmful prompts), {len(harmless)} "
          f"harmless rankings (harmful prompts); the safety mix adds {len(mix)} helpful ones"
          + "".join(f"; no {name} rows, no file" for name, rows in files.items() if not rows))


MAX_K = 1024  # answers per prompt: more is a typo, not a labelling budget
# every file a labelling can write, {prefix}_{name}.jsonl: a new labelling replaces all of them
NAMES = ("train", "val", "test", "unpaired", "unpaired_val", "samples", "helpful_train",
         "harmless_train", "helpful_val", "harmless_val", "harmless_samples", "safety_train")


def load_toy_prompts(path, enc, cfg):
    """The prompts of a file (data.loader.load_prompts), each one the toy world's annotators can
    judge, or a DataError naming the file and the prompt: checked before anything is sampled."""
    prompts = loader.load_prompts(path, enc, cfg.block_size, cfg.max_new_tokens)
    for i, p in enumerate(prompts, 1):
        try:
            judge.parse_prompt(p["prompt"])
        except ValueError:
            raise config.DataError(f"{path}: prompt {i} ({p['prompt'][:60]!r}) is not a toy-world "
                                   f"prompt: the annotators (data/toy/judge.py) cannot judge its "
                                   f"answers") from None
    return prompts


def validate(cfg):
    """Bad values fail here, naming the key, before anything is loaded, sampled or written."""
    config.validate(cfg, {
        "tau": (lambda v: 0.01 <= v <= 1e6, "in [0.01, 1e6] (the annotators' noise temperature)"),
        "k": (lambda v: 2 <= v <= MAX_K, f"in 2..{MAX_K}: a ranking needs two answers"),
        "k_eval": (lambda v: 2 <= v <= MAX_K, f"in 2..{MAX_K}: a test pair needs two answers"),
        "max_prompts": (lambda v: v == -1 or v > 0, "> 0, or -1 for all"),
        "num_val_prompts": (lambda v: v >= 0, ">= 0"),
        "kinds": (lambda v: v in ("mixed", "separate"), "'mixed' or 'separate'"),
        "safety_mix": (lambda v: 0 <= v < 1, "in [0, 1)")})
    # a file name, never a path: '../x' or 'a/b' would write outside out_dir
    config.require(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", cfg.prefix) and ".." not in cfg.prefix,
                   f"config key 'prefix' must be a file-name prefix (letters, digits, '_', '-', "
                   f"'.'; no path separator or '..'), got {cfg.prefix!r}")
    config.require_files(cfg, "policy", "train_prompts", "eval_prompts",
                         hint="python data/toy/prepare.py, then python train_sft.py")


def main(argv=None):
    cfg = config.parse_config(DEFAULTS, argv, __doc__)
    validate(cfg)
    names = [f"{cfg.prefix}_{name}.jsonl" for name in NAMES]
    # what the labels depend on: a re-run with all of it the same writes the same bytes
    settings = {k: v for k, v in vars(cfg).items() if k not in ("out_dir", "overwrite", "batch_size")
                and (k != "annotator" or v != "toy")}  # the toy annotator's manifest as before
    kind, _, ckpt = cfg.annotator.partition(":")
    annotator_file = ckpt if kind in ("judge", "judge1", "cai") else \
        cfg.annotator.rpartition(":")[0]
    if kind == "cai":  # the labels depend on the principles too
        from data.toy.cai import CONSTITUTION
        annotator_file += "," + os.path.relpath(CONSTITUTION)
    files = [cfg.policy, cfg.train_prompts, *annotator_file.split(","), *cfg.eval_prompts.split(",")]
    inputs = {p: run.sha256_of(p) for p in files if p and os.path.isfile(p)}
    # out_dir locked, an earlier labelling kept unless --overwrite=True; the files are written to
    # out_dir/.staging-{prefix} and replace the earlier set only once every one is written
    annotate = load_annotator(cfg.annotator)  # a bad spec or file fails before anything runs
    with run.DataSet(cfg.out_dir, cfg.prefix, names, f"a labelling (prefix {cfg.prefix!r})",
                     settings, inputs, cfg.overwrite) as out:
        label(cfg, out, annotate)


def pairs_against_gold(rankings):
    """(ordered pairs, those the annotators ordered against gold) over rankings {"responses",
    "ranks", "gold"}: a pair (a, b) with rank a < rank b counts, flipped when gold a < gold b;
    ties in gold are never flipped. Test: tests/test_label.py::test_pairs_against_gold_by_hand"""
    n_pairs = n_flipped = 0
    for r in rankings:
        for a in range(len(r["responses"])):
            for b in range(len(r["responses"])):
                if r["ranks"][a] < r["ranks"][b]:
                    n_pairs += 1
                    n_flipped += r["gold"][a] < r["gold"][b]
    return n_pairs, n_flipped


def load_policy(cfg):
    """The policy to sample from, checked (NaN or inf weights, its vocabulary, block_size), in
    eval mode on its device; its tokenizer; the device."""
    device = runtime.pick_device(cfg.device)
    model, tok_name = checkpoint.init_policy(cfg.policy)  # NaN or inf weights: refused here
    checkpoint.check_sampling_vocab(model, tok_name, cfg.policy)
    checkpoint.check_block_size(model, cfg.block_size, cfg.policy)
    return model.to(device).eval(), get_tokenizer(tok_name), device


def label(cfg, out, annotate=None):
    """The labelling itself: the policy and every prompt loaded and checked, then the samples,
    the annotators' labels and the files (written into the DataSet out, then committed).
    annotate: an annotator under the contract (load_annotator), or None for the toy one."""
    label_one = partial(label_with, annotate, cfg.tau)
    torch.manual_seed(cfg.seed)
    model, enc, device = load_policy(cfg)
    kinds = ("helpful_train", "harmless_train", "helpful_val", "harmless_val", "harmless_samples",
             "safety_train") if cfg.kinds == "separate" else ()
    path = {name: f"{cfg.prefix}_{name}.jsonl"
            for name in ("train", "val", "test", "unpaired", "unpaired_val", "samples") + kinds}
    t0 = time.time()

    def write(name, rows):
        with out.writing(path[name]) as p:
            write_jsonl(p, rows)

    # every prompt read and checked before anything is sampled
    prompts = load_toy_prompts(cfg.train_prompts, enc, cfg)
    held = load_toy_prompts(cfg.eval_prompts, enc, cfg) if cfg.eval_prompts else []

    # training prompts: K samples each, ranked by the noisy annotators
    n = len(prompts) if cfg.max_prompts < 0 else min(cfg.max_prompts, len(prompts))
    prompts, val_prompts = prompts[:n], prompts[n:n + cfg.num_val_prompts]
    who = f"tau {cfg.tau}" if annotate is None else f"annotator {cfg.annotator}"
    print(f"labelling {cfg.k} answers to each of {len(prompts)} prompts from {cfg.policy} "
          f"(temperature {cfg.temperature}, {who})")
    answers = sample_answers(model, enc, prompts, cfg.k, cfg, 0, device)
    shown = answers_to_rank(cfg, prompts, answers, "refusal")  # the samples: the policy's own
    rankings, unpaired, samples, n_tied = [], [], [], 0
    for i, (p, ans, ranked) in enumerate(zip(prompts, answers, shown)):
        samples += [dict(prompt=p["prompt"], response=a, gold=GOLD(p["prompt"], a)) for a in ans]
        ranking, rows = label_one(p["prompt"], ranked, random.Random(f"{cfg.seed}:label:{i}"))
        if ranking is None:
            n_tied += 1
            continue
        rankings.append(ranking)
        unpaired += rows
    if not rankings:
        raise config.DataError(f"{cfg.policy}: no comparison at all: every prompt's answers share "
                               f"one gold value (is the policy trained?)")
    write("train", rankings)
    val = []
    if val_prompts:  # a held-out slice of the same labels: other prompts, the same annotators
        print(f"validation rankings: {cfg.k} answers to each of {len(val_prompts)} more prompts")
        val_answers = answers_to_rank(cfg, val_prompts, sample_answers(
            model, enc, val_prompts, cfg.k, cfg, 2, device), "val_refusal")
        val = [label_one(p["prompt"], ans, random.Random(f"{cfg.seed}:val:{i}"))[0]
               for i, (p, ans) in enumerate(zip(val_prompts, val_answers))]
        val = [r for r in val if r is not None]
        if not val:
            raise config.DataError(f"{cfg.policy}: no comparison among the answers to the "
                                   f"{len(val_prompts)} validation prompts (num_val_prompts): "
                                   f"each prompt's answers share one gold value")
        write("val", val)
    write("unpaired", unpaired)
    write("samples", samples)
    if kinds:  # the same rankings, split by the kind of prompt
        write_kinds(write, cfg, rankings, val, samples)

    # how the labels came out: pairs, and how often the annotators ordered a pair against gold
    n_pairs, n_flipped = pairs_against_gold(rankings)
    mean_gold = statistics.fmean(s["gold"] for s in samples) if samples else float("nan")
    print(f"{len(prompts) - n_tied} prompts ranked, {n_tied} left out (all answers one gold "
          f"value); {n_pairs} pairs, {n_flipped / max(n_pairs, 1):.1%} ordered against gold; "
          f"mean gold of the samples {mean_gold:+.3f}; "
          f"{sum(r['label'] for r in unpaired)}/{len(unpaired)} unpaired answers desirable")

    # held-out prompts: noise-free pairs, the reward model's on-policy test set
    if cfg.eval_prompts:
        print(f"test pairs: {cfg.k_eval} answers to each of {len(held)} held-out prompts")
        held_answers = sample_answers(model, enc, held, cfg.k_eval, cfg, 1, device)
        test = [pair for p, ans in zip(held, held_answers) for pair in gold_pairs(p["prompt"], ans)]
        write("test", test)
        val = [row for p, ans in zip(held, held_answers) for row in gold_unpaired(p["prompt"], ans)]
        write("unpaired_val", val)
        print(f"{len(test)} noise-free test pairs; {len(val)} noise-free unpaired answers "
              f"({sum(r['label'] for r in val)} desirable)")
    commit(cfg, out, path, annotate)
    print(f"done in {time.time() - t0:.1f}s")


def commit(cfg, out, path, annotate):
    """The manifest written last (the set is complete), with each file's count and a judge's
    summary (data/toy/rlaif.py), and what was written."""
    judged = annotate.summary() if annotate is not None else {}
    if judged:
        print("the judge: " + ", ".join(f"{k} {v}" for k, v in judged.items()))
    out.commit(counts={name: len(open(out.path(p)).readlines()) for name, p in path.items()
                       if os.path.isfile(out.path(p))}, **({"judge": judged} if judged else {}))
    for name, p in path.items():
        if os.path.isfile(os.path.join(cfg.out_dir, p)):
            print(f"wrote {os.path.join(cfg.out_dir, p)}")
    print(f"wrote {os.path.join(cfg.out_dir, out.manifest)} (the set is complete)")


if __name__ == "__main__":
    config.cli(main)
