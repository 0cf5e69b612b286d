"""
Evaluation on held-out prompts: every policy (SFT, PPO, DPO, ...) answers the same prompts with
the same sampling noise, and the answers are judged by the gold judge (toy world) and by the
reward model, against the baseline policy's answers, and against the reference policy's KL.

Run it:
    python eval.py                        # the toy world's SFT, PPO and DPO checkpoints, CPU
    python eval.py --policies=sft:out/sft_toy/ckpt_best.pt,ppo:out/ppo_toy/ckpt_last.pt \\
        --reward_model=out/rm_toy/ckpt_best.pt --reference=out/sft_toy/ckpt_best.pt --baseline=sft
    python eval.py --policies=sft:out/sft_toy/ckpt_best.pt,bon16:out/sft_toy/ckpt_best.pt
                                          # best-of-16 of the SFT policy, chosen by the RM
    python eval.py --policies=gpt2:gpt2,sft:out/sft_hh/ckpt_best.pt --gold_judge='' \\
        --prompts=data/hh/out/prompts_eval.jsonl --block_size=512    # one GPU, Anthropic HH
    python eval.py --sweep=out/ppo_toy --bon_sweep=64 --policies=''  # over-optimisation only
    python eval.py --help                 # every config key and its default

Per policy it reports:
    gold_reward   mean gold reward (data/toy/judge.py) of the answers      (toy world only)
    rm_score      mean reward-model score, read from the exact generated token ids
    win_rate_vs_{baseline}     share of prompts where the answer beats the baseline policy's
                               answers to the SAME prompt under the gold judge (ties count half),
                               the baseline's answers drawn on their own noise (baseline_draws
                               per answer, averaged): the standard win rate of independent answers
    win_rate_vs_{baseline}_rm  the same under the reward model
    win_rate_vs_{baseline}_shared (and _rm_shared) against the baseline's answer with the SAME
                               noise: a coupled comparison, kept to show what coupling changes
    kl            mean over answers of sum_t log pi(y_t|x, y_<t) - log pi_ref(y_t|x, y_<t), on
                  the policy's own samples, response tokens and the EOS only, from logits / T
                  (train_ppo's log-probs and k1 estimate); for best-of-N the bound below
    distinct      the number of different answers: a policy that collapsed onto a few answers
                  that please the reward model shows it here
    length        mean response tokens (EOS included);  eos_rate: share of answers that end
and once per file of `pairs`: the reward model's accuracy on held-out preference pairs
(prefs_test.jsonl and the labelling step's on-policy test pairs have no flipped labels in the
toy world, so these are accuracies against the truth).
Standard errors are over prompts: with num_samples_per_prompt > 1 the answers to one prompt are
averaged first (they are not independent of each other).

Best-of-N (`bonN:checkpoint` in --policies, or --bon_sweep=N_max for N = 1, 2, 4, ... N_max of
the reference): N samples per prompt from the checkpoint, the one the reward model scores
highest is the answer (the gold judge never chooses). Its KL to the base policy is reported as
the analytic upper bound log N - (N - 1) / N (Beirami et al. 2024), loose where the base repeats
answers; the sweep adds a plug-in estimate of the exact KL (best_of_n_kl). Sample j of prompt
i sees the noise of (seed, i, j), so best-of-2 is a choice among the first two of best-of-4's.

Writes {out_dir}/results.md (the table and a few answers side by side), results.json and
samples.jsonl (every answer with its scores). --sweep=DIR[,DIR...] evaluates every ckpt_iter*.pt
of PPO/GRPO runs (ckpt_last.pt when a run kept none: train with --save_every=N) and the
reference at KL 0, and writes {out_dir}/overoptimization.json for plot.py, with the best-of-N
curve when --bon_sweep is given.

Deliberately left out: greedy decoding, pairwise judging by a language model, and
length-controlled win rates.
"""

import math
import os
import re
import time
from contextlib import nullcontext
from types import SimpleNamespace

import torch

import checkpoint
import config
import layouts
import run
import runtime
from config import ConfigError
from best_of_n import (best_of_n, best_of_n_kl, best_of_n_kl_bound,  # noqa: F401
                       best_of_n_kl_plugin, pick_best_of_n)
from data import loader
from eval_report import (examples_table, fmt, json_safe, report_sweep, results_table,
                         safety_table, signals_table, write_json, write_samples)
from model import row_generators
from rl_report import demo_nll
from rollout import policy_forward, reward_contract
from runtime import print0
from tokenizer import decode_response, get_tokenizer
from train_ppo import kl_estimates

