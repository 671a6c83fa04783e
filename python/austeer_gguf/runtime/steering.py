"""The steering control a user holds: profile, on/off and strength, safe to change from any thread.

Changes are recorded at once and handed to the native state by the thread that decodes, at the start of
the next completion (or `eval` call). A completion that is running finishes under the setting it started
with, so every completion is computed under one consistent setting.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from .. import sites
from ..control_vector import ControlVector
from ..errors import InputError
from ..fingerprint import ModelFingerprint
from ..profile import Profile, check_strength
from ..sites import ModelShape


@dataclass(frozen=True)
class ControlSetting:
    """A control vector (compared by identity) and its multiplier."""

    vector: ControlVector
    multiplier: float


@dataclass(frozen=True)
class SteeringSetting:
    """What a completion runs under. Equal settings steer identically; `OFF` steers nothing."""

    profile: Profile | None
    strength: float
    control: ControlSetting | None = None

    @property
    def active(self) -> bool:
        return self.profile is not None or self.control is not None


OFF = SteeringSetting(None, 0.0)
MAX_MULTIPLIER = 1_000.0


def native_units(profile: Profile, strength: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(layers, site codes, dims, factors) as the native state takes them."""
    layers = np.array([u.layer for u in profile.units], dtype=np.int32)
    codes = np.array([sites.code(u.site) for u in profile.units], dtype=np.int32)
    dims = np.array([u.dim for u in profile.units], dtype=np.int32)
    return layers, codes, dims, profile.factors(strength)


class Steering:
    def __init__(self, native_state, shape: ModelShape, fingerprint: ModelFingerprint | None = None) -> None:
        self._native = native_state
        self._shape = shape
        self._fingerprint = fingerprint
        self._lock = threading.Lock()
        self._profile: Profile | None = None
        self._enabled = True
        self._strength = 1.0
        self._library: dict[str, Profile] = {}
        self._control: ControlSetting | None = None
        self._profile_version = 0
        self._native_key: tuple[int, float] | None = None  # (profile version, strength) the native table holds

    # ---- what users call ----------------------------------------------------------------------------------

    def set_profile(self, profile: Profile | None, *, allow_model_mismatch: bool = False) -> None:
        """Steer with `profile` (None: steer nothing). Raises ValueError before anything is decoded
        when the profile does not fit this model."""
        if profile is not None:
            if not isinstance(profile, Profile):
                raise TypeError(f"set_profile takes a Profile or None, not {type(profile).__name__}")
            profile.factors(self._strength)  # refuses a factor out of range now, not at the next completion
            profile.check_model(self._shape, self._fingerprint, allow_mismatch=allow_model_mismatch)
        with self._lock:
            self._profile = profile
            self._profile_version += 1

    def add_profiles(self, profiles: dict[str, Profile]) -> None:
        """Make named profiles available to `use` (e.g. those embedded in the model file); each is checked
        against the model when it is used, so one that does not fit never stops the model from loading."""
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
        return self._profile

    def set_control_vector(self, vector: ControlVector | None, multiplier: float = 1.0) -> None:
        """Add a CAA control vector times `multiplier` to the residual stream (None: remove it). It is switched
        on and off together with the profile."""
        if vector is not None:
            width = self._shape.widths["layer"]
            for layer, direction in vector.directions.items():
                if not 1 <= layer < self._shape.n_layers or direction.shape != (width,):
                    raise InputError(f"control vector direction.{layer} does not fit this model: layers "
                                     f"1..{self._shape.n_layers - 1} of width {width}")
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
        if not isinstance(on, bool):
            raise InputError(f"enabled must be True or False, got {on!r}")
        with self._lock:
            self._enabled = on

    @property
    def strength(self) -> float:
        return self._strength

    @strength.setter
    def strength(self, value: float) -> None:
        value = check_strength(value)
        with self._lock:
            if self._profile is not None:
                self._profile.factors(value)  # refuses a factor out of range now
            self._strength = value

    @property
    def requested(self) -> SteeringSetting:
        """The setting the next completion will run under."""
        with self._lock:
            return self._requested_locked()

    # ---- what the decoding thread calls ---------------------------------------------------------------

    def apply(self) -> SteeringSetting:
        """Hand the requested setting to the native state; returns it."""
        with self._lock:
            setting = self._requested_locked()
            key = (self._profile_version, setting.strength) if setting.profile is not None else None
            if key != self._native_key:
                if setting.profile is None:
                    self._native.clear_units()
                else:
                    self._native.set_units(self._shape.n_layers, *native_units(setting.profile, setting.strength))
                self._native_key = key
            self._native.enabled = setting.profile is not None
            return setting

    def _requested_locked(self) -> SteeringSetting:
        if not self._enabled:
            return OFF
        steers_units = self._profile is not None and bool(self._profile.units) and self._strength != 0.0
        if not steers_units and self._control is None:
            return OFF
        if not steers_units:
            return SteeringSetting(None, 0.0, self._control)
        return SteeringSetting(self._profile, self._strength, self._control)
