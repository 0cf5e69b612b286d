"""
The batches bench.py times, built the way the scripts build theirs: random token ids of fixed
shapes, or (--data) the rows of a real preference file through the scripts' own loader, in the
batches of the epoch the scripts would draw (loader.batch_indices), length-bucketed as the HH
recipes do. tests/bench_trl.py hands Hugging Face TRL exactly these rows. And what a batch costs:
its model FLOPs, counted as bench.py's docstring says.
"""

import os
from functools import lru_cache

import torch

import config
import layouts
from data import loader
from tokenizer import encode_prompt, encode_response, get_tokenizer

# model shapes; vocab 257 is the byte tokenizer's, 50257 GPT-2's
SIZES = dict(
    micro=dict(n_layer=1, n_head=2, n_embd=32, vocab_size=257),
    tiny=dict(n_layer=4, n_head=4, n_embd=128, vocab_size=257),
    gpt2=dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257),
    # GPT-2 medium (355M), large (774M) and XL (1.56B): the configs of docs/SCALE.md
    **{"gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, vocab_size=50257),
       "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280, vocab_size=50257),
       "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600, vocab_size=50257)},
)
HH_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hh", "out")
GROUP = 4  # grpo: answers per prompt
STAGES = ("sft", "rm", "dpo", "ppo", "grpo")
VARIANTS = ("full_logits", "no_buckets", "shared_prompt")


def random_ids(B, T, V, gen):
    return torch.randint(0, V, (B, T), generator=gen)  # (B, T)


