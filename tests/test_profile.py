"""Profiles: JSON round trip, and bad profiles refused with a message naming the unit, before decoding."""

from __future__ import annotations

import json
import math

import pytest

from austeer_gguf import ModelShape, Profile, Unit
from austeer_gguf.formats.profiles import profile_json, profile_to_dict, read_profile, write_profile

from conftest import open_steered

SHAPE = ModelShape("llama", n_layers=3, widths={"attn": 64, "ffn": 64, "layer": 64})


def good_profile() -> Profile:
    return Profile("good", 5.0, [Unit(0, "attn", 3, 0.75), Unit(2, "ffn", 63, -0.5), Unit(1, "layer", 0, 1.0)])


def test_json_round_trip_from_text_and_file(tmp_path):
    profile = good_profile()
    assert read_profile(profile_json(profile)) == profile
    path = tmp_path / "p.json"
    write_profile(profile, path)
    assert read_profile(path) == profile
    assert read_profile(str(path)) == profile
    assert profile.k == 3 and profile.sites == ("attn", "ffn", "layer") and profile.layers == (0, 1, 2)


@pytest.mark.parametrize("unit, message", [
    (Unit(3, "attn", 0, 0.5), "unit #0 .*layer 3.*layer out of range.*layers 0..2"),
    (Unit(0, "ffn", 64, 0.5), "unit #0 .*dim out of range.*dims 0..63 for site 'ffn'"),
])
def test_out_of_range_units_are_named_with_the_valid_range(unit, message):
    with pytest.raises(ValueError, match=message):
        Profile("p", 5.0, [unit]).check_model(SHAPE)


@pytest.mark.parametrize("units, message", [
    ([Unit(0, "mlp", 0, 0.5)], "unknown site 'mlp'; sites are attn, ffn, layer"),
    ([Unit(0, "attn", 0, math.nan)], "score must be a finite number"),
    ([Unit(0, "attn", 0, math.inf)], "score must be a finite number"),
    ([Unit(0, "attn", 0, "0.5")], "score must be a finite number"),
    ([Unit(0.5, "attn", 0, 0.5)], "layer must be a non-negative integer"),
    ([Unit(True, "attn", 0, 0.5)], "layer must be a non-negative integer"),
    ([Unit(0, "attn", -1, 0.5)], "dim must be a non-negative integer"),
    ([Unit(0, "attn", 1, 0.5), Unit(0, "attn", 1, -0.5)], "appears twice"),
    ([(0, "attn", 1, 0.5)], "is a tuple, not a Unit"),
])
def test_malformed_units_are_refused_at_construction(units, message):
    with pytest.raises(ValueError, match=message):
        Profile("p", 5.0, units)


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('{"name": "p", "alpha": 5}', "missing the field 'units'"),
    ('{"name": "p", "alpha": "high", "units": []}', "alpha must be a finite number"),
    ('{"name": "p", "alpha": 5, "units": [{"layer": 0, "site": "attn", "dim": 1}]}', "unit #0 is missing score"),
    ('{"name": "p", "alpha": 5, "units": {"layer": 0}}', "'units' must be a list"),
    ('{"name": "", "alpha": 5, "units": []}', "name must be a non-empty string"),
    ('{"name": "p", "alpha": 5, "units": [], "schema_version": 9}', "schema version 9 is not supported"),
])
def test_malformed_json_is_refused_with_a_clear_message(text, message):
    with pytest.raises(ValueError, match=message):
        read_profile(text)


def test_missing_profile_file_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_profile(tmp_path / "nope.json")


def test_bad_profiles_are_refused_before_anything_is_decoded(tiny_f32):
    bad = Profile("bad", 5.0, [Unit(0, "attn", 1, 0.5), Unit(7, "ffn", 1, 0.5)])
    with pytest.raises(ValueError, match=r"unit #1 \(layer 7, site 'ffn'.*layers 0..2"):
        open_steered(tiny_f32, profile=bad)

    llm = open_steered(tiny_f32)
    good = Profile("good", 5.0, [Unit(0, "attn", 1, 0.5)])
    llm.steering.set_profile(good)
    with pytest.raises(ValueError, match="dim out of range"):
        llm.steering.set_profile(Profile("wide", 5.0, [Unit(0, "attn", 64, 0.5)]))
    with pytest.raises(TypeError, match="takes a Profile"):
        llm.steering.set_profile({"name": "dict"})
    assert llm.steering.profile is good
    assert llm.n_tokens == 0 and llm.native_counters()["steered"] == 0


def test_profile_file_path_is_accepted_by_steered_llama(tiny_f32, tmp_path):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile_to_dict(good_profile())))
    llm = open_steered(tiny_f32, profile=path)
    assert llm.steering.profile == good_profile()
    with pytest.raises(ValueError, match="neither a profile file nor a profile embedded"):
        open_steered(tiny_f32, profile=tmp_path / "missing.json")
