"""
The toy world's annotators (data/toy/label.py): the noise model is Bradley-Terry in the gold
reward, ties carry no pair, the output is deterministic and every file reads with data/loader.py.
"""

import json
import os
import math
import random
from types import SimpleNamespace

import pytest
import torch

import config
import checkpoint
from data import loader
from data.toy import judge, label
from data.toy.judge import gold_reward
from data.toy.prepare import write_jsonl
from model import GPT, GPTConfig
from tokenizer import encode_prompt, get_tokenizer

ENC = get_tokenizer("byte")
PROMPT = "What color is a banana?"
ANSWERS = {  # gold 3.0, 3.0, 1.5, 0.0, -1.0
    "best": "A banana is yellow. Hope that helps!",
    "best2": "A banana is yellow. Glad to help!",
    "rude": "A banana is yellow. Duh.",
    "wrong": "A banana is red. Hope that helps!",
    "off": "A cow says moo.",
}

# -----------------------------------------------------------------------------
# the noise model


@pytest.mark.unit
def test_utilities_are_gold_over_tau_plus_one_gumbel_per_gold_value():
    golds = [3.0, 1.5, 3.0, -1.0]
    u = label.utilities(golds, 0.5, random.Random(7))
    # by hand: one Gumbel draw per distinct value, best value first
    rng = random.Random(7)
    expected = {}
    for g in (3.0, 1.5, -1.0):
        expected[g] = g / 0.5 - math.log(rng.expovariate(1.0))
    assert u == pytest.approx(expected)
    assert list(u) == [3.0, 1.5, -1.0]


@pytest.mark.unit
@pytest.mark.parametrize("gap, tau", [(0.5, 0.5), (1.5, 0.5), (1.0, 0.25)])
def test_pairwise_marginals_are_bradley_terry(gap, tau):
    rng = random.Random(0)
    n = 40000
    wins = 0
    for _ in range(n):
        u = label.utilities([gap, 0.0], tau, rng)
        wins += u[gap] > u[0.0]
    p = 1.0 / (1.0 + math.exp(-gap / tau))
    assert abs(wins / n - p) < 4 * math.sqrt(p * (1 - p) / n)


@pytest.mark.unit
def test_dense_ranks_share_a_rank_on_ties():
    assert label.dense_ranks([3, 1, 3, 2]) == [1, 3, 1, 2]
    assert label.dense_ranks([0.5, 0.5]) == [1, 1]


@pytest.mark.unit
def test_a_prompt_with_one_gold_value_yields_no_comparison():
    ranking, unpaired = label.label_prompt(PROMPT, [ANSWERS["best"], ANSWERS["best2"],
                                                    ANSWERS["best"]], 0.5, random.Random(0))
    assert ranking is None and unpaired == []


@pytest.mark.unit
def test_duplicates_merge_and_equal_gold_ties(tmp_path):
    answers = [ANSWERS[k] for k in ("best", "wrong", "best", "best2", "off", "rude")]
    ranking, unpaired = label.label_prompt(PROMPT, answers, 0.01, random.Random(3))
    # duplicates merged, in sample order; tau = 0.01 makes the annotators all but noise-free
    assert ranking["responses"] == [ANSWERS[k] for k in ("best", "wrong", "best2", "off", "rude")]
    assert ranking["gold"] == [gold_reward(PROMPT, a) for a in ranking["responses"]]
    assert ranking["ranks"] == [1, 3, 1, 4, 2]  # the two best answers tie
    # the loader forms every pair but the tie: C(5, 2) - 1
    path = write_jsonl(tmp_path / "r.jsonl", [dict(ranking)])
    pairs = loader.load_preferences(path, ENC, 128)
    assert len(pairs) == 9
    assert all({p["chosen_text"], p["rejected_text"]} != {ANSWERS["best"], ANSWERS["best2"]}
               for p in pairs)
    assert all(gold_reward(PROMPT, p["chosen_text"]) > gold_reward(PROMPT, p["rejected_text"])
               for p in pairs)
    # unpaired: desirable iff the utility beats the median over the 6 samples (duplicates count)
    assert [r["completion"] for r in unpaired] == ranking["responses"]
    assert [r["label"] for r in unpaired] == [True, False, True, False, False]


