"""The steering control a user holds: profiles and their weights, on/off, strength and token scope, safe to
change from any thread.

Several profiles can be active at once, each with its own weight: a unit's factor in profile p is
``1 + strength * weight_p * alpha_p * score`` (`Profile.factors`), and units on the same (layer, site, dim)
multiply their factors. Weight 0 switches one profile off.

Token scope: "all" steers every position (prompt and generated); "generation" steers only the positions of
generated tokens. The prompt is then computed unsteered, and so is the first generated token, which is
sampled from the last prompt position; steering acts from the second generated token on (as EasySteer's
generation-only mode).

Changes are recorded at once and handed to the native state by the thread that decodes, at the start of
the next completion (or `eval` call). A completion that is running finishes under the setting it started
with, so every completion is computed under one consistent setting.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import sites
from ..control_vector import ControlVector
from ..errors import InputError
from ..fingerprint import ModelFingerprint
from ..profile import MAX_FACTOR, MAX_STRENGTH, Profile, check_strength
from ..sites import ModelShape

SCOPES = ("all", "generation")
MAX_MULTIPLIER = 1_000.0
MAX_PROFILES = 16


@dataclass(frozen=True)
class ControlSetting:
    """A control vector (compared by value) and its multiplier."""

    vector: ControlVector
    multiplier: float


@dataclass(frozen=True)
class SteeringSetting:
    """What a completion runs under. Equal settings steer identically; `OFF` steers nothing."""

    profiles: tuple[tuple[Profile, float], ...]  # (profile, weight), weights non-zero
    strength: float
    control: ControlSetting | None = None
    scope: str = "all"

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

    def describe(self) -> dict[str, Any]:
        """A plain summary (for logs and server responses): what steers, not what was asked for."""
        summary = {"enabled": self.active, "profiles": {p.name: weight for p, weight in self.profiles},
                   "strength": self.strength, "apply": self.scope}
        if self.control is not None:
            summary["control_vector"] = self.control.multiplier
        return summary


OFF = SteeringSetting((), 0.0)


def native_units(profiles: Sequence[tuple[Profile, float]], strength: float,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(layers, site codes, dims, factors) as the native state takes them; units that several profiles share
    get the product of their factors."""
    factors: dict[tuple[int, str, int], np.float32] = {}
    for profile, weight in profiles:
        for unit, factor in zip(profile.units, profile.factors(strength * weight, bounded=False)):
            key = (unit.layer, unit.site, unit.dim)
            factors[key] = np.float32(factors.get(key, np.float32(1.0)) * factor)
    if factors and not max(abs(float(f)) for f in factors.values()) <= MAX_FACTOR:
        raise InputError(f"the active profiles together scale a unit by more than {MAX_FACTOR:g}: lower the weights "
                         "or the strength")
    keys = list(factors)
    return (np.array([k[0] for k in keys], dtype=np.int32), np.array([sites.code(k[1]) for k in keys], dtype=np.int32),
            np.array([k[2] for k in keys], dtype=np.int32), np.array([factors[k] for k in keys], dtype=np.float32))


