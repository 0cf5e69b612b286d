"""
data/hh/prepare.py on broken input, and its download; data/hh/stats.py's arithmetic. Fast and
offline: the fixtures of tests/fixtures/hh, files the tests break on purpose, and a local HTTP
server (never the internet). The conversion itself is pinned in tests/test_data.py (the fixture)
and tests/test_hh_real.py (the real file).

Every rejected input must be a DataError (or ConfigError) naming the file, the line where there
is one and what is wrong, printed by config.cli as one line 'error: ...', and must write nothing.
"""

import gzip
import http.server
import json
import os
import subprocess
import sys
import threading
from collections import Counter

import pytest

import config
from config import ConfigError, DataError
from data.hh import prepare as hh
from data.hh import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "hh")
GOOD = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}


def fixture_bytes(subset="helpful-base", split="train"):
    with open(os.path.join(FIXTURES, subset, f"{split}.jsonl.gz"), "rb") as f:
        return f.read()


def write_lines(path, lines, compress=False):
    """Write lines (dicts as JSON, str and bytes as they are) one per line; gzip when asked."""
    data = b"".join((json.dumps(x).encode() if isinstance(x, dict) else
                     x.encode() if isinstance(x, str) else x) + b"\n" for x in lines)
    with open(path, "wb") as f:
        f.write(gzip.compress(data) if compress else data)
    return str(path)


def cli_error(monkeypatch, *args):
    """The one line config.cli(prepare.main) exits with, for these command-line arguments."""
    monkeypatch.setattr(sys, "argv", ["prepare.py", *args])
    with pytest.raises(SystemExit) as e:
        config.cli(hh.main)
    msg = str(e.value.code)
    assert msg.startswith("error: ") and "\n" not in msg, msg
    return msg

# -----------------------------------------------------------------------------
# unreadable files: one line naming the file, the line and the fault; nothing written


