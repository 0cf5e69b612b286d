"""
Reward model: the Bradley-Terry loss pinned to hand-computed numbers, scores that do not depend
on padding or batch-mates, config errors, and short end-to-end runs (the toy world's preferences,
a K-wise ranking file, the stored reward_bias, exact resume).
"""

import json
import math
import os

import pytest
import torch

import config
import checkpoint
import train_reward_model
from model import GPTConfig, ScalarModel
from tokenizer import encode_example, get_tokenizer
import layouts
from train_reward_model import reward_model_loss
from data.toy.prepare import write_jsonl

TINY = ["--init_from=scratch", "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=128",
        "--device=cpu", "--dtype=float32"]


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    """The toy world, generated once for this file (about a second)."""
    from data.toy.prepare import prepare
    out = tmp_path_factory.mktemp("toy")
    prepare(str(out), seed=1337)
    return out


@pytest.fixture
def small_prefs(tmp_path):
    """A few hand-made pairs (polite + right vs rude or wrong) and SFT answers for the bias."""
    rows = [dict(prompt="What color is a banana?", chosen="A banana is yellow. Glad to help!",
                 rejected="A banana is blue. Duh."),
            dict(prompt="What does a cow say?", chosen="A cow says moo.", rejected="Ugh. Whatever.",
                 margin=1.0),
            dict(prompt="What is 2 plus 3?", chosen="2 plus 3 is 5.", rejected="2 plus 3 is 7."),
            dict(prompt="What is the opposite of hot?", chosen="The opposite of hot is cold.",
                 rejected="I like turtles.")]
    sft = [dict(prompt=r["prompt"], response=r["chosen"]) for r in rows]
    return (write_jsonl(tmp_path / "prefs.jsonl", rows), write_jsonl(tmp_path / "sft.jsonl", sft),
            tmp_path)

# -----------------------------------------------------------------------------
# the loss


@pytest.mark.unit
def test_loss_matches_hand_computation():
    rc = torch.tensor([1.0, 0.5, -2.0])
    rr = torch.tensor([0.0, 1.5, -1.0])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    # plain Bradley-Terry: -log sigma(r_c - r_r), averaged over pairs
    want = -(math.log(sig(1.0)) + math.log(sig(-1.0)) + math.log(sig(-1.0))) / 3
    loss, m = reward_model_loss(rc, rr)
    assert loss.item() == pytest.approx(want, abs=1e-6)
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["margin"] == pytest.approx((1.0 - 1.0 - 1.0) / 3)
    # with a per-pair margin and the centering term lambda * (r_c + r_r)^2
    margin = torch.tensor([0.5, 0.0, 2.0])
    lam = 0.01
    bt = -(math.log(sig(1.0 - 0.5)) + math.log(sig(-1.0 - 0.0)) + math.log(sig(-1.0 - 2.0))) / 3
    center = lam * ((1.0 + 0.0) ** 2 + (0.5 + 1.5) ** 2 + (-2.0 - 1.0) ** 2) / 3
    loss, m = reward_model_loss(rc, rr, margin=margin, center_coef=lam)
    assert loss.item() == pytest.approx(bt + center, abs=1e-6)
    assert m["bt_loss"] == pytest.approx(bt, abs=1e-6)
    # the BT term sees only differences; the centering term pulls the sum of scores to 0
    rc2, rr2 = rc.clone().requires_grad_(True), rr.clone().requires_grad_(True)
    reward_model_loss(rc2 + 10, rr2 + 10, center_coef=0.0)[0].backward()
    g_shift = rc2.grad.clone()
    rc2.grad = None
    reward_model_loss(rc2, rr2)[0].backward()
    torch.testing.assert_close(rc2.grad, g_shift)
    # extreme margins stay finite (logsigmoid, not log(sigmoid))
    loss, _ = reward_model_loss(torch.tensor([-200.0]), torch.tensor([200.0]))
    assert loss.item() == pytest.approx(400.0)

# -----------------------------------------------------------------------------
# scoring


def score(model, prompts, responses, batch_size=64):
    """Scores (B,) of texts as the scripts score them (ScalarModel.score_rows): rendered with the
    chat template, cut to the model's last block_size tokens (the prompt's start goes, never the
    response's end, where the score is read), sorted by length and right-padded in batches."""
    enc = get_tokenizer("byte")
    rows = [encode_example(enc, p, r)[0][-model.config.block_size:]
            for p, r in zip(prompts, responses)]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths pad less
    out = torch.zeros(len(rows))
    out[order] = model.score_rows([rows[i] for i in order], enc.eot_token, batch_size)
    return out


