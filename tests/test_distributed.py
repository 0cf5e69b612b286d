"""
Data parallelism under torchrun, on CPU with the gloo backend. Two processes must train exactly as
one process does with the same global batch (SFT, DPO, the reward model: same losses at every step,
same final weights), PPO's two ranks must hold one model and one KL coefficient, only rank 0
may write files, and the collective helpers (the statistics PPO whitens with, the stop decision)
must give every rank the numbers of the whole global batch.
"""

import json
import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

import runtime
import checkpoint
import run
import ops
import train_dpo
import train_ppo
import train_reward_model
import train_sft
from data import loader
from data.toy.prepare import prepare, write_jsonl
from model import GPT, GPTConfig, ScalarModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available")

TIMEOUT = 240  # seconds for one 2-process run: a hang fails the test instead of blocking CI
MODEL = ["--n_layer=1", "--n_head=2", "--n_embd=32"]


def torchrun(script, args, nproc=2):
    """Run a script under torchrun on the CPU; returns its stdout + stderr. A run still going
    after TIMEOUT seconds (a collective that one rank never reaches) is killed, workers included."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1",  # the scripts are flat modules: make them importable
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", script, *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its workers: the session's group
        out, _ = proc.communicate()
        pytest.fail(f"{os.path.basename(script)} hung under torchrun:\n{out[-3000:]}")
    assert proc.returncode == 0, f"{os.path.basename(script)} failed:\n{out[-3000:]}"
    return out


def read_log(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def series(log, key):
    """[(step, value)] of the log lines holding key."""
    return [(r["step"], r[key]) for r in log if key in r]


def assert_same_series(a, b, key, tol=1e-5):
    sa, sb = series(a, key), series(b, key)
    assert [s for s, _ in sa] == [s for s, _ in sb] and sa, key
    diff = max(abs(x - y) for (_, x), (_, y) in zip(sa, sb))
    assert diff <= tol, f"{key}: max difference {diff:.3g} between 1 and 2 processes"


def assert_same_weights(dir_a, dir_b, lr, steps, betas=(0.9, 0.95), skip=()):
    """The final weights agree to what Adam makes of float noise: the noise in a near-zero
    gradient becomes a change of up to lr per step (conftest.adam_noise_tolerance), hence the
    tests' small learning rates."""
    from conftest import assert_weights_within_adam_noise
    a = checkpoint.load_checkpoint(os.path.join(dir_a, "ckpt_last.pt"))["model"]
    b = checkpoint.load_checkpoint(os.path.join(dir_b, "ckpt_last.pt"))["model"]
    assert_weights_within_adam_noise(a, b, lr, steps, betas, skip)


def assert_written_once(out_dir, printed, files):
    """Rank 0 alone writes: exactly these files, one log line per step, one printed line."""
    assert sorted(n for n in os.listdir(out_dir) if n != ".lock") == sorted(files)
    log = read_log(out_dir)
    train_steps = [r["step"] for r in log if "loss" in r or "score" in r]
    assert train_steps and len(train_steps) == len(set(train_steps)), train_steps
    assert printed.count("step     1 |") == 1, printed[-2000:]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Slices of the toy world's files, a tiny random 'SFT' policy and a tiny reward model."""
    root = tmp_path_factory.mktemp("ddp")
    prepare(str(root / "toy"), seed=1337)
    sizes = dict(sft_train=64, sft_val=16, prefs_train=64, prefs_val=16, prompts_train=32,
                 prompts_eval=8)
    for name, n in sizes.items():
        with open(root / "toy" / f"{name}.jsonl") as f:
            rows = [json.loads(line) for line in f][:n]
        write_jsonl(root / f"{name}.jsonl", rows)
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=96, vocab_size=257, n_layer=1, n_head=2, n_embd=32)
    policy = GPT(cfg)
    with torch.no_grad():  # make EOS likely, so PPO's responses end at different lengths
        policy.transformer.wte.weight[256] *= 8
    checkpoint.save_checkpoint(str(root / "sft.pt"), checkpoint.make_checkpoint(
        policy, "policy", "sft", "byte", SimpleNamespace(), 0))
    checkpoint.save_checkpoint(str(root / "rm.pt"), checkpoint.make_checkpoint(
        ScalarModel(cfg), "scalar", "rm", "byte", SimpleNamespace(), 0))
    return root

# -----------------------------------------------------------------------------
# the global batch does not depend on how it is split over ranks


