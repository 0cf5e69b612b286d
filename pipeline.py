"""
The whole RLHF recipe on the offline toy world, as the seeds teach it:

    prepare -> SFT -> label (the SFT policy's own answers, ranked) -> reward models -> PPO
            -> label_r2 (round 1's PPO policy's answers, ranked: Llama 2's iterated rounds)
            -> reward models on both rounds -> PPO again from SFT, and GRPO (with
               --methods=all also RLOO, and PPO and GRPO on the gold judge, the true reward)
            -> rejection sampling (the last round's reward models' favourite of 8 SFT answers
               as demonstrations: the rs policy), and PPO again from it (ppo_rs)
            -> DPO and KTO (on round 1's comparisons, the SFT policy's answers, as pairs and
               as single labelled answers: DPO's own setting, samples of its reference)
            -> evaluation (every policy, best-of-N, the over-optimisation sweeps) -> plots

    python pipeline.py                       # the default: two rounds of labels and
                                             # rejection sampling; 30 minutes on a 2-core
                                             # CPU, 5 fewer without rs (docs/RESULTS.md)
    python pipeline.py --rounds=1            # one round, about 15: PPO then trails DPO more
    python pipeline.py --data=static --rounds=1  # the hand-made comparisons instead of labels
    python pipeline.py --methods=all         # also RLOO, and PPO and GRPO on the gold judge
    python pipeline.py --scale=mini          # a miniature run (seconds) that checks the wiring
    python pipeline.py --methods=spin        # also SPIN, self-play on the demonstrations, and
                                             # its control (docs/AI_FEEDBACK.md)
    python pipeline.py --methods=dpo,rlaif   # also RLAIF: a learned judge's labels, DPO and
                                             # round 1's reward models and PPO on them
    python pipeline.py --methods=cai         # also Constitutional AI: SL-CAI and RL-CAI
    python pipeline.py --methods=grpo,dpo,kto  # without rejection sampling (Llama 2) and
                                             # the PPO from its policy (docs/RESULTS.md)
    python pipeline.py --label_prompts=1500 --rm_epochs=5  # three times the comparisons and
                                             # the reward models' steps: held-out accuracy
                                             # 0.87 against 0.80 (docs/RESULTS.md)
    python pipeline.py --methods=grpo,dpo,kto,rs,relabel  # a third round of labels, of
                                             # ppo_rs's answers, and PPO from rs against
                                             # reward models trained on it: ppo_rs_r3

Each stage is its own script with its own config, run exactly as you would run it by hand (the
command is printed). Stages that do not depend on each other run side by side, `jobs` at a time,
each on one thread (a model this small gains little from a second thread; two processes gain
more), SFT and the evaluation, which run alone, on `jobs` threads; their output goes to
{out}/logs/{stage}.txt, with a line of progress every so often. The results
table is printed at the end and written to {out}/eval/results.md, the figures to {out}/plots/.
Re-running into an out dir that holds runs needs --overwrite=True (nothing is silently replaced):
before any stage starts, every stage's out_dir and data set is checked, and if one would refuse
(a run there, a world of another seed, a labelling, a lock held by a running process) nothing
runs. Ctrl-C or SIGTERM is passed on to the running stages, which save and stop; the pipeline
waits for them and exits with status 1.
"""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time

import ai_stages
import config
import rollout
import run

