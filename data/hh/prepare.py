"""
Anthropic HH-RLHF (Bai et al. 2022) in our formats.

    python data/hh/prepare.py                         # download helpful-base and harmless-base
    python data/hh/prepare.py --input=path/to/hh-rlhf # convert a local copy, no network
    python data/hh/prepare.py --subsets=helpful-base  # one subset only

Downloads {subset}/{split}.jsonl.gz for split in train, test from the Hugging Face hub with urllib
(cached in data/hh/raw/, or $NANORLHF_HH_CACHE), or reads a local copy given with --input: a
directory with that layout, or one .jsonl / .jsonl.gz file (its split is 'test' if 'test' is a
word of its name, as in test.jsonl.gz or harmless-base-test.jsonl.gz, else 'train'). Writes to
--out_dir (data/hh/out/):

    prefs_{split}.jsonl    {"prompt", "chosen", "rejected"}
    sft_{split}.jsonl      {"prompt", "response"}: the chosen side
    prompts_{split}.jsonl  {"prompt"}: each distinct prompt once, for RL

An upstream line is {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...}: two
transcripts that share everything up to their last '\\n\\nAssistant:'. We store as `prompt` that
shared part without its leading '\\n\\nHuman: ' and trailing '\\n\\nAssistant:' (earlier turns stay
inside it as text), and as the answers what follows it, less one leading space, so that
tokenizer.render_prompt(prompt) + " " + answer reproduces the upstream transcript exactly.
Pairs that cannot be converted are counted and reported by reason, never dropped silently.

A file that cannot be read (a truncated or corrupt .gz, text that is not UTF-8, a line that is not
a JSON object) stops the conversion with one line naming the file, the line and the fault, and so
does a split where no record at all could be converted (the wrong file?). Nothing is written
until every split has converted, and each output file appears whole or not at all.
"""

import gzip
import http.client
import json
import os
import re
import sys
import urllib.request
import zlib
from collections import Counter

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import config  # noqa: E402
from config import ConfigError, DataError  # noqa: E402
from data.loader import parse_record  # noqa: E402  (one JSON policy for every file we read)
from tokenizer import ASSISTANT, HUMAN  # noqa: E402  (the template's two markers)

URL = "https://huggingface.co/datasets/Anthropic/hh-rlhf/resolve/main/{subset}/{split}.jsonl.gz"
SUBSETS = ["helpful-base", "harmless-base"]
SPLITS = ["train", "test"]
DEFAULT_CACHE = os.environ.get("NANORLHF_HH_CACHE", os.path.join("data", "hh", "raw"))
GZIP_MAGIC = b"\x1f\x8b"

# -----------------------------------------------------------------------------
# getting the files


def check_gzip(path):
    """None if path is a complete gzip stream, else what is wrong with it (a string)."""
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 20):
                pass
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        return str(e)
    return None


def download(subset, split, cache_dir):
    """Path of the cached {subset}/{split}.jsonl.gz, fetched first if it is not there. A failed
    download stops with one line (the network, not the data, is at fault: no DataError)."""
    path = os.path.join(cache_dir, subset, f"{split}.jsonl.gz")
    if os.path.isfile(path):
        return path
    url = URL.format(subset=subset, split=split)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    print(f"downloading {url}")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            while chunk := r.read(1 << 20):
                f.write(chunk)
        # a cut connection or an HTML error page served with status 200 must not be cached
        fault = check_gzip(tmp)
    except (OSError, http.client.HTTPException) as e:  # URLError, HTTPError, timeouts, IncompleteRead
        fault = f"{type(e).__name__}: {e}"
    if fault is not None:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise SystemExit(f"error: could not download {url}: {fault}. Offline? Fetch the files "
                         f"elsewhere and run with --input=DIR, where DIR holds {subset}/{split}.jsonl.gz")
    os.replace(tmp, path)  # a half-written file never looks cached
    return path


