"""
SFT: the loss pinned to a hand computation, zero gradient under the mask, config errors, then
short end-to-end runs (memorising a few examples, exact resume, every data format).
"""

import json
import math
import os

import pytest
import torch

import config
import checkpoint
import ops
import train_sft
from model import GPT, GPTConfig
from tokenizer import encode_prompt, get_tokenizer
from data.toy.prepare import write_jsonl

# a handful of examples a tiny model can learn by heart
EXAMPLES = [
    ("What is the capital of France?", "Paris."),
    ("Say hi.", "Hi there!"),
    ("2+2?", "4"),
    ("Name a colour.", "Blue."),
]

TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=64", "--device=cpu",
        "--num_samples=1", "--sample_tokens=8", "--eval_examples=4"]


@pytest.fixture
def toy_files(tmp_path):
    """prompt/response for training, prompt/completion for validation: two of the formats."""
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": p, "response": r} for p, r in EXAMPLES])
    val = write_jsonl(tmp_path / "val.jsonl", [{"prompt": p, "completion": r} for p, r in EXAMPLES])
    return train, val

# -----------------------------------------------------------------------------
# the loss


@pytest.mark.unit
def test_sft_loss_matches_hand_computation():
    # one row of 4 tokens, vocabulary of 3; tokens 2 and 3 are the response (label positions)
    logits = torch.tensor([[[1.0, 0.0, 0.0],
                            [0.0, 2.0, 0.0],
                            [0.5, 0.5, 1.0],
                            [9.0, 9.0, 9.0]]])   # the last position predicts nothing
    idx = torch.tensor([[0, 2, 1, 2]])
    loss_mask = torch.tensor([[0, 0, 1, 1]])

    def logp(row, tok):
        return row[tok] - math.log(sum(math.exp(v) for v in row))
    rows = logits[0].tolist()
    # label 1 (idx 2) from position 0 is prompt: not trained; labels 2 and 3 are
    want = -(logp(rows[1], 1) + logp(rows[2], 2)) / 2
    got = train_sft.sft_loss(ops.token_logprobs(logits, idx), loss_mask)
    assert got.item() == pytest.approx(want, abs=1e-6)

    # a batch is averaged over all its trained tokens, not per row
    logits2 = torch.cat([logits, logits]); idx2 = torch.cat([idx, idx])
    mask2 = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 1]])
    want2 = -(logp(rows[1], 1) + logp(rows[2], 2) + logp(rows[2], 2)) / 3
    got2 = train_sft.sft_loss(ops.token_logprobs(logits2, idx2), mask2)
    assert got2.item() == pytest.approx(want2, abs=1e-6)


@pytest.mark.unit
def test_masked_positions_get_exactly_zero_gradient():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=257, n_layer=1, n_head=2, n_embd=16))
    # right-padded: row 0 = 3 prompt + 3 response tokens + 2 pad; row 1 = 2 prompt + 4 response
    idx = torch.randint(0, 257, (2, 8))
    attn = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    loss_mask = torch.tensor([[0, 0, 0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 0, 0]])
    logits = model(idx, attention_mask=attn)
    logits.retain_grad()
    train_sft.sft_loss(ops.token_logprobs(logits, idx), loss_mask).backward()
    g = logits.grad  # (B, T, V)
    # logits at t predict the token at t+1: they are trained iff loss_mask[:, t+1] == 1
    trained = torch.zeros_like(loss_mask, dtype=torch.bool)
    trained[:, :-1] = loss_mask[:, 1:].bool()
    assert torch.all(g[~trained] == 0)           # exactly zero, not merely small
    assert torch.all(g[trained].abs().sum(-1) > 0)

    # and the loss does not depend on what sits in the padding
    idx2 = idx.clone(); idx2[0, 6:] = 5
    with torch.no_grad():
        a = train_sft.sft_loss(ops.token_logprobs(model(idx, attention_mask=attn), idx), loss_mask)
        b = train_sft.sft_loss(ops.token_logprobs(model(idx2, attention_mask=attn), idx2),
                               loss_mask)
    assert a.item() == b.item()
    # the LM head at the trained positions alone gives the same log-probs, exactly 0 elsewhere
    with torch.no_grad():
        full = ops.token_logprobs(model(idx, attention_mask=attn), idx) * loss_mask[:, 1:]
        only = ops.trained_logprobs(model, idx, loss_mask)
    torch.testing.assert_close(only, full, atol=1e-5, rtol=0)
    assert (only[loss_mask[:, 1:] == 0] == 0).all()