def truncated_gz(tmp_path):
    data = gzip.compress(b"".join(json.dumps(GOOD).encode() + b"\n" for _ in range(5000)))
    path = tmp_path / "train.jsonl.gz"
    path.write_bytes(data[:len(data) // 2])
    return str(path)


@pytest.mark.parametrize("make, want", [
    (truncated_gz, r"train\.jsonl\.gz: the gzip stream is cut short or corrupt after line \d+ "
                   r"\(Compressed file ended"),
    (lambda t: write_lines(t / "train.jsonl.gz", [GOOD]), r"train\.jsonl\.gz: not a gzip file"),
    (lambda t: write_lines(t / "train.jsonl.gz", [GOOD, b'{"chosen": "caf\xe9"}'], compress=True),
     r"train\.jsonl\.gz:2: invalid UTF-8 \(invalid continuation byte"),
    (lambda t: write_lines(t / "train.jsonl", [GOOD, "", b"\xff\xfe"]),
     r"train\.jsonl:3: invalid UTF-8 \(invalid start byte at byte 0"),
    (lambda t: write_lines(t / "train.jsonl", [GOOD, '{"chosen": "x", "rejected"']),
     r"train\.jsonl:2: malformed JSON \("),
    (lambda t: write_lines(t / "train.jsonl", [GOOD, GOOD, '["a", "list"]']),
     r"train\.jsonl:3: expected a JSON object, got an array"),
    (lambda t: write_lines(t / "train.jsonl", ['{"chosen": "a", "chosen": "b", "rejected": "c"}']),
     r"train\.jsonl:1: field 'chosen': given twice"),
    (lambda t: write_lines(t / "train.jsonl", ['{"chosen": "\\ud800", "rejected": "x"}']),
     r"train\.jsonl:1: a string holds a lone surrogate"),
    (lambda t: write_lines(t / "train.jsonl", ["", "  "]), r"train\.jsonl: empty file \(no records\)"),
    (lambda t: write_lines(t / "train.jsonl.gz", [], compress=True), r"train\.jsonl\.gz: empty file"),
])
def test_unreadable_input_is_one_clear_error(tmp_path, make, want):
    path = make(tmp_path)
    with pytest.raises(DataError, match=want):
        hh.main([f"--input={path}", f"--out_dir={tmp_path / 'out'}"])
    assert not (tmp_path / "out").exists()


def test_gzip_data_named_jsonl_says_so(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(fixture_bytes())
    with pytest.raises(DataError, match=r"train\.jsonl:1: invalid UTF-8 .*gzip-compressed, name it "
                                        r"\.jsonl\.gz"):
        hh.main([f"--input={path}", f"--out_dir={tmp_path / 'out'}"])


def test_corrupt_gzip_after_good_lines_still_fails(tmp_path):
    """A flipped bit of the stored CRC: every line decodes and parses, the check fails at the end,
    and since nothing is written before every file is read, no output exists."""
    data = bytearray(gzip.compress(b"".join(json.dumps(GOOD).encode() + b"\n" for _ in range(50))))
    data[-8] ^= 0x01  # the trailer: CRC32 (4 bytes), then the size (4 bytes)
    path = tmp_path / "train.jsonl.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"train\.jsonl\.gz: corrupt gzip data after line 50 "
                                        r"\(CRC check failed"):
        hh.main([f"--input={path}", f"--out_dir={tmp_path / 'out'}"])
    assert not (tmp_path / "out").exists()


def test_input_with_no_usable_record_fails(tmp_path):
    path = write_lines(tmp_path / "test.jsonl", [
        {"chosen": "\n\nHuman: hi\n\nAssistant: same", "rejected": "\n\nHuman: hi\n\nAssistant: same"},
        {"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hi"},
        {"transcript": "\n\nHuman: a red-team record\n\nAssistant: ..."},
    ])
    with pytest.raises(DataError, match=r"test\.jsonl: none of the 3 records converts \(1 identical "
                                        r"answers, 1 no Assistant turn, 1 not a \{chosen, rejected\} "
                                        r"record\); expected HH-RLHF lines"):
        hh.main([f"--input={path}", f"--out_dir={tmp_path / 'out'}"])
    assert not (tmp_path / "out").exists()


def test_a_bad_split_writes_nothing_for_the_good_one(tmp_path):
    """train is fine, test is broken: out_dir keeps what it held, and no half-written file."""
    d = tmp_path / "copy" / "helpful-base"
    d.mkdir(parents=True)
    (d / "train.jsonl.gz").write_bytes(fixture_bytes())
    write_lines(d / "test.jsonl", [GOOD, "{not json"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "prefs_train.jsonl").write_text("old\n")
    with pytest.raises(DataError, match=r"test\.jsonl:2: malformed JSON"):
        hh.main([f"--input={tmp_path / 'copy'}", f"--out_dir={out}", "--subsets=helpful-base"])
    assert os.listdir(out) == ["prefs_train.jsonl"] and (out / "prefs_train.jsonl").read_text() == "old\n"


def test_command_line_prints_one_line_and_fails(tmp_path, monkeypatch):
    path = truncated_gz(tmp_path)
    msg = cli_error(monkeypatch, f"--input={path}", f"--out_dir={tmp_path / 'out'}")
    assert path in msg and "cut short" in msg
    assert "--input" in cli_error(monkeypatch, f"--input={tmp_path / 'nothing'}")
    assert "none of {helpful-base}" in cli_error(monkeypatch, f"--input={tmp_path}",
                                                 "--subsets=helpful-base")
    assert "--subsets" in cli_error(monkeypatch, "--subsets=,", f"--input={path}")
    # and as a real process: exit status 1, one line on stderr, no traceback
    r = subprocess.run([sys.executable, "data/hh/prepare.py", f"--input={path}",
                        f"--out_dir={tmp_path / 'out'}"], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "out").exists()


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file or directory"):
        hh.main([f"--input={tmp_path / 'missing'}"])
    with pytest.raises(ConfigError, match="--subsets"):
        hh.main([f"--input={FIXTURES}", "--subsets=,"])


def test_partial_copy_is_converted_and_named(tmp_path, capsys):
    """A directory with one of the two default subsets converts, and says which it lacks."""
    d = tmp_path / "copy" / "helpful-base"
    d.mkdir(parents=True)
    (d / "train.jsonl.gz").write_bytes(fixture_bytes())
    stats_ = hh.main([f"--input={tmp_path / 'copy'}", f"--out_dir={tmp_path / 'out'}"])
    assert list(stats_) == ["train"] and stats_["train"][0] == 3
    out = capsys.readouterr().out
    assert "has no helpful-base/test, harmless-base/train, harmless-base/test" in out
    assert sorted(os.listdir(tmp_path / "out")) == [".lock", "hh_manifest.json", "prefs_train.jsonl",
                                                   "prompts_train.jsonl", "sft_train.jsonl"]
    # no .tmp or staging folder left behind


@pytest.mark.unit
@pytest.mark.parametrize("name, split", [
    ("test.jsonl.gz", "test"), ("harmless-base-test.jsonl.gz", "test"), ("hh_test.jsonl", "test"),
    ("train.jsonl", "train"), ("latest.jsonl", "train"), ("contest-train.jsonl.gz", "train"),
])
def test_split_of_a_single_file(name, split):
    assert hh.split_of(os.path.join("some", "dir", name)) == split

# -----------------------------------------------------------------------------
# the download, against a local server


class Files(http.server.BaseHTTPRequestHandler):
    """Serves self.server.files {url path: bytes}; 404 for anything else."""

    def do_GET(self):
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep pytest's output clean
        pass


@pytest.fixture
def server(monkeypatch):
    for name in ("no_proxy", "NO_PROXY"):  # a proxy set in the environment must not see it
        monkeypatch.setenv(name, "*")
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    srv.files, srv.requests = {}, []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setattr(hh, "URL", f"http://127.0.0.1:{srv.server_address[1]}/{{subset}}/{{split}}.jsonl.gz")
    yield srv
    srv.shutdown()
    srv.server_close()


def test_download_converts_like_a_local_copy_and_is_cached(tmp_path, server):
    server.files = {"/helpful-base/train.jsonl.gz": fixture_bytes("helpful-base", "train"),
                    "/helpful-base/test.jsonl.gz": fixture_bytes("helpful-base", "test")}
    args = [f"--cache_dir={tmp_path / 'cache'}", "--subsets=helpful-base"]
    got = hh.main(args + [f"--out_dir={tmp_path / 'net'}"])
    want = hh.main([f"--input={FIXTURES}", "--subsets=helpful-base", f"--out_dir={tmp_path / 'local'}"])
    assert got == want and got["train"][0] == 3 and got["test"][0] == 2
    for name in hh.NAMES:  # the manifests differ: they name the input files
        if (tmp_path / "local" / name).exists():
            assert (tmp_path / "net" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    assert (tmp_path / "cache" / "helpful-base" / "train.jsonl.gz").read_bytes() == fixture_bytes()
    # a second run reads the cache: no request at all
    n = len(server.requests)
    hh.main(args + [f"--out_dir={tmp_path / 'again'}"])
    assert len(server.requests) == n == 2


@pytest.mark.parametrize("body, want", [
    (None, "HTTP Error 404"),
    (fixture_bytes()[:-30], "Compressed file ended before the end-of-stream marker"),  # a cut transfer
    (b"<html>rate limited</html>", "Not a gzipped file"),  # an error page served with status 200
])
def test_download_failure_caches_nothing(tmp_path, server, monkeypatch, body, want):
    if body is not None:
        server.files = {"/helpful-base/train.jsonl.gz": body}
    msg = cli_error(monkeypatch, f"--cache_dir={tmp_path / 'cache'}", f"--out_dir={tmp_path / 'out'}",
                    "--subsets=helpful-base")
    assert "could not download http://127.0.0.1" in msg and want in msg and "--input=DIR" in msg
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert not (tmp_path / "out").exists()


def test_download_from_a_file_url(tmp_path, monkeypatch):
    monkeypatch.setattr(hh, "URL", "file://" + FIXTURES.replace(os.sep, "/") + "/{subset}/{split}.jsonl.gz")
    got = hh.main([f"--cache_dir={tmp_path / 'cache'}", f"--out_dir={tmp_path / 'out'}",
                   "--subsets=helpful-base"])
    assert got["train"] == (3, Counter({"identical answers": 1, "empty final answer": 1,
                                        "chosen and rejected differ before the last turn": 1,
                                        "no Assistant turn": 1, "ends with a Human turn": 1}))
    assert got["test"] == (2, Counter())

# -----------------------------------------------------------------------------
# data/hh/stats.py


@pytest.mark.unit
def test_percentiles_are_nearest_rank():
    v = list(range(100, 0, -1))  # 1..100, unsorted
    assert [stats.percentile(v, q) for q in (50, 90, 99, 100)] == [50, 90, 99, 100]
    assert stats.percentile([7], 50) == 7 and stats.percentile([1, 2], 50) == 1
    assert stats.describe([1, 2, 3, 10], block_size=2) == dict(mean=4.0, p50=2, p90=10, p99=10,
                                                              max=10, over=2)


def test_batch_shares_by_hand(tmp_path, capsys):
    """Byte tokenizer: '\\n\\nHuman: ' + 'a' + '\\n\\nAssistant:' is 22 tokens, ' b' + EOS 3.
    Rows: 22 + 3, 22 + 4, 24 + 6, 24 + 3; one batch of the two pairs pads all four rows to 30:
    120 positions, 108 real, 16 of them response tokens."""
    path = write_lines(tmp_path / "prefs.jsonl", [
        {"prompt": "a", "chosen": "b", "rejected": "cc"},
        {"prompt": "aaa", "chosen": "dddd", "rejected": "e"}])
    out = stats.main([f"--input={path}", "--tokenizer=byte", "--batch_sizes=2", "--block_size=64"])
    for bucketed in (False, True):  # one batch: the order cannot matter
        assert out["shares"][("RM/DPO", 2, bucketed)] == dict(
            padding=12 / 120, prompt=92 / 120, response=16 / 120, positions=120)
        # SFT: rows 25 and 30 -> 60 positions, 55 real, 3 + 6 response tokens
        assert out["shares"][("SFT", 2, bucketed)] == dict(
            padding=5 / 60, prompt=46 / 60, response=9 / 60, positions=60)
    # each prompt once: rows 22 + 3 + 4 and 24 + 6 + 3 -> 66 positions, 62 real, 16 response
    assert out["shares"][("RM/DPO", 2, "shared")] == dict(
        padding=4 / 66, prompt=46 / 66, response=16 / 66, positions=66)
    assert out["lengths"]["prompt"] == dict(mean=23.0, p50=22, p90=24, p99=24, max=24, over=0)
    assert out["lengths"]["prompt+longer"]["max"] == 30
    assert "RM/DPO 2 pairs" in capsys.readouterr().out


def test_bucketing_cuts_padding(tmp_path):
    """Lengths spread widely: bucketed batches must carry much less padding than shuffled ones."""
    rows = [{"prompt": "q" * (1 + (7 * i) % 90), "chosen": "c" * (1 + (13 * i) % 40),
             "rejected": "r" * (2 + (5 * i) % 40)} for i in range(128)]
    path = write_lines(tmp_path / "prefs.jsonl", rows)
    out = stats.main([f"--input={path}", "--tokenizer=byte", "--batch_sizes=8", "--block_size=256"])
    off, on = out["shares"][("RM/DPO", 8, False)], out["shares"][("RM/DPO", 8, True)]
    assert on["padding"] < 0.5 * off["padding"]
    # the real tokens are the same ones either way: only the padding moves
    assert on["prompt"] * on["positions"] == pytest.approx(off["prompt"] * off["positions"])
    assert on["response"] * on["positions"] == pytest.approx(off["response"] * off["positions"])


def test_stats_rejects_a_file_that_is_not_pairs(tmp_path):
    path = write_lines(tmp_path / "sft.jsonl", [{"prompt": "a", "response": "b"}])
    with pytest.raises(ConfigError, match="'chosen'"):
        stats.main([f"--input={path}", "--tokenizer=byte"])
    with pytest.raises(ConfigError, match="--batch_sizes"):
        stats.main([f"--input={path}", "--tokenizer=byte", "--batch_sizes=8,x"])


def test_stats_runs_as_a_script(tmp_path):
    path = write_lines(tmp_path / "prefs.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "cc"}] * 4)
    r = subprocess.run([sys.executable, "data/hh/stats.py", f"--input={path}", "--tokenizer=byte",
                        "--batch_sizes=2", "--block_size=64"], cwd=ROOT, capture_output=True,
                       text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120)
    assert r.returncode == 0, r.stderr
    assert "share of padded batch positions at block_size 64" in r.stdout
