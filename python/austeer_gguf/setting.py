"""A steering setting: what a decode (or one sequence of a decode) runs under, as a frozen value.

A setting holds profiles with their weights, a strength, a control vector with its multiplier, and the token
scope; it is made and checked against a model once (`SteeringSetting.make`, or `llm.steering.setting(...)`
with profile names), and handed to each decode as a value: `with llm.steering.using(setting):`, or as the
`setting` argument of the engine's decoder and the evaluation. Nothing checks it again.

A unit's factor in profile p is ``1 + strength * weight_p * alpha_p * score`` (`Profile.factors`), and units on
the same (layer, site, dim) multiply their factors; the combined table is computed once per setting
(`units`). Token scope: "all" steers every position (prompt and generated); "generation" steers only the
positions of generated tokens, so the prompt is computed unsteered (`for_prompt`), and so is the first
generated token, which is sampled from the last prompt position (as EasySteer's generation-only mode).

A setting that steers nothing (switched off, strength 0 with no control vector, no profiles) is `OFF`: equal
settings steer identically, so a KV cache computed under one is valid under the other.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import sites
from .control_vector import MAX_VALUE, ControlVector
from .errors import InputError
from .fingerprint import ModelFingerprint
from .profile import MAX_FACTOR, MAX_STRENGTH, Profile, check_strength
from .sites import ModelShape

SCOPES = ("all", "generation")
MAX_MULTIPLIER = 1_000.0
MAX_PROFILES = 16

NativeUnits = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # layers, site codes, dims, factors
NativeTable = tuple[np.ndarray, ...]  # NativeUnits, then addition layers and values when the setting adds any


@dataclass(frozen=True)
class ControlSetting:
    """A control vector (compared by value) and its multiplier."""

    vector: ControlVector
    multiplier: float


@dataclass(frozen=True)
class SteeringSetting:
    """What a completion runs under. Equal settings steer identically; `OFF` steers nothing."""

    profiles: tuple[tuple[Profile, float], ...] = ()  # (profile, weight), weights non-zero
    strength: float = 0.0
    control: ControlSetting | None = None
    scope: str = "all"

    @classmethod
    def make(cls, shape: ModelShape, fingerprint: ModelFingerprint | None = None, *,
             profiles: Sequence[tuple[Profile, float]] = (), strength: float = 1.0, enabled: bool = True,
             scope: str = "all", control: ControlVector | None = None, multiplier: float = 1.0,
             allow_model_mismatch: bool = False) -> SteeringSetting:
        """A setting checked against a model (`shape`, and `fingerprint` unless `allow_model_mismatch`): the
        profiles fit it, weights, strength and multiplier are in range, no profile is named twice, and the
        combined factors stay within MAX_FACTOR. InputError naming the first problem; weight 0 leaves a
        profile out."""
        profiles = list(profiles)
        if len(profiles) > MAX_PROFILES:
            raise InputError(f"at most {MAX_PROFILES} profiles can be active at once")
        chosen: list[tuple[Profile, float]] = []
        names: set[str] = set()
        for profile, weight in profiles:
            if not isinstance(profile, Profile):
                raise TypeError(f"a steering setting takes profiles, not {type(profile).__name__}")
            weight = check_weight(profile.name, weight)
            if profile.name in names:
                raise InputError(f"profile {profile.name!r} is named twice")
            names.add(profile.name)
            profile.check_model(shape, fingerprint, allow_mismatch=allow_model_mismatch)
            if weight != 0.0 and (profile.units or profile.control is not None):  # an empty profile steers nothing
                chosen.append((profile, weight))
        strength = check_strength(strength)
        if not isinstance(enabled, bool):
            raise InputError(f"enabled must be True or False, got {enabled!r}")
        if scope not in SCOPES:
            raise InputError(f"the steering scope is 'all' or 'generation', got {scope!r}")
        control_setting = None
        if control is not None:
            control.check_fits(shape.n_layers, shape.widths["layer"])
            control_setting = ControlSetting(control, check_multiplier(multiplier))
        steers_profiles = bool(chosen) and strength != 0.0
        setting = cls(tuple(chosen) if steers_profiles else (), strength if steers_profiles else 0.0,
                      control_setting, scope)
        setting.units  # noqa: B018 (refuses a factor out of range now, not at the first decode; off or on)
        added = max((float(np.abs(d).max()) for d in setting.control_directions.values()), default=0.0)
        if not added <= MAX_VALUE:
            raise InputError(f"the control vectors together add more than +-{MAX_VALUE:g} to a residual value: lower "
                             "the multiplier, the weights or the strength")
        return setting if enabled and setting.active else OFF

    @property
    def active(self) -> bool:
        return bool(self.profiles) or self.control is not None

    @property
    def profile(self) -> Profile | None:
        """The profile when exactly one is active (None otherwise)."""
        return self.profiles[0][0] if len(self.profiles) == 1 else None

    def for_prompt(self) -> SteeringSetting:
        """The setting prompt positions are computed under: OFF when only generated tokens are steered."""
        return self if self.scope == "all" else OFF

    @functools.cached_property
    def units(self) -> NativeUnits | None:
        """(layers, site codes, dims, factors) of every unit the setting scales, as the native core takes them;
        None when it scales none."""
        factors: dict[tuple[int, str, int], np.float32] = {}
        for profile, weight in self.profiles:
            for unit, factor in zip(profile.units, profile.factors(self.strength * weight, bounded=False)):
                key = (unit.layer, unit.site, unit.dim)
                factors[key] = np.float32(factors.get(key, np.float32(1.0)) * factor)
        if not factors:
            return None
        if not max(abs(float(f)) for f in factors.values()) <= MAX_FACTOR:
            raise InputError(f"the active profiles together scale a unit by more than {MAX_FACTOR:g}: lower the "
                             "weights or the strength")
        keys = list(factors)
        return (np.array([k[0] for k in keys], dtype=np.int32),
                np.array([sites.code(k[1]) for k in keys], dtype=np.int32),
                np.array([k[2] for k in keys], dtype=np.int32), np.array([factors[k] for k in keys], dtype=np.float32))

    @functools.cached_property
    def control_directions(self) -> dict[int, np.ndarray]:
        """The residual additions: the control vectors of the profiles (times strength and weight) and the
        setting's own control vector (times its multiplier), summed per layer."""
        parts = [p.control.scaled(self.strength * w) for p, w in self.profiles if p.control is not None]
        if self.control is not None:
            parts.append(self.control.vector.scaled(self.control.multiplier))
        total: dict[int, np.ndarray] = {}
        for part in parts:
            for layer, direction in part.items():
                total[layer] = total[layer] + direction if layer in total else direction.copy()
        return total

    @functools.cached_property
    def native_table(self) -> NativeTable | None:
        """The whole setting as one table of the native spec: its units (`units`, empty arrays when none) and its
        residual additions (`control_directions` as layers and a [layers, width] array); None when it steers
        nothing."""
        if not self.active:
            return None
        units = self.units
        if units is None:
            units = (np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32))
        layers = sorted(self.control_directions)
        if not layers:
            return units
        values = np.stack([self.control_directions[layer] for layer in layers]).astype(np.float32)
        return (*units, np.array(layers, dtype=np.int32), values)

    def describe(self) -> dict[str, Any]:
        """A plain summary (for logs and server responses): what steers, not what was asked for."""
        summary = {"enabled": self.active, "profiles": {p.name: weight for p, weight in self.profiles},
                   "strength": self.strength, "apply": self.scope}
        if self.control is not None:
            summary["control_vector"] = self.control.multiplier
        return summary


OFF = SteeringSetting()


def check_weight(name: str, weight: Any) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float, np.integer, np.floating)) \
            or not math.isfinite(weight) or abs(weight) > MAX_STRENGTH:
        raise InputError(f"the weight of profile {name!r} must be a finite number within +-{MAX_STRENGTH:g}, "
                         f"got {weight!r}")
    return float(weight)


def check_multiplier(multiplier: Any) -> float:
    if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)) \
            or not math.isfinite(multiplier) or abs(multiplier) > MAX_MULTIPLIER:
        raise InputError(f"multiplier must be a finite number within +-{MAX_MULTIPLIER:g}, got {multiplier!r}")
    return float(multiplier)
