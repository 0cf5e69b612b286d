"""
Hugging Face TRL's trainers at the sizes bench.py measures, for the speed comparison in the
README. A development tool: nothing in nanoRLHF imports it, and TRL is no dependency of ours.

Set-up, in virtual environments of their own (outside this directory; the CPU torch wheel
first, so that pip keeps it instead of fetching a CUDA build): the latest TRL for SFT, the reward
model and DPO, and TRL 1.12 for PPO, the last release with a PPO trainer
(trl.experimental.ppo.PPOTrainer; 1.13 removed it; with a newer TRL the ppo rows are skipped,
saying so):
    python -m venv ../trl-venv && python -m venv ../trl112-venv
    ../trl-venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    ../trl-venv/bin/pip install -r requirements.txt trl transformers accelerate datasets
    ../trl112-venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    ../trl112-venv/bin/pip install -r requirements.txt trl==1.12.0 transformers accelerate datasets

Run it:
    python bench.py --out=out/bench_cpu.json                           # nanoRLHF, then
    ../trl112-venv/bin/python tests/bench_trl.py --compare=out/bench_cpu.json   # TRL, the ratios
    ../trl-venv/bin/python tests/bench_trl.py --data=hh --block_size=512 --sizes=gpt2 \
        --stages=sft,rm,dpo --dtype=bfloat16 --batch_size=8 --steps=5 --repeats=3 \
        --vs=defaults,fast,fast_precompute --variants=shared_prompt --out=out/bench_trl_hh.json
                          # side by side: nanoRLHF's and TRL's step in turn, 3 rounds, the spread
Use the same OMP_NUM_THREADS for both. Shapes and step counts are bench.py's (the same config
keys and defaults), and the models are GPT-2s of bench.py's sizes with random weights and no
dropout, built from a transformers GPT2Config: nothing is downloaded. The data are random token
ids, written as text for a word-level tokenizer built here (one word per id), so every row has
exactly the token count of bench.py's rows (EOS included): sft B rows of block_size tokens, rm
and dpo B pairs of two such rows, ppo B prompts of prompt_len tokens and gen_tokens new tokens
(no stop token: fixed-length responses), num_iterations passes of one minibatch of B.

With --data (bench.py's key: 'hh' or a preference JSONL file) TRL gets the rows bench.py's steps
take (bench_rows.real_batch_rows: the scripts' loader and length policy, the genuine GPT-2 BPE for
gpt2, the seeded and length-bucketed batches), in the same batches: the dataset is written in
batch order and read sequentially (train_sampling_strategy='sequential'; PPO's dataloader is
swapped for an unshuffled one). The prompt and each answer are the ids as text, the answer
without its EOS, which TRL appends. A hook on the trained model records every forward's shape
and real-token count, and the run checks them against bench.py's batches ('same batches').

Both sides train with TRL's fast settings, not its defaults: gradient checkpointing off (TRL
turns it on, costing an extra forward per step), float32 or bf16 autocast as --dtype says (bench.py
takes the same --dtype), and the same malloc settings (runtime.keep_freed_cpu_memory, which
nanoRLHF's init_runtime applies on a CPU; --keep_freed_memory=False gives TRL glibc's defaults).
--trl_defaults=True keeps TRL's own checkpointing and bf16. --precompute_ref=True sets DPO's
precompute_ref_log_probs (its row is then dpo_cached_ref, beside bench.py's row of that name).
Everything else is TRL's default, including transformers' fused AdamW (nanoRLHF fuses it too).
A step is timed from the trainer's on_step_begin to its on_step_end callback (data collation and
logging excluded, as in bench.py); a PPO iteration from one on_step_end to the next, with its
generation (batch_generation) timed inside it.

--inline=True runs nanoRLHF's own step (bench.py's sft_steps, rm_steps, dpo_steps: the scripts'
step functions, in --dtype, and the --variants bench.py would time beside them, e.g.
shared_prompt: the HH recipes' share_prompt=True) on each batch too, in this process, right before TRL's step on that
batch (even steps) or right after it (odd ones): A B B A A B ..., each pair within seconds, so a
shared machine's changing speed hits both sides alike, and each step gives a ratio. Side by side
(--repeats=N): N rounds of one such process per stage and TRL setting of --vs, the settings'
order rotating: 'defaults' (TRL's own: gradient checkpointing and bf16 on), 'fast' (checkpointing
off, --dtype), 'fast_precompute' (fast, and DPO's precompute_ref_log_probs). It prints, per
setting and stage, each side's median seconds per step and nanoRLHF's time over TRL's step by
step (median, min-max over all rounds) and round by round (summed seconds).

What it does not compare: accuracy, memory, GPUs, and TRL's other trainers (GRPO, RLOO, ...).
"""

