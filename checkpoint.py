"""
Plumbing: checkpoints and where a stage's weights come from. One dict per file, written atomically
and read back with weights_only=True; the model a checkpoint (or 'scratch', a GPT-2 name, a Hugging
Face directory) holds; and a small content-keyed cache for anything a run computes once.
"""

import hashlib
import os
import pickle
import re
import zipfile
from dataclasses import asdict

import torch

from config import HUB, CheckpointError, ConfigError, FileError, NonFiniteError, require
from runtime import print0, unwrap

# -----------------------------------------------------------------------------
# checkpoints: one dict per file, written atomically and read back with weights_only=True


def rng_state():
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path, ckpt):
    """Write to a temp file then rename: a crash mid-write leaves the previous file intact. A
    write the OS refuses (a full disk) is a FileError naming path."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows
    except BaseException as e:  # a full disk or a Ctrl-C mid-write: keep no half-written file
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            kept = "; the previous file is kept" if os.path.exists(path) else ""
            raise FileError(f"{path}: cannot write it ({e.strerror or e}){kept}") from None
        raise


def strip_prefixes(state_dict):
    """Drop the '_orig_mod.' (torch.compile) and 'module.' (DDP) prefixes from keys."""
    out = {}
    for k, v in state_dict.items():
        for p in ("_orig_mod.", "module."):
            while k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


def load_checkpoint(path, expect_kind=None, expect_tokenizer=None, expect_stage=None):
    """
    Load a checkpoint written by save_checkpoint. weights_only=True means the file can hold only
    tensors and plain containers: a checkpoint from the internet cannot run code when loaded.
    expect_kind ('policy' or 'scalar') and expect_tokenizer guard against loading the wrong model;
    expect_stage ('sft', 'rm', 'ppo', ...) against resuming another script's run.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive: this is something else
        raise CheckpointError(f"{path}: not a readable checkpoint (not a torch.save archive: cut "
                              f"short, or another kind of file)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" not in str(e):
            raise CheckpointError(f"{path}: not a readable checkpoint (damaged pickle)") from None
        found = re.search(r"GLOBAL (\S+)", str(e))
        raise CheckpointError(
            f"{path}: refused to load: the file holds objects other than tensors and plain "
            f"containers ({found.group(1) if found else 'a Python object'}), which could run "
            f"code (weights_only=True)") from None
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: "
                              f"{str(e)[:200]})") from None
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict)
            and isinstance(ckpt.get("model_args"), dict)):
        raise CheckpointError(f"{path}: not a nanoRLHF checkpoint (expected a dict with "
                              f"'model' and 'model_args' dicts)")
    ckpt["model"] = strip_prefixes(ckpt["model"])
    kind, tok = ckpt.get("kind"), ckpt.get("tokenizer")
    if expect_kind is not None and kind != expect_kind:
        raise CheckpointError(f"{path}: holds a {kind!r} model (stage {ckpt.get('stage')!r}), "
                              f"but a {expect_kind!r} model is needed here")
    if expect_tokenizer is not None and tok != expect_tokenizer:
        raise CheckpointError(f"{path}: was trained with the {tok!r} tokenizer, "
                              f"but this run uses {expect_tokenizer!r}")
    if expect_stage is not None and ckpt.get("stage") != expect_stage:
        raise CheckpointError(f"{path}: was written by the {ckpt.get('stage')!r} stage, so this "
                              f"{expect_stage!r} run cannot resume it; use another out_dir")
    return ckpt


def make_checkpoint(model, kind, stage, tokenizer, cfg, step, optimizer=None, **extra):
    """The checkpoint dict: weights, architecture, provenance, and what resuming needs."""
    m = unwrap(model)
    ckpt = {"model": m.state_dict(), "model_args": asdict(m.config), "kind": kind,
            "stage": stage, "tokenizer": tokenizer, "config": dict(vars(cfg)), "step": step,
            "rng": rng_state()}
    if optimizer is not None:
        ckpt["optimizer"] = optimizer.state_dict()
    ckpt.update(extra)
    return ckpt


def check_finite_weights(ckpt, step, name):
    """Refuse to write a checkpoint whose weights hold a NaN or inf, or a value above 1e18 that
    overflows float32 in the first matmul (a learning rate of 1e30 turns finite gradients into
    such weights): the last good file stays."""
    for part in ("model", "critic"):
        for key, t in (ckpt.get(part) or {}).items():
            if torch.is_tensor(t) and t.is_floating_point() and t.numel() and \
                    not float(t.abs().max()) <= 1e18:  # NaN fails this too
                raise NonFiniteError(f"step {step}: weight {part}.{key} is not finite (max "
                                     f"|w| = {float(t.abs().max()):.3g}); not writing {name} "
                                     f"(the last good checkpoint is kept)")


def require_keys(ckpt, path, *keys):
    """A checkpoint field a script needs, or a CheckpointError naming the file and the field."""
    missing = [k for k in keys if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: has no {', '.join(map(repr, missing))}: it cannot be "
                              f"resumed (not a ckpt_last.pt of this script?)")

