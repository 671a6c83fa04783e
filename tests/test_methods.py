"""Steering methods as objects: a method added through one class runs through a sweep and its report, and the
built-in methods turn their points into the settings they say."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from austeer_gguf.evaluation.methods import METHODS, AUSteer, AxisConfig, CaaRange, Evidence, Point
from austeer_gguf.evaluation.report import load, task_as_written, write_model_report, write_summary
from austeer_gguf.evaluation.sweep import Budget, SweepConfig, Sweeper
from austeer_gguf.evaluation.tasks import ChoiceItem, ChoiceTask, load_task
from austeer_gguf.localization.pairs import Pair
from austeer_gguf.localization.reducers import MeanDifference, MomentumCounts

from conftest import THREADS, open_steered


class FlippedAUSteer(AUSteer):
    """AUSteer with the sign of every score flipped: the method this test adds, in one class."""

    name = "flipped-austeer"
    color = "tab:brown"
    reference = False

    def axis(self, evidence: Evidence, config: AxisConfig) -> list[Point]:
        return [dataclasses.replace(point, method=self.name) for point in super().axis(evidence, config)]

    def profile(self, point: Point, evidence: Evidence):
        profile = super().profile(point, evidence)
        return dataclasses.replace(profile, units=tuple(dataclasses.replace(u, score=-u.score) for u in profile.units))


WORDS = ["the cat is", "a dog was", "I like this", "you love the", "it was a", "this day is"]


def tiny_choice_task() -> ChoiceTask:
    items = [ChoiceItem(w, (" good", " bad"), i % 2) for i, w in enumerate(WORDS)]
    return ChoiceTask("tiny-choice", [Pair(w, " good happy", " bad sad") for w in WORDS], items, items, "test fixture")


def evidence_of(llm) -> Evidence:
    rng = np.random.default_rng(0)
    counts = MomentumCounts.for_shape(llm.shape, ("attn", "layer"))
    for site in counts.sites:
        counts.positive[site] += rng.integers(0, 10, counts.positive[site].shape)
        counts.negative[site] += rng.integers(0, 10, counts.negative[site].shape)
    counts.count_pairs(10)
    difference = MeanDifference.for_shape(llm.shape)
    difference.total += rng.standard_normal(difference.total.shape)
    difference.n_pairs = 10
    return Evidence(counts, difference.control_vector(llm.shape.architecture), llm.shape)


def test_a_method_added_as_one_class_runs_through_a_sweep_and_its_report(tiny_f32, tmp_path):
    llm = open_steered(tiny_f32, n_ctx=512)
    config = SweepConfig(sites=("attn", "layer"), ks=(2, 4), alphas=(1.0, 8.0), layer_alphas=(0.5,),
                         multipliers=(0.5, 4.0), caa_layer_step=1, trials=2, max_tokens=4, neutral_texts=3,
                         threads=THREADS, budgets=(Budget("tight", 0.5, 3.0), Budget("loose", 10.0, 100.0)))
    flipped = FlippedAUSteer()
    report = Sweeper(llm, tiny_f32, tiny_choice_task(), config, methods=[*METHODS, flipped]).run(
        "tiny", log=lambda line: None)
    assert report.trial_counts["flipped-austeer"] == 2
    assert report.methods[-1] == flipped.describe()
    assert "flipped-austeer" in report.comparisons["loose"] and "flipped-austeer" in report.test["loose"]

    folder = tmp_path / "tiny"
    folder.mkdir()
    report.to_json(folder / "tiny-choice.json")
    older = json.loads((folder / "tiny-choice.json").read_text())  # a run from before the method existed
    older["methods"] = [method for method in older["methods"] if method["name"] != "flipped-austeer"]
    for budget in older["test"].values():
        budget.pop("flipped-austeer", None)
    (folder / "tiny-older.json").write_text(json.dumps(older))
    listed = json.loads((folder / "tiny-choice.json").read_text())  # a generation sweep lists conditional steering
    listed["methods"].append(next(method.describe() for method in METHODS if method.name == "austeer-conditional"))
    (folder / "tiny-listed.json").write_text(json.dumps(listed))
    reports = load(folder)
    markdown = write_model_report("tiny", reports, tmp_path).read_text()
    summary = write_summary({"tiny": reports}, tmp_path).read_text()
    assert "| flipped-austeer |" in markdown
    header = next(line for line in summary.splitlines() if line.startswith("| model / task |"))
    assert header.endswith("| prompting+austeer | flipped-austeer | austeer-conditional | minutes |")
    rows = {line.split(" | ")[0].split(" (")[0]: line for line in summary.splitlines() if line.startswith("| tiny / ")}
    assert rows["| tiny / tiny-older"].split(" | ")[-3] == "n/m"  # not measured, not "no setting within budget"
    assert rows["| tiny / tiny-choice"].split(" | ")[-3] != "n/m"
    assert rows["| tiny / tiny-listed"].split(" | ")[-2] == "n/m"  # listed by the sweep, measured by the build


def test_a_detox_report_from_before_the_rudeness_judge_keeps_the_figure_it_was_scored_by():
    def report(rude_rate):
        unsteered = {"score": -0.3, "offensive_rate": 0.3, "rude_rate": rude_rate, "sentiment": 0.1}
        return {"task": "detox", "task_kind": "generation", "test": {"tight": {"unsteered": unsteered}}}

    assert load_task("detox").behaviour == "rude_rate"
    assert task_as_written(report(None)).behaviour == "offensive_rate"
    assert task_as_written(report(0.4)).behaviour == "rude_rate"
    named = dict(report(0.4), headline={"key": "offensive_rate", "name": "offensive rate"})
    assert task_as_written(named).behaviour == "offensive_rate"


def test_the_flipped_method_steers_each_unit_the_other_way(tiny_f32):
    llm = open_steered(tiny_f32)
    evidence = evidence_of(llm)
    point = Point("austeer", "attn", 4, 8.0)
    plain = AUSteer().setting(point, evidence)
    flipped = FlippedAUSteer().setting(dataclasses.replace(point, method="flipped-austeer"), evidence)
    layers, sites, dims, factors = plain.units
    assert np.array_equal(flipped.units[2], dims) and np.allclose(flipped.units[3] - 1, -(factors - 1))


def test_caa_points_become_control_vectors_on_their_layers(tiny_f32):
    llm = open_steered(tiny_f32)
    evidence = evidence_of(llm)
    setting = CaaRange().setting(Point("caa-range", layers=(1, 1), multiplier=2.0), evidence)
    assert setting.units is None and sorted(setting.control_directions) == [1]
    assert np.allclose(setting.control_directions[1], 2.0 * evidence.control.directions[1])


def test_additive_units_move_the_top_residual_units_by_their_score_times_their_magnitude(tiny_f32):
    from austeer_gguf.evaluation.methods import AdditiveUnits
    from austeer_gguf.localization.reducers import rank_units

    llm = open_steered(tiny_f32)
    evidence = evidence_of(llm)
    evidence.magnitude = np.random.default_rng(1).uniform(0.5, 2.0, (llm.shape.n_layers, llm.shape.widths["layer"]))
    setting = AdditiveUnits().setting(Point("additive-units", "layer", 6, 3.0), evidence)
    assert setting.units is None  # nothing is scaled: it adds
    expected = [u for u in rank_units(evidence.counts.only("layer"), 10_000) if u.layer >= 1][:6]
    added = {(layer, dim): float(value) for layer, direction in setting.control_directions.items()
             for dim, value in enumerate(direction) if value != 0}
    assert added == {(u.layer, u.dim): np.float32(3.0 * u.score * evidence.magnitude[u.layer, u.dim])
                     for u in expected}
    assert AdditiveUnits().axis(dataclasses.replace(evidence, magnitude=None), AxisConfig()) == []


def test_generation_scope_austeer_steers_only_replies_and_is_calibrated_on_austeers_axis(tiny_f32):
    from austeer_gguf.evaluation.evaluate import NeutralKL
    from austeer_gguf.evaluation.methods import AUSteerGeneration

    llm = open_steered(tiny_f32)
    evidence = evidence_of(llm)
    point = Point("austeer", "attn", 8, 20.0)
    everywhere = AUSteer().setting(point, evidence)
    replies_only = AUSteerGeneration().setting(dataclasses.replace(point, method="austeer-generation"), evidence)
    assert replies_only.scope == "generation"
    assert all(np.array_equal(a, b) for a, b in zip(replies_only.units, everywhere.units))
    kl = NeutralKL(llm, ["the cat is happy and the dog was sad", "I like this day"])
    assert kl(replies_only) == kl(everywhere) > 0  # the same strength axis, not 0 on a text that is all prompt


def test_the_typical_magnitude_is_the_root_mean_square_over_both_texts_of_every_pair():
    from austeer_gguf.localization.capture import PairActivations
    from austeer_gguf.sites import ModelShape

    rng = np.random.default_rng(2)
    positive, negative = rng.normal(size=(7, 3, 5)).astype(np.float32), rng.normal(size=(7, 3, 5)).astype(np.float32)
    difference = MeanDifference.for_shape(ModelShape("llama", 3, {"layer": 5}))
    for part in (slice(0, 4), slice(4, 7)):
        difference.add_group(PairActivations(list(range(7))[part], {"layer": positive[part]},
                                             {"layer": negative[part]}))
    both = np.concatenate([positive, negative]).astype(np.float64)
    assert np.allclose(difference.magnitude(), np.sqrt((both ** 2).mean(axis=0)), rtol=1e-6)
    assert np.allclose(difference.mean(), (positive - negative).mean(axis=0), atol=1e-6)


def test_austeer_plus_caa_is_one_profile_whose_units_and_control_vector_one_strength_scales(tiny_f32):
    from austeer_gguf.evaluation.calibrate import Calibration, calibrated
    from austeer_gguf.evaluation.methods import AUSteerCaa

    llm = open_steered(tiny_f32)
    evidence = evidence_of(llm)
    config = AxisConfig(sites=("attn", "layer"), build_k=5)
    (point,) = AUSteerCaa().build_points(evidence, config)
    profile = AUSteerCaa().profile(point, evidence)
    assert len(profile.units) == 5 and {u.site for u in profile.units} == {point.site}
    assert profile.control.layers == list(range(1, llm.shape.n_layers))
    half = calibrated(profile, Calibration("kl", 0.1, 0.5, 0.1, 0.05))
    assert half.alpha == profile.alpha / 2
    assert all(np.allclose(half.control.directions[layer], profile.control.directions[layer] / 2)
               for layer in profile.control.layers)


def test_pooled_momentum_counts_the_tails_means_and_its_method_ranks_by_them(tiny_f32):
    from austeer_gguf.evaluation.methods import AUSteerPooled
    from austeer_gguf.localization.capture import PairActivations
    from austeer_gguf.localization.reducers import rank_units

    rng = np.random.default_rng(3)
    last = {"attn": rng.normal(size=(6, 2, 4))}
    means = {"attn": rng.normal(size=(6, 2, 4))}
    group = PairActivations(list(range(6)), last, {"attn": np.zeros((6, 2, 4))}, means, {"attn": np.zeros((6, 2, 4))})
    at_last, pooled = (MomentumCounts(2, {"attn": 4}, pooled=flag) for flag in (False, True))
    at_last.add_group(group)
    pooled.add_group(group)
    assert np.array_equal(pooled.positive["attn"], (means["attn"] > 0).sum(axis=0))
    assert np.array_equal(at_last.positive["attn"], (last["attn"] > 0).sum(axis=0))
    without_means = PairActivations(list(range(6)), last, last)
    try:
        MomentumCounts(2, {"attn": 4}, pooled=True).add_group(without_means)
    except ValueError as error:
        assert "pooled capture pass" in str(error)
    else:
        raise AssertionError("pooled counts took a group without means")

    llm = open_steered(tiny_f32)
    evidence = evidence_of(llm)
    assert AUSteerPooled().build_points(evidence, AxisConfig()) == []  # a capture pass saved before pooling
    evidence.pooled = evidence_of(llm).counts
    evidence.pooled.positive["attn"] = evidence.pooled.positive["attn"][:, ::-1].copy()  # other units than `counts`
    evidence.pooled.pooled = True
    profile = AUSteerPooled().profile(Point("austeer-pooled", "attn", 7, 5.0), evidence)
    assert [(u.layer, u.dim) for u in profile.units] == [(u.layer, u.dim)
                                                         for u in rank_units(evidence.pooled.only("attn"), 7)]
    assert [(u.layer, u.dim) for u in profile.units] != [(u.layer, u.dim)
                                                         for u in rank_units(evidence.counts.only("attn"), 7)]


def test_the_k_method_tries_other_k_at_the_strongest_site(tiny_f32):
    from austeer_gguf.evaluation.methods import AUSteerK, strongest_site

    llm = open_steered(tiny_f32)
    evidence = evidence_of(llm)
    config = AxisConfig(sites=("attn", "layer"), build_ks=(5, 20, 150))  # the tiny model: 3 x 64 units a site
    points = AUSteerK().build_points(evidence, config)
    site = strongest_site(evidence, config)
    assert [(p.site, p.k, p.alpha) for p in points] == [(site, k, config.build_alpha) for k in (5, 20, 150)]
    assert len(AUSteerK().profile(points[2], evidence).units) == 150
    assert {p.k for p in AUSteerK().axis(evidence, config)} == {150}  # the sweep's AUSteer axis has 5 and 20