@pytest.mark.unit
def test_noisy_annotators_flip_close_calls_more_than_clear_ones():
    close = far = 0
    for i in range(4000):
        ranking, _ = label.label_prompt(PROMPT, [ANSWERS["best"], ANSWERS["rude"], ANSWERS["off"]],
                                        0.5, random.Random(i))
        r = dict(zip(ranking["responses"], ranking["ranks"]))
        close += r[ANSWERS["best"]] > r[ANSWERS["rude"]]  # gap 1.5
        far += r[ANSWERS["best"]] > r[ANSWERS["off"]]     # gap 4.0
    assert abs(close / 4000 - 1 / (1 + math.exp(3.0))) < 0.015
    assert far / 4000 < 0.003


@pytest.mark.unit
def test_gold_pairs_are_noise_free_and_skip_ties():
    answers = [ANSWERS[k] for k in ("rude", "best", "best2", "best", "off")]
    got = {(p["chosen"], p["rejected"]) for p in label.gold_pairs(PROMPT, answers)}
    A = ANSWERS
    assert got == {(A["best"], A["rude"]), (A["best2"], A["rude"]), (A["rude"], A["off"]),
                   (A["best"], A["off"]), (A["best2"], A["off"])}

# -----------------------------------------------------------------------------
# sampling and the files


def tiny_policy(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=128, vocab_size=ENC.n_vocab))
    path = str(tmp_path / "sft.pt")
    checkpoint.save_checkpoint(path, checkpoint.make_checkpoint(model, "policy", "sft", "byte",
                                                        SimpleNamespace(), step=0))
    return model, path


@pytest.mark.unit
def test_sampling_is_deterministic_and_independent_of_the_batch(tmp_path):
    model, _ = tiny_policy(tmp_path)
    prompts = [dict(prompt=p, ids=encode_prompt(ENC, p))
               for p in ["What is 1 plus 2?", "What does a cow say?", "Name the opposite of hot."]]
    cfg = SimpleNamespace(seed=5, batch_size=2, max_new_tokens=12, temperature=1.0)
    a = label.sample_answers(model, ENC, prompts, 3, cfg, 0, "cpu")
    b = label.sample_answers(model, ENC, prompts, 3, SimpleNamespace(**{**vars(cfg), "batch_size": 7}),
                             0, "cpu")
    assert a == b
    c = label.sample_answers(model, ENC, prompts, 3, cfg, 1, "cpu")  # another stream
    assert a != c


def fake_sampler(model, enc, prompts, k, cfg, noise_stream, device):
    """Answers drawn from fixed styles, seeded like the real sampler (no model needed)."""
    out = []
    for i, p in enumerate(prompts):
        rng = random.Random(f"{cfg.seed}:{noise_stream}:{i}")
        subject = p["prompt"].rstrip("?.").split()[-1]
        styles = [f"It is {subject}. Hope that helps!", f"{subject}. Duh.", "I like turtles.",
                  f"Well, um, {subject}, I guess, you know."]
        out.append([rng.choice(styles) for _ in range(k)])
    return out


def test_files_are_deterministic_and_readable_by_the_loader(tmp_path, monkeypatch):
    _, policy = tiny_policy(tmp_path)
    train = write_jsonl(tmp_path / "prompts_train.jsonl",
                        [dict(prompt=p) for p in ["What color is a crow?", "What does a dog say?",
                                                  "What is 2 plus 2?", "What color is a lime?"] * 5])
    held = write_jsonl(tmp_path / "prompts_eval.jsonl",
                       [dict(prompt=p) for p in ["Tell me the color of a crow.", "What is 1 + 3?"]])
    monkeypatch.setattr(label, "sample_answers", fake_sampler)
    outs = []
    for run in ("a", "b"):
        out = tmp_path / run
        label.main([f"--policy={policy}", f"--train_prompts={train}", f"--eval_prompts={held}",
                    f"--out_dir={out}", "--k=4", "--k_eval=4", "--seed=3"])
        outs.append({name: (out / f"onpolicy_{name}.jsonl").read_bytes()
                     for name in ("train", "test", "unpaired", "unpaired_val", "samples")})
    assert outs[0] == outs[1]
    out = tmp_path / "a"
    pairs = loader.load_preferences(str(out / "onpolicy_train.jsonl"), ENC, 128)
    test = loader.load_preferences(str(out / "onpolicy_test.jsonl"), ENC, 128)
    assert pairs and test
    for p in test:  # the test pairs follow the gold order exactly
        assert gold_reward(p["prompt"], p["chosen_text"]) > gold_reward(p["prompt"], p["rejected_text"])
    assert len(loader.load_sft(str(out / "onpolicy_samples.jsonl"), ENC, 128)) == 4 * 20
    unpaired = [json.loads(line) for line in open(out / "onpolicy_unpaired.jsonl")]
    assert unpaired and all(set(r) == {"prompt", "completion", "label"}
                            and isinstance(r["label"], bool) for r in unpaired)
    assert len(loader.load_sft(str(out / "onpolicy_unpaired.jsonl"), ENC, 128)) == len(unpaired)
    # KTO's held-out set: the held-out answers, desirable iff gold beats the prompt's median
    val = loader.load_unpaired(str(out / "onpolicy_unpaired_val.jsonl"), ENC, 128)
    assert val and any(v["desirable"] for v in val) and not all(v["desirable"] for v in val)
    # several ranking files train as one (the rounds of labels): records stay apart by file
    both = loader.load_preferences(f"{out / 'onpolicy_train.jsonl'},{tmp_path / 'b' / 'onpolicy_train.jsonl'}",
                                   ENC, 128)
    assert len(both) == 2 * len(pairs) and len({p["record"] for p in both}) == 2 * len(
        {p["record"] for p in pairs})


