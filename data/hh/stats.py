"""
Token lengths of a converted preference file, and where the positions of our padded batches go.

    python data/hh/prepare.py && python data/hh/stats.py --input=data/hh/out/prefs_test.jsonl
    python data/hh/stats.py --input=data/hh/out/prefs_train.jsonl --block_size=512 --batch_sizes=8,16

Prints two tables:
  1. the length distribution (mean, nearest-rank percentiles 50/90/99, max) in tokens of the
     tokenizer (GPT-2 BPE by default) of the rendered prompt ('\\n\\nHuman: {prompt}\\n\\nAssistant:')
     and of each answer (' {answer}' + EOS), before any truncation, and how many exceed block_size;
  2. of all positions of the right-padded batches one epoch of training builds, after the loader's
     length policy (prompts cut from the left, too-long answers dropped), the share that is
     padding, prompt and response (the trained tokens): for the reward model / DPO (batches of
     pairs, chosen and rejected rows padded together) and for SFT (prompt + chosen rows), each
     with and without the loaders' length bucketing (loader.batch_indices(..., lengths=...)),
     the batches drawn exactly as the training scripts draw them; RM/DPO also bucketed with
     each prompt once (share_prompt=True: a row holds the prompt and both answers).

The 'gpt2' tokenizer needs tiktoken's files once (a network, or TIKTOKEN_CACHE_DIR pointing to a
copy); --tokenizer=byte needs nothing.
"""

import argparse
import math
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import config  # noqa: E402
import layouts  # noqa: E402
from config import ConfigError  # noqa: E402
from data import loader  # noqa: E402
from tokenizer import encode_prompt, encode_response, get_tokenizer  # noqa: E402

PERCENTILES = (50, 90, 99)

# -----------------------------------------------------------------------------
# pure functions


def percentile(values, q):
    """Nearest-rank q-th percentile: the smallest value with at least q% of the values <= it."""
    v = sorted(values)
    return v[max(0, math.ceil(q / 100 * len(v)) - 1)]


def describe(values, block_size):
    """dict(mean, p50, p90, p99, max, over) of a list of lengths; over = how many > block_size."""
    out = dict(mean=sum(values) / len(values))
    out.update({f"p{q}": percentile(values, q) for q in PERCENTILES})
    out.update(max=max(values), over=sum(v > block_size for v in values))
    return out


def batch_shares(batches):
    """dict(padding, prompt, response, positions) over a list of (attention_mask, loss_mask)
    (B, T) pairs: of all B * T positions, the share that is padding (attention 0), prompt
    (attention 1, loss 0) and response (loss 1)."""
    positions = sum(a.numel() for a, _ in batches)
    real = sum(int(a.sum()) for a, _ in batches)
    response = sum(int(m.sum()) for _, m in batches)
    return dict(padding=(positions - real) / positions, prompt=(real - response) / positions,
                response=response / positions, positions=positions)


