"""Fuzzing the readers of user files with hypothesis: mutated real GGUFs, random JSON structures and text.
Each reader may return or raise its documented error (InputError), nothing else."""

from __future__ import annotations

import contextlib
import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from austeer_gguf import InputError, Profile
from austeer_gguf.formats.embedded import embed_profiles, embedded_profiles
from austeer_gguf.formats.model_file import ModelFile, shape_from_fields
from austeer_gguf.formats.profiles import decode_compact, read_profile
from austeer_gguf.ggufio.layout import scan
from austeer_gguf.localization.pairs import load_pairs

EXAMPLES = 300
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30)
profile_like = st.fixed_dictionaries(
    {}, optional={"name": json_values | st.text(string.ascii_letters, min_size=1, max_size=8),
                  "alpha": json_values, "units": st.lists(st.fixed_dictionaries(
                      {}, optional={"layer": json_values, "site": st.sampled_from(["attn", "ffn", "x"]) | json_values,
                                    "dim": json_values, "score": json_values}), max_size=4) | json_values,
                  "model": json_values, "extra": json_values, "n_pairs": json_values, "schema_version": json_values})
embedded_like = st.fixed_dictionaries(
    {}, optional={"v": st.just(1) | json_values, "alpha": json_values, "layer": json_values | st.lists(json_values),
                  "site": st.text("afl?", max_size=4) | json_values, "dim": json_values | st.lists(json_values),
                  "score": json_values | st.lists(json_values), "model": json_values, "extra": json_values})


@pytest.fixture(scope="module")
def steered_bytes(tmp_path_factory, tiny_q8) -> bytes:
    from austeer_gguf import Unit

    path = tmp_path_factory.mktemp("fuzz") / "steered.gguf"
    embed_profiles(tiny_q8, [Profile("p", 3.0, [Unit(0, "attn", 1, 0.5), Unit(2, "ffn", 3, -0.25)])], path)
    return path.read_bytes()


def read_everything(path) -> None:
    """What inspect, embed and SteeredLlama read of a GGUF before llama.cpp sees it."""
    layout = scan(path)
    values = layout.values()
    shape_from_fields(values)
    assert ModelFile(layout).fingerprint.n_layers == shape_from_fields(values).n_layers
    embedded_profiles(values)


@FUZZ
@given(data=st.data())
def test_the_gguf_scanner_on_mutated_real_files(steered_bytes, tmp_path, data):
    blob = bytearray(steered_bytes)
    header_end = min(len(blob), 4096)  # metadata and tensor infos: where a mutation changes the structure
    for _ in range(data.draw(st.integers(1, 8))):
        kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        at = data.draw(st.integers(0, min(len(blob), header_end) - 1)) if blob else 0
        if kind == "flip" and blob:
            blob[at] = data.draw(st.integers(0, 255))
        elif kind == "truncate":
            del blob[data.draw(st.integers(0, len(blob))):]
        elif kind == "insert":
            blob[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        elif blob:
            del blob[at:at + data.draw(st.integers(1, 16))]
    path = tmp_path / "mutated.gguf"
    path.write_bytes(bytes(blob))
    with contextlib.suppress(InputError):
        read_everything(path)


@FUZZ
@given(blob=st.binary(max_size=512))
def test_the_gguf_scanner_on_random_bytes(tmp_path, blob):
    path = tmp_path / "random.gguf"
    path.write_bytes(b"GGUF" + blob if blob[:1] != b"X" else blob)
    with contextlib.suppress(InputError, FileNotFoundError):
        read_everything(path)


@FUZZ
@given(data=embedded_like | json_values, text=st.text(max_size=60))
def test_the_embedded_profile_decoder(data, text):
    for encoded in (json.dumps(data), text):
        with contextlib.suppress(InputError):
            decode_compact("p", encoded)
    found = embedded_profiles({"austeer.profiles": "p,q", "austeer.profile.p": json.dumps(data),
                               "austeer.profile.q": text})
    assert set(found.profiles) | set(found.broken) == {"p", "q"}


@FUZZ
@given(data=profile_like | json_values)
def test_the_profile_json_reader(tmp_path, data):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(data))
    with contextlib.suppress(InputError):
        read_profile(path)


@FUZZ
@given(lines=st.lists(st.one_of(st.text(max_size=40), json_values.map(json.dumps),
                                st.fixed_dictionaries({}, optional={"prompt": json_values, "positive": json_values,
                                                                    "negative": json_values}).map(json.dumps)),
                      max_size=6))
def test_the_pairs_reader(tmp_path, lines):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    with contextlib.suppress(InputError):
        load_pairs(path)
