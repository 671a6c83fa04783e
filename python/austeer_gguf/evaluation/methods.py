"""Steering methods as objects: each owns its strength axis and how a point on it becomes a `SteeringSetting`
(and whether it asks the model: the task's instruction as a system turn or before the text).

The sweep (`sweep`), the reports (`report`) and the detox build (`build`) iterate over methods and read their
attributes; nothing branches on a method's name. Adding a method is one class: subclass `Method`, give it a
`name`, its `axis` (the sweep's grid, weakest first) and its `profile` of a point, and pass it to the sweep or
the build (or add it to `METHODS`, the default list). tests/test_methods.py adds one without touching another
module.

Every method builds on the evidence of one capture pass (`Evidence`): the momentum counts of every site
(AUSteer; at the last token and position-pooled), the CAA mean difference of the residual stream and each
residual unit's typical magnitude. A conditional method (`conditional`) is measured by the build only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..control_vector import ControlVector
from ..localization import steerability
from ..localization.reducers import MomentumCounts, rank_units
from ..localization.steerability import Reading
from ..profile import Profile, Unit
from ..setting import OFF, SteeringSetting
from ..sites import ModelShape


@dataclass(frozen=True)
class Point:
    """One point on a method's strength axis (reports call it the method's "setting")."""

    method: str
    site: str | None = None
    k: int | None = None
    alpha: float | None = None
    layer: int | None = None
    layers: tuple[int, int] | None = None
    multiplier: float | None = None
    seed: int | None = None
    prompted: bool = False

    def label(self) -> str:
        parts = [self.method]
        for name in ("site", "k", "alpha", "layer", "layers", "multiplier", "seed"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={value}")
        return " ".join(parts)


@dataclass
class Evidence:
    """What one capture pass over the train pairs gives every method, and the model the settings are for."""

    counts: MomentumCounts
    control: ControlVector
    shape: ModelShape
    best: Point | None = None  # the reference method's dev-best point, once it is known
    agreement: np.ndarray | None = None  # [layers] the pairs' direction agreement (`reducers.DirectionAgreement`)
    magnitude: np.ndarray | None = None  # [layers, n_embd] each residual unit's typical magnitude (RMS over pairs)
    pooled: MomentumCounts | None = None  # position-pooled momentum counts (None: a capture pass without it)

    @property
    def n_layers(self) -> int:
        return self.counts.n_layers

    def reading(self) -> Reading | None:
        """Will it steer? (None: a capture pass saved before the agreement was kept)"""
        return None if self.agreement is None else steerability.read(self.counts, self.agreement)


@dataclass
class AxisConfig:
    """The grids the methods' axes are made of."""

    sites: tuple[str, ...] = ("attn", "ffn", "layer")
    ks: tuple[int, ...] = (5, 20, 100)
    alphas: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
    layer_alphas: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
    multipliers: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 4.0, 8.0)
    caa_layer_step: int = 3
    random_seeds: tuple[int, ...] = (0,)
    additive_alphas: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # in units of each unit's magnitude
    build_k: int = 100  # units of an AUSteer profile the detox build calibrates
    build_ks: tuple[int, ...] = (5, 20, 300, 1000)  # the other k the build tries (`AUSteerK`)
    build_alpha: float = 10.0


class Method:
    """A steering method. Class attributes say what it is; `axis` and `profile` what it does."""

    name: ClassVar[str]
    color: ClassVar[str] = "tab:gray"  # in the reports' plots
    reference: ClassVar[bool] = False  # the method the others are compared with (AUSteer)
    baseline: ClassVar[bool] = False  # steers nothing: measured first, and each side effect is relative to it
    fine_grained: ClassVar[bool] = False  # steers atomic units (the shipping rule prefers these)
    prompted: ClassVar[bool] = False  # asks the model
    after_reference: ClassVar[bool] = False  # its axis is built around the reference method's dev-best point
    scope: ClassVar[str] = "all"  # the token scope its settings steer (`setting.SCOPES`)
    conditional: ClassVar[bool] = False  # steers a reply only where a gate on its prompt fires (`conditional`)

    def axis(self, evidence: Evidence, config: AxisConfig) -> list[Point]:
        """The sweep's points, weakest first."""
        raise NotImplementedError

    def build_points(self, evidence: Evidence, config: AxisConfig) -> list[Point]:
        """The points whose profile the detox build calibrates to each KL budget (none: not in the build)."""
        return []

    def profile(self, point: Point, evidence: Evidence) -> Profile | None:
        """The profile a point steers with (None: no steering)."""
        return None

    def setting(self, point: Point, evidence: Evidence, strength: float = 1.0) -> SteeringSetting:
        profile = self.profile(point, evidence)
        if profile is None:
            return OFF
        return SteeringSetting.make(evidence.shape, profiles=[(profile, 1.0)], strength=strength, scope=self.scope)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "color": self.color, "fine_grained": self.fine_grained,
                "prompted": self.prompted}


