"""
SPIN's pairs (Chen et al. 2024, "Self-Play Fine-Tuning Converts Weak Language Models to Strong
Language Models", Algorithm 1): for each demonstration (x, y) the policy of iteration t answers x
itself, and the pair is (prompt x, chosen = y, rejected = y' ~ pi_t(.|x)). train_dpo.py then
trains on them unchanged, from pi_t and with pi_t as its reference (beta = the paper's lambda,
0.1); the result is pi_{t+1}, whose samples make the next iteration's pairs.

    python data/toy/spin.py --policy=out/sft_toy/ckpt_best.pt --prefix=spin1        # iteration 1
    python train_dpo.py config/spin_toy.py              # from the SFT policy, against it
    python data/toy/spin.py --policy=out/spin1_toy/ckpt_last.pt --prefix=spin2 --seed=1338
    python train_dpo.py config/spin_toy.py --init_from=out/spin1_toy/ckpt_last.pt \
        --train_data=data/toy/out/spin/spin2_train.jsonl \
        --val_data=data/toy/out/spin/spin2_val.jsonl --out_dir=out/spin2_toy       # iteration 2
    python data/toy/spin.py --help                      # every config key and its default

(`python pipeline.py --methods=spin` runs spin_iters iterations and an SFT control.)

Writes, in out_dir:
    {prefix}_train.jsonl     {"prompt", "chosen", "rejected"}: the first max_pairs demonstrations
                             of `demos`, each against one sample of the policy
    {prefix}_val.jsonl       the same for the first max_val_pairs held-out demonstrations
                             (`val_demos`): DPO's held-out accuracy on them is SPIN's accuracy,
                             how often the new policy tells a demonstration from its predecessor's
                             answer
    {prefix}_manifest.json   written last (run.DataSet): the files, settings, inputs and what the
                             gold judge says of the pairs
A sample identical to its demonstration makes no pair (its log-ratios cancel: no gradient), nor
does an empty one; both are counted. The gold judge never chooses anything here; it only
measures how often the sample SPIN pushes away from is better than the demonstration it pulls
towards (the toy world's demonstrations are mediocre on purpose: 70% are flawed).

Deliberately left out: mixing the pairs of earlier iterations into later ones (the paper's
appendix tries it), and any filtering of the demonstrations.
"""

import json
import os
import re
import statistics
import sys
import time

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import torch  # noqa: E402

import checkpoint  # noqa: E402
import config  # noqa: E402
import run  # noqa: E402
import runtime  # noqa: E402
from data import loader  # noqa: E402
from data.toy import judge  # noqa: E402
from data.toy.label import GOLD, sample_answers, write_jsonl  # noqa: E402
from tokenizer import encode_prompt, encode_response, get_tokenizer  # noqa: E402

DEFAULTS = dict(
    policy="out/sft_toy/ckpt_best.pt",      # pi_t: its samples are the rejected answers
    demos="data/toy/out/sft_train.jsonl",   # the demonstrations {"prompt", "response"}: chosen
    val_demos="data/toy/out/sft_val.jsonl",  # held-out demonstrations: SPIN's accuracy ('' = none)
    out_dir="data/toy/out/spin",            # a folder of its own (label.py writes to data/toy/out)
    prefix="spin1",                         # file names: {prefix}_train.jsonl, ...
    max_pairs=2000,                         # the first N demonstrations (-1 = all)
    max_val_pairs=200,                      # the first N held-out demonstrations (-1 = all)
    temperature=1.0,                        # the policy's sampling temperature
    max_new_tokens=64,
    batch_size=64,                          # rows per generate call
    block_size=128,
    seed=1337,                              # the sampling noise (give each iteration its own)
    device="auto",
    overwrite=False,                        # replace an earlier set with this prefix in out_dir
)

NAMES = ("train", "val")


def load_demos(path, n, enc, cfg):
    """The first n (all for n = -1) demonstrations of a JSONL file as [dict(prompt, response,
    ids)], ids the prompt's tokens for generation; a demonstration that does not fit block_size
    with its prompt, or a prompt the toy judge cannot read, is a DataError naming the line."""
    demos = []
    for lineno, obj in loader.read_jsonl(path)[:None if n < 0 else n]:
        prompt, response = obj.get("prompt"), obj.get("response")
        if not (isinstance(prompt, str) and isinstance(response, str) and prompt and response):
            raise config.DataError(f"{path}:{lineno}: a demonstration needs the text fields "
                                   f"'prompt' and 'response'")
        ids = encode_prompt(enc, prompt)
        if len(ids) + max(len(encode_response(enc, response)), cfg.max_new_tokens) > cfg.block_size:
            raise config.DataError(f"{path}:{lineno}: the prompt and its answer do not fit "
                                   f"block_size={cfg.block_size}")
        try:
            judge.parse_prompt(prompt)
        except ValueError:
            raise config.DataError(f"{path}:{lineno}: {prompt[:60]!r} is not a toy-world prompt: "
                                   f"the gold judge cannot measure its answers") from None
        demos.append(dict(prompt=prompt, response=response, ids=ids))
    return demos