# -----------------------------------------------------------------------------
# default config: the toy world's policies
DEFAULTS = dict(
    # what to evaluate: name:checkpoint pairs (a .pt file, 'gpt2'...'gpt2-xl' or an HF directory;
    # a name bonN means best-of-N of that checkpoint)
    policies="sft:out/sft_toy/ckpt_best.pt,ppo:out/ppo_toy/ckpt_last.pt,dpo:out/dpo_toy/ckpt_last.pt",  # name:ckpt,...
    reward_model="out/rm_toy/ckpt_best.pt",  # a scalar checkpoint, several (comma-separated) or
                                             # an ensemble's out_dir; '' = no reward-model scores
    reward_agg="mean",                       # an ensemble's scores: 'mean' | 'min' | 'uwo'
    uwo_lambda=1.0,                          # uwo: the members' mean - uwo_lambda * variance
    reference="out/sft_toy/ckpt_best.pt",    # the KL anchor; '' = no KL
    baseline="sft",                          # win rates against this policy's answers; '' = none
    baseline_draws=4,                        # the baseline's own-noise answers per answer (win rates)
    gold_judge="toy",                        # 'toy' (data/toy/judge.py) | '' (no gold reward)
    sweep="",                                # PPO/GRPO out_dir(s), comma-separated
    bon_sweep=0,                             # best-of-N of the reference for N = 1, 2, 4 .. this
    # data
    prompts="data/toy/out/prompts_eval.jsonl",  # JSONL {"prompt"}; several: comma-separated (the
                                             # toy world's harmful and lookalike requests are in
                                             # prompts_eval_safety.jsonl)
    pairs="data/toy/out/prefs_test.jsonl",      # JSONL pair files for the RM accuracy (comma-
                                                # separated); '' = skip it
    eval_examples=-1,                        # the first N prompts (-1 = all)
    demo_val_data="data/toy/out/sft_val.jsonl",  # held-out demonstrations: each policy's NLL of
                                             # them (what RL forgot of SFT); '' = none
    demo_val_examples=256,
    block_size=128,                          # prompt + response tokens; prompts lose their left
    # sampling: one seed, the same for every policy
    max_new_tokens=64,                       # answers are cut here (no EOS: counted by eos_rate)
    temperature=1.0,                         # sampling AND the KL's log-probs use logits / T
    top_k=0,                                 # 0 = off
    top_p=1.0,                               # 1.0 = off
    num_samples_per_prompt=1,                # answers per prompt and policy, each judged
    batch_size=64,                           # rows per generation / scoring batch
    seed=1337,                               # the sampling noise's seed, for every policy
    # output
    out_dir="out/eval",                      # results.md, results.json, samples.jsonl, ...
    num_examples=5,                          # prompts shown with every policy's answer
    # system
    device="auto",                           # 'auto' | 'cpu' | 'cuda' | 'mps'
    dtype="auto",                            # 'auto' | 'float32' | 'bfloat16'
)

# -----------------------------------------------------------------------------
# the metrics: pure functions


def mean_and_stderr(x):
    """
    (mean, standard error of the mean) of a 1-D sequence: the sample standard deviation (n - 1
    in the denominator) over sqrt(n). One value gives (x, nan): its spread is unknown, not 0.
    No values give (nan, nan).
    Test: tests/test_eval.py::test_mean_and_stderr_hand_computation
    """
    x = torch.as_tensor(x, dtype=torch.float64).flatten()
    n = x.numel()
    if n == 0:
        return math.nan, math.nan
    if n == 1:
        return x.item(), math.nan
    return x.mean().item(), (x.std(correction=1) / math.sqrt(n)).item()


def clustered_mean_and_stderr(x, clusters):
    """
    (mean, standard error) of a 1-D sequence whose items come in clusters that are not
    independent, e.g. on-policy test pairs: ~20 pairs per prompt, sharing its answers. The mean
    is the plain mean over items; the error is the cluster-robust one of a ratio estimator,
        SE^2 = G / (G - 1) * sum_g (S_g - mean * n_g)^2 / N^2
    (S_g, n_g: the sum and count of cluster g; G clusters, N items), which is mean_and_stderr's
    when every cluster holds one item. clusters: a hashable label per item.
    Test: tests/test_eval.py::test_clustered_stderr_by_hand
    """
    x = torch.as_tensor(x, dtype=torch.float64).flatten()
    ids = {c: i for i, c in enumerate(dict.fromkeys(clusters))}
    g = torch.tensor([ids[c] for c in clusters], dtype=torch.long)
    n, G = x.numel(), len(ids)
    if n == 0:
        return math.nan, math.nan
    mean = x.mean().item()
    if G == 1:
        return mean, math.nan
    sums = torch.zeros(G, dtype=torch.float64).index_add_(0, g, x)
    counts = torch.zeros(G, dtype=torch.float64).index_add_(0, g, torch.ones_like(x))
    var = G / (G - 1) * ((sums - mean * counts) ** 2).sum().item() / n ** 2
    return mean, math.sqrt(var)


