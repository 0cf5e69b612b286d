"""
Try a model by hand: answer prompts with one checkpoint, or several side by side, printing each
answer as it is drawn, with its reward-model score and the toy world's gold score (and on its
harmful and lookalike requests, whether the answer refused, complied or over-refused).

Run it:
    python sample.py --prompt="What color is a banana?"     # the toy SFT policy (the default)
    python sample.py --reward_model=out/rm_toy/ckpt_best.pt --gold_judge=toy \\
      --prompts=data/toy/out/prompts_eval.jsonl --num_samples_per_prompt=2 \\
      --ckpt=sft:out/sft_toy/ckpt_best.pt,ppo:out/ppo_toy/ckpt_last.pt,dpo:out/dpo_toy/ckpt_last.pt
                                                            # side by side, every answer scored
    python sample.py --ckpt=gpt2 --temperature=0 --prompt="How do I boil an egg?"  # GPT-2, greedy
    python sample.py --ckpt=out/ppo_toy/ckpt_last.pt        # at a terminal: a prompt loop (Ctrl-D)
    echo "What does a cow say?" | python sample.py          # piped: one prompt per line
    python sample.py --help                                 # every config key and its default

--ckpt takes name:source items, comma-separated: a policy .pt, 'gpt2'...'gpt2-xl' or a Hugging
Face directory (a source without a name is named by its file). Every model answers with the same
noise: sample j of prompt i draws from a generator seeded with (seed, i, j) alone
(model.row_generators), so two names for one checkpoint answer alike, and where two models'
answers differ, the models do. The RM scores the exact token ids generated, never re-encoded text.

Deliberately left out: batching (one answer at a time, so that it can be shown as it comes),
multi-turn chat (each prompt is a new conversation), system prompts and stop strings.
"""

import os
import re
import sys

import torch

import config
import runtime
import checkpoint
from data import loader
from data.toy.judge import gold_cost, gold_reward, is_over_refusal, is_refusal
from hf_io import PRETRAINED
from model import KVCache, position_ids_from_mask, row_generators, sample_next
from tokenizer import decode_response, encode_prompt, get_tokenizer

# -----------------------------------------------------------------------------
DEFAULTS = dict(
    ckpt="out/sft_toy/ckpt_best.pt",  # [name:]source,...: policy .pt files, 'gpt2', HF dirs
    prompt="",                  # one prompt; '' = --prompts, else stdin (a terminal: a prompt loop)
    prompts="",                 # a JSONL file of {"prompt": ...} records
    num_samples_per_prompt=1,   # answers per prompt and model (as eval.py)
    max_new_tokens=64,          # answers are cut here; a prompt too long keeps its end
    temperature=1.0,            # 0 = greedy
    top_k=0,                    # 0 = off
    top_p=1.0,                  # 1.0 = off
    seed=1337,                  # sample j of prompt i sees the noise of (seed, i, j), every model
    reward_model="",            # a scalar checkpoint (several, or an ensemble's out_dir: their
                                # aggregate): each answer's RM score; '' = none
    reward_agg="mean",          # an ensemble's aggregation: 'mean' | 'min' | 'uwo'
    uwo_lambda=1.0,
    gold_judge="",              # 'toy': the gold reward of data/toy/judge.py; '' = none
    device="auto",              # 'auto' | 'cpu' | 'cuda' | 'mps'
    dtype="auto",               # 'auto' | 'float32' | 'bfloat16'
)


def parse_ckpts(spec):
    """'name:source,source,...' -> {name: source}. A source without a name is named by its file,
    with its run directory for a ckpt_*.pt: out/sft_toy/ckpt_best.pt -> 'sft_toy/ckpt_best'."""
    out = {}
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        m = re.fullmatch(r"([\w.-]+):(.+)", item)
        parts = os.path.normpath(item).split(os.sep)
        parts = parts[-2:] if parts[-1].startswith("ckpt") else parts[-1:]
        name, path = m.groups() if m else ("/".join(parts).removesuffix(".pt"), item)
        config.require(name not in out, f"ckpt: the name {name!r} is used twice (name them: "
                                         f"--ckpt=a:path,b:path)")
        out[name] = path
    config.require(out, "ckpt: no checkpoint given")
    return out


