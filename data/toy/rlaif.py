"""
RLAIF's labeller (Lee et al. 2023, "RLAIF: Scaling Reinforcement Learning from Human Feedback
with AI Feedback"), grown here from a few labels: a generative reward model, not zero-shot AI
feedback. A language model learns a judge format from a small, counted budget of labelled pairs,

    Human:     What color is a banana?
               1: A banana is red. Hope that helps!
               2: A banana is yellow. Duh.
               Which answer is better?
    Assistant: Better: 2

and then labels many more answers: its preference is the softmax over its log-probs of "1" and
"2" (ai_feedback.judge_preference), read once with each answer in slot 1 and averaged
(ai_feedback.debiased_preference), or from one order only for comparison.

    python data/toy/rlaif.py                       # the judge's training data, a second
    python train_sft.py config/judge_toy.py        # the judge: the SFT recipe on that data
    python data/toy/label.py --annotator=judge:out/judge_toy/ckpt_best.pt \
        --out_dir=data/toy/out/rlaif --prefix=rlaif    # the SFT policy's answers, judged
    python train_dpo.py config/dpo_toy.py --train_data=data/toy/out/rlaif/rlaif_train.jsonl \
        --val_data=data/toy/out/rlaif/rlaif_val.jsonl --out_dir=out/rlaif_dpo_toy
(`python pipeline.py --methods=rlaif` runs these four.)

Writes, in out_dir:
    judge_train.jsonl  SFT records: the demonstrations (`demos`: the world's language and facts)
                       and the first `budget` labelled pairs of `pairs` in the judge format, each in
                       both orders (both_orders) or in one, by a seeded coin
    judge_val.jsonl    the judge format of the first 200 held-out pairs (`val_pairs`), both orders
    judge_manifest.json  written last (run.DataSet): the files, settings, inputs and the budget
The labels are the toy world's simulated people's (prefs_train.jsonl: 10% of them flipped), never
the gold judge's, which only measures (label.py: the judge's agreement with it).

Deliberately left out: chain-of-thought before the verdict, few-shot prompting, self-consistency,
and direct RLAIF (the judge's score as PPO's reward, without a reward model).
"""

import os
import random
import sys
import time

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import torch  # noqa: E402

import ai_feedback  # noqa: E402
import checkpoint  # noqa: E402
import config  # noqa: E402
import run  # noqa: E402
from data import loader  # noqa: E402
from data.toy.prepare import write_jsonl  # noqa: E402
from tokenizer import encode_prompt, encode_response, get_tokenizer  # noqa: E402

DEFAULTS = dict(
    pairs="data/toy/out/prefs_train.jsonl",   # labelled pairs {"prompt", "chosen", "rejected"}
    val_pairs="data/toy/out/prefs_val.jsonl",  # held-out pairs: the judge's validation loss
    demos="data/toy/out/sft_train.jsonl",     # demonstrations trained beside ('' = none)
    budget=400,                               # labelled pairs the judge learns from
    both_orders=True,                         # each pair in both orders (else one, by a coin)
    out_dir="data/toy/out/rlaif",
    seed=1337,
    overwrite=False,
)
N_VAL = 200  # held-out pairs in judge_val.jsonl
VERDICT = "Better: {}"


def judge_prompt(question, first, second, principle=None):
    """The judge format's prompt: the question and two numbered answers, and the question asked
    of them, by a principle of a constitution when one is given (data/toy/cai.py)."""
    ask = "Which answer is better?" if principle is None else \
        f"Which answer is better by this principle? {principle}"
    return f"{question}\n1: {first}\n2: {second}\n{ask}"


def judge_records(pair, both_orders, rng, principle=None):
    """One labelled pair as judge-format SFT records {"prompt", "response"}: chosen in slot 1
    and in slot 2 (both_orders), or in the slot a coin picks; asked by `principle` if given."""
    q, c, r = pair["prompt"], pair["chosen"], pair["rejected"]
    both = [dict(prompt=judge_prompt(q, c, r, principle), response=VERDICT.format(1)),
            dict(prompt=judge_prompt(q, r, c, principle), response=VERDICT.format(2))]
    return both if both_orders else [both[rng.random() < 0.5]]


def read_pairs(path, n):
    """The first n records of a pair file, {"prompt", "chosen", "rejected"} each."""
    rows = [obj for _, obj in loader.read_jsonl(path)][:n]
    for i, obj in enumerate(rows, 1):
        if not all(isinstance(obj.get(k), str) for k in ("prompt", "chosen", "rejected")):
            raise config.DataError(f"{path}: record {i} is not a pair {{prompt, chosen, rejected}}")
    if len(rows) < n:
        raise config.DataError(f"{path}: {len(rows)} pairs, fewer than the {n} asked for")
    return rows


