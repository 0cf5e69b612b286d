"""
Plumbing: checkpoints and where a stage's weights come from. One dict per file, written atomically
and read back with weights_only=True; the model a checkpoint (or 'scratch', a GPT-2 name, a Hugging
Face directory) holds; and a small content-keyed cache for anything a run computes once.
"""

import glob
import hashlib
import os
import pickle
import re
import zipfile
from dataclasses import asdict

import torch

from config import HUB, CheckpointError, ConfigError, FileError, NonFiniteError, require
from runtime import broadcast_parameters, is_sharded, print0, shard, unwrap

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
    """The checkpoint dict: weights, architecture, provenance, and what resuming needs. A
    collective under FSDP (model_state): every rank calls it, rank 0 gets the whole dict."""
    m = unwrap(model)
    ckpt = {"model": model_state(m), "model_args": asdict(m.config), "kind": kind,
            "stage": stage, "tokenizer": tokenizer, "config": dict(vars(cfg)), "step": step,
            "rng": rng_state()}
    if optimizer is not None:
        ckpt["optimizer"] = optimizer_state(optimizer)
    ckpt.update(extra)
    return ckpt

# -----------------------------------------------------------------------------
# sharded models (FSDP, runtime.shard) are saved whole: a checkpoint is the same file whether
# one process or many wrote it, and either can load it


def _gather_whole(state):
    """A state dict with FSDP's DTensor shards, as the whole tensors on the CPU, on rank 0; {} on
    the other ranks. A collective: every rank calls it."""
    import torch.distributed as dist
    master, memo = dist.get_rank() == 0, {}

    def whole(x):
        if isinstance(x, dict):
            return {k: whole(v) for k, v in x.items()}
        if isinstance(x, list):
            return [whole(v) for v in x]
        if _is_shard(x):
            if id(x) not in memo:  # every rank gathers the same tensors in the same order
                full = x.full_tensor()
                memo[id(x)] = full.cpu() if master else None
            return memo[id(x)]
        return x.cpu() if torch.is_tensor(x) and master else x
    out = whole(state)
    return out if master else {}


def _is_shard(x):
    return torch.is_tensor(x) and hasattr(x, "device_mesh")  # a DTensor


def model_state(model):
    """model.state_dict(); for a sharded model the whole weights, gathered on rank 0 (the keys
    and tied tensors of the plain model; {} on the other ranks). A collective under FSDP."""
    state = model.state_dict()
    if not is_sharded(model):
        return state
    state = _gather_whole(state)
    # one weight under two names (GPT's tied wte and lm_head) stays one tensor, as in a plain
    # state dict (torch.save then writes it once)
    first = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if name in state:
            state[name] = state[first.setdefault(id(p), name)]
    return state


def optimizer_state(optimizer):
    """optimizer.state_dict(), in the one-process format whatever wrote it: for the parameters of
    a sharded model its state tensors (AdamW's exp_avg, exp_avg_sq) whole, gathered on rank 0 ({}
    elsewhere), keyed by parameter number as always. A collective under FSDP."""
    state = optimizer.state_dict()
    sharded = any(_is_shard(t) for s in state["state"].values() for t in s.values())
    return _gather_whole(state) if sharded else state


def load_optimizer_state(optimizer, state):
    """optimizer.load_state_dict of a checkpoint's optimizer state (one-process format, whoever
    wrote it): for the parameters of a sharded model each rank takes its own share of each state
    tensor, cut as the parameter is (DTensor placements), so a run resumes sharded or not from
    either kind of checkpoint."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not any(_is_shard(p) for p in params):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.tensor import distribute_tensor

    def shard_like(p, t):  # a whole state tensor of parameter p -> this rank's share of it
        if not (_is_shard(p) and torch.is_tensor(t) and t.shape == p.shape and t.dim() > 0):
            return t  # AdamW's step count and the hyperparameters: as they are
        return distribute_tensor(t.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
    optimizer.load_state_dict({
        "state": {i: {k: shard_like(params[i], v) for k, v in s.items()}
                  for i, s in state["state"].items()},
        "param_groups": state["param_groups"]})


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

# -----------------------------------------------------------------------------
# the snapshots a run kept (eval.py's over-optimisation sweep)


def sweep_checkpoints(run_dirs):
    """[(run, iteration, path)] of every ckpt_iter{N}.pt in each run dir, by iteration; a run
    without any contributes its ckpt_last.pt (its iteration read from the checkpoint)."""
    found = []
    for d in [d.strip() for d in run_dirs.split(",") if d.strip()]:
        run = os.path.normpath(d)
        its = sorted((int(re.search(r"ckpt_iter(\d+)\.pt$", p).group(1)), p)
                     for p in glob.glob(os.path.join(d, "ckpt_iter*.pt"))
                     if re.search(r"ckpt_iter(\d+)\.pt$", p))
        if not its:
            last = os.path.join(d, "ckpt_last.pt")
            if not os.path.isfile(last):
                raise ConfigError(f"sweep: {d} holds no ckpt_iter*.pt and no ckpt_last.pt")
            print0(f"sweep: no ckpt_iter*.pt in {d} (train with --save_every=N to keep them); "
                   f"using ckpt_last.pt")
            its = [(int(load_checkpoint(last).get("step", 0)), last)]
        found += [(run, iteration, p) for iteration, p in its]
    return found


# -----------------------------------------------------------------------------
# PPO's and GRPO's trained models on resume (their scripts build them before the optimizers)


def resume_models(run, policy, critic=None):
    """A resumed run's weights, the policy's and the critic's, loaded before the models are
    sharded (FSDP) and their optimizers built; run.restore then restores the policy's optimizer,
    the RNG and the loop state, and resume_critic_optimizer the critic's optimizer."""
    if run.resume is None:
        return
    if critic is not None:
        require_keys(run.resume, run.resume_path, "critic", "critic_optimizer")
    policy.load_state_dict(run.resume["model"])
    if critic is not None:
        critic.load_state_dict(run.resume["critic"])


def resume_and_shard(run, policy, critic=None):
    """The trained models, before their optimizers are built: a resumed run's weights
    (resume_models), then every rank on rank 0's weights (DDP: a fresh value head is drawn from
    each rank's own seed) and, under FSDP, each model sharded, each rank keeping its share. The
    frozen reference and reward model stay whole on every rank. A collective."""
    resume_models(run, policy, critic)
    models = [m for m in (policy, critic) if m is not None]
    broadcast_parameters(*models)
    for model in models:
        shard(model, run.proc)


def resume_critic_optimizer(run, critic_optimizer):
    """A resumed run's critic optimizer (sharded or not: load_optimizer_state)."""
    if run.resume is not None:
        load_optimizer_state(critic_optimizer, run.resume["critic_optimizer"])
