"""Calibrated strength: on both built-in models the calibrated strength keeps KL on neutral text within the
budget, is the largest such strength within the tolerance, and never shrinks when the budget grows."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from austeer_gguf import Profile, SteeringSetting, Unit
from austeer_gguf.evaluation.calibrate import PerplexityRatio, calibrate, calibrated
from austeer_gguf.evaluation.evaluate import kl_on_neutral
from austeer_gguf.formats.embedded import embed_profiles, read_profiles
from austeer_gguf.formats.profiles import read_profile, write_profile

from conftest import open_steered

ROOT = Path(__file__).resolve().parents[1]


def spread_profile(llm, site: str = "attn", seed: int = 0) -> Profile:
    rng = np.random.default_rng(seed)
    width = llm.shape.widths[site]
    return Profile("spread", 10.0, [Unit(layer, site, int(dim), 0.6) for layer in range(0, llm.shape.n_layers, 3)
                                    for dim in rng.choice(width, 3, replace=False)])


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_the_calibrated_strength_meets_the_budget_and_is_monotone(name, request):
    llm = open_steered(request.getfixturevalue(name), n_ctx=512)
    profile = spread_profile(llm)
    results = [calibrate(llm, profile, kl=budget, tolerance=0.05) for budget in (0.02, 0.08)]
    for result in results:
        assert 0 < result.side_effect <= result.budget
        over = [s for s, value in result.trials if value > result.budget]
        assert over and min(over) <= result.strength * 1.05 + 1e-9, "not the largest strength within tolerance"
    assert results[0].strength <= results[1].strength
    assert llm.steering.profile is None  # left as it was

    steered = calibrated(profile, results[0])
    assert steered.alpha == pytest.approx(profile.alpha * results[0].strength)
    assert steered.calibration["budget"] == 0.02 and steered.calibration["alpha_before"] == 10.0
    llm.steering.set_profile(steered)  # strength 1: the calibrated effect
    from austeer_gguf.evaluation.calibrate import neutral_texts

    assert kl_on_neutral(llm, neutral_texts()) == pytest.approx(results[0].side_effect, rel=1e-6)


def test_perplexity_budgets_and_the_command(tiny_f32, tmp_path):
    llm = open_steered(tiny_f32, n_ctx=512)
    profile = spread_profile(llm)
    result = calibrate(llm, profile, perplexity_ratio=1.5, texts=["the cat is", "a dog was", "I like this"])
    assert result.measure == "perplexity" and 0 < result.side_effect <= 1.5
    profile_path = tmp_path / "spread.json"
    write_profile(profile, profile_path)
    out = tmp_path / "calibrated.json"
    done = subprocess.run([sys.executable, "-m", "austeer_gguf", "calibrate", str(tiny_f32), str(profile_path),
                           "--kl", "0.05", "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    written = read_profile(out)
    assert written.calibration["measure"] == "kl" and written.calibration["budget"] == 0.05
    assert read_profiles(embed_profiles(tiny_f32, [written], tmp_path / "m.gguf")) == {"spread": written}
    refused = subprocess.run([sys.executable, "-m", "austeer_gguf", "calibrate", str(tiny_f32), str(profile_path)],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "one of the arguments --kl --perplexity is required" in refused.stderr
    assert json.loads(out.read_text())["calibration"]["strength"] > 0


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_the_shipped_detox_profile_fits_its_model_and_keeps_its_recorded_budget(name, request):
    from austeer_gguf.apps.demo import shipped_profile
    from austeer_gguf.evaluation.calibrate import neutral_texts
    from austeer_gguf.formats.model_file import ModelFile

    profile = shipped_profile(name)
    card = ROOT / profile.extra["report"]  # the build's report card, its per-item record beside it
    record = json.loads(card.with_suffix(".build.json").read_text())
    assert record["identity"]["behaviour"] == "detox" and card.read_text().startswith("# detox on ")
    build = record["build"]
    assert build["winner"] == profile.extra["method"]
    assert profile.extra["meets_target"] == build["comparisons"][build["winner"]]["meets_target"]
    model = request.getfixturevalue(name)
    assert profile.model == ModelFile.open(model).fingerprint
    llm = open_steered(model, n_ctx=512)
    llm.steering.set_profile(profile)  # refused if it did not fit the model
    assert profile.calibration["measure"] == "kl"
    side_effect = kl_on_neutral(llm, neutral_texts())
    # The build measured it in its evaluation context (other batch sizes: the quantized kernels round differently).
    assert side_effect == pytest.approx(profile.calibration["side_effect"], rel=1e-2)
    assert side_effect <= profile.calibration["budget"]


def test_calibrating_to_several_kl_budgets_at_once_gives_each_budgets_own_strength(tiny_f32, monkeypatch):
    from austeer_gguf.evaluation import calibrate as calibration
    from austeer_gguf.evaluation.calibrate import calibrate_kl_budgets

    llm = open_steered(tiny_f32, n_ctx=512)
    profile = spread_profile(llm)
    measured = []
    measure = calibration.NeutralKL.many
    monkeypatch.setattr(calibration.NeutralKL, "many",
                        lambda self, settings: measured.extend(settings) or measure(self, settings))
    together = calibrate_kl_budgets(llm, profile, [0.02, 0.08, 0.3])
    shared = len(measured)
    alone = [calibrate(llm, profile, kl=budget) for budget in (0.02, 0.08, 0.3)]
    assert [(c.budget, c.strength, c.side_effect) for c in together] == \
        [(c.budget, c.strength, c.side_effect) for c in alone]
    assert shared == len({s for c in together for s, _ in c.trials}) < len(measured) - shared  # none measured twice


def test_profiles_calibrated_in_lockstep_get_the_strengths_they_get_alone(tiny_f32, monkeypatch):
    """The build calibrates its points together: each step measures every profile's next strength in one pass
    (several settings per decode); each profile's calibrations are those it has alone, and no pass holds a
    profile twice."""
    from austeer_gguf.evaluation import calibrate as calibration
    from austeer_gguf.evaluation.calibrate import calibrate_kl_budgets, calibrate_profiles_kl

    llm = open_steered(tiny_f32, n_ctx=512)
    profiles = [dataclasses.replace(spread_profile(llm, seed=seed), alpha=alpha)
                for seed, alpha in ((0, 5.0), (1, 40.0), (2, 1.0))]
    passes = []
    measure = calibration.NeutralKL.many
    monkeypatch.setattr(calibration.NeutralKL, "many",
                        lambda self, settings: passes.append(len(settings)) or measure(self, settings))
    together = calibrate_profiles_kl(llm, profiles, [0.02, 0.3], settings_per_pass=3)
    assert max(passes) == 3 and len(passes) < sum(passes)  # several settings per pass
    for profile, found in zip(profiles, together):
        alone = calibrate_kl_budgets(llm, profile, [0.02, 0.3])
        for a, b in zip(found, alone):
            assert a.budget == b.budget and a.strength == pytest.approx(b.strength, rel=1e-6)
            assert a.side_effect == pytest.approx(b.side_effect, rel=1e-4, abs=1e-7)


def test_perplexity_ratios_of_several_settings_in_one_decode_are_those_measured_one_at_a_time(tiny_f32):
    llm = open_steered(tiny_f32, n_ctx=512)
    fluency = PerplexityRatio(llm, ["the cat is", "a dog was", "I like this"], max_tokens=6)
    settings = [SteeringSetting.make(llm.shape, profiles=[(spread_profile(llm, site, seed), strength)])
                for site, seed, strength in (("attn", 0, 1.0), ("layer", 1, 3.0), ("attn", 0, 0.0))]
    together = fluency.many(settings)
    assert together == pytest.approx([fluency(setting) for setting in settings], rel=1e-3)
    assert together[2] == pytest.approx(1.0, rel=1e-3) and together[1] != pytest.approx(1.0, rel=1e-3)
