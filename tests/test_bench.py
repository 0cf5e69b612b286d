"""
bench.py: every stage runs at a micro size and reports sane numbers (never how fast: timings are
not asserted), the FLOPs formula matches the models' real weights, and the KV-free generation it
compares against produces the same tokens as GPT.generate.
"""

import importlib
import json
import math
import sys

import pytest
import torch

import bench
from model import GPT, GPTConfig, ScalarModel

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


@pytest.mark.parametrize("T", [1, 64])
def test_forward_flops_count_the_models_own_weights(T):
    config = GPTConfig(block_size=64, vocab_size=257, n_layer=3, n_head=2, n_embd=32)
    attention = 4 * config.n_layer * T * config.n_embd  # QK^T and AV over T keys
    gpt = GPT(config)
    assert bench.forward_flops(config, T) == 2 * matmul_weights(
        gpt, {"transformer.wpe.weight"}) + attention
    scalar = ScalarModel(config)  # no LM head: wte is only a lookup, the head is d weights
    assert bench.forward_flops(config, T, lm_head=False) == 2 * matmul_weights(
        scalar, {"transformer.wpe.weight", "transformer.wte.weight"}) + attention


def test_gpt2_training_flops_are_6n_plus_attention():
    # the figure nanoGPT's estimate_mfu uses for GPT-2 124M at T = 1024, written out
    config = GPTConfig(**{k: v for k, v in bench.SIZES["gpt2"].items()})
    N = 12 * 12 * 768 ** 2 + 768 * 50257  # 123.5M weights in matmuls
    assert 3 * bench.forward_flops(config, 1024) == 6 * N + 12 * 12 * 1024 * 768


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


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="sizes"):
        bench.main(["--sizes=gpt3"])
    with pytest.raises(ValueError, match="stages"):
        bench.main(["--stages=sft,kto"])


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
