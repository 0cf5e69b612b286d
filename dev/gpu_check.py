"""
The first GPU run: turns the HH configs' ESTIMATES into measurements. A development tool, like
tests/bench_trl.py: nothing in nanoRLHF imports it.

Run it on a machine with one CUDA GPU or more (13 minutes in all, by design):
    python dev/gpu_check.py --out=out/gpu_check.json          # H100 / H200: peak 989 TFLOP/s
    python dev/gpu_check.py --peak_flops=312e12 ...           # any other GPU: its bf16 peak
    python dev/gpu_check.py --dry_run=True                    # the commands only, no GPU needed
    python dev/gpu_check.py --smoke=True                      # every phase on the CPU, tiny

What it runs, one after the other, each as its own process:
  1. data/hh/prepare.py on the shared real HH file (<repo>/../shared/data/hh-rlhf/
     harmless-base-test.jsonl.gz, or --shared), with the genuine GPT-2 BPE of
     <shared>/gpt2_bpe (TIKTOKEN_CACHE_DIR), into a scratch directory;
  2. bench.py at GPT-2 124M, bf16, --compile=True, 16 x 1024 tokens, sft and dpo: the setting of
     the README's target of at least 45% MFU;
  3. bench.py's sft at GPT-2 medium (355M), 8 x 1024 tokens, without and with gradient
     checkpointing: peak memory and seconds per step of each (docs/SCALE.md);
  4. bench.py's ppo on the converted HH prompts, as config/ppo_gpt2_hh.py batches them (64
     prompts, 128 new tokens, 4 epochs): in micro-batches of 8 rows of similar prompt lengths,
     each without its padding columns, and as one micro-batch of 64 (every row padded to the
     longest prompt), for the speed of the trimmed update;
  5. with two GPUs or more: train_sft.py under torchrun with fsdp=True over all of them, GPT-2
     medium's shape with gradient checkpointing, 30 steps (skipped on one GPU);
  6. each HH recipe for a few hundred steps (--max_iters): train_sft.py config/sft_gpt2_hh.py,
     then train_reward_model.py config/rm_gpt2_hh.py and train_dpo.py config/dpo_gpt2_hh.py from
     that SFT checkpoint, train_ppo.py config/ppo_gpt2_hh.py from it and the reward model, and
     train_grpo.py with PPO's HH settings (there is no GRPO HH config). SFT starts from random
     weights of GPT-2's shape (init_from='gpt2' would need the hub): the same speed. Evaluations
     are cut to a few examples; train and val are the one converted test split.
Per recipe it records the seconds per step (the logged ms_per_iter, or the time between PPO's
and GRPO's log lines), real tokens/s and MFU (SFT, RM, DPO: each logged step's batch rebuilt
from the data, as the script draws it, and counted with bench_rows.batch_flops) and the peak GPU
memory (torch.cuda.max_memory_allocated of the process). Everything goes to one JSON file
(--out) and a table on stdout. A phase that would overrun --budget_s is skipped, saying so, and
whatever finished is still written.

Without a GPU it stops at once with one line saying so. --dry_run=True prints the commands;
--smoke=True runs the same plan on the CPU with a 1-layer GPT of GPT-2's vocabulary, two steps a
phase and tiny batches, so that every key, file and checkpoint hand-over and the reading of the
results is checked before a GPU is at hand (tests/test_bench.py does, on a small HH-format file).
"""

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data import bench_rows
from config import ConfigError, cli, parse_config, require

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULTS = dict(
    shared=os.path.join(os.path.dirname(ROOT), "shared", "data"),  # hh-rlhf/ and gpt2_bpe/
    hh_file="",                 # the upstream HH file ('' = <shared>/hh-rlhf/harmless-base-test...)
    work_dir="",                # scratch directory for data and runs ('' = a temporary one)
    out="out/gpu_check.json",   # the results file
    peak_flops=0.0,             # the GPU's bf16 peak FLOP/s; 0 = from its name (H100/H200, A100)
    max_iters=200,              # optimizer steps of the SFT, RM and DPO recipes
    rl_iters=20,                # iterations of the PPO and GRPO recipes
    bench_steps=10,             # timed steps per bench.py stage (after 3 warm-up steps)
    budget_s=780.0,             # every phase must start and end within this many seconds
    dry_run=False,              # print the commands and stop (no GPU needed)
    smoke=False,                # the plan on the CPU: tiny model, 2 steps a phase (no GPU needed)
)
PEAK_BF16 = (("H100", 989e12), ("H200", 989e12), ("GH200", 989e12), ("A100", 312e12),
             ("L40S", 362e12), ("A10G", 70e12))  # dense bf16 tensor-core peaks