# -----------------------------------------------------------------------------
# models: where a stage's starting weights come from


def init_policy(init_from, tokenizer="byte", model_args=None, dropout=0.0):
    """
    A GPT policy from 'scratch' (model_args, a dict of GPTConfig fields), 'gpt2'...'gpt2-xl'
    (the hub), a local Hugging Face directory, or a nanoRLHF checkpoint file (.pt).
    Returns (model, tokenizer_name).
    """
    import hf_io
    from model import GPT, GPTConfig
    if init_from == "scratch":
        from tokenizer import get_tokenizer
        args = dict(model_args or {})
        args["vocab_size"] = get_tokenizer(tokenizer).n_vocab
        return GPT(GPTConfig(**{**args, "dropout": dropout})), tokenizer
    if os.path.isfile(init_from):
        ckpt = load_checkpoint(init_from, expect_kind="policy")
        return model_from_checkpoint(GPT, ckpt, init_from, dropout), ckpt["tokenizer"]
    if os.path.isdir(init_from) or init_from in HUB:
        try:
            model = hf_io.from_pretrained(init_from, dropout=dropout)
        except (ValueError, RuntimeError, OSError, KeyError, TypeError) as e:  # a malformed HF
            # directory (config.json, safetensors), no network, ...
            raise CheckpointError(f"{init_from}: {type(e).__name__}: {str(e)[:400]}") from None
        check_loaded_weights(model, init_from)
        return model, "byte" if model.config.vocab_size == 257 else "gpt2"
    raise ConfigError(f"init_from={init_from!r}: not 'scratch', a gpt2 name, an existing "
                      f"checkpoint file or a Hugging Face directory")


def init_scalar(init_from, tokenizer="byte", model_args=None, dropout=0.0):
    """
    A ScalarModel (reward model or critic): from a scalar checkpoint as is, or a new head on the
    trunk of any policy source accepted by init_policy. Returns (model, tokenizer_name).
    """
    from model import ScalarModel
    if os.path.isfile(init_from):
        ckpt = load_checkpoint(init_from)
        if ckpt.get("kind") == "scalar":
            return scalar_from_checkpoint(ckpt, dropout, init_from)
    gpt, tok = init_policy(init_from, tokenizer, model_args, dropout)
    return ScalarModel.from_gpt(gpt), tok


def scalar_from_checkpoint(ckpt, dropout=0.0, path="the checkpoint"):
    """A ScalarModel holding a loaded scalar checkpoint's weights, and its tokenizer name. A
    reward-model path must be loaded with load_checkpoint(path, expect_kind='scalar') first:
    init_scalar would also take a policy and silently put a fresh random head on it."""
    from model import ScalarModel
    return model_from_checkpoint(ScalarModel, ckpt, path, dropout), ckpt["tokenizer"]


def reward_model_paths(spec):
    """The checkpoint files a reward_model spec names: one file, a comma-separated list of
    files (an ensemble), or a directory written by train_reward_model.py --ensemble=K (its
    member*/ckpt_best.pt, in member order)."""
    if os.path.isdir(spec):
        members = sorted((int(m.group(1)), os.path.join(spec, name, "ckpt_best.pt"))
                         for name in os.listdir(spec) if (m := re.fullmatch(r"member(\d+)", name)))
        paths = [p for _, p in members if os.path.isfile(p)]
        if not paths:
            raise CheckpointError(f"{spec}: a directory without member*/ckpt_best.pt (an "
                                  f"ensemble of train_reward_model.py --ensemble=K)")
        return paths
    return [p.strip() for p in spec.split(",")]


def load_reward_model(spec, tokenizer, vocab_size=None, agg="mean", uwo_lambda=1.0):
    """The frozen reward model of PPO, GRPO and eval: a scalar checkpoint whose tokenizer (and
    vocabulary) are the policy's, or a CheckpointError before anything runs. Several
    checkpoints (reward_model_paths) make a model.ScalarEnsemble whose score is their
    aggregate (train_reward_model.aggregate_rewards(agg, uwo_lambda)). Returns the model."""
    from model import ScalarEnsemble
    from train_reward_model import aggregate_rewards
    models = []
    for path in reward_model_paths(spec):
        ckpt = load_checkpoint(path, expect_kind="scalar", expect_tokenizer=tokenizer)
        model, _ = scalar_from_checkpoint(ckpt, path=path)
        if vocab_size is not None and model.config.vocab_size != vocab_size:
            raise CheckpointError(f"{path}: vocab_size={model.config.vocab_size}, but the "
                                  f"policy's is {vocab_size}: the reward model cannot read its "
                                  f"tokens")
        if models and model.config.block_size != models[0].config.block_size:
            raise CheckpointError(f"{path}: block_size={model.config.block_size}, but the first "
                                  f"member's is {models[0].config.block_size}")
        models.append(model.eval().requires_grad_(False))
    if len(models) == 1:
        return models[0]
    return ScalarEnsemble(models, lambda scores: aggregate_rewards(scores, agg, uwo_lambda))


