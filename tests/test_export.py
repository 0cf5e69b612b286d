"""export_hf.py: an exported policy loads in transformers and gives the same logits."""

import json

import pytest
import torch

import config
import checkpoint
from export_hf import export_hf, main
from model import GPT, GPTConfig

transformers = pytest.importorskip("transformers")


def random_gpt(vocab_size=100):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=vocab_size, n_layer=2, n_head=4, n_embd=32))
    with torch.no_grad():  # perturb everything: zero biases and unit LayerNorms hide mistakes
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def assert_same_logits(model, out_dir):
    hf = transformers.GPT2LMHeadModel.from_pretrained(out_dir, attn_implementation="eager")
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, model.config.vocab_size, (2, 12), generator=g)
    with torch.no_grad():
        torch.testing.assert_close(hf.eval()(idx).logits, model(idx), atol=1e-5, rtol=0)
        # and back through our own loader: bit-exact
        assert torch.equal(GPT.from_pretrained(out_dir).eval()(idx), model(idx))


@pytest.mark.unit
def test_export_model_loads_in_transformers(tmp_path):
    model = random_gpt()
    export_hf(model, tmp_path / "hf")
    assert_same_logits(model, tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["eos_token_id"] == 50256 and cfg["n_positions"] == 32


def test_export_checkpoint_via_cli(tmp_path):
    model = random_gpt(vocab_size=257)  # the byte tokenizer's vocabulary
    sd = {"_orig_mod." + k: v for k, v in model.state_dict().items()}  # a compiled model's keys
    ckpt = {"model": sd, "model_args": vars(model.config), "kind": "policy", "tokenizer": "byte"}
    checkpoint.save_checkpoint(str(tmp_path / "ckpt.pt"), ckpt)
    main([f"--ckpt={tmp_path / 'ckpt.pt'}", f"--out_dir={tmp_path / 'hf'}"])
    assert_same_logits(model, tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["eos_token_id"] == 256


@pytest.mark.unit
def test_export_refuses_a_scalar_model(tmp_path):
    model = random_gpt()
    ckpt = {"model": model.state_dict(), "model_args": vars(model.config), "kind": "scalar",
            "tokenizer": "gpt2"}
    checkpoint.save_checkpoint(str(tmp_path / "rm.pt"), ckpt)
    with pytest.raises(config.CheckpointError, match="policy"):
        export_hf(tmp_path / "rm.pt", tmp_path / "hf")