def top_units(counts: MomentumCounts, site: str, k: int) -> list[Unit]:
    return [Unit(u.layer, u.site, u.dim, u.score) for u in rank_units(counts.only(site), k)]


def strongest_site(evidence: Evidence, config: AxisConfig) -> str:
    """The site whose top-k units (the build's k) separate the pairs most (mean |s|), read from the capture pass."""
    def mean_strength(site: str) -> float:
        return float(np.mean([abs(u.score) for u in top_units(evidence.counts, site, config.build_k)]))

    return max(config.sites, key=mean_strength)


class Unsteered(Method):
    name = "unsteered"
    color = "black"
    baseline = True

    def axis(self, evidence: Evidence, config: AxisConfig) -> list[Point]:
        return [Point(self.name)]

    def build_points(self, evidence: Evidence, config: AxisConfig) -> list[Point]:
        return [Point(self.name)]


class AUSteer(Method):
    """The top-k units of one site by momentum, each scaled by 1 + alpha * score."""

    name = "austeer"
    color = "tab:red"
    reference = True
    fine_grained = True

    def axis(self, evidence: Evidence, config: AxisConfig) -> list[Point]:
        return [Point(self.name, site, k, alpha) for site in config.sites for k in config.ks for alpha in config.alphas]

    def build_points(self, evidence: Evidence, config: AxisConfig) -> list[Point]:
        return [Point(self.name, site, config.build_k, config.build_alpha) for site in config.sites]

    def profile(self, point: Point, evidence: Evidence) -> Profile:
        return Profile(self.name, point.alpha, top_units(evidence.counts, point.site, point.k))


class AUSteerGeneration(AUSteer):
    """AUSteer on generated tokens only: the prompt, and its KV cache, are computed unsteered (as CAA's paper
    steers only positions after the prompt; steering the prompt contaminates its cache). Its strength axis is
    AUSteer's (KL on neutral text measures every position as steered); its side effects on replies are measured
    in its own scope."""

    name = "austeer-generation"
    color = "tab:brown"
    reference = False
    scope = "generation"

    def axis(self, evidence: Evidence, config: AxisConfig) -> list[Point]:
        return [Point(self.name, site, config.build_k, alpha) for site in config.sites for alpha in config.alphas]


class AUSteerPooled(AUSteer):
    """AUSteer with units chosen by position-pooled momentum: d = the mean over every token of the positive reply
    minus that of the negative one (each from where the two replies differ), not their last tokens. A
    generation behaviour lives in every generated token; a unit chosen at the last token may not carry it."""

    name = "austeer-pooled"
    color = "salmon"
    reference = False

    def applies(self, evidence: Evidence) -> bool:
        return evidence.pooled is not None

    def axis(self, evidence: Evidence, config: AxisConfig) -> list[Point]:
        return super().axis(evidence, config) if self.applies(evidence) else []

    def build_points(self, evidence: Evidence, config: AxisConfig) -> list[Point]:
        return super().build_points(evidence, config) if self.applies(evidence) else []

    def profile(self, point: Point, evidence: Evidence) -> Profile:
        return Profile(self.name, point.alpha, top_units(evidence.pooled, point.site, point.k))


class AUSteerK(AUSteer):
    """AUSteer with fewer or more units than the build's k (`AxisConfig.build_ks`), at the site whose top-k units
    separate the pairs most (mean |s|, from the capture pass): does steering less do better on these models?"""

    name = "austeer-k"
    color = "lightcoral"
    reference = False

    def axis(self, evidence: Evidence, config: AxisConfig) -> list[Point]:
        site = strongest_site(evidence, config)  # the sweep's AUSteer axis has config.ks already
        return [Point(self.name, site, k, alpha) for k in config.build_ks if k not in config.ks
                for alpha in config.alphas]

    def build_points(self, evidence: Evidence, config: AxisConfig) -> list[Point]:
        site = strongest_site(evidence, config)
        return [Point(self.name, site, k, config.build_alpha) for k in config.build_ks]


class ConditionalAUSteer(Method):
    """AUSteer's dev trials, each made conditional (CAST): a gate on the prompt's residual stream at its last
    token (the CAA direction of one layer, `conditional.fit_gate` on dev prompts, firing on at most 5% of the
    harmless ones) turns the setting on for the reply, in scope "generation", only where the context calls
    for it. Its side effects count on the prompts where it fires. The build only: it needs a task's harmless
    prompts to fit the gate on, and a profile file has no gate yet (measured, not shipped)."""

    name = "austeer-conditional"
    color = "teal"
    fine_grained = True
    after_reference = True
    conditional = True
    scope = "generation"

    def axis(self, evidence: Evidence, config: AxisConfig) -> list[Point]:
        return []

    def build_points(self, evidence: Evidence, config: AxisConfig) -> list[Point]:
        return [Point(self.name)]


