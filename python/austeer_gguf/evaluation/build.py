"""Building a steering profile for a generation behaviour on one model, and measuring it (the detox build).

1. One capture pass over the task's train pairs (on a float copy): the evidence every method builds on
   (`methods.Evidence`).
2. Dev: each method's build points (AUSteer: the top-k units of each site; CAA: every layer; asking the model:
   as it is; asking + the dev-best AUSteer trial), each steering point calibrated to every KL budget on neutral
   text (`calibrate`), measured on the dev split.
3. Per method, the dev trial with the best behaviour among the admissible ones: perplexity of the replies
   within `budgets.PERPLEXITY_LIMIT` of unsteered, harmless refusals risen by at most `budgets.REFUSAL_SLACK`,
   the share of replies that answer their request fallen by at most `budgets.relevance_slack`.
4. Each chosen trial measured once on test, per item, with paired bootstrap 95% intervals against unsteered
   (`compare`).
5. The shipping rule (`choose_winner`): a method that meets the target (the behaviour improved by `target`
   of the way from unsteered to its best value, fluency, refusals and relevance kept), fine-grained methods
   first; else the best of those that keep fluency, refusals and relevance; else the best; never one that
   did not improve the behaviour on test, nor one that steers generated tokens only (a profile has no scope).
The rules (budgets, refusal slack, what counts as offensive) are those of the sweep (`budgets`, `metrics`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ..formats.model_file import ModelFile
from ..localization.capture import PairCapture
from ..localization.pairs import Pair
from ..localization.reducers import DirectionAgreement, MeanDifference, MomentumCounts
from ..profile import Profile
from ..setting import OFF, SteeringSetting
from . import metrics
from .budgets import PERPLEXITY_LIMIT, keeps_fluency, keeps_refusals, keeps_relevance
from .calibrate import Calibration, calibrate_profiles_kl, calibrated
from .conditional import MAX_TRIGGER_RATE, Gate, fit_gate
from .evaluate import prompt_residuals
from .methods import METHODS, AxisConfig, Evidence, Method, Point, ordered
from .record import BuildRecord
from .tasks import GenerationTask

KL_BUDGETS = (0.025, 0.05, 0.1, 0.2, 0.4)
TARGET = 0.5  # half the way from unsteered to the behaviour's best value (detox: the rude rate halved)


@dataclass
class BuildTrial:
    method: str
    label: str
    result: dict  # the task's result on the split (GenerationResult.to_dict())
    setting: SteeringSetting = OFF
    profile: Profile | None = None  # the calibrated profile (what ships)
    prompted: bool = False
    gate: Gate | None = None  # conditional: the setting steers a reply only where this fires on its prompt

    def summary(self, task: GenerationTask, base: dict) -> dict:
        return {"method": self.method, "setting": self.label, task.behaviour: self.result[task.behaviour],
                **{key: self.result[key] for key in task.also},
                "sentiment": self.result["sentiment"], "offensive": self.result["offensive"],
                "perplexity_ratio": perplexity_ratio(self.result, base),
                "harmless_refusals": self.result["side_refusal_rate"], "admissible": admissible(self.result, base),
                **({"trigger_rate": self.result["trigger_rate"], "harmless_trigger_rate":
                    self.result["side_trigger_rate"]} if self.gate is not None else {})}


@dataclass
class BuildConfig(AxisConfig):
    kl_budgets: tuple[float, ...] = KL_BUDGETS
    max_tokens: int = 24
    dev_limit: int | None = None
    test_limit: int | None = None
    # With both: once dev has chosen, test grows into the time left before `deadline` (time.perf_counter()),
    # measuring the chosen methods only (the plan had to assume every method would reach test).
    deadline: float | None = None
    seconds_per_item: float | None = None
    pairs: int | None = None  # the first N train pairs (None: all)
    threads: int | None = None
    target: float = TARGET


@dataclass
class Build:
    model: str
    task: str
    pairs: int
    capture_seconds: float
    dev: list[dict] = field(default_factory=list)
    chosen: dict[str, dict] = field(default_factory=dict)
    test: dict[str, dict] = field(default_factory=dict)  # method -> test result without its items
    test_items: dict[str, list] = field(default_factory=dict)
    comparisons: dict[str, dict] = field(default_factory=dict)
    winner: str | None = None
    seconds: float = 0.0
    runs: int = 1  # a build resumed after an interruption took more than one run
    target: float = TARGET
    reading: dict | None = None  # will it steer? (`steerability.Reading`), from the capture pass
    profiles: dict[str, Profile] = field(default_factory=dict, repr=False)  # method -> its chosen calibrated profile

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data.pop("profiles")
        return data


def capture_evidence(float_model, pairs: Sequence[Pair], sites: Sequence[str], shape, *, threads: int | None = None,
                     seconds: float | None = None) -> tuple[Evidence, float]:
    """One capture pass over the training pairs on `float_model`: the momentum counts of `sites` (at the last
    token and position-pooled), the CAA mean difference and the pairs' direction agreement (with `seconds`: of
    the first pairs that pass takes). `shape`: the model the methods' settings are for (the quantized file)."""
    started = time.perf_counter()
    captured = tuple(dict.fromkeys([*sites, "layer"]))
    with PairCapture(ModelFile.open(float_model), pairs, captured, n_threads=threads, progress=False,
                     pooled=True) as capture:
        counts = MomentumCounts.for_shape(capture.shape, sites)
        pooled = MomentumCounts.for_shape(capture.shape, sites, pooled=True)
        difference = MeanDifference.for_shape(capture.shape, "layer")
        agreement = DirectionAgreement.for_shape(capture.shape, "layer")
        capture.feed(counts, pooled, difference, agreement, seconds=seconds)
    evidence = Evidence(counts, difference.control_vector(capture.shape.architecture), shape,
                        agreement=agreement.agreement(), magnitude=difference.magnitude(), pooled=pooled)
    return evidence, time.perf_counter() - started