@pytest.mark.unit
def test_global_batch_is_the_union_of_the_ranks_rows():
    # with length bucketing, and n not a multiple of the global batch (batches straddle epochs)
    n, B, W, grad_accum = 50, 3, 2, 2
    lengths = [(i * 37) % 23 for i in range(n)]
    for lens in (None, lengths):
        for step in range(12):
            for micro in range(grad_accum):
                s = step * grad_accum + micro  # the scripts' micro-step counter
                ranks = [loader.batch_indices(n, B, s, 7, r, W, lens) for r in range(W)]
                assert sum(ranks, []) == loader.batch_indices(n, B * W, s, 7, lengths=lens)

# -----------------------------------------------------------------------------
# the collective helpers, two gloo processes each holding half of a batch

WORKER = r'''
import json, os, signal, sys
import torch
import torch.distributed as dist
import ops, run, runtime, train_ppo

dist.init_process_group("gloo")
rank = dist.get_rank()
g = torch.Generator().manual_seed(0)
x, v = torch.randn(2, 4, 6, generator=g), torch.randn(2, 4, 6, generator=g)
x[1] += 2.0  # rank 1's half sits higher: its own statistics are not the global ones
lengths = torch.tensor([[6, 1, 3, 5], [2, 2, 4, 6]])  # valid tokens per row; rank r has row r
mask = (torch.arange(6) < lengths[..., None]).float()
x, v, mask = x[rank], v[rank], mask[rank]  # (4, 6) each: this rank's half
mean, var = ops.global_masked_mean_var(x, mask, unbiased=True)
out = dict(mean=mean.item(), var=var.item(), whiten=train_ppo.whiten(x, mask).tolist(),
           whiten_rewards=train_ppo.whiten(x, mask, shift_mean=False).tolist(),
           explained_var=train_ppo.explained_variance(v, x, mask))
# a stop signal that reaches rank 1 alone stops both ranks
run.install_stop_handlers()
out["stop_before"] = run.stop_requested()
if rank == 1:
    os.kill(os.getpid(), signal.SIGTERM)
out["stop_after"] = run.stop_requested()
out["max"] = runtime.all_reduce_max(float(rank))
out["sum"] = runtime.all_reduce_sum(torch.tensor([1.0, rank])).tolist()
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
    json.dump(out, f)
dist.destroy_process_group()
'''


