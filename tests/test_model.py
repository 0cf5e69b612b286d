"""
model.py against Hugging Face's GPT-2 (the reference) and against itself: padding, the KV cache,
sampling filters, the reward/critic model and the hand-written safetensors reader/writer.
transformers and safetensors are imported here only, never by model.py.
"""

import json
import os

import pytest
import torch
import torch.nn.functional as F

import model as M
import hf_io
import layouts
from hf_io import read_safetensors, write_safetensors
from model import GPT, GPTConfig, ScalarModel, is_right_padded, top_k_filter, top_p_filter

transformers = pytest.importorskip("transformers")

V = 100


def tiny_config(**kw):
    return GPTConfig(**{**dict(block_size=64, vocab_size=V, n_layer=2, n_head=4, n_embd=32), **kw})


def tiny_gpt(seed=0, **kw):
    torch.manual_seed(seed)
    return GPT(tiny_config(**kw)).eval()


def make_hf(n_layer=2, n_embd=32, n_head=4, vocab_size=V, n_positions=64, seed=0):
    """A random HF GPT-2; every parameter perturbed so zero biases and unit LayerNorms can't hide
    a mistake (a missing transpose, a swapped bias)."""
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                                  vocab_size=vocab_size, n_positions=n_positions,
                                  bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1)
    hf = transformers.GPT2LMHeadModel._from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return hf


def left_padded_batch(lengths, T, vocab=V, seed=1):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, vocab, (len(lengths), T), generator=g)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, T - n:] = 1
    return idx, mask


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """The same random HF model saved three ways: recent safetensors, a pytorch_model.bin, and
    the hub's original layout (no 'transformer.' prefix, attn.bias/masked_bias, lm_head)."""
    hf = make_hf()
    root = tmp_path_factory.mktemp("hf")
    st = root / "safetensors"
    hf.save_pretrained(st)
    binary = root / "bin"
    binary.mkdir()
    (binary / "config.json").write_text((st / "config.json").read_text())
    torch.save(hf.state_dict(), binary / "pytorch_model.bin")
    orig = root / "original"
    orig.mkdir()
    (orig / "config.json").write_text((st / "config.json").read_text())
    sd = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items()}
    n_pos = hf.config.n_positions
    for i in range(hf.config.n_layer):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n_pos, n_pos))[None, None]
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    write_safetensors(orig / "model.safetensors", sd, {"format": "pt"})
    return hf, {"safetensors": st, "bin": binary, "original": orig}

# -----------------------------------------------------------------------------
# Hugging Face parity


@pytest.mark.unit
@pytest.mark.parametrize("layout", ["safetensors", "bin", "original"])
def test_logits_match_hf(hf_dirs, layout):
    hf, dirs = hf_dirs
    model = GPT.from_pretrained(str(dirs[layout])).eval()
    idx = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(idx).logits
        out = model(idx)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    # a left-padded batch: HF gets the same mask and position ids; compare real positions
    idx, mask = left_padded_batch([16, 9, 3], 16)
    pos = M.position_ids_from_mask(mask)
    with torch.no_grad():
        ref = hf(idx, attention_mask=mask, position_ids=pos).logits
        out = model(idx, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(out[real], ref[real], atol=1e-5, rtol=0)


@pytest.mark.unit
def test_logits_match_hf_gpt2_small_shapes():
    # GPT-2 124M's trunk (12 layers, 768 wide, 12 heads) with a small vocab: real shapes
    hf = make_hf(n_layer=12, n_embd=768, n_head=12, vocab_size=256, n_positions=64)
    model = GPT(GPTConfig(block_size=64, vocab_size=256, n_layer=12, n_head=12, n_embd=768))
    hf_io.load_hf_state_dict(model.eval(), hf.state_dict())
    idx = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf(idx).logits, atol=1e-5, rtol=0)


@pytest.mark.unit
def test_state_dict_mismatch_is_a_clear_error(hf_dirs):
    hf, _ = hf_dirs
    sd = dict(hf.state_dict())
    sd.pop("transformer.h.1.mlp.c_fc.bias")
    with pytest.raises(ValueError, match="missing.*h.1.mlp.c_fc.bias"):
        hf_io.load_hf_state_dict(tiny_gpt(), sd)
    sd = dict(hf.state_dict())
    with pytest.raises(ValueError, match="shape"):
        hf_io.load_hf_state_dict(tiny_gpt(n_embd=64), sd)