def epoch_batches(n, batch_size, seed, lengths=None):
    """The index lists of one epoch of full batches, as the training scripts draw them."""
    return [loader.batch_indices(n, batch_size, step, seed, lengths=lengths)
            for step in range(n // batch_size)]


def pair_batches(pairs, batch_size, seed, bucketed, pad_id, shared=False):
    """(attention_mask, loss_mask) of one epoch of reward-model / DPO batches (2B rows each, or
    with shared B rows of a prompt and both answers: share_prompt=True), bucketed by the longer
    answer's row as train_reward_model.py and train_dpo.py do."""
    lengths = tuple(map(loader.pair_length, pairs)) if bucketed else None
    out = []
    for rows in epoch_batches(len(pairs), batch_size, seed, lengths):
        b = layouts.score_layout(shared).collate([pairs[i] for i in rows], pad_id)
        out.append(((b["segments"] >= 0).long(), (b["segments"] >= 1).long()) if shared else
                   (b["attention_mask"], b["loss_mask"]))
    return out


def sft_examples(records, enc, block_size):
    """[(ids, mask)] of prompt + chosen under load_sft's length policy (the sft_*.jsonl files)."""
    out = []
    for r in records:
        resp = encode_response(enc, r["chosen"])
        p, _ = loader.fit_prompt(encode_prompt(enc, r["prompt"]), len(resp), block_size)
        if p is not None:
            out.append((p + resp, [0] * len(p) + [1] * len(resp)))
    return out


def sft_batches(examples, batch_size, seed, bucketed, pad_id):
    """(attention_mask, loss_mask) of one epoch of SFT batches, bucketed as train_sft.py does."""
    lengths = tuple(len(ids) for ids, _ in examples) if bucketed else None
    return [loader.collate([examples[i] for i in rows], pad_id)[1:]
            for rows in epoch_batches(len(examples), batch_size, seed, lengths)]

# -----------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default=os.path.join("data", "hh", "out", "prefs_test.jsonl"),
                        help="a preference JSONL file {prompt, chosen, rejected}")
    parser.add_argument("--block_size", type=int, default=512)
    parser.add_argument("--tokenizer", default="gpt2", help="'gpt2' or 'byte'")
    parser.add_argument("--batch_sizes", default="8,16", help="comma-separated rows (pairs) per batch")
    parser.add_argument("--seed", type=int, default=1337, help="the batch order's seed")
    args = parser.parse_args(argv)
    try:
        sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        raise ConfigError(f"--batch_sizes={args.batch_sizes!r}: expected integers, e.g. 8,16") from None
    if min(sizes) < 1 or args.block_size < 1:
        raise ConfigError("--batch_sizes and --block_size must be positive")
    try:
        enc = get_tokenizer(args.tokenizer)
    except (RuntimeError, ValueError) as e:  # offline without tiktoken's files, or a bad name
        raise ConfigError(f"--tokenizer={args.tokenizer!r}: {e}") from None

    # 1. lengths of everything, before the length policy
    records = [obj for _, obj in loader.read_jsonl(args.input)]
    for key in ("prompt", "chosen", "rejected"):
        if any(not isinstance(r.get(key), str) for r in records):
            raise ConfigError(f"--input={args.input!r}: every record needs a string {key!r} "
                              f"(a prefs_*.jsonl file of data/hh/prepare.py)")
    prompt = [len(encode_prompt(enc, r["prompt"])) for r in records]
    chosen = [len(encode_response(enc, r["chosen"])) for r in records]
    rejected = [len(encode_response(enc, r["rejected"])) for r in records]
    lengths = {"prompt": prompt, "chosen": chosen, "rejected": rejected,
               "prompt+chosen": [p + c for p, c in zip(prompt, chosen)],
               "prompt+longer": [p + max(c, r) for p, c, r in zip(prompt, chosen, rejected)]}
    table = {name: describe(v, args.block_size) for name, v in lengths.items()}
    print(f"\ntoken lengths ({args.tokenizer}) of {len(records)} pairs in {args.input}")
    print(f"{'':15s} {'mean':>7s} {'p50':>6s} {'p90':>6s} {'p99':>6s} {'max':>6s}   > {args.block_size}")
    for name, d in table.items():
        print(f"{name:15s} {d['mean']:7.1f} {d['p50']:6d} {d['p90']:6d} {d['p99']:6d} {d['max']:6d}"
              f"   {d['over']} ({d['over'] / len(records):.1%})")

    # 2. padded batches, after the loaders' length policy
    pairs = loader.load_preferences(args.input, enc, args.block_size)
    sft = sft_examples(records, enc, args.block_size)
    shares = {}
    print(f"\nshare of padded batch positions at block_size {args.block_size} (one epoch, seed {args.seed})")
    print(f"{'batches':22s} {'bucketing':20s} {'padding':>8s} {'prompt':>8s} {'response':>9s} {'positions':>10s}")
    for stage, build in (("RM/DPO", pair_batches), ("SFT", sft_batches)):
        examples = pairs if stage == "RM/DPO" else sft
        for B in sizes:
            for bucketed in (False, True, "shared") if stage == "RM/DPO" else (False, True):
                extra = dict(shared=True) if bucketed == "shared" else {}
                s = batch_shares(build(examples, B, args.seed, bool(bucketed), enc.eot_token,
                                       **extra))
                shares[(stage, B, bucketed)] = s
                what = f"{stage} {B} {'pairs' if stage == 'RM/DPO' else 'rows'}"
                how = {False: "off", True: "on", "shared": "on, each prompt once"}[bucketed]
                print(f"{what:22s} {how:20s} {s['padding']:8.1%} {s['prompt']:8.1%} "
                      f"{s['response']:9.1%} {s['positions']:10d}")
    return dict(lengths=table, shares=shares, n_pairs=len(pairs))


if __name__ == "__main__":
    config.cli(main)