class TrialCounts(NamedTuple):
    dev_trials: int  # at most: a budget no strength meets runs none
    calibrated_points: int
    methods: int  # methods in the build: each is measured once on test (at most)


def trial_counts(methods: Sequence[Method], evidence: Evidence, config: BuildConfig) -> TrialCounts:
    """What `build` will run."""
    points = [(method, point) for method in methods for point in method.build_points(evidence, config)]
    calibrates = sum(_calibrates(method, point, evidence) for method, point in points)
    # A conditional method gates each of the reference's trials (its one point stands for them).
    reference = [point for method, point in points if method.reference]
    gated = sum(method.conditional for method, _ in points) * (len(reference) * len(config.kl_budgets) - 1)
    return TrialCounts(len(points) + calibrates * (len(config.kl_budgets) - 1) + gated, calibrates,
                       len({method.name for method, _ in points}))


def build(llm, float_model, task: GenerationTask, config: BuildConfig, *, name: str,
          methods: Sequence[Method] = METHODS, log: Callable[[str], None] = print,
          evidence: Evidence | None = None, record: BuildRecord | None = None) -> Build:
    """Steps 1-5 above on `llm` (the quantized file users run; a HookedLlama for evaluation). `evidence`: a
    capture pass already made; `record`: results saved as they are measured and reused when already there."""
    started = time.perf_counter()
    capture_seconds = 0.0
    if evidence is None:
        pairs = task.train[: config.pairs] if config.pairs else task.train
        evidence, capture_seconds = capture_evidence(float_model, pairs, config.sites, llm.shape,
                                                     threads=config.threads)
        log(f"{name}: captured {evidence.counts.n_pairs} pairs in {capture_seconds:.0f} s")
    dev_items = len(task.split("dev", config.dev_limit))
    test_items = len(task.split("test", config.test_limit))
    counts = trial_counts(methods, evidence, config)

    test_limit = config.test_limit

    def run(split: str, trials: Sequence[BuildTrial]) -> list[tuple[dict, str]]:
        """Each trial's result on the split, and " (saved)" when it comes from the record. The others are
        measured together, several settings in one decode (those that ask the model apart from the rest)."""
        limit = config.dev_limit if split == "dev" else test_limit
        keys = [f"{split}|{trial.method}|{trial.label}|{limit}|{config.max_tokens}" for trial in trials]
        results = [record.get(key) if record is not None else None for key in keys]
        saved = [result is not None for result in results]
        for prompted in (False, True):
            todo = [i for i, trial in enumerate(trials) if results[i] is None and trial.prompted == prompted]
            if not todo:
                continue
            measured = task.evaluate_settings(llm, split, [trials[i].setting for i in todo], limit=limit,
                                              max_tokens=config.max_tokens, prompted=prompted,
                                              gates=[trials[i].gate for i in todo])
            for i, result in zip(todo, measured):
                results[i] = result.to_dict()
                if record is not None:
                    record.put(keys[i], results[i])
        return [(result, " (saved)" if was_saved else "") for result, was_saved in zip(results, saved)]

    calibrations = _calibrate_points(llm, methods, evidence, config, record, log)
    progress = _Progress(counts.dev_trials * dev_items + counts.methods * test_items, log)  # paced after it
    trials: list[BuildTrial] = []
    base: dict | None = None
    best: BuildTrial | None = None  # the reference method's dev choice
    reference_trials: list[BuildTrial] = []
    for method in ordered(methods):
        if method.conditional:
            own = _conditional_trials(llm, method, task, evidence, reference_trials, log)
        else:
            own = [trial for point in method.build_points(evidence, config)
                   for trial in _trials(llm, method, point, evidence, config, best, calibrations)]
        for trial, (result, saved) in zip(own, run("dev", own)):
            trial.result = result
            base = base or result  # the baseline is measured first
            trials.append(trial)
            ratio = trial.result["perplexity"] / base["perplexity"]
            progress.step(dev_items, f"dev {trial.method:18} {trial.label:28} {task.behaviour} "
                          f"{trial.result[task.behaviour]:.3f}, ppl x{ratio:.2f}, harmless refusals "
                          f"{share(trial.result['side_refusal_rate'])}{saved}")
        if method.reference:
            best = choose(own, base, task) or max(own, key=lambda t: _behaviour(task, t.result))
            reference_trials = own

    chosen = {}
    for method in methods:
        pick = choose([t for t in trials if t.method == method.name], base, task)
        if pick is not None:
            chosen[method.name] = pick
    baseline = next(m.name for m in methods if m.baseline)
    grown = _grown_test_limit(task, config, len(chosen))
    if grown is not None and grown > test_items:
        progress.total += len(chosen) * (grown - test_items)
        log(f"  test grows into the time left: {grown} items instead of {test_items}")
        test_limit, test_items = grown, grown
        if record is not None and record.plan is not None:
            planned = record.plan.get("planned_test_items", record.plan["test_items"])
            half_width = record.plan["expected_half_width"] * (record.plan["test_items"] / grown) ** 0.5
            record.set_plan({**record.plan, "test_items": grown, "planned_test_items": planned,
                             "expected_half_width": half_width})
    test = {}
    for method, (test[method], saved) in zip(chosen, run("test", list(chosen.values()))):
        progress.step(test_items, f"test {method:18} {task.behaviour} {test[method][task.behaviour]:.3f}{saved}")
    comparisons = {method: compare(task, test[method], test[baseline], config.target)
                   for method in test if method != baseline}
    # Each method's difference from unsteered, over every method measured on test: Holm's correction.
    for method, holds in metrics.holm({m: c["p_value"] for m, c in comparisons.items()}).items():
        comparisons[method]["holm_significant"] = holds
    # A profile file has no token scope: a method steering generated tokens only is measured, not shipped.
    shippable = [m for m in methods if not m.baseline and not m.prompted and m.scope == "all" and m.name in chosen]
    result = Build(name, task.name, evidence.counts.n_pairs, capture_seconds,
                   dev=[t.summary(task, base) for t in trials],
                   chosen={m: t.summary(task, base) for m, t in chosen.items()},
                   test={m: {k: v for k, v in r.items() if k != "items"} for m, r in test.items()},
                   test_items={m: r["items"] for m, r in test.items()}, comparisons=comparisons,
                   profiles={m: t.profile for m, t in chosen.items() if t.profile is not None},
                   target=config.target)
    reading = evidence.reading()
    result.reading = reading.to_dict() if reading is not None else None
    result.winner = choose_winner(comparisons, shippable)
    result.seconds = time.perf_counter() - started
    return result