def split_of(path):
    """'test' when 'test' is a word of the file's name (test.jsonl.gz, harmless-base-test.jsonl),
    else 'train'."""
    stem = os.path.basename(path).split(".")[0].lower()
    return "test" if "test" in re.split(r"[-_ ]", stem) else "train"


def local_files(input_path, subsets):
    """{split: [paths]} of a local copy: a directory in the upstream layout, or one file."""
    if os.path.isfile(input_path):
        return {split_of(input_path): [input_path]}
    if not os.path.isdir(input_path):
        raise ConfigError(f"--input={input_path!r}: no such file or directory")
    files, missing = {}, []
    for subset in subsets:
        for split in SPLITS:
            for ext in (".jsonl.gz", ".jsonl"):
                path = os.path.join(input_path, subset, split + ext)
                if os.path.isfile(path):
                    files.setdefault(split, []).append(path)
                    break
            else:
                missing.append(f"{subset}/{split}")
    if not files:
        raise ConfigError(f"--input={input_path!r} holds none of {{{','.join(subsets)}}}/"
                          f"{{train,test}}.jsonl[.gz]")
    if missing:  # a partial copy is fine, but say so: the other subsets were asked for
        print(f"note: {input_path} has no {', '.join(missing)} (.jsonl[.gz]): converting without them")
    return files


def _undecodable(path, lineno, raw, e):
    hint = ""
    if lineno == 1 and raw.startswith(GZIP_MAGIC):
        hint = ": the file is gzip-compressed, name it .jsonl.gz"
    return DataError(f"{path}:{lineno}: invalid UTF-8 ({e.reason} at byte {e.start} of the line){hint}")


def read_records(path):
    """[(1-based line number, dict)] of one upstream file, .jsonl or .jsonl.gz; blank lines are not
    records. Anything unreadable is a DataError naming the file, the line where known, and why."""
    records, lineno = [], 0
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise _undecodable(path, lineno, raw, e) from None
                if not line.strip():
                    continue
                try:
                    records.append((lineno, parse_record(line)))
                except ValueError as e:  # malformed JSON, duplicate keys, lone surrogates, ...
                    raise DataError(f"{path}:{lineno}: {str(e)[:300]}") from None
    except gzip.BadGzipFile as e:  # an OSError: before the generic case below
        with open(path, "rb") as f:
            if f.read(2) != GZIP_MAGIC:
                raise DataError(f"{path}: not a gzip file, though named .gz") from None
        raise DataError(f"{path}: corrupt gzip data after line {lineno} ({e}): fetch the file "
                        f"again") from None
    except (EOFError, zlib.error) as e:
        raise DataError(f"{path}: the gzip stream is cut short or corrupt after line {lineno} ({e}):"
                        f" an interrupted download or copy? fetch the file again") from None
    except OSError as e:  # unreadable: permissions, a directory named .jsonl, ...
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None
    if not records:
        raise DataError(f"{path}: empty file (no records)")
    return records

# -----------------------------------------------------------------------------
# converting


def split_transcript(text):
    """(prompt, answer) of one transcript, or (None, reason). See the module docstring."""
    cut = text.rfind(ASSISTANT)
    if cut < 0:
        return None, "no Assistant turn"
    head, answer = text[:cut], text[cut + len(ASSISTANT):]
    if not head.startswith(HUMAN):
        return None, "does not start with a Human turn"
    if HUMAN.rstrip() in answer:
        return None, "ends with a Human turn"
    if answer.startswith(" "):
        answer = answer[1:]
    if not answer.strip():
        return None, "empty final answer"
    return head[len(HUMAN):], answer


def convert_pair(record):
    """{"prompt", "chosen", "rejected"} of one upstream record, or (None, reason)."""
    if not isinstance(record, dict) or not isinstance(record.get("chosen"), str) \
            or not isinstance(record.get("rejected"), str):
        return None, "not a {chosen, rejected} record"
    prompt, chosen = split_transcript(record["chosen"])
    if prompt is None:
        return None, chosen
    prompt_r, rejected = split_transcript(record["rejected"])
    if prompt_r is None:
        return None, rejected
    if prompt_r != prompt:
        return None, "chosen and rejected differ before the last turn"
    if chosen == rejected:
        return None, "identical answers"
    return dict(prompt=prompt, chosen=chosen, rejected=rejected), None


