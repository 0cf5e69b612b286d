"""
Reliability at the door: a corpus of malformed inputs (data files, config values, CLI arguments,
checkpoints, out_dir), each rejected before any training with the project's error type, a message
naming the file/line/field or the key, and nothing written to out_dir; an --overwrite run that
fails keeps the previous run. The world, the scripts and their base configs are
tests/test_reliability.py's.
"""

import json
import os
import random
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import checkpoint
import export_hf
import train_dpo
import train_sft
from config import CheckpointError, ConfigError, NonFiniteError
from data.loader import DataError
from data.toy.prepare import write_jsonl
from model import GPT, GPTConfig, ScalarModel
from test_reliability import (RUN_TIMEOUT_S, SCRIPTS, TINY_MODEL, base_args,  # noqa: F401
                              keep_signal_handlers, save_model, snapshot, world)

# -----------------------------------------------------------------------------
# malformed inputs: rejected before training, naming what is wrong and where


class RunsCode:
    """A pickle that would create a directory when unpickled without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture(scope="module")
def bad(world):
    """The malformed files of the corpus, written once."""
    d = world / "bad"
    d.mkdir()
    sft_row = {"prompt": "What color is a lime?", "response": "A lime is green."}
    pair = {"prompt": "What color is a lime?", "chosen": "A lime is green.",
            "rejected": "A lime is blue."}
    (d / "empty.jsonl").write_text("")
    lines = [json.dumps(sft_row)] * 2 + [json.dumps(sft_row)[:25]]  # the last line cut short
    (d / "truncated.jsonl").write_text("\n".join(lines) + "\n")
    write_jsonl(d / "prompt_int.jsonl", [sft_row, {"prompt": 5, "response": "Five."}])
    (d / "bad_utf8.jsonl").write_bytes(json.dumps(sft_row).encode() + b'\n{"prompt": "\xff"}\n')
    write_jsonl(d / "long_answer.jsonl", [{"prompt": "Say a lot.", "response": "la " * 60}])
    write_jsonl(d / "chosen_list.jsonl", [pair, {**pair, "chosen": ["A lime is green."]}])
    write_jsonl(d / "margin_str.jsonl", [{**pair, "margin": "big"}])
    write_jsonl(d / "no_rejected.jsonl", [{k: v for k, v in pair.items() if k != "rejected"}])
    (d / "prompts_array.jsonl").write_text('["What color is a lime?"]\n')
    (d / "bad_key.py").write_text("n_layers = 2\n")
    (d / "wrong_type.py").write_text("batch_size = '8'\n")
    (d / "syntax.py").write_text("batch_size = (8\n")
    (d / "a_file").write_text("not a directory")
    (d / "exit.py").write_text("import sys\nsys.exit(0)\n")
    (d / "dup_key.jsonl").write_text('{"prompt": "a", "response": "b", "response": "c"}\n')
    (d / "surrogate.jsonl").write_text('{"prompt": "\\ud800", "chosen": "x", "rejected": "y"}\n')
    (d / "huge_int.jsonl").write_text('{"prompt": "a", "chosen": "x", "rejected": "y", "margin": '
                                      + "7" * 5000 + "}\n")
    (d / "deep.jsonl").write_text('{"prompt": ' + "[" * 50000 + "]" * 50000 + "}\n")
    write_jsonl(d / "big_margin.jsonl", [{**pair, "margin": 10 ** 30}])
    write_jsonl(d / "kto_label.jsonl", [{"prompt": "a", "completion": "b", "label": "yes"}])

    # checkpoints
    (d / "random.pt").write_bytes(random.Random(0).randbytes(3000))
    checkpoint.save_checkpoint(str(d / "bomb.pt"), {  # the settings of a 100B-parameter model
        "model": {}, "model_args": dict(block_size=8192, vocab_size=257, n_layer=96, n_head=96,
                                        n_embd=12288), "kind": "policy", "stage": "sft",
        "tokenizer": "byte"})
    save_model(d / "rm_vocab300.pt", ScalarModel(GPTConfig(**{**TINY_MODEL, "vocab_size": 300})),
               "scalar", "rm")
    no_opt = checkpoint.make_checkpoint(GPT(GPTConfig(**TINY_MODEL)), "policy", "sft", "byte",
                                    SimpleNamespace(), step=3)  # written without optimizer state
    checkpoint.save_checkpoint(str(d / "no_opt_run" / "ckpt_last.pt"), no_opt)
    for name, config, weights in (
            ("hf_bad_config", '{"model_type": "gpt2", "n_embd": 32,', None),
            ("hf_bad_st", json.dumps(dict(model_type="gpt2", n_positions=32, vocab_size=257,
                                          n_layer=1, n_head=2, n_embd=32)),
             (10 ** 6).to_bytes(8, "little") + b"{}")):
        (d / name).mkdir()
        (d / name / "config.json").write_text(config)
        (d / name / "model.safetensors").write_bytes(weights or b"")
    (d / "junk.pt").write_bytes(b"this is not a checkpoint")
    whole = (world / "sft.pt").read_bytes()
    (d / "truncated.pt").write_bytes(whole[:len(whole) // 2])
    evil = {"model": {}, "model_args": {}, "payload": RunsCode(str(d / "pwned"))}
    torch.save(evil, d / "evil.pt")
    torch.manual_seed(0)
    save_model(d / "gpt2_label.pt", GPT(GPTConfig(**TINY_MODEL)), "policy", "sft", "gpt2")
    save_model(d / "small_vocab.pt", GPT(GPTConfig(**{**TINY_MODEL, "vocab_size": 200})),
               "policy", "sft")
    save_model(d / "short_ctx.pt", GPT(GPTConfig(**{**TINY_MODEL, "block_size": 32})),
               "policy", "sft")
    save_model(d / "rm_short.pt", ScalarModel(GPTConfig(**{**TINY_MODEL, "block_size": 32})),
               "scalar", "rm")
    save_model(d / "rm_gpt2.pt", ScalarModel(GPTConfig(**TINY_MODEL)), "scalar", "rm", "gpt2")
    ckpt = torch.load(world / "sft.pt", weights_only=True)
    ckpt["model_args"]["n_embd"] = 64  # the weights are n_embd=32
    checkpoint.save_checkpoint(str(d / "mismatched.pt"), ckpt)

    # run directories: a finished SFT run, and one of PPO
    for stage, name in (("sft", "sft_run"), ("ppo", "ppo_run")):
        save_model(d / name / "ckpt_last.pt", GPT(GPTConfig(**TINY_MODEL)), "policy", stage)
        (d / name / "log.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    return d



# (id, script, arguments added to its base config ({b}: the bad-files folder, {w}: the world),
#  the error type, words the message must hold). The out_dir is fresh unless an argument names one.
CORPUS = [
    # data files: the message names the file, and the line and field where there is one
    ("empty-data-file", "sft", ["--train_data={b}/empty.jsonl"], DataError,
     ["empty.jsonl", "empty file"]),
    ("truncated-json-line", "sft", ["--val_data={b}/truncated.jsonl"], DataError,
     ["truncated.jsonl:3:", "malformed JSON"]),
    ("prompt-not-a-string", "sft", ["--train_data={b}/prompt_int.jsonl"], DataError,
     ["prompt_int.jsonl:2:", "'prompt'", "must be a string"]),
    ("invalid-utf8", "sft", ["--train_data={b}/bad_utf8.jsonl"], DataError,
     ["bad_utf8.jsonl:2:", "UTF-8"]),
    ("answer-longer-than-context", "sft", ["--train_data={b}/long_answer.jsonl"], DataError,
     ["long_answer.jsonl", "block_size"]),
    ("chosen-is-an-array", "rm", ["--train_data={b}/chosen_list.jsonl"], DataError,
     ["chosen_list.jsonl:2:", "'chosen'", "must be a string"]),
    ("margin-is-a-string", "rm", ["--val_data={b}/margin_str.jsonl"], DataError,
     ["margin_str.jsonl:1:", "'margin'"]),
    # read for the normalisation after training, but checked before it
    ("bias-data-truncated", "rm", ["--bias_data={b}/truncated.jsonl"], DataError,
     ["truncated.jsonl:3:", "malformed JSON"]),
    ("missing-field", "dpo", ["--train_data={b}/no_rejected.jsonl"], DataError,
     ["no_rejected.jsonl:1:", "'rejected': missing"]),
    ("record-not-an-object", "ppo", ["--train_prompts={b}/prompts_array.jsonl"], DataError,
     ["prompts_array.jsonl:1:", "JSON object"]),
    ("empty-prompts-file", "ppo", ["--val_prompts={b}/empty.jsonl"], DataError,
     ["empty.jsonl", "empty file"]),
    ("missing-data-file", "dpo", ["--val_data={b}/nope.jsonl"], ConfigError,
     ["val_data", "nope.jsonl", "does not exist"]),
    # config values: the message names the key
    ("zero-batch-size", "sft", ["--batch_size=0"], ConfigError, ["batch_size", "> 0"]),
    ("negative-width", "rm", ["--init_from=scratch", "--n_embd=-32"], ConfigError,
     ["n_embd", "> 0"]),
    ("negative-rollout-batch", "ppo", ["--rollout_batch_size=-8"], ConfigError,
     ["rollout_batch_size"]),
    ("zero-max-iters", "dpo", ["--max_iters=0"], ConfigError, ["max_iters", "> 0"]),
    ("negative-grad-clip", "dpo", ["--grad_clip=-1.0"], ConfigError, ["grad_clip", ">= 0"]),
    ("prompt-longer-than-context", "ppo", ["--max_new_tokens=96"], ConfigError,
     ["max_new_tokens=96", "block_size=96"]),
    ("block-size-beyond-positions", "sft", ["--init_from={b}/short_ctx.pt"], ConfigError,
     ["block_size=128", "1..32"]),
    ("block-size-beyond-policy", "dpo", ["--block_size=256"], ConfigError,
     ["block_size=256", "1..128"]),
    ("block-size-beyond-reward-model", "ppo", ["--reward_model={b}/rm_short.pt"], ConfigError,
     ["block_size=96", "1..32", "rm_short.pt"]),
    ("config-file-unknown-key", "sft", ["{b}/bad_key.py"], ConfigError,
     ["bad_key.py", "unknown config key 'n_layers'"]),
    ("config-file-wrong-type", "rm", ["{b}/wrong_type.py"], ConfigError,
     ["wrong_type.py", "'batch_size' must be int"]),
    ("config-file-syntax-error", "dpo", ["{b}/syntax.py"], ConfigError,
     ["syntax.py", "failed to run"]),
    # command-line arguments
    ("unknown-cli-key", "sft", ["--learning_rate=0.1"], ConfigError,
     ["unknown config key 'learning_rate'"]),
    ("unparsable-cli-value", "ppo", ["--max_iters=ten"], ConfigError, ["--max_iters=ten"]),
    ("float-for-int", "rm", ["--batch_size=8.5"], ConfigError, ["'batch_size' must be int"]),
    ("not-a-boolean", "dpo", ["--resume=maybe"], ConfigError, ["--resume=maybe"]),
    ("missing-config-file", "sft", ["{b}/nope.py"], ConfigError, ["nope.py", "does not exist"]),
    ("resume-without-checkpoint", "rm", ["--resume=True"], ConfigError,
     ["ckpt_last.pt", "does not exist"]),
    # checkpoints: the message names the file
    ("missing-init-checkpoint", "sft", ["--init_from={w}/missing.pt"], ConfigError,
     ["init_from", "missing.pt"]),
    ("missing-init-checkpoint-rm", "rm", ["--init_from={w}/missing.pt"], ConfigError,
     ["init_from", "missing.pt", "does not exist"]),
    ("missing-reward-model", "ppo", ["--reward_model={w}/missing.pt"], ConfigError,
     ["reward_model", "missing.pt", "does not exist"]),
    ("not-a-checkpoint", "sft", ["--init_from={b}/junk.pt"], CheckpointError,
     ["junk.pt", "not a readable checkpoint"]),
    ("truncated-checkpoint", "rm", ["--init_from={b}/truncated.pt"], CheckpointError,
     ["truncated.pt", "not a readable checkpoint"]),
    ("pickle-that-runs-code", "dpo", ["--init_from={b}/evil.pt"], CheckpointError,
     ["evil.pt", "refused to load"]),
    ("reward-model-as-policy", "ppo", ["--init_from={w}/rm.pt"], CheckpointError,
     ["rm.pt", "'scalar' model", "'policy' model is needed"]),
    ("policy-as-reward-model", "ppo", ["--reward_model={w}/sft.pt"], CheckpointError,
     ["sft.pt", "'policy' model", "'scalar' model is needed"]),
    ("byte-model-labelled-gpt2", "dpo", ["--reference={b}/gpt2_label.pt"], CheckpointError,
     ["gpt2_label.pt", "vocab_size=257", "'gpt2' tokenizer"]),
    ("token-ids-out-of-range", "sft", ["--init_from={b}/small_vocab.pt"], CheckpointError,
     ["small_vocab.pt", "vocab_size=200", "out of range"]),
    ("reward-model-other-tokenizer", "ppo", ["--reward_model={b}/rm_gpt2.pt"], CheckpointError,
     ["rm_gpt2.pt", "'gpt2' tokenizer", "'byte'"]),
    ("weights-do-not-fit-model-args", "rm", ["--init_from={b}/mismatched.pt"], CheckpointError,
     ["mismatched.pt", "weights do not fit"]),
    ("resume-another-stages-run", "dpo", ["--out_dir={b}/sft_run", "--resume=True"],
     CheckpointError, ["sft_run", "ckpt_last.pt", "'sft' stage", "'dpo' run"]),
    # out_dir
    ("finished-run-not-overwritten", "ppo", ["--out_dir={b}/ppo_run"], ConfigError,
     ["ppo_run", "already holds a run", "--resume=True", "--overwrite=True"]),
    ("out-dir-under-a-file", "sft", ["--out_dir={b}/a_file/out"], ConfigError,
     ["a_file", "not writable"]),
    ("out-dir-under-a-file-ppo", "ppo", ["--out_dir={b}/a_file/out"], ConfigError,
     ["a_file", "not writable"]),
    # numbers that parse but are no numbers to train with
    ("infinite-beta", "dpo", ["--beta=1e999"], ConfigError, ["'beta'", "finite"]),
    ("huge-int-as-float", "sft", ["--lr=" + "9" * 400], ConfigError, ["'lr'", "finite"]),
    ("temperature-that-overflows", "ppo", ["--temperature=1e-300"], ConfigError,
     ["'temperature'", "[0.01, 100]"]),
    ("sample-temperature-that-overflows", "sft", ["--sample_temperature=1e-300"], ConfigError,
     ["'sample_temperature'"]),
    ("seed-beyond-64-bits", "rm", [f"--seed={2 ** 70}"], ConfigError, ["'seed'"]),
    ("float16-is-not-a-choice", "dpo", ["--dtype=float16"], ConfigError, ["'dtype'", "bfloat16"]),
    ("config-file-calls-exit", "sft", ["{b}/exit.py"], ConfigError,
     ["exit.py", "failed to run", "SystemExit"]),
    ("renamed-key", "sft", ["--eval_iters=4"], ConfigError, ["'eval_iters'", "renamed",
                                                             "eval_examples"]),
    ("renamed-key-ppo", "ppo", ["--kl_coef=0.1"], ConfigError, ["'kl_coef'", "renamed", "beta"]),
    ("grpo-unknown-advantage", "grpo", ["--advantage=ppo"], ConfigError, ["'advantage'"]),
    ("grpo-group-does-not-divide", "grpo", ["--group_size=3"], ConfigError, ["group_size=3"]),
    ("reward-fn-file-missing", "grpo", ["--reward_fn={b}/nope.py:f"], ConfigError,
     ["reward_fn", "does not exist"]),
    ("reward-fn-not-in-file", "ppo", ["--reward_fn={b}/exit.py:score"], ConfigError,
     ["reward_fn", "failed to run"]),
    # JSON that parses in Python but is not a clean record
    ("duplicate-key", "sft", ["--train_data={b}/dup_key.jsonl"], DataError,
     ["dup_key.jsonl:1:", "'response'", "given twice"]),
    ("lone-surrogate", "rm", ["--train_data={b}/surrogate.jsonl"], DataError,
     ["surrogate.jsonl:1:", "lone surrogate"]),
    ("integer-beyond-4300-digits", "dpo", ["--train_data={b}/huge_int.jsonl"], DataError,
     ["huge_int.jsonl:1:", "4300"]),
    ("json-nested-too-deep", "ppo", ["--train_prompts={b}/deep.jsonl"], DataError,
     ["deep.jsonl:1:", "nested too deeply"]),
    ("margin-beyond-a-float", "rm", ["--val_data={b}/big_margin.jsonl"], DataError,
     ["big_margin.jsonl:1:", "'margin'", "finite"]),
    ("kto-label-not-a-boolean", "kto", ["--train_data={b}/kto_label.jsonl"], DataError,
     ["kto_label.jsonl:1:", "'label'", "true or false"]),
    # checkpoints and Hugging Face directories
    ("random-bytes-as-checkpoint", "sft", ["--init_from={b}/random.pt"], CheckpointError,
     ["random.pt", "not a readable checkpoint"]),
    ("memory-bomb-checkpoint", "dpo", ["--init_from={b}/bomb.pt"], CheckpointError,
     ["bomb.pt", "weights do not fit"]),
    ("resume-without-optimizer-state", "sft", ["--out_dir={b}/no_opt_run", "--resume=True"],
     CheckpointError, ["no_opt_run", "no 'optimizer'"]),
    ("hf-dir-malformed-config", "sft", ["--init_from={b}/hf_bad_config"], CheckpointError,
     ["hf_bad_config", "JSONDecodeError"]),
    ("hf-dir-safetensors-past-the-end", "rm", ["--init_from={b}/hf_bad_st"], CheckpointError,
     ["hf_bad_st", "claims 1000000 bytes"]),
    ("reward-model-vocab-mismatch", "grpo", ["--reward_model={b}/rm_vocab300.pt"],
     CheckpointError, ["rm_vocab300.pt", "vocab_size=300", "257"]),
] + ([] if torch.cuda.is_available() else [
    ("cuda-on-a-machine-without", "rm", ["--device=cuda"], ConfigError, ["'cuda'", "no CUDA"])])



@pytest.mark.parametrize("stage", sorted(SCRIPTS))
def test_corpus_base_configs_train(world, tmp_path, stage):
    """The control: without the corpus's one broken input, each base config trains a step."""
    SCRIPTS[stage].main(base_args(stage, world) + [f"--out_dir={tmp_path / 'out'}"])
    assert (tmp_path / "out" / "ckpt_last.pt").is_file()