def _grown_test_limit(task: GenerationTask, config: BuildConfig, chosen: int) -> int | None:
    """The test items the chosen methods can be measured on before the deadline (None: no deadline)."""
    if config.deadline is None or not config.seconds_per_item or chosen == 0:
        return None
    left = (config.deadline - time.perf_counter()) * 0.9  # the probe's pace is an estimate: keep a margin
    return min(int(left / (chosen * config.seconds_per_item)), len(task.test))


def _trials(llm, method: Method, point: Point, evidence: Evidence, config: BuildConfig,
            best: BuildTrial | None, calibrations: dict[str, list[Calibration]]) -> list[BuildTrial]:
    """The trials of one build point: on top of the reference's dev choice (`best`) for a method built around
    it; as it is when it steers nothing; else its profile calibrated to each KL budget."""
    if method.after_reference:
        return [BuildTrial(method.name, f"{'asking + ' if method.prompted else ''}{best.method} {best.label}", {},
                           best.setting, best.profile, method.prompted)]
    profile = method.profile(point, evidence)
    if profile is None:
        return [BuildTrial(method.name, "system turn" if method.prompted else "-", {}, OFF, None, method.prompted)]
    out = []
    for budget, calibration in zip(config.kl_budgets, calibrations[_calibration_key(point, config)]):
        if calibration.strength <= 0:
            continue
        steered = calibrated(profile, calibration)
        setting = SteeringSetting.make(llm.shape, llm.fingerprint, profiles=[(steered, 1.0)], scope=method.scope)
        label = f"{point.label()} KL {budget:g} (strength {calibration.strength:.3g})"
        out.append(BuildTrial(method.name, label, {}, setting, steered, method.prompted))
    return out


