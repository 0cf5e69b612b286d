"""
Tokenizers and the one chat template every stage uses.

Two tiktoken encodings:
- 'gpt2': the real GPT-2 BPE (50257 tokens). tiktoken downloads its two files on first use.
- 'byte': 256 byte tokens plus '<|endoftext|>' (id 256), built in-process, so tiny models, the
  offline toy world and the tests need no network at all.

The template is Anthropic-HH style:

    "\\n\\nHuman: {prompt}\\n\\nAssistant:" + " {response}" + <|endoftext|>

Prompt and response are tokenised separately and concatenated. That is deliberate: the ids a
policy generates after the prompt are then exactly the ids the reward model scores, and we never
re-tokenise decoded text (which can merge differently at the join).
"""

import tiktoken

EOT = "<|endoftext|>"
HUMAN = "\n\nHuman: "
ASSISTANT = "\n\nAssistant:"

_cache = {}


def byte_encoding():
    """An offline tiktoken Encoding: token i < 256 is byte i, token 256 is <|endoftext|>."""
    # a regex that splits nothing special: every byte sequence is its own piece, and with
    # only single-byte ranks BPE can merge nothing, so encode(s) == list(s.encode('utf-8'))
    return tiktoken.Encoding(
        name="byte",
        pat_str=r"[\s\S]+",
        mergeable_ranks={bytes([i]): i for i in range(256)},
        special_tokens={EOT: 256},
    )


def get_tokenizer(name):
    """'gpt2' (real GPT-2 BPE, fetched by tiktoken on first use) or 'byte' (offline)."""
    if name not in _cache:
        if name == "byte":
            _cache[name] = byte_encoding()
        elif name == "gpt2":
            try:
                _cache[name] = tiktoken.get_encoding("gpt2")
            except Exception as e:  # tiktoken raises plain requests/urllib errors offline
                raise RuntimeError(
                    "could not load the 'gpt2' tiktoken encoding: tiktoken downloads its files "
                    "on first use and needs a network (or a filled TIKTOKEN_CACHE_DIR). "
                    f"Offline, use tokenizer='byte'. Cause: {e!r}") from e
        else:
            raise ValueError(f"unknown tokenizer {name!r}: expected 'gpt2' or 'byte'")
    return _cache[name]


def render_prompt(prompt):
    return HUMAN + prompt + ASSISTANT


def _encode(enc, text):
    # user text that happens to contain '<|endoftext|>' is encoded as plain text, never as EOS
    return enc.encode_ordinary(text)


def encode_prompt(enc, prompt):
    """Token ids of the rendered prompt, ending with 'Assistant:' (the policy continues it)."""
    return _encode(enc, render_prompt(prompt))


def encode_response(enc, response):
    """Token ids of ' {response}<|endoftext|>' as they follow a prompt."""
    return _encode(enc, " " + response) + [enc.eot_token]


def encode_text(enc, text):
    """Token ids of plain text and its EOS, no template: pretraining text (PPO-ptx's data)."""
    return _encode(enc, text) + [enc.eot_token]


def encode_example(enc, prompt, response):
    """(ids, mask) of prompt + response; mask is 1 exactly on the response tokens and its EOS."""
    p, r = encode_prompt(enc, prompt), encode_response(enc, response)
    return p + r, [0] * len(p) + [1] * len(r)


def encode_messages(enc, messages):
    """
    (ids, mask) of a multi-turn conversation [{"role", "content"}, ...]. Every turn is rendered
    like a single-turn example: user turns as '\\n\\nHuman: {c}', assistant turns as
    '\\n\\nAssistant:' + ' {c}' + EOS. The mask is 1 on every assistant answer and its EOS, so
    every assistant turn is trained and the rest is context. A system message is plain text at
    the start.
    """
    ids, mask = [], []
    for m in messages:
        role, content = m["role"], m["content"]
        if role == "system":
            part, trained = _encode(enc, content), []
        elif role == "user":
            part, trained = _encode(enc, HUMAN + content), []
        elif role == "assistant":
            part, trained = _encode(enc, ASSISTANT), encode_response(enc, content)
        else:
            raise ValueError(f"unknown role {role!r}: expected system, user or assistant")
        ids += part + trained
        mask += [0] * len(part) + [1] * len(trained)
    return ids, mask


def decode(enc, ids):
    """Text of a list of ids; the EOS token is dropped (it ends a response, it is not text)."""
    return enc.decode([int(i) for i in ids if int(i) != enc.eot_token])


def decode_response(enc, ids):
    """The text of a generated answer as its author wrote it: decode() without the one space
    the template puts before every response. Reward functions, judges and logs all read this."""
    return decode(enc, ids).removeprefix(" ")


def token_texts(enc, ids):
    """Each token's own text, the EOS shown as '<eos>' (per-token heatmaps label with these)."""
    return ["<eos>" if int(i) == enc.eot_token else enc.decode([int(i)]) for i in ids]
