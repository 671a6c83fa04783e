"""Bad input as a hostile user tries it (issue 12's findings): every case gets one clear line and exit
status 2 (or its documented behaviour), nothing is lost, and nothing is silently accepted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from austeer_gguf import OFF, ControlVector, InputError, Profile, Unit
from austeer_gguf.formats.embedded import embed_profiles, profile_key, read_profiles
from austeer_gguf.formats.profiles import read_profile
from austeer_gguf.ggufio.atomic import atomic_write_text
from austeer_gguf.ggufio.layout import scan
from austeer_gguf.ggufio.rewrite import rewrite

from conftest import open_steered


def cli(*args: str, stdin: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "austeer_gguf", *map(str, args)], capture_output=True, text=True,
                          input=stdin, timeout=timeout)


def refused(result: subprocess.CompletedProcess, message: str) -> None:
    """Exit 2, one `error:` line containing `message`, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr


def profile_file(path: Path, **changes) -> Path:
    data = {"name": "p", "alpha": 2.0, "units": [{"layer": 0, "site": "ffn", "dim": 1, "score": 0.5}], **changes}
    path.write_text(json.dumps(data))
    return path


def with_metadata(source: Path, target: Path, **keys) -> Path:
    """A copy of a GGUF with metadata keys set (dots written as __)."""
    new = {key.replace("__", "."): value for key, value in keys.items()}
    return rewrite(scan(source), target, drop_key=lambda key: key in new, new_keys=new)


@pytest.fixture
def model(tiny_f32, tmp_path) -> Path:
    copy = tmp_path / "model.gguf"
    copy.write_bytes(tiny_f32.read_bytes())
    return copy


@pytest.fixture
def pairs(tmp_path) -> Path:
    path = tmp_path / "mood.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": w, "positive": " good", "negative": " bad"})
                              for w in ["the cat is", "a dog was", "I like this"]) + "\n")
    return path


# ---- resource requests are bounded ------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--threads", "100000"], f"threads = 100000 is outside 1..{os.cpu_count()}"),
    (["--n-ctx", "1000000000"], "n_ctx = 1000000000 is outside 1..4096 (the model's context length is 4096)"),
    (["--max-tokens", "1000000"], "max_tokens = 1000000 is outside 1..2048"),
])
def test_resource_requests_beyond_the_model_or_machine_are_refused(model, args, message):
    refused(cli("generate", model, "hi", *args), message)


def test_localize_refuses_absurd_token_counts_and_unit_counts(model, pairs, tmp_path):
    refused(cli("localize", model, pairs, "--max-tokens", "100000", "-o", tmp_path / "x.json"),
            "max_tokens = 100000 is outside 1..2048")
    refused(cli("localize", model, pairs, "--k", "200000", "-o", tmp_path / "x.json"),
            "k must be an integer in 1..65536, got 200000")
    with pytest.raises(InputError, match="at most 65536 are supported"):
        Profile("big", 1.0, [Unit(0, "attn", d, 0.5) for d in range(70_000)])


# ---- malformed files: one line, no traceback ---------------------------------------------------------------

@pytest.mark.parametrize("changes, message", [
    ({"extra": 5}, "extra must be an object, got int"),
    ({"extra": [1, 2]}, "extra must be an object, got list"),
    ({"model": {"architecture": "llama", "n_layers": 1e999, "widths": {}, "tensor_hash": "x"}},
     "profile field 'model' is malformed"),
    ({"alpha": 1e300}, "alpha must be a finite number within +-10000"),
    ({"units": [{"layer": 0, "site": "ffn", "dim": 1, "score": 7}]}, "score must lie in [-1, 1]"),
])
def test_malformed_profiles_are_refused_by_embed(model, tmp_path, changes, message):
    refused(cli("embed", model, profile_file(tmp_path / "bad.json", **changes)), message)
    assert not (tmp_path / "model.steered.gguf").exists()


def test_deeply_nested_json_is_refused(model, tmp_path):
    nested = tmp_path / "nested.json"
    nested.write_text("[" * 200_000 + "]" * 200_000)
    refused(cli("embed", model, nested), "nests too deeply")
    lines = tmp_path / "nested.jsonl"
    lines.write_text("[" * 200_000 + "]" * 200_000 + "\n")
    refused(cli("localize", model, lines, "-o", tmp_path / "x.json"), "nested.jsonl:1: nests too deeply")


