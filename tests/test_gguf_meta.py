"""Profiles in GGUF metadata: exact round trips, byte-identical tensors, atomic and safe writes."""

from __future__ import annotations

import filecmp
import os
import resource
import signal
import subprocess
import sys

import gguf
import llama_cpp
import pytest

from austeer_gguf import Profile, Unit
from austeer_gguf.formats.embedded import (
    FORMAT_VERSION,
    NAMES_KEY,
    VERSION_KEY,
    embed_profiles,
    embedded_profiles,
    profile_key,
    read_profiles,
    strip_profiles,
)
from austeer_gguf.formats.profiles import encode_compact, write_profile
from austeer_gguf.ggufio.layout import scan
from austeer_gguf.ggufio.rewrite import rewrite
from austeer_gguf.runtime.steered_llama import SteeredLlama


def profiles() -> list[Profile]:
    # Scores that six decimals would not keep: only an exact encoding reads them back equal.
    first = Profile("polite", 7.25, [Unit(0, "attn", 5, 0.7125), Unit(2, "layer", 63, -1 / 3),
                                     Unit(1, "ffn", 0, 2 / 7)], n_pairs=7, data_sha256="ab" * 32)
    second = Profile("upbeat-2", 12.0, [Unit(1, "attn", 17, -0.55)])
    return [first, second]


def tensor_bytes(path) -> dict[str, bytes]:
    return {t.name: bytes(t.data.tobytes()) for t in gguf.GGUFReader(str(path)).tensors}


def metadata_without_profiles(path) -> dict:
    return {k: v for k, v in scan(path).values().items() if not k.startswith("austeer.")}


def test_round_trip_through_gguf_py_and_llama_cpp(tiny_f32, tmp_path):
    target = embed_profiles(tiny_f32, profiles(), tmp_path / "steered.gguf")
    assert list(read_profiles(target).values()) == profiles()

    reader = gguf.GGUFReader(str(target))  # gguf-py's own reader
    text = reader.fields["austeer.profile.polite"].contents()
    assert embedded_profiles({"austeer.profiles": "polite", "austeer.profile.polite": text}).profiles["polite"] \
        == profiles()[0]

    plain = llama_cpp.Llama(str(target), verbose=False)  # llama.cpp's metadata API
    assert list(embedded_profiles(plain.metadata).profiles.values()) == profiles()

    steered = SteeredLlama(str(target), verbose=False)
    assert steered.steering.available == ("polite", "upbeat-2")
    steered.steering.use("upbeat-2")
    assert steered.steering.profile == profiles()[1]


def test_tensors_are_byte_identical_and_other_metadata_unchanged(tiny_q8, tmp_path):
    target = embed_profiles(tiny_q8, profiles(), tmp_path / "steered.gguf")
    assert tensor_bytes(target) == tensor_bytes(tiny_q8)
    assert metadata_without_profiles(target) == metadata_without_profiles(tiny_q8)


def test_embedding_again_replaces_a_profile_of_the_same_name(tiny_f32, tmp_path):
    once = embed_profiles(tiny_f32, profiles(), tmp_path / "once.gguf")
    renamed = Profile("polite", 1.0, [Unit(0, "ffn", 1, 0.5)])
    twice = embed_profiles(once, [renamed], tmp_path / "twice.gguf")
    assert read_profiles(twice) == {"polite": renamed, "upbeat-2": profiles()[1]}


def test_strip_restores_the_original_file(tiny_f32, tmp_path):
    steered = embed_profiles(tiny_f32, profiles(), tmp_path / "steered.gguf")
    one_left = strip_profiles(steered, tmp_path / "one.gguf", ["polite"])
    assert list(read_profiles(one_left)) == ["upbeat-2"]
    stripped = strip_profiles(steered, tmp_path / "stripped.gguf")
    assert filecmp.cmp(stripped, tiny_f32, shallow=False)
    with pytest.raises(ValueError, match="no embedded profile named nope; the model has polite, upbeat-2"):
        strip_profiles(steered, tmp_path / "x.gguf", ["nope"])