def spin_pairs(demos, samples):
    """
    SPIN's pairs: (prompt, chosen = the demonstration, rejected = the policy's sample), in the
    demonstrations' order, and the number of samples that make none: identical to their
    demonstration (the log-ratios cancel), or empty (None: an immediate EOS, which the sampler
    drops). demos: [dict(prompt, response)]; samples: one text or None per demonstration.
    """
    pairs = [dict(prompt=d["prompt"], chosen=d["response"], rejected=s)
             for d, s in zip(demos, samples) if s is not None and s != d["response"]]
    return pairs, len(demos) - len(pairs)


def gold_summary(pairs):
    """What the gold judge says of the pairs (measured, never used): the mean gold of the
    demonstrations and of the samples, and the share of pairs whose sample beats its
    demonstration (SPIN pushes away from the better answer there)."""
    demo = [GOLD(p["prompt"], p["chosen"]) for p in pairs]
    sample = [GOLD(p["prompt"], p["rejected"]) for p in pairs]
    return dict(gold_demo=round(statistics.fmean(demo), 4) if pairs else None,
                gold_sample=round(statistics.fmean(sample), 4) if pairs else None,
                sample_better=round(sum(s > d for d, s in zip(demo, sample)) / max(len(pairs), 1), 4))


def validate(cfg):
    """Bad values fail here, naming the key, before anything is loaded, sampled or written."""
    config.validate(cfg, {
        "max_pairs": (lambda v: v == -1 or v > 0, "> 0, or -1 for all"),
        "max_val_pairs": (lambda v: v == -1 or v > 0, "> 0, or -1 for all"),
        "temperature": (lambda v: v > 0, "> 0"),
        "max_new_tokens": (lambda v: 0 < v < cfg.block_size, "in 1..block_size - 1")})
    config.require(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", cfg.prefix) and ".." not in
                   cfg.prefix, f"config key 'prefix' must be a file-name prefix "
                   f"(letters, digits, '_', '-', '.'; no path separator or '..'), got {cfg.prefix!r}")
    config.require_files(cfg, "policy", "demos", "val_demos",
                         hint="python data/toy/prepare.py, then python train_sft.py")


def main(argv=None):
    cfg = config.parse_config(DEFAULTS, argv, __doc__)
    validate(cfg)
    names = [f"{cfg.prefix}_{name}.jsonl" for name in NAMES]
    settings = {k: v for k, v in vars(cfg).items() if k not in ("out_dir", "overwrite", "batch_size")}
    inputs = {p: run.sha256_of(p) for p in (cfg.policy, cfg.demos, cfg.val_demos) if p}
    with run.DataSet(cfg.out_dir, cfg.prefix, names, f"SPIN's pairs (prefix {cfg.prefix!r})",
                     settings, inputs, cfg.overwrite) as out:
        write_pairs(cfg, out)


def write_pairs(cfg, out):
    """The policy and the demonstrations loaded and checked, one sample per demonstration, the
    pairs written into the DataSet out, then committed with the gold judge's summary."""
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    device = runtime.pick_device(cfg.device)
    model, tok_name = checkpoint.init_policy(cfg.policy)
    checkpoint.check_sampling_vocab(model, tok_name, cfg.policy)
    checkpoint.check_block_size(model, cfg.block_size, cfg.policy)
    model.to(device).eval()
    enc = get_tokenizer(tok_name)
    splits = [("train", cfg.demos, cfg.max_pairs, 0)]
    if cfg.val_demos:
        splits.append(("val", cfg.val_demos, cfg.max_val_pairs, 1))
    demos = {name: load_demos(path, n, enc, cfg) for name, path, n, _ in splits}  # all checked first
    summary = {}
    for name, path, _, stream in splits:
        print(f"{name}: {cfg.policy} answers the prompts of {len(demos[name])} demonstrations "
              f"of {path} (temperature {cfg.temperature})")
        # one answer per demonstration (None where it was empty: the sampler drops those)
        samples = [(s or [None])[0] for s in sample_answers(model, enc, demos[name], 1, cfg,
                                                            stream, device)]
        pairs, same = spin_pairs(demos[name], samples)
        if not pairs:
            raise config.DataError(f"{cfg.policy}: every sample equals its demonstration: "
                                   f"no {name} pair (SPIN has converged on these prompts)")
        with out.writing(f"{cfg.prefix}_{name}.jsonl") as p:
            write_jsonl(p, pairs)
        summary[name] = dict(pairs=len(pairs), no_pair=same, **gold_summary(pairs))
        s = summary[name]
        print(f"  {len(pairs)} pairs, {same} samples empty or identical to their demonstration; "
              f"gold: demonstrations {s['gold_demo']:+.3f}, samples {s['gold_sample']:+.3f}; "
              f"the sample beats its demonstration in {s['sample_better']:.1%} of pairs")
    out.commit(summary=summary)
    for name, *_ in splits:
        print(f"wrote {os.path.join(cfg.out_dir, f'{cfg.prefix}_{name}.jsonl')}")
    print(f"wrote {os.path.join(cfg.out_dir, out.manifest)} (the set is complete); "
          f"done in {time.time() - t0:.1f}s")
    return summary


if __name__ == "__main__":
    config.cli(main)