@pytest.mark.unit
def test_score_invariant_to_padding_and_batch():
    torch.manual_seed(0)
    model = ScalarModel(GPTConfig(block_size=256, vocab_size=257, n_layer=2, n_head=2, n_embd=32))
    with torch.no_grad():
        model.reward_bias.fill_(0.25)
    prompts = ["What color is a lime?", "What is 4 plus 4?",
               "Tell me the sound a frog makes, and say it twice please."]
    responses = ["Green.", "4 plus 4 is 8. Hope that helps! Anything else you want to know?",
                 "Ribbit ribbit, and a frog might also croak at night near the pond."]
    alone = score(model, prompts[:1], responses[:1])
    batch = score(model, prompts, responses, batch_size=3)
    assert alone.shape == (1,) and batch.shape == (3,)
    torch.testing.assert_close(batch[:1], alone, atol=1e-5, rtol=0)  # the shortest, most padded
    one_by_one = torch.cat([score(model, [p], [r]) for p, r in zip(prompts, responses)])
    torch.testing.assert_close(batch, one_by_one, atol=1e-5, rtol=0)
    # the bias is subtracted, and score() equals the model on the same ids
    enc = get_tokenizer("byte")
    ids, _ = encode_example(enc, prompts[0], responses[0])
    raw = model.head(model.transformer(torch.tensor([ids])))[0, -1, 0]
    assert alone.item() == pytest.approx(raw.item() - 0.25, abs=1e-5)
    # ScalarModel.score: left padding (as PPO has it) gives the same scores as right padding
    rows = [encode_example(enc, p, r)[0] for p, r in zip(prompts, responses)]
    T = max(map(len, rows)) + 3
    left = torch.full((3, T), enc.eot_token)
    lmask = torch.zeros(3, T, dtype=torch.long)
    for i, r in enumerate(rows):
        left[i, T - len(r):], lmask[i, T - len(r):] = torch.tensor(r), 1
    torch.testing.assert_close(model.score(left, lmask), batch, atol=1e-5, rtol=0)
    assert model.training  # score leaves the model's mode as it found it
    # a text longer than block_size is scored on its last block_size tokens (the prompt's start
    # is cut, the response and its EOS are kept)
    long_prompt = "Tell me about colours. " * 20 + prompts[0]
    ids, _ = encode_example(enc, long_prompt, responses[0])
    assert len(ids) > 256
    raw = model.head(model.transformer(torch.tensor([ids[-256:]])))[0, -1, 0]
    assert score(model, [long_prompt], responses[:1]).item() == pytest.approx(raw.item() - 0.25,
                                                                              abs=1e-5)

# -----------------------------------------------------------------------------
# config errors


@pytest.mark.parametrize("arg,key", [("--center_coef=-0.1", "center_coef"),
                                     ("--bias_ref=mean", "bias_ref"),
                                     ("--num_epochs=0", "num_epochs"),
                                     ("--batch_size=0", "batch_size"),
                                     ("--not_a_key=1", "not_a_key"),
                                     ("--use_margin=maybe", "use_margin"),
                                     ("--train_data=/nonexistent/prefs.jsonl", "train_data")])
def test_bad_config_is_a_clear_error(arg, key, small_prefs, tmp_path):
    prefs, sft, _ = small_prefs
    with pytest.raises(config.ConfigError, match=key):
        train_reward_model.main(TINY + [f"--train_data={prefs}", f"--val_data={prefs}",
                                        f"--bias_data={sft}", f"--out_dir={tmp_path / 'rm'}", arg])


def test_warmup_longer_than_derived_max_iters_is_an_error(small_prefs, tmp_path):
    prefs, sft, _ = small_prefs
    # 4 pairs, batch 2, five epochs -> 10 steps: an 11-step warmup cannot fit
    with pytest.raises(config.ConfigError, match="warmup_iters"):
        train_reward_model.main(TINY + [f"--train_data={prefs}", f"--val_data={prefs}",
                                        f"--bias_data={sft}", f"--out_dir={tmp_path / 'rm'}",
                                        "--batch_size=2", "--warmup_iters=11"])

# -----------------------------------------------------------------------------
# end to end