import copy
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from types import SimpleNamespace

import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench
from data import bench_rows
import config
import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SHARED = ("sizes", "batch_size", "block_size", "prompt_len", "gen_tokens", "num_iterations", "steps",
          "warmup", "seed", "data", "length_buckets", "variants")  # bench.py's keys and defaults
DEFAULTS = {k: v for k, v in bench.DEFAULTS.items() if k in SHARED}
DEFAULTS.update(
    stages="sft,rm,dpo,ppo",    # comma-separated: sft | rm | dpo | ppo
    trl_defaults=False,         # True: TRL's own gradient checkpointing (on) and bf16 (on) defaults
    precompute_ref=False,       # True: DPO's precompute_ref_log_probs (the row dpo_cached_ref)
    inline=False,               # True: also bench.py's sft/rm/dpo step on each batch, step by step
    dtype="float32",            # 'float32' | 'bfloat16' (autocast, as bench.py --dtype=bfloat16)
    keep_freed_memory=True,     # nanoRLHF's malloc settings on a CPU (runtime.keep_freed_cpu_memory)
    compare="",                 # a bench.py --out JSON of the same sizes: print the time ratios
    repeats=0,                  # > 0: bench.py and TRL side by side, this many times in turn
    vs="defaults",              # side by side: TRL settings, comma-separated: defaults | fast |
                                # fast_precompute
    out="",                     # also write the results to this JSON file
)
SETTINGS = dict(defaults=dict(trl_defaults=True, precompute_ref=False),
                fast=dict(trl_defaults=False, precompute_ref=False),
                fast_precompute=dict(trl_defaults=False, precompute_ref=True))
# the issue's targets: nanoRLHF's step at most this fraction of TRL's
TARGET_RATIO = dict(sft=0.5, rm=0.5, dpo=0.5, dpo_cached_ref=0.5, ppo_iter=0.2)

# -----------------------------------------------------------------------------
# models, tokenizer and data


def gpt2_config(size, n_positions):
    """A transformers GPT2Config of one of bench.py's sizes, dropout off (as bench.py)."""
    from transformers import GPT2Config
    s = bench_rows.SIZES[size]
    eos = s["vocab_size"] - 1  # 50256 for GPT-2, 256 for the byte vocabulary
    return GPT2Config(vocab_size=s["vocab_size"], n_positions=n_positions, n_embd=s["n_embd"],
                      n_layer=s["n_layer"], n_head=s["n_head"], resid_pdrop=0.0, embd_pdrop=0.0,
                      attn_pdrop=0.0, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
                      num_labels=1)


