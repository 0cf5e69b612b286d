"""
bench.py: every stage runs at a micro size and reports sane numbers (never how fast: timings are
not asserted), the FLOPs formula matches the models' real weights, and the KV-free generation it
compares against produces the same tokens as GPT.generate. --data on a tiny HH-shaped file: the
batches are the scripts' (loader, length policy, bucketing), the counts are their real tokens,
the full-logits variant computes the same log-probs, and tests/bench_trl.py hands TRL exactly
those rows. dev/gpu_check.py: its plan, its refusal without a GPU, and (slow) the whole plan on
the CPU.
"""

import gzip
import importlib
import json
import math
import os
import sys
import time

from types import SimpleNamespace

import pytest
import torch

import bench
from data import bench_rows
from config import parse_config
import ops
from data import loader
from model import GPT, GPTConfig, ScalarModel
from tokenizer import get_tokenizer

MICRO = ["--sizes=micro", "--batch_size=2", "--block_size=16", "--prompt_len=6", "--gen_tokens=4",
         "--num_iterations=2", "--steps=1", "--warmup=0", "--device=cpu", "--dtype=float32"]
ROWS = ("sft", "rm", "dpo", "dpo_cached_ref", "ppo_gen", "ppo_gen_nocache", "ppo_score",
        "ppo_update", "ppo_iter")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    out = bench.main(MICRO + ["--peak_flops=1e9", f"--out={path}"])
    with open(path) as f:
        assert json.load(f) == json.loads(json.dumps(out))  # the file holds what was returned
    return out


def test_every_stage_reports_positive_finite_numbers(result):
    rows = {r["stage"]: r for r in result["rows"]}
    assert tuple(rows) == ROWS
    for stage, r in rows.items():
        assert r["size"] == "micro"
        for key in ("tokens", "s_per_step", "tokens_per_s"):
            assert math.isfinite(r[key]) and r[key] > 0, (stage, key, r[key])
        # a CPU's resident set may not grow at all when freed memory is reused: >= 0, not > 0
        assert math.isfinite(r["peak_mem_mb"]) and r["peak_mem_mb"] >= 0, stage
        if stage in ("ppo_gen", "ppo_gen_nocache", "ppo_iter"):  # no FLOPs count for these
            assert r["tflops"] is None and r["mfu"] is None
        else:
            assert math.isfinite(r["tflops"]) and r["tflops"] > 0, stage
            assert r["mfu"] == pytest.approx(r["tflops"] * 1e12 / 1e9)
    meta = result["meta"]
    assert meta["device"] == "cpu" and meta["dtype"] == "float32" and meta["hardware"]


def test_token_counts_and_the_ppo_split(result):
    rows = {r["stage"]: r for r in result["rows"]}
    B, T, P, N, epochs = 2, 16, 6, 4, 2
    assert rows["sft"]["tokens"] == B * T
    assert rows["rm"]["tokens"] == rows["dpo"]["tokens"] == 2 * B * T  # chosen + rejected rows
    assert rows["ppo_gen"]["tokens"] == rows["ppo_iter"]["tokens"] == B * N
    assert rows["ppo_update"]["tokens"] == epochs * B * (P + N)
    # an iteration is generation + scoring + every optimizer step of the update
    parts = (rows["ppo_gen"]["s_per_step"] + rows["ppo_score"]["s_per_step"]
             + epochs * rows["ppo_update"]["s_per_step"])
    assert rows["ppo_iter"]["s_per_step"] == pytest.approx(parts)


def test_table_has_a_line_per_row(result):
    lines = bench.format_table(result["rows"]).splitlines()
    assert len(lines) == 1 + len(ROWS)
    assert lines[1].split()[:2] == ["micro", "sft"]


def matmul_weights(model, skip):
    """Entries of the model's matrices that a token is multiplied with: every 2-D parameter but
    the embedding tables in skip (a lookup costs no FLOPs; the tied wte is also the LM head)."""
    return sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and n not in skip)