def _conditional_trials(llm, method: Method, task: GenerationTask, evidence: Evidence,
                        reference_trials: Sequence[BuildTrial], log: Callable[[str], None]) -> list[BuildTrial]:
    """The reference's dev trials, each behind one gate fitted on the task's dev prompts against its harmless
    dev prompts (none when the task has no harmless prompts to fit on)."""
    steering = [trial for trial in reference_trials if trial.setting.active]
    if not task.side_dev or not steering:
        return []
    gate = fit_gate(prompt_residuals(llm, task, task.dev), prompt_residuals(llm, task, task.side_dev),
                    evidence.control)
    log(f"  {method.name}: {gate.describe()} (fires on at most {MAX_TRIGGER_RATE:.0%} of "
        f"{len(task.side_dev)} harmless dev prompts)")
    return [BuildTrial(method.name, f"{gate.describe()}: {trial.label}", {}, trial.setting, trial.profile,
                       trial.prompted, gate) for trial in steering]


def _calibrate_points(llm, methods: Sequence[Method], evidence: Evidence, config: BuildConfig,
                      record: BuildRecord | None, log: Callable[[str], None]) -> dict[str, list[Calibration]]:
    """Every build point's profile calibrated to each KL budget, the points' searches in lockstep
    (`calibrate_profiles_kl`; one setting per decode: more gained nothing on CPUs); kept in the record, so a
    resumed build does not search again."""
    saved = record.calibrations if record is not None else {}
    out = {key: [Calibration(**calibration) for calibration in found] for key, found in saved.items()}
    todo = {}
    for method in methods:
        for point in method.build_points(evidence, config):
            key = _calibration_key(point, config)
            if key not in out and _calibrates(method, point, evidence):
                todo[key] = method.profile(point, evidence)
    if todo:
        # Points of different methods with the same units (AUSteer on every token or on generated ones) share
        # one search: KL on neutral text counts every position as steered.
        distinct: dict[tuple, Profile] = {}
        for profile in todo.values():
            distinct.setdefault(_units_of(profile), profile)
        budgets = ", ".join(f"{b:g}" for b in config.kl_budgets)
        log(f"  calibrating {len(distinct)} profiles to KL {budgets} together")
        started = time.perf_counter()
        found = dict(zip(distinct, calibrate_profiles_kl(llm, list(distinct.values()), config.kl_budgets)))
        for key, profile in todo.items():
            out[key] = found[_units_of(profile)]
            if record is not None:
                record.put_calibrations(key, [dataclasses.asdict(calibration) for calibration in out[key]])
        log(f"  calibrated in {time.perf_counter() - started:.0f} s")
    return out


