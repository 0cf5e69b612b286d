"""
Hugging Face TRL's trainers at the sizes bench.py measures, for the speed comparison in the
README. A development tool: nothing in nanoRLHF imports it, and TRL is no dependency of ours.

Set-up, in a virtual environment of its own (outside this directory; the CPU torch wheel first,
so that pip keeps it instead of fetching a CUDA build):
    python -m venv ../trl-venv
    ../trl-venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    ../trl-venv/bin/pip install -r requirements.txt trl==1.12.0 transformers accelerate datasets
TRL 1.12 is the last release with a PPO trainer (trl.experimental.ppo.PPOTrainer); 1.13 removed
it. With a newer TRL the sft, rm and dpo rows still run and the ppo rows are skipped, saying so.

Run it:
    python bench.py --out=out/bench_cpu.json                           # nanoRLHF, then
    ../trl-venv/bin/python tests/bench_trl.py --compare=out/bench_cpu.json   # TRL, and the ratios
Use the same OMP_NUM_THREADS for both. Shapes and step counts are bench.py's (the same config
keys and defaults), and the models are GPT-2s of bench.py's sizes with random weights and no
dropout, built from a transformers GPT2Config: nothing is downloaded. The data are random token
ids, written as text for a word-level tokenizer built here (one word per id), so every row has
exactly the token count of bench.py's rows (EOS included): sft B rows of block_size tokens, rm
and dpo B pairs of two such rows, ppo B prompts of prompt_len tokens and gen_tokens new tokens
(no stop token: fixed-length responses), num_iterations passes of one minibatch of B.

Both sides train with TRL's fast settings, not its defaults: gradient checkpointing off (TRL
turns it on, costing an extra forward per step), float32 or bf16 autocast as --dtype says (bench.py
takes the same --dtype), and the same malloc settings (common.keep_freed_cpu_memory, which
nanoRLHF's init_runtime applies on a CPU; --keep_freed_memory=False gives TRL glibc's defaults).
--trl_defaults=True keeps TRL's own checkpointing and bf16. Everything else is TRL's default,
including transformers' fused AdamW (nanoRLHF fuses it too). A step is timed from the
trainer's on_step_begin to its on_step_end callback (data collation and logging excluded, as in
bench.py); a PPO iteration from one on_step_end to the next, with its generation
(batch_generation) timed inside it.

What it does not compare: accuracy, memory, GPUs, and TRL's other trainers (GRPO, RLOO, ...).
"""

import copy
import json
import os
import sys
import tempfile
import time
import warnings

import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench
import common

DEFAULTS = {k: v for k, v in bench.DEFAULTS.items()
            if k in ("sizes", "batch_size", "block_size", "prompt_len", "gen_tokens", "num_iterations",
                     "steps", "warmup", "seed")}
DEFAULTS.update(
    stages="sft,rm,dpo,ppo",    # comma-separated: sft | rm | dpo | ppo
    trl_defaults=False,         # True: TRL's own gradient checkpointing (on) and bf16 (on) defaults
    dtype="float32",            # 'float32' | 'bfloat16' (autocast, as bench.py --dtype=bfloat16)
    keep_freed_memory=True,     # nanoRLHF's malloc settings on a CPU (common.keep_freed_cpu_memory)
    compare="",                 # a bench.py --out JSON of the same sizes: print the time ratios
    out="",                     # also write the results to this JSON file
)
# the targets: nanoRLHF's step at most this fraction of TRL's
TARGET_RATIO = dict(sft=0.5, rm=0.5, dpo=0.5, ppo_iter=0.2)

# -----------------------------------------------------------------------------
# models, tokenizer and data


def gpt2_config(size, n_positions):
    """A transformers GPT2Config of one of bench.py's sizes, dropout off (as bench.py)."""
    from transformers import GPT2Config
    s = bench.SIZES[size]
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

# -----------------------------------------------------------------------------
# timing


