"""
Real data: Anthropic HH-RLHF's harmless-base test split (2,312 upstream records) and the genuine
GPT-2 BPE, both in ../shared/data beside the repository (never copied into it). Without that
folder every test here is skipped, saying why.

- data/hh/prepare.py converts the file to exactly 2,303 pairs (9 dropped, by reason and line),
  and every converted pair renders back to its upstream transcripts character for character;
- the 'gpt2' tokenizer through our template: GPT-2's reference ids, the EOS (50256) ending every
  response, masks covering exactly each response and its EOS in load_sft / load_preferences,
  long multi-turn prompts cut from the left, non-ASCII text round-tripping;
- the measured token lengths (data/hh/stats.py) that the README quotes;
- each prompt computed once (share_prompt) gives real pairs' log-probs and scores of separate rows;
- (slow) every stage on real records with a tiny GPT-2-vocabulary model: SFT, reward model, PPO
  (first update: KL exactly 0, ratio 1 to float precision), DPO (loss log 2 at the start), GRPO, eval.py,
  export_hf.py, and the export reloaded in transformers with the same logits.
"""

import gzip
import json
import math
import os
import subprocess
import sys
import time
from collections import Counter

import pytest
import torch

import checkpoint
import tokenizer
from data import loader
from data.hh import prepare as hh
from data.hh import stats
from tokenizer import decode, decode_response, encode_example, encode_prompt, encode_response, \
    render_prompt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "data")
HH_FILE = os.path.join(SHARED, "hh-rlhf", "harmless-base-test.jsonl.gz")
BPE_DIR = os.path.join(SHARED, "gpt2_bpe")
EOT = 50256

# what the real file holds, measured once and pinned: 2,312 records, 9 of them unusable
N_RECORDS, N_PAIRS, N_PROMPTS = 2312, 2303, 2301
DROPPED = {"empty final answer": [87, 517, 926, 1104],  # upstream line numbers
           "chosen and rejected differ before the last turn": [1255, 1689, 1951, 1953, 2037]}

needs_data = pytest.mark.skipif(
    not (os.path.isfile(HH_FILE) and os.path.isdir(BPE_DIR)),
    reason=f"real data not found: {os.path.normpath(SHARED)} (the repository's parent holds "
           f"shared/data/hh-rlhf/harmless-base-test.jsonl.gz and shared/data/gpt2_bpe/)")
pytestmark = needs_data