@pytest.mark.unit
def test_download_from_hub_and_offline_error(hf_dirs, tmp_path, monkeypatch, capsys):
    hf, dirs = hf_dirs
    # serve the saved model as the hub's {base}/gpt2/resolve/main/{file} layout via file://
    served = tmp_path / "hub" / "gpt2" / "resolve" / "main"
    served.mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        (served / f).write_bytes((dirs["safetensors"] / f).read_bytes())
    monkeypatch.setattr(hf_io, "HF_HUB_URL", (tmp_path / "hub").as_uri())
    monkeypatch.setenv("NANORLHF_CACHE", str(tmp_path / "cache"))
    model = GPT.from_pretrained("gpt2").eval()
    assert "100.0%" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "cache" / "gpt2")) == ["config.json", "model.safetensors"]
    idx = torch.arange(10)[None]
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf(idx).logits, atol=1e-5, rtol=0)
    # cached: no network needed the second time
    monkeypatch.setattr(hf_io, "HF_HUB_URL", "http://127.0.0.1:9")
    GPT.from_pretrained("gpt2")
    # offline and not cached: a clear error that says what to do
    with pytest.raises(RuntimeError, match="No network.*local directory"):
        GPT.from_pretrained("gpt2-medium")
    assert os.listdir(tmp_path / "cache" / "gpt2-medium") == []  # no half-written file left


@pytest.mark.unit
def test_from_pretrained_rejects_unknown_name():
    with pytest.raises(ValueError, match="neither"):
        GPT.from_pretrained("not-a-model-or-dir")

# -----------------------------------------------------------------------------
# masks and padding


@pytest.mark.unit
def test_padded_rows_equal_rows_alone():
    model = tiny_gpt()
    lengths, T = [12, 7, 1], 12
    idx, mask = left_padded_batch(lengths, T)
    with torch.no_grad():
        left = model(idx, attention_mask=mask)
        # the same rows right-padded
        ridx, rmask = torch.zeros_like(idx), torch.zeros_like(mask)
        for i, n in enumerate(lengths):
            ridx[i, :n], rmask[i, :n] = idx[i, T - n:], 1
        right = model(ridx, attention_mask=rmask)
        # right padding needs no mask at all (causal attention never looks ahead)
        right_nomask = model(ridx)
        assert torch.isfinite(left).all() and torch.isfinite(right).all()  # pad rows too
        for i, n in enumerate(lengths):
            alone = model(idx[i:i + 1, T - n:])[0]  # no mask: the is_causal fast path
            torch.testing.assert_close(left[i, T - n:], alone, atol=1e-5, rtol=0)
            torch.testing.assert_close(right[i, :n], alone, atol=1e-5, rtol=0)
            torch.testing.assert_close(right_nomask[i, :n], alone, atol=1e-5, rtol=0)


@pytest.mark.unit
def test_padded_backward_is_finite():
    model = tiny_gpt()
    idx, mask = left_padded_batch([10, 4], 10)
    model(idx, attention_mask=mask).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("kind", ["gpt", "scalar"])
def test_grad_checkpoint_gives_the_plain_gradients(kind):
    # gradient checkpointing recomputes each block in the backward: the same gradients (fp32,
    # <= 1e-6) with no mask, a left-padded 2-D mask, and a shared-prompt 4-D mask with positions;
    # with dropout too (the recompute replays the RNG), and never in no-grad forwards
    torch.manual_seed(0)
    cls = GPT if kind == "gpt" else ScalarModel
    plain = cls(tiny_config(dropout=0.1)).train()
    ckpt = cls(tiny_config(dropout=0.1)).train()
    ckpt.load_state_dict(plain.state_dict())
    ckpt.transformer.grad_checkpoint = True
    idx, mask = left_padded_batch([10, 4, 7], 10)
    segments = torch.tensor([[0] * 4 + [1] * 3 + [2] * 3] * 3)
    shared = (layouts.shared_prompt_mask(segments),
              torch.cat([torch.arange(7), torch.arange(4, 7)])[None].expand(3, -1))
    for inputs in ((), (mask,), shared):
        grads = []
        for model in (plain, ckpt):
            model.zero_grad(set_to_none=True)
            torch.manual_seed(1)  # the same dropout masks in both models
            out = model.values(idx, *inputs) if kind == "scalar" else model(idx, *inputs)
            (out.float() * torch.linspace(-1, 1, out.size(-1))).sum().backward()
            grads.append({n: p.grad for n, p in model.named_parameters()})
        for name, g in grads[0].items():
            torch.testing.assert_close(grads[1][name], g, atol=1e-6, rtol=0, msg=name)
    # no recompute where nothing is differentiated: generation and no-grad forwards
    calls = []
    ckpt.eval()
    orig = torch.utils.checkpoint.checkpoint
    torch.utils.checkpoint.checkpoint = lambda *a, **k: calls.append(1) or orig(*a, **k)
    try:
        with torch.no_grad():
            ckpt.transformer(idx, mask)
        if kind == "gpt":
            ckpt.generate(idx[:1, -4:], max_new_tokens=3)
    finally:
        torch.utils.checkpoint.checkpoint = orig
    assert calls == []