HH_FILE = os.path.join("hh-rlhf", "harmless-base-test.jsonl.gz")
# the wrapper a training script runs under: its peak GPU memory is written to a JSON file
# (under torchrun rank 0's)
PEAK_WRAPPER = ("import json, os, runpy, sys, torch; sys.path.insert(0, '.'); out = sys.argv[1]; "
                "sys.argv = sys.argv[2:]\n"
                "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
                "finally:\n    os.environ.get('RANK', '0') == '0' and json.dump(dict(peak_mb="
                "torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else "
                "None), open(out, 'w'))\n")

# -----------------------------------------------------------------------------
# the plan: every phase's command, as data (the dry run prints it, the tests check it)


def peak_for(name):
    """The bf16 peak FLOP/s of a GPU by its name, or 0.0 when unknown."""
    return next((p for key, p in PEAK_BF16 if key in name), 0.0)


def plan(cfg, work, peak, gpus=1):
    """
    [dict(name, kind, cmd, after, budget_s, ...)] in order: kind 'prepare', 'bench' (out: the
    bench JSON), 'fsdp' (nproc processes under torchrun, out_dir; run when nproc >= 2: gpus, the
    GPUs present, or two CPU processes in the smoke test) or 'recipe' (script, config argv,
    out_dir, stage); after names the recipe whose checkpoint it starts from. Paths are under
    work; python is this interpreter.
    """
    py, hh = sys.executable, os.path.join(work, "hh")
    prefs, sft, prompts = (os.path.join(hh, f"{k}_test.jsonl") for k in ("prefs", "sft", "prompts"))
    ckpt = lambda name: os.path.join(work, name, "ckpt_best.pt")  # noqa: E731
    device = ["--device=cpu", "--dtype=float32"] if cfg.smoke else ["--device=cuda",
                                                                     "--dtype=bfloat16"]
    steps = ["--steps=1", "--warmup=0"] if cfg.smoke else [f"--steps={cfg.bench_steps}",
                                                           "--warmup=3"]
    shape = ["--sizes=micro", "--batch_size=2", "--block_size=32", "--compile=False"] if cfg.smoke \
        else ["--sizes=gpt2", "--batch_size=16", "--block_size=1024", "--compile=True"]
    hh_file = cfg.hh_file or os.path.join(cfg.shared, HH_FILE)
    tiny_sft = ["--n_layer=1", "--n_head=1", "--n_embd=32", "--batch_size=2", "--grad_accum=1",
                "--eval_examples=4", "--num_samples=1", "--sample_tokens=4", "--warmup_iters=1"]
    phases = [dict(name="prepare", kind="prepare", budget_s=45, cmd=[
        py, "data/hh/prepare.py", f"--input={hh_file}", f"--out_dir={hh}"])]
    out = os.path.join(work, "bench_target.json")
    phases.append(dict(name="bench sft,dpo 16x1024", kind="bench", out=out, budget_s=130, cmd=[
        py, "bench.py", "--stages=sft,dpo", *shape, *device, f"--peak_flops={peak:g}", *steps,
        f"--out={out}"]))
    # gradient checkpointing at GPT-2 medium: peak memory and seconds per step, off and on
    medium = ["--sizes=micro", "--batch_size=2", "--block_size=32"] if cfg.smoke else \
        ["--sizes=gpt2-medium", "--batch_size=8", "--block_size=1024"]
    short = steps if cfg.smoke else ["--steps=3", "--warmup=2"]
    for on in (False, True):
        out = os.path.join(work, f"bench_medium_ckpt_{on}.json")
        phases.append(dict(name=f"bench sft medium ckpt={on}", kind="bench", out=out,
                           budget_s=70, cmd=[py, "bench.py", "--stages=sft", *medium, *device,
                                             f"--grad_checkpoint={on}", f"--peak_flops={peak:g}",
                                             *short, f"--out={out}"]))
    # PPO on real HH prompts (the converted test split), as the HH recipe batches them: micro-
    # batches of 8 rows of similar prompt lengths, each without its padding columns, and the
    # whole rollout as one micro-batch (every row padded to the longest prompt) for comparison
    ppo_shape = ["--sizes=micro", "--batch_size=4", "--gen_tokens=4", "--block_size=64"] \
        if cfg.smoke else ["--sizes=gpt2", "--batch_size=64", "--gen_tokens=128",
                           "--block_size=512"]
    for micro in ((2, 4) if cfg.smoke else (8, 64)):
        out = os.path.join(work, f"bench_ppo_hh_micro{micro}.json")
        phases.append(dict(name=f"bench ppo hh micro={micro}", kind="bench", out=out,
                           budget_s=100, cmd=[py, "bench.py", "--stages=ppo", f"--data={prefs}",
                                              *ppo_shape, f"--micro_batch_size={micro}",
                                              *device, *(steps if cfg.smoke else
                                                         ["--steps=2", "--warmup=1"]),
                                              f"--out={out}"]))
    # FSDP over every GPU present (two CPU processes in the smoke test): SFT of GPT-2 medium's
    # shape with gradient checkpointing, a few steps; skipped on one GPU
    nproc = 2 if cfg.smoke else gpus
    fsdp_dir, fsdp_shape = os.path.join(work, "fsdp_sft"), tiny_sft if cfg.smoke else [
        "--n_layer=24", "--n_head=16", "--n_embd=1024", "--batch_size=8", "--grad_accum=1"]
    phases.append(dict(name=f"fsdp sft x{nproc}", kind="fsdp", nproc=nproc, out_dir=fsdp_dir,
                       peak_file=os.path.join(work, "peak_fsdp.json"), budget_s=120, cmd=[
                           py, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={nproc}", os.path.join(work, "peak_wrapper.py"),
                           os.path.join(work, "peak_fsdp.json"), "train_sft.py",
                           os.path.join(ROOT, "config", "sft_gpt2_hh.py"), f"--train_data={sft}",
                           f"--val_data={sft}", "--init_from=scratch", "--tokenizer=gpt2",
                           *fsdp_shape, "--fsdp=True", "--grad_checkpoint=True",
                           "--compile=False", f"--max_iters={min(cfg.max_iters, 30)}",
                           "--warmup_iters=1", "--log_interval=1", "--eval_examples=16",
                           "--num_samples=1", "--sample_tokens=8",
                           f"--eval_interval={min(cfg.max_iters, 30)}",
                           f"--ckpt_interval={min(cfg.max_iters, 30)}", f"--out_dir={fsdp_dir}",
                           *device, "--overwrite=True"]))
    # the smoke test's tiny settings, appended to each recipe's (the last value of a key wins)
    tiny = dict(sft=tiny_sft,
                rm=["--batch_size=2", "--grad_accum=1", "--eval_examples=4", "--bias_examples=4",
                    "--warmup_iters=1"],
                dpo=["--batch_size=2", "--grad_accum=1", "--eval_examples=4", "--warmup_iters=1"],
                ppo=["--rollout_batch_size=4", "--minibatch_size=2", "--micro_batch_size=2",
                     "--max_new_tokens=4", "--eval_examples=4", "--num_samples=1"],
                grpo=["--rollout_batch_size=4", "--minibatch_size=4", "--micro_batch_size=2",
                      "--max_new_tokens=4", "--eval_examples=4", "--num_samples=1"])
    short_eval = lambda n: [f"--eval_interval={n}", f"--ckpt_interval={n}"]  # noqa: E731
    recipes = [
        ("sft", "train_sft.py", "config/sft_gpt2_hh.py", None, [
            f"--train_data={sft}", f"--val_data={sft}", "--init_from=scratch", "--n_layer=12",
            "--n_head=12", "--n_embd=768", "--tokenizer=gpt2", f"--max_iters={cfg.max_iters}",
            "--warmup_iters=10", "--eval_examples=128", *short_eval(cfg.max_iters)]),
        ("rm", "train_reward_model.py", "config/rm_gpt2_hh.py", "sft", [
            f"--init_from={ckpt('sft')}", f"--train_data={prefs}", f"--val_data={prefs}",
            f"--bias_data={sft}", "--bias_examples=512", f"--max_iters={cfg.max_iters}",
            "--warmup_iters=10", "--eval_examples=256", *short_eval(cfg.max_iters)]),
        ("dpo", "train_dpo.py", "config/dpo_gpt2_hh.py", "sft", [
            f"--init_from={ckpt('sft')}", f"--train_data={prefs}", f"--val_data={prefs}",
            f"--max_iters={cfg.max_iters}", "--warmup_iters=10", "--eval_examples=128",
            *short_eval(cfg.max_iters)]),
        ("ppo", "train_ppo.py", "config/ppo_gpt2_hh.py", "rm", [
            f"--init_from={ckpt('sft')}", f"--reward_model={ckpt('rm')}",
            f"--train_prompts={prompts}", f"--val_prompts={prompts}", f"--max_iters={cfg.rl_iters}",
            f"--demo_val_data={sft}",
            "--eval_examples=64", "--save_every=0", *short_eval(cfg.rl_iters)]),
        # no config/grpo_gpt2_hh.py: PPO's HH settings where GRPO has the key
        ("grpo", "train_grpo.py", None, "rm", [
            f"--init_from={ckpt('sft')}", f"--reward_model={ckpt('rm')}", "--gold_judge=",
            f"--train_prompts={prompts}", f"--val_prompts={prompts}", "--block_size=512",
            f"--demo_val_data={sft}",
            "--rollout_batch_size=64", "--group_size=4", "--max_new_tokens=53",
            "--temperature=0.7", "--minibatch_size=64", "--micro_batch_size=8", "--lr=3e-6",
            f"--max_iters={cfg.rl_iters}", "--eval_examples=64", "--save_every=0",
            *short_eval(cfg.rl_iters)]),
    ]
    for stage, script, config, after, args in recipes:
        out_dir = os.path.join(work, stage)
        argv = ([os.path.join(ROOT, config)] if config else []) + args + [
            f"--out_dir={out_dir}", *device, "--overwrite=True"]
        if cfg.smoke:
            argv += tiny[stage] + (["--compile=False"] if stage in ("sft", "rm", "dpo") else [])
        peak_file = os.path.join(work, f"peak_{stage}.json")
        model = dict(n_layer=1, n_head=1, n_embd=32, vocab_size=50257) if cfg.smoke else \
            bench_rows.SIZES["gpt2"]  # the shape the FLOPs are counted for
        phases.append(dict(name=f"recipe {stage}", kind="recipe", stage=stage, script=script,
                           model=model,
                           argv=argv, out_dir=out_dir, after=after, peak_file=peak_file,
                           budget_s=dict(sft=120, rm=100, dpo=100, ppo=80, grpo=60)[stage],
                           cmd=[py, "-c", PEAK_WRAPPER, peak_file, script, *argv]))
    return phases

