"""`python -m austeer_gguf build`: on the tiny model (whose replies mean nothing: these tests check the
plumbing, not the behaviour), a build interrupted with Ctrl-C resumes from its saved results and writes a
profile that fits the model, its report card and plot, and the per-item data; what it cannot build is refused
before any model is loaded."""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from austeer_gguf.formats.model_file import ModelFile
from austeer_gguf.formats.profiles import read_profile


def build(*args, **kwargs) -> subprocess.Popen:
    # Ctrl-C reaches the build as it would from a terminal, even when these tests run where SIGINT is ignored (a
    # shell's background job), which a child would otherwise inherit.
    return subprocess.Popen([sys.executable, "-m", "austeer_gguf", "build", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint, **kwargs)


def default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def saved_results(path) -> int:
    try:
        return len(json.loads(path.read_text())["results"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def test_an_interrupted_build_resumes_and_writes_a_profile_its_card_and_its_data(tiny_f32, tmp_path):
    output = tmp_path / "tiny.detox.json"
    command = (tiny_f32, "detox", "--minutes", "2", "-o", output, "--threads", "2")
    first = build(*command)
    record = tmp_path / "tiny.detox.build.json"
    deadline = time.monotonic() + 300
    # Interrupted once the baseline is saved: a method's trials are measured (and saved) together, and the tiny
    # model's are quick, so waiting for more could let the build finish first.
    while saved_results(record) < 1 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    first.send_signal(signal.SIGINT)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 130, stderr[-2000:]
    assert "results are saved in" in stderr and "run the same command to resume" in stderr
    kept = saved_results(record)
    assert kept >= 1 and not output.exists()

    second = build(*command)
    stdout, stderr = second.communicate(timeout=600)
    assert second.returncode == 0, stderr[-3000:]
    assert f"({kept} results kept)" in stderr
    assert len(re.findall(r"\(saved\)$", stderr, flags=re.MULTILINE)) == kept  # none measured again
    card = tmp_path / "tiny.detox.md"
    data = json.loads(record.read_text())
    text = card.read_text()
    # The tiny model's replies mean nothing: whether a method improved them on test is chance, and a build whose
    # methods all did nothing or the opposite writes no profile. Either way the card says which.
    if data["build"]["winner"] is None:
        assert stdout.split() == [str(card)] and "no profile written" in stderr and not output.exists()
        assert "**No profile**" in text
    else:
        assert stdout.split() == [str(card), str(output)]
        profile = read_profile(output)
        model = ModelFile.open(tiny_f32)
        profile.check_model(model.shape, model.fingerprint)
        assert profile.name == "detox" and profile.extra["task"] == "detox" and profile.extra["report"] == card.name
        assert data["build"]["winner"] == profile.extra["method"]
        assert re.search(r"\*\*(Target met by|Nothing met the target)", text)
    assert text.startswith("# detox on tiny-f32.gguf") and "## Test" in text and "## Plan" in text
    assert text.index("Will it steer? Read from the capture pass alone") < text.index("## Test")
    assert "| prompting" in text  # asking the model stands beside the steering methods, measured or not
    assert (tmp_path / "tiny.detox.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert data["plan"]["dev_items"] >= 8 and data["plan"]["test_items"] >= 20
    comparisons = data["build"]["comparisons"]  # Holm's correction over every method measured on test
    assert comparisons and all(0 < c["p_value"] <= 1 and isinstance(c["holm_significant"], bool)
                               for c in comparisons.values())
    assert "‡: the difference from unsteered holds after Holm's correction" in text
    # the card gives the time of both runs; the resumed run reused the calibrations, not only the results
    assert data["runs"] == 2 and " minutes over 2 runs." in text.splitlines()[2]
    assert data["calibrations"] and all(len(found) == len(data["plan"]["kl_budgets"])
                                        for found in data["calibrations"].values())
    assert all(len(items) == data["plan"]["test_items"] for items in data["build"]["test_items"].values())
    assert data["plan"]["test_items"] >= data["plan"].get("planned_test_items", data["plan"]["test_items"])
    assert f"; {data['plan']['test_items']} test prompts." in text  # the card tells the size measured
    assert any(key.startswith("dev|austeer-pooled|") for key in data["results"])

    # A record saved before pooling (its identity listed the methods; no pooled counts; no pooled trials)
    # resumes: the same pairs are captured again, and only the method that needs them is measured.
    data["identity"]["methods"] = ["unsteered", "austeer"]
    data["results"] = {key: value for key, value in data["results"].items() if "|austeer-pooled|" not in key}
    record.write_text(json.dumps(data))
    evidence = tmp_path / "tiny.detox.evidence.npz"
    with np.load(evidence) as saved:
        arrays = {name: saved[name] for name in saved.files if not name.startswith("pooled_")}
    np.savez(evidence, **arrays)
    third = build(*command)
    _, stderr = third.communicate(timeout=600)
    assert third.returncode == 0, stderr[-3000:]
    assert re.search(r"captured the same \d+ pairs again, position-pooled too", stderr)
    assert re.search(r"^  \[.*\] dev austeer-pooled .*\d$", stderr, flags=re.MULTILINE)  # measured, not saved
    assert not re.search(r"^  \[.*\] dev austeer .*\d$", stderr, flags=re.MULTILINE)  # the rest is kept
    with np.load(evidence) as saved:
        assert any(name.startswith("pooled_positive_") for name in saved.files)


def test_a_behaviour_without_harmless_prompts_builds_and_says_its_refusals_were_not_measured(tiny_f32, tmp_path):
    """`sentiment` continues plain text: there are no harmless requests to count refusals on."""
    output = tmp_path / "tiny.sentiment.json"
    done = subprocess.run([sys.executable, "-m", "austeer_gguf", "build", str(tiny_f32), "sentiment", "--minutes",
                           "2", "--threads", "2", "-o", str(output)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"dev unsteered .* harmless refusals -$", done.stderr, flags=re.MULTILINE)
    card = (tmp_path / "tiny.sentiment.md").read_text()
    assert "| - / - |" in card  # harmless refusals on / off: not measured
    data = json.loads((tmp_path / "tiny.sentiment.build.json").read_text())
    assert not any(trial["method"] == "austeer-conditional" for trial in data["build"]["dev"])  # no gate to fit


@pytest.mark.parametrize("args, message", [
    (["word-polarity"], "'word-polarity' is not a generation behaviour"),
    (["politeness"], "unknown behaviour 'politeness': use detox, positive, concise, sentiment, or your own pairs"),
    (["detox", "--minutes", "0.5"], "argument --minutes: must be a finite number in 1..1440, got 0.5"),
])
def test_what_build_cannot_make_is_refused_with_the_reason(tiny_f32, tmp_path, args, message):
    done = subprocess.run([sys.executable, "-m", "austeer_gguf", "build", str(tiny_f32), *args, "-o",
                           str(tmp_path / "p.json")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_plan_only_says_what_the_minutes_buy_and_writes_no_profile(tiny_f32, tmp_path):
    output = tmp_path / "p.json"
    done = subprocess.run([sys.executable, "-m", "austeer_gguf", "build", str(tiny_f32), "detox", "--minutes", "2",
                           "--plan", "-o", str(output)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.fullmatch(r"\d+ dev trials on \d+ items, each method's choice on \d+ test items; expected 95% interval "
                        r"of the headline: \+-0\.\d+ \(\+-0\.1 would take about \d+ minutes\)\n"
                        r"will it steer\? \d+ pairs: the top 100 units agree in sign on \d+% of pairs .* at layer \d+ "
                        r"\(0: no shared direction\)\n", done.stdout)
    assert not output.exists()
    plan = json.loads((tmp_path / "p.build.json").read_text())["plan"]
    assert plan["minutes"] == 2 and plan["test_items"] >= 20 and plan["pairs"] > 0


def test_test_grows_into_the_time_dev_left_for_the_methods_it_chose():
    from austeer_gguf.evaluation.build import BuildConfig, _grown_test_limit
    from austeer_gguf.evaluation.tasks import load_task

    task = load_task("detox")
    assert _grown_test_limit(task, BuildConfig(test_limit=50), 2) is None  # no deadline: the plan's size
    config = BuildConfig(test_limit=50, deadline=time.perf_counter() + 100.0, seconds_per_item=0.5)
    assert _grown_test_limit(task, config, 2) in (89, 90)  # 90% of the 100 s left, 2 methods at 0.5 s an item
    brisk = dataclasses.replace(config, seconds_per_item=0.1)
    assert _grown_test_limit(task, brisk, 1) == len(task.test)  # never more items than the split has
    late = BuildConfig(test_limit=50, deadline=time.perf_counter() - 1.0, seconds_per_item=0.5)
    assert _grown_test_limit(task, late, 2) <= 0  # past the deadline: below the plan, so build keeps the plan


def test_minutes_too_few_for_the_model_are_refused_with_the_minutes_it_would_take():
    from austeer_gguf.errors import InputError
    from austeer_gguf.evaluation.plan import Probe, minutes_for, size
    from austeer_gguf.evaluation.tasks import load_task

    slow = Probe(seconds_per_item=16.0, seconds_per_kl=46.0, item_spread=0.5, seconds=130.0)  # a 1.5B on 2 cores
    needed = minutes_for(0.1, slow, calibration=4 * 3 * 6 * 46.0, test_runs=5, spent=130.0)
    with pytest.raises(InputError, match=rf"give more --minutes \(about {needed:.0f} for a \+-0.1 interval\)"):
        size(10, 336.0, slow, load_task("detox"), dev_trials=15, calibrated_points=4, test_runs=5,
             kl_budgets=(0.05, 0.1, 0.2))
    assert needed > 60  # hours, not minutes, on this machine
