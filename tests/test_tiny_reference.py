"""llama.cpp with our callback against the independent NumPy forward pass of the same tiny GGUF."""

from __future__ import annotations

import numpy as np
import pytest

from austeer_gguf import Profile, Unit

from conftest import logits_of, open_steered, profile_on, relative_error
from reference import ReferenceModel, steer_of

TOKENS = [262, 270, 290, 300, 265, 300, 280, 3, 41, 99, 150, 284, 291, 276, 277]
# Relative L2 error of llama.cpp's logits against the reference. Measured: 1e-7 to 6e-7 when every rounding
# falls the same way in both. A float32-level difference can tip one value across a rounding boundary: an
# F16 one (KV cache, attention operands) moves the logits by up to ~1e-4, a Q8_0 activation step (weights in
# Q8_0 quantize their input in blocks of 32) by up to ~1.2e-3. The steering effects tested are at least 20
# times larger than the tolerance.
TOLERANCE = {"F32": 2e-4, "Q8_0": 3e-3}


@pytest.fixture(params=["F32", "Q8_0"])
def tiny(request, tiny_f32, tiny_q8):
    path = tiny_f32 if request.param == "F32" else tiny_q8
    return request.param, path, ReferenceModel(path)


def test_unsteered_logits_match_numpy(tiny):
    kind, path, reference = tiny
    llm = open_steered(path)
    actual = logits_of(llm, TOKENS)
    expected = reference.forward(TOKENS).logits
    assert relative_error(actual, expected) < TOLERANCE[kind]


@pytest.mark.parametrize("site", ["attn", "ffn", "layer"])
@pytest.mark.parametrize("strength", [1.0, 2.0, -0.5])
def test_steered_logits_match_numpy(tiny, site, strength):
    kind, path, reference = tiny
    llm = open_steered(path)
    unsteered = logits_of(llm, TOKENS)
    profile = profile_on(site, llm.shape.widths[site], llm.shape.n_layers, seed=7)
    llm.steering.set_profile(profile)
    llm.steering.strength = strength
    steered = logits_of(llm, TOKENS)
    expected = reference.forward(TOKENS, steer_of(profile, strength)).logits

    assert relative_error(steered, expected) < TOLERANCE[kind]
    effect = relative_error(steered, unsteered)
    assert effect > 20 * TOLERANCE[kind], f"steering changed the logits by only {effect:.2e}"
    assert llm.native_counters()["steered"] == llm.shape.n_layers


def test_disabled_and_strength_zero_are_bit_identical_to_unsteered(tiny):
    _, path, _ = tiny
    llm = open_steered(path)
    unsteered = logits_of(llm, TOKENS)
    llm.steering.set_profile(profile_on("attn", llm.shape.widths["attn"], llm.shape.n_layers, seed=3))
    assert not np.array_equal(logits_of(llm, TOKENS), unsteered)
    llm.steering.disable()
    assert np.array_equal(logits_of(llm, TOKENS), unsteered)
    llm.steering.enable()
    llm.steering.strength = 0.0
    assert np.array_equal(logits_of(llm, TOKENS), unsteered)


def test_every_site_of_every_layer_can_be_steered_at_once(tiny):
    kind, path, reference = tiny
    llm = open_steered(path)
    units = []
    for site in ("attn", "ffn", "layer"):
        units += profile_on(site, llm.shape.widths[site], llm.shape.n_layers, seed=11).units
    profile = Profile("mixed", alpha=2.0, units=units)
    llm.steering.set_profile(profile)
    expected = reference.forward(TOKENS, steer_of(profile)).logits
    assert relative_error(logits_of(llm, TOKENS), expected) < TOLERANCE[kind]


def test_several_profiles_at_once_multiply_their_factors_on_shared_units(tiny):
    kind, path, reference = tiny
    llm = open_steered(path)
    first = profile_on("attn", llm.shape.widths["attn"], llm.shape.n_layers, seed=7)
    overlap = [Unit(u.layer, u.site, u.dim, -0.4) for u in first.units[::2]]  # every other unit is shared
    second = Profile("second", 2.0, [*overlap, *profile_on("ffn", 64, llm.shape.n_layers, seed=8).units])
    llm.steering.set_profiles([(first, 1.0), (second, 0.5)])
    expected = reference.forward(TOKENS, steer_of(first, 1.0, (second, 0.5))).logits
    steered = logits_of(llm, TOKENS)
    assert relative_error(steered, expected) < TOLERANCE[kind]
    alone = reference.forward(TOKENS, steer_of(first)).logits
    assert relative_error(steered, alone) > 20 * TOLERANCE[kind]  # the second profile did something
    llm.steering.set_profiles({})  # nothing: unsteered again
    assert relative_error(logits_of(llm, TOKENS), reference.forward(TOKENS).logits) < TOLERANCE[kind]


@pytest.mark.parametrize("site", ["attn", "layer"])
def test_generation_scope_steers_only_generated_positions(tiny, site):
    """With scope "generation" the prompt is computed unsteered, so the first generated token (sampled from the
    last prompt position) is the unsteered one; every generated position after it is steered."""
    kind, path, reference = tiny
    llm = open_steered(path)
    profile = profile_on(site, llm.shape.widths[site], llm.shape.n_layers, seed=9)
    llm.steering.set_profile(profile)
    llm.steering.scope = "generation"
    prompt = TOKENS[:8]
    generated = []
    for token in llm.generate(prompt, temp=0.0):
        generated.append(token)
        if len(generated) == 5:
            break
    everything = prompt + generated
    actual = np.array(llm.scores[: len(everything) - 1], copy=True)
    expected = reference.forward(everything[:-1], steer_of(profile), steer_from=len(prompt)).logits
    assert relative_error(actual, expected) < TOLERANCE[kind]
    unsteered = reference.forward(prompt).logits
    assert generated[0] == int(np.argmax(unsteered[-1]))
    everywhere = reference.forward(everything[:-1], steer_of(profile)).logits
    assert relative_error(actual[: len(prompt)], everywhere[: len(prompt)]) > 20 * TOLERANCE[kind]
    assert llm.steering_in_effect.scope == "generation"