def test_a_profile_that_is_not_utf8_is_refused(model, tmp_path):
    path = tmp_path / "latin.json"
    path.write_bytes(b'{"name": "caf\xe9"}')
    refused(cli("embed", model, path), "is not UTF-8 text")


def test_two_profiles_with_one_name_are_refused(model, tmp_path):
    first = profile_file(tmp_path / "a.json")
    second = profile_file(tmp_path / "b.json", alpha=3.0)
    refused(cli("embed", model, first, second), "two profiles are named p")


@pytest.mark.parametrize("keys, message", [
    ({"general__alignment": 0}, "general.alignment is 0; it must be a positive power of two"),
    ({"llama__attention__head_count": 0}, "llama.attention.head_count = 0 is outside"),
    ({"general__architecture": ""}, "has no general.architecture"),
])
def test_damaged_model_metadata_is_refused(tiny_f32, tmp_path, keys, message):
    damaged = with_metadata(tiny_f32, tmp_path / "damaged.gguf", **keys)
    refused(cli("inspect", damaged), message)
    refused(cli("embed", damaged, profile_file(tmp_path / "p.json")), message)


def test_a_corrupt_model_is_explained_before_llama_cpp_sees_it(model, tmp_path):
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(model.read_bytes()[:50_000])
    refused(cli("generate", truncated, "hi"), "is not a readable GGUF file (truncated")


@pytest.mark.parametrize("line, message", [
    ("[1, 2]", "mine.jsonl:1: expected a JSON object"),
    ('{"prompt": "a", "choices": 3, "label": 0}', "mine.jsonl:1: 'choices' must be a list"),
    ('{"prompt": "a", "choices": [" x", " y"], "label": 2}', "mine.jsonl:1: 'label' must be the index"),
    ('{"choices": [" x", " y"], "label": 0}', "mine.jsonl:1: 'prompt' must be a non-empty string"),
])
def test_malformed_task_files_are_refused(model, tmp_path, line, message):
    task = tmp_path / "mine.jsonl"
    task.write_text(line + "\n")
    refused(cli("eval", model, "--task", task, "-o", tmp_path / "r.json"), message)


def test_explain_checks_the_profile_against_the_model(model, tmp_path):
    wide = profile_file(tmp_path / "wide.json", units=[{"layer": 1, "site": "attn", "dim": 640, "score": 0.5}])
    refused(cli("explain", model, wide), "dim out of range")
    foreign = profile_file(tmp_path / "foreign.json", model={"architecture": "gemma3", "n_layers": 18,
                                                             "widths": {"attn": 1024}, "tensor_hash": "ab"})
    refused(cli("explain", model, foreign), "was made for another model")
    assert cli("explain", model, foreign, "--force").returncode == 0  # its unit fits: --force applies it


# ---- numbers are validated where they enter ----------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["bake", "{model}", "{profile}", "-o", "{out}", "--strength", "nan"],
    ["generate", "{model}", "hi", "--strength", "1e30"],
    ["generate", "{model}", "hi", "--temperature", "nan"],
    ["generate", "{model}", "hi", "--multiplier", "inf"],
])
def test_non_finite_or_absurd_numbers_are_usage_errors(model, tmp_path, args):
    values = {"model": model, "profile": profile_file(tmp_path / "p.json"), "out": tmp_path / "o.gguf"}
    result = cli(*[arg.format(**values) for arg in args])
    assert result.returncode == 2 and "must be a finite number" in result.stderr
    assert not (tmp_path / "o.gguf").exists()


def test_the_runtime_refuses_what_the_cli_would(tiny_f32):
    llm = open_steered(tiny_f32)
    with pytest.raises(InputError, match="enabled must be True or False"):
        llm.steering.enabled = "false"
    assert llm.steering.enabled is True
    with pytest.raises(InputError, match="strength must be a finite number"):
        llm.steering.strength = 1e30
    with pytest.raises(InputError, match="multiplier must be a finite number"):
        llm.steering.set_control_vector(ControlVector({1: np.zeros(64, np.float32)}, "llama"), float("nan"))


def test_control_vector_layers_outside_the_model_are_refused(model, pairs, tmp_path):
    refused(cli("export-cvec", model, pairs, "--layers", "2-5", "-o", tmp_path / "c.gguf"),
            "layers 2-5 are outside this model's 1-2")