@pytest.mark.unit
def test_split_last_answer_takes_the_final_assistant_turn():
    ids = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    mask = [0, 1, 1, 0, 0, 1, 1, 1, 0]  # two answers, then padding-like trailing zeros
    assert train_sft.split_last_answer(ids, mask) == ([1, 2, 3, 4, 5], [6, 7, 8])

# -----------------------------------------------------------------------------
# config errors come before any training


@pytest.mark.parametrize("args, words", [
    (["--not_a_key=1"], "not_a_key"),
    (["--lr=fast"], "lr"),
    (["--max_iters=1.5"], "max_iters"),
    (["--stop_iter=99", "--max_iters=50"], "stop_iter"),
    (["--warmup_iters=-1"], "warmup_iters"),
    (["--n_embd=30", "--n_head=4"], "n_head"),
    (["--train_data=/nonexistent/x.jsonl"], "train_data"),
])
def test_bad_config_is_a_clear_error(tmp_path, toy_files, args, words):
    train, val = toy_files
    out = tmp_path / "out"
    with pytest.raises(config.ConfigError, match=words):
        train_sft.main([f"--out_dir={out}", f"--train_data={train}", f"--val_data={val}"] + args)
    assert not out.exists()  # nothing was written


def test_help_lists_every_key(capsys):
    with pytest.raises(SystemExit):
        train_sft.main(["--help"])
    text = capsys.readouterr().out
    assert all(f"--{k}" in text for k in train_sft.DEFAULTS)

# -----------------------------------------------------------------------------
# end to end


def greedy_answer(model, enc, prompt):
    ids = torch.tensor([encode_prompt(enc, prompt)])
    n = model.config.block_size - ids.size(1)  # as long as the model's positions allow
    tokens, mask, _ = model.generate(ids, max_new_tokens=n, greedy=True, eos_token_id=enc.eot_token)
    ans = [t for t, m in zip(tokens[0].tolist(), mask[0].tolist()) if m]
    return enc.decode([t for t in ans if t != enc.eot_token]), ans[-1] == enc.eot_token