def word_tokenizer(vocab_size):
    """A word-level tokenizer: the text '17 5 230' is the ids [17, 5, 230]; the last id is the
    end-of-text token (also the padding), which the random data never contain."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    eos = "<|endoftext|>"
    vocab = {str(i): i for i in range(vocab_size - 1)}
    vocab[eos] = vocab_size - 1
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=eos))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=eos,
                                   unk_token=eos, model_max_length=10**6)


def words(gen, n, vocab_size, lead=""):
    """n random ids as text; lead=' ' makes it safe to append to another text (TRL joins prompt
    and answer strings without a separator)."""
    ids = torch.randint(0, vocab_size - 1, (n,), generator=gen).tolist()
    return lead + " ".join(map(str, ids))


def text_rows(cfg, n_rows, vocab_size, gen, pairs):
    """prompt + answer(s) of block_size tokens each with the EOS TRL appends: a quarter prompt,
    as bench.py's rows."""
    P = cfg.block_size // 4
    A = cfg.block_size - P - 1  # the trainer appends the EOS
    rows = dict(prompt=[words(gen, P, vocab_size) for _ in range(n_rows)])
    for key in (("chosen", "rejected") if pairs else ("completion",)):
        rows[key] = [words(gen, A, vocab_size, lead=" ") for _ in range(n_rows)]
    return rows

def answer_text(ids, eos):
    """An answer's ids as text without its final EOS (TRL appends the EOS itself)."""
    assert ids[-1] == eos, "bench.py's answers end with the EOS"
    return " " + " ".join(map(str, ids[:-1]))


def real_text_rows(kind, size, cfg):
    """
    bench.py's --data batches of kind 'sft' or 'pairs' (bench_rows.real_batch_rows), their rows in
    batch order as TRL's text columns (prompt + completion, or prompt + chosen + rejected), and
    the (rows, T, real tokens) of each batch as bench.py's step sees it.
    """
    eos = bench_rows.SIZES[size]["vocab_size"] - 1
    cols = dict(prompt=[], completion=[]) if kind == "sft" else dict(prompt=[], chosen=[],
                                                                     rejected=[])
    shapes = []
    for batch in bench_rows.real_batch_rows(kind, size, cfg):
        seqs = batch if kind == "sft" else [p["chosen"] for p in batch] + \
            [p["rejected"] for p in batch]
        shapes.append((len(seqs), max(len(ids) for ids, _ in seqs), sum(len(ids) for ids, _ in seqs)))
        for e in batch:
            ids, mask = e if kind == "sft" else e["chosen"]
            P = list(mask).index(1)  # the rows are prompt then answer; both answers share it
            cols["prompt"].append(" ".join(map(str, ids[:P])))
            if kind == "sft":
                cols["completion"].append(answer_text(ids[P:], eos))
            else:
                cols["chosen"].append(answer_text(ids[P:], eos))
                cols["rejected"].append(answer_text(e["rejected"][0][P:], eos))
    return cols, shapes


def stage_rows(kind, size, cfg, gen, vocab_size):
    """The text rows of a stage and the batch shapes bench.py sees (None for random ids)."""
    if cfg.data:
        return real_text_rows(kind, size, cfg)
    n = cfg.batch_size * (cfg.warmup + cfg.steps)
    return text_rows(cfg, n, vocab_size, gen, pairs=kind == "pairs"), None


def shape_recorder(model):
    """A list that a forward pre-hook on model fills with (rows, T, real tokens) of each call."""
    seen = []

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            mask = kwargs.get("attention_mask")
            seen.append((ids.size(0), ids.size(1), int(mask.sum()) if mask is not None else ids.numel()))
    model.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def same_batches(seen, expected):
    """Whether TRL's model saw bench.py's batches (None without --data); prints where not."""
    if expected is None:
        return None
    if seen[:len(expected)] != expected:
        print(f"  TRL's batches differ from bench.py's: (rows, T, real tokens) {seen[:len(expected)]}"
              f" vs {expected}", flush=True)
        return False
    return True

# -----------------------------------------------------------------------------
# timing


