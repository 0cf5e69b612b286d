"""
Export a nanoRLHF policy as a Hugging Face GPT-2 directory (config.json + model.safetensors),
loadable with `transformers.GPT2LMHeadModel.from_pretrained(out_dir)` and by hf_io.from_pretrained.

    python export_hf.py --ckpt=out/ppo/ckpt_best.pt --out_dir=out/hf_ppo

Deliberately left out: tokenizer files. A 'gpt2'-tokenizer policy works with HF's own GPT-2
tokenizer (`AutoTokenizer.from_pretrained("gpt2")`); the 'byte' tokenizer (256 bytes + EOT = 256)
has no HF counterpart, so encode with tokenizer.py. Only policies export: a reward model or critic
(kind 'scalar') has no language-model head.
"""

import json
import os

import config
import checkpoint
from hf_io import CONV1D, write_safetensors
from model import GPT

DEFAULTS = dict(
    ckpt="out/ppo/ckpt_best.pt",  # a nanoRLHF policy checkpoint (kind 'policy')
    out_dir="out/hf_ppo",  # written: config.json, model.safetensors
    eos_token_id=-1,  # -1: the checkpoint tokenizer's EOT (byte: 256, gpt2: 50256)
)

GPT2_EOT = 50256  # '<|endoftext|>' in the GPT-2 BPE


def hf_state_dict(model):
    """Our GPT's state dict in the layout recent transformers write: 'transformer.' prefix,
    Conv1D (in, out) weights, lm_head omitted because it is tied to wte."""
    out = {}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight":
            continue
        out[k] = v.t().contiguous() if k.endswith(CONV1D) else v
    return out


def hf_config(config, eos_token_id=GPT2_EOT):
    """config.json for GPT2LMHeadModel with our sizes (GPT-2's fixed choices spelled out)."""
    return {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
        "n_embd": config.n_embd, "n_layer": config.n_layer, "n_head": config.n_head,
        "n_positions": config.block_size, "n_ctx": config.block_size,
        "vocab_size": config.vocab_size, "n_inner": None, "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True,
        "resid_pdrop": config.dropout, "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout, "bos_token_id": eos_token_id,
        "eos_token_id": eos_token_id,
    }


def export_hf(model_or_checkpoint, out_dir, eos_token_id=None):
    """
    Write a GPT (or a policy checkpoint file) as a HF GPT-2 directory. eos_token_id defaults to
    the tokenizer's EOT: the checkpoint's 'tokenizer', else 'byte' for a 257-token vocabulary,
    else GPT-2's 50256. Returns out_dir.
    """
    tokenizer = None
    if isinstance(model_or_checkpoint, GPT):
        model = model_or_checkpoint
    else:
        path = str(model_or_checkpoint)
        ckpt = checkpoint.load_checkpoint(path, expect_kind="policy")
        # the training scripts' loader and checks: a vocabulary too small for its tokenizer or
        # weights that do not fit model_args fail here, naming the file, not in someone's HF code
        model = checkpoint.model_from_checkpoint(GPT, ckpt, path,
                                             ckpt["model_args"].get("dropout", 0.0))
        tokenizer = ckpt["tokenizer"]
    if eos_token_id is None:
        if tokenizer is None:
            tokenizer = "byte" if model.config.vocab_size == 257 else "gpt2"
        if tokenizer == "byte":
            from tokenizer import get_tokenizer
            eos_token_id = get_tokenizer("byte").eot_token
        else:
            eos_token_id = GPT2_EOT
    path = out_dir
    try:  # a file or a full disk: one line naming the path, and no half-written file
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, "model.safetensors")
        write_safetensors(path, hf_state_dict(model), {"format": "pt"})  # transformers expects
        path = os.path.join(out_dir, "config.json")                      # this metadata key
        tmp = f"{path}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(hf_config(model.config, eos_token_id), f, indent=2)
        os.replace(tmp, path)
    except OSError as e:
        for name in os.listdir(out_dir) if os.path.isdir(out_dir) else []:
            if ".tmp." in name:
                os.remove(os.path.join(out_dir, name))
        raise config.os_error(path, e) from None
    return out_dir


def main(argv=None):
    cfg = config.parse_config(DEFAULTS, argv, __doc__)
    eos = None if cfg.eos_token_id < 0 else cfg.eos_token_id
    if eos is not None:  # the id must be a token of the exported model
        vocab = checkpoint.load_checkpoint(cfg.ckpt, expect_kind="policy")["model_args"].get("vocab_size")
        config.require(isinstance(vocab, int) and eos < vocab, f"eos_token_id={eos} is outside "
                       f"the vocabulary of {cfg.ckpt} ({vocab} tokens)")
    out = export_hf(cfg.ckpt, cfg.out_dir, eos)
    print(f"wrote {out}/config.json and {out}/model.safetensors")
    return out


if __name__ == "__main__":
    config.cli(main)