@pytest.mark.unit
@pytest.mark.parametrize("T", [1, 64])
def test_forward_flops_count_the_models_own_weights(T):
    config = GPTConfig(block_size=64, vocab_size=257, n_layer=3, n_head=2, n_embd=32)
    attention = 4 * config.n_layer * T * config.n_embd  # QK^T and AV over T keys
    gpt = GPT(config)
    assert bench_rows.forward_flops(config, T) == 2 * matmul_weights(
        gpt, {"transformer.wpe.weight"}) + attention
    scalar = ScalarModel(config)  # no LM head: wte is only a lookup, the head is d weights
    assert bench_rows.forward_flops(config, T, lm_head=False) == 2 * matmul_weights(
        scalar, {"transformer.wpe.weight", "transformer.wte.weight"}) + attention


@pytest.mark.unit
def test_gpt2_training_flops_are_6n_plus_attention():
    # the figure nanoGPT's estimate_mfu uses for GPT-2 124M at T = 1024, written out
    config = GPTConfig(**{k: v for k, v in bench_rows.SIZES["gpt2"].items()})
    N = 12 * 12 * 768 ** 2 + 768 * 50257  # 123.5M weights in matmuls
    assert 3 * bench_rows.forward_flops(config, 1024) == 6 * N + 12 * 12 * 1024 * 768


@pytest.mark.unit
def test_no_cache_generation_equals_the_kv_cache():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=257, n_layer=2, n_head=2, n_embd=32)).eval()
    idx = torch.randint(0, 257, (3, 6))
    mask = torch.ones_like(idx)
    mask[1, :2] = 0  # left-padded prompts of lengths 6, 4 and 1
    mask[2, :5] = 0
    tokens, _, _ = model.generate(idx, mask, max_new_tokens=10, greedy=True)
    assert bench.generate_no_cache(model, idx, mask, 10, greedy=True).tolist() == tokens.tolist()
    # sampling draws the same tokens from the same generator state
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    tokens, _, _ = model.generate(idx, mask, max_new_tokens=10, temperature=0.8, generator=g1)
    sampled = bench.generate_no_cache(model, idx, mask, 10, temperature=0.8, generator=g2)
    assert sampled.tolist() == tokens.tolist()


def test_measured_matmul_ceiling_is_the_mfu_denominator(monkeypatch):
    # the ceiling counts 2 * rows * d * 4d FLOPs over the best of its timings, and
    # peak_flops=-1 makes every row's MFU its TFLOP/s over that ceiling
    times = iter([0.5, 0.25, 0.4])
    monkeypatch.setattr(bench, "timed", lambda fn, proc: (fn(), next(times)))
    proc = SimpleNamespace(dtype="float32", device="cpu", device_type="cpu")
    assert bench.matmul_ceiling(8, proc, rows=16, repeats=3) == 2 * 16 * 8 * 32 / 0.25
    monkeypatch.undo()
    out = bench.main(MICRO + ["--stages=sft", "--peak_flops=-1"])
    ceiling = out["meta"]["matmul_ceiling_flops"]["micro"]
    assert math.isfinite(ceiling) and ceiling > 0
    (row,) = out["rows"]
    assert row["mfu"] == pytest.approx(row["tflops"] * 1e12 / ceiling)
    with pytest.raises(ValueError, match="peak_flops"):
        bench.main(MICRO + ["--peak_flops=-2"])


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="sizes"):
        bench.main(["--sizes=gpt3"])
    with pytest.raises(ValueError, match="stages"):
        bench.main(["--stages=sft,kto"])


@pytest.mark.unit
def test_trl_script_imports_without_trl(monkeypatch):
    # the TRL comparison (tests/bench_trl.py) is a development tool: importing it (for --help) needs neither TRL nor
    # transformers, and it measures bench.py's shapes
    for name in ("trl", "transformers", "datasets", "accelerate"):
        monkeypatch.setitem(sys.modules, name, None)  # `import name` now raises ImportError
    monkeypatch.delitem(sys.modules, "bench_trl", raising=False)
    bench_trl = importlib.import_module("bench_trl")
    for key in ("sizes", "batch_size", "block_size", "prompt_len", "gen_tokens", "num_iterations",
                "steps", "warmup"):
        assert bench_trl.DEFAULTS[key] == bench.DEFAULTS[key]

# -----------------------------------------------------------------------------
# --data: real rows, batched as the HH recipes batch them

WORDS = "the a cat dog sat on mat why how what is it can you tell me about please thanks".split()