def main(argv=None):
    cfg = config.parse_config(DEFAULTS, argv, __doc__)
    config.validate(cfg, {"budget": (lambda v: 1 <= v <= 10**6, "in 1..1000000")})
    config.require_files(cfg, "pairs", "val_pairs", "demos", hint="python data/toy/prepare.py")
    t0 = time.time()
    settings = {k: v for k, v in vars(cfg).items() if k not in ("out_dir", "overwrite")}
    inputs = {p: run.sha256_of(p) for p in (cfg.pairs, cfg.val_pairs, cfg.demos) if p}
    names = ["judge_train.jsonl", "judge_val.jsonl"]
    with run.DataSet(cfg.out_dir, "judge", names, "a judge's training data", settings, inputs,
                     cfg.overwrite) as out:
        rng = random.Random(f"{cfg.seed}:judge")
        train = [rec for p in read_pairs(cfg.pairs, cfg.budget)
                 for rec in judge_records(p, cfg.both_orders, rng)]
        val = [rec for p in read_pairs(cfg.val_pairs, N_VAL) for rec in judge_records(p, True, rng)]
        demos = [dict(prompt=o["prompt"], response=o["response"])
                 for _, o in loader.read_jsonl(cfg.demos)] if cfg.demos else []
        with out.writing("judge_train.jsonl") as path:
            write_jsonl(path, demos + train)
        with out.writing("judge_val.jsonl") as path:
            write_jsonl(path, val)
        out.commit(labelled_pairs=cfg.budget, judge_examples=len(train), demonstrations=len(demos))
    print(f"wrote {len(train)} judge examples from {cfg.budget} labelled pairs of {cfg.pairs} "
          f"and {len(demos)} demonstrations to {cfg.out_dir}/judge_train.jsonl, {len(val)} "
          f"held-out judge examples to judge_val.jsonl ({time.time() - t0:.1f}s)")

# -----------------------------------------------------------------------------
# the judge as an annotator (label.py --annotator=judge:CKPT)


def verdict_ids(enc):
    """(the verdict's tokens before the slot number, the token of "1", the token of "2")."""
    one, two = encode_response(enc, VERDICT.format(1)), encode_response(enc, VERDICT.format(2))
    c = next(i for i, (a, b) in enumerate(zip(one, two)) if a != b)
    assert one[c + 1:] == two[c + 1:], "the verdicts differ in more than the slot's token"
    return one[:c], one[c], two[c]


@torch.inference_mode()
def slot1_preference(model, enc, texts, batch_size=64):
    """The judge's P(slot 1 is better) for each judge prompt text, (N,) float: its next-token
    log-probs of "1" and "2" after the prompt and "Better:", through judge_preference. Rows are
    right-padded, so no mask is needed: the read position sees no padding."""
    prefix, one, two = verdict_ids(enc)
    # a row longer than the judge's positions loses its start (the question), as the loader's
    # prompts do: rare, from answers of garbled bytes
    rows = [(encode_prompt(enc, t) + prefix)[-model.config.block_size:] for t in texts]
    out = []
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        T = max(map(len, chunk))
        idx = torch.tensor([r + [enc.eot_token] * (T - len(r)) for r in chunk])  # (B, T)
        last = torch.tensor([len(r) - 1 for r in chunk])
        logits = model(idx)[torch.arange(len(chunk)), last].float()  # (B, V)
        logp = torch.log_softmax(logits, -1)
        out.append(ai_feedback.judge_preference(logp[:, one], logp[:, two]))
    return torch.cat(out)


def judge_annotator(judge, orders=2, gold=None, principles=(None,)):
    """
    annotate(prompt, answers) -> ranks under label.py's contract (ints), from a judge (a
    checkpoint, or a (model, tokenizer name) pair): every
    pair of answers judged (in both orders, or with the earlier answer in slot 1 for orders=1),
    under each of `principles` (a constitution's, data/toy/cai.py; None: the plain question) and
    averaged over them, each answer scored by its mean soft win probability against the others
    (a Borda count of soft labels), ranked by it. gold(prompt, answer), when given, only
    measures: .summary() returns position bias, the agreement of the two orders and the labels'
    agreement with gold (of the soft labels averaged over the principles).
    """
    model, tok = checkpoint.init_policy(judge) if isinstance(judge, str) else judge
    model.eval()
    enc = get_tokenizer(tok)
    seen = dict(ab=[], ba=[], truth=[])  # per judged pair with different gold values

    def annotate(prompt, answers):
        K = len(answers)
        pairs = [(i, j) for i in range(K) for j in range(i + 1, K)]
        texts = []
        for c in principles:  # per principle: the pairs in one order, then in the other
            texts += [judge_prompt(prompt, answers[i], answers[j], c) for i, j in pairs]
            if orders == 2:
                texts += [judge_prompt(prompt, answers[j], answers[i], c) for i, j in pairs]
        p = slot1_preference(model, enc, texts).view(len(principles), orders, len(pairs))
        ab_all = p[:, 0]                                        # (principles, pairs)
        ba_all = p[:, 1] if orders == 2 else 1.0 - ab_all
        better = ai_feedback.principle_ensemble(ab_all, ba_all)  # P(i beats j), (pairs,)
        ab, ba = ab_all.mean(0), ba_all.mean(0)                  # what .summary() measures
        wins = torch.zeros(K, dtype=torch.float64)
        for (i, j), b in zip(pairs, better.tolist()):
            wins[i] += b
            wins[j] += 1.0 - b
        if gold is not None:
            g = [gold(prompt, a) for a in answers]
            keep = [k for k, (i, j) in enumerate(pairs) if g[i] != g[j]]
            seen["ab"] += ab[keep].tolist()
            seen["ba"] += ba[keep].tolist()
            seen["truth"] += [g[pairs[k][0]] > g[pairs[k][1]] for k in keep]
        return [-round(w * 10**6) for w in wins.tolist()]  # ints, lower = better; equal ones tie

    def summary():
        if not seen["truth"]:
            return {}
        ab, ba, truth = (torch.tensor(seen[k]) for k in ("ab", "ba", "truth"))
        stats = dict(judged_pairs=len(truth),
                     agree_gold_one_order=ai_feedback.agreement_with(ab, truth),
                     agree_gold=ai_feedback.agreement_with(ai_feedback.debiased_preference(ab, ba),
                                                           truth))
        if orders == 2:
            stats.update(ai_feedback.position_stats(ab, ba))
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in stats.items()}

    annotate.summary = summary
    return annotate


if __name__ == "__main__":
    config.cli(main)