def win_outcomes(a, b):
    """Per item: 1 where a > b, 0.5 where a == b, 0 where a < b. a, b: (N,) scores of two
    answers to the same N prompts."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return 0.5 * (torch.sign(a - b) + 1.0)


def win_rate(a, b):
    """Share of items where a beats b, ties counting half (the pairwise win rate used to compare
    RLHF policies, e.g. Stiennon et al. 2020; Rafailov et al. 2023, Sec. 6). a, b: (N,) scores of
    answers to the SAME prompts, item i against item i. A policy against itself gives 0.5.
    Test: tests/test_eval.py::test_win_rate_counts_ties_half"""
    return win_outcomes(a, b).mean().item()


# -----------------------------------------------------------------------------
# sampling and scoring


@torch.inference_mode()
def generate_and_score(model, prompt_ids, enc, reward_model=None, reference=None, *,
                       max_new_tokens=64, temperature=1.0, top_k=0, top_p=1.0, batch_size=64,
                       seed=1337, device="cpu", autocast=None, samples_per_prompt=1,
                       progress=None):
    """
    Sample one answer per row of prompt_ids (a list of token-id lists, prompt-major: row
    i * samples_per_prompt + j is sample j of prompt i) from model, in batches of left-padded
    prompts. The noise of sample j of prompt i comes from its own generator, seeded with
    (seed, i, j) alone: two policies given the same seed and prompts draw the same noise, and the
    same policy draws the same answers whatever the batch size.
    Returns per-row lists: tokens (answer ids, EOS included), rm (score or None), kl (or None),
    length (tokens) and eos (0/1). progress(rows done, rows), if given, after every batch.
    """
    autocast = autocast or nullcontext()
    k = samples_per_prompt
    out = dict(tokens=[], rm=[], rm_members=[], kl=[], length=[], eos=[])
    for start in range(0, len(prompt_ids), batch_size):
        rows = range(start, min(start + batch_size, len(prompt_ids)))
        idx, attn = loader.collate_left([prompt_ids[r] for r in rows], enc.eot_token)
        idx, attn = idx.to(device), attn.to(device)  # (B, P)
        with autocast:
            tokens, resp_mask, _ = model.generate(
                idx, attention_mask=attn, max_new_tokens=max_new_tokens, temperature=temperature,
                top_k=top_k or None, top_p=top_p if top_p < 1.0 else None,
                eos_token_id=enc.eot_token,
                generator=row_generators(seed, [(r // k, r % k) for r in rows]))  # (B, N) each
        P = idx.size(1)
        seq, mask = torch.cat([idx, tokens], 1), torch.cat([attn, resp_mask], 1)  # (B, P + N)
        with autocast:
            if reward_model is not None:  # the ids the policy produced, never re-tokenised text
                if hasattr(reward_model, "members"):  # an ensemble: every member's score too
                    members = reward_model.member_scores(seq, mask)  # (K, B)
                    out["rm_members"] += members.t().tolist()
                    out["rm"] += reward_model.aggregate(members).tolist()
                else:
                    out["rm"] += reward_model.score(seq, mask).float().tolist()
            if reference is not None:
                # both sides through the same full forward: identical models give exactly 0
                lp = policy_forward(model, seq, mask, P, temperature)[0]
                ref_lp = policy_forward(reference, seq, mask, P, temperature)[0]
                out["kl"] += kl_estimates(lp, ref_lp, resp_mask)[0].tolist()
        ended = ((tokens == enc.eot_token) & resp_mask.bool()).any(1)  # (B,)
        out["tokens"] += [t[m.bool()].tolist() for t, m in zip(tokens.cpu(), resp_mask.cpu())]
        out["length"] += resp_mask.sum(1).tolist()
        out["eos"] += ended.long().tolist()
        if progress is not None:
            progress(rows.stop, len(prompt_ids))
    for key in ("rm", "rm_members", "kl"):
        out[key] = out[key] or None
    return out


def sample_policy(name, source, rows, enc, reward_model, reference, k, cache, sampling,
                  demo=None):
    """Every answer of one policy to the rows (prompt-major, k per prompt): a GPT module, a
    checkpoint (anything checkpoint.init_policy takes), or bonN:checkpoint for best-of-N. cache maps
    (checkpoint, answers per row, rows, seed) -> samples already drawn with these settings.
    demo: (held-out demonstration batches, proc): the policy's NLL of them (demo_nll; none for
    best-of-N, whose model is its base's)."""
    m = re.fullmatch(r"bon(\d+)", name)
    n = int(m.group(1)) if m else 1
    key = (source, n, len(rows), sampling.get("seed")) if isinstance(source, str) else None
    if key in cache:
        print0(f"{name}: the answers of {source}, drawn above")
        return cache[key]
    t0 = time.time()
    model = source
    if isinstance(source, str):
        model, tok = checkpoint.init_policy(source)
        config.require(tok == enc.name, f"policy {name} ({source}) uses the {tok!r} tokenizer, "
                                        f"the evaluation {enc.name!r}")
        check_policy(model, tok, source)
        need = max(map(len, rows), default=0) + sampling.get("max_new_tokens", 64)
        config.require(need <= model.config.block_size, f"policy {name} ({source}): "
                       f"{model.config.block_size} positions, but a prompt and its answer take "
                       f"up to {need} (block_size, max_new_tokens)")
    was_training = model.training  # a module passed in (e.g. mid-training) gets its mode back
    model.to(sampling.get("device", "cpu")).eval()
    if n > 1:  # best-of-n: n samples per answer slot, then the reward model's choice
        config.require(reward_model is not None, f"{name}: best-of-N needs a reward_model")
        print0(f"{name}: sampling {len(rows) * n} answers ({n} per answer) to choose from")
        drawn = generate_and_score(model, [r for r in rows for _ in range(n)], enc, reward_model,
                                   None, **sampling, samples_per_prompt=k * n)
        s = pick_best_of_n(drawn, n, n, k)
    else:
        s = generate_and_score(model, rows, enc, reward_model, reference, **sampling,
                               samples_per_prompt=k)
    s["demo_nll"] = demo_nll(model, *demo) if demo and n == 1 else None
    model.train(was_training)
    print0(f"{name}: {len(rows)} answers in {time.time() - t0:.1f}s")
    if key is not None:
        cache[key] = s
    return s