def hh_like_file(path, n=24, seed=0):
    """A tiny preference file shaped like prepare.py's HH output: multi-turn prompts and answers
    of very different lengths (so that buckets and padding matter)."""
    gen = torch.Generator().manual_seed(seed)

    def text(k):
        return " ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (k,), generator=gen).tolist())
    with open(path, "w") as f:
        for i in range(n):
            long = i % 3 == 0
            prompt = text(4 if not long else 12) + "\n\nAssistant: " + text(3) + "\n\nHuman: " + text(2)
            f.write(json.dumps(dict(prompt=prompt, chosen=text(2 + 4 * long), rejected=text(3 + 5 * long)))
                    + "\n")
    return str(path)


DATA = ["--sizes=micro", "--batch_size=4", "--block_size=96", "--gen_tokens=4", "--num_iterations=1",
        "--steps=3", "--warmup=1", "--device=cpu", "--dtype=float32"]


@pytest.fixture(scope="module")
def hh_result(tmp_path_factory):
    path = hh_like_file(tmp_path_factory.mktemp("hh") / "prefs.jsonl")
    out = bench.main(DATA + [f"--data={path}", "--stages=sft,rm,dpo,ppo,grpo",
                             "--variants=full_logits,no_buckets,shared_prompt"])
    return path, out


def test_data_mode_times_every_stage_and_variant(hh_result):
    _, result = hh_result
    rows = {r["stage"]: r for r in result["rows"]}
    assert set(rows) == set(ROWS) | {"grpo_iter", "sft_full_logits", "sft_no_buckets", "rm_no_buckets",
                                     "dpo_full_logits", "dpo_no_buckets", "rm_shared_prompt",
                                     "dpo_shared_prompt", "dpo_cached_ref_shared_prompt"}
    for stage, r in rows.items():
        assert len(r["step_s"]) == 3 and r["s_per_step"] == pytest.approx(sum(r["step_s"]) / 3)
        assert math.isfinite(r["tokens_per_s"]) and r["tokens_per_s"] > 0, stage
    lines = bench.variant_lines(result["rows"])
    assert len(lines) == 8 and all("the time per real token of" in line for line in lines)
    assert any(line.startswith("micro dpo_cached_ref_shared_prompt: ") and "of dpo_cached_ref "
               in line for line in lines)


def test_data_mode_counts_the_real_tokens_of_the_recipes_batches(hh_result):
    path, result = hh_result
    rows = {r["stage"]: r for r in result["rows"]}
    cfg = SimpleNamespace(**{**bench.DEFAULTS, "data": path, "batch_size": 4, "block_size": 96,
                             "gen_tokens": 4, "steps": 3, "warmup": 1})
    for kind, stages in (("sft", ("sft",)), ("pairs", ("rm", "dpo"))):
        for bucketed, suffix in ((True, ""), (False, "_no_buckets")):
            batches = bench_rows.real_batches(kind, "micro", cfg, bucketed)[1:]  # the timed ones
            masks = [b[1] if kind == "sft" else b["attention_mask"] for b in batches]
            for stage in stages:
                r = rows[stage + suffix]
                assert r["tokens"] == pytest.approx(sum(int(m.sum()) for m in masks) / 3)
                assert r["padding"] == pytest.approx(bench_rows.padding_share(masks))
    # each prompt once: the same pairs (the same real tokens), fewer positions, their own padding
    shared = [bench_rows.shared_prompt_batch(b, 256) for b in bench_rows.real_batches("pairs", "micro", cfg)[1:]]
    for stage in ("rm_shared_prompt", "dpo_shared_prompt", "dpo_cached_ref_shared_prompt"):
        assert rows[stage]["tokens"] == rows["rm"]["tokens"]
        assert rows[stage]["padding"] == pytest.approx(
            bench_rows.padding_share([(b["segments"] >= 0).long() for b in shared]))
    pairs_b = bench_rows.real_batches("pairs", "micro", cfg)[1:]
    assert sum(b["idx"].numel() for b in shared) < sum(b["idx"].numel() for b in pairs_b)
    # step s takes batch s of the epoch, drawn as train_sft.py draws it (bucketed by length)
    sft = bench_rows.real_rows(path, "byte", 96, 4)["sft"]
    lengths = tuple(len(ids) for ids, _ in sft)
    for s, rows_s in enumerate(bench_rows.real_batch_rows("sft", "micro", cfg)):
        assert rows_s == [sft[i] for i in loader.batch_indices(len(sft), 4, s, cfg.seed,
                                                               lengths=lengths)]
    # bucketing by length wastes less on padding than the plain shuffle (these lengths differ 3x)
    assert rows["sft"]["padding"] < rows["sft_no_buckets"]["padding"]
    assert rows["rm"]["padding"] <= rows["rm_no_buckets"]["padding"]