DEFAULTS = dict(
    out="out",                # every stage writes to {out}/{stage}_toy
    data_dir="data/toy/out",  # the toy world's files
    data="onpolicy",          # 'onpolicy': comparisons of SFT samples (label.py) | 'static'
    safety_share=0.2,         # the world (data/toy/prepare.py): the share of harmful and
                              # lookalike prompts in every file but the held-out ones; 0 = the
                              # benign world without them (its held-out safety prompts still asked)
    refusal_share=0.1,        # the world: the share of harmful demonstrations that refuse
    rounds=2,                 # round r > 1 labels round r-1's PPO policy's answers, and the
                              # reward models learn from every round so far: a reward model that
                              # has seen PPO's own mistakes (+0.26 gold over six seeds,
                              # docs/RESULTS.md); 1 = the SFT policy's answers only
    scale="full",             # 'full' (the documented result) or 'mini' (a wiring check)
    methods="grpo,dpo,kto,rs",  # beside PPO (always run): any of grpo, rloo, dpo, kto, ppo_gold,
                              # grpo_gold, ppo_gate (Llama 2's gated RMs), ppo_safe (Safe RLHF),
                              # rs (Llama 2's rejection sampling: best-of-8 by the reward models
                              # as demonstrations, then PPO from that policy: rs, ppo_rs; its
                              # wins and gold above the PPO from SFT on six seeds, +5 minutes),
                              # relabel (with rs: a further round labels ppo_rs's answers, and
                              # PPO from rs learns against reward models that have seen them:
                              # ppo_rs_r3; docs/RESULTS.md, about +13 minutes),
                              # or 'all' (with data='static' all but kto, ppo_gate, ppo_safe
                              # and relabel, whose labelled answers come from label.py); the
                              # AI-feedback methods only by name: spin, rlaif, cai (ai_stages.py)
    spin_iters=2,             # SPIN's iterations (methods=spin), each a policy spin1, spin2, ...
    cost_budget=-0.1,         # ppo_safe's d, in the cost model's units per answer
    ppo_rollouts=128,         # answers per iteration of the last round's PPO (a multiple of 4;
                              # earlier rounds: config/ppo_toy.py's 64): +0.17 gold (RESULTS.md)
    label_prompts=500,        # training prompts whose answers each round's annotators rank
                              # (label.py --max_prompts; the next 100 validate)
    label_refusals=False,     # the annotators also rank one polite refusal per harmful and
                              # lookalike prompt (label.py --add_refusals): a reward model then
                              # learns that refusing a lookalike is wrong (docs/RESULTS.md)
    prompt_weights="",        # every PPO/GRPO run draws these families' training prompts k
                              # times as often ('harmful=3,lookalike=3'; train_ppo.py's key);
                              # with label_refusals, ppo_rs complied with 0.15 of harmful
                              # requests on three seeds, the default 0.26, but PPO lost 0.2
                              # benign gold on the seed run both ways (docs/RESULTS.md)
    rm_epochs=5.0,            # the reward models' epochs over the rankings; 1500 prompts at 5
                              # epochs: more accurate reward models for 3x their time
                              # (docs/RESULTS.md, "How accurate a reward model can get")
    rm_members=3,             # reward models per round, seeded seed, seed+1, ... (an ensemble
                              # when > 1: rm_toy, rm_m1_toy, ...; Coste et al. 2023)
    reward_agg="mean",        # how PPO, GRPO and eval combine the members: mean | min | uwo
    uwo_lambda=1.0,           # uwo: the members' mean - uwo_lambda * their variance
    eval_samples=4,           # answers per held-out prompt and policy in the evaluation: one
                              # answer's mean gold over 96 prompts moves by ~0.16 between
                              # sampling seeds, four halve that (docs/RESULTS.md)
    jobs=2,                   # stages run side by side (one thread each); 1 = one after another;
                              # SFT and eval run on `jobs` threads, so two pipelines sharing two
                              # cores want --jobs=1 each (two such SFTs and a PPO run on two
                              # cores: 1,230 ms a step, against 68 ms alone)
    seed=1337,
    overwrite=False,          # replace the stages' previous runs in {out} and data in data_dir
    plots=True,               # draw the figures
)

# the miniature run: a tiny model and a few iterations per stage, for the test suite
MINI = {
    "sft": ["--n_layer=1", "--n_head=2", "--n_embd=32", "--max_iters=4", "--warmup_iters=1",
            "--eval_interval=2", "--eval_examples=16", "--log_interval=1", "--num_samples=1",
            "--sample_tokens=8"],
    "label": ["--max_prompts=96", "--num_val_prompts=48", "--k=4", "--k_eval=2",
              "--max_new_tokens=16"],
    "rm": ["--max_iters=4", "--warmup_iters=1", "--batch_size=4", "--eval_interval=2",
           "--eval_examples=16", "--bias_examples=16", "--log_interval=1"],
    "rl": ["--max_iters=2", "--rollout_batch_size=8", "--minibatch_size=4",
           "--micro_batch_size=4", "--max_new_tokens=8", "--eval_interval=1",
           "--eval_examples=4", "--save_every=1", "--num_samples=1"],
    "dpo": ["--max_iters=4", "--warmup_iters=1", "--batch_size=4", "--eval_interval=2",
            "--eval_examples=4", "--log_interval=1"],
    "eval": ["--eval_examples=8", "--max_new_tokens=16", "--bon_sweep=4",
             "--num_samples_per_prompt=1"],
    "rs_data": ["--k=2", "--max_new_tokens=8", "--num_val_prompts=8"],
    "rs": ["--max_iters=4", "--warmup_iters=1", "--eval_interval=2", "--eval_examples=4",
           "--log_interval=1", "--num_samples=1", "--sample_tokens=8"],
}

ROOT = os.path.dirname(os.path.abspath(__file__))  # the stages run from here, wherever we are
OPTIONAL = ("grpo", "rloo", "dpo", "kto", "ppo_gold", "grpo_gold",  # the stages `methods` picks
            "ppo_gate", "ppo_safe", "rs", "relabel")  # (relabel: stages named by round)
SAFETY = ("ppo_gate", "ppo_safe")  # helpful and harmless: label --kinds=separate, and more models


