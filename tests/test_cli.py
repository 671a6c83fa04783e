"""The command line, run as a user runs it: subprocesses on the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from austeer_gguf import Profile, Unit
from austeer_gguf.formats.embedded import read_profiles
from austeer_gguf.formats.profiles import read_profile, write_profile

WORDS = ["the cat is", "a dog was", "I like this", "you love the", "it was a", "this day is", "the world is",
         "I hate the", "a cat was", "you like a"]


def run(*args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "austeer_gguf", *args], capture_output=True, text=True,
                          input=stdin, timeout=300, env=env)


@pytest.fixture
def pairs_file(tmp_path):
    path = tmp_path / "mood.train.jsonl"
    lines = [json.dumps({"prompt": w, "positive": " good happy", "negative": " bad sad"}) for w in WORDS]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_localize_embed_inspect_generate_strip(tiny_f32, pairs_file, tmp_path):
    profile_path = tmp_path / "mood.json"
    result = run("localize", str(tiny_f32), str(pairs_file), "--site", "all", "--k", "6", "--alpha", "8",
                 "-o", str(profile_path))
    assert result.returncode == 0, result.stderr
    assert "rank layer" in result.stderr and "10 pairs" in result.stderr
    profile = read_profile(profile_path)
    assert profile.name == "mood" and profile.k == 6 and profile.alpha == 8.0 and profile.n_pairs == 10

    model = tmp_path / "model.gguf"
    model.write_bytes(tiny_f32.read_bytes())
    result = run("embed", str(model), str(profile_path))  # exactly the documented form
    assert result.returncode == 0, result.stderr
    steered = tmp_path / "model.steered.gguf"
    assert result.stdout.strip() == str(steered)
    assert read_profiles(steered) == {"mood": profile}
    assert model.read_bytes() == tiny_f32.read_bytes()  # the source is untouched

    result = run("inspect", str(steered))
    assert result.returncode == 0, result.stderr
    assert f"profile mood: sites {','.join(profile.sites)}, k 6, alpha 8" in result.stdout

    result = run("generate", str(steered), "the cat is", "--compare", "--max-tokens", "6", "--strength", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("[unsteered] ") and lines[1].startswith("[  steered] ")

    result = run("strip", str(steered), "-o", str(tmp_path / "plain.gguf"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "plain.gguf").read_bytes() == tiny_f32.read_bytes()

    result = run("embed", str(model), str(profile_path), "--name", "calm", "--in-place")
    assert result.returncode == 0, result.stderr
    assert list(read_profiles(model)) == ["calm"]


def test_localize_pooled_ranks_units_by_the_replies_means(tiny_f32, pairs_file, tmp_path):
    from austeer_gguf.localization.localize import localize

    result = run("localize", str(tiny_f32), str(pairs_file), "--site", "ffn", "--k", "9", "--pooled",
                 "-o", str(tmp_path / "pooled.json"))
    assert result.returncode == 0, result.stderr
    profile = read_profile(tmp_path / "pooled.json")
    assert profile.extra["pooled"] is True and profile.k == 9
    at_last = localize(tiny_f32, pairs_file, sites="ffn", k=9, n_threads=2, progress=False)
    pooled = localize(tiny_f32, pairs_file, sites="ffn", k=9, n_threads=2, progress=False, pooled=True)
    assert profile.units == pooled.profile.units
    # Each reply here is two tokens ("good happy", "bad sad"): the means count other signs than the last tokens.
    assert not np.array_equal(pooled.counts.positive["ffn"], at_last.counts.positive["ffn"])


def test_localize_on_a_copy_with_other_weights_leaves_no_copy_behind(tiny_q8, pairs_file, tmp_path):
    copy = tmp_path / "by-hand.f16.gguf"
    assert run("dequantize", str(tiny_q8), "-o", str(copy), "--type", "f16").returncode == 0
    by_hand, from_copy, from_file = (tmp_path / f"{name}.json" for name in ("by-hand", "copy", "file"))
    assert run("localize", str(copy), str(pairs_file), "--site", "all", "--k", "8", "-o", str(by_hand),
               "--quiet").returncode == 0
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    result = run("localize", str(tiny_q8), str(pairs_file), "--site", "all", "--k", "8", "--weights", "f16",
                 "-o", str(from_copy), "--quiet", env={**os.environ, "TMPDIR": str(scratch)})
    assert result.returncode == 0, result.stderr
    assert f"writing a f16 copy of {tiny_q8.name}" in result.stderr
    assert list(scratch.iterdir()) == []
    assert read_profile(from_copy).units == read_profile(by_hand).units
    assert run("localize", str(tiny_q8), str(pairs_file), "--site", "all", "--k", "8", "-o", str(from_file),
               "--quiet").returncode == 0  # the default: the file itself
    assert read_profile(from_file).n_pairs == 10


def test_chat_toggles_steering_between_replies(tiny_f32, pairs_file, tmp_path):
    profile_path = tmp_path / "mood.json"
    assert run("localize", str(tiny_f32), str(pairs_file), "--k", "4", "-o", str(profile_path),
               "--quiet").returncode == 0
    script = "the cat is\n/steer off\nthe cat is\n/strength 2\n/steer on\n/profile nope\n/quit\n"
    result = run("chat", str(tiny_f32), "--profile", str(profile_path), "--max-tokens", "4", stdin=script)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "(steering on, profile mood, strength 1)" in out
    assert "(steering off, profile mood, strength 1)" in out
    assert "(steering on, profile mood, strength 2)" in out
    assert "error: profile 'nope' is neither a profile file nor a profile embedded in the model" in out


def test_dequantize_writes_a_loadable_float_copy(tiny_q8, tmp_path):
    target = tmp_path / "f32.gguf"
    result = run("dequantize", str(tiny_q8), "-o", str(target), "--type", "f32")
    assert result.returncode == 0, result.stderr
    result = run("inspect", str(target))
    assert result.returncode == 0 and "3 layers" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["inspect", "missing.gguf"], "error: missing.gguf: no such file, and not a built-in model"),
    (["embed", "{model}", "{bad_profile}"], "error: profile 'wide': unit #0 (layer 9, site 'attn', dim 1"),
    (["localize", "{model}", "{bad_pairs}"], "bad.jsonl:2: not valid JSON"),
    (["inspect", "{bad_pairs}"], "is not a readable GGUF file"),
    (["generate", "{model}", "hi", "--profile", "nothing"], "error: profile 'nothing' is neither a profile file"
     " nor a profile embedded"),
])
def test_bad_input_gives_one_line_and_status_2(tiny_f32, tmp_path, args, message):
    bad_profile = tmp_path / "wide.json"
    bad_profile.write_text(json.dumps({"name": "wide", "alpha": 1, "units": [
        {"layer": 9, "site": "attn", "dim": 1, "score": 0.5}]}))
    bad_pairs = tmp_path / "bad.jsonl"
    bad_pairs.write_text('{"positive": "a", "negative": "b"}\n{"positive": \n')
    values = {"model": str(tiny_f32), "bad_profile": str(bad_profile), "bad_pairs": str(bad_pairs)}
    result = run(*[arg.format(**values) for arg in args])
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1


@pytest.mark.parametrize("args", [["localize", "m", "p", "--site", "mlp"], ["localize", "m", "p", "--k", "0"],
                                  ["embed", "m", "p.json", "-o", "x.gguf", "--in-place"], ["nope"], []])
def test_usage_errors_exit_2(args):
    result = run(*args)
    assert result.returncode == 2 and "usage:" in result.stderr


def test_every_command_has_help():
    for command in ("fetch", "localize", "embed", "inspect", "strip", "dequantize", "generate", "chat",
                    "export-lora", "bake", "export-cvec"):
        result = run(command, "--help")
        assert result.returncode == 0 and "usage:" in result.stdout


def test_chat_mixes_profiles_and_scopes(tiny_f32, tmp_path):
    first, second = tmp_path / "mood.json", tmp_path / "calm.json"
    write_profile(Profile("mood", 4.0, [Unit(1, "attn", 3, 0.9)]), first)
    write_profile(Profile("calm", 2.0, [Unit(1, "attn", 3, -0.5), Unit(2, "ffn", 5, 0.5)]), second)
    script = (f"/profile {first}:0.5+{second}\n/apply generation\nthe cat is\n/profile {first}+{first}\n"
              "/apply sometimes\n/quit\n")
    result = run("chat", str(tiny_f32), "--max-tokens", "3", stdin=script)
    assert result.returncode == 0, result.stderr
    assert "(steering on, profile mood:0.5+calm, strength 1)" in result.stdout
    assert "(steering on, profile mood:0.5+calm, strength 1, generated tokens only)" in result.stdout
    assert "error: profile 'mood' is named twice" in result.stdout
    assert "unknown command '/apply sometimes'" in result.stdout