def _units_of(profile: Profile) -> tuple:
    """What a profile steers, as a key (a profile with a control vector is its own)."""
    return (profile.alpha, profile.units) if profile.control is None else (id(profile),)


def _calibration_key(point: Point, config: BuildConfig) -> str:
    return f"{point.label()}|{','.join(f'{budget:g}' for budget in config.kl_budgets)}"


def _calibrates(method: Method, point: Point, evidence: Evidence) -> bool:
    """Whether a build point is a profile calibrated to each KL budget (else one trial as it is)."""
    return not method.after_reference and method.profile(point, evidence) is not None


class _Progress:
    """One log line per trial, with the share of the work done and the time left at the pace so far (work: the
    items evaluated; the count planned is an upper bound, so the estimate errs long)."""

    def __init__(self, total: int, log: Callable[[str], None]) -> None:
        self.total, self.done, self.log, self.started = total, 0, log, time.perf_counter()

    def step(self, items: int, line: str) -> None:
        self.done += items
        elapsed = time.perf_counter() - self.started
        left = elapsed / max(self.done, 1) * max(self.total - self.done, 0)
        self.log(f"  [{100 * self.done / max(self.total, 1):3.0f}%, ~{left / 60:.1f} min left] {line}")


def share(value: float | None) -> str:
    """A rate as it is logged and printed ("-": not measured, e.g. harmless refusals of a task without harmless
    prompts)."""
    return "-" if value is None else f"{value:.2f}"


def _behaviour(task: GenerationTask, result: dict) -> float:
    """The task's behaviour, higher is better."""
    return task.sign * result[task.behaviour]


def perplexity_ratio(result: dict, base: dict) -> float:
    """The replies' median perplexity over unsteered's on the same prompts (`_compared_perplexities`)."""
    if not result.get("items"):
        return result["perplexity"] / base["perplexity"]
    steered, plain = _compared_perplexities(result, base)
    return float(np.median(steered) / np.median(plain))