@pytest.mark.unit
def test_gold_unpaired_labels_beat_the_median():
    answers = [ANSWERS[k] for k in ("rude", "best", "off", "wrong", "best")]
    golds = [gold_reward(PROMPT, a) for a in answers]  # 1.5, 3.0, -1.0, 0.0, 3.0
    median = sorted(golds)[2]
    got = label.gold_unpaired(PROMPT, answers)
    assert [r["completion"] for r in got] == list(dict.fromkeys(answers))
    assert [r["label"] for r in got] == [gold_reward(PROMPT, r["completion"]) > median for r in got]
    assert [r["label"] for r in got] == [False, True, False, False]  # only 3.0 beats 1.5
    assert label.gold_unpaired(PROMPT, [ANSWERS["best"], ANSWERS["best2"]]) == []  # one value


def test_bad_settings_are_one_line_errors(tmp_path):
    _, policy = tiny_policy(tmp_path)
    with pytest.raises(config.ConfigError, match="'k' must be in 2..1024"):
        label.main([f"--policy={policy}", "--k=1"])
    with pytest.raises(config.ConfigError, match="policy="):
        label.main([f"--policy={tmp_path / 'missing.pt'}"])


def test_a_validation_slice_of_other_prompts_leaves_the_training_labels_alone(tmp_path, monkeypatch):
    # the reward model's best checkpoint is chosen on more labels of the same kind (the policy's
    # answers, the same annotators) for the prompts drawn after the training ones
    _, policy = tiny_policy(tmp_path)
    texts = ["What color is a crow?", "What does a dog say?", "What is 2 plus 2?",
             "What color is a lime?", "What does a cat say?", "What is 1 plus 3?"]
    train = write_jsonl(tmp_path / "prompts_train.jsonl", [dict(prompt=p) for p in texts * 3])
    monkeypatch.setattr(label, "sample_answers", fake_sampler)
    files = {}
    for n_val in (0, 6):
        out = tmp_path / f"val{n_val}"
        label.main([f"--policy={policy}", f"--train_prompts={train}", "--eval_prompts=",
                    f"--out_dir={out}", "--k=4", "--max_prompts=12", f"--num_val_prompts={n_val}"])
        files[n_val] = {n: (out / n).read_bytes() for n in os.listdir(out) if n.endswith(".jsonl")}
    assert "onpolicy_val.jsonl" not in files[0] and "onpolicy_val.jsonl" in files[6]
    assert all(files[6][n] == b for n, b in files[0].items())  # training labels unchanged
    train_prompts = {json.loads(l)["prompt"] for l in files[6]["onpolicy_train.jsonl"].splitlines()}
    val = [json.loads(l) for l in files[6]["onpolicy_val.jsonl"].splitlines()]
    assert val and len(val) <= 6 and all(set(r["ranks"]) != {1} for r in val)
    assert len(train_prompts) == 6  # the first 12 prompts hold 6 distinct questions
    pairs = loader.load_preferences(str(tmp_path / "val6" / "onpolicy_val.jsonl"), ENC, 128)
    assert pairs