@pytest.mark.slow
def test_toy_preferences_above_chance(toy_dir, tmp_path):
    # a tiny byte-level model from scratch, 80 steps of 16 pairs (a sixth of an epoch), reaches
    # ~0.73; the 90% of the toy default needs the SFT trunk and a whole epoch. The held-out pairs
    # are labelled by the noise-free gold judge, so this is accuracy against gold.
    out = train_reward_model.main(
        TINY + [f"--train_data={toy_dir / 'prefs_train.jsonl'}",
                f"--val_data={toy_dir / 'prefs_val.jsonl'}",
                f"--bias_data={toy_dir / 'sft_train.jsonl'}", f"--out_dir={tmp_path / 'rm'}",
                "--batch_size=16", "--max_iters=80", "--lr=3e-3", "--min_lr=3e-4",
                "--eval_interval=1000", "--log_interval=20", "--eval_examples=200",
                "--bias_examples=200"])
    assert out["max_iters"] == 80 and out["step"] == 80
    assert out["val_accuracy"] >= 0.65, out
    # PPO's view: the stored model scores the SFT answers at about 0 on average
    model, tok = checkpoint.init_scalar(str(tmp_path / "rm" / "ckpt_best.pt"))
    assert tok == "byte"
    assert model.reward_bias.item() != 0.0
    sft = [json.loads(l) for l in open(toy_dir / "sft_train.jsonl")][:200]
    s = score(model, [r["prompt"] for r in sft], [r["response"] for r in sft])
    assert abs(s.mean().item()) < 1e-3


@pytest.mark.slow
def test_kwise_ranking_file_trains(tmp_path):
    rows = [dict(prompt="What color is a banana?",
                 responses=["Ugh. Purple.", "A banana is yellow. Glad to help!", "A banana is yellow."],
                 ranks=[3, 1, 2]),
            dict(prompt="What does a dog say?",
                 responses=["A dog says woof.", "Whatever.", "Um, a dog says woof, I guess.",
                            "A dog says woof. Happy to help!"],
                 scores=[2.0, -3.0, 0.5, 3.0])]
    data = write_jsonl(tmp_path / "ranked.jsonl", rows)
    # 3 + 6 = 9 pairs, each better answer chosen; 4 epochs of 3-pair batches = 12 steps
    out = train_reward_model.main(TINY + [f"--train_data={data}", f"--val_data={data}",
                                          f"--out_dir={tmp_path / 'rm'}", "--batch_size=3",
                                          "--group_rankings=False",
                                          "--num_epochs=4", "--warmup_iters=0", "--lr=1e-2",
                                          "--eval_interval=100", "--bias_ref=chosen"])
    assert out["max_iters"] == 12 and out["step"] == 12
    assert out["val_accuracy"] == 1.0, out  # the ranking is learned
    assert math.isfinite(out["reward_bias"]) and out["reward_bias"] != 0.0


def test_grouped_rankings_score_each_answer_once_with_the_same_loss(small_prefs, tmp_path):
    prefs, sft, _ = small_prefs
    # one pair per record: a ranking of two is a pair, so both batchings train alike
    args = TINY + [f"--train_data={prefs}", f"--val_data={prefs}", f"--bias_data={sft}",
                   "--batch_size=2", "--num_epochs=2", "--warmup_iters=0", "--eval_interval=100",
                   "--log_interval=1"]
    pairs = train_reward_model.main(args + [f"--out_dir={tmp_path / 'pairs'}"])
    grouped = train_reward_model.main(args + [f"--out_dir={tmp_path / 'grouped'}",
                                              "--group_rankings=True"])
    assert pairs["max_iters"] == grouped["max_iters"]
    assert grouped["train_loss"] == pytest.approx(pairs["train_loss"], abs=1e-5)
    assert grouped["val_accuracy"] == pairs["val_accuracy"]