@pytest.mark.unit
def test_chunked_head_logprobs_equal_the_whole_head():
    # with checkpointing, GPT.forward(targets=...) runs the LM head a chunk of positions at a
    # time and again in the backward: the log-probs and every gradient of the whole head's
    # (fp32, <= 1e-6), for selected positions (n,) and for every position (B, T)
    torch.manual_seed(0)
    plain, ckpt = GPT(tiny_config()), GPT(tiny_config())
    ckpt.load_state_dict(plain.state_dict())
    ckpt.transformer.grad_checkpoint, ckpt.logprob_chunk = True, 4
    idx = torch.randint(0, plain.config.vocab_size, (3, 6))
    at = torch.rand(3, 6) < 0.6  # 10 positions here: chunks of 4, 4 and 2
    at[0, :4] = True
    for logits_at in (at, None):
        targets = torch.randint(0, plain.config.vocab_size, tuple(idx[at].shape if logits_at
                                                                 is not None else idx.shape))
        outs, grads, calls = [], [], []
        for model in (plain, ckpt):
            model.zero_grad(set_to_none=True)
            hook = model.lm_head.register_forward_hook(lambda m, i, o: calls.append(o.size(0)))
            logp = model(idx, logits_at=logits_at, targets=targets)
            (logp * torch.linspace(-1, 1, logp.numel()).view(logp.shape)).sum().backward()
            hook.remove()
            outs.append(logp)
            grads.append({n: p.grad for n, p in model.named_parameters()})
        assert outs[1].shape == targets.shape and outs[1].dtype == torch.float32
        torch.testing.assert_close(outs[1], outs[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(outs[0], M.logprobs_of(plain(idx, logits_at=logits_at),
                                                          targets), atol=1e-6, rtol=0)
        for name, g in grads[0].items():
            torch.testing.assert_close(grads[1][name], g, atol=1e-6, rtol=0, msg=name)
        n = targets.numel()
        chunks = [min(4, n - k) for k in range(0, n, 4)]
        # the whole head once (plain), then each chunk in the forward and again in the backward
        lead = [idx.size(0)] if logits_at is None else [n]
        assert calls == lead + chunks + chunks[::-1], calls


@pytest.mark.unit
def test_attention_mask_4d_by_hand():
    m = M.attention_mask_4d(torch.tensor([[0, 1, 1]]), 3)[0, 0].long()
    # row 0 is a pad query: only itself; rows 1, 2 see real keys up to themselves
    assert m.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    # one new query over a cache of 3 keys, the first a pad
    assert M.attention_mask_4d(torch.tensor([[0, 1, 1]]), 1)[0, 0].long().tolist() == [[0, 1, 1]]


@pytest.mark.unit
def test_shared_prompt_mask_by_hand():
    # prompt (0), an answer of two tokens (1), another of one (2), a pad (-1)
    m = layouts.shared_prompt_mask(torch.tensor([[0, 1, 1, 2, -1]]))[0, 0].long()
    assert m.tolist() == [[1, 0, 0, 0, 0],
                          [1, 1, 0, 0, 0],
                          [1, 1, 1, 0, 0],
                          [1, 0, 0, 1, 0],   # the second answer sees the prompt, not the first
                          [1, 0, 0, 0, 1]]   # a pad query: the prompt and itself


@pytest.mark.unit
def test_shared_prompt_rows_equal_separate_rows_and_may_exceed_block_size():
    # a prompt of 40 tokens and two answers of 20: a 80-token row on a 64-position model, each
    # answer's hidden states those of prompt + answer run alone (positions 40..59 both)
    torch.manual_seed(0)
    model = tiny_gpt().eval()
    prompt, a, b = (torch.randint(0, V - 1, (n,)) for n in (40, 20, 20))
    row = torch.cat([prompt, a, b])[None]
    segments = torch.tensor([[0] * 40 + [1] * 20 + [2] * 20])
    positions = torch.cat([torch.arange(60), torch.arange(40, 60)])[None]
    with torch.no_grad():
        h = model.hidden_states(row, layouts.shared_prompt_mask(segments), positions)[0]
        ha = model.hidden_states(torch.cat([prompt, a])[None])[0]
        hb = model.hidden_states(torch.cat([prompt, b])[None])[0]
    torch.testing.assert_close(h[:60], ha, atol=1e-5, rtol=0)
    torch.testing.assert_close(h[60:], hb[40:], atol=1e-5, rtol=0)
    # logits_at as (rows, positions), a position named twice
    at = (torch.tensor([0, 0, 0]), torch.tensor([39, 39, 60]))
    with torch.no_grad():
        logits = model(row, layouts.shared_prompt_mask(segments), positions, logits_at=at)
    torch.testing.assert_close(logits, model.lm_head(h[[39, 39, 60]]), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="position 64 exceeds block_size 64"):
        model(row, layouts.shared_prompt_mask(segments), positions + 5)


@pytest.mark.unit
def test_input_errors():
    model = tiny_gpt()
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids"):
        model(torch.tensor([[1, V]]))
    with pytest.raises(ValueError, match="token ids"):
        model(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match="block_size"):
        model.generate(torch.zeros(1, 60, dtype=torch.long), max_new_tokens=5)
    with pytest.raises(ValueError, match="LEFT-padded"):
        model.generate(torch.zeros(1, 4, dtype=torch.long), torch.tensor([[1, 1, 1, 0]]))


@pytest.mark.unit
def test_hidden_states_and_tied_embeddings():
    model = tiny_gpt()
    idx = torch.randint(0, V, (2, 5))
    h = model.hidden_states(idx)
    assert h.shape == (2, 5, 32)
    torch.testing.assert_close(model(idx), h @ model.transformer.wte.weight.t())
    assert model.lm_head.weight is model.transformer.wte.weight


@pytest.mark.unit
def test_gpt2_init_scales():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=V, n_layer=8, n_head=4, n_embd=128))
    std = lambda name: model.get_parameter(name).std().item()
    assert abs(std("transformer.h.0.mlp.c_fc.weight") - 0.02) < 0.002
    assert abs(std("transformer.h.0.mlp.c_proj.weight") - 0.02 / 4) < 0.0005  # 1/sqrt(2*8)
    assert model.get_parameter("transformer.h.0.attn.c_attn.bias").abs().max() == 0