def convert_split(paths):
    """(pairs, Counter of drop reasons) of one split's upstream files. A split where no record
    converts is an error: it is the wrong file, not a bad day for HH."""
    pairs, drops, n = [], Counter(), 0
    for path in paths:
        for _, record in read_records(path):
            n += 1
            pair, reason = convert_pair(record)
            if pair is None:
                drops[reason] += 1
            else:
                pairs.append(pair)
    if not pairs:
        raise DataError(f"{', '.join(paths)}: none of the {n} records converts ({format_drops(drops)});"
                        f' expected HH-RLHF lines {{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...",'
                        f' "rejected": ...}}')
    return pairs, drops


def format_drops(drops):
    return ", ".join(f"{n} {reason}" for reason, n in sorted(drops.items())) or "none"


def write_jsonl(path, rows):
    """Write rows as JSONL, atomically: an interrupted run never leaves half a file."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


# the files of a conversion: a new one replaces all of them (a split it lacks included)
NAMES = [f"{kind}_{split}.jsonl" for kind in ("prefs", "sft", "prompts") for split in SPLITS]


def convert(files, out_dir, overwrite=False):
    """Convert {split: [upstream paths]} into out_dir; returns {split: (kept, Counter of drops)}.
    Every split is converted before anything is written, so a bad file leaves out_dir as it was;
    the files are one set (run.DataSet: out_dir locked, staged, swapped in whole with
    hh_manifest.json), which replaces a conversion of other files only with overwrite=True."""
    import run  # the plumbing (its lock, staging and swap)
    inputs = {p: run.sha256_of(p) for paths in files.values() for p in paths}
    converted = {}
    for split, paths in files.items():
        for path in paths:
            print(f"reading {path} ({split})")
        converted[split] = convert_split(paths)
    with run.DataSet(out_dir, "hh", NAMES, "a conversion of HH-RLHF", dict(splits=sorted(files)),
                     inputs, overwrite) as out:
        stats = {}
        for split, (pairs, drops) in converted.items():
            prompts = list(dict.fromkeys(p["prompt"] for p in pairs))  # distinct, in order
            for name, rows in ((f"prefs_{split}.jsonl", pairs),
                               (f"sft_{split}.jsonl", [dict(prompt=p["prompt"], response=p["chosen"])
                                                       for p in pairs]),
                               (f"prompts_{split}.jsonl", [dict(prompt=p) for p in prompts])):
                with out.writing(name) as path:
                    write_jsonl(path, rows)
            print(f"{split}: {len(pairs)} pairs, {len(prompts)} distinct prompts from "
                  f"{len(files[split])} file(s); dropped {sum(drops.values())}: {format_drops(drops)}")
            stats[split] = (len(pairs), drops)
        out.commit()
    return stats


DEFAULTS = dict(
    input="",                            # a local copy (directory or file); '' = download
    subsets=",".join(SUBSETS),           # comma-separated subset names
    out_dir=os.path.join("data", "hh", "out"),
    cache_dir=DEFAULT_CACHE,             # where downloads are kept
    overwrite=False,                     # replace a conversion of other files in out_dir
)


def main(argv=None):
    args = config.parse_config(DEFAULTS, argv, __doc__)
    subsets = [s for s in args.subsets.split(",") if s]
    if not subsets:
        raise ConfigError(f"--subsets={args.subsets!r}: name at least one, e.g. {','.join(SUBSETS)}")
    if args.input:
        files = local_files(args.input, subsets)
    else:
        files = {split: [download(s, split, args.cache_dir) for s in subsets] for split in SPLITS}
    stats = convert(files, args.out_dir, args.overwrite)
    print(f"wrote {args.out_dir}/{{prefs,sft,prompts}}_{{{','.join(stats)}}}.jsonl and hh_manifest.json")
    return stats


if __name__ == "__main__":
    config.cli(main)