@pytest.mark.unit
def test_shared_prompt_scores_equal_separate_rows():
    # each prompt once, its answers after it: the same scores as rows of their own, for pairs
    # and (by_record) for whole rankings as collate_rankings scores them
    enc = get_tokenizer("byte")
    ranking = [("A banana is yellow.", "Ugh. Purple."), ("A banana is yellow.", "Blue?"),
               ("Blue?", "Ugh. Purple.")]
    pairs = [dict(chosen=encode_example(enc, "What color is a banana?", c),
                  rejected=encode_example(enc, "What color is a banana?", r), margin=0.0,
                  record=("f", 1)) for c, r in ranking]
    pairs.append(dict(chosen=encode_example(enc, "2 + 3?", "5"), margin=0.0, record=("f", 2),
                      rejected=encode_example(enc, "2 + 3?", "It is 7, I am sure."),))
    torch.manual_seed(0)
    rm = ScalarModel(GPTConfig(block_size=128, vocab_size=257, n_layer=2, n_head=2, n_embd=32))
    off = torch.autocast("cpu", enabled=False)
    plain = layouts.row_scores(rm, layouts.collate_pairs(pairs, enc.eot_token), off)
    for by_record in (False, True):
        collate, forward = layouts.score_layout(share_prompt=True, rankings=by_record)
        batch = collate(pairs, enc.eot_token)
        assert batch["idx"].size(0) == (2 if by_record else 4)
        shared = forward(rm, batch, off)
        for x, y in zip(plain, shared):
            torch.testing.assert_close(y, x, atol=1e-5, rtol=0)


def test_shared_prompt_run_equals_the_plain_run(small_prefs, tmp_path):
    prefs, sft, _ = small_prefs
    args = TINY + [f"--train_data={prefs}", f"--val_data={prefs}", f"--bias_data={sft}",
                   "--batch_size=2", "--num_epochs=2", "--warmup_iters=0", "--eval_interval=100"]
    plain = train_reward_model.main(args + [f"--out_dir={tmp_path / 'plain'}"])
    shared = train_reward_model.main(args + [f"--out_dir={tmp_path / 'shared'}",
                                             "--share_prompt=True"])
    for k in ("train_loss", "val_loss", "val_margin", "reward_bias"):
        assert shared[k] == pytest.approx(plain[k], abs=1e-5), k
    assert shared["val_accuracy"] == plain["val_accuracy"]


@pytest.mark.slow
def test_grouped_kwise_rankings_train(tmp_path):
    rows = [dict(prompt="What color is a banana?",
                 responses=["Ugh. Purple.", "A banana is yellow. Glad to help!", "A banana is yellow.",
                            "A banana is yellow. Hope that helps!"], ranks=[3, 1, 2, 1]),
            dict(prompt="What does a dog say?",
                 responses=["A dog says woof.", "Whatever.", "Um, a dog says woof, I guess.",
                            "A dog says woof. Happy to help!"], scores=[2.0, -3.0, 0.5, 3.0])]
    data = write_jsonl(tmp_path / "ranked.jsonl", rows)
    # 5 + 6 pairs in 2 rankings; batches of one ranking: 2 steps per epoch
    out = train_reward_model.main(TINY + [f"--train_data={data}", f"--val_data={data}",
                                          f"--out_dir={tmp_path / 'rm'}", "--batch_size=1",
                                          "--num_epochs=6", "--warmup_iters=0", "--lr=1e-2",
                                          "--eval_interval=100", "--bias_ref=chosen",
                                          "--group_rankings=True"])
    assert out["max_iters"] == 12 and out["step"] == 12
    assert out["val_accuracy"] == 1.0, out


@pytest.mark.slow
def test_resume_gives_the_same_weights(small_prefs):
    prefs, sft, tmp = small_prefs
    args = TINY + [f"--train_data={prefs}", f"--val_data={prefs}", f"--bias_data={sft}",
                   "--batch_size=2", "--num_epochs=3", "--warmup_iters=2", "--eval_interval=2",
                   "--ckpt_interval=100", "--use_margin=True", "--center_coef=0.01",
                   "--dropout=0.1"]  # dropout: the RNG state must be restored too
    full = train_reward_model.main(args + [f"--out_dir={tmp / 'full'}"])
    assert full["max_iters"] == 6
    part = train_reward_model.main(args + [f"--out_dir={tmp / 'part'}", "--stop_iter=3"])
    assert part["step"] == 3 and part["reward_bias"] is None  # normalised only at the end
    resumed = train_reward_model.main(args + [f"--out_dir={tmp / 'part'}", "--resume=True"])
    assert resumed["step"] == 6
    a = checkpoint.load_checkpoint(str(tmp / "full" / "ckpt_last.pt"), expect_kind="scalar")
    b = checkpoint.load_checkpoint(str(tmp / "part" / "ckpt_last.pt"), expect_kind="scalar")
    assert a["stage"] == b["stage"] == "rm" and a["step"] == b["step"] == 6
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], atol=1e-6, rtol=0, msg=k)
    assert resumed["reward_bias"] == pytest.approx(full["reward_bias"], abs=1e-6)
    assert resumed["val_accuracy"] == full["val_accuracy"]
    # ckpt_best.pt holds its own weights' reward_bias: scoring the references with it gives ~0
    model, _ = checkpoint.init_scalar(str(tmp / "full" / "ckpt_best.pt"))
    rows = [json.loads(l) for l in open(sft)]
    s = score(model, [r["prompt"] for r in rows], [r["response"] for r in rows])
    assert abs(s.mean().item()) < 1e-4


