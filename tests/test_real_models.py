"""The runtime on the real quantized models: SmolLM2-135M-Instruct Q4_1 and Gemma-3-270M Q4_K_M."""

from __future__ import annotations

import numpy as np
import pytest

from austeer_gguf import Profile, Unit

from conftest import logits_of, open_plain, open_steered, relative_error

PROMPT = "Write one sentence about the weather today."


@pytest.fixture(params=["smollm2", "gemma3"])
def real_model(request):
    return request.getfixturevalue(request.param)


def spread_profile(site: str, n_layers: int, width: int) -> Profile:
    rng = np.random.default_rng(0)
    units = [Unit(layer, site, int(dim), 0.6) for layer in range(0, n_layers, 3)
             for dim in rng.choice(width, 3, replace=False)]
    return Profile(f"{site}-spread", alpha=10.0, units=units)


def complete(llm) -> str:
    return llm.create_completion(PROMPT, max_tokens=12, temperature=0.0)["choices"][0]["text"]


def test_steering_each_site_changes_the_logits(real_model):
    llm = open_steered(real_model)
    tokens = llm.tokenize(PROMPT.encode(), add_bos=False)
    unsteered = logits_of(llm, tokens)
    for site in ("attn", "ffn", "layer"):
        profile = spread_profile(site, llm.shape.n_layers, llm.shape.widths[site])
        llm.steering.set_profile(profile)
        llm.reset_counters()
        steered = logits_of(llm, tokens)
        change = relative_error(steered, unsteered)
        assert change > 1e-2, f"{site}: steering changed the logits by only {change:.2e}"
        counters = llm.native_counters()
        assert counters["steered"] == len(profile.layers)
        assert counters["skipped_not_f32"] == counters["skipped_not_contiguous"] == 0


def test_disabled_equals_a_plain_llama_bit_for_bit(real_model):
    reference = open_plain(real_model)
    tokens = reference.tokenize(PROMPT.encode(), add_bos=False)
    expected = logits_of(reference, tokens)
    llm = open_steered(real_model)
    llm.steering.set_profile(spread_profile("ffn", llm.shape.n_layers, llm.shape.widths["ffn"]))
    assert not np.array_equal(logits_of(llm, tokens), expected)
    llm.steering.disable()
    assert np.array_equal(logits_of(llm, tokens), expected)


def test_prompt_reuse_after_a_toggle_equals_a_fresh_context(real_model):
    reference = open_plain(real_model)
    fresh_text = complete(reference)
    fresh_logits = np.array(reference.scores[: reference.n_tokens], copy=True)

    llm = open_steered(real_model)
    llm.steering.set_profile(spread_profile("attn", llm.shape.n_layers, llm.shape.widths["attn"]))
    steered_text = complete(llm)
    llm.steering.disable()
    assert complete(llm) == fresh_text
    assert np.array_equal(llm.scores[: llm.n_tokens], fresh_logits)
    llm.steering.enable()
    assert complete(llm) == steered_text
