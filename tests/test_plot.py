"""
Figures: PNGs drawn from synthetic log.jsonl files and a synthetic over-optimisation sweep
(skipped without matplotlib), and the message when matplotlib is missing.
"""

import json
import math
import sys

import pytest

import plot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_log(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


@pytest.fixture
def runs(tmp_path):
    """out/{sft,rm,ppo,dpo}_toy/log.jsonl with the training scripts' keys, and out/eval."""
    root = tmp_path / "out"
    steps = range(1, 11)
    write_log(root / "sft_toy" / "log.jsonl",
              [dict(step=0, val_loss=5.5)] + [dict(step=s, loss=5.0 / s, lr=1e-3) for s in steps]
              + [dict(step=10, val_loss=0.7)])
    write_log(root / "rm_toy" / "log.jsonl",
              [dict(step=s, loss=0.7 - 0.02 * s, accuracy=0.5 + 0.03 * s, margin=0.1 * s)
               for s in steps] + [dict(step=10, val_accuracy=0.8, val_margin=0.9, val_loss=0.5)])
    write_log(root / "ppo_toy" / "log.jsonl",
              [dict(step=s, score=0.1 * s, gold=1.0 + 0.1 * s - 0.02 * s * s, kl=0.5 * s,
                    beta=0.05, entropy=2.0 - 0.1 * s, clipfrac=0.1, vclipfrac=0.05, resp_len=20.0,
                    eos_rate=1.0) for s in steps] + [dict(step=10, val_score=1.0, val_kl=4.0)])
    # DPO logs only some of its metrics: the missing ones are left out, not an error
    (root / "dpo_toy").mkdir()
    with open(root / "dpo_toy" / "log.jsonl", "w") as f:
        for s in steps:
            f.write(json.dumps(dict(step=s, loss=0.69 - 0.03 * s, margin=0.2 * s,
                                    accuracy=min(1.0, 0.5 + 0.05 * s))) + "\n")
        f.write('{"step": 11, "loss": 0.3')  # a run killed mid-write: the line is skipped
    iters = [0, 10, 20, 30]
    (root / "eval").mkdir()
    (root / "eval" / "overoptimization.json").write_text(json.dumps(dict(
        run=["reference"] + ["out/ppo_toy"] * 3, iter=iters, kl=[0.0, 2.0, 6.0, 15.0],
        gold=[1.1, 1.9, 2.2, 1.4], rm=[0.0, 1.0, 2.0, 3.0], gold_stderr=[0.1] * 4,
        rm_stderr=[0.05] * 4, kl_stderr=[None, 0.1, 0.2, 0.4],
        bon=dict(n=[1, 2, 4], kl=[0.0, 0.19, 0.64], gold=[1.1, 1.5, 1.8], gold_stderr=[0.1] * 3,
                 rm=[0.0, 0.6, 1.1], rm_stderr=[0.05] * 3))))
    return root


def test_writes_every_figure(runs, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "plots"
    written = plot.main([f"--runs={runs}", f"--eval_dir={runs}/eval", f"--out_dir={out}"])
    assert set(written) == {"sft", "rm", "ppo", "dpo", "overoptimization"}
    for name in written:
        data = (out / f"{name}.png").read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
    assert "not JSON, skipped" in capsys.readouterr().out


def test_missing_runs_are_skipped(runs, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    for stage in ("rm", "dpo"):
        (runs / f"{stage}_toy" / "log.jsonl").unlink()
    (runs / "eval" / "overoptimization.json").unlink()
    write_log(runs / "other_toy" / "log.jsonl", [dict(step=1, nothing_we_plot=1.0)])
    out = tmp_path / "plots"
    written = plot.main([f"--runs={runs}", f"--out_dir={out}"])  # eval_dir defaults to runs/eval
    assert set(written) == {"sft", "ppo"}  # the runs that are there, each by its own name
    assert not (out / "rm.png").exists() and not (out / "overoptimization.png").exists()
    printed = capsys.readouterr().out
    assert "other: " in printed and "holds none of the plotted metrics" in printed
    assert "overoptimization: no" in printed


def test_runs_are_drawn_by_what_wrote_them_and_token_heatmaps(runs, tmp_path):
    pytest.importorskip("matplotlib")
    # an RLOO run (train_grpo.py's keys) under a free name, with per-token samples
    write_log(runs / "rloo_toy" / "log.jsonl",
              [dict(step=s, score=0.1 * s, no_signal=0.2, kl=0.1 * s, entropy=0.5) for s in (1, 2)])
    write_log(runs / "rloo_toy" / "tokens.jsonl",
              [dict(step=s, prompt="What?", tokens=[" A", " cow", "<eos>"],
                    advantage=[0.5, 0.5, 0.5], kl=[0.1, -0.2, 0.0]) for s in (1, 2)])
    write_log(runs / "dpo_toy" / "tokens.jsonl",
              [dict(step=0, tokens_chosen=["a", "b"], log_ratio_chosen=[0.0, 0.3],
                    tokens_rejected=["c"], log_ratio_rejected=[-0.4])])
    assert plot.run_kind(plot.read_log(runs / "rloo_toy" / "log.jsonl")) == "grpo"
    out = tmp_path / "plots"
    written = plot.main([f"--runs={runs}", f"--out_dir={out}"])
    assert {"rloo", "rloo_tokens", "dpo_tokens"} <= set(written)
    for name in ("rloo_tokens", "dpo_tokens"):
        data = (out / f"{name}.png").read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 3000, name


@pytest.mark.unit
def test_series_keeps_only_finite_numbers():
    records = [dict(step=1, kl=0.5), dict(step=2), dict(step=3, kl=math.nan), dict(step=4, kl=True),
               dict(step=5, kl=2)]
    assert plot.series(records, "kl") == ([1, 5], [0.5, 2])


def test_missing_matplotlib_is_a_clear_error(monkeypatch, tmp_path, capsys):
    # a None entry in sys.modules makes `import matplotlib` raise ImportError
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(SystemExit) as e:
        plot.main([f"--runs={tmp_path}", f"--out_dir={tmp_path / 'plots'}"])
    assert e.value.code == 1
    assert "plot.py needs matplotlib: pip install matplotlib" in capsys.readouterr().err


@pytest.mark.unit
def test_a_kto_run_is_drawn_with_kto_titles():
    # KTO has no chosen/rejected pairs: its accuracy is the share of answers on their side of
    # the reference point, and its panels say so (they once had DPO's wording)
    records = [dict(step=s, loss=0.5, accuracy=0.6, kl=0.1, logps_desirable=-3.0,
                    logps_undesirable=-4.0, rewards_desirable=0.1, rewards_undesirable=-0.1)
               for s in (1, 2)]
    assert plot.run_kind(records) == "kto"
    titles = [t for t, _ in plot.FIGURES["kto"][2]]
    assert any("reference point" in t for t in titles) and not any("chosen" in t for t in titles)
    assert not any("desirable" in k for _, keys in plot.FIGURES["dpo"][2] for k in keys)


def test_safety_points_and_figure(runs, tmp_path):
    # two seeds' results.json: a point per policy and seed; a policy without the safety numbers
    # (no harmful prompt asked) is left out
    def results(shift):
        return dict(policies=dict(
            sft=dict(gold_benign=0.2 + shift, harmful_compliance=0.6, over_refusal=0.05),
            ppo_safe=dict(gold_benign=1.1 + shift, harmful_compliance=0.1, over_refusal=0.25),
            gpt2=dict(gold_benign=None, harmful_compliance=None, over_refusal=None)))
    for seed, shift in (("s1", 0.0), ("s2", 0.1)):
        (tmp_path / seed).mkdir()
        (tmp_path / seed / "results.json").write_text(json.dumps(results(shift)))
    pts = plot.safety_points({"s1": results(0.0)})
    assert pts == [("sft", "s1", 0.2, pytest.approx(0.4), 0.05),
                   ("ppo_safe", "s1", 1.1, pytest.approx(0.9), 0.25)]
    pytest.importorskip("matplotlib")
    out = tmp_path / "plots"
    written = plot.main([f"--runs={runs}", f"--out_dir={out}",
                         f"--safety={tmp_path / 's1'},{tmp_path / 's2'}"])
    assert (out / "safety.png").read_bytes().startswith(PNG_MAGIC) and "safety" in written
    rows = [dict(dose=d, policy=p, harmful_compliance=0.5 - d, over_refusal=d / 2,
                 gold_benign=1.0) for d in (0.0, 0.03, 0.1, 0.3) for p in ("sft", "ppo")]
    assert plot.plot_dose(rows, str(out / "dose.png")) == str(out / "dose.png")
    assert (out / "dose.png").stat().st_size > 5000 and plot.plot_dose([], str(out / "x.png")) is None