def _compared_perplexities(result: dict, base: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per-item perplexities of the replies and of unsteered's on the same prompts; for a conditional setting,
    only where its gate fired (where it has side effects; ones where it fired on none)."""
    fired = np.array([item.get("fired", True) for item in result["items"]], dtype=bool)
    if not fired.any():
        return np.ones(1), np.ones(1)
    return (np.array([item["perplexity"] for item in result["items"]])[fired],
            np.array([item["perplexity"] for item in base["items"]])[fired])


def admissible(result: dict, base: dict) -> bool:
    return (perplexity_ratio(result, base) <= PERPLEXITY_LIMIT
            and keeps_refusals(result["side_refusal_rate"], base["side_refusal_rate"])
            and keeps_relevance(result.get("relevant_rate"), base.get("relevant_rate"), result.get("n")))


def choose(trials: list[BuildTrial], base: dict, task: GenerationTask) -> BuildTrial | None:
    """The admissible trial with the best behaviour (ties: the finer measure, e.g. the mean offensive
    probability behind the offensive rate)."""
    finer = metrics.FINER.get(task.behaviour, task.behaviour)
    fine = [t for t in trials if admissible(t.result, base)]
    return max(fine, key=lambda t: (_behaviour(task, t.result), task.sign * t.result[finer])) if fine else None


def compare(task: GenerationTask, result: dict, base: dict, target: float = TARGET) -> dict:
    """Paired bootstrap 95% intervals of `result` against `base` on the same test items: the behaviour's
    difference and its relative improvement (the share of the way from unsteered to the behaviour's best value
    that steering covers, `metrics.BEST`: detox, the share of rude replies removed; positive, of the way to a
    VADER compound of +1), the perplexity ratio; whether fluency and refusals are kept and the target is met."""
    value = metrics.ITEM_VALUES[task.behaviour]
    steered = np.array([value(item) for item in result["items"]], dtype=float)
    plain = np.array([value(item) for item in base["items"]], dtype=float)
    n = len(steered)
    ppl_s, ppl_b = _compared_perplexities(result, base)

    best = metrics.BEST.get(task.behaviour, 0.0)

    def improvement(index) -> float:
        off = plain[index].mean()
        if abs(best - off) < 1e-9:  # unsteered is already at the best value: no share of the way to take
            return float("nan")
        return task.sign * (steered[index].mean() - off) / abs(best - off)

    everything = np.arange(n)
    ratio = float(np.median(ppl_s) / np.median(ppl_b))
    fluent = keeps_fluency(ratio, result["distinct2"], base["distinct2"])
    refusals = keeps_refusals(result["side_refusal_rate"], base["side_refusal_rate"])
    relevant = keeps_relevance(result.get("relevant_rate"), base.get("relevant_rate"), n)  # None: not measured
    point_improvement = improvement(everything)
    difference_test = metrics.paired_bootstrap_test(lambda i: steered[i].mean() - plain[i].mean(), n)
    return {task.behaviour: float(steered.mean()), "unsteered": float(plain.mean()),
            "also": {key: [base[key], result[key]] for key in task.also},  # unsteered, on
            "difference": float(steered.mean() - plain.mean()),
            "difference_ci": difference_test[:2], "p_value": difference_test[2],
            "relative_improvement": float(point_improvement),
            "relative_improvement_ci": metrics.paired_bootstrap(improvement, n),
            "perplexity_ratio": ratio,
            "perplexity_ratio_ci": metrics.paired_bootstrap(lambda i: np.median(ppl_s[i]) / np.median(ppl_b[i]),
                                                            len(ppl_s)),
            "trigger_rate": result.get("trigger_rate"), "harmless_trigger_rate": result.get("side_trigger_rate"),
            "harmless_refusals": result["side_refusal_rate"], "harmless_refusals_unsteered": base["side_refusal_rate"],
            "distinct2": result["distinct2"], "distinct2_unsteered": base["distinct2"], "keeps_fluency": fluent,
            "relevant": result.get("relevant_rate"), "relevant_unsteered": base.get("relevant_rate"),
            "keeps_relevance": relevant, "keeps_refusals": refusals,
            "meets_target": bool(point_improvement >= target and fluent and refusals and relevant)}


def choose_winner(comparisons: dict[str, dict], shippable: Sequence[Method]) -> str | None:
    """The method a profile ships: one that meets the target on test (fine-grained methods first); when none
    does, the best behaviour among those that keep fluency and refusals on test (a toggle that breaks fluency
    is worse than a weaker one), and only if none keeps them the best behaviour. None when no method improved
    the behaviour on test: a toggle that does nothing or the opposite does not ship."""  # NaN > 0 is False
    candidates = [m for m in sorted(shippable, key=lambda m: not m.fine_grained)
                  if comparisons[m.name]["relative_improvement"] > 0]
    meeting = [m.name for m in candidates if comparisons[m.name]["meets_target"]]
    if meeting:
        return meeting[0]
    if not candidates:
        return None
    safe = [m.name for m in candidates if comparisons[m.name]["keeps_fluency"] and comparisons[m.name]["keeps_refusals"]
            and comparisons[m.name].get("keeps_relevance", True)]
    return max(safe or [m.name for m in candidates], key=lambda name: comparisons[name]["relative_improvement"])
