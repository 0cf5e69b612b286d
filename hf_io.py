"""
Hugging Face GPT-2 weights in and out, with nothing but the standard library, numpy and torch:
.safetensors read and written by hand (no pickle, so loading can never run code), the hub's
config.json + model.safetensors downloaded into a cache, and an HF state dict copied into our GPT
(export_hf.py writes the other way). checkpoint.init_policy loads 'gpt2'...'gpt2-xl' and local HF
directories through from_pretrained.

Module names mirror Hugging Face's GPT-2, so its state dict maps one to one onto ours, except
that HF stores the four projection weights as Conv1D (in, out) and we use nn.Linear (out, in).
"""

import json
import math
import os
import struct
import sys
import urllib.error
import urllib.request

import torch

from model import GPT, GPTConfig

# where from_pretrained('gpt2') downloads from; read at call time so tests can point it at a
# file:// directory
HF_HUB_URL = os.environ.get("NANORLHF_HUB_URL", "https://huggingface.co")
PRETRAINED = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
# HF Conv1D weights are (in, out); our nn.Linear weights are (out, in): these four get transposed
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def from_pretrained(name_or_path, dropout=0.0, cls=GPT):
    """GPT-2 weights from the hub ('gpt2' ... 'gpt2-xl') or a local Hugging Face directory."""
    config, sd = load_hf_gpt2(name_or_path)
    config.dropout = dropout
    with torch.device("meta"):  # check the shapes on a model without storage first: a
        shell = cls(config)     # config.json of a huge model costs nothing then
    load_hf_state_dict(shell, sd, check_only=True)
    model = cls(config)
    load_hf_state_dict(model, sd)
    return model

# -----------------------------------------------------------------------------
# safetensors, by hand
#
# A .safetensors file is: 8 bytes, a little-endian uint64 N; N bytes of JSON mapping each tensor
# name to {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]} (byte offsets counted from
# the end of the header), plus an optional "__metadata__" dict of str -> str; then the raw
# little-endian, row-major tensor bytes. No pickle, so loading can never run code.

ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
             "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
             "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}


def read_safetensors(path):
    """Read a .safetensors file into a dict name -> CPU tensor."""
    assert sys.byteorder == "little", "this reader assumes a little-endian machine"
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: not a safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if 8 + n > size:  # a cut or damaged file: never read, or allocate, past its end
            raise ValueError(f"{path}: its header claims {n} bytes, the file holds {size}")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: the safetensors header is not JSON ({e})") from None
        if not isinstance(header, dict):
            raise ValueError(f"{path}: the safetensors header is not a JSON object")
        header.pop("__metadata__", None)
        base = 8 + n
        out = {}
        for name, info in header.items():
            if info["dtype"] not in ST_DTYPES:
                raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
            dtype, shape = ST_DTYPES[info["dtype"]], info["shape"]
            begin, end = info["data_offsets"]
            nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            if base + end > size or begin < 0:
                raise ValueError(f"{path}: tensor {name!r} lies past the end of the file")
            if end - begin != nbytes:
                raise ValueError(f"{path}: tensor {name!r} has {end - begin} bytes, "
                                 f"expected {nbytes}")
            f.seek(base + begin)
            buf = bytearray(nbytes)  # read straight into a writable buffer torch can share
            if f.readinto(buf) != nbytes:
                raise ValueError(f"{path}: file is truncated (tensor {name!r})")
            t = torch.frombuffer(buf, dtype=dtype) if nbytes else torch.empty(0, dtype=dtype)
            out[name] = t.reshape(shape)
    return out


def write_safetensors(path, tensors, metadata=None):
    """Write a dict name -> tensor as .safetensors, atomically (temp file, then rename)."""
    header, offset = {}, 0
    if metadata:  # the format allows only str -> str here
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    for name, t in tensors.items():
        if t.dtype not in ST_NAMES:
            raise ValueError(f"tensor {name!r}: dtype {t.dtype} has no safetensors name here")
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": ST_NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * (-len(hbytes) % 8)  # pad with spaces so the data starts 8-byte aligned
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(hbytes)))
            f.write(hbytes)
            for t in tensors.values():
                # the raw bytes, seen as uint8 (numpy has no bf16, but bytes are bytes)
                f.write(t.reshape(-1).view(torch.uint8).numpy().data)
        os.replace(tmp, path)
    except BaseException:  # a full disk, a Ctrl-C: no half-written file left behind
        if os.path.exists(tmp):
            os.remove(tmp)
        raise

# -----------------------------------------------------------------------------
# Hugging Face GPT-2 checkpoints