def stage_path(path):
    """path as the stages, which run in ROOT, see it: relative to ROOT when it lies below it."""
    rel = os.path.relpath(os.path.abspath(path), ROOT)
    return os.path.abspath(path) if rel.startswith("..") else rel


def run_stages(stages, jobs, log_dir, alone=()):
    """
    Run {name: (names it needs, command)} as subprocesses, each once all it needs has finished,
    at most `jobs` at a time, on one thread each; a stage in `alone` runs by itself, on `jobs`
    threads. The thread counts are fixed by the stage, not by the timing,
    so a run repeats bit for bit. A stage that fails stops the pipeline (the others are stopped
    too) with the end of its log. Returns {name: seconds}.
    """
    os.makedirs(log_dir, exist_ok=True)
    todo, running, done, last_note = dict(stages), {}, {}, time.time()
    stop = []  # the signals received: each is passed on to the running stages

    def forward(signum, frame):
        stop.append(signal.Signals(signum).name)
        print(f"\n{stop[-1]} received: passing it on to {', '.join(running) or 'no stage'} and "
              f"waiting for them to save and stop", flush=True)
        for proc, _, _ in running.values():
            proc.send_signal(signum)
    handlers = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _run_stages(todo, running, done, last_note, stop, jobs, log_dir, alone)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)


def _stage_process_setup():
    """In a stage's process, before it runs: if the pipeline dies (even by SIGKILL), the kernel
    sends the stage SIGTERM, so it saves and stops instead of training on as an orphan (Linux)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _run_stages(todo, running, done, last_note, stop, jobs, log_dir, alone):
    while todo or running:
        if stop and not running:
            raise config.UserError(f"pipeline: stopped by {stop[0]}; the stages that ran saved "
                                   f"their checkpoints ({', '.join(done) or 'none finished'} "
                                   f"finished); start again with --overwrite=True to redo them")
        for name, (needs, cmd) in list(todo.items()):
            # a stage in `alone` runs on `jobs` threads: it starts on an idle machine, and
            # nothing starts beside it (two of them side by side would oversubscribe the cores)
            free = not running if name in alone else not set(running) & set(alone)
            if not stop and free and len(running) < jobs and all(n in done for n in needs):
                print(f"\n$ python {' '.join(cmd)}\n  [{name}: started, log {log_dir}/{name}.txt]",
                      flush=True)
                log = open(os.path.join(log_dir, f"{name}.txt"), "w")
                threads = str(jobs if name in alone else 1)
                env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
                # its own session: a Ctrl-C at the terminal reaches the pipeline alone, which
                # passes it on once (a second one would interrupt a stage without its save)
                proc = subprocess.Popen([sys.executable, "-u"] + cmd, cwd=ROOT, env=env,
                                        stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True, preexec_fn=_stage_process_setup)
                running[name] = (proc, log, time.time())
                del todo[name]
        time.sleep(0.5)
        for name, (proc, log, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[name]
            if proc.returncode != 0 and not stop:
                for other, _, _ in running.values():  # they save and stop; wait for them
                    other.terminate()
                for other, _, _ in running.values():
                    other.wait()
                with open(os.path.join(log_dir, f"{name}.txt")) as f:
                    tail = f.read()[-3000:]
                sys.exit(f"{tail}\npipeline: stage {name} failed (exit code {proc.returncode}); "
                         f"its log: {log_dir}/{name}.txt")
            if stop:  # stopped by the signal we passed on (it saved, exit 0) or killed
                print(f"  [{name}: stopped, exit code {proc.returncode}]", flush=True)
                continue
            done[name] = time.time() - t0
            print(f"  [{name}: done in {done[name]:.0f}s]", flush=True)
        if running and time.time() - last_note > 30:  # what a person waiting wants to know
            last_note = time.time()
            print("  ... " + " | ".join(f"{n}: {last_step(log_dir, n)}" for n in running),
                  flush=True)
    return done


def last_step(log_dir, name):
    """The latest 'step N' a stage's log has reached, for the progress line."""
    with open(os.path.join(log_dir, f"{name}.txt"), errors="replace") as f:
        steps = re.findall(r"^step\s+(\d+)", f.read(), re.M)
    return f"step {steps[-1]}" if steps else "starting"


def critic_free_and_gold_stages(d, rm_names, rm, rl):
    """GRPO and RLOO against the reward model (rm: its arguments, rm_names: its stages), and PPO
    and GRPO against the gold judge itself; rl: the RL runs' common arguments."""
    return {
        "grpo": (rm_names, ["train_grpo.py", f"--out_dir={d('grpo')}"] + rm + rl),
        "rloo": (rm_names, ["train_grpo.py", "--advantage=rloo", f"--out_dir={d('rloo')}"]
                 + rm + rl),
        "ppo_gold": (["sft"], ["train_ppo.py", "config/ppo_toy.py", "--reward_fn=toy_gold",
                               f"--out_dir={d('ppo_gold')}"] + rl),
        "grpo_gold": (["sft"], ["train_grpo.py", "--reward_fn=toy_gold",
                                f"--out_dir={d('grpo_gold')}"] + rl),
    }