@pytest.mark.unit
def test_real_rows_follow_the_loaders_length_policy(tmp_path):
    path = hh_like_file(tmp_path / "prefs.jsonl")
    rows = bench_rows.real_rows(path, "byte", 64, 8)
    enc = get_tokenizer("byte")
    records = [json.loads(line) for line in open(path)]
    assert len(rows["pairs"]) == len(loader.load_preferences(path, enc, 64))
    for ids, mask in rows["sft"]:
        assert len(ids) <= 64 and ids[-1] == enc.eot_token and mask[-1] == 1
    assert all(0 < len(p) <= 64 - 8 for p in rows["prompts"])
    assert len(rows["prompts"]) == len({r["prompt"] for r in records})  # each prompt once


@pytest.mark.unit
def test_full_logits_path_equals_trained_logprobs():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=257, n_layer=1, n_head=2, n_embd=32))
    idx = torch.randint(0, 257, (3, 12))
    loss_mask = torch.zeros_like(idx)
    loss_mask[:, 5:10] = 1
    fast = ops.trained_logprobs(model, idx, loss_mask)
    full = bench.full_logprobs(model, idx, loss_mask)
    assert torch.allclose(fast, full, atol=1e-5)
    with bench.full_logits_path():
        assert ops.trained_logprobs is bench.full_logprobs
    assert ops.trained_logprobs is not bench.full_logprobs  # given back


@pytest.mark.unit
def test_batch_flops_count_real_tokens_and_read_logits():
    config = GPTConfig(block_size=64, vocab_size=257, n_layer=3, n_head=2, n_embd=32)
    B, T, d, V = 2, 16, 32, 257
    ones = torch.ones(B, T, dtype=torch.long)
    # a full batch with every position read: the per-token count, less the first position's head
    assert bench_rows.batch_flops(config, ones, ones) == B * T * bench_rows.forward_flops(config, T) - B * 2 * d * V
    assert bench_rows.batch_flops(config, ones) == B * T * bench_rows.forward_flops(config, T, lm_head=False)
    # padding costs nothing; a row counts at its own length
    attn, loss = ones.clone(), torch.zeros_like(ones)
    attn[1, 8:] = 0
    loss[:, 6:8] = 1
    expected = (T * bench_rows.forward_flops(config, T, lm_head=False)
                + 8 * bench_rows.forward_flops(config, 8, lm_head=False) - (T + 8) * 2 * d
                + 2 * 2 * d * V * 2)
    assert bench_rows.batch_flops(config, attn, loss) == expected


def test_data_hh_without_the_converted_files_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_rows, "HH_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="prepare.py"):
        bench.main(["--data=hh", "--sizes=micro"])
    with pytest.raises(ValueError, match="no_buckets"):
        bench.main(["--variants=no_buckets", "--sizes=micro"])  # random ids have no buckets


@pytest.mark.unit
def test_trl_gets_the_same_rows_as_text(tmp_path, monkeypatch):
    # bench_trl's text columns are bench.py's rows, token for token, in bench.py's batches
    for name in ("trl", "transformers", "datasets", "accelerate"):
        monkeypatch.setitem(sys.modules, name, None)
    bench_trl = importlib.import_module("bench_trl")
    path = hh_like_file(tmp_path / "prefs.jsonl")
    cfg = SimpleNamespace(**{**bench_trl.DEFAULTS, "data": path, "batch_size": 2, "block_size": 96,
                             "steps": 2, "warmup": 1})
    eos = 256
    for kind in ("sft", "pairs"):
        cols, shapes = bench_trl.real_text_rows(kind, "micro", cfg)
        batches = bench_rows.real_batches(kind, "micro", cfg)
        flat = [e for b in bench_rows.real_batch_rows(kind, "micro", cfg) for e in b]
        ids = lambda text: [int(w) for w in text.split()]  # noqa: E731 (the word tokenizer)
        for i, e in enumerate(flat):
            row, _ = e if kind == "sft" else e["chosen"]
            answer = cols["completion" if kind == "sft" else "chosen"][i]
            assert ids(cols["prompt"][i]) + ids(answer) + [eos] == row
            if kind == "pairs":
                assert ids(cols["prompt"][i]) + ids(cols["rejected"][i]) + [eos] == e["rejected"][0]
        for (rows, T, real), b in zip(shapes, batches):
            attn = b[1] if kind == "sft" else b["attention_mask"]
            assert (rows, T, real) == (attn.size(0), attn.size(1), int(attn.sum()))