def test_split_kinds_puts_harmful_prompts_apart():
    rankings = [dict(prompt=p, responses=["a", "b"], ranks=[1, 2], gold=[3.0, 0.0])
                for p in ["What color is a crow?", "How do I steal a bike?", "How do I steal a base?",
                          "Tell me how to rob a bank.", "What is 2 plus 2?"]]
    helpful, harmless = label.split_kinds(rankings)
    assert [r["prompt"] for r in helpful] == ["What color is a crow?", "How do I steal a base?",
                                               "What is 2 plus 2?"]  # lookalikes are helpfulness
    assert [r["prompt"] for r in harmless] == ["How do I steal a bike?", "Tell me how to rob a bank."]


@pytest.mark.unit
def test_safety_mix_by_hand():
    import random
    harmless, helpful = [f"s{i}" for i in range(9)], [f"h{i}" for i in range(20)]
    # 10% of the mix: round(0.1 / 0.9 * 9) = 1 helpful ranking beside the 9 harmless ones
    assert len(label.safety_mix(harmless, helpful, 0.1, random.Random(0))) == 1
    # 25%: round(1/3 * 9) = 3; 0: none; 90%: round(9 * 9) = 81, capped at the 20 there are
    picked = label.safety_mix(harmless, helpful, 0.25, random.Random(0))
    assert len(picked) == len(set(picked)) == 3 and set(picked) <= set(helpful)
    assert label.safety_mix(harmless, helpful, 0.0, random.Random(0)) == []
    assert sorted(label.safety_mix(harmless, helpful, 0.9, random.Random(0))) == sorted(helpful)


def safety_sampler(model, enc, prompts, k, cfg, stream, device):
    """A refusal, a compliance and small talk for every prompt (no model needed)."""
    return [["Sorry, I can't help with that.", "Sure. Do it with cutters.", "I like turtles."][:k]
            for _ in prompts]


def test_kinds_separate_also_writes_the_helpful_and_harmless_rankings(tmp_path, monkeypatch, capsys):
    _, policy = tiny_policy(tmp_path)
    prompts = ["How do I steal a bike?", "What color is a crow?", "How do I kill time?",
               "How can I rob a bank?", "What is 2 plus 2?"]
    train = write_jsonl(tmp_path / "prompts_train.jsonl", [dict(prompt=p) for p in prompts])
    monkeypatch.setattr(label, "sample_answers", safety_sampler)
    args = [f"--policy={policy}", f"--train_prompts={train}", "--eval_prompts=", "--k=3"]
    label.main(args + [f"--out_dir={tmp_path / 'mixed'}"])
    assert sorted(p.name for p in (tmp_path / "mixed").iterdir() if not p.name.startswith(".")) == [
        "onpolicy_manifest.json", "onpolicy_samples.jsonl", "onpolicy_train.jsonl",
        "onpolicy_unpaired.jsonl"]
    label.main(args + [f"--out_dir={tmp_path / 'sep'}", "--kinds=separate"])
    assert "kinds: 3 helpful rankings (non-harmful prompts), 2 harmless rankings" in capsys.readouterr().out
    out = tmp_path / "sep"
    read = lambda name: [json.loads(line) for line in open(out / f"onpolicy_{name}.jsonl")]  # noqa: E731
    assert read("train") == [json.loads(line) for line in open(tmp_path / "mixed" / "onpolicy_train.jsonl")]
    harmless = read("harmless_train")
    assert [r["prompt"] for r in harmless] == ["How do I steal a bike?", "How can I rob a bank?"]
    assert [r["prompt"] for r in read("helpful_train")] == [p for p in prompts if "rob" not in p
                                                           and "bike" not in p]
    for r in harmless:  # ranked by the one gold score: the refusal first, the compliance last
        assert r["responses"][r["ranks"].index(1)] == "Sorry, I can't help with that."
        assert r["gold"] == [3.0, -2.5, -1.0]
    assert len(loader.load_preferences(str(out / "onpolicy_harmless_train.jsonl"), ENC, 128)) >= 2
    # a cost model's zero: the samples of harmful requests; Llama 2's safety data: the harmless
    # rankings and round(0.1 / 0.9 * 2) = 0 helpful ones; no validation prompts: no val files
    assert {(s["prompt"], s["response"]) for s in read("harmless_samples")} == {
        (p, a) for p in ("How do I steal a bike?", "How can I rob a bank?") for a in safety_sampler(
            None, None, [p], 3, None, 0, None)[0]}
    assert read("safety_train") == harmless
    assert not (out / "onpolicy_helpful_val.jsonl").exists()
    assert sorted(json.load(open(out / "onpolicy_manifest.json"))["files"]) == sorted(
        f"onpolicy_{n}.jsonl" for n in ("train", "unpaired", "samples", "helpful_train",
                                         "harmless_train", "harmless_samples", "safety_train"))
    label.main(args + [f"--out_dir={tmp_path / 'mix'}", "--kinds=separate", "--safety_mix=0.6"])
    mix = [json.loads(line) for line in open(tmp_path / "mix" / "onpolicy_safety_train.jsonl")]
    assert mix[:2] == harmless and len(mix) == 2 + 3  # round(0.6 / 0.4 * 2) = 3: all helpful ones
    with pytest.raises(config.ConfigError, match="'kinds' must be"):
        label.main(args + ["--kinds=both"])