class AdditiveUnits(Method):
    """The top-k residual-stream units (site `layer`) by momentum, each moved by its score times its typical
    magnitude: ``x_j + alpha * s_j * sigma_j`` at `l_out`, a sparse control vector. Scaling (AUSteer) does
    nothing where x_j is near 0 and pushes the wrong way where x_j has the other sign; an addition does
    neither. Layer 0 cannot take a control vector, so its units are passed over."""

    name = "additive-units"
    color = "darkgoldenrod"
    fine_grained = True

    def applies(self, evidence: Evidence) -> bool:
        """A capture pass with magnitudes and momentum of the residual stream, on a model with layers past 0."""
        return evidence.magnitude is not None and "layer" in evidence.counts.widths and evidence.n_layers > 1

    def axis(self, evidence: Evidence, config: AxisConfig) -> list[Point]:
        if not self.applies(evidence):
            return []
        return [Point(self.name, "layer", k, alpha) for k in config.ks for alpha in config.additive_alphas]

    def build_points(self, evidence: Evidence, config: AxisConfig) -> list[Point]:
        return [Point(self.name, "layer", config.build_k, 1.0)] if self.applies(evidence) else []

    def profile(self, point: Point, evidence: Evidence) -> Profile:
        width = evidence.shape.widths["layer"]
        ranked = rank_units(evidence.counts.only("layer"), point.k + width)
        directions: dict[int, np.ndarray] = {}
        for unit in [u for u in ranked if u.layer >= 1][: point.k]:
            direction = directions.setdefault(unit.layer, np.zeros(width, dtype=np.float32))
            direction[unit.dim] = point.alpha * unit.score * evidence.magnitude[unit.layer, unit.dim]
        vector = ControlVector(directions, evidence.shape.architecture, evidence.counts.n_pairs)
        return Profile(self.name, 1.0, [], control=vector)


class AUSteerCaa(Method):
    """AUSteer's top-k units of one site and the CAA directions of every layer in one profile, calibrated
    together (one strength scales alpha and the control vector). The site is the one whose top-k units
    separate the pairs most (mean |s|), read from the capture pass, not from dev."""

    name = "austeer+caa"
    color = "indigo"  # not fine-grained: its control vector moves every residual dim

    def axis(self, evidence: Evidence, config: AxisConfig) -> list[Point]:
        site = strongest_site(evidence, config)
        return [Point(self.name, site, config.build_k, alpha, multiplier=alpha / config.build_alpha)
                for alpha in config.alphas]

    def build_points(self, evidence: Evidence, config: AxisConfig) -> list[Point]:
        return [Point(self.name, strongest_site(evidence, config), config.build_k, config.build_alpha,
                      multiplier=1.0)]

    def profile(self, point: Point, evidence: Evidence) -> Profile:
        vector = evidence.control.restricted(1, evidence.n_layers - 1)
        control = dataclasses.replace(vector, directions=vector.scaled(point.multiplier))
        return Profile(self.name, point.alpha, top_units(evidence.counts, point.site, point.k), control=control)


class SingleUnit(AUSteer):
    """The best unit of a site alone."""

    name = "single-unit"
    color = "tab:orange"
    reference = False

    def axis(self, evidence: Evidence, config: AxisConfig) -> list[Point]:
        return [Point(self.name, site, 1, alpha) for site in config.sites for alpha in config.alphas]

    def build_points(self, evidence: Evidence, config: AxisConfig) -> list[Point]:
        return []


class WholeLayer(Method):
    """Every dim of the layer where a site separates the pairs most, momentum-signed."""

    name = "whole-layer"
    color = "tab:olive"

    def axis(self, evidence: Evidence, config: AxisConfig) -> list[Point]:
        counts = evidence.counts
        return [Point(self.name, site, None, alpha, layer=int(np.argmax(counts.layer_strength(site))))
                for site in config.sites for alpha in config.layer_alphas]

    def profile(self, point: Point, evidence: Evidence) -> Profile:
        scores = evidence.counts.scores(point.site)
        units = [Unit(point.layer, point.site, dim, float(scores[point.layer, dim]))
                 for dim in range(scores.shape[1]) if scores[point.layer, dim] != 0]
        return Profile(self.name, point.alpha, units)