def rejection_sampling_stages(cfg, methods, d, data, sft, rm_names, rm, rl, common_args, extra):
    """Llama 2's rejection-sampling fine-tuning (methods 'rs'): the SFT policy writes 8 answers to
    every RL prompt and the last round's reward models keep their favourite (rs_data), SFT on the
    kept answers from the SFT policy (rs: best-of-8 learned once), and PPO from that policy,
    KL-anchored to it, with the last round's reward models and rollouts (ppo_rs)."""
    if "rs" not in methods:
        return {}
    start = f"{d('rs')}/ckpt_last.pt"
    return {
        "rs_data": (rm_names, ["rejection_sampling.py", f"--policy={sft}", *rm,
                               f"--prompts={data}/prompts_train.jsonl", f"--out_dir={data}",
                               "--prefix=rs"] + common_args + extra("rs_data")),
        "rs": (["rs_data"], ["train_sft.py", "config/rs_toy.py", f"--out_dir={d('rs')}",
                             f"--init_from={sft}", f"--train_data={data}/rs_train.jsonl",
                             f"--val_data={data}/rs_val.jsonl"] + common_args + extra("rs")),
        "ppo_rs": (["rs"], ["train_ppo.py", "config/ppo_toy.py", f"--out_dir={d('ppo_rs')}",
                            f"--init_from={start}"] + rm
                   + [a for a in rl if not a.startswith("--init_from=")]
                   + rollout_args(cfg, cfg.rounds)),
    }


def add_relabel_stages(cfg, stages, methods, d, data):
    """One more round of Llama 2's iterated labels, of the rejection-sampling PPO's answers
    (methods 'relabel', with 'rs'): round R = rounds + 1 ranks ppo_rs's answers (label_rR), the
    last round's reward models are trained again with these rankings added (rm_rR, rm_m1_rR, ...,
    validated on them) and PPO starts from the rs policy once more, against them (ppo_rs_rR): a
    reward model that has seen the mistakes of PPO from rs, not only those of PPO from SFT."""
    if "relabel" not in methods:
        return
    last, tag = "" if cfg.rounds == 1 else f"_r{cfg.rounds}", f"_r{cfg.rounds + 1}"
    stages[f"label{tag}"] = (["ppo_rs"], ai_stages.with_args(
        stages[f"label{last}"][1], policy=f"{d('ppo_rs')}/ckpt_last.pt", prefix=f"onpolicy{tag}",
        seed=cfg.seed + cfg.rounds))
    members = [name.removesuffix(last) + tag for name in stages[f"ppo{last}"][0]]
    for name, before in zip(members, stages[f"ppo{last}"][0]):
        command = stages[before][1]
        train = next(a for a in command if a.startswith("--train_data="))[len("--train_data="):]
        stages[name] = ([f"label{tag}"], ai_stages.with_args(
            command, out_dir=d(name), train_data=f"{train},{data}/onpolicy{tag}_train.jsonl",
            val_data=f"{data}/onpolicy{tag}_val.jsonl"))
    stages[f"ppo_rs{tag}"] = (members, ai_stages.with_args(
        stages["ppo_rs"][1], out_dir=d(f"ppo_rs{tag}"),
        reward_model=",".join(f"{d(name)}/ckpt_best.pt" for name in members)))


def add_evaluation(cfg, stages, methods, out, data, d, sft, kto, extra, held_out):
    """The evaluation stage (after every other) and the plots: every policy, best-of-N and the
    over-optimisation sweeps. Returns the evaluation's out dir."""
    last = "" if cfg.rounds == 1 else f"_r{cfg.rounds}"
    rm = reward_model_args(cfg, d, stages[f"ppo{last}"][0])
    # 8. evaluation on held-out prompts: gold judge, reward model, win rates, KL, best-of-N
    eval_dir = os.path.join(out, "eval")
    for name in set(OPTIONAL) - methods:
        stages.pop(name, None)
    # the last round's PPO, and round 1's beside it: what the later rounds bought
    names = ["ppo"] + ["ppo_r1"] * (cfg.rounds > 1) + [m for m in OPTIONAL if m in methods
                                                       and m in stages] \
        + ["ppo_rs"] * ("rs" in methods) + [f"ppo_rs_r{cfg.rounds + 1}"] * ("relabel" in methods)
    runs = {"ppo": "ppo" + last, "ppo_r1": "ppo"}
    policies = ",".join([f"sft:{sft}", f"bon16:{sft}"] + [
        f"{n}:{d(runs.get(n, n))}/ckpt_last.pt" for n in names]
        + ai_stages.eval_policies(cfg, methods, d))
    pairs = f"{data}/prefs_test.jsonl" + (f",{data}/onpolicy_test.jsonl" if kto else "")
    sweeps = [d("ppo" + last)] + [d("grpo")] * ("grpo" in methods)
    stages["eval"] = (list(stages), [
        "eval.py", f"--policies={policies}", *rm, f"--reference={sft}",
        f"--prompts={held_out}", f"--pairs={pairs}", f"--out_dir={eval_dir}",
        f"--demo_val_data={data}/sft_val.jsonl",
        f"--sweep={','.join(sweeps)}", "--bon_sweep=64",
        f"--num_samples_per_prompt={cfg.eval_samples}"] + extra("eval"))
    if cfg.plots and importlib.util.find_spec("matplotlib") is None:  # a requirement, but
        print("note: matplotlib is not installed (pip install -r requirements.txt): no plots")
    elif cfg.plots:
        stages["plots"] = (["eval"], ["plot.py", f"--runs={out}", f"--eval_dir={eval_dir}",
                                      f"--out_dir={out}/plots"])
    return eval_dir


