"""
Rejection-sampling fine-tuning's data (Llama 2, Touvron et al. 2023, sec. 3.2.3; RAFT, Dong et al.
2023): the policy writes k answers to every prompt, the reward model keeps its favourite, and
the kept answers become demonstrations for a round of SFT. Best-of-k distilled into the policy:
what best-of-N does at every query, learned once.

    python rejection_sampling.py                     # 8 SFT answers to each toy RL prompt, ~4 min
    python train_sft.py config/rs_toy.py             # the SFT step on the kept answers
    python train_ppo.py config/ppo_toy.py --init_from=out/rs_toy/ckpt_last.pt   # and PPO from it
    python pipeline.py                               # all three, in the default run

The reward model picks; the gold judge never does (with gold_judge='toy' it only reports the gold
of the kept answers against all of them). Only answers that end (EOS) and are not empty can be
kept: a cut-off answer would teach the policy to stop mid-sentence.

Writes, in out_dir ({prefix} = 'rs'), as one set (run.DataSet: it appears whole or not at all):
    {prefix}_train.jsonl    {"prompt", "response", "score"}: the kept answer to each prompt but the
                            last num_val_prompts, SFT format (train_sft.py reads it as it is)
    {prefix}_val.jsonl      the same for the last num_val_prompts prompts: SFT's held-out loss
    {prefix}_manifest.json  written last: the files, the settings and the inputs
"""

import os
import statistics
import time

import torch

import checkpoint
import config
import run
import runtime
from data import loader
from data.toy.prepare import write_jsonl
from eval import generate_and_score
from rollout import toy_gold_judge
from tokenizer import decode_response, get_tokenizer

DEFAULTS = dict(
    policy="out/sft_toy/ckpt_best.pt",        # the policy that writes the answers
    reward_model="out/rm_toy/ckpt_best.pt",   # one scalar checkpoint, or an ensemble's members
    reward_agg="mean",                        # an ensemble's scores: 'mean' | 'min' | 'uwo'
    uwo_lambda=1.0,
    prompts="data/toy/out/prompts_train.jsonl",
    out_dir="data/toy/out",
    prefix="rs",
    k=8,                      # answers per prompt; the reward model keeps one
    num_val_prompts=100,      # the last prompts' kept answers: SFT's held-out set
    max_new_tokens=64,
    temperature=1.0,          # the policy's own distribution: what best-of-k improves on
    block_size=128,
    batch_size=64,            # answers per generation batch (the choice does not depend on it)
    gold_judge="toy",         # 'toy': report the gold of the kept answers | ''
    seed=1337,
    device="auto",
    overwrite=False,
)
NAMES = ("train", "val")

# -----------------------------------------------------------------------------


def keep_best(scores, usable, k):
    """The index of each prompt's kept answer among its k (prompt-major rows, row i * k + j is
    answer j of prompt i): the highest score among the usable ones (the first on a tie), or -1
    when none is usable. scores, usable: (n * k,). Returns a list of n ints.
    Test: tests/test_rejection_sampling.py::test_keep_best_by_hand"""
    s = torch.as_tensor(scores, dtype=torch.float64).view(-1, k)
    ok = torch.as_tensor(usable, dtype=torch.bool).view(-1, k)
    best = s.masked_fill(~ok, -torch.inf).argmax(1)
    return [j if any_ok else -1 for j, any_ok in zip(best.tolist(), ok.any(1).tolist())]


def validate(cfg):
    """Bad values fail here, with the key's name, before anything is loaded or written."""
    config.validate(cfg, {
        "k": (lambda v: v >= 2, ">= 2 (one answer leaves nothing to reject)"),
        "num_val_prompts": (lambda v: v >= 1, ">= 1"),
        "uwo_lambda": (lambda v: v >= 0, ">= 0"),
        "reward_agg": (lambda v: v in ("mean", "min", "uwo"), "'mean', 'min' or 'uwo'"),
        "gold_judge": (lambda v: v in ("", "toy"), "'' or 'toy'")})
    config.require_files(cfg, "policy", "prompts", "reward_model",
                         hint="toy: python data/toy/prepare.py, then train_sft.py, label.py, "
                              "train_reward_model.py")