# -----------------------------------------------------------------------------
# generation


def naive_greedy(model, idx, mask, n):
    """Reference: recompute the whole sequence for every new token, no cache."""
    for _ in range(n):
        logits = model(idx, attention_mask=mask)[:, -1]
        idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return idx[:, -n:]


@pytest.mark.unit
def test_kv_cache_greedy_equals_full_recompute():
    model = tiny_gpt()
    idx, mask = left_padded_batch([8, 5, 2], 8)
    tokens, gmask, _ = model.generate(idx, mask, max_new_tokens=12, greedy=True)
    with torch.no_grad():
        ref = naive_greedy(model, idx, mask, 12)
    assert tokens.tolist() == ref.tolist()
    assert gmask.tolist() == [[1] * 12] * 3


@pytest.mark.unit
def test_generate_logprobs_equal_full_forward():
    model = tiny_gpt()
    idx, mask = left_padded_batch([8, 3], 8)
    T = 0.7
    g = torch.Generator().manual_seed(0)
    tokens, gmask, lp = model.generate(idx, mask, max_new_tokens=10, temperature=T, top_k=20,
                                       top_p=0.9, generator=g)
    full, fmask = torch.cat([idx, tokens], 1), torch.cat([mask, gmask], 1)
    with torch.no_grad():
        logits = model(full, attention_mask=fmask)[:, 7:-1] / T  # predictions of new tokens
    ref = F.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    torch.testing.assert_close(lp, ref * gmask, atol=1e-5, rtol=0)


def test_seeded_sampling_is_reproducible():
    model = tiny_gpt()
    idx, mask = left_padded_batch([6, 4], 6)
    run = lambda seed: model.generate(idx, mask, max_new_tokens=16,
                                      generator=torch.Generator().manual_seed(seed))[0]
    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))
    # top_k=1 sampling is greedy
    greedy = model.generate(idx, mask, max_new_tokens=8, greedy=True)[0]
    assert torch.equal(model.generate(idx, mask, max_new_tokens=8, top_k=1)[0], greedy)