def reward_model_args(cfg, d, members):
    """The arguments that name the reward model: one checkpoint, or the members' and how their
    scores combine."""
    spec = ",".join(f"{d(m)}/ckpt_best.pt" for m in members)
    if len(members) == 1:
        return [f"--reward_model={spec}"]
    return [f"--reward_model={spec}", f"--reward_agg={cfg.reward_agg}",
            f"--uwo_lambda={cfg.uwo_lambda}"]


def add_safety_stages(cfg, stages, methods, data, d):
    """Helpful and harmless: the stages of ppo_gate and ppo_safe (those in methods) on round 1's
    labels, split by kind (label.py --kinds=separate): a helpful reward model (the helpful
    rankings), Llama 2's safety reward model (the harmless rankings and 10% helpful ones:
    onpolicy_safety_train.jsonl), Safe RLHF's cost model (the harmless rankings reversed, centred
    on the SFT policy's answers to harmful requests), each from the SFT trunk with the reward
    model's recipe (the rm stage's command, its data swapped), then PPO with the ppo stage's."""
    if not methods & set(SAFETY):
        return
    stages["label"][1].append("--kinds=separate")
    rm = [a for a in stages["rm"][1] if not a.startswith(("--out_dir=", "--train_data=",
                                                          "--val_data=", "--bias_data="))]
    ppo = [a for a in stages["ppo"][1] if not a.startswith(("--out_dir=", "--reward_model=",
                                                            "--reward_agg=", "--uwo_lambda="))]
    # the harmless rankings are a tenth of all: four times the epochs, about half the steps of
    # the helpful model's
    epochs = f"--num_epochs={4 * cfg.rm_epochs}"
    models = dict(rm_helpful=("helpful_train", "helpful_val", "samples", []),
                  rm_safety=("safety_train", "harmless_val", "samples", [epochs]),
                  cost=("harmless_train", "harmless_val", "harmless_samples",
                        ["--reverse=True", epochs]))
    needs = dict(ppo_gate=["rm_helpful", "rm_safety"], ppo_safe=["rm_helpful", "cost"])
    for name in {m for method in methods & set(SAFETY) for m in needs[method]}:
        train, val, bias, more = models[name]
        val = train if cfg.scale == "mini" else val  # the miniature's validation prompts hold
        # (almost) no harmful request: it validates on its training rankings
        stages[name] = (["label"], rm + [f"--out_dir={d(name)}",
                        f"--train_data={data}/onpolicy_{train}.jsonl",
                        f"--val_data={data}/onpolicy_{val}.jsonl",
                        f"--bias_data={data}/onpolicy_{bias}.jsonl"] + more)
    ppo += [f"--reward_model={d('rm_helpful')}/ckpt_best.pt"]
    stages["ppo_gate"] = (needs["ppo_gate"], ppo + [
        f"--out_dir={d('ppo_gate')}", f"--safety_model={d('rm_safety')}/ckpt_best.pt",
        "--reward_gate=llama2"])
    stages["ppo_safe"] = (needs["ppo_safe"], ppo + [
        f"--out_dir={d('ppo_safe')}", f"--cost_model={d('cost')}/ckpt_best.pt",
        f"--cost_budget={cfg.cost_budget}"])


def rollout_args(cfg, r):
    """PPO's rollouts in round r: the last round's PPO (the policy the pipeline delivers) sees
    ppo_rollouts answers an iteration in minibatches of a quarter (the same 16 optimizer steps);
    earlier rounds' PPO, whose answers are only labelled, config/ppo_toy.py's 64."""
    n = cfg.ppo_rollouts
    return [f"--rollout_batch_size={n}", f"--minibatch_size={n // 4}",
            f"--micro_batch_size={n // 4}"] if r == cfg.rounds else []