def test_control_vectors_that_would_break_the_residual_stream_are_refused_everywhere(model, tmp_path):
    from austeer_gguf.formats.control_vectors import write_control_vector
    from austeer_gguf.formats.profiles import profile_to_dict, write_profile

    huge = ControlVector({1: np.full(64, 1e30, np.float32), 2: np.zeros(64, np.float32)}, "llama")
    cvec = write_control_vector(huge, tmp_path / "huge.gguf")
    profile = Profile("huge", 1.0, [], control=huge)
    with pytest.raises(InputError, match=r"beyond \+-100000"):
        read_profile(json.dumps(profile_to_dict(profile)))
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(profile_to_dict(profile)))
    message = "not finite or beyond +-100000"
    refused(cli("embed", model, path, "-o", tmp_path / "s.gguf"), message)
    refused(cli("generate", model, "hi", "--cvec", cvec, "--max-tokens", "2"), message)
    refused(cli("generate", model, "hi", "--profile", path, "--max-tokens", "2"), message)
    assert not (tmp_path / "s.gguf").exists()
    small = ControlVector({1: np.full(64, 500.0, np.float32)}, "llama")
    write_profile(Profile("small", 1.0, [], control=small), tmp_path / "small.json")
    refused(cli("generate", model, "hi", "--profile", tmp_path / "small.json", "--strength", "900",
                "--max-tokens", "2"), "add more than +-100000 to a residual value")


def test_a_budget_no_strength_meets_and_a_vector_only_explain_are_refused_before_printing(model, tmp_path):
    from austeer_gguf.formats.profiles import write_profile

    loud = ControlVector({layer: np.full(64, 90_000.0, np.float32) for layer in (1, 2)}, "llama")
    path = write_profile(Profile("loud", 1.0, [], control=loud), tmp_path / "loud.json")
    out = tmp_path / "loud.calibrated.json"
    result = cli("calibrate", model, path, "--kl", "1e-6", "-o", out)
    refused(result, "no strength of profile 'loud' keeps the kl within 1e-06: raise the budget")
    assert result.stdout == "" and "calibrated" not in result.stderr and not out.exists()
    refused(cli("explain", model, path),
            "profile 'loud' has no units to explain (it steers with a control vector only)")


def test_a_profile_without_units_or_vector_steers_nothing_and_says_so(model):
    llm = open_steered(model)
    setting = llm.steering.setting([(Profile("empty", 5.0, []), 1.0)])
    assert setting is OFF or setting == OFF
    assert setting.describe() == {"enabled": False, "profiles": {}, "strength": 0.0, "apply": "all"}


# ---- nothing is lost ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["export-lora", "bake", "embed", "strip", "localize", "export-cvec",
                                     "dequantize"])
def test_an_output_that_is_an_input_is_refused(model, pairs, tmp_path, command):
    profile = profile_file(tmp_path / "p.json")
    link = tmp_path / "link.gguf"
    link.symlink_to(model)
    before = model.read_bytes()
    for target in (model, link):
        args = {"export-lora": ["export-lora", model, profile, "-o", target],
                "bake": ["bake", model, profile, "-o", target],
                "embed": ["embed", model, profile, "-o", target],
                "strip": ["strip", model, "-o", target],
                "localize": ["localize", model, pairs, "-o", target],
                "export-cvec": ["export-cvec", model, pairs, "-o", target],
                "dequantize": ["dequantize", model, "-o", target]}[command]
        refused(cli(*args), "is an input of this command")
    assert model.read_bytes() == before


def test_outputs_that_are_not_regular_files_or_are_read_only_are_refused(model, tmp_path):
    profile = profile_file(tmp_path / "p.json")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    refused(cli("embed", model, profile, "-o", fifo), "is not a regular file")
    refused(cli("bake", model, profile, "-o", "/dev/null"), "is not a regular file")
    assert Path("/dev/null").is_char_device()
    os.chmod(model, 0o444)
    before = model.read_bytes()
    refused(cli("embed", model, profile, "--in-place"), "is read-only")
    assert model.read_bytes() == before
    assert cli("embed", model, profile, "--in-place", "--force").returncode == 0
    assert list(read_profiles(model)) == ["p"]