def _download(url, path):
    """Download url to path through path.tmp, printing a progress line."""
    tmp = f"{path}.tmp.{os.getpid()}"
    fname = os.path.basename(path)
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "nanorlhf"})
        with urllib.request.urlopen(req, timeout=60) as r, open(tmp, "wb") as f:
            total, done = int(r.headers.get("Content-Length") or 0), 0
            while chunk := r.read(1 << 20):
                f.write(chunk)
                done += len(chunk)
                pct = f"{100 * done / total:5.1f}%" if total else "?"
                print(f"\rdownloading {fname}: {pct} ({done / 1e6:.1f}/{total / 1e6:.1f} MB)",
                      end="", flush=True)
        print()
        os.replace(tmp, path)
    except (urllib.error.URLError, OSError) as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise RuntimeError(
            f"could not download {url} ({e}). No network? Download config.json and "
            f"model.safetensors elsewhere and pass their local directory instead of the name "
            f"(or set NANORLHF_CACHE to a directory that already holds them).") from None


def download_pretrained(name):
    """config.json + model.safetensors of a hub GPT-2 into the cache dir; returns the dir."""
    root = os.environ.get("NANORLHF_CACHE") or os.path.expanduser("~/.cache/nanorlhf")
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    for fname in ("config.json", "model.safetensors"):
        path = os.path.join(d, fname)
        if not os.path.isfile(path):
            _download(f"{HF_HUB_URL}/{name}/resolve/main/{fname}", path)
    return d


def load_hf_gpt2(name_or_path):
    """(GPTConfig, raw HF state dict) from a hub name or a local HF GPT-2 directory."""
    if os.path.isdir(name_or_path):
        d = name_or_path
    elif name_or_path in PRETRAINED:
        d = download_pretrained(name_or_path)
    else:
        raise ValueError(f"{name_or_path!r} is neither one of {PRETRAINED} nor a directory")
    cfg_path = os.path.join(d, "config.json")
    if not os.path.isfile(cfg_path):
        raise ValueError(f"{d}: no config.json (expected a Hugging Face GPT-2 directory)")
    try:
        with open(cfg_path) as f:
            hf = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}: not valid JSON (JSONDecodeError: {e})") from None
    if not isinstance(hf, dict):
        raise ValueError(f"{cfg_path}: not a JSON object")
    if hf.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"{d}: model_type {hf.get('model_type')!r}, only 'gpt2' is supported")
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"{d}: activation {hf['activation_function']!r} is not GPT-2's gelu_new")
    if (hf.get("n_inner") not in (None, 4 * hf["n_embd"])
            or hf.get("scale_attn_by_inverse_layer_idx")
            or not hf.get("scale_attn_weights", True) or not hf.get("tie_word_embeddings", True)):
        raise ValueError(f"{d}: a GPT-2 variant this model does not implement (n_inner, "
                         f"attention scaling or untied embeddings differ from GPT-2's)")
    config = GPTConfig(block_size=hf["n_positions"], vocab_size=hf["vocab_size"],
                       n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"], bias=True)
    if os.path.isfile(os.path.join(d, "model.safetensors")):
        sd = read_safetensors(os.path.join(d, "model.safetensors"))
    elif os.path.isfile(os.path.join(d, "pytorch_model.bin")):
        # weights_only: a pickle from the internet must not be able to run code
        path = os.path.join(d, "pytorch_model.bin")
        sd = torch.load(path, map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"{d}: neither model.safetensors nor pytorch_model.bin found")
    return config, sd


def load_hf_state_dict(model, sd, check_only=False):
    """
    Copy a HF GPT-2 state dict into our GPT. Accepts both layouts: the hub's original files
    (no 'transformer.' prefix, attn.bias/masked_bias buffers, lm_head.weight) and recent
    transformers' (prefixed, lm_head omitted because tied).
    """
    ours = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied
    theirs = {}
    for k, v in sd.items():
        if k.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # the causal-mask buffers of old GPT-2 files: SDPA does the masking
        if k == "lm_head.weight":
            wte = sd.get("transformer.wte.weight", sd.get("wte.weight"))
            if wte is not None and not torch.equal(v, wte):
                raise ValueError("lm_head.weight differs from wte.weight: untied embeddings are "
                                 "not supported (GPT-2 ties them)")
            continue
        k = k if k.startswith("transformer.") else "transformer." + k
        theirs[k] = v.t() if k.endswith(CONV1D) else v
    missing, unexpected = sorted(ours.keys() - theirs.keys()), sorted(theirs.keys() - ours.keys())
    if missing or unexpected:
        raise ValueError(f"GPT-2 state dict does not match the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    for k, v in theirs.items():
        if v.shape != ours[k].shape:
            raise ValueError(f"{k}: shape {tuple(v.shape)} in the file, model expects "
                             f"{tuple(ours[k].shape)}")
    if check_only:
        return
    with torch.no_grad():
        for k, v in theirs.items():
            ours[k].copy_(v)