@pytest.mark.unit
def test_eos_masks_and_fills_the_rest():
    model = tiny_gpt()
    idx, mask = left_padded_batch([6, 4, 2], 6)
    free = model.generate(idx, mask, max_new_tokens=16, greedy=True)[0]
    eos = free[0, 2].item()  # row 0 emits this token at step 2 (maybe earlier too)
    tokens, gmask, lp = model.generate(idx, mask, max_new_tokens=16, greedy=True,
                                       eos_token_id=eos)
    for row in range(3):
        hits = (free[row] == eos).nonzero()
        e = hits[0].item() if len(hits) else 16  # first EOS of this row
        assert tokens[row, :e + 1].tolist() == free[row, :e + 1].tolist()[:tokens.size(1)]
        assert gmask[row, :e + 1].eq(1).all() and gmask[row, e + 1:].eq(0).all()
        assert tokens[row, e + 1:].eq(eos).all() and lp[row, e + 1:].eq(0).all()
        assert (lp[row, :e + 1] < 0).all()
    # a single row stops as soon as it is done
    tokens, gmask, _ = model.generate(idx[:1], mask[:1], max_new_tokens=16, greedy=True,
                                      eos_token_id=eos)
    e = (free[0] == eos).nonzero()[0].item()
    assert tokens.shape == (1, e + 1) and tokens[0, -1] == eos and gmask.eq(1).all()


@pytest.mark.unit
def test_top_k_filter_by_hand():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    inf = float("-inf")
    assert top_k_filter(logits, 2).tolist() == [[inf, 3.0, 2.0, inf]]
    assert top_k_filter(logits, None) is logits and top_k_filter(logits, 0) is logits
    assert top_k_filter(logits, 10) is logits


@pytest.mark.unit
def test_top_p_filter_by_hand():
    # probabilities 0.15, 0.5, 0.05, 0.3 in a scrambled order
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3])
    logits = probs.log()
    kept = lambda p: torch.isfinite(top_p_filter(logits, p)).tolist()
    assert kept(0.7) == [False, True, False, True]  # 0.5 + 0.3 = 0.8 >= 0.7
    assert kept(0.5) == [False, True, False, False]  # the top token alone reaches 0.5
    assert kept(0.81) == [True, True, False, True]  # 0.95
    assert kept(0.0) == [False, True, False, False]  # the top token is always kept
    assert kept(1.0) == [True] * 4
    out = F.softmax(top_p_filter(logits, 0.7), -1)
    torch.testing.assert_close(out, torch.tensor([0, 0.625, 0, 0.375]))

# -----------------------------------------------------------------------------
# reward model / critic


@pytest.mark.unit
def test_scalar_score_invariant_to_padding_and_batch_mates():
    torch.manual_seed(0)
    rm = ScalarModel(tiny_config()).eval()
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, V, (n,), generator=g) for n in (7, 3, 5)]
    with torch.no_grad():
        alone = torch.stack([rm(r[None])[0] for r in rows])
        for T in (7, 10):  # different amounts of padding
            for side in ("left", "right"):
                idx = torch.randint(0, V, (3, T), generator=g)  # garbage in the pads
                mask = torch.zeros(3, T, dtype=torch.long)
                for i, r in enumerate(rows):
                    sl = slice(T - len(r), T) if side == "left" else slice(0, len(r))
                    idx[i, sl], mask[i, sl] = r, 1
                torch.testing.assert_close(rm(idx, mask), alone, atol=1e-5, rtol=0)
                # a row's score does not depend on its batch mates
                torch.testing.assert_close(rm(idx[1:2], mask[1:2]), alone[1:2], atol=1e-5,
                                           rtol=0)
                # values: one per position, the score is the value at the last real token
                # values: one per position, the score is the value at each row's last real
                # token, with a reward_bias too (the PPO critic starts from the reward model)
                rm.reward_bias.fill_(0.7)
                vals = rm.values(idx, mask)
                assert vals.shape == (3, T)
                last = [T - 1] * 3 if side == "left" else [len(r) - 1 for r in rows]
                torch.testing.assert_close(vals[torch.arange(3), last], rm(idx, mask), atol=1e-5,
                                           rtol=0)
                rm.reward_bias.zero_()