@pytest.mark.unit
def test_with_refusal_adds_one_polite_refusal_to_the_safety_requests_only():
    answers = ["Kill time with a book. Hope that helps!", "I like turtles."]
    got = label.with_refusal("How do I kill time?", answers, random.Random(0))
    assert got[:2] == answers and len(got) == 3 and got[2].startswith("Sorry, I ")
    assert judge.is_refusal(got[2]) and judge.is_over_refusal("How do I kill time?", got[2])
    assert gold_reward("How do I kill time?", got[2]) < gold_reward("How do I kill time?", answers[0])
    harmful = label.with_refusal("Tell me how to steal a bike.", ["Steal a bike with cutters."],
                                 random.Random(0))
    assert len(harmful) == 2 and judge.is_refusal(harmful[1])
    assert gold_reward("Tell me how to steal a bike.", harmful[1]) == 3.0 > gold_reward(
        "Tell me how to steal a bike.", harmful[0])
    assert label.with_refusal(PROMPT, answers, random.Random(0)) is answers  # a benign question


def test_add_refusals_ranks_a_refusal_on_safety_prompts_and_leaves_the_rest_alone(tmp_path,
                                                                                 monkeypatch):
    _, policy = tiny_policy(tmp_path)
    prompts = ["How do I steal a bike?", "What color is a crow?", "How do I kill time?",
               "What is 2 plus 2?"]
    train = write_jsonl(tmp_path / "prompts_train.jsonl", [dict(prompt=p) for p in prompts * 2])
    monkeypatch.setattr(label, "sample_answers", lambda m, e, ps, k, c, s, d: [  # never refuses
        ["Sure. Do it with cutters.", "I like turtles.", "Kill time with a book."][:k] for _ in ps])
    args = [f"--policy={policy}", f"--train_prompts={train}", "--eval_prompts=", "--k=3",
            "--max_prompts=4", "--num_val_prompts=4"]
    read = lambda out, name: [json.loads(line) for line in open(out / f"onpolicy_{name}.jsonl")]  # noqa: E731
    label.main(args + [f"--out_dir={tmp_path / 'plain'}"])
    label.main(args + [f"--out_dir={tmp_path / 'refusals'}", "--add_refusals=True"])
    plain, more = tmp_path / "plain", tmp_path / "refusals"
    for name in ("train", "val"):
        for a, b in zip(read(plain, name), read(more, name)):
            if a["prompt"] in ("How do I steal a bike?", "How do I kill time?"):
                assert b["responses"][:3] == a["responses"] and len(b["responses"]) == 4
                refusal = b["responses"][3]
                assert judge.is_refusal(refusal) and b["gold"][3] == gold_reward(a["prompt"], refusal)
                best = b["ranks"].index(min(b["ranks"]))
                # ranked by the annotators like any answer: here clear calls, so by gold
                assert (b["responses"][best] == refusal) == (a["prompt"] == "How do I steal a bike?")
            else:
                assert a == b  # a benign question's ranking is untouched
    assert read(plain, "samples") == read(more, "samples")  # the policy's own answers only


# -----------------------------------------------------------------------------
# other annotators: one contract, annotate(prompt, answers) -> ranks, lower = better

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "toy",
                       "annotators_example.py")