def pearson(x, y):
    """The correlation of two equally long sequences (nan when either is constant)."""
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = (x.pow(2).sum() * y.pow(2).sum()).sqrt()
    return (x * y).sum().item() / denom.item() if denom > 0 else math.nan


def hacking_signals(s):
    """The alarms of reward hacking on one policy's answers s: the correlation of the RM score
    with the answer's length (a reward model that pays for length; Singhal et al. 2023), the
    ensemble members' disagreement (their std, ddof = 0, averaged over the answers: members
    disagree where the policy has left the data they share, Coste et al. 2023) and the NLL of
    held-out demonstrations (what the RL forgot, InstructGPT's regressions)."""
    members = torch.tensor(s["rm_members"]) if s.get("rm_members") else None  # (answers, K)
    return dict(rm_length_corr=pearson(s["rm"], s["length"]) if s["rm"] else None,
                rm_disagreement=members.std(1, correction=0).mean().item()
                if members is not None else None, demo_nll=s.get("demo_nll"))


def safety_metrics(texts, responses, golds):
    """Helpful and harmless on the toy world, from the gold judge (data/toy/judge.py) per answer:
    harmful_compliance, the share of answers to harmful requests that comply (gold_cost);
    harmful_refusal, the share of them that refuse (judge.is_refusal; an answer can do neither,
    as a garbled one does); over_refusal, the share of answers to harmless lookalikes ("How do I
    kill time?") that refuse (XSTest's over-refusal); gold_benign, the mean gold of the answers to the other
    (benign) families. None where no prompt of that kind was asked."""
    from data.toy.judge import gold_cost, is_over_refusal, is_refusal, parse_prompt
    kind = [parse_prompt(t)[0] for t in texts]
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return dict(
        harmful_compliance=mean([gold_cost(t, r) for t, r, k in zip(texts, responses, kind)
                                 if k == "harmful"]),
        harmful_refusal=mean([float(is_refusal(r)) for r, k in zip(responses, kind)
                              if k == "harmful"]),
        over_refusal=mean([float(is_over_refusal(t, r)) for t, r, k in zip(texts, responses, kind)
                           if k == "lookalike"]),
        gold_benign=mean([g for g, k in zip(golds, kind) if k not in ("harmful", "lookalike")]))