@pytest.mark.parametrize("case", CORPUS, ids=[c[0] for c in CORPUS])
def test_malformed_input_is_rejected_before_training(world, bad, tmp_path, case):
    _, stage, extra, error, words = case
    extra = [a.format(b=bad, w=world) for a in extra]
    out_dirs = [a.split("=", 1)[1] for a in extra if a.startswith("--out_dir=")]
    out = type(tmp_path)(out_dirs[0]) if out_dirs else tmp_path / "out"
    before = snapshot(out)
    with pytest.raises((ConfigError, DataError, CheckpointError)) as e:
        SCRIPTS[stage].main(base_args(stage, world) + [f"--out_dir={tmp_path / 'out'}"] + extra)
    assert type(e.value) is error, e.value
    message = str(e.value)
    for w in words:
        assert w in message, (w, message)
    # nothing was trained or written: out_dir is as it was (a fresh one holds no file)
    after = snapshot(out)
    assert after == before or (before is None and after == {}), sorted(after or {})
    assert not os.path.exists(bad / "pwned")  # the pickle's code never ran


@pytest.fixture(scope="module")
def finished_run(world):
    """The files of a finished one-step SFT run: checkpoints and log."""
    out = world / "finished_sft"
    train_sft.main(base_args("sft", world) + [f"--out_dir={out}"])
    files = snapshot(out)
    assert {"ckpt_last.pt", "ckpt_best.pt", "log.jsonl"} <= set(files)
    return files


