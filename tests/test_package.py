"""The package as a user meets it: lazy imports, --version, help, and user errors vs bugs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import austeer_gguf

HEAVY = ("llama_cpp", "austeer_gguf._native")


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_importing_the_package_and_its_vocabulary_loads_neither_llama_cpp_nor_the_native_core():
    result = python(f"""
        import sys
        import austeer_gguf
        from austeer_gguf import Profile, Unit, ModelShape, InputError, ControlVector, sites, models
        Profile("p", 1.0, [Unit(0, "attn", 1, 0.5)])
        loaded = [name for name in {HEAVY!r} if name in sys.modules]
        assert not loaded, loaded
    """)
    assert result.returncode == 0, result.stderr


def test_commands_that_only_read_or_rewrite_gguf_files_never_load_them(tiny_f32, tmp_path):
    profile = tmp_path / "p.json"
    profile.write_text(json.dumps({"name": "p", "alpha": 2, "units": [{"layer": 0, "site": "ffn", "dim": 1,
                                                                       "score": 0.5}]}))
    steered, plain = tmp_path / "s.gguf", tmp_path / "plain.gguf"
    result = python(f"""
        import sys
        from austeer_gguf.apps.cli import main
        assert main(["inspect", {str(tiny_f32)!r}]) == 0
        assert main(["embed", {str(tiny_f32)!r}, {str(profile)!r}, "-o", {str(steered)!r}]) == 0
        assert main(["strip", {str(steered)!r}, "-o", {str(plain)!r}]) == 0
        loaded = [name for name in {HEAVY!r} if name in sys.modules]
        assert not loaded, loaded
    """)
    assert result.returncode == 0, result.stderr
    assert plain.read_bytes() == tiny_f32.read_bytes()


def test_version_and_help_show_how_the_command_was_invoked_and_its_defaults():
    result = subprocess.run([sys.executable, "-m", "austeer_gguf", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"python -m austeer_gguf {austeer_gguf.__version__}"
    result = subprocess.run([sys.executable, "-m", "austeer_gguf", "localize", "--help"], capture_output=True,
                            text=True)
    assert result.returncode == 0
    assert "usage: python -m austeer_gguf localize" in result.stdout
    assert "(default: 10)" in result.stdout and "(default: attn)" in result.stdout


def test_a_bug_keeps_its_traceback_and_exit_status_1_while_bad_input_gets_one_line_and_2(tmp_path):
    bug = python("""
        from austeer_gguf.apps import cli
        def broken(args):
            return {}["not a user error"]
        cli.files.cmd_inspect = broken
        raise SystemExit(cli.main(["inspect", "x"]))
    """)
    assert bug.returncode == 1 and "Traceback" in bug.stderr and "KeyError" in bug.stderr
    bad = subprocess.run([sys.executable, "-m", "austeer_gguf", "inspect", str(tmp_path / "missing.gguf")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.startswith("error: ")