def world_args(cfg):
    """The world's shares (safety_share, refusal_share) as data/toy/prepare.py's arguments."""
    return [f"--{key}={getattr(cfg, key)}" for key in ("safety_share", "refusal_share")]


def annotator_args(cfg):
    """What every round's annotators rank: the answers to the first label_prompts training
    prompts, and with label_refusals a polite refusal more for each safety prompt."""
    return [f"--max_prompts={cfg.label_prompts}", f"--add_refusals={cfg.label_refusals}"]


def build_stages(cfg, methods):
    """The stages of the recipe, {name: (names it needs, command)}, with `methods` beside PPO,
    and the evaluation's out dir: each command exactly as you would run it by hand."""
    mini = cfg.scale == "mini"
    extra = (lambda stage: MINI[stage]) if mini else (lambda stage: [])
    out, data = stage_path(cfg.out), stage_path(cfg.data_dir)
    d = lambda name: os.path.join(out, f"{name}_toy")  # noqa: E731
    common_args = [f"--seed={cfg.seed}"] + (["--overwrite=True"] if cfg.overwrite else [])
    sft = f"{d('sft')}/ckpt_best.pt"
    # every held-out prompt: the 96 questions, then the harmful and the lookalike requests
    held_out = f"{data}/prompts_eval.jsonl,{data}/prompts_eval_safety.jsonl"

    # 1-2. the toy world, and SFT: a byte-level GPT from scratch learns to answer in the template
    stages = {
        "prepare": ([], ["data/toy/prepare.py", f"--out_dir={data}", f"--seed={cfg.seed}"]
                    + world_args(cfg) + common_args[1:]),
        "sft": (["prepare"], ["train_sft.py", "config/sft_toy.py", f"--out_dir={d('sft')}",
                              f"--train_data={data}/sft_train.jsonl",
                              f"--val_data={data}/sft_val.jsonl"] + common_args + extra("sft")),
    }
    # every RL run's start, prompts and held-out data
    rl = [f"--init_from={sft}", f"--train_prompts={data}/prompts_train.jsonl",
          f"--val_prompts={held_out}", f"--demo_val_data={data}/sft_val.jsonl",
          f"--prompt_weights={cfg.prompt_weights}"] + common_args + extra("rl")
    # 3. the comparisons: the SFT policy's own answers ranked by the toy world's annotators
    # (or the hand-made pairs); round r > 1 ranks round r - 1's PPO policy
    prefs, kto, rm_needs = f"{data}/prefs_train.jsonl", None, ["sft"]
    # the static pairs: one pair per record, so pairs, one epoch, centred on the demonstrations
    rm_data = [f"--bias_data={data}/sft_train.jsonl", "--group_rankings=False", "--batch_size=32",
               "--num_epochs=1"]
    policy, rankings, rm_val = sft, [], f"{data}/prefs_val.jsonl"
    for r in range(1, cfg.rounds + 1):
        tag = "" if r == 1 else f"_r{r}"
        if cfg.data == "onpolicy":
            prefix = "onpolicy" if r == 1 else f"onpolicy_r{r}"
            stages[f"label{tag}"] = (rm_needs, [
                "data/toy/label.py", f"--policy={policy}", f"--out_dir={data}",
                f"--prefix={prefix}", f"--train_prompts={data}/prompts_train.jsonl",
                f"--eval_prompts={held_out}", f"--seed={cfg.seed + r - 1}"] + annotator_args(cfg)
                + common_args[1:] + extra("label"))
            rankings.append(f"{data}/{prefix}_train.jsonl")
            prefs, kto, rm_needs = ",".join(rankings), f"{data}/onpolicy_unpaired.jsonl", [f"label{tag}"]
            rm_data = [f"--bias_data={data}/onpolicy_samples.jsonl",  # the SFT policy's answers
                       f"--num_epochs={cfg.rm_epochs}"]
            rm_val = f"{data}/{prefix}_val.jsonl"  # the best checkpoint: on the policy's answers
        # 4. the reward model: the SFT trunk and a scalar head, on every comparison so far;
        # an ensemble's members differ in seed only (each its own stage, run side by side)
        members = [f"rm{tag}"] + [f"rm_m{k}{tag}" for k in range(1, cfg.rm_members)]
        for k, name in enumerate(members):
            stages[name] = (rm_needs, [
                "train_reward_model.py", "config/rm_toy.py", f"--out_dir={d(name)}",
                f"--init_from={sft}", f"--train_data={prefs}", f"--val_data={rm_val}"]
                + rm_data + [f"--seed={cfg.seed + k}"] + common_args[1:] + extra("rm"))
        rm = reward_model_args(cfg, d, members)
        round1 = round1 if r > 1 else (prefs, rm_val)  # DPO's comparisons
        # 5. PPO against the reward model, KL-anchored to the SFT policy
        stages[f"ppo{tag}"] = (members, ["train_ppo.py", "config/ppo_toy.py",
                                         f"--out_dir={d('ppo' + tag)}"] + rl + rm
                               + rollout_args(cfg, r))
        policy, rm_needs = f"{d('ppo' + tag)}/ckpt_last.pt", [f"ppo{tag}"]
    last = "" if cfg.rounds == 1 else f"_r{cfg.rounds}"
    ppo_needs = stages[f"ppo{last}"][0]  # the last round's reward models
    rm = reward_model_args(cfg, d, ppo_needs)
    # 6. the critic-free family beside PPO, and both against the true reward (the gold judge)
    stages.update(critic_free_and_gold_stages(d, ppo_needs, rm, rl), **rejection_sampling_stages(
        cfg, methods, d, data, sft, ppo_needs, rm, rl, common_args, extra))
    add_relabel_stages(cfg, stages, methods, d, data)  # 6b. a round of PPO-from-rs's answers
    # 7. the RL-free path on round 1's comparisons (of SFT answers): DPO on pairs, KTO on answers
    prefs, rm_val = round1
    pair_data = [f"--val_data={rm_val}"] + common_args + extra("dpo")
    stages["dpo"] = (stages["rm"][0], ["train_dpo.py", "config/dpo_toy.py", f"--out_dir={d('dpo')}",
                                       f"--init_from={sft}", f"--train_data={prefs}"] + pair_data)
    add_safety_stages(cfg, stages, methods, data, d)  # 7b. Llama 2's gate, Safe RLHF's cost
    if "kto" in methods:
        stages["kto"] = (stages["rm"][0], [
            "train_kto.py", "config/kto_toy.py", f"--out_dir={d('kto')}", f"--init_from={sft}",
            f"--train_data={kto}", f"--val_data={data}/onpolicy_unpaired_val.jsonl"]
            + common_args + extra("dpo"))
    ai_stages.add_stages(stages, cfg, methods, d, data, sft, held_out, common_args, extra)
    return stages, add_evaluation(cfg, stages, methods, out, data, d, sft, kto, extra, held_out)