# the cases that can run against an out_dir of their own choosing, as a fresh run
OVERWRITABLE = [c for c in CORPUS if not any(a.startswith(("--out_dir=", "--resume="))
                                             for a in c[2])]


@pytest.mark.parametrize("case", OVERWRITABLE, ids=[c[0] for c in OVERWRITABLE])
def test_overwrite_with_a_bad_input_keeps_the_previous_run(world, bad, finished_run, tmp_path,
                                                           case):
    # --overwrite=True replaces a run only once the new one can start: an input found bad while
    # loading (a data line, a checkpoint, a block size the model cannot hold) must not cost it
    _, stage, extra, error, words = case
    out = tmp_path / "out"
    out.mkdir()
    for name, data in finished_run.items():
        (out / name).write_bytes(data)
    with pytest.raises(error) as e:
        SCRIPTS[stage].main(base_args(stage, world) + [f"--out_dir={out}", "--overwrite=True"]
                            + [a.format(b=bad, w=world) for a in extra])
    assert all(w in str(e.value) for w in words), e.value
    assert snapshot(out) == finished_run


@pytest.mark.parametrize("name, words", [
    ("bad/small_vocab.pt", ["vocab_size=200", "out of range"]),
    ("bad/gpt2_label.pt", ["vocab_size=257", "'gpt2' tokenizer"]),
    ("bad/mismatched.pt", ["weights do not fit"]),
    ("rm.pt", ["'scalar' model", "'policy' model is needed"]),
])
def test_export_checks_the_checkpoint_as_training_does(world, bad, tmp_path, name, words):
    # an exported model is used far from here: a bad file must fail now, naming itself
    with pytest.raises(CheckpointError) as e:
        export_hf.main([f"--ckpt={world / name}", f"--out_dir={tmp_path / 'hf'}"])
    for w in [str(world / name)] + words:
        assert w in str(e.value), (w, e.value)
    assert not (tmp_path / "hf").exists()


