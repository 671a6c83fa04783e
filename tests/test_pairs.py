"""Reading and tokenizing contrastive pairs."""

from __future__ import annotations

import json

import pytest

from austeer_gguf.localization.pairs import Pair, data_sha256, load_pairs, tokenize_pairs


def write_lines(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_both_formats_are_read(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [
        json.dumps({"prompt": "Q:", "positive": " yes", "negative": " no"}),
        "",
        json.dumps({"positive": "full good", "negative": "full bad"}),
    ])
    assert load_pairs(path) == [Pair("Q:", " yes", " no"), Pair("", "full good", "full bad")]


@pytest.mark.parametrize("lines, message", [
    (['{"prompt": "a", "positive": " b"}'], r"p.jsonl:1: missing field 'negative'"),
    (['{"positive": " b", "negative": " c"}', '{"positive": "", "negative": " c"}'],
     r"p.jsonl:2: field 'positive' is empty"),
    (['{"positive": "b", "negative": 3}'], r"p.jsonl:1: field 'negative' must be a string"),
    (['{"positive": "b", "negative": "c"}', "", '{"positive": "b",'], r"p.jsonl:3: not valid JSON"),
    (['["b", "c"]'], r"p.jsonl:1: expected a JSON object"),
    ([""], r"holds no pairs"),
])
def test_errors_name_the_line(tmp_path, lines, message):
    with pytest.raises(ValueError, match=message):
        load_pairs(write_lines(tmp_path / "p.jsonl", lines))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pairs(tmp_path / "none.jsonl")


def fake_tokenize(text: str) -> list[int]:
    return [ord(c) for c in text]


def test_tokenizing_splits_the_shared_prefix_and_keeps_a_last_token_on_each_side():
    result = tokenize_pairs([Pair("ab", "cd", "ce"), Pair("", "xy", "xyz")], fake_tokenize, max_tokens=100)
    first, second = result.pairs
    assert (first.shared, first.positive_tail, first.negative_tail) == ([97, 98, 99], [100], [101])
    assert (second.shared, second.positive_tail, second.negative_tail) == ([120], [121], [121, 122])
    assert second.positive == [120, 121] and second.negative == [120, 121, 122]


def test_long_pairs_are_cut_from_the_front_equally_and_counted():
    result = tokenize_pairs([Pair("0123456789", "ab", "abcd"), Pair("x", "y", "z")], fake_tokenize, max_tokens=8)
    assert result.truncated == 1
    cut = result.pairs[0]
    assert cut.negative == fake_tokenize("6789abcd") and cut.positive == fake_tokenize("6789ab")


def test_identical_sides_warn_and_are_skipped():
    with pytest.warns(UserWarning, match="pair #0 renders identically"):
        result = tokenize_pairs([Pair("a", "b", "b"), Pair("a", "b", "c")], fake_tokenize, max_tokens=10)
    assert result.identical == 1 and len(result.pairs) == 1


def test_the_data_hash_depends_on_content_and_order():
    a, b = Pair("p", "x", "y"), Pair("q", "x", "y")
    assert data_sha256([a, b]) != data_sha256([b, a]) != data_sha256([a])
    assert data_sha256([a, b]) == data_sha256([Pair("p", "x", "y"), Pair("q", "x", "y")])


CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_chat_rendering_uses_the_model_template(tmp_path):
    from austeer_gguf.conversation import user_turn_renderer

    from conftest import open_steered
    from tiny_model import write_tiny_llama

    model = write_tiny_llama(tmp_path / "chat.gguf", extra_metadata={"tokenizer.chat_template": CHAT_TEMPLATE})
    render = user_turn_renderer(open_steered(model))
    assert render("the cat is") == "<|user|>the cat is<|assistant|>"


def test_chat_rendering_needs_a_template(tiny_f32):
    from austeer_gguf.conversation import user_turn_renderer

    from conftest import open_steered

    with pytest.raises(ValueError, match="has no chat template"):
        user_turn_renderer(open_steered(tiny_f32))


def test_message_pairs_are_rendered_for_the_model_that_reads_them(tmp_path, tiny_f32):
    from austeer_gguf.conversation import renderer

    from conftest import open_steered
    from tiny_model import write_tiny_llama

    path = write_lines(tmp_path / "m.jsonl", [json.dumps({
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "the cat is"}],
        "positive": " good", "negative": " bad"})])
    (pair,) = load_pairs(path)
    assert pair.messages == (("system", "Be brief."), ("user", "the cat is"))
    templated = write_tiny_llama(tmp_path / "chat.gguf", extra_metadata={"tokenizer.chat_template": CHAT_TEMPLATE})
    assert renderer(open_steered(templated))(pair.messages) == \
        "<|system|>Be brief.<|user|>the cat is<|assistant|>"
    plain = renderer(open_steered(tiny_f32))  # no template: the User/Assistant lines
    assert plain(pair.messages) == "Be brief.\nUser: the cat is\nAssistant:"
    tokenize = open_steered(tiny_f32).tokenize
    (tokens,) = tokenize_pairs([pair], lambda t: tokenize(t.encode(), add_bos=False), max_tokens=64,
                               render_messages=plain).pairs
    assert tokens.positive == tokenize(b"Be brief.\nUser: the cat is\nAssistant: good", add_bos=False)