@pytest.mark.unit
def test_scalar_right_padded_batch_skips_the_mask(monkeypatch):
    # a right-padded batch scores as if the mask went through the trunk, and SDPA gets no mask
    # (its fast causal kernel); a left-padded batch keeps the mask
    torch.manual_seed(0)
    rm = ScalarModel(tiny_config()).eval()
    idx = torch.randint(0, V, (3, 8))
    right = torch.tensor([[1] * 8, [1] * 5 + [0] * 3, [1] * 2 + [0] * 6])
    left = right.flip(1)
    assert is_right_padded(right) and not is_right_padded(left)
    seen = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention",
                        lambda *a, **k: seen.append(k["attn_mask"] is None) or sdpa(*a, **k))
    with torch.no_grad():
        h = rm.transformer(idx, right)  # the masked trunk
        expected = rm.head(h[torch.arange(3), torch.tensor([7, 4, 1])]).squeeze(-1)
        seen.clear()
        torch.testing.assert_close(rm(idx, right), expected, atol=1e-5, rtol=0)
        assert seen and all(seen)
        seen.clear()
        rm(idx, left)
        assert seen and not any(seen)


@pytest.mark.unit
def test_scalar_reward_bias_and_head_init():
    torch.manual_seed(0)
    rm = ScalarModel(GPTConfig(block_size=8, vocab_size=10, n_layer=1, n_head=4, n_embd=1024))
    # N(0, 1/sqrt(d+1)): 1024 samples estimate the std to about 2%
    assert abs(rm.head.weight.std().item() * (1025 ** 0.5) - 1) < 0.1
    assert rm.head.bias.item() == 0
    idx = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        before = rm(idx)
        rm.reward_bias.fill_(0.25)
        torch.testing.assert_close(rm(idx), before - 0.25)
        # the critic's contract: its value at the last real token is the score, bias included
        torch.testing.assert_close(rm.values(idx)[:, -1], before - 0.25)
    assert rm.state_dict()["reward_bias"].item() == 0.25


@pytest.mark.unit
def test_scalar_from_gpt_and_state_dict_keys():
    gpt = tiny_gpt()
    rm = ScalarModel.from_gpt(gpt)
    for k, v in gpt.transformer.state_dict().items():
        assert torch.equal(rm.transformer.state_dict()[k], v)
    # a GPT state dict loads into a ScalarModel: only the head is new, only lm_head unused
    res = ScalarModel(gpt.config).load_state_dict(gpt.state_dict(), strict=False)
    assert sorted(res.missing_keys) == ["head.bias", "head.weight", "reward_bias"]
    assert res.unexpected_keys == ["lm_head.weight"]

# -----------------------------------------------------------------------------
# safetensors


def sample_tensors():
    torch.manual_seed(0)
    return {"f32": torch.randn(3, 5), "f16": torch.randn(4).half(),
            "bf16": torch.randn(2, 3).bfloat16(), "i64": torch.arange(7),
            "i32": torch.tensor([[-1, 2]], dtype=torch.int32), "u8": torch.arange(5).byte(),
            "bool": torch.tensor([True, False, True]), "scalar": torch.tensor(-3.5),
            "empty": torch.zeros(0, 4)}


@pytest.mark.unit
def test_safetensors_round_trip(tmp_path):
    ts = sample_tensors()
    path = tmp_path / "t.safetensors"
    write_safetensors(path, ts, {"format": "pt", "step": 3})
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert (8 + n) % 8 == 0  # the data starts aligned
    assert json.loads(raw[8:8 + n])["__metadata__"] == {"format": "pt", "step": "3"}
    back = read_safetensors(path)
    assert list(back) == list(ts)
    for k, v in ts.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]  # no temp file left


@pytest.mark.unit
def test_safetensors_compatible_with_the_reference_package(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    ts = sample_tensors()
    st.save_file(ts, tmp_path / "theirs.safetensors", metadata={"format": "pt"})
    back = read_safetensors(tmp_path / "theirs.safetensors")
    assert back.keys() == ts.keys()
    for k, v in ts.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    write_safetensors(tmp_path / "ours.safetensors", ts)
    back = st.load_file(tmp_path / "ours.safetensors")
    for k, v in ts.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k


@pytest.mark.unit
def test_safetensors_truncated_file_is_an_error(tmp_path):
    path = tmp_path / "t.safetensors"
    write_safetensors(path, {"a": torch.randn(100)})
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(ValueError, match="truncated"):
        read_safetensors(path)