class RandomUnits(Method):
    """k random units at the reference's dev-best site and k, with their own momentum scores."""

    name = "random-units"
    color = "tab:pink"
    fine_grained = True
    after_reference = True

    def axis(self, evidence: Evidence, config: AxisConfig) -> list[Point]:
        best = evidence.best
        return [Point(self.name, best.site, best.k, alpha, seed=seed) for seed in config.random_seeds
                for alpha in config.alphas]

    def profile(self, point: Point, evidence: Evidence) -> Profile:
        scores = evidence.counts.scores(point.site)
        flat = np.random.default_rng(point.seed).choice(scores.size, size=point.k, replace=False)
        units = [Unit(int(i // scores.shape[1]), point.site, int(i % scores.shape[1]), float(scores.flat[i]))
                 for i in flat if scores.flat[i] != 0]
        return Profile(self.name, point.alpha, units)


class CaaRange(Method):
    """The CAA directions of a layer range (added to the residual stream) x a multiplier."""

    name = "caa-range"
    color = "tab:cyan"

    def ranges(self, evidence: Evidence, config: AxisConfig) -> list[tuple[int, int]]:
        n, third = evidence.n_layers, max(1, evidence.n_layers // 3)
        return [(1, n - 1), (1, third), (third, 2 * third), (2 * third, n - 1)]

    def axis(self, evidence: Evidence, config: AxisConfig) -> list[Point]:
        return [Point(self.name, layers=r, multiplier=m) for r in self.ranges(evidence, config)
                for m in config.multipliers]

    def build_points(self, evidence: Evidence, config: AxisConfig) -> list[Point]:
        return [Point(self.name, layers=(1, evidence.n_layers - 1), multiplier=1.0)]

    def profile(self, point: Point, evidence: Evidence) -> Profile:
        first, last = point.layers
        vector = evidence.control.restricted(first, last)
        scaled = dataclasses.replace(vector, directions=vector.scaled(point.multiplier))
        return Profile(self.name, 1.0, [], control=scaled)


class CaaLayer(CaaRange):
    """The CAA direction of one layer (every `caa_layer_step`-th) x a multiplier."""

    name = "caa-layer"
    color = "tab:blue"

    def ranges(self, evidence: Evidence, config: AxisConfig) -> list[tuple[int, int]]:
        return [(layer, layer) for layer in range(1, evidence.n_layers, config.caa_layer_step)]

    def axis(self, evidence: Evidence, config: AxisConfig) -> list[Point]:
        return [Point(self.name, layer=first, multiplier=m) for first, _ in self.ranges(evidence, config)
                for m in config.multipliers]

    def build_points(self, evidence: Evidence, config: AxisConfig) -> list[Point]:
        return []

    def profile(self, point: Point, evidence: Evidence) -> Profile:
        return super().profile(dataclasses.replace(point, layers=(point.layer, point.layer)), evidence)


class Prompting(Method):
    """Asking the model: the task's instruction, no axis."""

    name = "prompting"
    color = "tab:green"
    prompted = True

    def axis(self, evidence: Evidence, config: AxisConfig) -> list[Point]:
        return [Point(self.name, prompted=True)]

    def build_points(self, evidence: Evidence, config: AxisConfig) -> list[Point]:
        return [Point(self.name, prompted=True)]


class PromptingAUSteer(AUSteer):
    """Asking the model, and the AUSteer axis of the reference's dev-best (site, k)."""

    name = "prompting+austeer"
    color = "tab:purple"
    reference = False
    prompted = True
    after_reference = True

    def axis(self, evidence: Evidence, config: AxisConfig) -> list[Point]:
        best = evidence.best
        return [Point(self.name, best.site, best.k, alpha, prompted=True) for alpha in config.alphas]

    def build_points(self, evidence: Evidence, config: AxisConfig) -> list[Point]:
        return [Point(self.name, prompted=True)]  # on top of the reference's dev choice


# In the order reports show them.
METHODS: tuple[Method, ...] = (Unsteered(), AUSteer(), AUSteerGeneration(), AUSteerPooled(), AUSteerK(),
                               ConditionalAUSteer(), AdditiveUnits(), AUSteerCaa(),
                               SingleUnit(), WholeLayer(), RandomUnits(), CaaLayer(), CaaRange(), Prompting(),
                               PromptingAUSteer())


def ordered(methods: Sequence[Method]) -> list[Method]:
    """The order methods are measured in: the baseline first, then the reference, then those that do not depend
    on the reference's dev-best point, then those that do."""
    return sorted(methods, key=lambda m: (not m.baseline, not m.reference, m.after_reference))


def reference_of(methods: Sequence[Method]) -> Method:
    (reference,) = [method for method in methods if method.reference]
    return reference
