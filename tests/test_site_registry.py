"""A site added through the registry alone (no other module touched) is steered, captured, localized and
embedded like the built-in ones, against the NumPy reference; a site whose width rule is wrong is skipped
by the native core and warned about by tensor name."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from austeer_gguf import InputError, Profile, Site, Unit, sites
from austeer_gguf.exports.bake import bake
from austeer_gguf.formats.embedded import embed_profiles, read_profiles
from austeer_gguf.localization.capture import ActivationCapture
from austeer_gguf.localization.localize import localize

from conftest import THREADS, logits_of, open_steered, relative_error
from reference import ReferenceModel, steer_of

TOKENS = [262, 270, 290, 300, 265, 300, 280, 3, 41, 99, 150, 284, 291, 276, 277]
TOLERANCE = {"F32": 2e-4, "Q8_0": 3e-3}  # as in test_tiny_reference.py


@pytest.fixture
def ffn_input():
    """llama.cpp's `ffn_inp-L`: the residual after the attention block, which the FFN norm reads."""
    site = sites.register(Site("ffn_input", "i", "ffn_inp", lambda h: h.n_embd,
                               description="the residual after attention"))
    yield site
    sites.unregister("ffn_input")


@pytest.fixture(params=["F32", "Q8_0"])
def tiny(request, tiny_f32, tiny_q8):
    path = tiny_f32 if request.param == "F32" else tiny_q8
    return request.param, path, ReferenceModel(path)


def test_registering_a_site_is_all_it_takes_to_steer_it(tiny, ffn_input):
    kind, path, reference = tiny
    llm = open_steered(path)
    assert llm.shape.widths["ffn_input"] == 64
    unsteered = logits_of(llm, TOKENS)
    rng = np.random.default_rng(5)
    units = [Unit(layer, "ffn_input", int(dim), float(rng.choice([-0.75, 0.5, 0.8])))
             for layer in range(3) for dim in rng.choice(64, 4, replace=False)]
    profile = Profile("inputs", alpha=3.0, units=units)
    llm.steering.set_profile(profile)
    steered = logits_of(llm, TOKENS)
    expected = reference.forward(TOKENS, steer_of(profile)).logits
    assert relative_error(steered, expected) < TOLERANCE[kind]
    assert relative_error(steered, unsteered) > 20 * TOLERANCE[kind]
    assert llm.native_counters()["steered"] == 3


def test_a_registered_site_is_captured_localized_and_embedded(tiny_f32, ffn_input, tmp_path):
    reference = ReferenceModel(tiny_f32)
    with ActivationCapture(tiny_f32, batch_tokens=64, n_ctx=128, n_threads=THREADS) as capture:
        captured = capture.last_tokens([TOKENS], ["ffn_input"])["ffn_input"][0]
    expected = np.stack([reference.forward(TOKENS).activations[("ffn_input", layer)][-1] for layer in range(3)])
    assert relative_error(captured, expected) < 1e-3  # the F32 rare-flip bound of test_capture.py

    pairs = tmp_path / "mood.jsonl"
    pairs.write_text("\n".join(json.dumps({"prompt": w, "positive": " good happy", "negative": " bad sad"})
                               for w in ["the cat is", "a dog was", "I like this", "you love the"]) + "\n")
    profile = localize(tiny_f32, pairs, sites="ffn_input", k=5, progress=False, n_threads=THREADS).profile
    assert profile.sites == ("ffn_input",) and profile.k == 5
    steered = embed_profiles(tiny_f32, [profile], tmp_path / "steered.gguf")
    assert read_profiles(steered) == {"mood": profile}
    with pytest.raises(ValueError, match="no weight can express"):
        bake(tiny_f32, profile, tmp_path / "baked.gguf")


def test_a_site_whose_width_rule_is_wrong_is_found_absent_at_load_and_its_units_refused(tiny_f32):
    sites.register(Site("too_wide", "w", "ffn_inp", lambda h: h.n_ff))  # the tensor is n_embd wide
    try:
        with pytest.warns(RuntimeWarning, match="lacks some steering sites \\(too_wide at layers 0-2\\)"):
            llm = open_steered(tiny_f32)
        assert llm.shape.missing == {"too_wide": (0, 1, 2)} and "too_wide" not in llm.shape.present_sites()
        with pytest.raises(InputError, match="has no ffn_inp-1 tensor \\(site 'too_wide' at layer 1\\): units "
                                             "there would do nothing. Use the sites it has: attn, ffn, layer"):
            llm.steering.set_profile(Profile("wide", 2.0, [Unit(1, "too_wide", 100, 0.5)]))
        assert llm.steering.profile is None
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            logits_of(llm, TOKENS[:5])  # the other sites steer as before, without another warning
    finally:
        sites.unregister("too_wide")


def test_the_registry_refuses_clashes_and_keeps_its_built_in_sites():
    with pytest.raises(ValueError, match="clashes"):
        sites.register(Site("attn2", "x", "kqv_out", lambda h: h.n_embd))
    with pytest.raises(ValueError, match="cannot be removed"):
        sites.unregister("ffn")
    assert sites.names()[:3] == ("attn", "ffn", "layer")
    assert [sites.code(name) for name in ("attn", "ffn", "layer")] == [0, 1, 2]