@pytest.mark.slow
def test_collective_helpers_see_the_whole_global_batch(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    torchrun(str(script), [str(tmp_path)])
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # the same computation in one process, on the whole batch
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(2, 4, 6, generator=g), torch.randn(2, 4, 6, generator=g)
    x[1] += 2.0
    lengths = torch.tensor([[6, 1, 3, 5], [2, 2, 4, 6]])
    mask = (torch.arange(6) < lengths[..., None]).float()
    X, V, M = x.reshape(8, 6), v.reshape(8, 6), mask.reshape(8, 6)
    valid = X[M.bool()].double()
    assert ranks[0]["mean"] == ranks[1]["mean"] == pytest.approx(valid.mean().item(), abs=1e-6)
    assert ranks[0]["var"] == ranks[1]["var"] == pytest.approx(valid.var().item(), abs=1e-6)
    # the statistics of one rank's half alone are far from those: the test would see them
    half = x[0][mask[0].bool()].double()
    assert abs(half.mean().item() - valid.mean().item()) > 0.5
    for key, shift in (("whiten", True), ("whiten_rewards", False)):
        whole = train_ppo.whiten(X, M, shift_mean=shift)
        got = torch.tensor(ranks[0][key] + ranks[1][key])  # rank 0's rows, then rank 1's
        torch.testing.assert_close(got, whole, atol=1e-6, rtol=0)
    ev = train_ppo.explained_variance(V, X, M)
    assert ranks[0]["explained_var"] == ranks[1]["explained_var"] == pytest.approx(ev, abs=1e-6)
    for r in ranks:
        assert r["stop_before"] is False and r["stop_after"] is True
        assert r["max"] == 1.0 and r["sum"] == [2.0, 1.0]


@pytest.mark.unit
def test_collective_helpers_are_plain_in_one_process():
    # no process group: the numbers are masked_mean's, bitwise, and nothing is reduced
    g = torch.Generator().manual_seed(1)
    x, mask = torch.randn(3, 5, generator=g), (torch.rand(3, 5, generator=g) > 0.3).float()
    mean, var = ops.global_masked_mean_var(x, mask)
    assert torch.equal(mean, ops.masked_mean(x, mask))
    assert torch.equal(var, ops.masked_mean((x - ops.masked_mean(x, mask)) ** 2, mask))
    n = mask.sum()
    _, unbiased = ops.global_masked_mean_var(x, mask, unbiased=True)
    assert torch.equal(unbiased, var * n / (n - 1))
    assert runtime.all_reduce_sum(2.5) == 2.5 and runtime.all_reduce_max(-1.0) == -1.0

# -----------------------------------------------------------------------------
# two processes train exactly like one with the same global batch


@pytest.mark.slow
def test_sft_two_processes_equal_one(world, tmp_path):
    # toy answers differ in length, so the ranks and micro-batches hold different numbers of
    # trained tokens: averaging per-rank token means would not give the global token mean
    args = [f"--train_data={world / 'sft_train.jsonl'}", f"--val_data={world / 'sft_val.jsonl'}",
            "--device=cpu", "--dtype=float32", "--block_size=96", "--max_iters=4",
            "--warmup_iters=1", "--lr=1e-3", "--log_interval=1", "--eval_interval=2",
            "--eval_examples=-1", "--num_samples=0", *MODEL]
    two = tmp_path / "two"
    printed = torchrun(os.path.join(ROOT, "train_sft.py"),
                       [f"--out_dir={two}", "--batch_size=2", "--grad_accum=2", *args])
    assert_written_once(two, printed, ["ckpt_best.pt", "ckpt_last.pt", "log.jsonl"])
    # one process, the same 8 rows per step: as 2 micro-batches of 4, and as one batch of 8
    for name, batch in (("one_accum", ["--batch_size=4", "--grad_accum=2"]),
                        ("one_batch", ["--batch_size=8", "--grad_accum=1"])):
        train_sft.main([f"--out_dir={tmp_path / name}", *batch, *args])
        for key in ("loss", "val_loss"):
            assert_same_series(read_log(tmp_path / name), read_log(two), key)
        assert_same_weights(tmp_path / name, two, lr=1e-3, steps=4)


@pytest.mark.slow
def test_dpo_two_processes_equal_one(world, tmp_path):
    # with precomputed reference log-probs: the ranks share that pass and all-reduce the rows
    args = [f"--init_from={world / 'sft.pt'}", f"--train_data={world / 'prefs_train.jsonl'}",
            f"--val_data={world / 'prefs_val.jsonl'}", "--device=cpu", "--dtype=float32",
            "--block_size=96", "--max_iters=4", "--warmup_iters=0", "--lr=1e-4",
            "--log_interval=1", "--eval_interval=2", "--eval_examples=-1", "--rpo_alpha=0.5",
            "--precompute_ref_logps=True"]
    two = tmp_path / "two"
    printed = torchrun(os.path.join(ROOT, "train_dpo.py"),
                       [f"--out_dir={two}", "--batch_size=2", "--grad_accum=2", *args])
    assert_written_once(two, printed, ["ckpt_best.pt", "ckpt_last.pt", "log.jsonl", "ref_logps.pt"])
    for name, batch in (("one_accum", ["--batch_size=4", "--grad_accum=2"]),
                        ("one_batch", ["--batch_size=8", "--grad_accum=1"])):
        train_dpo.main([f"--out_dir={tmp_path / name}", *batch, *args])
        one_log, two_log = read_log(tmp_path / name), read_log(two)
        for key in ("loss", "margin", "val_loss"):
            assert_same_series(one_log, two_log, key)
        # at step 1 the policy is the reference: every pair's margin is float noise of order
        # 1e-7 and its accuracy a coin toss on that noise, so accuracy is compared from step 2
        assert all(abs(m) < 1e-5 for s, m in series(one_log, "margin") if s == 1)
        later = [[r for r in log if r["step"] > 1] for log in (one_log, two_log)]
        assert_same_series(*later, "accuracy")
        assert_same_weights(tmp_path / name, two, lr=1e-4, steps=4)


@pytest.mark.slow
def test_reward_model_two_processes_finish_and_equal_one(world, tmp_path):
    args = [f"--init_from={world / 'sft.pt'}", f"--train_data={world / 'prefs_train.jsonl'}",
            f"--val_data={world / 'prefs_val.jsonl'}", f"--bias_data={world / 'sft_train.jsonl'}",
            "--device=cpu", "--dtype=float32", "--block_size=96", "--max_iters=4",
            "--warmup_iters=0", "--log_interval=1", "--eval_interval=2", *MODEL]
    two = tmp_path / "two"
    printed = torchrun(os.path.join(ROOT, "train_reward_model.py"),
                       [f"--out_dir={two}", "--batch_size=4", *args])
    assert_written_once(two, printed, ["ckpt_best.pt", "ckpt_last.pt", "log.jsonl"])
    ckpt = checkpoint.load_checkpoint(str(two / "ckpt_last.pt"), expect_kind="scalar")
    assert ckpt["step"] == 4 and ckpt["reward_bias"] != 0.0  # normalised once, on rank 0
    one = tmp_path / "one"
    train_reward_model.main([f"--out_dir={one}", "--batch_size=8", *args])
    for key in ("loss", "accuracy", "margin", "val_loss", "val_accuracy", "val_margin"):
        assert_same_series(read_log(one), read_log(two), key)
    # the Bradley-Terry loss only sees score differences: the weights that shift every score
    # alike (the head's bias, the final LayerNorm's bias along the head) get a gradient of float
    # noise, which Adam scales to a full lr-sized step, so they (and the absolute scores, and
    # reward_bias, a mean score computed after training) differ between any two summation orders
    rm = train_reward_model.DEFAULTS
    assert_same_weights(one, two, lr=rm["lr"], steps=4, betas=(rm["beta1"], rm["beta2"]),
                        skip=("reward_bias",))

@pytest.mark.slow
def test_reward_model_rankings_of_different_sizes_two_processes_equal_one(world, tmp_path):
    # whole rankings of 10 pairs and 1 pair: a rank's mean would weigh the lone pair as much as
    # the ten; weighted by the all-reduced pair count, 2 processes = 1 process = 2 micro-batches
    from test_reward_model import UNEVEN_RANKINGS
    rows = [UNEVEN_RANKINGS[i % 2] for i in range(8)]  # every global batch: one of each
    data = write_jsonl(tmp_path / "rankings.jsonl", rows)
    args = [f"--init_from={world / 'sft.pt'}", f"--train_data={data}",
            f"--val_data={world / 'prefs_val.jsonl'}", f"--bias_data={world / 'sft_train.jsonl'}",
            "--device=cpu", "--dtype=float32", "--block_size=96", "--max_iters=3",
            "--warmup_iters=0", "--lr=1e-4", "--log_interval=1", "--eval_interval=3",
            "--length_buckets=False", "--group_rankings=True"]
    two = tmp_path / "two"
    torchrun(os.path.join(ROOT, "train_reward_model.py"), [f"--out_dir={two}", "--batch_size=1", *args])
    for name, batch in (("one_accum", ["--batch_size=1", "--grad_accum=2"]),
                        ("one_batch", ["--batch_size=2", "--grad_accum=1"])):
        train_reward_model.main([f"--out_dir={tmp_path / name}", *batch, *args])
        for key in ("loss", "margin"):
            assert_same_series(read_log(tmp_path / name), read_log(two), key)


# -----------------------------------------------------------------------------
# PPO: each rank rolls out its own prompts; the decisions are taken on global numbers


PPO_WORKER = r"""
import json, os, sys
import torch
import train_ppo

# spies: what every rank holds at each update and decides at each iteration
updates, controller = [], []
clip_grad_norm = torch.nn.utils.clip_grad_norm_
adaptive_kl_coef = train_ppo.adaptive_kl_coef


def spy_clip(params, max_norm):
    params = list(params)
    updates.append([sum(p.detach().double().sum().item() for p in params),
                    sum(p.grad.double().sum().item() for p in params if p.grad is not None)])
    return clip_grad_norm(params, max_norm)


def spy_controller(*args):
    controller.append(list(args) + [adaptive_kl_coef(*args)])
    return controller[-1][-1]


torch.nn.utils.clip_grad_norm_ = spy_clip
train_ppo.adaptive_kl_coef = spy_controller
train_ppo.main(sys.argv[2:])
with open(os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.json"), "w") as f:
    json.dump(dict(updates=updates, controller=controller), f)
"""


@pytest.mark.slow
def test_ppo_two_processes_train_one_model_with_one_kl_coefficient(world, tmp_path):
    # shared_critic: a fresh value head, drawn from each rank's own seed unless rank 0's is
    # broadcast; whitened rewards and advantages, and the adaptive KL controller
    B, target, horizon = 4, 0.05, 40
    script, out = tmp_path / "ppo_worker.py", tmp_path / "two"
    script.write_text(PPO_WORKER)
    printed = torchrun(str(script), [str(tmp_path),
        f"--out_dir={out}", f"--init_from={world / 'sft.pt'}", f"--reward_model={world / 'rm.pt'}",
        f"--train_prompts={world / 'prompts_train.jsonl'}",
        f"--val_prompts={world / 'prompts_eval.jsonl'}", f"--demo_val_data={world / 'sft_val.jsonl'}",
        "--device=cpu", "--dtype=float32",
        "--block_size=96", f"--rollout_batch_size={B}", "--minibatch_size=2",
        "--micro_batch_size=2", "--max_new_tokens=8", "--num_iterations=2", "--max_iters=3",
        "--lr=3e-3", "--critic_lr=3e-3", "--shared_critic=True", "--adaptive_kl=True",
        f"--target_kl={target}", f"--kl_horizon={horizon}", "--whiten_rewards=True",
        "--eval_interval=2", "--eval_examples=8", "--sample_interval=100", "--save_every=3",
        "--gold_judge=toy"])
    assert_written_once(out, printed, ["ckpt_best.pt", "ckpt_iter3.pt", "ckpt_last.pt",
                                       "log.jsonl", "tokens.jsonl"])
    ckpt = checkpoint.load_checkpoint(str(out / "ckpt_last.pt"), expect_kind="policy")
    assert (ckpt["stage"], ckpt["step"]) == ("ppo", 3)
    # both ranks hold the same weights and the same averaged gradients at every update (policy,
    # then value head), and feed the controller the same KL: 3 iterations x 2 epochs x 2 minibatches
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert len(ranks[0]["updates"]) == 2 * 3 * 2 * 2
    assert ranks[0] == ranks[1]
    # the controller saw the logged KL (the mean over both ranks) and 2 * B responses
    log = [r for r in read_log(out) if "score" in r]
    assert [c[1] for c in ranks[0]["controller"]] == [r["kl"] for r in log]
    assert all(c[4] == 2 * B for c in ranks[0]["controller"])
    assert [c[0] for c in ranks[0]["controller"]] == [r["beta"] for r in log]
    assert ranks[0]["controller"][-1][-1] == ckpt["beta"] != log[0]["beta"]


GRPO_WORKER = PPO_WORKER.replace("import train_ppo", "import train_grpo, train_ppo").replace(
    "train_ppo.main(sys.argv[2:])", "train_grpo.main(sys.argv[2:])")


@pytest.mark.slow
@pytest.mark.parametrize("advantage", ["grpo", "reinforce_pp"])
def test_grpo_two_processes_train_one_model(world, tmp_path, advantage):
    # group advantages per rank, REINFORCE++'s batch std over both ranks, GRPO's sequence-mean
    # aggregation with global counts: the two ranks must take identical steps
    script, out = tmp_path / "grpo_worker.py", tmp_path / "two"
    script.write_text(GRPO_WORKER)
    printed = torchrun(str(script), [str(tmp_path),
        f"--out_dir={out}", f"--init_from={world / 'sft.pt'}", f"--reward_model={world / 'rm.pt'}",
        f"--train_prompts={world / 'prompts_train.jsonl'}",
        f"--val_prompts={world / 'prompts_eval.jsonl'}", f"--demo_val_data={world / 'sft_val.jsonl'}",
        "--device=cpu", "--dtype=float32",
        "--block_size=96", "--group_size=4", "--rollout_batch_size=8", "--minibatch_size=8",
        "--micro_batch_size=4", "--max_new_tokens=8", "--num_iterations=2", "--max_iters=2",
        "--lr=3e-3", f"--advantage={advantage}", "--eval_interval=2", "--eval_examples=8",
        "--sample_interval=100", "--save_every=0", "--missing_eos_mode=", "--gold_judge=toy"])
    assert_written_once(out, printed, ["ckpt_best.pt", "ckpt_last.pt", "log.jsonl",
                                       "tokens.jsonl"])
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert len(ranks[0]["updates"]) == 2 * 2  # 2 iterations x 2 passes of one minibatch
    assert ranks[0] == ranks[1]