# rankings of very different sizes: 10 pairs (5 answers) and 1 pair (2 answers)
UNEVEN_RANKINGS = [
    dict(prompt="What does a dog say?", ranks=[1, 2, 3, 4, 5],
         responses=["A dog says woof. Happy to help!", "A dog says woof.", "Um, a dog says woof.",
                    "A dog says moo.", "Whatever."]),
    dict(prompt="What color is a lime?", ranks=[1, 2],
         responses=["A lime is green. Glad to help!", "A lime is red. Duh."])]


@pytest.mark.unit
def test_a_step_is_the_mean_over_its_pairs_however_it_is_split(tmp_path):
    # one micro-batch of both rankings, or one micro-batch per ranking: each of the 11 pairs
    # weighs 1/11 either way (a mean of micro-batch means would give the lone pair 1/2)
    from data import loader
    from types import SimpleNamespace
    enc = get_tokenizer("byte")
    pairs = loader.load_preferences(write_jsonl(tmp_path / "r.jsonl", UNEVEN_RANKINGS), enc, 128)
    by_record = [[p for p in pairs if p["record"][1] == line] for line in (1, 2)]
    assert [len(x) for x in by_record] == [10, 1]
    cfg = SimpleNamespace(use_margin=False, center_coef=0.0)
    proc = SimpleNamespace(autocast=torch.autocast("cpu", enabled=False), world_size=1)
    torch.manual_seed(0)
    model = ScalarModel(GPTConfig(block_size=128, vocab_size=257, n_layer=1, n_head=2, n_embd=32))
    results = []
    for micro in ([pairs], by_record):
        model.zero_grad()
        batches = [layouts.collate_rankings(m, enc.eot_token) for m in micro]
        metrics = train_reward_model.rm_step(model, batches, layouts.ranking_scores, cfg, proc)
        results.append((metrics, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (one, g1), (two, g2) = results
    with torch.no_grad():  # the loss by hand: the mean of -log sigma(r_c - r_r) over 11 pairs
        rc, rr = layouts.ranking_scores(
            model, layouts.collate_rankings(pairs, enc.eot_token), proc.autocast)
        want = -torch.nn.functional.logsigmoid(rc - rr).mean().item()
    assert one["loss"] == pytest.approx(want, abs=1e-6)
    for k in ("loss", "accuracy", "margin"):
        assert two[k] == pytest.approx(one[k], abs=1e-6), k
    for n in g1:
        torch.testing.assert_close(g2[n], g1[n], atol=1e-6, rtol=0, msg=n)


@pytest.mark.unit
def test_held_out_rankings_are_scored_once_with_the_pairs_metrics(tmp_path):
    # group_rankings: evaluation batches hold whole rankings (7 distinct answers for 11 pairs
    # here), each pair exactly once, and measure what the pair-by-pair batches measure
    from data import loader
    from types import SimpleNamespace
    enc = get_tokenizer("byte")
    pairs = loader.load_preferences(write_jsonl(tmp_path / "r.jsonl", UNEVEN_RANKINGS), enc, 128)
    proc = SimpleNamespace(autocast=None, world_size=1, rank=0, device="cpu", fsdp=False)
    torch.manual_seed(0)
    model = ScalarModel(GPTConfig(block_size=128, vocab_size=257, n_layer=1, n_head=2, n_embd=32))
    out = {}
    for grouped in (False, True):
        cfg = SimpleNamespace(batch_size=1 if grouped else 4, group_rankings=grouped,
                              use_margin=False, center_coef=0.0)
        batches = train_reward_model.val_batches(pairs, cfg)
        assert sorted(id(p) for b in batches for p in b) == sorted(id(p) for p in pairs)
        if grouped:  # one ranking per batch: 5 answers, then 2
            assert [len(b) for b in batches] == [10, 1]
            rows = [layouts.collate_rankings(b, enc.eot_token)["idx"].size(0) for b in batches]
            assert rows == [5, 2]
        out[grouped] = train_reward_model.evaluate(model, batches, layouts.score_layout(
            False, grouped), cfg, proc, enc.eot_token)
    with torch.no_grad():  # accuracy by hand, from each answer scored alone
        score = {}
        for p in pairs:
            for side in ("chosen", "rejected"):
                ids = tuple(p[side][0])
                score[ids] = model(torch.tensor([ids])).item()
        want = sum(score[tuple(p["chosen"][0])] > score[tuple(p["rejected"][0])]
                   for p in pairs) / len(pairs)
    # a count, exact whatever the batching: checkpoints right on as many pairs tie exactly
    assert out[True]["val_accuracy"] == out[False]["val_accuracy"] == want
    for k in out[False]:
        assert out[True][k] == pytest.approx(out[False][k], abs=1e-5), k


@pytest.mark.unit
def test_aggregate_rewards_by_hand():
    # three members' scores of two answers
    s = torch.tensor([[1.0, -2.0], [3.0, 0.0], [2.0, 2.0]])
    agg = train_reward_model.aggregate_rewards
    assert agg(s, "mean").tolist() == pytest.approx([2.0, 0.0])
    assert agg(s, "min").tolist() == pytest.approx([1.0, -2.0])
    # variance with ddof = 0: [(1 + 1 + 0) / 3, (4 + 0 + 4) / 3]
    assert agg(s, "uwo", uwo_lambda=0.5).tolist() == pytest.approx([2.0 - 0.5 * 2 / 3,
                                                                    0.0 - 0.5 * 8 / 3])
    assert agg(s[:1], "uwo").tolist() == pytest.approx([1.0, -2.0])  # one member: no spread
    with pytest.raises(ValueError, match="aggregation"):
        agg(s, "max")


@pytest.mark.slow
def test_an_ensemble_trains_its_members_and_reads_as_one(small_prefs, tmp_path):
    prefs, sft, _ = small_prefs
    args = TINY + [f"--train_data={prefs}", f"--val_data={prefs}", f"--bias_data={sft}",
                   "--batch_size=2", "--num_epochs=2", "--warmup_iters=0", "--eval_interval=100"]
    out = tmp_path / "ens"
    res = train_reward_model.main(args + [f"--out_dir={out}", "--ensemble=2", "--bootstrap=True"])
    assert len(res["members"]) == 2 and sorted(os.listdir(out)) == ["member0", "member1"]
    one = train_reward_model.main(args + [f"--out_dir={tmp_path / 'one'}", "--seed=1338",
                                          "--bootstrap=True"])
    a = checkpoint.load_checkpoint(str(out / "member1" / "ckpt_last.pt"))
    b = checkpoint.load_checkpoint(str(tmp_path / "one" / "ckpt_last.pt"))
    assert a["config"]["seed"] == 1338  # member k is the run of seed + k, nothing else
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    m0 = checkpoint.load_checkpoint(str(out / "member0" / "ckpt_last.pt"))["model"]
    assert not torch.equal(m0["head.weight"], a["model"]["head.weight"])  # members differ
    # consumers read the directory (or a list of files) as one model of aggregated scores
    from model import ScalarEnsemble
    enc = get_tokenizer("byte")
    idx, mask = (torch.tensor([x]) for x in encode_example(enc, "What does a cow say?", "Moo."))
    members = [checkpoint.load_reward_model(str(out / f"member{k}" / "ckpt_best.pt"), "byte")
               for k in (0, 1)]
    each = torch.stack([m.score(idx, mask) for m in members])  # (2, 1)
    for how in ("mean", "min", "uwo"):
        ens = checkpoint.load_reward_model(str(out), "byte", agg=how, uwo_lambda=0.5)
        listed = checkpoint.load_reward_model(",".join(
            str(out / f"member{k}" / "ckpt_best.pt") for k in (0, 1)), "byte", agg=how,
            uwo_lambda=0.5)
        assert isinstance(ens, ScalarEnsemble) and len(ens.members) == 2
        want = train_reward_model.aggregate_rewards(each, how, 0.5)
        assert ens.score(idx, mask).tolist() == pytest.approx(want.tolist(), abs=1e-6)
        assert listed.score(idx, mask).tolist() == pytest.approx(want.tolist(), abs=1e-6)
    with pytest.raises(config.CheckpointError, match="member"):
        checkpoint.load_reward_model(str(tmp_path), "byte")  # a directory without members
