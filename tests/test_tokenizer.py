import pytest

from tokenizer import (decode, encode_example, encode_messages, encode_prompt, get_tokenizer,
                       render_prompt)


@pytest.fixture
def enc():
    return get_tokenizer("byte")


@pytest.mark.unit
def test_byte_encoding_is_bytes_plus_eot(enc):
    assert enc.n_vocab == 257 and enc.eot_token == 256
    s = "héllo\n\n  wörld"
    assert enc.encode_ordinary(s) == list(s.encode("utf-8"))
    assert enc.decode(enc.encode_ordinary(s)) == s


@pytest.mark.unit
def test_template_mask_covers_exactly_response_and_eos(enc):
    ids, mask = encode_example(enc, "What is 2 plus 3?", "It is 5.")
    prompt = encode_prompt(enc, "What is 2 plus 3?")
    assert len(ids) == len(mask)
    assert ids[:len(prompt)] == prompt and sum(mask[:len(prompt)]) == 0
    trained = [t for t, m in zip(ids, mask) if m]
    assert trained[-1] == enc.eot_token and ids[-1] == enc.eot_token
    assert enc.decode(trained[:-1]) == " It is 5."
    assert decode(enc, ids) == render_prompt("What is 2 plus 3?") + " It is 5."
    assert render_prompt("x") == "\n\nHuman: x\n\nAssistant:"


@pytest.mark.unit
def test_literal_eot_text_is_not_the_eos_token(enc):
    ids, mask = encode_example(enc, "say <|endoftext|>", "<|endoftext|>")
    assert ids.count(enc.eot_token) == 1 and ids[-1] == enc.eot_token


@pytest.mark.unit
def test_multi_turn_mask_trains_every_assistant_turn(enc):
    msgs = [{"role": "system", "content": "Be nice."},
            {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye."}]
    ids, mask = encode_messages(enc, msgs)
    assert decode(enc, ids) == ("Be nice.\n\nHuman: Hi\n\nAssistant: Hello!"
                                "\n\nHuman: Bye\n\nAssistant: Goodbye.")
    # the trained spans, split at each EOS, are exactly the two answers
    spans, cur = [], []
    for t, m in zip(ids, mask):
        if m:
            cur.append(t)
            if t == enc.eot_token:
                spans.append(enc.decode(cur[:-1]))
                cur = []
    assert spans == [" Hello!", " Goodbye."]
    assert sum(mask) == len(" Hello!") + 1 + len(" Goodbye.") + 1
    # a single-turn conversation renders exactly like encode_example
    single = encode_messages(enc, msgs[1:3])
    assert single == encode_example(enc, "Hi", "Hello!")
    with pytest.raises(ValueError, match="unknown role"):
        encode_messages(enc, [{"role": "bot", "content": "x"}])


@pytest.mark.unit
def test_unknown_tokenizer_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown tokenizer"):
        get_tokenizer("gpt3")


@pytest.mark.unit
def test_decode_response_is_the_text_as_written():
    # the one convention for every reader of a generated answer (reward functions, the judge,
    # eval's tables): the template's leading space is gone, the answer's own spaces stay
    from tokenizer import decode_response, encode_response
    enc = get_tokenizer("byte")
    assert decode_response(enc, encode_response(enc, "A cow says moo.")) == "A cow says moo."
    assert decode_response(enc, encode_response(enc, " two spaces")) == " two spaces"
    assert decode_response(enc, []) == ""