def validate(cfg):
    """Bad values fail here, naming the key, before any model is loaded. Returns {name: source}."""
    config.validate(cfg, {
        "temperature": (lambda v: v == 0 or 0.01 <= v <= 100, "0 (greedy) or in [0.01, 100]"),
        "num_samples_per_prompt": (lambda v: v > 0, "> 0"),
        "gold_judge": (lambda v: v in ("toy", ""), "'toy' or ''"),
        "reward_agg": (lambda v: v in ("mean", "min", "uwo"), "'mean', 'min' or 'uwo'"),
        "uwo_lambda": (lambda v: v >= 0, ">= 0")})
    config.require(not (cfg.prompt and cfg.prompts), "give --prompt or --prompts, not both")
    config.require(cfg.prompt or cfg.prompts or sys.stdin is not None, "no prompt: standard input "
                   "is closed; give --prompt or --prompts")
    sources = parse_ckpts(cfg.ckpt)
    for key, path in [*((f"ckpt {n}", p) for n, p in sources.items()), ("prompts", cfg.prompts),
                      *(("reward_model", p) for p in cfg.reward_model.split(","))]:
        config.require(not path or path in PRETRAINED or os.path.exists(path), f"{key}: {path!r} "
                       f"does not exist (the toy world's data and models: python pipeline.py)")
    return sources

# -----------------------------------------------------------------------------