# -----------------------------------------------------------------------------
# reading the results


def read_log(out_dir):
    """The training records of a run's log.jsonl, in order: SFT/RM/DPO lines carry 'ms_per_iter',
    PPO's 'tok_per_s', GRPO's 's_per_iter'."""
    path = os.path.join(out_dir, "log.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if {"ms_per_iter", "s_per_iter", "tok_per_s"} & set(r)]


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else None


def step_batches(stage, run_cfg, step):
    """The micro-batches (collated as the script collates them) of optimizer step `step` (1-based,
    as logged) of an SFT, RM or DPO run with the resolved config run_cfg: loader.batch_indices of
    the script's own seed, lengths and batch sizes, so the counts are of the very rows it ran."""
    from data import loader
    data = _training_rows(stage, run_cfg.train_data, run_cfg.block_size, run_cfg.length_buckets)
    rows, lengths, pad = data
    import layouts
    collate = loader.collate if stage == "sft" else layouts.collate_pairs
    return [collate([rows[i] for i in loader.batch_indices(
        len(rows), run_cfg.batch_size, (step - 1) * run_cfg.grad_accum + k, run_cfg.seed,
        lengths=lengths)], pad) for k in range(run_cfg.grad_accum)]


_rows_cache = {}


def _training_rows(stage, path, block_size, buckets):
    """(rows, lengths or None, pad id) exactly as train_sft / train_reward_model / train_dpo
    load and bucket them."""
    key = (stage, path, block_size, buckets)
    if key not in _rows_cache:
        from data import loader
        from tokenizer import get_tokenizer
        enc = get_tokenizer("gpt2")
        if stage == "sft":
            rows = loader.load_sft(path, enc, block_size)
            lengths = tuple(len(ids) for ids, _ in rows)
        else:
            rows = loader.load_preferences(path, enc, block_size)
            lengths = tuple(max(len(p["chosen"][0]), len(p["rejected"][0])) for p in rows)
        _rows_cache[key] = (rows, lengths if buckets else None, enc.eot_token)
    return _rows_cache[key]


def recipe_result(phase, peak, skip=2):
    """Seconds per step, real tokens/s and MFU of a finished recipe run, from its log and data;
    the first `skip` logged steps (compilation) are left out."""
    import train_dpo
    import train_reward_model
    import train_sft
    from model import GPTConfig
    records = read_log(phase["out_dir"])
    timed = records[skip:] if len(records) > skip else records
    out = dict(steps_logged=len(records))
    if os.path.isfile(phase["peak_file"]):
        with open(phase["peak_file"]) as f:
            out["peak_mem_mb"] = json.load(f)["peak_mb"]
    if not timed:
        return out
    stage = phase["stage"]
    if stage in ("ppo", "grpo"):  # seconds between consecutive log lines (log_interval=1)
        gaps = [b["time"] - a["time"] for a, b in zip(records, records[1:])][skip:]
        out["s_per_iter"] = median(gaps)
        if "tok_per_s" in timed[0]:
            out["response_tok_per_s"] = median([r["tok_per_s"] for r in timed])
        return out
    defaults = dict(sft=train_sft, rm=train_reward_model, dpo=train_dpo)[stage].DEFAULTS
    run_cfg = parse_config(defaults, phase["argv"])
    config = GPTConfig(**phase["model"])
    # the policy or reward model trains: 3 forwards; a live DPO reference adds one
    passes = 4 if stage == "dpo" and not run_cfg.precompute_ref_logps else 3
    tok_s, mfu, s = [], [], []
    for r in timed:
        seconds = r["ms_per_iter"] / 1000
        micro = step_batches(stage, run_cfg, r["step"])
        masks = [(b[1], b[2]) if stage == "sft" else (b["attention_mask"],
                 None if stage == "rm" else b["loss_mask"]) for b in micro]
        flops = passes * sum(bench_rows.batch_flops(config, a, m) for a, m in masks)
        s.append(seconds)
        tok_s.append(sum(int(a.sum()) for a, _ in masks) / seconds)
        mfu.append(flops / seconds / peak if peak else None)
    out.update(s_per_step=median(s), tokens_per_s=median(tok_s),
               mfu=median(mfu) if peak else None, steps_timed=len(timed))
    return out


def fsdp_result(phase, skip=2):
    """Seconds per step (the median logged ms_per_iter after the first `skip` steps), the steps
    logged and rank 0's peak GPU memory of the FSDP run."""
    records = read_log(phase["out_dir"])
    out = dict(steps_logged=len(records), nproc=phase["nproc"])
    timed = records[skip:] or records
    if timed:
        out["s_per_step"] = median([r["ms_per_iter"] / 1000 for r in timed])
    if os.path.isfile(phase["peak_file"]):
        with open(phase["peak_file"]) as f:
            out["peak_mem_mb"] = json.load(f)["peak_mb"]
    return out


def bench_result(phase):
    """The rows of a bench.py JSON (size, stage, tokens/s, s/step, peak MB, MFU)."""
    with open(phase["out"]) as f:
        rows = json.load(f)["rows"]
    keep = ("stage", "tokens_per_s", "s_per_step", "peak_mem_mb", "tflops", "mfu", "padding")
    return [{k: r.get(k) for k in keep} for r in rows]


def table(results):
    """The results as text lines: one per bench row and per recipe."""
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    lines = [f"{'phase':<24} {'row':<16} {'s/step':>8} {'tokens/s':>10} {'MFU':>6} {'peak MB':>9} "
             f"{'status':<10}"]
    for p in results:
        if p.get("rows"):
            for r in p["rows"]:
                lines.append(f"{p['name']:<24} {r['stage']:<16} {fmt(r['s_per_step'], '8.4f')} "
                             f"{fmt(r['tokens_per_s'], '10.0f')} {fmt(r['mfu'], '6.1%')} "
                             f"{fmt(r['peak_mem_mb'], '9.0f')} {p['status']:<10}")
        else:
            r = p.get("result", {})
            s = r.get("s_per_step", r.get("s_per_iter"))
            lines.append(f"{p['name']:<24} {'-':<16} {fmt(s, '8.4f')} "
                         f"{fmt(r.get('tokens_per_s', r.get('response_tok_per_s')), '10.0f')} "
                         f"{fmt(r.get('mfu'), '6.1%')} {fmt(r.get('peak_mem_mb'), '9.0f')} "
                         f"{p['status']:<10}")
    return lines

# -----------------------------------------------------------------------------


def main(argv=None):
    cfg = parse_config(DEFAULTS, argv, __doc__)
    if cfg.smoke:  # two steps a phase
        cfg.max_iters, cfg.rl_iters = 2, 2
    import torch
    if not (cfg.dry_run or cfg.smoke) and not torch.cuda.is_available():
        raise ConfigError("gpu_check: no CUDA GPU here (torch.cuda.is_available() is "
                                 "False); it measures GPU speed only. --dry_run=True prints "
                                 "its commands")
    on_gpu = torch.cuda.is_available() and not cfg.smoke
    name = torch.cuda.get_device_name() if on_gpu else "(no GPU: smoke test or dry run)"
    peak = cfg.peak_flops or peak_for(name) or (989e12 if cfg.dry_run or cfg.smoke else 0.0)
    require(peak > 0, f"gpu_check: no known bf16 peak for {name!r}: give --peak_flops "
                             f"(e.g. 989e12 for an H100 SXM)")
    for need in (cfg.hh_file or os.path.join(cfg.shared, HH_FILE),
                 os.path.join(cfg.shared, "gpt2_bpe")):
        require(cfg.dry_run or os.path.exists(need),
                       f"gpu_check: {need} is missing (--shared: the directory with hh-rlhf/ "
                       f"and gpt2_bpe/; or --hh_file)")
    work = cfg.work_dir or tempfile.mkdtemp(prefix="gpu_check_")
    if not cfg.dry_run:
        os.makedirs(work, exist_ok=True)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 8 if cfg.dry_run else 1
    phases = plan(cfg, work, peak, gpus)
    if cfg.dry_run:
        for p in phases:
            print(f"# {p['name']}" + (f" (from {p['after']})" if p.get("after") else ""))
            # a recipe runs under PEAK_WRAPPER; printed is the plain command it wraps
            print(shlex.join(p["cmd"][:1] + p["cmd"][4:]) if p["kind"] == "recipe"
                  else shlex.join(p["cmd"]))
        return dict(phases=phases)
    with open(os.path.join(work, "peak_wrapper.py"), "w") as f:  # the FSDP phase's, as a file
        f.write(PEAK_WRAPPER)
    # the genuine GPT-2 BPE offline, for the runs and for counting their tokens here
    os.environ["TIKTOKEN_CACHE_DIR"] = os.path.join(cfg.shared, "gpt2_bpe")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    meta = dict(date=time.strftime("%Y-%m-%d"), gpu=name, peak_flops=peak, torch=torch.__version__,
                work_dir=work, smoke=cfg.smoke, config=vars(cfg))
    print(f"{meta['date']}, {name}, peak {peak / 1e12:.0f} TFLOP/s bf16, torch {torch.__version__}, "
          f"work dir {work}", flush=True)
    t_start, results, status = time.time(), [], {}

    def write():
        os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
        with open(cfg.out, "w") as f:
            json.dump(dict(meta=meta, phases=results), f, indent=1)

    for p in phases:
        left = cfg.budget_s - (time.time() - t_start)
        entry = dict(name=p["name"], kind=p["kind"], cmd=shlex.join(p["cmd"]))
        if p.get("after") and status.get(f"recipe {p['after']}") != "ok":
            entry["status"] = f"skipped (needs {p['after']})"
        elif p["kind"] == "fsdp" and p["nproc"] < 2:
            entry["status"] = "skipped (one GPU)"
        elif left < min(p["budget_s"], 40):
            entry["status"] = "skipped (out of time)"
        else:
            t0 = time.time()
            log = os.path.join(work, p["name"].replace(" ", "_").replace(",", "+") + ".log")
            with open(log, "w") as f:
                try:
                    rc = subprocess.run(p["cmd"], cwd=ROOT, env=env, stdout=f,
                                        stderr=subprocess.STDOUT,
                                        timeout=min(left, p["budget_s"])).returncode
                    entry["status"] = "ok" if rc == 0 else f"exit {rc}"
                except subprocess.TimeoutExpired:
                    entry["status"] = "timed out"
            entry["wall_s"] = round(time.time() - t0, 1)
            with open(log, errors="replace") as f:
                entry["log_tail"] = f.read()[-2000:]
            try:
                if p["kind"] == "bench" and entry["status"] == "ok":
                    entry["rows"] = bench_result(p)
                elif p["kind"] == "recipe":
                    entry["result"] = recipe_result(p, peak)
                elif p["kind"] == "fsdp":
                    entry["result"] = fsdp_result(p)
            except Exception as e:  # a result that cannot be read must not lose the others
                entry["read_error"] = repr(e)
        status[p["name"]] = entry["status"]
        results.append(entry)
        print(f"  {p['name']}: {entry['status']}" + (f", {entry['wall_s']}s" if "wall_s" in entry
                                                     else ""), flush=True)
        write()
    print("\n".join(table(results)))
    print(f"wrote {cfg.out} ({time.time() - t_start:.0f}s in all)")
    return dict(meta=meta, phases=results)


if __name__ == "__main__":
    cli(main)