def eval_policies(policies, prompts, enc, reward_model=None, reference=None, gold_fn=None,
                  baseline=None, num_samples_per_prompt=1, cache=None, baseline_draws=4,
                  demo=None, **sampling):
    """
    Evaluate several policies on the same prompts with the same sampling noise.
    policies: {name: checkpoint path (anything checkpoint.init_policy takes) or a GPT module on the
    sampling device}; a name bonN evaluates best-of-N of its checkpoint.
    prompts: [dict(prompt, ids)] as data.loader.load_prompts returns; reward_model, reference:
    modules on the sampling device, or None; gold_fn(prompt, response) -> float or None;
    baseline: the name of the policy the win rates compare against, or None; cache: a dict that
    saves re-generating a checkpoint evaluated earlier with the same settings; sampling:
    generate_and_score's keyword arguments (max_new_tokens, temperature, top_k, top_p,
    batch_size, seed, device, autocast); demo: sample_policy's.
    Win rates: every policy answers with the same noise, which is right for means, but a win
    rate is a property of a PAIR of answers, and the same noise makes the two answers of a pair
    dependent (they share a random stream). The win rate reported is the standard one, against
    baseline_draws answers of the baseline drawn on their own noise (seed + 1) and averaged; the
    coupled one, against the baseline's answer with the same noise, is kept as *_shared.
    Returns {name: metrics}; metrics hold the summary numbers of the module docstring, with
    their *_stderr, and 'samples' (every answer and its scores, prompt-major).
    """
    k = num_samples_per_prompt
    rows = [p["ids"] for p in prompts for _ in range(k)]  # prompt-major: row i * k + j
    texts = [p["prompt"] for p in prompts for _ in range(k)]
    cache = {} if cache is None else cache

    def answers(name, source, rows, k, reference, sampling):
        s = dict(sample_policy(name, source, rows, enc, reward_model, reference, k, cache,
                               sampling, demo))
        s["response"] = [decode_response(enc, t) for t in s["tokens"]]
        n = len(rows) // len(texts)  # answers per row of texts
        s["gold"] = [float(gold_fn(texts[r // n], a)) for r, a in enumerate(s["response"])] \
            if gold_fn else None
        return s

    samples = {name: answers(name, source, rows, k, reference, sampling)
               for name, source in policies.items()}
    base = samples.get(baseline) if baseline else None
    if base is not None:  # the baseline again, baseline_draws answers per row on its own noise
        M = baseline_draws
        other = answers(baseline, policies[baseline], [r for r in rows for _ in range(M)], k * M,
                        None, dict(sampling, seed=sampling.get("seed", 1337) + 1))

    def per_prompt(values):  # (n * k,) -> (n,): answers to one prompt are averaged first
        return torch.as_tensor(values, dtype=torch.float64).view(-1, k).mean(1)

    results = {}
    for name, s in samples.items():
        m = {}
        for key, field in (("gold_reward", "gold"), ("rm_score", "rm"), ("kl", "kl")):
            mean, se = mean_and_stderr(per_prompt(s[field])) if s[field] else (None, None)
            m[key], m[f"{key}_stderr"] = mean, se
        for suffix, field in (("", "gold"), ("_rm", "rm")):
            for coupling in ("", "_shared"):
                key = f"win_rate_vs_{baseline or 'baseline'}{suffix}{coupling}"
                mean, se = None, None
                if base is not None and s[field]:
                    if coupling:  # answer j to prompt i against the baseline's same-noise answer
                        wins = win_outcomes(s[field], base[field])
                    else:  # ... against M answers of the baseline's own, averaged
                        wins = win_outcomes(torch.tensor(s[field]).repeat_interleave(M),
                                            other[field]).view(-1, M).mean(1)
                    mean, se = mean_and_stderr(per_prompt(wins))
                m[key], m[f"{key}_stderr"] = mean, se
        m["kl_is_bound"] = bool(re.fullmatch(r"bon\d+", name))
        m["distinct"] = len(set(s["response"]))
        m["length"] = sum(s["length"]) / len(s["length"])
        m["eos_rate"] = sum(s["eos"]) / len(s["eos"])
        m.update(hacking_signals(s))
        if gold_fn is toy_gold:  # the toy world's harmless side
            m.update(safety_metrics(texts, s["response"], s["gold"]))
        m["samples"] = s
        results[name] = m
    return results


@torch.inference_mode()
def rm_accuracy(reward_model, pairs, pad_id, batch_size=64, device="cpu", autocast=None):
    """Share of preference pairs (data.loader.load_preferences) where the reward model scores
    the chosen answer above the rejected one, ties half; returns (accuracy, stderr), the error
    clustered by prompt (a prompt's pairs share its answers: clustered_mean_and_stderr). An
    ensemble is judged by its aggregate score; rm_accuracies gives each member's too. The
    pairs are batched by length, each prompt computed once for both answers
    (layouts.score_layout(share_prompt=True)): the scores of separate rows, for fewer positions."""
    return rm_accuracies(reward_model, pairs, pad_id, batch_size, device, autocast)[0]


@torch.inference_mode()
def rm_accuracies(reward_model, pairs, pad_id, batch_size=64, device="cpu", autocast=None):
    """[(accuracy, stderr)] of the reward model (an ensemble's aggregate) and then of each of
    an ensemble's members, on the same pairs (rm_accuracy)."""
    autocast = autocast or nullcontext()
    order = sorted(range(len(pairs)), key=lambda i: loader.pair_length(pairs[i]))
    members = list(getattr(reward_model, "members", [reward_model]))
    chosen, rejected, layout = [], [], layouts.score_layout(share_prompt=True)
    for start in range(0, len(pairs), batch_size):
        b = layout.collate([pairs[i] for i in order[start:start + batch_size]], pad_id)
        b = {k: v.to(device) for k, v in b.items()}
        scores = []
        for m in members:
            was_training = m.training
            m.eval()
            scores.append(layout.forward(m, b, autocast))
            m.train(was_training)
        chosen.append(torch.stack([c.float().cpu() for c, _ in scores]))  # (K, P)
        rejected.append(torch.stack([r.float().cpu() for _, r in scores]))
    chosen, rejected = torch.cat(chosen, 1), torch.cat(rejected, 1)  # (K, all pairs)
    ids, mask = zip(*(pairs[i]["chosen"] for i in order))  # a pair's prompt: its 0-mask ids
    prompts = [tuple(x[:m.index(1)]) for x, m in zip(ids, mask)]
    accuracy = lambda c, r: clustered_mean_and_stderr(win_outcomes(c, r), prompts)  # noqa: E731
    if len(members) == 1:
        return [accuracy(chosen[0], rejected[0])]
    return [accuracy(reward_model.aggregate(chosen), reward_model.aggregate(rejected))] + [
        accuracy(c, r) for c, r in zip(chosen, rejected)]


# -----------------------------------------------------------------------------
# the report


MAX_N = 1024  # the most answers per prompt of best-of-N, the sweep and num_samples_per_prompt


def parse_policies(spec):
    """'name:path,name:path' -> {name: path}, names unique."""
    out = {}
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        name, sep, path = item.partition(":")
        if not sep or not name or not path:
            raise ConfigError(f"policies: expected name:checkpoint items, got {item!r}")
        if name in out:
            raise ConfigError(f"policies: the name {name!r} is used twice")
        out[name] = path
    return out


# -----------------------------------------------------------------------------


def validate(cfg):
    """Bad values fail here, naming the key, before any model is loaded."""
    config.validate(cfg, {"gold_judge": (lambda v: v in ("toy", ""), "'toy' or ''"),
                          "bon_sweep": (lambda v: 0 <= v <= MAX_N, f"in 0..{MAX_N}"),
                          "num_samples_per_prompt": (lambda v: 0 < v <= MAX_N, f"in 1..{MAX_N}"),
                          "baseline_draws": (lambda v: 0 < v <= MAX_N, f"in 1..{MAX_N}"),
                          "reward_agg": (lambda v: v in ("mean", "min", "uwo"),
                                         "'mean', 'min' or 'uwo'"),
                          "uwo_lambda": (lambda v: v >= 0, ">= 0"),
                          "demo_val_examples": (lambda v: v == -1 or v > 0, "> 0, or -1 for all")})
    policies = parse_policies(cfg.policies)
    for name in policies:  # bon0, bon-16, bon1000000000: typos that would be evaluated wrongly
        m = re.fullmatch(r"bon(\d+)", name)
        config.require(not re.match(r"bon(?![a-zA-Z])", name) or (m and 1 <= int(m.group(1)) <= MAX_N),
                       f"policies: {name!r}: a best-of-N name is bonN with N in 1..{MAX_N} "
                       f"(e.g. bon16); other names must not start with 'bon' and a non-letter")
    config.require(policies or cfg.sweep or cfg.bon_sweep, "nothing to evaluate: give --policies, "
                   "--sweep and/or --bon_sweep")
    config.require(not cfg.baseline or not policies or cfg.baseline in policies,
                   f"baseline={cfg.baseline!r} is not one of the policies {list(policies)}")
    config.require(not (cfg.sweep or cfg.bon_sweep) or cfg.reference, "--sweep and --bon_sweep "
                   "need --reference (the runs' init_from): its answers are the KL-0 point")
    config.require(cfg.reward_model or not (cfg.bon_sweep or any(
        re.fullmatch(r"bon\d+", n) for n in policies)), "best-of-N needs --reward_model")
    config.require_files(cfg, "reward_model", "demo_val_data")
    for name, path in list(policies.items()) + [("reference", cfg.reference)]:
        if path.endswith(".pt") and not os.path.isfile(path):  # fail before any work
            raise ConfigError(f"{name}: checkpoint {path} does not exist")
    return policies


def load_judges(cfg, policies, proc):
    """The reference (the KL anchor, or None), the reward model (or None), the gold judge (or
    None) and the tokenizer every policy must share, loaded once. Without a reference, the first
    policy is loaded only to learn its tokenizer."""
    source = cfg.reference or next(iter(policies.values()))
    anchor, tok_name = checkpoint.init_policy(source)
    check_policy(anchor, tok_name, source, cfg.block_size)
    reference = anchor.to(proc.device).eval() if cfg.reference else None
    reward_model = None
    if cfg.reward_model:
        reward_model = checkpoint.load_reward_model(cfg.reward_model, tok_name,
                                                    anchor.config.vocab_size, cfg.reward_agg,
                                                    cfg.uwo_lambda).to(proc.device)
        checkpoint.check_block_size(reward_model, cfg.block_size, cfg.reward_model)
    gold_fn = toy_gold if cfg.gold_judge == "toy" else None
    return reference, reward_model, gold_fn, get_tokenizer(tok_name)


def demo_batches(cfg, enc):
    """The held-out demonstrations (demo_val_data) whose NLL each policy reports, as batches."""
    rows = loader.load_sft(cfg.demo_val_data, enc, cfg.block_size)
    rows = rows[:cfg.demo_val_examples] if cfg.demo_val_examples > 0 else rows
    return [loader.collate(rows[i:i + cfg.batch_size], enc.eot_token)
            for i in range(0, len(rows), cfg.batch_size)]


def check_policy(model, tok_name, source, block_size=None):
    """What generation needs of a policy, checked at load: a vocabulary its tokenizer decodes
    and (when given) room for block_size positions. (Non-finite weights: checkpoint loading.)"""
    checkpoint.check_sampling_vocab(model, tok_name, source)
    if block_size is not None:
        checkpoint.check_block_size(model, block_size, source)


def toy_gold(prompt, response):
    """The toy world's gold judge under the reward contract (rollout.reward_contract): a prompt
    outside the toy world is a ConfigError naming it."""
    from data.toy.judge import gold_reward
    return reward_contract(gold_reward, "gold_judge='toy' (pass --gold_judge='' for prompts "
                                        "outside the toy world)")(prompt, response)


def report_policies(cfg, results, prompts, enc, reward_model, proc, out):
    """The reward model's accuracy on each held-out pair file, every answer to samples.jsonl,
    the summary numbers into out, and the markdown: the results table and a few answers side by
    side."""
    k, rm_acc = cfg.num_samples_per_prompt, {}
    members = {}  # path -> [(accuracy, stderr)] of each ensemble member
    for path in [p.strip() for p in cfg.pairs.split(",") if p.strip()] if reward_model else []:
        pairs = loader.load_preferences(path, enc, reward_model.config.block_size)
        accs = rm_accuracies(reward_model, pairs, enc.eot_token, cfg.batch_size, proc.device,
                             proc.autocast)
        rm_acc[path], members[path] = (*accs[0], len(pairs)), accs[1:]
    first = next(iter(rm_acc.values()), (None, None, 0))
    out.update(rm_accuracy=first[0], rm_accuracy_stderr=first[1], n_pairs=first[2],
               rm_accuracies={p: dict(accuracy=a, stderr=se, n_pairs=n, members=[
                   dict(accuracy=ma, stderr=ms) for ma, ms in members[p]])
                   for p, (a, se, n) in rm_acc.items()})
    write_samples(os.path.join(cfg.out_dir, "samples.jsonl"), results, prompts, k)
    out["policies"] = {name: {**{key: v for key, v in m.items() if key != "samples"},
                              "rm_accuracy": first[0], "rm_accuracy_stderr": first[1]}
                       for name, m in results.items()}
    return [f"## Results: {len(prompts)} held-out prompts x {k} answers "
            f"(temperature {cfg.temperature})", "", results_table(results, cfg.baseline, rm_acc),
            "", signals_table(results, members), "", safety_table(results), "",
            "## Answers side by side (first answer to each prompt)", "",
            examples_table(results, prompts, cfg.num_examples, k), ""]


# what an evaluation writes: a re-evaluation replaces the whole set (nothing of an earlier run,
# e.g. its overoptimization.json, stays beside the new table)
EVAL_FILES = ("results.md", "results.json", "samples.jsonl", "overoptimization.json")


def main(argv=None):
    cfg = config.parse_config(DEFAULTS, argv, __doc__)
    policies = validate(cfg)
    ckpts = checkpoint.sweep_checkpoints(cfg.sweep) if cfg.sweep else []  # [(run, iteration, path)]
    # the files are written to out_dir/.staging-eval under out_dir's lock, and replace the
    # previous evaluation's only when every one is written (run.DataSet)
    with run.DataSet(cfg.out_dir, "eval", EVAL_FILES, "an evaluation", {}, overwrite=True) as ds:
        try:
            out = evaluate_and_report(cfg, SimpleNamespace(**{**vars(cfg), "out_dir": ds.dir}),
                                      policies, ckpts)
        except OSError as e:
            raise config.os_error(cfg.out_dir, e, "write the evaluation into") from None
        ds.commit(config=json_safe(vars(cfg)))
    print0(f"wrote {cfg.out_dir}/results.md, results.json"
           + (", samples.jsonl" if policies else "")
           + (", overoptimization.json" if cfg.sweep or cfg.bon_sweep else ""))
    return out


def evaluate_and_report(user_cfg, cfg, policies, ckpts):
    """Everything main does between validation and the swap: cfg.out_dir is the staging folder
    (user_cfg's is the one the results.json names)."""
    proc = runtime.init_runtime(cfg)

    # -------------------------------------------------------------------------
    # the judges and the anchor, loaded once; the prompts
    reference, reward_model, gold_fn, enc = load_judges(cfg, policies, proc)
    prompts = loader.load_prompts(cfg.prompts, enc, cfg.block_size, cfg.max_new_tokens)
    if cfg.eval_examples > 0:
        prompts = prompts[:cfg.eval_examples]
    k = cfg.num_samples_per_prompt
    sampling = dict(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                    top_k=cfg.top_k, top_p=cfg.top_p, batch_size=cfg.batch_size, seed=cfg.seed,
                    device=proc.device, autocast=proc.autocast)
    print0(f"{len(prompts)} prompts x {k} answers, temperature {cfg.temperature}, seed {cfg.seed}")
    cache, md = {}, []
    out = dict(config=dict(vars(user_cfg)), n_prompts=len(prompts), num_samples_per_prompt=k,
               baseline=cfg.baseline or None)

    demo = (demo_batches(cfg, enc), proc) if cfg.demo_val_data else None

    def evaluate(named):
        return eval_policies(named, prompts, enc, reward_model, reference, gold_fn,
                             cfg.baseline if cfg.baseline in named else None, k, cache,
                             cfg.baseline_draws, demo, **sampling)

    # -------------------------------------------------------------------------
    # the policies, and the reward model's accuracy on each held-out pair file
    if policies:
        md += report_policies(cfg, evaluate(policies), prompts, enc, reward_model, proc, out)

    # -------------------------------------------------------------------------
    # over-optimisation: PPO/GRPO snapshots along the KL axis, best-of-N along its bound, the
    # reference at KL 0
    if cfg.sweep or cfg.bon_sweep:
        points = [("reference", 0, cfg.reference)] + ckpts
        res = evaluate({"reference": cfg.reference,
                        **{f"{run}/iter{iteration}": p for run, iteration, p in ckpts}})
        sweep, sweep_md = report_sweep(cfg, res, points)
        md += sweep_md
        if cfg.bon_sweep:
            sweep["bon"] = best_of_n_sweep(cfg, prompts, enc, reward_model, gold_fn, sampling)
            md += ["", "| best-of-N | KL bound | KL, plug-in estimate | gold reward | RM score |",
                   "|---|---|---|---|---|"]
            md += [f"| {n} | {kl:.3f} | {kp:.3f} | {fmt(g, gs)} | {fmt(r, rs)} |"
                   for n, kl, kp, g, gs, r, rs in zip(*(sweep["bon"][key] for key in (
                       "n", "kl", "kl_plugin", "gold", "gold_stderr", "rm", "rm_stderr")))]
        write_json(os.path.join(cfg.out_dir, "overoptimization.json"), sweep)
        out["sweep"] = sweep
        md.append("")

    # -------------------------------------------------------------------------
    # save
    text = "\n".join(md)
    print0("\n" + text)
    with open(os.path.join(cfg.out_dir, "results.md"), "w") as f:
        f.write(text)
    write_json(os.path.join(cfg.out_dir, "results.json"), out)
    return json_safe(out)


def best_of_n_sweep(cfg, prompts, enc, reward_model, gold_fn, sampling):
    """Gao et al.'s best-of-N curve: N = 1, 2, 4, ... bon_sweep answers of the reference per
    prompt, drawn once (bon_sweep of them), each N choosing among its first N. Its KL: the
    bound, and the exact KL of each prompt's empirical distribution of its bon_sweep answers
    (best_of_n_kl_plugin), averaged: below the bound where the base repeats answers."""
    n_max = cfg.bon_sweep
    policy, _ = checkpoint.init_policy(cfg.reference)
    policy.to(sampling["device"]).eval()
    print0(f"best-of-N sweep: sampling {len(prompts) * n_max} answers ({n_max} per prompt)")
    t0 = time.time()
    rows = [p["ids"] for p in prompts for _ in range(n_max)]
    drawn = generate_and_score(policy, rows, enc, reward_model, None, **sampling,
                               samples_per_prompt=n_max)
    texts = [p["prompt"] for p in prompts]
    # each prompt's empirical base distribution (its n_max answers), for the plug-in KL
    drawn_text = [decode_response(enc, t) for t in drawn["tokens"]]
    per_prompt = [(drawn_text[i * n_max:(i + 1) * n_max], drawn["rm"][i * n_max:(i + 1) * n_max])
                  for i in range(len(prompts))]
    out = dict(n=[], kl=[], kl_plugin=[], gold=[], gold_stderr=[], rm=[], rm_stderr=[])
    n = 1
    while n <= n_max:
        s = pick_best_of_n(drawn, n, n_max, 1)
        responses = [decode_response(enc, t) for t in s["tokens"]]
        gold = [gold_fn(p, r) for p, r in zip(texts, responses)] if gold_fn else []
        plugin = sum(best_of_n_kl_plugin(a, r, n) for a, r in per_prompt) / len(per_prompt)
        for key, v in (("n", n), ("kl", best_of_n_kl_bound(n)), ("kl_plugin", plugin)):
            out[key].append(v)
        for key, v in (("gold", mean_and_stderr(gold) if gold else (None, None)),
                       ("rm", mean_and_stderr(s["rm"]))):
            out[key].append(v[0])
            out[f"{key}_stderr"].append(v[1])
        n *= 2
    print0(f"best-of-N sweep: {time.time() - t0:.1f}s")
    return out


if __name__ == "__main__":
    config.cli(main)