def sft_batch(B, T, V, gen, device):
    """idx (B, T), loss_mask (B, T): a quarter of prompt, then the trained answer; no padding."""
    idx = random_ids(B, T, V, gen)
    loss_mask = torch.ones(B, T, dtype=torch.long)
    loss_mask[:, :T // 4] = 0
    return idx.to(device), loss_mask.to(device)


def pair_batch(B, T, V, gen, device):
    """A layouts.collate_pairs-style batch: idx, attention_mask, loss_mask (2B, T), rows 0..B-1
    chosen and B..2B-1 rejected, margin (B,) zeros; both answers follow the same prompt (a
    quarter of each row)."""
    idx, loss_mask = sft_batch(2 * B, T, V, gen, device)
    idx[B:, :T // 4] = idx[:B, :T // 4]
    return dict(idx=idx, attention_mask=torch.ones_like(idx), loss_mask=loss_mask,
                margin=torch.zeros(B, device=device))


def shared_prompt_batch(batch, pad_id):
    """The pairs of a collate_pairs-style batch (rows 0..B-1 chosen, B..2B-1 rejected) laid out
    with each prompt once (layouts.collate_shared_prompt), on the batch's device: what
    share_prompt=True gives the reward model and DPO for the same pairs."""
    idx, attn, lm = (batch[k].cpu() for k in ("idx", "attention_mask", "loss_mask"))
    B = idx.size(0) // 2
    row = lambda i: (idx[i][attn[i] != 0].tolist(), lm[i][attn[i] != 0].tolist())  # noqa: E731
    pairs = [dict(chosen=row(i), rejected=row(B + i), margin=0.0) for i in range(B)]
    return {k: v.to(batch["idx"].device)
            for k, v in layouts.collate_shared_prompt(pairs, pad_id).items()}


def data_file(data):
    """The preference file --data names: 'hh' is what data/hh/prepare.py writes."""
    if data != "hh":
        return data
    for split in ("train", "test"):  # the shared test file alone converts to prefs_test.jsonl
        path = os.path.join(HH_DIR, f"prefs_{split}.jsonl")
        if os.path.isfile(path):
            return path
    raise config.DataError(f"--data=hh reads {os.path.join(HH_DIR, 'prefs_train.jsonl')} (or "
                           f"prefs_test.jsonl): not there; run python data/hh/prepare.py first")


def tokenizer_for(size):
    """GPT-2 BPE for the GPT-2 vocabulary, bytes for the toy world's 257 tokens."""
    return "gpt2" if SIZES[size]["vocab_size"] == 50257 else "byte"


@lru_cache(maxsize=4)
def real_rows(path, tok_name, block_size, gen_tokens):
    """
    Every stage's rows of one preference file, through the scripts' loader: pairs (the dicts of
    loader.load_preferences), sft [(ids, mask)] (prompt + chosen under load_sft's length policy:
    what prepare.py's sft file holds) and prompts [ids] (each distinct prompt once, cut from the
    left to leave gen_tokens, as load_prompts does).
    """
    try:
        enc = get_tokenizer(tok_name)
    except RuntimeError as e:  # offline without tiktoken's files
        raise config.ConfigError(f"--data needs the {tok_name!r} tokenizer: {e} (set "
                                 f"TIKTOKEN_CACHE_DIR to a copy of its files)") from None
    pairs = loader.load_preferences(path, enc, block_size)
    room = block_size - gen_tokens
    config.require(room >= 1, f"gen_tokens={gen_tokens} leaves no prompt room in "
                              f"block_size={block_size}")
    prompts, sft, seen = {}, [], set()
    for p in pairs:
        if p["prompt"] not in prompts:
            prompts[p["prompt"]] = encode_prompt(enc, p["prompt"])
        if (p["prompt"], p["chosen_text"]) in seen:  # K-wise rankings repeat a chosen answer
            continue
        seen.add((p["prompt"], p["chosen_text"]))
        r = encode_response(enc, p["chosen_text"])
        ids, _ = loader.fit_prompt(prompts[p["prompt"]], len(r), block_size)
        if ids is not None:
            sft.append((ids + r, [0] * len(ids) + [1] * len(r)))
    return dict(pairs=pairs, sft=sft, prompts=[ids[-room:] for ids in prompts.values()],
                pad_id=enc.eot_token)


def real_batch_rows(kind, size, cfg, buckets=True):
    """
    The rows of the first warmup + steps batches of the epoch the scripts draw from the --data
    rows (loader.batch_indices, seed cfg.seed), a list per batch: 'sft' batch_size (ids, mask)
    rows, bucketed by length; 'pairs' batch_size pair dicts, bucketed by the longer answer;
    'prompts' batch_size prompt ids; 'groups' GRPO's batch_size // 4 prompts, each 4 times in a
    row. Bucketing where buckets and cfg.length_buckets (PPO and GRPO never bucket).
    tests/bench_trl.py gives TRL these same rows in the same batches.
    """
    rows = real_rows(data_file(cfg.data), tokenizer_for(size), cfg.block_size, cfg.gen_tokens)
    B, buckets = cfg.batch_size, buckets and cfg.length_buckets
    steps = range(cfg.warmup + cfg.steps)
    if kind in ("sft", "pairs"):
        ex = rows[kind]
        lengths = None if not buckets else tuple(len(e[0]) for e in ex) if kind == "sft" else \
            tuple(map(loader.pair_length, ex))
        return [[ex[i] for i in loader.batch_indices(len(ex), B, s, cfg.seed, lengths=lengths)]
                for s in steps]
    k = GROUP if kind == "groups" else 1
    ex = rows["prompts"]
    return [[ex[i] for i in loader.batch_indices(len(ex), max(B // k, 1), s, cfg.seed)
             for _ in range(k)][:B] for s in steps]


def real_batches(kind, size, cfg, buckets=True):
    """real_batch_rows collated as the scripts collate them: 'sft' (idx, attn, loss_mask)
    right-padded, 'pairs' collate_pairs dicts, 'prompts' and 'groups' left-padded (ids, attn)."""
    pad = real_rows(data_file(cfg.data), tokenizer_for(size), cfg.block_size,
                    cfg.gen_tokens)["pad_id"]
    collate = dict(sft=loader.collate, pairs=layouts.collate_pairs).get(kind, loader.collate_left)
    return [collate(rows, pad) for rows in real_batch_rows(kind, size, cfg, buckets)]


def stage_batches(kind, size, cfg, gen, proc, buckets=True):
    """The batches a stage's steps take in turn, on the device: one batch of random ids (every
    step reuses it) or, with --data, real_batches. Kinds as real_batches'."""
    B, T, V = cfg.batch_size, cfg.block_size, SIZES[size]["vocab_size"]
    if cfg.data:
        batches = real_batches(kind, size, cfg, buckets)
    elif kind == "sft":
        idx, loss_mask = sft_batch(B, T, V, gen, "cpu")
        batches = [(idx, torch.ones_like(idx), loss_mask)]
    elif kind == "pairs":
        batches = [pair_batch(B, T, V, gen, "cpu")]
    else:  # prompts of prompt_len random ids, no padding; grpo's 4 answers to each in a row
        k = GROUP if kind == "groups" else 1
        ids = random_ids(max(B // k, 1), cfg.prompt_len, V, gen).repeat_interleave(k, 0)[:B]
        batches = [(ids, torch.ones_like(ids))]
    if kind == "pairs":
        return [{key: v.to(proc.device) for key, v in b.items()} for b in batches]
    return [tuple(t.to(proc.device) for t in b) for b in batches]


def timed_batches(batches, cfg):
    """The batches the timed calls of measure() took."""
    return [batches[i % len(batches)] for i in range(cfg.warmup, cfg.warmup + cfg.steps)]


def real_positions(batch):
    """The (rows, T) mask of a batch's real positions: an (idx, attention_mask, ...) tuple, a
    collate_pairs dict, or a collate_shared_prompt dict (its segments, -1 on padding)."""
    if not isinstance(batch, dict):
        return batch[1]
    return (batch["segments"] >= 0).long() if "segments" in batch else batch["attention_mask"]


def padding_share(masks):
    """The share of the positions of a list of (B, T) attention masks that is padding."""
    return 1 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)


def forward_flops(config, T, lm_head=True):
    """Forward FLOPs per token of a sequence of T tokens (PaLM appendix B, see bench.py's docstring)."""
    L, d = config.n_layer, config.n_embd
    weights = 12 * L * d * d + (d * config.vocab_size if lm_head else d)
    return 2 * weights + 4 * L * T * d


def batch_flops(config, attention_mask, loss_mask=None):
    """
    Forward FLOPs a batch needs (bench.py's docstring's count): each row's real tokens (attention_mask
    1) through the trunk with attention over the row's own length, and the LM head at the
    positions that predict a loss_mask token (those whose log-prob is read); loss_mask None: a
    scalar head (ScalarModel), d weights per token. (B, T) masks -> FLOPs.
    """
    L, d = config.n_layer, config.n_embd
    lengths = attention_mask.sum(1).tolist()
    trunk = sum(n * (24 * L * d * d + 4 * L * n * d) for n in lengths)
    if loss_mask is None:
        return trunk + 2 * d * sum(lengths)
    return trunk + 2 * d * config.vocab_size * int(loss_mask[:, 1:].sum())


def checked_shapes(cfg):
    """The sizes and stages lists of cfg, once they and the shape keys are checked (bench.py and
    tests/bench_trl.py share these keys)."""
    sizes = [s.strip() for s in cfg.sizes.split(",") if s.strip()]
    stages = [s.strip() for s in cfg.stages.split(",") if s.strip()]
    config.require(sizes and all(s in SIZES for s in sizes),
                   f"sizes={cfg.sizes!r}: a comma-separated list of {', '.join(SIZES)}")
    config.require(stages and all(s in STAGES for s in stages),
                   f"stages={cfg.stages!r}: a comma-separated list of {', '.join(STAGES)}")
    variants = cfg.variants
    cfg.variant_list = [v.strip() for v in variants.split(",") if v.strip()]
    config.require(all(v in VARIANTS for v in cfg.variant_list),
                   f"variants={variants!r}: a comma-separated list of {', '.join(VARIANTS)}")
    data = getattr(cfg, "data", "")
    if data:
        path = data_file(data)
        config.require(os.path.isfile(path), f"data={data!r}: no such file {path!r}")
    config.require("no_buckets" not in cfg.variant_list or (data and cfg.length_buckets),
                   "variants=no_buckets compares against bucketed batches of real rows: it needs "
                   "--data and length_buckets=True")
    config.require("grpo" not in stages or cfg.batch_size % GROUP == 0,
                   f"batch_size={cfg.batch_size}: grpo needs a multiple of {GROUP} (answers per "
                   f"prompt)")
    positive = (lambda v: v > 0, "> 0")
    config.validate(cfg, {"prompt_len": positive, "gen_tokens": positive, "steps": positive,
                          "warmup": (lambda v: v >= 0, ">= 0"),
                          "micro_batch_size": (lambda v: v >= 0, ">= 0 (0: batch_size)"),
                          "peak_flops": (lambda v: v >= 0 or v == -1,
                                         ">= 0, or -1 to measure the matmul ceiling")})
    return sizes, stages
