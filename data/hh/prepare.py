"""
Anthropic HH-RLHF (Bai et al. 2022) in our formats.

    python data/hh/prepare.py                         # download helpful-base and harmless-base
    python data/hh/prepare.py --input=path/to/hh-rlhf # convert a local copy, no network
    python data/hh/prepare.py --subsets=helpful-base  # one subset only

Downloads {subset}/{split}.jsonl.gz for split in train, test from the Hugging Face hub with urllib
(cached in data/hh/raw/, or $NANORLHF_HH_CACHE), or reads a local copy given with --input: a
directory with that layout, or one .jsonl / .jsonl.gz file (its split is 'test' if the file name
starts with 'test', else 'train'). Writes to --out_dir (data/hh/out/):

    prefs_{split}.jsonl    {"prompt", "chosen", "rejected"}
    sft_{split}.jsonl      {"prompt", "response"}: the chosen side
    prompts_{split}.jsonl  {"prompt"}: each distinct prompt once, for RL

An upstream line is {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...}: two
transcripts that share everything up to their last '\\n\\nAssistant:'. We store as `prompt` that
shared part without its leading '\\n\\nHuman: ' and trailing '\\n\\nAssistant:' (earlier turns stay
inside it as text), and as the answers what follows it, less one leading space, so that
tokenizer.render_prompt(prompt) + " " + answer reproduces the upstream transcript exactly.
Pairs that cannot be converted are counted and reported, never dropped silently.
"""

import argparse
import gzip
import json
import os
import sys
import urllib.request
from collections import Counter

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tokenizer import ASSISTANT, HUMAN  # noqa: E402  (the template's two markers)

URL = "https://huggingface.co/datasets/Anthropic/hh-rlhf/resolve/main/{subset}/{split}.jsonl.gz"
SUBSETS = ["helpful-base", "harmless-base"]
SPLITS = ["train", "test"]
DEFAULT_CACHE = os.environ.get("NANORLHF_HH_CACHE", os.path.join("data", "hh", "raw"))

# -----------------------------------------------------------------------------
# getting the files


def download(subset, split, cache_dir):
    """Path of the cached {subset}/{split}.jsonl.gz, fetched first if it is not there."""
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
    except OSError as e:  # URLError, HTTPError and timeouts are all OSErrors
        if os.path.exists(tmp):
            os.remove(tmp)
        raise SystemExit(f"could not download {url}: {e}\nOffline? Fetch the files elsewhere and "
                         f"run with --input=DIR, where DIR holds {subset}/{split}.jsonl.gz") from None
    os.replace(tmp, path)  # a half-written file never looks cached
    return path


def local_files(input_path, subsets):
    """{split: [paths]} of a local copy: a directory in the upstream layout, or one file."""
    if os.path.isfile(input_path):
        name = os.path.basename(input_path)
        return {"test" if name.startswith("test") else "train": [input_path]}
    if not os.path.isdir(input_path):
        raise SystemExit(f"--input={input_path!r}: no such file or directory")
    files = {}
    for subset in subsets:
        for split in SPLITS:
            for ext in (".jsonl.gz", ".jsonl"):
                path = os.path.join(input_path, subset, split + ext)
                if os.path.isfile(path):
                    files.setdefault(split, []).append(path)
                    break
    if not files:
        raise SystemExit(f"--input={input_path!r} holds none of {{{','.join(subsets)}}}/"
                         f"{{train,test}}.jsonl[.gz]")
    return files


def read_lines(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as e:
                    raise SystemExit(f"{path}, line {lineno}: malformed JSON ({e.msg})") from None

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


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def convert(files, out_dir):
    """Convert {split: [upstream paths]} into out_dir; returns {split: (kept, Counter of drops)}."""
    os.makedirs(out_dir, exist_ok=True)
    stats = {}
    for split, paths in files.items():
        pairs, drops = [], Counter()
        for path in paths:
            for _, record in read_lines(path):
                pair, reason = convert_pair(record)
                if pair is None:
                    drops[reason] += 1
                else:
                    pairs.append(pair)
        prompts = list(dict.fromkeys(p["prompt"] for p in pairs))  # distinct, in order
        write_jsonl(os.path.join(out_dir, f"prefs_{split}.jsonl"), pairs)
        write_jsonl(os.path.join(out_dir, f"sft_{split}.jsonl"),
                    [dict(prompt=p["prompt"], response=p["chosen"]) for p in pairs])
        write_jsonl(os.path.join(out_dir, f"prompts_{split}.jsonl"), [dict(prompt=p) for p in prompts])
        dropped = ", ".join(f"{n} {reason}" for reason, n in sorted(drops.items())) or "none"
        print(f"{split}: {len(pairs)} pairs, {len(prompts)} distinct prompts from "
              f"{len(paths)} file(s); dropped {sum(drops.values())}: {dropped}")
        stats[split] = (len(pairs), drops)
    return stats


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default=None, help="a local copy (directory or file); no download")
    parser.add_argument("--subsets", default=",".join(SUBSETS), help="comma-separated subset names")
    parser.add_argument("--out_dir", default=os.path.join("data", "hh", "out"))
    parser.add_argument("--cache_dir", default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    subsets = [s for s in args.subsets.split(",") if s]
    if args.input:
        files = local_files(args.input, subsets)
    else:
        files = {split: [download(s, split, args.cache_dir) for s in subsets] for split in SPLITS}
    stats = convert(files, args.out_dir)
    print(f"wrote {args.out_dir}/{{prefs,sft,prompts}}_{{{','.join(stats)}}}.jsonl")
    return stats


if __name__ == "__main__":
    main()