def step_timer():
    """A TrainerCallback that records each optimizer step's seconds (on_step_begin -> _end) and
    the times of every on_step_end (PPO calls only that one)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.t0, self.steps, self.ends = None, [], []

        def on_train_begin(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            if self.t0 is not None:
                self.steps.append(now - self.t0)
            self.ends.append(now)
    return StepTimer()


def quiet(trainer):
    """The trainer without the callback that prints every log dict (PPO logs each iteration)."""
    from transformers.trainer_callback import PrinterCallback
    trainer.remove_callback(PrinterCallback)
    return trainer


def training_args(cfg, out_dir):
    """The settings every trainer shares: bench.py's batch, float32 and no gradient checkpointing
    (unless trl_defaults), no logging, evaluation or checkpoints."""
    args = dict(output_dir=out_dir, per_device_train_batch_size=cfg.batch_size,
                gradient_accumulation_steps=1, max_steps=cfg.warmup + cfg.steps, use_cpu=True,
                logging_steps=10**6, save_strategy="no", eval_strategy="no", report_to="none",
                disable_tqdm=True, dataloader_num_workers=0, seed=cfg.seed)
    if not cfg.trl_defaults:
        args.update(gradient_checkpointing=False, bf16=cfg.dtype == "bfloat16", fp16=False)
    return args


def mean_timed(times, cfg):
    """The mean of the last cfg.steps times (the first cfg.warmup are the warm-up)."""
    timed = times[cfg.warmup:cfg.warmup + cfg.steps]
    if len(timed) < cfg.steps:
        raise RuntimeError(f"expected {cfg.warmup + cfg.steps} steps, timed {len(times)}")
    return sum(timed) / len(timed)


def result(size, stage, tokens, seconds):
    return dict(size=size, stage=stage, tokens=tokens, s_per_step=seconds,
                tokens_per_s=tokens / seconds)

# -----------------------------------------------------------------------------
# the trainers


def bench_sft(size, cfg, gen, out_dir):
    from datasets import Dataset
    from transformers import GPT2LMHeadModel
    from trl import SFTConfig, SFTTrainer
    config = gpt2_config(size, cfg.block_size)
    n = cfg.batch_size * (cfg.warmup + cfg.steps)
    data = Dataset.from_dict(text_rows(cfg, n, config.vocab_size, gen, pairs=False))
    timer = step_timer()
    args = SFTConfig(max_length=cfg.block_size, **training_args(cfg, out_dir))
    quiet(SFTTrainer(model=GPT2LMHeadModel(config), args=args, train_dataset=data,
                     processing_class=word_tokenizer(config.vocab_size), callbacks=[timer])).train()
    return [result(size, "sft", cfg.batch_size * cfg.block_size, mean_timed(timer.steps, cfg))]


def bench_rm(size, cfg, gen, out_dir):
    from datasets import Dataset
    from transformers import GPT2ForSequenceClassification
    from trl import RewardConfig, RewardTrainer
    config = gpt2_config(size, cfg.block_size)
    n = cfg.batch_size * (cfg.warmup + cfg.steps)
    data = Dataset.from_dict(text_rows(cfg, n, config.vocab_size, gen, pairs=True))
    timer = step_timer()
    args = RewardConfig(max_length=cfg.block_size, **training_args(cfg, out_dir))
    quiet(RewardTrainer(model=GPT2ForSequenceClassification(config), args=args,
                        train_dataset=data, processing_class=word_tokenizer(config.vocab_size),
                        callbacks=[timer])).train()
    return [result(size, "rm", 2 * cfg.batch_size * cfg.block_size, mean_timed(timer.steps, cfg))]


def bench_dpo(size, cfg, gen, out_dir):
    from datasets import Dataset
    from transformers import GPT2LMHeadModel
    from trl import DPOConfig, DPOTrainer
    config = gpt2_config(size, cfg.block_size)
    n = cfg.batch_size * (cfg.warmup + cfg.steps)
    data = Dataset.from_dict(text_rows(cfg, n, config.vocab_size, gen, pairs=True))
    timer = step_timer()
    model = GPT2LMHeadModel(config)
    args = DPOConfig(max_length=cfg.block_size, **training_args(cfg, out_dir))
    quiet(DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=data,
                     processing_class=word_tokenizer(config.vocab_size), callbacks=[timer])).train()
    return [result(size, "dpo", 2 * cfg.batch_size * cfg.block_size, mean_timed(timer.steps, cfg))]


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
    config = gpt2_config(size, P + N)
    tok = word_tokenizer(config.vocab_size)
    n = B * (cfg.warmup + cfg.steps)
    data = Dataset.from_dict(dict(input_ids=torch.randint(0, config.vocab_size - 1, (n, P),
                                                          generator=gen).tolist()))
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
        quiet(PPOTrainer(args=args, processing_class=tok, model=policy,
                         ref_model=copy.deepcopy(policy), reward_model=reward_model,
                         value_model=copy.deepcopy(reward_model), train_dataset=data,
                         callbacks=[timer])).train()
    finally:
        ppo_trainer.batch_generation = batch_generation
    iterations = [b - a for a, b in zip(timer.ends, timer.ends[1:])]
    return [result(size, "ppo_gen", B * N, mean_timed(gen_seconds, cfg)),
            result(size, "ppo_iter", B * N, mean_timed(iterations, cfg))]

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
        target = TARGET_RATIO.get(r["stage"])
        verdict = "-" if target is None else (
            f"<={target:.2f} {'ok' if ratio <= target else 'MISSED'}")
        lines.append(f"{r['size']:<6} {r['stage']:<10} {mine['s_per_step']:>11.4f} "
                     f"{r['s_per_step']:>9.4f} {ratio:>7.3f} {verdict:>7}")
    return "\n".join(lines)


def main(argv=None):
    cfg = common.parse_config(DEFAULTS, argv, __doc__)
    sizes, stages = bench.checked_shapes(cfg)
    common.require(cfg.dtype in ("float32", "bfloat16"),
                   f"dtype={cfg.dtype!r}: 'float32' or 'bfloat16'")
    if cfg.keep_freed_memory:  # what nanoRLHF's init_runtime does on a CPU: compare like with like
        common.keep_freed_cpu_memory()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built here: never ask the hub
    import datasets
    import transformers
    import trl
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    warnings.simplefilter("ignore", FutureWarning)  # deprecation notices of the libraries
    meta = dict(trl=trl.__version__, transformers=transformers.__version__,
                torch=torch.__version__, threads=torch.get_num_threads(), config=vars(cfg))
    print(f"TRL {meta['trl']}, transformers {meta['transformers']}, torch {meta['torch']}, "
          f"{meta['threads']} threads, batch {cfg.batch_size}, block {cfg.block_size}, ppo prompt "
          f"{cfg.prompt_len} + {cfg.gen_tokens} new tokens x {cfg.num_iterations} epochs, "
          f"{'TRL defaults' if cfg.trl_defaults else cfg.dtype + ', no gradient checkpointing'}",
          flush=True)
    gen = torch.Generator().manual_seed(cfg.seed)
    run = dict(sft=bench_sft, rm=bench_rm, dpo=bench_dpo, ppo=bench_ppo)
    rows = []
    with tempfile.TemporaryDirectory() as out_dir:  # the trainers insist on an output_dir
        for size in sizes:
            for stage in stages:
                t0 = time.time()
                torch.manual_seed(cfg.seed)
                rows += run[stage](size, cfg, gen, out_dir)
                print(f"  {size} {stage}: {time.time() - t0:.1f}s", flush=True)
    print(f"{'size':<6} {'stage':<10} {'tokens/s':>11} {'s/step':>9}")
    for r in rows:
        print(f"{r['size']:<6} {r['stage']:<10} {r['tokens_per_s']:>11.1f} {r['s_per_step']:>9.4f}")
    if cfg.compare:
        print(comparison(rows, cfg.compare))
    if cfg.out:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
        with open(cfg.out, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)
        print(f"wrote {cfg.out}")
    return dict(meta=meta, rows=rows)


if __name__ == "__main__":
    main()