def upstream():
    with gzip.open(HH_FILE, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def gpt2():
    """The genuine GPT-2 BPE, offline: tiktoken reads TIKTOKEN_CACHE_DIR when it first loads the
    encoding, and tokenizer.py caches what it loaded, so the variable is set before that (and
    tokenizer.py's cache is given back as it was afterwards)."""
    saved = tokenizer._cache.pop("gpt2", None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", os.path.abspath(BPE_DIR))
        yield tokenizer.get_tokenizer("gpt2")
    tokenizer._cache.pop("gpt2", None)
    if saved is not None:
        tokenizer._cache["gpt2"] = saved


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """prepare.py's output for the real file, and its stats."""
    out = tmp_path_factory.mktemp("hh")
    return out, hh.main([f"--input={HH_FILE}", f"--out_dir={out}"])

# -----------------------------------------------------------------------------
# the conversion


def test_real_file_converts_exactly(converted):
    out, got = converted
    # the file's name ends in '-test': it is the test split
    assert got == {"test": (N_PAIRS, Counter({k: len(v) for k, v in DROPPED.items()}))}
    records = upstream()
    assert len(records) == N_RECORDS
    dropped = {}
    for lineno, r in enumerate(records, 1):
        pair, reason = hh.convert_pair(r)
        if pair is None:
            dropped.setdefault(reason, []).append(lineno)
    assert dropped == DROPPED
    kept = [r for lineno, r in enumerate(records, 1)
            if lineno not in {n for v in DROPPED.values() for n in v}]
    prefs = read_jsonl(out / "prefs_test.jsonl")
    assert len(prefs) == len(kept) == N_PAIRS
    # in order, every converted pair renders back to its upstream transcripts, exactly
    for p, r in zip(prefs, kept):
        assert render_prompt(p["prompt"]) + " " + p["chosen"] == r["chosen"]
        assert render_prompt(p["prompt"]) + " " + p["rejected"] == r["rejected"]
    assert read_jsonl(out / "sft_test.jsonl") == [dict(prompt=p["prompt"], response=p["chosen"])
                                                  for p in prefs]
    prompts = [r["prompt"] for r in read_jsonl(out / "prompts_test.jsonl")]
    assert len(prompts) == len(set(prompts)) == N_PROMPTS
    assert set(prompts) == {p["prompt"] for p in prefs}
    # the template's space before an answer is not part of it (no upstream answer has two)
    assert not any(p[k].startswith(" ") for p in prefs for k in ("chosen", "rejected"))

# -----------------------------------------------------------------------------
# the genuine GPT-2 tokenizer through our template


@pytest.mark.unit
def test_gpt2_reference_ids_and_eos(gpt2):
    assert gpt2.n_vocab == 50257 and gpt2.eot_token == EOT
    assert gpt2.encode("Hello, I am a language model,") == [15496, 11, 314, 716, 257, 3303, 2746, 11]
    # the template's markers as GPT-2 sees them: its pre-tokeniser splits the whitespace before a
    # word, so '\n\nHuman' is '\n', '\n', 'Human' (198, 198, 20490), never the '\n\n' token 628
    assert encode_prompt(gpt2, "Hi") == [198, 198, 20490, 25, 15902, 198, 198, 48902, 25]
    assert encode_response(gpt2, "Hello, I am a language model,") == \
        [18435, 11, 314, 716, 257, 3303, 2746, 11, EOT]
    ids, mask = encode_example(gpt2, "Hi", "Hello.")
    assert ids == [198, 198, 20490, 25, 15902, 198, 198, 48902, 25, 18435, 13, EOT]
    assert mask == [0] * 9 + [1] * 3
    # text that spells '<|endoftext|>' is text, never the EOS token
    assert EOT not in encode_response(gpt2, "say <|endoftext|> now")[:-1]


def test_every_real_text_round_trips(gpt2, converted):
    """All 2,303 prompts and 4,606 answers: encode then decode gives the text back, including
    1,900 pairs with non-ASCII characters (curly quotes, bullets, Japanese, emoji with a skin
    tone modifier, a private-use code point)."""
    prefs = read_jsonl(converted[0] / "prefs_test.jsonl")
    non_ascii = 0
    for p in prefs:
        assert decode(gpt2, encode_prompt(gpt2, p["prompt"])) == render_prompt(p["prompt"])
        for answer in (p["chosen"], p["rejected"]):
            ids = encode_response(gpt2, answer)
            assert ids[-1] == EOT and ids.count(EOT) == 1
            assert decode_response(gpt2, ids) == answer
        non_ascii += any(ord(c) > 127 for c in p["prompt"] + p["chosen"] + p["rejected"])
    assert non_ascii == 1900
    # characters of several byte-level tokens each: decoding must not split them
    for ch in ("👍🏾", "\uf04a", "’"):
        assert any(ch in p["prompt"] + p["chosen"] + p["rejected"] for p in prefs), ch
        assert len(gpt2.encode_ordinary(ch)) > 1, ch


def runs(mask):
    """[(start, end)] of the runs of 1 in a mask."""
    out, start = [], None
    for i, m in enumerate(list(mask) + [0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            out.append((start, i))
            start = None
    return out


@pytest.mark.parametrize("block_size, n_sft, n_pairs", [(512, 2303, 2300), (256, 2296, 2268)])
def test_loader_masks_on_real_data(gpt2, converted, block_size, n_sft, n_pairs):
    """Every example: one run of 1s at the very end, covering ' answer' + EOS exactly; the only
    EOS is the last token; the prompt part is the END of the rendered prompt."""
    out = converted[0]
    prefs = read_jsonl(out / "prefs_test.jsonl")
    sft = loader.load_sft(str(out / "sft_test.jsonl"), gpt2, block_size)
    assert len(sft) == n_sft
    responses = [encode_response(gpt2, p["chosen"]) for p in prefs]
    fits = [r for p, r in zip(prefs, responses)
            if loader.fit_prompt(encode_prompt(gpt2, p["prompt"]), len(r), block_size)[0] is not None]
    for (ids, mask), r in zip(sft, fits):  # load_sft keeps the file's order
        assert len(ids) == len(mask) <= block_size
        assert runs(mask) == [(len(ids) - len(r), len(ids))] and ids[-len(r):] == r
        assert ids[-1] == EOT and ids.count(EOT) == 1

    pairs = loader.load_preferences(str(out / "prefs_test.jsonl"), gpt2, block_size)
    assert len(pairs) == n_pairs
    fits = [p for p in prefs if loader.fit_prompt(encode_prompt(gpt2, p["prompt"]), max(
        len(encode_response(gpt2, p["chosen"])), len(encode_response(gpt2, p["rejected"]))),
        block_size)[0] is not None]
    for pair, p in zip(pairs, fits):
        assert (pair["prompt"], pair["chosen_text"], pair["rejected_text"]) == \
            (p["prompt"], p["chosen"], p["rejected"])
        full = encode_prompt(gpt2, pair["prompt"])
        for side in ("chosen", "rejected"):
            ids, mask = pair[side]
            r = encode_response(gpt2, pair[f"{side}_text"])
            P = len(ids) - len(r)
            assert len(ids) <= block_size and ids[P:] == r and mask == [0] * P + [1] * len(r)
            assert ids[:P] == full[len(full) - P:]  # the prompt's end, cut from the left
        assert pair["chosen"][0][:P] == pair["rejected"][0][:P]  # one prompt for both answers

    # collation: padding reuses the EOS id, but the masks say what is real and what is trained
    import layouts
    batch = layouts.collate_pairs(pairs[:8], EOT)
    for row in range(16):
        n = int(batch["attention_mask"][row].sum())
        assert batch["idx"][row, n - 1] == EOT and batch["loss_mask"][row, n - 1] == 1
        assert (batch["idx"][row, n:] == EOT).all() and not batch["loss_mask"][row, n:].any()


def test_long_multi_turn_prompts_keep_their_end(gpt2, converted):
    """The longest real prompt (12 Human turns, 845 tokens rendered) at block_size 256: its
    left is cut; what remains ends with the last Human turn and the 'Assistant:' cue."""
    prefs = read_jsonl(converted[0] / "prefs_test.jsonl")
    longest = max(prefs, key=lambda p: len(encode_prompt(gpt2, p["prompt"])))
    full = encode_prompt(gpt2, longest["prompt"])
    assert len(full) == 845 and longest["prompt"].count("\n\nHuman: ") == 11
    ids, mask = encode_example(gpt2, longest["prompt"], longest["chosen"])
    r = len(ids) - len(full)
    kept, cut = loader.fit_prompt(full, r, 256)
    assert cut and kept == full[-(256 - r):] and len(kept) + r == 256
    text = decode(gpt2, kept)
    last_turn = longest["prompt"].rsplit("\n\nHuman: ", 1)[1]
    assert text.endswith("\n\nHuman: " + last_turn + "\n\nAssistant:")
    assert full[-4:] == [198, 198, 48902, 25]  # '\n', '\n', 'Assistant', ':'
    # and the prompts file for RL cuts it the same way, leaving max_new_tokens free
    rl = loader.load_prompts(str(converted[0] / "prompts_test.jsonl"), gpt2, 256, 64)
    row = next(p for p in rl if p["prompt"] == longest["prompt"])
    assert row["ids"] == full[-192:]


def test_measured_lengths(gpt2, converted, capsys):
    """The numbers the README quotes (data/hh/stats.py at block_size 512, GPT-2 BPE)."""
    got = stats.main([f"--input={converted[0] / 'prefs_test.jsonl'}", "--block_size=512",
                      "--batch_sizes=8,16"])
    L = got["lengths"]
    assert {k: L["prompt"][k] for k in ("p50", "p90", "p99", "max", "over")} == \
        dict(p50=97, p90=275, p99=548, max=845, over=27)
    assert {k: L["chosen"][k] for k in ("p50", "p90", "p99", "max")} == dict(p50=29, p90=90, p99=197, max=282)
    assert {k: L["rejected"][k] for k in ("p50", "p90", "p99", "max")} == \
        dict(p50=38, p90=112, p99=259, max=572)
    assert L["prompt+longer"]["over"] == 78 and got["n_pairs"] == 2300
    s = got["shares"]
    for key in s:
        assert s[key]["padding"] + s[key]["prompt"] + s[key]["response"] == pytest.approx(1.0)
    # shuffled batches are mostly padding; bucketing leaves little, and pairs keep more than SFT
    # (chosen and rejected rows of one pair pad to the longer one)
    assert s[("RM/DPO", 16, False)]["padding"] > 0.6 and s[("RM/DPO", 16, True)]["padding"] < 0.14
    assert s[("SFT", 16, True)]["padding"] < 0.04 < s[("RM/DPO", 8, True)]["padding"]
    # each prompt once (share_prompt): a third fewer positions than bucketing alone (README)
    assert (s[("RM/DPO", 8, True)]["positions"], s[("RM/DPO", 8, "shared")]["positions"]) == \
        (877248, 576088)
    for B in (8, 16):  # the same real tokens, a prompt once instead of twice
        on, shared = s[("RM/DPO", B, True)], s[("RM/DPO", B, "shared")]
        assert shared["response"] * shared["positions"] == pytest.approx(
            on["response"] * on["positions"])
        assert shared["prompt"] * shared["positions"] == pytest.approx(
            on["prompt"] * on["positions"] / 2)
    assert "share of padded batch positions at block_size 512" in capsys.readouterr().out

def test_shared_prompt_on_real_pairs_equals_separate_rows(gpt2, converted):
    # the longest real prompts and answers in one batch: multi-turn prompts, cut from the left
    import layouts
    from model import GPT, GPTConfig, ScalarModel
    pairs = loader.load_preferences(str(converted[0] / "prefs_test.jsonl"), gpt2, 512)
    pairs = sorted(pairs, key=lambda p: -len(p["chosen"][0]) - len(p["rejected"][0]))[:3] + pairs[:3]
    torch.manual_seed(0)
    config = GPTConfig(block_size=512, vocab_size=50257, n_layer=2, n_head=2, n_embd=32)
    policy, rm = GPT(config), ScalarModel(config)
    plain = layouts.collate_pairs(pairs, EOT)
    shared = layouts.collate_shared_prompt(pairs, EOT)
    assert shared["idx"].size(1) > 512  # rows longer than block_size; positions within it
    with torch.no_grad():
        for x, y in zip(layouts.pair_logprobs(policy, plain, None),
                        layouts.shared_prompt_pair_logprobs(policy, shared, None)):
            torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-6)
        off = torch.autocast("cpu", enabled=False)
        for x, y in zip(layouts.row_scores(rm, plain, off),
                        layouts.shared_prompt_scores(rm, shared, off)):
            torch.testing.assert_close(y, x, atol=1e-5, rtol=0)

# -----------------------------------------------------------------------------
# every stage on real records (slow)

TINY = ["--n_layer=2", "--n_head=2", "--n_embd=64"]
SYSTEM = ["--device=cpu", "--dtype=float32", "--block_size=256"]


def slice_jsonl(src, dst, start, stop):
    with open(src, encoding="utf-8") as f:
        lines = f.readlines()[start:stop]
    with open(dst, "w", encoding="utf-8") as f:
        f.writelines(lines)
    return str(dst)


def stage(script, *args, timings):
    """Run one stage as a user would, from the repository root; its output on failure."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TIKTOKEN_CACHE_DIR=os.path.abspath(BPE_DIR))
    t0 = time.time()
    r = subprocess.run([sys.executable, script, *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    timings[script] = round(time.time() - t0, 1)
    assert r.returncode == 0, f"{script} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def log_lines(out_dir):
    return read_jsonl(os.path.join(out_dir, "log.jsonl"))


@pytest.mark.slow
def test_every_stage_on_real_records(gpt2, converted, tmp_path):
    src, d, timings = converted[0], tmp_path, {}
    data = dict(
        sft_train=slice_jsonl(src / "sft_test.jsonl", d / "sft_train.jsonl", 0, 256),
        sft_val=slice_jsonl(src / "sft_test.jsonl", d / "sft_val.jsonl", -32, None),
        prefs_train=slice_jsonl(src / "prefs_test.jsonl", d / "prefs_train.jsonl", 0, 256),
        prefs_val=slice_jsonl(src / "prefs_test.jsonl", d / "prefs_val.jsonl", -32, None),
        prompts_train=slice_jsonl(src / "prompts_test.jsonl", d / "prompts_train.jsonl", 0, 64),
        prompts_val=slice_jsonl(src / "prompts_test.jsonl", d / "prompts_val.jsonl", -16, None))
    out = {k: str(d / k) for k in ("sft", "rm", "ppo", "dpo", "grpo", "eval", "hf")}

    # SFT from scratch with the GPT-2 vocabulary
    stage("train_sft.py", "--init_from=scratch", "--tokenizer=gpt2", *TINY, *SYSTEM,
          f"--out_dir={out['sft']}", f"--train_data={data['sft_train']}",
          f"--val_data={data['sft_val']}", "--batch_size=8", "--max_iters=30", "--lr=3e-3",
          "--min_lr=3e-4", "--warmup_iters=3", "--eval_interval=15", "--eval_examples=16",
          "--log_interval=5", "--num_samples=1", "--sample_tokens=8", "--length_buckets=True",
          timings=timings)
    val = [r["val_loss"] for r in log_lines(out["sft"]) if "val_loss" in r]
    assert val[0] == pytest.approx(math.log(50257), abs=0.3)  # a fresh model: ~uniform
    assert val[-1] < val[0] - 2.0  # it learns (word frequencies at least)
    sft = os.path.join(out["sft"], "ckpt_best.pt")

    # reward model on the SFT trunk
    stage("train_reward_model.py", f"--init_from={sft}", *SYSTEM, f"--out_dir={out['rm']}",
          f"--train_data={data['prefs_train']}", f"--val_data={data['prefs_val']}",
          f"--bias_data={data['sft_train']}", "--batch_size=8", "--max_iters=8",
          "--warmup_iters=1", "--eval_interval=4", "--eval_examples=-1", "--bias_examples=32",
          "--log_interval=4", "--share_prompt=True", timings=timings)  # as config/rm_gpt2_hh.py
    rm_log = log_lines(out["rm"])
    assert 0.0 <= [r["val_accuracy"] for r in rm_log if "val_accuracy" in r][-1] <= 1.0
    assert math.isfinite(rm_log[-1]["reward_bias"])
    rm = os.path.join(out["rm"], "ckpt_best.pt")

    # PPO: at the first update policy == reference == old policy: KL exactly 0 (the rollout scores
    # both on the same micro-batches), the ratio 1 to float precision (RLHF_DETAILS item 17)
    rl = [f"--init_from={sft}", f"--reward_model={rm}", "--gold_judge=", *SYSTEM,
          f"--train_prompts={data['prompts_train']}", f"--val_prompts={data['prompts_val']}",
          f"--demo_val_data={data['sft_val']}",
          "--max_new_tokens=16", "--eval_examples=4", "--num_samples=1", "--sample_interval=100",
          "--missing_eos_mode="]  # a tiny model rarely ends within 16 tokens: score them all
    stage("train_ppo.py", *rl, f"--out_dir={out['ppo']}", "--rollout_batch_size=8",
          "--minibatch_size=8", "--micro_batch_size=8", "--num_iterations=1", "--max_iters=2",
          "--eval_interval=2", "--save_every=0", timings=timings)
    first = next(r for r in log_lines(out["ppo"]) if "ratio_mean" in r)
    assert first["step"] == 1
    assert first["kl"] == 0.0 and first["kl_k3"] == 0.0  # rollout log-probs == reference's
    assert first["ratio_mean"] == pytest.approx(1.0, abs=1e-5) and first["ratio_var"] <= 1e-10
    assert first["clipfrac"] == 0.0 and first["approx_kl"] <= 1e-10
    assert first["logprob_gap"] < 1e-4  # the sampler's log-probs are the ones trained on
    assert first["score_std"] > 0 and 0 < first["resp_len"] <= 16  # the reward model scored them

    # DPO: at the start the policy is its reference, every log-ratio 0 and the loss log 2
    stage("train_dpo.py", f"--init_from={sft}", *SYSTEM, f"--out_dir={out['dpo']}",
          f"--train_data={data['prefs_train']}", f"--val_data={data['prefs_val']}",
          "--batch_size=4", "--max_iters=4", "--warmup_iters=1", "--eval_interval=4",
          "--eval_examples=16", "--log_interval=1", "--length_buckets=True",
          "--share_prompt=True", timings=timings)  # as config/dpo_gpt2_hh.py
    dpo_log = log_lines(out["dpo"])
    assert dpo_log[0]["step"] == 0 and dpo_log[0]["val_margin"] == 0.0
    assert dpo_log[0]["val_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert all(math.isfinite(r["loss"]) for r in dpo_log if "loss" in r)

    # GRPO: on-policy (one pass over the whole batch), the ratio is 1 to float precision
    stage("train_grpo.py", *rl, f"--out_dir={out['grpo']}", "--group_size=4",
          "--rollout_batch_size=8", "--minibatch_size=8", "--micro_batch_size=8", "--max_iters=2",
          "--eval_interval=2", "--save_every=0", timings=timings)
    first = next(r for r in log_lines(out["grpo"]) if "ratio_mean" in r)
    assert first["ratio_mean"] == pytest.approx(1.0, abs=1e-5) and first["ratio_var"] <= 1e-10
    assert first["kl"] == 0.0 and first["clipfrac"] == 0.0
    assert first["no_signal"] < 1.0  # the groups' answers scored differently: a gradient

    # evaluation of every policy against the SFT one
    policies = ",".join([f"sft:{sft}", f"ppo:{out['ppo']}/ckpt_last.pt",
                         f"dpo:{out['dpo']}/ckpt_last.pt", f"grpo:{out['grpo']}/ckpt_last.pt"])
    stage("eval.py", f"--policies={policies}", f"--reward_model={rm}", f"--reference={sft}",
          "--baseline=sft", "--gold_judge=", f"--prompts={data['prompts_val']}",
          f"--pairs={data['prefs_val']}", f"--demo_val_data={data['sft_val']}",
          "--eval_examples=8", "--max_new_tokens=16",
          "--batch_size=8", f"--out_dir={out['eval']}", *SYSTEM, timings=timings)
    with open(os.path.join(out["eval"], "results.json")) as f:
        results = json.load(f)
    assert set(results["policies"]) == {"sft", "ppo", "dpo", "grpo"}
    assert results["policies"]["sft"]["kl"] == 0.0  # the reference against itself
    assert results["n_pairs"] == 32 and 0.0 <= results["rm_accuracy"] <= 1.0

    # export the DPO policy and reload it in transformers: the same logits on real prompts
    stage("export_hf.py", f"--ckpt={out['dpo']}/ckpt_last.pt", f"--out_dir={out['hf']}",
          timings=timings)
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel.from_pretrained(out["hf"], attn_implementation="eager").eval()
    ours, tok = checkpoint.init_policy(f"{out['dpo']}/ckpt_last.pt")  # the checkpoint itself
    ours.eval()
    assert tok == "gpt2"
    assert hf.config.vocab_size == 50257 and hf.config.eos_token_id == EOT
    prompts = read_jsonl(data["prompts_val"])[:3]
    with torch.no_grad():
        for p in prompts:
            idx = torch.tensor([encode_prompt(gpt2, p["prompt"])[-256:]])
            torch.testing.assert_close(hf(idx).logits, ours(idx), atol=1e-4, rtol=0)
    print("stage seconds:", timings)