# ids each tokenizer can produce, known without loading it (tiktoken fetches gpt2's files)
TOKENIZER_VOCAB = {"byte": 257, "gpt2": 50257}


def model_from_checkpoint(cls, ckpt, path, dropout=0.0):
    """
    A GPT or ScalarModel built from a loaded checkpoint's model_args and weights. Fails with a
    CheckpointError naming the file when its tokenizer's ids do not fit its vocabulary (a byte
    model labelled 'gpt2' would index past its embedding at the first batch) or when the weights
    do not match the architecture (a hand-edited or mixed-up file). The shapes are compared on
    a model without storage (device 'meta') first: settings of a huge model with no weights to
    match cost nothing, instead of allocating the huge model.
    """
    from model import GPTConfig
    tok, n_vocab = ckpt.get("tokenizer"), ckpt["model_args"].get("vocab_size")
    if tok not in TOKENIZER_VOCAB:
        raise CheckpointError(f"{path}: unknown tokenizer {tok!r} (expected 'byte' or 'gpt2')")
    if not isinstance(n_vocab, int) or n_vocab < TOKENIZER_VOCAB[tok]:
        raise CheckpointError(f"{path}: model_args vocab_size={n_vocab!r} is smaller than the "
                              f"{tok!r} tokenizer's {TOKENIZER_VOCAB[tok]} ids: token ids would be "
                              f"out of range")
    try:
        config = GPTConfig(**{**ckpt["model_args"], "dropout": dropout})
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in cls(config).state_dict().items()}
        stored = {k: tuple(v.shape) for k, v in ckpt["model"].items() if torch.is_tensor(v)}
        if stored != shapes:
            bad = sorted(set(stored.items()) ^ set(shapes.items()))[:3]
            raise ValueError(f"stored and expected tensors differ: {bad}")
        model = cls(config)
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError, AssertionError) as e:
        raise CheckpointError(f"{path}: its weights do not fit its model_args "
                              f"({type(e).__name__}: {str(e)[:300]})") from None
    check_loaded_weights(model, path)
    return model


def check_loaded_weights(model, path):
    """Refuse a model whose weights hold a NaN or inf (every save refuses to write one, so the
    file was damaged or made elsewhere): it would be evaluated, sampled or trained as if nothing
    were wrong."""
    for key, t in model.state_dict().items():
        if t.is_floating_point() and t.numel() and not torch.isfinite(t).all():
            raise CheckpointError(f"{path}: weight {key} holds NaN or inf values: a damaged "
                                  f"model, refused")


def check_sampling_vocab(model, tokenizer, path):
    """A policy that samples must not have more ids than its tokenizer can decode: a vocabulary
    padded past the tokenizer's (300 ids for the 257 bytes) can draw an id with no text."""
    n_vocab = unwrap(model).config.vocab_size
    if n_vocab > TOKENIZER_VOCAB.get(tokenizer, n_vocab):
        raise CheckpointError(f"{path}: vocab_size={n_vocab} is larger than the {tokenizer!r} "
                              f"tokenizer's {TOKENIZER_VOCAB[tokenizer]} ids: it could sample ids "
                              f"that decode to no text")


def check_block_size(model, block_size, name="the model"):
    n_pos = unwrap(model).config.block_size
    require(0 < block_size <= n_pos, f"block_size={block_size} must be in 1..{n_pos}, "
            f"the number of positions of {name}")

# -----------------------------------------------------------------------------
# a content-keyed cache: a result computed once (DPO's reference log-probs), kept in out_dir


def content_key(text, files=(), state_dict=None):
    """A sha256 hex digest of what a cached result depends on: a text (the settings), the bytes
    of files, and a state dict's tensors (names and raw bytes, in name order). When any of them
    changes, so does the key, and the cache is recomputed."""
    h = hashlib.sha256(text.encode())
    for path in files:
        with open(path, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    for name, t in sorted((state_dict or {}).items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_cache(path, key, what, depends_on, check=None, device="cpu"):
    """
    The dict an earlier process cached at path under `key` (its 'key' entry), or None, with a
    printed note ("recomputing {what}"), when the file is unreadable (cut by a kill, overwritten
    by hand), was made under another key (for other {depends_on}), or check(cache) returns a
    problem (a string): it is only a cache, and the caller computes it again and writes it
    atomically (save_checkpoint, or Run.save).
    """
    try:
        cache = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # truncated, not a torch file, or a pickle that is not plain data
        problem = f"unreadable ({type(e).__name__}: {str(e)[:200]})"
    else:
        if not (isinstance(cache, dict) and "key" in cache):
            problem = "not a cache (a dict with a 'key')"
        elif cache["key"] != key:
            problem = f"made for other {depends_on}"
        else:
            problem = check(cache) if check else None
            if problem is None:
                return cache
    print0(f"note: {path}: {problem}; recomputing {what}")
    return None