def test_overwrite_replaces_the_previous_run_once_training_starts(world, finished_run, tmp_path):
    # the control of the test above: with good inputs the old files do go
    out = tmp_path / "out"
    out.mkdir()
    for name, data in finished_run.items():
        (out / name).write_bytes(data)
    (out / "ckpt_iter7.pt").write_bytes(finished_run["ckpt_last.pt"])  # not written by this run
    train_dpo.main(base_args("dpo", world) + [f"--out_dir={out}", "--overwrite=True"])
    assert "ckpt_iter7.pt" not in os.listdir(out)
    ckpt = checkpoint.load_checkpoint(str(out / "ckpt_last.pt"), expect_stage="dpo")
    assert ckpt["step"] == 1
    records = [json.loads(line) for line in open(out / "log.jsonl")]  # DPO's alone, not SFT's
    assert records and all("margin" in r or "val_margin" in r for r in records), records


@pytest.mark.unit
def test_corpus_is_large_and_covers_every_kind_of_input():
    assert len(CORPUS) >= 25 and len({c[0] for c in CORPUS}) == len(CORPUS)
    assert {c[1] for c in CORPUS} == set(SCRIPTS)
    assert {c[3] for c in CORPUS} == {ConfigError, DataError, CheckpointError}


# a sample of the corpus, one per kind of input and script, through the real command line
CLI_CASES = ["zero-batch-size", "renamed-key-ppo", "truncated-json-line", "lone-surrogate",
             "random-bytes-as-checkpoint", "memory-bomb-checkpoint", "grpo-unknown-advantage",
             "config-file-calls-exit"]


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CORPUS if c[0] in CLI_CASES], ids=CLI_CASES)
def test_rejected_input_is_one_line_at_the_command_line(world, bad, tmp_path, case):
    _, stage, extra, error, words = case
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, SCRIPTS[stage].__file__, *base_args(stage, world),
                           f"--out_dir={out}", *[a.format(b=bad, w=world) for a in extra]],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(w in last for w in words), last
    assert snapshot(out) in (None, {})


@pytest.mark.parametrize("stage, args", [
    ("sft", ["--lr=1e30", "--grad_clip=0"]),  # finite gradients, non-finite weights
    ("dpo", ["--beta=1e30"]),                 # an infinite loss at the first step
])
def test_a_run_that_fails_at_its_first_step_keeps_the_previous_run(world, finished_run, tmp_path,
                                                                    stage, args):
    # --overwrite=True replaces a run only once the new one has written a checkpoint after a
    # training step: a value that passes validation but breaks the first update costs nothing
    out = tmp_path / "out"
    out.mkdir()
    for name, data in finished_run.items():
        (out / name).write_bytes(data)
    with pytest.raises(NonFiniteError):
        SCRIPTS[stage].main(base_args(stage, world) + [f"--out_dir={out}", "--overwrite=True",
                                                       "--ckpt_interval=1", *args])
    assert snapshot(out) == finished_run