SYSTEMLESS_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not "
                       "supported') }}{% endif %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}<|assistant|>")


def test_a_template_without_a_system_role_gets_the_system_text_in_the_first_user_turn(tmp_path):
    from austeer_gguf.conversation import renderer

    from conftest import open_steered
    from tiny_model import write_tiny_llama

    model = write_tiny_llama(tmp_path / "m.gguf", extra_metadata={"tokenizer.chat_template": SYSTEMLESS_TEMPLATE})
    render = renderer(open_steered(model))
    assert render([("user", "hi")]) == "<|user|>hi<|assistant|>"
    assert render([("system", "Be kind."), ("user", "hi"), ("assistant", "yo"), ("user", "again")]) == \
        "<|user|>Be kind.\n\nhi<|assistant|>yo<|user|>again<|assistant|>"


@pytest.mark.parametrize("line, message", [
    ({"messages": [], "positive": "a", "negative": "b"}, "must be a list of 1..64 turns"),
    ({"messages": [{"role": "bot", "content": "x"}], "positive": "a", "negative": "b"}, "needs a role"),
    ({"messages": [{"role": "assistant", "content": "x"}], "positive": "a", "negative": "b"}, "the assistant's"),
    ({"messages": [{"role": "user", "content": "x"}], "prompt": "p", "positive": "a", "negative": "b"},
     "either 'prompt' or 'messages'"),
])
def test_malformed_message_pairs_are_refused(tmp_path, line, message):
    with pytest.raises(ValueError, match=message):
        load_pairs(write_lines(tmp_path / "m.jsonl", [json.dumps(line)]))


def test_pairs_too_uneven_to_cut_are_skipped_not_emptied(tmp_path):
    pairs = [Pair("", "a b c d e f g h i j", "k"), Pair("", "a b", "c d")]
    tokenize = lambda text: text.split()  # noqa: E731
    with pytest.warns(UserWarning, match="would empty the shorter one"):
        result = tokenize_pairs(pairs, tokenize, max_tokens=4)
    assert result.uneven == 1 and len(result.pairs) == 1
    assert all(p.positive and p.negative for p in result.pairs)


@pytest.mark.real_model
def test_conversations_render_to_the_tokens_llama_cpp_pythons_chat_handler_sends(smollm2):
    """SmolLM2's BOS is its template's first `<|im_start|>`, and it adds no BOS itself: the text must keep it, as
    llama-cpp-python's own chat completion does. (Gemma-3-270M is a base model: it has no template.)"""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from austeer_gguf.conversation import renderer

    from conftest import open_steered

    llm = open_steered(smollm2)
    turns = [("system", "Be brief."), ("user", "Why is the sky blue?"), ("assistant", "Light."), ("user", "More?")]
    ours = llm.tokenize(renderer(llm)(turns).encode(), add_bos=True, special=True)
    formatter = Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"],
                                    eos_token=llm._model.token_get_text(llm.token_eos()),
                                    bos_token=llm._model.token_get_text(llm.token_bos()))
    result = formatter(messages=[{"role": role, "content": content} for role, content in turns])
    theirs = llm.tokenize(result.prompt.encode(), add_bos=not result.added_special, special=True)
    assert ours == theirs