@torch.no_grad()
def decode_tokens(model, ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                  greedy=False, eos_token_id=None, generator=None):
    """
    Yield the answer to one prompt (ids, a list) token id by token id as each is drawn, EOS
    included: GPT.generate's loop for one row (the same prefill, KV cache, positions and
    sample_next, so the same tokens for the same generator: a test checks), as a Python generator.
    """
    T0, C = len(ids), model.config
    idx = torch.tensor([ids], device=model.lm_head.weight.device)  # (1, T0)
    key_mask = torch.ones(1, T0 + max_new_tokens, dtype=torch.long, device=idx.device)  # no pads
    cache = KVCache(C.n_layer, 1, C.n_head, T0 + max_new_tokens, C.n_embd // C.n_head)
    h = model.transformer(idx, key_mask[:, :T0], position_ids_from_mask(key_mask[:, :T0]), cache)
    logits = model.lm_head(h[:, -1])  # (1, V): the prefill's last position only
    for step in range(max_new_tokens):
        tok = sample_next(logits.float() / temperature, top_k, top_p, greedy, generator)  # (1,)
        yield tok.item()
        if tok.item() == eos_token_id or step == max_new_tokens - 1:
            return
        pos = torch.full((1, 1), T0 + step, device=idx.device)  # the new token's position
        h = model.transformer(tok[:, None], key_mask[:, :cache.pos + 1], pos, cache)
        logits = model.lm_head(h[:, -1])


def printable(text, indent=0):
    """text for the terminal: control characters (a random model's bytes) escaped, not sent to
    it, and every line after the first indented by `indent` spaces."""
    text = "".join(c if c.isprintable() or c == "\n" else c.encode("unicode_escape").decode()
                   for c in text)
    return text.replace("\n", "\n" + " " * indent)


def stream_answer(model, ids, enc, cfg, generator, indent=0):
    """Draw one answer to the prompt ids, printing its text as it comes. Returns (its token ids,
    EOS included; its text, as decode_response gives it to the judges)."""
    out, shown = [], 0
    for t in decode_tokens(model, ids, cfg.max_new_tokens, cfg.temperature or 1.0, cfg.top_k,
                           cfg.top_p, cfg.temperature == 0, enc.eot_token, generator):
        out.append(t)
        text = decode_response(enc, out)
        if t != enc.eot_token and len(out) < cfg.max_new_tokens:
            text = text.rstrip("\ufffd")  # a character cut between tokens: wait for its end
        print(printable(text[shown:], indent), end="", flush=True)
        shown = max(shown, len(text))
    return out, text


def harm_verdict(prompt, answer):
    """What the toy judge makes of an answer on the helpful-and-harmless axis: 'complied' (a
    harmful request answered: gold_cost 1), 'refused' (a refusal phrase), 'over-refusal' (a
    harmless lookalike refused), or ''. Raises ValueError for a prompt outside the toy world."""
    if gold_cost(prompt, answer):
        return "complied"
    if is_over_refusal(prompt, answer):
        return "over-refusal"
    return "refused" if is_refusal(answer) else ""


def read_prompts(cfg, enc, block_size, interactive):
    """The prompts: --prompt, the --prompts file (each line checked by the loader: a DataError
    names file:line), or stdin until EOF (a '> ' loop at a terminal, else one per line)."""
    if cfg.prompt or cfg.prompts:
        yield from [cfg.prompt] if cfg.prompt else [p["prompt"] for p in loader.load_prompts(
            cfg.prompts, enc, block_size, cfg.max_new_tokens)]
        return
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:  # Ctrl-D, or the end of piped input
            if interactive:
                print()  # the shell's prompt on a line of its own
            return
        if line.strip():
            yield line.strip()


def main(argv=None):
    cfg = config.parse_config(DEFAULTS, argv, __doc__)
    sources = validate(cfg)
    proc = runtime.init_runtime(cfg)

    # the models: side by side, they must all read the same tokens
    models, tok = {}, None
    for name, path in sources.items():
        model, t = checkpoint.init_policy(path)  # NaN or inf weights: refused here
        checkpoint.check_sampling_vocab(model, t, path)
        models[name], tok = model.to(proc.device).eval(), tok or t
        config.require(t == tok, f"ckpt: {name} ({path}) uses the {t!r} tokenizer but "
                       f"{next(iter(models))} uses {tok!r}: side by side they need one tokenizer")
        print(f"{name}: {path}, {models[name].num_params() / 1e6:.2f}M parameters, {t!r} tokenizer")
    enc = get_tokenizer(tok)
    vocab_size = next(iter(models.values())).config.vocab_size
    rm = (checkpoint.load_reward_model(cfg.reward_model, tok, vocab_size, cfg.reward_agg,
                                       cfg.uwo_lambda).to(proc.device)
          if cfg.reward_model else None)
    block_size = min(m.config.block_size for m in [*models.values(), rm] if m is not None)
    room = block_size - cfg.max_new_tokens  # the prompt tokens that fit before the answer
    config.require(room >= 1, f"max_new_tokens={cfg.max_new_tokens} leaves no room for a prompt "
                              f"in block_size={block_size}")
    interactive = not (cfg.prompt or cfg.prompts) and sys.stdin.isatty()
    print(f"temperature {cfg.temperature or '0 (greedy)'}, top_k {cfg.top_k or 'off'}, top_p "
          f"{cfg.top_p}, seed {cfg.seed}" + ("; type a prompt, Ctrl-D to quit" * interactive))

    # -------------------------------------------------------------------------
    # every prompt, model and sample: the answer printed as it is drawn, then its scores
    tags = {(n, j): f"[{n}]" if cfg.num_samples_per_prompt == 1 else f"[{n} #{j + 1}]"
            for n in models for j in range(cfg.num_samples_per_prompt)}
    width = max(map(len, tags.values()))
    records = []
    for i, text in enumerate(read_prompts(cfg, enc, block_size, interactive)):
        full = encode_prompt(enc, text)
        ids = full[-room:]  # a prompt too long keeps its end: the question and 'Assistant:'
        cut = f"(cut to its last {room} of {len(full)} tokens)" if len(full) > room else ""
        if cut or not interactive:  # at a terminal the prompt is on the screen already
            print(cut if interactive else f"\n>>> {text}   {cut}".rstrip(), flush=True)
        for (name, j), tag in tags.items():
            print(f"{tag:<{width}} ", end="", flush=True)
            gen = row_generators(cfg.seed, [(i, j)], proc.device)  # the same in every model
            with proc.autocast:
                out, answer = stream_answer(models[name], ids, enc, cfg, gen, width + 1)
                seq = torch.tensor([ids + out], device=proc.device)  # (1, P + N): the exact ids
                rm_score = None if rm is None else rm.score(seq, torch.ones_like(seq)).item()
            try:
                gold = gold_reward(text, answer) if cfg.gold_judge == "toy" else None
                verdict = harm_verdict(text, answer) if cfg.gold_judge == "toy" else ""
            except ValueError:  # not a toy-world question: no gold score rather than a crash
                gold, verdict = None, ""
            notes = ", ".join(n for n in [
                "empty" if not answer else "",
                f"RM {rm_score:+.2f}" if rm_score is not None else "",
                f"gold {gold:+.2f}" if gold is not None else "", verdict,
                f"no EOS in {len(out)} tokens" if out[-1] != enc.eot_token else ""] if n)
            print(f"   ({notes})" if notes else "", flush=True)
            records.append(dict(prompt=text, name=name, sample=j, tokens=out, response=answer,
                                rm=rm_score, gold=gold))
    return records


if __name__ == "__main__":
    config.cli(main)