class Steering:
    def __init__(self, native_state, shape: ModelShape, fingerprint: ModelFingerprint | None = None) -> None:
        self._native = native_state
        self._shape = shape
        self._fingerprint = fingerprint
        self._lock = threading.Lock()
        self._profiles: tuple[tuple[Profile, float], ...] = ()
        self._enabled = True
        self._strength = 1.0
        self._scope = "all"
        self._library: dict[str, Profile] = {}
        self._control: ControlSetting | None = None
        self._native_key: tuple[tuple[tuple[Profile, float], ...], float] | None = None

    # ---- what users call ----------------------------------------------------------------------------------

    def set_profile(self, profile: Profile | None, *, allow_model_mismatch: bool = False) -> None:
        """Steer with `profile` alone (None: steer nothing). Raises InputError before anything is decoded
        when the profile does not fit this model."""
        if profile is not None and not isinstance(profile, Profile):
            raise TypeError(f"set_profile takes a Profile or None, not {type(profile).__name__}")
        self.set_profiles([] if profile is None else [(profile, 1.0)], allow_model_mismatch=allow_model_mismatch)

    def set_profiles(self, weights: Mapping[str, float] | Sequence[tuple[Profile | str, float]], *,
                     allow_model_mismatch: bool = False) -> None:
        """Steer with several profiles at once: {name: weight} of available profiles, or (profile or name,
        weight) pairs. Weight 0 leaves a profile out; overlapping units multiply their factors."""
        self.configure(profiles=weights, allow_model_mismatch=allow_model_mismatch)

    def configure(self, *, profiles: Mapping[str, float] | Sequence[tuple[Profile | str, float]] | None = None,
                  strength: float | None = None, enabled: bool | None = None, scope: str | None = None,
                  allow_model_mismatch: bool = False) -> SteeringSetting:
        """Change several controls at once (those given), checked together and committed together, so no other
        thread sees a combination nobody checked. Returns the setting the next completion will run under."""
        chosen = None if profiles is None else self.resolve(profiles, allow_model_mismatch=allow_model_mismatch)
        strength = None if strength is None else check_strength(strength)
        if enabled is not None and not isinstance(enabled, bool):
            raise InputError(f"enabled must be True or False, got {enabled!r}")
        if scope is not None and scope not in SCOPES:
            raise InputError(f"the steering scope is 'all' or 'generation', got {scope!r}")
        with self._lock:
            new_profiles = self._profiles if chosen is None else chosen
            new_strength = self._strength if strength is None else strength
            native_units(new_profiles, new_strength)  # refuses a factor out of range now, not at the next decode
            self._profiles, self._strength = new_profiles, new_strength
            self._enabled = self._enabled if enabled is None else enabled
            self._scope = self._scope if scope is None else scope
            return self._requested_locked()

    def resolve(self, weights: Mapping[str, float] | Sequence[tuple[Profile | str, float]], *,
                allow_model_mismatch: bool = False) -> tuple[tuple[Profile, float], ...]:
        """Checked (profile, weight) pairs for `weights`: names looked up, weights in range, no name twice, every
        profile fitting this model; weight 0 left out."""
        items = list(weights.items()) if isinstance(weights, Mapping) else list(weights)
        if len(items) > MAX_PROFILES:
            raise InputError(f"at most {MAX_PROFILES} profiles can be active at once")
        chosen: list[tuple[Profile, float]] = []
        names: set[str] = set()
        for spec, weight in items:
            profile = self.named(spec) if isinstance(spec, str) else spec
            if not isinstance(profile, Profile):
                raise TypeError(f"set_profiles takes profiles or their names, not {type(spec).__name__}")
            weight = check_weight(profile.name, weight)
            if profile.name in names:
                raise InputError(f"profile {profile.name!r} is named twice")
            names.add(profile.name)
            profile.check_model(self._shape, self._fingerprint, allow_mismatch=allow_model_mismatch)
            if weight != 0.0:
                chosen.append((profile, weight))
        return tuple(chosen)

    def add_profiles(self, profiles: dict[str, Profile]) -> None:
        """Make named profiles available to `use` and `set_profiles` (e.g. those embedded in the model file);
        each is checked against the model when it is used, so one that does not fit never stops the model
        from loading."""
        with self._lock:
            self._library.update(profiles)

    @property
    def available(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._library)

    def named(self, name: str) -> Profile:
        """An available (e.g. embedded) profile by name."""
        with self._lock:
            profile = self._library.get(name)
            names = ", ".join(self._library) or "none"
        if profile is None:
            raise InputError(f"no profile named {name!r}; available: {names}")
        return profile

    def use(self, name: str) -> None:
        self.set_profile(self.named(name))

    @property
    def profile(self) -> Profile | None:
        """The profile when exactly one is active (see `profiles` for several)."""
        with self._lock:
            return self._profiles[0][0] if len(self._profiles) == 1 else None

    @property
    def profiles(self) -> tuple[tuple[Profile, float], ...]:
        with self._lock:
            return self._profiles

    @property
    def control(self) -> ControlSetting | None:
        """The control vector set with `set_control_vector` (profiles' own vectors are part of the profiles)."""
        with self._lock:
            return self._control

    def set_control_vector(self, vector: ControlVector | None, multiplier: float = 1.0) -> None:
        """Add a CAA control vector times `multiplier` to the residual stream (None: remove it). It is switched
        on and off together with the profiles."""
        if vector is not None:
            vector.check_fits(self._shape.n_layers, self._shape.widths["layer"])
            if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)) \
                    or not math.isfinite(multiplier) or abs(multiplier) > MAX_MULTIPLIER:
                raise InputError(f"multiplier must be a finite number within +-{MAX_MULTIPLIER:g}, got {multiplier!r}")
        with self._lock:
            self._control = ControlSetting(vector, float(multiplier)) if vector is not None else None

    def enable(self) -> None:
        self.enabled = True

    def disable(self) -> None:
        self.enabled = False

    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, on: bool) -> None:
        self.configure(enabled=on)

    @property
    def strength(self) -> float:
        return self._strength

    @strength.setter
    def strength(self, value: float) -> None:
        self.configure(strength=value)

    @property
    def scope(self) -> str:
        """"all" (every position) or "generation" (generated tokens only; see the module docstring)."""
        return self._scope

    @scope.setter
    def scope(self, value: str) -> None:
        self.configure(scope=value)

    @property
    def requested(self) -> SteeringSetting:
        """The setting the next completion will run under."""
        with self._lock:
            return self._requested_locked()

    # ---- what the decoding thread calls ---------------------------------------------------------------

    def apply(self) -> SteeringSetting:
        """Hand the requested setting's units to the native state; returns the setting. Whether the native
        state steers (its `enabled`) is the caller's to set, per phase (see SteeredLlama)."""
        with self._lock:
            setting = self._requested_locked()
        key = (setting.profiles, setting.strength)
        if key != self._native_key:
            if setting.profiles:
                self._native.set_units(self._shape.n_layers, *native_units(setting.profiles, setting.strength))
            else:
                self._native.clear_units()
            self._native_key = key
        return setting

    def _requested_locked(self) -> SteeringSetting:
        if not self._enabled:
            return OFF
        steers_units = bool(self._profiles) and self._strength != 0.0
        if not steers_units and self._control is None:
            return OFF
        profiles = self._profiles if steers_units else ()
        return SteeringSetting(profiles, self._strength if steers_units else 0.0, self._control, self._scope)


def check_weight(name: str, weight: Any) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float, np.integer, np.floating)) \
            or not math.isfinite(weight) or abs(weight) > MAX_STRENGTH:
        raise InputError(f"the weight of profile {name!r} must be a finite number within +-{MAX_STRENGTH:g}, "
                         f"got {weight!r}")
    return float(weight)
