"""
Plumbing: the skeleton of a training run, once. The process (runtime.init_runtime), out_dir (its
lock, the resume point, an --overwrite that loses nothing until the new run has proved itself),
the JSONL log, checkpoints (checked finite, written atomically), stop signals and shutdown. The
loop stays in the script: nothing here calls back into it.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import time
from contextlib import contextmanager
from types import SimpleNamespace

import torch.distributed as dist

from checkpoint import (check_finite_weights, load_checkpoint, load_optimizer_state,
                        model_from_checkpoint, require_keys, save_checkpoint, set_rng_state)
from config import ConfigError, UserError, os_error
from runtime import all_reduce_max, init_runtime, print0

try:
    import fcntl  # POSIX file locks
except ImportError:  # Windows: msvcrt's byte-range locks instead
    fcntl = None

# -----------------------------------------------------------------------------
# the run skeleton: out_dir, lock, resume, log, checkpoints, stop signals, shutdown

RUN_FILES = re.compile(r"(ckpt_.*\.pt|.*\.jsonl|ref_logps.*\.pt)$")  # what a run writes


def _holds_run(d):
    return os.path.isdir(d) and any(RUN_FILES.match(n) for n in os.listdir(d))


def _move_files(src, dst):
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        os.replace(os.path.join(src, name), os.path.join(dst, name))


def _not_hidden(name):
    return not name.startswith(".")


def _finish_swap(out_dir, staging=".staging", belongs=_not_hidden):
    """
    Complete (or undo) a swap a killed process left half done, for the set of files in out_dir
    that `belongs` (a run: every file not hidden) and its staging folder. The swap has three
    phases, and the folder names say which one a kill interrupted:
      {staging} alone           a new set that is not complete yet (or has not proved itself):
                                it goes, the old set stays;
      .replacing{suffix}        the new set is complete, the old files are moving aside: the
                                rest of them follow, then the folder becomes .replaced{suffix};
      .replaced{suffix}         the old set is aside: the new files come in, the old ones go.
    ({suffix}: what follows '.staging' in the staging folder's name, e.g. '-onpolicy'.)
    """
    suffix = staging[len(".staging"):]
    new = os.path.join(out_dir, staging)
    replacing = os.path.join(out_dir, ".replacing" + suffix)
    replaced = os.path.join(out_dir, ".replaced" + suffix)
    if os.path.isdir(replacing):
        for name in os.listdir(out_dir):
            if belongs(name):
                os.replace(os.path.join(out_dir, name), os.path.join(replacing, name))
        os.replace(replacing, replaced)
    if os.path.isdir(replaced):
        if os.path.isdir(new):
            _move_files(new, out_dir)
        shutil.rmtree(replaced)
    if os.path.isdir(new):
        shutil.rmtree(new)


def swap_in(out_dir, staging=".staging", belongs=_not_hidden):
    """Replace the files of out_dir that `belongs` by the complete set in out_dir/{staging}, so
    that a kill at any moment leaves the old set or the new one (completed by _finish_swap at the
    next start), never a mix."""
    os.makedirs(os.path.join(out_dir, ".replacing" + staging[len(".staging"):]))
    _finish_swap(out_dir, staging, belongs)


# the config keys a resumed run may change: how long it runs, how it reports, where and how fast
# it computes (grad_checkpoint recomputes the same gradients; fsdp shards the same model, and its
# checkpoints are the one-process format). Every other key defines the run (its loss, data, model, optimizer, seed ...), and a
# --resume=True that changes one is refused: it would continue these weights as another run.
RESUME_MAY_CHANGE = {
    "resume", "overwrite", "out_dir", "max_iters", "stop_iter", "log_interval", "eval_interval",
    "ckpt_interval", "save_every", "sample_interval", "num_samples", "sample_tokens",
    "sample_temperature", "device", "dtype", "compile", "micro_batch_size",
    "precompute_ref_logps", "gold_judge", "demo_val_data", "demo_val_examples",
    "grad_checkpoint", "fsdp"}


def _same_path(a, b):
    """Two config values naming the same file(s): equal strings, one real path, or (a relative
    path stored from another working directory that does not resolve here) the same file name."""
    if not (isinstance(a, str) and isinstance(b, str)) or a.count(",") != b.count(","):
        return False
    for x, y in zip(a.split(","), b.split(",")):
        if x == y or os.path.realpath(x) == os.path.realpath(y):
            continue
        if not os.path.isabs(x) and not os.path.exists(x) and os.path.basename(x) == os.path.basename(y):
            continue
        return False
    return True


def check_same_run(stored, cfg, path, world_sizes=(None, None)):
    """Refuse to resume the run saved at path under a config that changes what the run is: one
    line naming the differing keys and both values. Keys missing on either side (a checkpoint of
    an older version) are not compared. batch_size and grad_accum may change together when the
    step's global batch, batch_size x grad_accum x processes (world_sizes: the run's, now's),
    stays the same: another split of the same step (a sharded run resumed in one process)."""
    if not isinstance(stored, dict):
        return
    new = vars(cfg)
    may_change = set(RESUME_MAY_CHANGE)
    if None not in world_sizes and all(k in stored and k in new for k in ("batch_size", "grad_accum")):
        old_global = stored["batch_size"] * stored["grad_accum"] * world_sizes[0]
        if old_global == new["batch_size"] * new["grad_accum"] * world_sizes[1]:
            may_change |= {"batch_size", "grad_accum"}
    differ = [k for k in new if k in stored and k not in may_change
              and stored[k] != new[k] and not _same_path(stored[k], new[k])]
    if differ:
        changes = ", ".join(f"{k}={stored[k]!r} -> {new[k]!r}" for k in differ[:6])
        raise ConfigError(f"{path}: --resume=True with another config ({changes}): these keys "
                          f"define the run, so it cannot continue as it was; resume with its "
                          f"values, or start a new run (another out_dir, or --overwrite=True)")


_held_locks = {}  # out_dir -> open lock file of this process


def lock_out_dir(out_dir):
    """
    An exclusive lock on out_dir (flock on out_dir/.lock) for the life of the run: a second run
    started on the same out_dir fails at once. The kernel drops the lock when its process dies,
    so a killed run never blocks the resume. (A lock this process still holds from an earlier
    run that raised is taken over: one process runs one run at a time.)
    """
    try:
        os.makedirs(out_dir, exist_ok=True)
        key = os.path.realpath(out_dir)
        if key in _held_locks:
            _held_locks.pop(key).close()
        f = open(os.path.join(out_dir, ".lock"), "a+")
    except OSError as e:
        raise ConfigError(f"out_dir {out_dir!r} is not writable: {e}") from None
    try:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            import msvcrt
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
    except OSError:
        f.close()
        raise ConfigError(f"out_dir {out_dir!r} is in use by another run (it holds the lock "
                          f"{os.path.join(out_dir, '.lock')}); wait for it, or use another "
                          f"out_dir") from None
    _held_locks[key] = f
    return f


def prepare_out_dir(out_dir, resume, overwrite=False):
    """
    Where this run writes, and the checkpoint it resumes from (or None). A fresh out_dir is
    written directly. --resume=True continues the run in out_dir (ckpt_last.pt). An out_dir
    that holds a run needs --resume=True or --overwrite=True; with --overwrite=True the new run
    is built beside the old one in out_dir/.staging and replaces it only when its first
    checkpoint after a training step is written (Run.save): a new run that fails before
    that leaves the old one as it was. Returns (write_dir, resume_path).
    """
    _finish_swap(out_dir)
    last = os.path.join(out_dir, "ckpt_last.pt")
    if resume:
        if not os.path.isfile(last):
            raise ConfigError(f"--resume=True but {last} does not exist")
        for name in os.listdir(out_dir):  # half-written temp files of a killed run
            if ".tmp." in name:
                os.remove(os.path.join(out_dir, name))
        return out_dir, last
    if not _holds_run(out_dir):
        return out_dir, None
    if not overwrite:
        what = "a run" if os.path.isfile(last) else "a run's files"
        raise ConfigError(f"out_dir {out_dir!r} already holds {what} ({last}); pass --resume=True "
                          f"to continue it, --overwrite=True to replace it, or another out_dir")
    staging = os.path.join(out_dir, ".staging")
    os.makedirs(staging)
    return staging, None


def out_dir_locked(out_dir):
    """Whether another process holds out_dir's lock now (nothing is created or kept)."""
    path = os.path.join(out_dir, ".lock")
    if fcntl is None or not os.path.isfile(path) or os.path.realpath(out_dir) in _held_locks:
        return False
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def release_out_dir(out_dir):
    """Drop this process's lock on out_dir (taken by lock_out_dir)."""
    lock = _held_locks.pop(os.path.realpath(out_dir), None)
    if lock is not None:
        lock.close()

# -----------------------------------------------------------------------------
# data sets: the files one data step writes (the toy world, a labelling, HH, an evaluation)
# appear whole or not at all, under out_dir's lock, and replace another set only when asked


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class DataSet:
    """
    The files a data step writes into out_dir, as one set that appears whole or not at all:

        with DataSet(out_dir, "onpolicy", names, "the labelling", settings, inputs, overwrite) as ds:
            with ds.writing("onpolicy_train.jsonl") as path:   # out_dir/.staging-onpolicy/...
                write_jsonl(path, rows)
            ...
            ds.commit()   # {name}_manifest.json last, then the old set out and the new one in

    names: every file name the step can write (the old set's files among them go, even those
    this run does not write). The manifest names the files (lines, sha256), the settings and the
    inputs (path -> sha256): a set without one is incomplete or not ours. Opening the set takes
    out_dir's lock and finishes a swap a killed writer left; an existing set is replaced only
    with overwrite=True, or when its manifest holds the same settings and inputs (a re-run that
    writes the same bytes). A write the OS refuses (a full disk) raises a FileError naming the
    file; the staging folder goes, the old set stays.
    """

    def __init__(self, out_dir, name, names, what, settings, inputs=None, overwrite=False):
        self.out_dir, self.name, self.what = out_dir, name, what
        self.manifest = f"{name}_manifest.json"
        self.names = set(names) | {self.manifest}
        self.staging = f".staging-{name}"
        self.info = dict(settings=settings, inputs=inputs or {})
        self.committed = False
        lock_out_dir(out_dir)
        try:
            _finish_swap(out_dir, self.staging, self.names.__contains__)
            self._check_existing(overwrite)
            self.dir = os.path.join(out_dir, self.staging)
            os.makedirs(self.dir)
        except OSError as e:
            release_out_dir(out_dir)
            raise os_error(os.path.join(out_dir, self.staging), e) from None
        except BaseException:
            release_out_dir(out_dir)
            raise

    def _check_existing(self, overwrite):
        old = sorted(n for n in os.listdir(self.out_dir) if n in self.names)
        if not old or overwrite:
            return
        try:
            with open(os.path.join(self.out_dir, self.manifest)) as f:
                stored = json.load(f)
        except (OSError, ValueError):
            stored = None
        if isinstance(stored, dict) and all(stored.get(k) == v for k, v in self.info.items()):
            return  # made with the same settings from the same inputs: the same bytes again
        why = "made with other settings or inputs" if isinstance(stored, dict) else \
            "without a manifest (incomplete, or not written by this version)"
        if isinstance(stored, dict):
            keys = [k for k in self.info["settings"]
                    if stored.get("settings", {}).get(k) != self.info["settings"][k]]
            keys += [os.path.basename(p) for p in self.info["inputs"]
                     if stored.get("inputs", {}).get(p) != self.info["inputs"][p]]
            why = f"made with other {', '.join(keys[:6]) or 'settings'}"
        raise ConfigError(f"{self.out_dir} already holds {self.what} ({os.path.join(self.out_dir, old[0])}"
                          f", ...), {why}; pass --overwrite=True to replace it, or another out_dir")

    def path(self, name):
        return os.path.join(self.dir, name)

    @contextmanager
    def writing(self, name):
        """The staging path to write the file `name` to; an OSError becomes a FileError naming
        out_dir/name."""
        assert name in self.names, name
        try:
            yield self.path(name)
            with open(self.path(name), "rb") as f:  # whole on disk before the swap counts on it
                os.fsync(f.fileno())
        except OSError as e:
            raise os_error(os.path.join(self.out_dir, name), e) from None

    def commit(self, **extra):
        """Write the manifest (the files, the settings, the inputs, `extra`), then swap the set
        in. Returns the manifest."""
        files = {}
        for name in sorted(os.listdir(self.dir)):  # every file written into the staging folder
            with open(self.path(name), "rb") as f:
                data = f.read()
            files[name] = dict(lines=data.count(b"\n"), sha256=hashlib.sha256(data).hexdigest())
        manifest = dict(set=self.name, files=files, **self.info, **extra)
        with self.writing(self.manifest) as path:
            with open(path, "w") as f:
                json.dump(manifest, f, indent=1)
        try:
            swap_in(self.out_dir, self.staging, self.names.__contains__)
        except OSError as e:
            raise os_error(self.out_dir, e, "replace the files in") from None
        self.committed = True
        return manifest

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        suffix = self.staging[len(".staging"):]
        swapping = any(os.path.isdir(os.path.join(self.out_dir, f".{p}{suffix}"))
                       for p in ("replacing", "replaced"))
        if not self.committed and not swapping and os.path.isdir(self.dir):
            shutil.rmtree(self.dir, ignore_errors=True)  # (a swap begun is finished next time)
        release_out_dir(self.out_dir)
        return False


class Run:
    """
    The run skeleton of a training script, once: the process (device, DDP, seeds, precision),
    out_dir (lock, resume point, an overwrite that loses nothing), the JSONL log, checkpoints
    (checked finite, written atomically), stop signals and shutdown. The loop stays in the script:
        run = Run(cfg, "sft")            # run.proc: device, autocast, rank ...; run.resume: ckpt
        ...
        run.log(step, loss=...)          # a readable line and a JSONL record (rank 0)
        run.save("ckpt_last.pt", ckpt)   # rank 0; refuses non-finite weights
        if run.should_stop(step): ...    # stop_iter, or Ctrl-C / SIGTERM on any rank
        run.finish()
    """

    def __init__(self, cfg, stage):
        self.cfg, self.stage = cfg, stage
        self.proc = init_runtime(cfg)
        self.master = self.proc.master
        self.out_dir, self.dir, resume_path, error = cfg.out_dir, cfg.out_dir, None, None
        if self.master:  # rank 0 locks and prepares out_dir; the others only read from it
            try:
                lock_out_dir(cfg.out_dir)
                self.dir, resume_path = prepare_out_dir(cfg.out_dir, cfg.resume, cfg.overwrite)
            except UserError as e:
                error = e
        elif cfg.resume:
            resume_path = os.path.join(cfg.out_dir, "ckpt_last.pt")
        if self.proc.ddp and all_reduce_max(float(error is not None)) > 0 and error is None:
            error = ConfigError(f"rank 0 could not prepare out_dir {cfg.out_dir!r}")
        if error is not None:
            raise error
        self.staged = self.dir != self.out_dir
        self.resume = load_checkpoint(resume_path, expect_stage=stage) if resume_path else None
        if self.resume is not None:
            require_keys(self.resume, resume_path, "step", "rng", "optimizer")
            check_same_run(self.resume.get("config"), cfg, resume_path,
                           (self.resume.get("world_size"), self.proc.world_size))
        self.resume_path = resume_path
        resume_step = self.resume["step"] if self.resume else None
        self.logger = MetricsLogger(self.dir, "log", resume_step, enabled=self.master)
        # per-token numbers of a few samples (plot.py draws them as heatmaps), not printed
        self.token_logger = MetricsLogger(self.dir, "tokens", resume_step, self.master, quiet=True)
        install_stop_handlers()

    def model(self, cls, init, dropout=0.0):
        """The model this run trains and its tokenizer name: from its own last checkpoint when it
        resumes (a cls, GPT or ScalarModel), else from init() -> (model, tokenizer name)."""
        if self.resume is None:
            return init()
        return model_from_checkpoint(cls, self.resume, self.resume_path, dropout), \
            self.resume["tokenizer"]

    def restore(self, optimizer, **state):
        """The loop state a resumed run picks up: the optimizer's, the RNG's (sampling, dropout
        and shuffling continue where they stopped), and `state`'s keys from the checkpoint (their
        values here are a fresh run's). Returns a namespace: .step (the updates done, 0 for a
        fresh run) and one attribute per key of `state`."""
        if self.resume is None:
            return SimpleNamespace(step=0, **state)
        require_keys(self.resume, self.resume_path, *state)
        load_optimizer_state(optimizer, self.resume["optimizer"])  # sharded (FSDP) or not
        set_rng_state(self.resume["rng"])
        print0(f"resumed from {self.resume_path} at step {self.resume['step']}")
        return SimpleNamespace(step=self.resume["step"], **{k: self.resume[k] for k in state})

    def path(self, name):
        """Where the file `name` of this run lives now (.staging until the swap)."""
        return os.path.join(self.dir, name)

    def log(self, step, **metrics):
        self.logger.log(step, **metrics)

    def log_tokens(self, step, **fields):
        """One sample's per-token numbers (tokens: the token texts; the rest lists as long) to
        out_dir/tokens.jsonl (rank 0)."""
        self.token_logger.log(step, **fields)

    def save(self, name, ckpt):
        """Write ckpt as out_dir/name (rank 0 only), once its weights are checked finite. The
        first checkpoint after a training step of an --overwrite run replaces the old run."""
        if not self.master:
            return
        check_finite_weights(ckpt, ckpt.get("step"), name)
        ckpt.setdefault("world_size", self.proc.world_size)  # resume compares the global batch
        save_checkpoint(self.path(name), ckpt)
        if self.staged and ckpt.get("step", 0) >= 1:  # proved itself: the old run may go now
            swap_in(self.out_dir)
            self.dir, self.staged = self.out_dir, False
            self.logger.path, self.token_logger.path = self.path("log.jsonl"), self.path("tokens.jsonl")

    def should_stop(self, step):
        """True after step stop_iter, or when Ctrl-C / SIGTERM reached any rank (a collective)."""
        return stop_requested() or step == self.cfg.stop_iter

    def finish(self):
        if self.proc.ddp:
            dist.barrier()  # no rank tears gloo down while another still uses it
            dist.destroy_process_group()
        lock = _held_locks.pop(os.path.realpath(self.out_dir), None) if self.master else None
        if lock is not None:
            lock.close()



# -----------------------------------------------------------------------------
# stop signals: Ctrl-C or SIGTERM ask the loop to checkpoint and exit at the next step boundary

_stop = {"signal": None}


def install_stop_handlers():
    def handler(signum, frame):
        if _stop["signal"] is not None:  # a second Ctrl-C really interrupts
            raise KeyboardInterrupt
        _stop["signal"] = signal.Signals(signum).name
        print(f"\n{_stop['signal']} received: saving a checkpoint and exiting after this step",
              flush=True)
    _stop["signal"] = None
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def stop_requested():
    """Whether a stop signal arrived, under DDP on ANY rank: a signal that reached one process
    alone would otherwise make it stop while the others wait for it forever in their next
    all-reduce. A collective under DDP: every rank calls it at the same point of its loop."""
    stop = _stop["signal"] is not None
    if dist.is_available() and dist.is_initialized():
        stop = all_reduce_max(float(stop)) > 0
    return stop

# -----------------------------------------------------------------------------
# logging: a line a person reads, plus one JSON object per line for plots


def _whole_record(line):
    """A complete JSONL line: newline-terminated and a JSON object."""
    if not line.endswith("\n"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


class MetricsLogger:
    def __init__(self, out_dir, name, resume_step=None, enabled=True, quiet=False):
        self.path = os.path.join(out_dir, f"{name}.jsonl")
        self.enabled, self.quiet = enabled, quiet
        self.t0 = time.time()
        if enabled and resume_step is not None and os.path.exists(self.path):
            # drop lines written after the checkpoint we resume from: they will be redone. A run
            # killed mid-write can leave a cut last line: whole lines only. The rewrite is atomic,
            # so a kill right now cannot lose the log either.
            with open(self.path, errors="replace") as f:
                keep = [l for l in f
                        if _whole_record(l) and json.loads(l).get("step", 0) <= resume_step]
            tmp = f"{self.path}.tmp.{os.getpid()}"
            with open(tmp, "w") as f:
                f.writelines(keep)
            os.replace(tmp, self.path)

    def log(self, step, **metrics):
        if not self.enabled:
            return
        if not self.quiet:
            parts = [f"step {step:5d}"]
            for k, v in metrics.items():
                parts.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
            print(" | ".join(parts), flush=True)
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics, "time": round(time.time() - self.t0, 3)}) + "\n")

