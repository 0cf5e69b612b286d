"""
The whole RLHF recipe on the offline toy world, one stage after another:

    prepare data -> SFT -> reward model -> PPO -> DPO -> evaluation -> plots

    python pipeline.py                       # the default: about 8-9 minutes on a 2-core CPU
    python pipeline.py --scale=mini          # a miniature run (seconds) that checks the wiring

Each stage is its own script with its own config file, run here exactly as you would run it by
hand (the command is printed first), so any stage can be re-run, changed or replaced alone.
The results table is printed at the end and written to {out}/eval/results.md, the figures to
{out}/plots/.

Re-running into an out dir that already holds runs needs --overwrite=True (nothing is silently
replaced).
"""

import importlib.util
import os
import subprocess
import sys
import time

import common
from common import parse_config

DEFAULTS = dict(
    out="out",                # every stage writes to {out}/{stage}_toy
    data_dir="data/toy/out",  # the toy world's files
    scale="full",             # 'full' (the documented result) or 'mini' (a wiring check)
    seed=1337,
    overwrite=False,          # replace the stages' previous runs in {out}
    plots=True,               # draw the figures (needs matplotlib)
)

# the miniature run: a tiny model and a few iterations per stage, for the test suite
MINI_STAGE = {
    "sft": ["--n_layer=1", "--n_head=2", "--n_embd=32", "--max_iters=4", "--warmup_iters=1",
            "--eval_interval=2", "--eval_examples=16", "--log_interval=1", "--num_samples=1",
            "--sample_tokens=8"],
    "rm": ["--max_iters=4", "--warmup_iters=1", "--batch_size=4", "--eval_interval=2",
           "--eval_examples=16", "--bias_examples=16", "--log_interval=1"],
    "ppo": ["--max_iters=2", "--rollout_batch_size=4", "--minibatch_size=2",
            "--micro_batch_size=2", "--max_new_tokens=8", "--eval_interval=1",
            "--eval_examples=4", "--save_every=1", "--num_samples=1"],
    "dpo": ["--max_iters=4", "--warmup_iters=1", "--batch_size=4", "--eval_interval=2",
            "--eval_examples=4", "--log_interval=1"],
    "eval": ["--eval_examples=8", "--max_new_tokens=16"],
}


ROOT = os.path.dirname(os.path.abspath(__file__))  # the stages run from here, wherever we are


def stage_path(path):
    """path as the stages, which run in ROOT, see it: relative to ROOT when it lies below it."""
    rel = os.path.relpath(os.path.abspath(path), ROOT)
    return os.path.abspath(path) if rel.startswith("..") else rel


def run(cmd):
    """Run one stage as a subprocess, echoing the command; stop the pipeline if it fails."""
    print(f"\n$ python {' '.join(cmd)}", flush=True)
    t0 = time.time()
    result = subprocess.run([sys.executable] + cmd, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"pipeline: stage failed with exit code {result.returncode}: {' '.join(cmd)}")
    print(f"[{time.time() - t0:.0f}s]", flush=True)


def main(argv=None):
    cfg = parse_config(DEFAULTS, argv, __doc__)
    mini = cfg.scale == "mini"
    if cfg.scale not in ("full", "mini"):
        sys.exit(f"pipeline: --scale must be 'full' or 'mini', got {cfg.scale!r}")
    extra = (lambda stage: MINI_STAGE[stage]) if mini else (lambda stage: [])
    # paths as the stages (which run in ROOT) see them
    out, data = (stage_path(p) for p in (cfg.out, cfg.data_dir))
    d = {stage: os.path.join(out, f"{stage}_toy") for stage in ("sft", "rm", "ppo", "dpo")}
    common_args = [f"--seed={cfg.seed}"] + (["--overwrite=True"] if cfg.overwrite else [])
    t0 = time.time()

    # 1. the toy world: instructions, demonstrations, judged preference pairs, RL prompts
    run(["data/toy/prepare.py", f"--out_dir={data}", f"--seed={cfg.seed}"])

    # 2. SFT: a byte-level GPT from scratch learns to answer in the template
    run(["train_sft.py", "config/sft_toy.py", f"--out_dir={d['sft']}",
         f"--train_data={data}/sft_train.jsonl", f"--val_data={data}/sft_val.jsonl"]
        + common_args + extra("sft"))
    sft = os.path.join(d["sft"], "ckpt_best.pt")

    # 3. reward model: the SFT trunk plus a scalar head, trained on the judge's noisy labels
    run(["train_reward_model.py", "config/rm_toy.py", f"--out_dir={d['rm']}", f"--init_from={sft}",
         f"--train_data={data}/prefs_train.jsonl", f"--val_data={data}/prefs_val.jsonl",
         f"--bias_data={data}/sft_train.jsonl"] + common_args + extra("rm"))
    rm = os.path.join(d["rm"], "ckpt_best.pt")

    # 4. PPO against the reward model, KL-anchored to the SFT policy
    run(["train_ppo.py", "config/ppo_toy.py", f"--out_dir={d['ppo']}", f"--init_from={sft}",
         f"--reward_model={rm}", f"--train_prompts={data}/prompts_train.jsonl",
         f"--val_prompts={data}/prompts_eval.jsonl"]
        + common_args + extra("ppo"))

    # 5. DPO on the same preference pairs, no reward model and no sampling
    run(["train_dpo.py", "config/dpo_toy.py", f"--out_dir={d['dpo']}", f"--init_from={sft}",
         f"--train_data={data}/prefs_train.jsonl", f"--val_data={data}/prefs_val.jsonl"]
        + common_args + extra("dpo"))

    # 6. evaluation on held-out prompts: gold judge, reward model, win rates, KL
    eval_dir = os.path.join(out, "eval")
    policies = ",".join([f"sft:{sft}", f"ppo:{d['ppo']}/ckpt_last.pt", f"dpo:{d['dpo']}/ckpt_last.pt"])
    run(["eval.py", f"--policies={policies}", f"--reward_model={rm}", f"--reference={sft}",
         f"--prompts={data}/prompts_eval.jsonl", f"--pairs={data}/prefs_test.jsonl",
         f"--out_dir={eval_dir}", f"--sweep={d['ppo']}"] + extra("eval"))

    # 7. figures from the logs
    if cfg.plots and importlib.util.find_spec("matplotlib") is None:
        print("\nskipping the plots: matplotlib is not installed (pip install matplotlib)")
    elif cfg.plots:
        run(["plot.py", f"--runs={out}", f"--eval_dir={eval_dir}", f"--out_dir={out}/plots"])

    print(f"\npipeline done in {time.time() - t0:.0f}s; results in {eval_dir}/results.md")
    with open(os.path.join(ROOT, eval_dir, "results.md")) as f:
        print(f.read())


if __name__ == "__main__":
    common.cli(main)