# -----------------------------------------------------------------------------
# dev/gpu_check.py: the first GPU run, prepared


def gpu_check():
    return importlib.import_module("dev.gpu_check")


def test_gpu_check_plans_bench_and_every_hh_recipe(tmp_path, capsys):
    out = gpu_check().main(["--dry_run=True", f"--work_dir={tmp_path}", "--peak_flops=989e12"])
    phases = {p["name"]: p for p in out["phases"]}
    assert list(phases) == ["prepare", "bench sft,dpo 16x1024", "bench sft medium ckpt=False",
                            "bench sft medium ckpt=True", "bench ppo hh micro=8",
                            "bench ppo hh micro=64", "fsdp sft x8", "recipe sft", "recipe rm",
                            "recipe dpo", "recipe ppo", "recipe grpo"]
    target = phases["bench sft,dpo 16x1024"]["cmd"]
    for arg in ("--sizes=gpt2", "--compile=True", "--dtype=bfloat16", "--peak_flops=9.89e+14",
                "--batch_size=16", "--block_size=1024", "--device=cuda"):
        assert arg in target
    # gradient checkpointing at GPT-2 medium, off and on; PPO on the converted HH prompts; FSDP
    # over the 8 GPUs a dry run assumes without any
    for on in (False, True):
        cmd = phases[f"bench sft medium ckpt={on}"]["cmd"]
        assert "--sizes=gpt2-medium" in cmd and f"--grad_checkpoint={on}" in cmd
    prefs = os.path.join(str(tmp_path), "hh", "prefs_test.jsonl")
    assert f"--data={prefs}" in phases["bench ppo hh micro=8"]["cmd"]
    fsdp = phases["fsdp sft x8"]["cmd"]
    assert "--nproc_per_node=8" in fsdp and "--fsdp=True" in fsdp and "train_sft.py" in fsdp
    for stage, config in (("sft", "sft"), ("rm", "rm"), ("dpo", "dpo"), ("ppo", "ppo")):
        argv = phases[f"recipe {stage}"]["argv"]
        assert argv[0].endswith(os.path.join("config", f"{config}_gpt2_hh.py"))
        assert "--max_iters=200" in argv or "--max_iters=20" in argv
        assert f"--out_dir={os.path.join(str(tmp_path), stage)}" in argv
    # the chain: RM, DPO, PPO and GRPO start from the SFT checkpoint, PPO and GRPO score with the RM
    sft_ckpt = os.path.join(str(tmp_path), "sft", "ckpt_best.pt")
    for stage in ("rm", "dpo", "ppo", "grpo"):
        assert f"--init_from={sft_ckpt}" in phases[f"recipe {stage}"]["argv"]
    printed = capsys.readouterr().out
    assert "python" in printed and "train_grpo.py" in printed and "-c" not in printed.split()


def test_gpu_check_recipe_keys_are_the_scripts_keys(tmp_path):
    # every --key of every recipe command is one its script accepts (parse_config rejects others)
    import train_dpo
    import train_grpo
    import train_ppo
    import train_reward_model
    import train_sft
    scripts = dict(sft=train_sft, rm=train_reward_model, dpo=train_dpo, ppo=train_ppo,
                   grpo=train_grpo)
    for smoke in (False, True):
        out = gpu_check().main(["--dry_run=True", f"--work_dir={tmp_path}", f"--smoke={smoke}"])
        for p in out["phases"]:
            if p["kind"] == "recipe":
                cfg = parse_config(scripts[p["stage"]].DEFAULTS, p["argv"])
                assert cfg.out_dir == p["out_dir"]
            elif p["kind"] == "fsdp":  # the arguments after the script under torchrun
                cfg = parse_config(train_sft.DEFAULTS, p["cmd"][p["cmd"].index("train_sft.py") + 1:])
                assert cfg.out_dir == p["out_dir"] and cfg.fsdp
            elif p["kind"] == "bench":
                parse_config(bench.DEFAULTS, p["cmd"][p["cmd"].index("bench.py") + 1:])
        assert any("--device=cpu" in p["cmd"] for p in out["phases"]) == smoke


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_check_without_a_gpu_stops_at_once(tmp_path):
    start = time.time()
    with pytest.raises(ValueError, match="no CUDA GPU"):
        gpu_check().main([f"--work_dir={tmp_path}"])
    assert time.time() - start < 5 and not os.listdir(tmp_path)  # nothing ran, nothing written


SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                      "data")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "gpt2_bpe")),
                    reason=f"no GPT-2 BPE files in {os.path.normpath(SHARED)}")
def test_gpu_check_smoke_runs_every_phase_on_the_cpu(tmp_path):
    # the whole plan on a small upstream-format HH file: every command, hand-over and reading
    gen = torch.Generator().manual_seed(1)
    hh = tmp_path / "harmless-base-test.jsonl.gz"
    with gzip.open(hh, "wt") as f:
        for i in range(24):
            words = lambda k: " ".join(WORDS[j] for j in torch.randint(  # noqa: E731
                0, len(WORDS), (k,), generator=gen).tolist())
            turns = f"\n\nHuman: {words(3 + i % 7)}\n\nAssistant: {words(2)}\n\nHuman: {words(4)}"
            f.write(json.dumps(dict(chosen=f"{turns}\n\nAssistant: {words(2 + i % 5)}",
                                    rejected=f"{turns}\n\nAssistant: {words(3 + i % 4)}")) + "\n")
    out_file = tmp_path / "results.json"
    out = gpu_check().main(["--smoke=True", f"--hh_file={hh}", f"--shared={SHARED}",
                            f"--work_dir={tmp_path / 'work'}", f"--out={out_file}"])
    status = {p["name"]: p["status"] for p in out["phases"]}
    assert set(status.values()) == {"ok"}, {p["name"]: p.get("log_tail") for p in out["phases"]
                                            if p["status"] != "ok"}
    phases = {p["name"]: p for p in out["phases"]}
    assert {r["stage"] for r in phases["bench sft,dpo 16x1024"]["rows"]} == {
        "sft", "dpo", "dpo_cached_ref"}
    for stage in ("sft", "rm", "dpo"):
        r = phases[f"recipe {stage}"]["result"]
        assert r["s_per_step"] > 0 and r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1, (stage, r)
    for stage in ("ppo", "grpo"):
        assert phases[f"recipe {stage}"]["result"]["steps_logged"] >= 2
    for on in (False, True):
        assert [r["stage"] for r in phases[f"bench sft medium ckpt={on}"]["rows"]] == ["sft"]
    for micro in (2, 4):
        rows = {r["stage"]: r for r in phases[f"bench ppo hh micro={micro}"]["rows"]}
        assert rows["ppo_iter"]["s_per_step"] > 0
    fsdp = phases["fsdp sft x2"]["result"]  # two CPU processes in the smoke test
    assert fsdp["steps_logged"] == 2 and fsdp["s_per_step"] > 0
    assert json.load(open(out_file))["phases"][0]["name"] == "prepare"


@pytest.mark.unit
def test_side_by_side_summary_reads_the_step_by_step_ratios(monkeypatch):
    for name in ("trl", "transformers", "datasets", "accelerate"):
        monkeypatch.setitem(sys.modules, name, None)
    bench_trl = importlib.import_module("bench_trl")
    assert bench_trl.spread([3.0, 1.0, 2.0, 10.0]) == (2.0, 1.0, 10.0)  # the lower middle
    summary = [dict(setting="defaults", size="gpt2", ours="sft", trl="sft", ours_s=[1.0, 2.0],
                    trl_s=[2.0, 5.0], paired=[0.4, 0.5, 0.6, 0.45], rounds=[0.5, 0.4],
                    same_batches=[True, True])]
    line = bench_trl.summary_lines(summary)[1].split()
    assert line[:4] == ["defaults", "gpt2", "sft", "sft"]
    assert line[6:9] == ["0.450", "0.400-0.600", "4"] and "ok" in line and line[-1] == "yes"