def main(argv=None):
    cfg = config.parse_config(DEFAULTS, argv, __doc__)
    validate(cfg)
    device = runtime.pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    policy, tok = checkpoint.init_policy(cfg.policy)
    checkpoint.check_sampling_vocab(policy, tok, cfg.policy)
    checkpoint.check_block_size(policy, cfg.block_size, cfg.policy)
    reward_model = checkpoint.load_reward_model(cfg.reward_model, tok, policy.config.vocab_size,
                                                cfg.reward_agg, cfg.uwo_lambda)
    policy, reward_model = policy.to(device).eval(), reward_model.to(device).eval()
    enc = get_tokenizer(tok)
    prompts = loader.load_prompts(cfg.prompts, enc, cfg.block_size, cfg.max_new_tokens)
    config.require(len(prompts) > cfg.num_val_prompts, f"{cfg.prompts}: {len(prompts)} prompts, "
                   f"not more than num_val_prompts={cfg.num_val_prompts}")
    settings = {k: v for k, v in vars(cfg).items()
                if k not in ("out_dir", "overwrite", "batch_size")}
    inputs = {p: run.sha256_of(p) for p in [cfg.policy, cfg.prompts,
                                            *checkpoint.reward_model_paths(cfg.reward_model)]}
    with run.DataSet(cfg.out_dir, cfg.prefix, [f"{cfg.prefix}_{n}.jsonl" for n in NAMES],
                     f"a rejection-sampling set (prefix {cfg.prefix!r})", settings, inputs,
                     cfg.overwrite) as out:
        # 1. k answers to every prompt, each scored by the reward model
        t0, k = time.time(), cfg.k
        print(f"{k} answers to each of {len(prompts)} prompts from {cfg.policy}, scored by "
              f"{cfg.reward_model}")
        with torch.no_grad():
            got = generate_and_score(policy, [p["ids"] for p in prompts for _ in range(k)], enc,
                                     reward_model, max_new_tokens=cfg.max_new_tokens,
                                     temperature=cfg.temperature, batch_size=cfg.batch_size,
                                     seed=cfg.seed, device=device, samples_per_prompt=k,
                                     progress=lambda done, n: print(
                                         f"\r  {done}/{n} answers ({time.time() - t0:.0f}s)",
                                         end="", flush=True))
        print()
        texts = [decode_response(enc, t) for t in got["tokens"]]
        usable = [bool(e) and bool(t.strip()) for e, t in zip(got["eos"], texts)]
        # 2. the reward model keeps each prompt's favourite
        rows, gold_kept, gold_all = [], [], []
        gold = toy_gold_judge() if cfg.gold_judge == "toy" else None
        for i, j in enumerate(keep_best(got["rm"], usable, k)):
            if j < 0:
                continue
            p = prompts[i]
            rows.append(dict(prompt=p["prompt"], response=texts[i * k + j],
                             score=got["rm"][i * k + j]))
            if gold is not None:
                answers = [texts[i * k + a] for a in range(k) if usable[i * k + a]]
                gold_kept.append(gold(p["prompt"], texts[i * k + j]))
                gold_all.append(statistics.fmean(gold(p["prompt"], a) for a in answers))
        # 3. the demonstrations, and a held-out slice of them
        n_val = cfg.num_val_prompts
        config.require(len(rows) > n_val, f"{cfg.policy}: only {len(rows)} prompts have an "
                       f"answer that ends, not more than num_val_prompts={n_val}")
        for name, part in (("train", rows[:-n_val]), ("val", rows[-n_val:])):
            with out.writing(f"{cfg.prefix}_{name}.jsonl") as path:
                write_jsonl(path, part)
        out.commit(counts={"train": len(rows) - n_val, "val": n_val})
    kept = statistics.fmean(r["score"] for r in rows)
    print(f"kept {len(rows)} answers ({len(prompts) - len(rows)} prompts without an answer that "
          f"ends), mean score {kept:+.3f} against {statistics.fmean(got['rm']):+.3f} for all"
          + (f"; gold {statistics.fmean(gold_kept):+.3f} against {statistics.fmean(gold_all):+.3f}"
             if gold_kept else "") + f"; {time.time() - t0:.0f}s")
    print(f"wrote {os.path.join(cfg.out_dir, cfg.prefix + '_train.jsonl')} and _val.jsonl")
    return dict(kept=len(rows), score_kept=kept, gold_kept=statistics.fmean(gold_kept)
                if gold_kept else None, gold_all=statistics.fmean(gold_all) if gold_all else None)


if __name__ == "__main__":
    config.cli(main)