def step_timer(ours=None):
    """
    A TrainerCallback that records each optimizer step's seconds (on_step_begin -> _end) and the
    times of every on_step_end (PPO calls only that one). ours: {name: step(i)} of nanoRLHF
    (bench.py's step functions), run on batch i right before TRL's step i (even i) or right
    after it (odd i), so that both sides see the machine as it is in the same few seconds; their
    seconds go to .ours[name].
    """
    from transformers import TrainerCallback
    ours = ours or {}

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.t0, self.steps, self.ends = None, [], []
            self.ours = {name: [] for name in ours}

        def run_ours(self, i):
            names = list(ours)
            for name in names[i % len(names):] + names[:i % len(names)]:
                t0 = time.perf_counter()
                ours[name](i)
                self.ours[name].append(time.perf_counter() - t0)

        def on_train_begin(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

        def on_step_begin(self, args, state, control, **kwargs):
            if ours and state.global_step % 2 == 0:
                self.run_ours(state.global_step)
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            if self.t0 is not None:
                self.steps.append(now - self.t0)
            self.ends.append(now)
            if ours and (state.global_step - 1) % 2 == 1:
                self.run_ours(state.global_step - 1)
    return StepTimer()


def our_steps(stage, size, cfg):
    """bench.py's step variants of a training stage for the inline comparison (bench's
    *_steps namespace), on this process's CPU in cfg.dtype, on the same rows."""
    bcfg = SimpleNamespace(**{**bench.DEFAULTS, **{k: getattr(cfg, k) for k in SHARED},
                              "device": "cpu", "dtype": cfg.dtype, "compile": False,
                              "variant_list": cfg.variant_list})
    proc = runtime.init_runtime(bcfg)
    return bench.TRAINING[stage](size, bcfg, proc, torch.Generator().manual_seed(cfg.seed)), bcfg


def inline_rows(size, timer, ours, bcfg, trl_row):
    """nanoRLHF's rows of an inline run, each with paired: its seconds over TRL's, step by step."""
    rows = bench.training_rows(size, {name: t[bcfg.warmup:] for name, t in timer.ours.items()},
                               ours, bcfg, None)
    trl_timed = trl_row["step_s"]
    for r in rows:
        r.update(side="nanoRLHF", paired=[a / b for a, b in zip(r["step_s"], trl_timed)])
    return rows


def quiet(trainer):
    """The trainer without the callback that prints every log dict (PPO logs each iteration)."""
    from transformers.trainer_callback import PrinterCallback
    trainer.remove_callback(PrinterCallback)
    return trainer


def training_args(cfg, out_dir):
    """The settings every trainer shares: bench.py's batch, float32 and no gradient checkpointing
    (unless trl_defaults), no logging, evaluation or checkpoints; with --data the rows in the
    dataset's order (bench.py's batches)."""
    args = dict(output_dir=out_dir, per_device_train_batch_size=cfg.batch_size,
                gradient_accumulation_steps=1, max_steps=cfg.warmup + cfg.steps, use_cpu=True,
                logging_steps=10**6, save_strategy="no", eval_strategy="no", report_to="none",
                disable_tqdm=True, dataloader_num_workers=0, seed=cfg.seed)
    if cfg.data:
        args.update(train_sampling_strategy="sequential")
    if not cfg.trl_defaults:
        args.update(gradient_checkpointing=False, bf16=cfg.dtype == "bfloat16", fp16=False)
    return args


def mean_timed(times, cfg):
    """The mean of the last cfg.steps times (the first cfg.warmup are the warm-up)."""
    timed = times[cfg.warmup:cfg.warmup + cfg.steps]
    if len(timed) < cfg.steps:
        raise RuntimeError(f"expected {cfg.warmup + cfg.steps} steps, timed {len(times)}")
    return sum(timed) / len(timed)


def result(size, stage, tokens, times, cfg, same=None):
    """One row: times are every step's seconds (the first cfg.warmup untimed)."""
    seconds = mean_timed(times, cfg)
    return dict(size=size, stage=stage, tokens=tokens, s_per_step=seconds,
                tokens_per_s=tokens / seconds, step_s=times[cfg.warmup:cfg.warmup + cfg.steps],
                same_batches=same)


def timed_tokens(shapes, cfg, default):
    """Mean real tokens per timed step (bench.py's count), or default for random ids."""
    if shapes is None:
        return default
    timed = shapes[cfg.warmup:cfg.warmup + cfg.steps]
    return sum(n for _, _, n in timed) / len(timed)

# -----------------------------------------------------------------------------
# the trainers


def bench_training(stage, size, cfg, gen, out_dir):
    """TRL's SFTTrainer, RewardTrainer or DPOTrainer (stage sft, rm or dpo) on bench.py's rows;
    with --inline, nanoRLHF's step beside each of its steps. Returns the rows."""
    import trl
    from datasets import Dataset
    from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel
    config = gpt2_config(size, cfg.block_size)
    rows, shapes = stage_rows("sft" if stage == "sft" else "pairs", size, cfg, gen,
                              config.vocab_size)
    ours, bcfg = our_steps(stage, size, cfg) if cfg.inline else (None, None)
    timer = step_timer(ours and ours.steps)
    model = (GPT2ForSequenceClassification if stage == "rm" else GPT2LMHeadModel)(config)
    extra = dict(ref_model=copy.deepcopy(model)) if stage == "dpo" else {}  # before the hook
    seen = shape_recorder(model)
    args = training_args(cfg, out_dir)
    if not cfg.data:  # with --data TRL's default max_length (1024) stays: the rows fit already
        args.update(max_length=cfg.block_size)
    if stage == "dpo":
        args.update(precompute_ref_log_probs=cfg.precompute_ref)
    Config, Trainer = dict(sft=(trl.SFTConfig, trl.SFTTrainer), dpo=(trl.DPOConfig, trl.DPOTrainer),
                           rm=(trl.RewardConfig, trl.RewardTrainer))[stage]
    quiet(Trainer(model=model, args=Config(**args), train_dataset=Dataset.from_dict(rows),
                  processing_class=word_tokenizer(config.vocab_size), callbacks=[timer],
                  **extra)).train()
    name = "dpo_cached_ref" if stage == "dpo" and cfg.precompute_ref else stage
    rows_per_step = cfg.batch_size * (1 if stage == "sft" else 2)
    row = result(size, name, timed_tokens(shapes, cfg, rows_per_step * cfg.block_size),
                 timer.steps, cfg, same_batches(seen, shapes))
    return [row] + (inline_rows(size, timer, ours, bcfg, row) if ours else [])


def bench_ppo(size, cfg, gen, out_dir):
    try:
        from trl.experimental.ppo import PPOConfig, PPOTrainer, ppo_trainer
    except ImportError:
        import trl
        print(f"  ppo skipped: TRL {trl.__version__} has no PPO trainer (removed in 1.13; "
              f"install trl==1.12.0)", flush=True)
        return []
    from datasets import Dataset
    from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel
    B, P, N = cfg.batch_size, cfg.prompt_len, cfg.gen_tokens
    config = gpt2_config(size, cfg.block_size if cfg.data else P + N)
    tok = word_tokenizer(config.vocab_size)
    tok.padding_side = "left"  # prompts of real lengths are left-padded, as bench.py's
    n = B * (cfg.warmup + cfg.steps)
    if cfg.data:  # bench.py's prompt batches, in order
        prompts = [ids for batch in bench_rows.real_batch_rows("prompts", size, cfg) for ids in batch]
    else:
        prompts = torch.randint(0, config.vocab_size - 1, (n, P), generator=gen).tolist()
    data = Dataset.from_dict(dict(input_ids=prompts))
    policy, reward_model = GPT2LMHeadModel(config), GPT2ForSequenceClassification(config)
    # time the generation inside each iteration (the trainer calls the module-level function)
    gen_seconds, batch_generation = [], ppo_trainer.batch_generation

    def timed_generation(*args, **kwargs):
        t0 = time.perf_counter()
        out = batch_generation(*args, **kwargs)
        gen_seconds.append(time.perf_counter() - t0)
        return out
    ppo_trainer.batch_generation = timed_generation
    timer = step_timer()
    common_args = training_args(cfg, out_dir)
    del common_args["max_steps"]  # PPO counts episodes (prompts), not steps
    args = PPOConfig(total_episodes=n, num_mini_batches=1, num_ppo_epochs=cfg.num_iterations,
                     response_length=N, stop_token=None, temperature=1.0,
                     local_rollout_forward_batch_size=B, num_sample_generations=0, **common_args)
    try:
        trainer = quiet(PPOTrainer(args=args, processing_class=tok, model=policy,
                                   ref_model=copy.deepcopy(policy), reward_model=reward_model,
                                   value_model=copy.deepcopy(reward_model), train_dataset=data,
                                   callbacks=[timer]))
        if cfg.data:  # the same prompts in the same batches: no shuffling
            from torch.utils.data import DataLoader
            trainer.dataloader = trainer.accelerator.prepare(DataLoader(
                data, batch_size=B, shuffle=False, collate_fn=trainer.data_collator,
                drop_last=True))
        trainer.train()
    finally:
        ppo_trainer.batch_generation = batch_generation
    iterations = [b - a for a, b in zip(timer.ends, timer.ends[1:])]
    return [result(size, "ppo_gen", B * N, gen_seconds, cfg),
            result(size, "ppo_iter", B * N, iterations, cfg)]

# -----------------------------------------------------------------------------


def comparison(rows, path):
    """Lines of nanoRLHF's s/step (bench.py's JSON at path) over TRL's, per size and stage."""
    with open(path) as f:
        ours = {(r["size"], r["stage"]): r for r in json.load(f)["rows"]}
    lines = [f"{'size':<6} {'stage':<10} {'nanoRLHF s':>11} {'TRL s':>9} {'ratio':>7} "
             f"{'target':>7}"]
    for r in rows:
        mine = ours.get((r["size"], r["stage"]))
        if mine is None:
            continue
        ratio = mine["s_per_step"] / r["s_per_step"]
        target = target_ratio(r["stage"])
        verdict = "-" if target is None else (
            f"<={target:.2f} {'ok' if ratio <= target else 'MISSED'}")
        lines.append(f"{r['size']:<6} {r['stage']:<10} {mine['s_per_step']:>11.4f} "
                     f"{r['s_per_step']:>9.4f} {ratio:>7.3f} {verdict:>7}")
    return "\n".join(lines)


def spread(xs):
    """(median, min, max) of a list of numbers (the median of an even count: the lower middle)."""
    xs = sorted(xs)
    return xs[(len(xs) - 1) // 2], xs[0], xs[-1]


def run_json(cmd, log, out):
    """Run cmd (its output appended to the file log); the JSON it wrote to out."""
    with open(log, "a") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        with open(log) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"{' '.join(cmd[1:])} exited with {rc}:\n{tail}")
    with open(out) as f:
        return json.load(f)


def target_ratio(name):
    """The target of a row (its variants share their stage's: rm_shared_prompt is an rm step)."""
    return TARGET_RATIO.get(name, TARGET_RATIO.get(name.split("_")[0]))


def applies(setting, stage):
    """Whether a TRL setting differs from 'fast' for a stage: precompute_ref is DPO's alone."""
    return setting != "fast_precompute" or stage == "dpo"


def side_by_side(cfg, sizes, stages):
    """
    cfg.repeats rounds; in each, per size and stage, this script once per TRL setting of cfg.vs,
    each a process of its own with --inline=True (nanoRLHF's step beside each TRL step on the
    same batch), the settings' order rotated by one every round. Returns dict(meta, runs,
    summary): per setting, size and nanoRLHF row, the step-by-step ratios of all rounds and the
    ratio of each round's summed seconds.
    """
    settings = [s.strip() for s in cfg.vs.split(",") if s.strip()]
    config.require(settings and all(s in SETTINGS for s in settings),
                   f"vs={cfg.vs!r}: a comma-separated list of {', '.join(SETTINGS)}")
    config.require(all(s in ("sft", "rm", "dpo") for s in stages),
                   "repeats > 0 compares the sft, rm and dpo steps (--stages)")
    keys = [f"--{k}={getattr(cfg, k)}" for k in SHARED if k != "sizes"] + [
        f"--dtype={cfg.dtype}", f"--keep_freed_memory={cfg.keep_freed_memory}", "--inline=True"]
    runs, meta = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        if cfg.out:  # every round's JSON and the log stay beside the results
            tmp = os.path.splitext(os.path.abspath(cfg.out))[0] + "_runs"
            os.makedirs(tmp, exist_ok=True)
        log = os.path.join(tmp, "log.txt")
        for rep in range(cfg.repeats):
            for size in sizes:
                for stage in stages:
                    k = rep % len(settings)
                    for s in settings[k:] + settings[:k]:
                        if not applies(s, stage):
                            continue
                        out = os.path.join(tmp, f"{rep}_{s}_{size}_{stage}.json")
                        t0 = time.time()
                        cmd = [sys.executable, os.path.abspath(__file__), *keys,
                               *[f"--{key}={v}" for key, v in SETTINGS[s].items()],
                               f"--sizes={size}", f"--stages={stage}", f"--out={out}"]
                        result = run_json(cmd, log, out)
                        meta.setdefault(s, result["meta"])
                        runs.append(dict(repeat=rep, setting=s, size=size, stage=stage,
                                         rows=result["rows"]))
                        print(f"  round {rep + 1}/{cfg.repeats} {size} {stage} {s}: "
                              f"{time.time() - t0:.0f}s", flush=True)
    summary = []
    for s in settings:
        for size in sizes:
            for stage in stages:
                mine = [run for run in runs if (run["setting"], run["size"], run["stage"]) ==
                        (s, size, stage)]
                if not mine:
                    continue
                trl = [next(r for r in run["rows"] if r.get("side") != "nanoRLHF") for run in mine]
                for name in [r["stage"] for r in mine[0]["rows"] if r.get("side") == "nanoRLHF"]:
                    ours = [next(r for r in run["rows"] if r["stage"] == name
                                 and r.get("side") == "nanoRLHF") for run in mine]
                    summary.append(dict(
                        setting=s, size=size, ours=name, trl=trl[0]["stage"],
                        ours_s=[r["s_per_step"] for r in ours], trl_s=[r["s_per_step"] for r in trl],
                        paired=[x for r in ours for x in r["paired"]],
                        rounds=[a["s_per_step"] / b["s_per_step"] for a, b in zip(ours, trl)],
                        same_batches=[r.get("same_batches") for r in trl]))
    return dict(meta=meta, runs=runs, summary=summary)


def summary_lines(summary):
    """The side-by-side table: each side's median s/step over the rounds; nanoRLHF's time over
    TRL's step by step (median, min-max, count) and round by round (summed seconds)."""
    lines = [f"{'TRL setting':<16} {'size':<5} {'nanoRLHF':<28} {'TRL':<15} {'ours s':>7} "
             f"{'TRL s':>7} {'per step: median':>16} {'min-max':>11} {'n':>3} "
             f"{'per round':>17} {'target':>11} {'same rows':>9}"]
    for e in summary:
        med, lo, hi = spread(e["paired"])
        rmed, rlo, rhi = spread(e["rounds"])
        target = target_ratio(e["ours"])
        verdict = "-" if target is None else f"<={target:.2f} {'ok' if med <= target else 'MISSED'}"
        same = e["same_batches"]
        same = "-" if None in same else "yes" if all(same) else "NO"
        lines.append(f"{e['setting']:<16} {e['size']:<5} {e['ours']:<28} {e['trl']:<15} "
                     f"{spread(e['ours_s'])[0]:>7.3f} {spread(e['trl_s'])[0]:>7.3f} {med:>16.3f} "
                     f"{f'{lo:.3f}-{hi:.3f}':>11} {len(e['paired']):>3} "
                     f"{f'{rmed:.3f} ({rlo:.2f}-{rhi:.2f})':>17} {verdict:>11} {same:>9}")
    return lines


def main(argv=None):
    cfg = config.parse_config(DEFAULTS, argv, __doc__)
    sizes, stages = bench_rows.checked_shapes(cfg)
    config.require(cfg.dtype in ("float32", "bfloat16"),
                   f"dtype={cfg.dtype!r}: 'float32' or 'bfloat16'")
    config.require(cfg.repeats >= 0, f"repeats={cfg.repeats}: >= 0")
    if cfg.repeats > 0:
        result = side_by_side(cfg, sizes, stages)
        m = next(iter(result["meta"].values()))
        print(f"{m['date']}, {m['hardware']}, {m['threads']} threads, torch {m['torch']}, TRL "
              f"{m['trl']}, transformers {m['transformers']}, {cfg.repeats} rounds, "
              f"{cfg.steps} timed steps (+{cfg.warmup} warm-up) each, nanoRLHF's step beside "
              f"each TRL step on the same batch, data {cfg.data or 'random ids'}, {cfg.dtype}")
        print("\n".join(summary_lines(result["summary"])))
        return bench.write_result(cfg.out, result)
    if cfg.keep_freed_memory:  # what nanoRLHF's init_runtime does on a CPU: compare like with like
        runtime.keep_freed_cpu_memory()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built here: never ask the hub
    import datasets
    import transformers
    import trl
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    warnings.simplefilter("ignore", FutureWarning)  # deprecation notices of the libraries
    meta = dict(trl=trl.__version__, transformers=transformers.__version__,
                torch=torch.__version__, threads=torch.get_num_threads(),
                date=datetime.date.today().isoformat(), hardware=bench.hardware(
                    SimpleNamespace(device_type="cpu")), config=vars(cfg))
    print(f"TRL {meta['trl']}, transformers {meta['transformers']}, torch {meta['torch']}, "
          f"{meta['threads']} threads, batch {cfg.batch_size}, block {cfg.block_size}, ppo prompt "
          f"{cfg.prompt_len} + {cfg.gen_tokens} new tokens x {cfg.num_iterations} epochs, "
          f"{'TRL defaults' if cfg.trl_defaults else cfg.dtype + ', no gradient checkpointing'}"
          f"{', precomputed reference log-probs' if cfg.precompute_ref else ''}, data "
          f"{bench_rows.data_file(cfg.data) if cfg.data else 'random ids'}", flush=True)
    gen = torch.Generator().manual_seed(cfg.seed)
    rows = []
    with tempfile.TemporaryDirectory() as out_dir:  # the trainers insist on an output_dir
        for size in sizes:
            for stage in stages:
                t0 = time.time()
                torch.manual_seed(cfg.seed)
                rows += bench_ppo(size, cfg, gen, out_dir) if stage == "ppo" else \
                    bench_training(stage, size, cfg, gen, out_dir)
                print(f"  {size} {stage}: {time.time() - t0:.1f}s", flush=True)
    print(f"{'size':<6} {'stage':<15} {'side':<9} {'tokens/s':>11} {'s/step':>9} {'same rows':>9}")
    for r in rows:
        same = {None: "-", True: "yes", False: "NO"}[r.get("same_batches")]
        side = "nanoRLHF" if r.get("side") == "nanoRLHF" else "TRL"
        paired = f"  {spread(r['paired'])[0]:.3f}x TRL's, step by step (median of " \
            f"{len(r['paired'])})" if r.get("paired") else ""
        print(f"{r['size']:<6} {r['stage']:<15} {side:<9} {r['tokens_per_s']:>11.1f} "
              f"{r['s_per_step']:>9.4f} {same:>9}{paired}")
    if cfg.compare:
        print(comparison(rows, cfg.compare))
    return bench.write_result(cfg.out, dict(meta=meta, rows=rows))


if __name__ == "__main__":
    main()