@pytest.mark.slow
def test_memorises_a_few_examples(tmp_path, toy_files):
    train, val = toy_files
    out = str(tmp_path / "out")
    res = train_sft.main([f"--out_dir={out}", f"--train_data={train}", f"--val_data={val}",
                          "--batch_size=4", "--max_iters=60", "--lr=1e-2", "--min_lr=1e-3",
                          "--warmup_iters=10", "--weight_decay=0.0", "--eval_interval=30",
                          "--log_interval=20"] + TINY)
    losses = res["train_losses"]
    assert losses[-1] < 0.1 * losses[0]
    assert res["best_val_loss"] < 0.1 and res["out_dir"] == out
    ckpt = checkpoint.load_checkpoint(os.path.join(out, "ckpt_best.pt"), expect_kind="policy")
    assert ckpt["stage"] == "sft" and ckpt["tokenizer"] == "byte"
    model = GPT(GPTConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    model.eval()
    enc = get_tokenizer("byte")
    for prompt, response in EXAMPLES:
        text, ended = greedy_answer(model, enc, prompt)
        assert text == " " + response and ended  # the answer and then EOS, nothing more


@pytest.mark.slow
def test_grad_accum_equals_one_big_batch(tmp_path, toy_files):
    # the same rows per step either way; answers of different lengths make the micro-batches
    # hold different numbers of trained tokens, so a plain mean of micro-batch means would differ
    train, val = toy_files
    base = [f"--train_data={train}", f"--val_data={val}", "--max_iters=3", "--warmup_iters=1",
            "--eval_interval=100", "--num_samples=0"] + TINY
    one = train_sft.main([f"--out_dir={tmp_path / 'one'}", "--batch_size=4", "--grad_accum=1"] + base)
    two = train_sft.main([f"--out_dir={tmp_path / 'two'}", "--batch_size=2", "--grad_accum=2"] + base)
    assert two["train_losses"] == pytest.approx(one["train_losses"], abs=1e-5)
    from conftest import assert_weights_within_adam_noise
    a = checkpoint.load_checkpoint(str(tmp_path / "one" / "ckpt_last.pt"))["model"]
    b = checkpoint.load_checkpoint(str(tmp_path / "two" / "ckpt_last.pt"))["model"]
    cfg = train_sft.DEFAULTS  # lr and betas of these runs
    assert_weights_within_adam_noise(a, b, cfg["lr"], 3, (cfg["beta1"], cfg["beta2"]))


@pytest.mark.slow
def test_resume_is_exact(tmp_path):
    # multi-turn messages data, dropout and gradient accumulation: every piece of state matters
    rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r},
                          {"role": "user", "content": "Again?"}, {"role": "assistant", "content": r}]}
            for p, r in EXAMPLES]
    data = write_jsonl(tmp_path / "msgs.jsonl", rows)
    base = [f"--train_data={data}", f"--val_data={data}", "--batch_size=2", "--grad_accum=2",
            "--max_iters=8", "--warmup_iters=2", "--dropout=0.1", "--eval_interval=3",
            "--ckpt_interval=100", "--log_interval=1", "--length_buckets=True"] + TINY
    full = train_sft.main([f"--out_dir={tmp_path / 'a'}"] + base)
    half = train_sft.main([f"--out_dir={tmp_path / 'b'}", "--stop_iter=4"] + base)
    assert half["step"] == 4
    rest = train_sft.main([f"--out_dir={tmp_path / 'b'}", "--resume=True"] + base)
    assert rest["step"] == 8
    assert rest["train_losses"] == pytest.approx(full["train_losses"][4:], abs=1e-6)
    assert rest["train_loss"] == pytest.approx(full["train_loss"], abs=1e-6)
    assert rest["best_val_loss"] == pytest.approx(full["best_val_loss"], abs=1e-6)
    a = checkpoint.load_checkpoint(str(tmp_path / "a" / "ckpt_last.pt"))
    b = checkpoint.load_checkpoint(str(tmp_path / "b" / "ckpt_last.pt"))
    for k, v in a["model"].items():
        assert torch.allclose(v, b["model"][k], atol=1e-6, rtol=0), k
    # the resumed run's log reads like the uninterrupted one, line for line
    def log(d):
        with open(tmp_path / d / "log.jsonl") as f:
            return [json.loads(line) for line in f]
    la, lb = log("a"), log("b")
    assert [(r["step"], sorted(r)) for r in la] == [(r["step"], sorted(r)) for r in lb]
    for ra, rb in zip(la, lb):
        for k in ("loss", "val_loss", "lr", "grad_norm"):
            if k in ra:
                assert rb[k] == pytest.approx(ra[k], abs=1e-6), (ra["step"], k)


@pytest.mark.unit
def test_toy_config_is_the_default():
    import runpy
    values = runpy.run_path(os.path.join(os.path.dirname(train_sft.__file__), "config", "sft_toy.py"))
    values = {k: v for k, v in values.items() if not k.startswith("_")}
    assert values and all(train_sft.DEFAULTS[k] == v for k, v in values.items())


@pytest.mark.unit
def test_gpt2_recipe_parses():
    path = os.path.join(os.path.dirname(train_sft.__file__), "config", "sft_gpt2_hh.py")
    cfg = config.parse_config(train_sft.DEFAULTS, [path])
    assert cfg.init_from == "gpt2" and cfg.tokenizer == "gpt2" and cfg.block_size == 512