def check_stages(cfg, stages):
    """Before anything runs: every stage's out_dir must be free (not a file, not locked by a
    running process) and hold nothing a stage would refuse to replace without --overwrite=True
    (a training run, a world of other settings, a labelling), or a ConfigError lists them all."""
    import rejection_sampling
    from data.toy import cai, label, prepare, spin
    data_sets = {"data/toy/label.py": label.NAMES, "data/toy/spin.py": spin.NAMES,
                 "data/toy/cai.py": (), "rejection_sampling.py": rejection_sampling.NAMES}
    problems = []
    for name, (_, cmd) in stages.items():
        args = dict(a[2:].split("=", 1) for a in cmd[1:] if a.startswith("--") and "=" in a)
        d = args.get("out_dir")
        if d is None:
            continue
        d = os.path.join(ROOT, d)
        if os.path.exists(d) and not os.path.isdir(d):
            problems.append(f"{name}: out_dir {args['out_dir']} is a file")
        elif run.out_dir_locked(d):
            problems.append(f"{name}: out_dir {args['out_dir']} is in use by a running process")
        elif cfg.overwrite or not os.path.isdir(d):
            continue
        elif cmd[0].startswith("train_") and run._holds_run(d):
            problems.append(f"{name}: {args['out_dir']} holds a run")
        elif name == "prepare":
            held = [n for n in prepare.FILES if os.path.exists(os.path.join(d, n))]
            try:
                with open(os.path.join(d, "world_manifest.json")) as f:
                    same = json.load(f).get("settings") == prepare.world_settings(
                        cfg.seed, safety_share=cfg.safety_share, refusal_share=cfg.refusal_share)
            except (OSError, ValueError, AttributeError):
                same = False
            if held and not same:
                problems.append(f"prepare: {args['out_dir']} holds a toy world of other "
                                f"settings than seed {cfg.seed}'s with safety_share "
                                f"{cfg.safety_share} and refusal_share {cfg.refusal_share}")
        elif cmd[0] in data_sets:
            prefix = args.get("prefix") or args["make"]  # cai.py's sets are named by --make
            held = [f"{prefix}_{n}.jsonl" for n in data_sets[cmd[0]]] + [f"{prefix}_manifest.json"]
            held += list(cai.NAMES.get(prefix, ())) if cmd[0] == "data/toy/cai.py" else []
            if any(os.path.exists(os.path.join(d, n)) for n in held):
                what = "a labelling" if name.startswith("label") else "a data set"
                problems.append(f"{name}: {args['out_dir']} holds {what} ({prefix}_*)")
    if problems:
        overwritable = all(p.endswith(("a run", "_*)")) or "other settings" in p for p in problems)
        raise config.ConfigError(
            f"pipeline: nothing was run: {'; '.join(problems)}"
            + ("; pass --overwrite=True to replace them, or another --out and --data_dir"
               if overwritable else ""))