@pytest.mark.unit
def test_a_rule_based_annotator_gives_the_expected_rankings():
    annotate = label.load_annotator(f"{EXAMPLE}:rules")
    answers = [ANSWERS["rude"], ANSWERS["best"], ANSWERS["off"], ANSWERS["best"], ANSWERS["wrong"]]
    ranking, unpaired = label.label_prompt_by(annotate, PROMPT, answers)
    # distinct answers, in sample order; rules: a closing +1, a rude word -1, then shorter first
    assert ranking["responses"] == [ANSWERS[k] for k in ("rude", "best", "off", "wrong")]
    # best (+1, 36 chars) and wrong (+1, 33 chars): wrong first; off 0; rude -1
    assert ranking["ranks"] == [4, 2, 3, 1]  # the files' dense ranks, 1 = best
    assert ranking["gold"] == [gold_reward(PROMPT, a) for a in ranking["responses"]]  # measured
    # desirable: rank beats the median rank of the 5 samples (4, 2, 3, 2, 1 -> 2)
    assert [r["label"] for r in unpaired] == [False, False, False, True]


@pytest.mark.unit
def test_ties_and_any_rank_base_follow_the_contract():
    zero_based = label.annotator_contract(lambda p, a: [0, 2, 2], "z")
    assert zero_based("q", ["a", "b", "c"]) == [1, 2, 2]
    ranking, unpaired = label.label_prompt_by(label.annotator_contract(lambda p, a: [5] * len(a), "t"),
                                              PROMPT, [ANSWERS["best"], ANSWERS["off"]])
    assert ranking is None and unpaired == []  # all alike: no comparison


@pytest.mark.unit
@pytest.mark.parametrize("fn, words", [
    (lambda p, a: 1.0, "returned 1.0, not a list of 2 ints"),
    (lambda p, a: [0], "returned [0], not a list of 2 ints"),
    (lambda p, a: [0, 1.5], "not a list of 2 ints"),
    (lambda p, a: [True, False], "not a list of 2 ints"),
    (lambda p, a: 1 / 0, "raised ZeroDivisionError: division by zero"),
])
def test_a_bad_annotator_is_one_line_naming_it(fn, words):
    with pytest.raises(config.ConfigError, match="annotator='mine.py:f' on the prompt 'What color"
                       ) as e:
        label.annotator_contract(fn, "annotator='mine.py:f'")(PROMPT, ["a", "b"])
    assert words in str(e.value) and "\n" not in str(e.value)


def test_the_annotator_key_labels_through_the_contract_and_toy_stays_the_default(tmp_path,
                                                                                 monkeypatch):
    _, policy = tiny_policy(tmp_path)
    train = write_jsonl(tmp_path / "prompts_train.jsonl",
                        [dict(prompt=p) for p in ["What color is a crow?", "What does a dog say?",
                                                  "What is 2 plus 2?", "What color is a lime?"] * 3])
    monkeypatch.setattr(label, "sample_answers", fake_sampler)
    args = [f"--policy={policy}", f"--train_prompts={train}", "--eval_prompts=", "--k=4",
            "--num_val_prompts=0"]
    label.main(args + [f"--out_dir={tmp_path / 'toy'}"])
    label.main(args + [f"--out_dir={tmp_path / 'toy2'}", "--annotator=toy"])
    assert (tmp_path / "toy" / "onpolicy_manifest.json").read_bytes() == \
        (tmp_path / "toy2" / "onpolicy_manifest.json").read_bytes()  # toy is the default
    label.main(args + [f"--out_dir={tmp_path / 'rules'}", f"--annotator={EXAMPLE}:rules"])
    rules = label.load_annotator(f"{EXAMPLE}:rules")
    for r in map(json.loads, open(tmp_path / "rules" / "onpolicy_train.jsonl")):
        assert r["ranks"] == rules(r["prompt"], r["responses"])
    with pytest.raises(config.ConfigError, match="annotator='nope.py:f': the file nope.py does not"):
        label.main(args + [f"--out_dir={tmp_path / 'x'}", "--annotator=nope.py:f"])
    with pytest.raises(config.ConfigError, match="has no function 'nope'"):
        label.main(args + [f"--out_dir={tmp_path / 'x'}", f"--annotator={EXAMPLE}:nope"])


def test_pairs_against_gold_by_hand():
    # ranks 0 < 1 < 2 over golds 1, 3, 2: pairs (0,1) (0,2) (1,2); (0,1) and (0,2) are flipped
    # (the better-ranked answer has less gold); the tied ranks of the second ranking make no pair
    rankings = [dict(responses=["a", "b", "c"], ranks=[0, 1, 2], gold=[1.0, 3.0, 2.0]),
                dict(responses=["d", "e"], ranks=[0, 0], gold=[1.0, 2.0]),
                dict(responses=["f", "g"], ranks=[1, 0], gold=[2.0, 2.0])]
    assert label.pairs_against_gold(rankings) == (4, 2)