def test_bad_names_are_refused(tiny_f32, tmp_path):
    with pytest.raises(ValueError, match="cannot be embedded"):
        embed_profiles(tiny_f32, [Profile("has space", 1.0, [])], tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.parametrize("damage", ["truncated", "not_gguf", "empty"])
def test_unreadable_inputs_fail_cleanly_and_leave_no_output(tiny_f32, tmp_path, damage):
    source = tmp_path / "damaged.gguf"
    data = tiny_f32.read_bytes()
    source.write_bytes({"truncated": data[: len(data) // 2], "not_gguf": b"PK\x03\x04" + data[4:],
                        "empty": b""}[damage])
    with pytest.raises(ValueError, match="is not a readable GGUF file"):
        embed_profiles(source, profiles(), tmp_path / "out.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.gguf"]


def test_in_place_embedding_that_fails_midway_leaves_the_original_intact(tiny_q8, tmp_path):
    model = tmp_path / "model.gguf"
    model.write_bytes(tiny_q8.read_bytes())
    before = model.read_bytes()
    profile_path = tmp_path / "p.json"
    write_profile(profiles()[0], profile_path)

    def limit_file_size() -> None:  # the write fails with EFBIG once the new file passes half the size
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) // 2, len(before) // 2))

    result = subprocess.run([sys.executable, "-m", "austeer_gguf", "embed", str(model), str(profile_path),
                             "--in-place"], capture_output=True, text=True, preexec_fn=limit_file_size)
    assert result.returncode == 2, result.stderr
    assert "File too large" in result.stderr and "Traceback" not in result.stderr
    assert model.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf", "p.json"]


def test_in_place_embedding_replaces_the_file_and_keeps_its_mode(tiny_f32, tmp_path):
    model = tmp_path / "model.gguf"
    model.write_bytes(tiny_f32.read_bytes())
    os.chmod(model, 0o640)
    embed_profiles(model, profiles(), model)
    assert list(read_profiles(model)) == ["polite", "upbeat-2"]
    assert model.stat().st_mode & 0o777 == 0o640
    assert tensor_bytes(model) == tensor_bytes(tiny_f32)


def embed_unchecked(source, profiles_: list[Profile], target):
    """A file as another tool (or an older austeer-gguf) may have written it: profiles nobody checked."""
    texts = {profile.name: encode_compact(profile) for profile in profiles_}
    keys = {VERSION_KEY: FORMAT_VERSION, NAMES_KEY: ",".join(texts), **{profile_key(n): t for n, t in texts.items()}}
    return rewrite(scan(source), target, drop_key=lambda key: False, new_keys=keys)


def test_embed_refuses_a_profile_that_does_not_fit_before_writing_anything(tiny_f32, tmp_path):
    wide = Profile("wide", 1.0, [Unit(9, "attn", 1, 0.5)])
    with pytest.raises(ValueError, match="layer out of range"):
        embed_profiles(tiny_f32, [profiles()[1], wide], tmp_path / "steered.gguf")
    assert not (tmp_path / "steered.gguf").exists()


def test_an_embedded_profile_that_does_not_fit_is_refused_on_use_not_on_load(tiny_f32, tmp_path):
    wide = Profile("wide", 1.0, [Unit(9, "attn", 1, 0.5)])  # layer 9 of a 3-layer model
    target = embed_unchecked(tiny_f32, [wide, profiles()[1]], tmp_path / "steered.gguf")
    llm = SteeredLlama(str(target), verbose=False)
    llm.steering.use("upbeat-2")
    with pytest.raises(ValueError, match="layer out of range"):
        llm.steering.use("wide")
    assert llm.steering.profile == profiles()[1]


# ---- two writers of one file ---------------------------------------------------------------------------


def test_two_in_place_embeds_at_once_keep_both_profiles(tiny_f32, tmp_path):
    model = tmp_path / "model.gguf"
    for trial in range(6):
        model.write_bytes(tiny_f32.read_bytes())
        files = []
        for index, profile in enumerate(profiles()):
            path = tmp_path / f"p{trial}-{index}.json"
            write_profile(profile, path)
            files.append(path)
        runs = [subprocess.Popen([sys.executable, "-m", "austeer_gguf", "embed", str(model), str(path), "--in-place"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for path in files]
        results = [(run.wait(120), run.stderr.read()) for run in runs]
        assert [code for code, _ in results] == [0, 0], results
        assert sorted(read_profiles(model)) == sorted(p.name for p in profiles()), f"trial {trial}: a profile was lost"


def test_embed_racing_strip_loses_nothing_and_leaves_a_readable_file(tiny_f32, tmp_path):
    model = tmp_path / "model.gguf"
    first, second = profiles()
    for trial in range(4):
        model.write_bytes(embed_profiles(tiny_f32, [first], tmp_path / "start.gguf").read_bytes())
        path = tmp_path / "second.json"
        write_profile(second, path)
        runs = [subprocess.Popen([sys.executable, "-m", "austeer_gguf", *args], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
                for args in (["embed", str(model), str(path), "--in-place"],
                             ["strip", str(model), "--name", first.name, "--in-place"])]
        assert [run.wait(120) for run in runs] == [0, 0], [run.stderr.read() for run in runs]
        assert list(read_profiles(model)) == [second.name], f"trial {trial}"  # either order gives this


def test_a_rewrite_from_a_layout_of_a_file_since_replaced_is_refused(tiny_f32, tmp_path):
    model = tmp_path / "model.gguf"
    model.write_bytes(tiny_f32.read_bytes())
    stale = scan(model)  # read, then another program renames a different file into place
    embed_profiles(model, profiles(), model)
    before = model.read_bytes()
    with pytest.raises(ValueError, match="changed after it was read"):
        rewrite(stale, model, drop_key=lambda key: False, new_keys={"x.note": "stale"})
    assert model.read_bytes() == before and list(read_profiles(model)) == [p.name for p in profiles()]
