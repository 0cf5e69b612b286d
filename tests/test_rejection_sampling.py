"""Rejection-sampling fine-tuning's data (rejection_sampling.py): the reward model's favourite of
k answers, only answers that end, a held-out slice, one set on disk."""

import json
import os
from types import SimpleNamespace

import pytest
import torch

import checkpoint
import config
import rejection_sampling
from data import loader
from eval import generate_and_score
from model import GPT, GPTConfig, ScalarModel
from tokenizer import decode_response, get_tokenizer


def test_keep_best_by_hand():
    scores = [1.0, 3.0, 2.0,   5.0, 0.0, 9.0,   4.0, 4.0, 1.0,   7.0, 7.0, 1.0]
    usable = [1, 1, 1,         1, 1, 0,         0, 0, 0,         1, 1, 0]
    # prompt 1's best (9.0) does not end: the next best; prompt 2 has none; a tie keeps the first
    assert rejection_sampling.keep_best(scores, usable, 3) == [1, 0, -1, 0]
    assert rejection_sampling.keep_best([0.5, -1.0], [1, 1], 2) == [0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("rs")
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=96, vocab_size=257, n_layer=2, n_head=2, n_embd=32)
    policy = GPT(cfg)
    w = policy.lm_head.weight[256].detach().clone()
    with torch.no_grad():  # EOS's logit +3 everywhere: about half the answers end in 12 tokens
        policy.transformer.ln_f.bias += 3.0 * w / w.norm() ** 2
    checkpoint.save_checkpoint(str(root / "sft.pt"), checkpoint.make_checkpoint(
        policy, "policy", "sft", "byte", SimpleNamespace(), 0))
    checkpoint.save_checkpoint(str(root / "rm.pt"), checkpoint.make_checkpoint(
        ScalarModel(cfg), "scalar", "rm", "byte", SimpleNamespace(), 0))
    things = ["a banana", "a crow", "a lime", "a swan", "a plum", "a carrot", "a lemon", "a frog"]
    with open(root / "prompts.jsonl", "w") as f:
        for i in range(12):
            f.write(json.dumps({"prompt": f"What color is {things[i % 8]}?"}) + "\n")
    return root


def rs_args(world, out, **kw):
    args = dict(policy=world / "sft.pt", reward_model=world / "rm.pt",
                prompts=world / "prompts.jsonl", out_dir=out, k=4, num_val_prompts=2,
                max_new_tokens=12, block_size=96, batch_size=5, device="cpu")
    args.update(kw)
    return [f"--{k}={v}" for k, v in args.items()]


def test_the_kept_answer_is_the_reward_models_favourite(world, tmp_path):
    out = rejection_sampling.main(rs_args(world, tmp_path))
    train = [json.loads(line) for line in open(tmp_path / "rs_train.jsonl")]
    val = [json.loads(line) for line in open(tmp_path / "rs_val.jsonl")]
    assert os.path.isfile(tmp_path / "rs_manifest.json")
    # the same answers again, by hand: the reward model's scores of each prompt's four
    policy, _ = checkpoint.init_policy(str(world / "sft.pt"))
    rm = checkpoint.load_reward_model(str(world / "rm.pt"), "byte")
    enc = get_tokenizer("byte")
    prompts = loader.load_prompts(str(world / "prompts.jsonl"), enc, 96, 12)
    with torch.no_grad():
        got = generate_and_score(policy.eval(), [p["ids"] for p in prompts for _ in range(4)], enc,
                                 rm.eval(), max_new_tokens=12, batch_size=7, seed=1337,
                                 samples_per_prompt=4)
    expected = []
    for i, p in enumerate(prompts):
        ends = [(got["rm"][i * 4 + j], decode_response(enc, got["tokens"][i * 4 + j]))
                for j in range(4) if got["eos"][i * 4 + j]]
        ends = [e for e in ends if e[1].strip()]
        if ends:
            score, text = max(ends, key=lambda e: e[0])
            expected.append(dict(prompt=p["prompt"], response=text, score=score))
    assert 2 < len(expected) and sum(got["eos"]) < len(got["eos"])  # some answers were cut off
    assert [(r["prompt"], r["response"]) for r in train + val] == \
        [(r["prompt"], r["response"]) for r in expected]
    assert [r["score"] for r in train + val] == pytest.approx([r["score"] for r in expected],
                                                               abs=1e-5)
    assert len(val) == 2 and out["kept"] == len(expected)
    # the kept answers beat the average answer by the reward model's own measure
    assert out["score_kept"] > sum(got["rm"]) / len(got["rm"])
    # SFT reads the kept answers as they are
    rows = loader.load_sft(str(tmp_path / "rs_train.jsonl"), enc, 96)
    assert len(rows) == len(train)
    # a set is never replaced silently: other settings need --overwrite=True
    with pytest.raises(config.ConfigError, match="overwrite"):
        rejection_sampling.main(rs_args(world, tmp_path, k=3))


def test_bad_config_is_rejected_before_sampling(world, tmp_path):
    with pytest.raises(config.ConfigError, match="'k'"):
        rejection_sampling.main(rs_args(world, tmp_path, k=1))
    with pytest.raises(config.ConfigError, match="policy="):
        rejection_sampling.main(rs_args(world, tmp_path, policy=tmp_path / "missing.pt"))
    with pytest.raises(config.ConfigError, match="num_val_prompts"):
        rejection_sampling.main(rs_args(world, tmp_path, num_val_prompts=12))
    assert not os.listdir(tmp_path)