def test_sigterm_removes_the_partial_file_and_stale_partials_are_swept(smollm2, tmp_path):
    target = tmp_path / "f32.gguf"
    process = subprocess.Popen([sys.executable, "-m", "austeer_gguf", "dequantize", str(smollm2), "-o", str(target),
                                "--type", "f32"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".f32.gguf.*.partial")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143
    assert "terminated (SIGTERM): any file it was writing was removed" in process.stderr.read()
    assert sorted(tmp_path.iterdir()) == []

    stale = tmp_path / ".note.txt.999999999.abcdefgh.partial"  # a pid no process has
    stale.write_text("left by a killed writer")
    atomic_write_text(tmp_path / "note.txt", "hello")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["note.txt"]


def test_a_full_disk_is_reported_as_such(model, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "small"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], check=True)
    try:
        result = cli("embed", model, profile_file(tmp_path / "p.json"), "-o", disk / "out.gguf")
        refused(result, f"the disk holding {disk} is full")
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# ---- a broken embedded profile never blocks the model ------------------------------------------------------

def test_a_malformed_embedded_profile_is_left_out_with_a_warning_and_can_be_stripped(model, tmp_path):
    good = Profile("good", 2.0, [Unit(0, "ffn", 1, 0.5)])
    steered = embed_profiles(model, [good, Profile("bad", 2.0, [Unit(1, "attn", 2, 0.5)])], tmp_path / "s.gguf")
    text = scan(steered).value(profile_key("bad")).replace('"layer":[1]', '"layer":[1e999]')
    broken = rewrite(scan(steered), tmp_path / "broken.gguf", drop_key=lambda k: k == profile_key("bad"),
                     new_keys={profile_key("bad"): text})
    result = cli("inspect", broken)
    assert result.returncode == 0 and "profile bad: BROKEN" in result.stdout and "profile good:" in result.stdout

    with pytest.warns(UserWarning, match="embedded profile 'bad' is left out"):
        llm = open_steered(broken)
    assert llm.steering.available == ("good",)
    llm.steering.use("good")

    result = cli("generate", broken, "hi", "--max-tokens", "2", "--profile", "good")
    assert result.returncode == 0 and "embedded profile 'bad' is left out" in result.stderr
    assert cli("strip", broken, "--name", "bad", "-o", tmp_path / "fixed.gguf").returncode == 0
    assert read_profiles(tmp_path / "fixed.gguf") == {"good": good}


def test_batch_sizes_beyond_the_context_are_refused(tiny_f32):
    with pytest.raises(InputError, match="n_batch = 4096 is outside 1..256"):
        open_steered(tiny_f32, n_ctx=256, n_batch=4096)


def test_chat_reports_a_malformed_profile_file_and_goes_on(model, tmp_path):
    bad = profile_file(tmp_path / "bad.json", extra=5)
    result = cli("chat", model, "--max-tokens", "2", stdin=f"/profile {bad}\nthe cat is\n/quit\n")
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert "error: profile 'p': extra must be an object, got int" in result.stdout
    assert result.stdout.count("> ") >= 3  # the chat kept reading after the error


@pytest.mark.parametrize("text, message", [
    ('{"name": "p", "alpha": ' + "9" * 400 + ', "units": []}', "alpha must be a finite number"),
    ('{"name": "p", "alpha": 1, "units": [{"layer": 0, "site": "ffn", "dim": 1, "score": 1' + "0" * 5000 + '}]}',
     "not usable JSON"),
    ('{"name": "p", "alpha": 1, "units": [], "control_vector": {"layers": {"\\u00b2": [1.0]}}}',
     "malformed control vector layer"),
])
def test_numbers_and_digits_python_cannot_hold_are_refused(text, message):
    with pytest.raises(InputError, match=message):
        read_profile(text)


def test_a_chat_that_outgrows_its_context_says_so_and_goes_on(model):
    long = "the cat is " * 200
    result = cli("chat", model, "--n-ctx", "256", "--max-tokens", "2", stdin=f"{long}\nthe cat is\n/quit\n")
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert "exceed context window of 256" in result.stdout and result.stdout.count("> ") >= 3
    refused(cli("generate", model, long, "--n-ctx", "256", "--max-tokens", "2"), "exceed context window of 256")
    refused(cli("fetch", "nosuchmodel"), "unknown built-in model 'nosuchmodel'")