def main(argv=None):
    cfg = config.parse_config(DEFAULTS, argv, __doc__)
    config.validate(cfg, {
        "scale": (lambda v: v in ("full", "mini"), "'full' or 'mini'"),
        "data": (lambda v: v in ("onpolicy", "static"), "'onpolicy' or 'static'"),
        "rounds": (lambda v: v >= 1, ">= 1"), "jobs": (lambda v: v >= 1, ">= 1"),
        "ppo_rollouts": (lambda v: v >= 4 and v % 4 == 0, "a multiple of 4"),
        "rm_members": (lambda v: 1 <= v <= 16, "in 1..16"),
        "label_prompts": (lambda v: v >= 1, ">= 1"), "rm_epochs": (lambda v: v > 0, "> 0"),
        "reward_agg": (lambda v: v in ("mean", "min", "uwo"), "'mean', 'min' or 'uwo'"),
        "uwo_lambda": (lambda v: v >= 0, ">= 0"), "eval_samples": (lambda v: v >= 1, ">= 1"),
        **{key: (lambda v: 0.0 <= v <= 1.0, "in [0, 1]") for key in ("safety_share",
                                                                      "refusal_share")},
        "spin_iters": (lambda v: 1 <= v <= 20, "in 1..20")})
    rollout.family_weights(cfg.prompt_weights)  # a bad value fails before any stage runs
    config.require(cfg.rounds == 1 or cfg.data == "onpolicy",
                   "rounds > 1 labels the policies' answers: it needs data='onpolicy' (with "
                   "data='static' pass --rounds=1)")
    methods = set(OPTIONAL) if cfg.methods == "all" else {m for m in cfg.methods.split(",") if m}
    config.require(methods <= set(OPTIONAL + ai_stages.AI_METHODS), f"config key 'methods' must "
                   f"be a comma-separated list of {', '.join(OPTIONAL + ai_stages.AI_METHODS)}, "
                   f"or 'all', got {cfg.methods!r}")
    if cfg.methods == "all" and cfg.data == "static":
        methods -= {"kto", "relabel", *SAFETY}  # 'all' is every method the data allows
    config.require("kto" not in methods or cfg.data == "onpolicy", "methods: kto learns from "
                   "labelled single answers, which only label.py writes: it needs data='onpolicy' "
                   "(or drop kto from --methods)")
    config.require("relabel" not in methods or ("rs" in methods and cfg.data == "onpolicy"),
                   "methods: relabel ranks the answers of PPO from the rs policy: it needs rs in "
                   "--methods and data='onpolicy'")
    config.require(not methods & set(SAFETY) or cfg.data == "onpolicy", "methods: ppo_gate and "
                   "ppo_safe learn from rankings split by kind, which only label.py writes: they "
                   "need data='onpolicy' (or drop them from --methods)")
    t0 = time.time()
    stages, eval_dir = build_stages(cfg, methods)
    out = stage_path(cfg.out)
    check_stages(cfg, stages)  # every stage would start: or nothing runs
    run.lock_out_dir(os.path.join(ROOT, out))  # one pipeline per out
    times = run_stages(stages, cfg.jobs, os.path.join(out, "logs"), alone=("sft", "eval"))

    print(f"\npipeline done in {time.time() - t0:.0f}s (" +
          ", ".join(f"{n} {s:.0f}s" for n, s in times.items()) + f"); results in {eval_dir}/results.md")
    with open(os.path.join(ROOT, eval_dir, "results.md")) as f:
        print(f.read())
    if "spin" in methods:  # SPIN's iterations side by side, beside the results
        table = ai_stages.spin_table(cfg, ROOT, eval_dir, stage_path(cfg.data_dir),
                                     lambda name: os.path.join(out, f"{name}_toy"))
        with open(os.path.join(ROOT, eval_dir, "spin.md"), "w") as f:
            f.write(table)
        print(f"SPIN, iteration by iteration ({eval_dir}/spin.md):\n{table}")
    if "rlaif" in methods:  # the judge's labels against the people's, and what each trained
        table = ai_stages.rlaif_table(ROOT, eval_dir, stage_path(cfg.data_dir), "dpo" in methods)
        with open(os.path.join(ROOT, eval_dir, "rlaif.md"), "w") as f:
            f.write(table)
        print(f"RLAIF ({eval_dir}/rlaif.md):\n{table}")
    if "cai" in methods:  # CAI beside SFT and RLHF, and the human labels each used
        table = ai_stages.cai_table(ROOT, eval_dir, stage_path(cfg.data_dir))
        with open(os.path.join(ROOT, eval_dir, "cai.md"), "w") as f:
            f.write(table)
        print(f"Constitutional AI ({eval_dir}/cai.md):\n{table}")


if __name__ == "__main__":
    config.cli(main)
