"""The steering control a user holds on a `SteeredLlama`: a convenience that produces `SteeringSetting` values.

`llm.steering` keeps profiles and their weights, on/off, strength, token scope and a control vector, safe to
change from any thread; every change is checked against the model at once and gives the setting the next
completion runs under (`requested`). Code that wants a setting for one piece of work makes a value instead
(`setting(...)`) and decodes under it for a scope (`using`), leaving the user's controls as they are.

A completion reads its setting once, when it starts (`current`), so a completion that is running finishes under
the setting it started with, and every completion is computed under one consistent setting.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping, Sequence

from ..control_vector import ControlVector
from ..errors import InputError
from ..fingerprint import ModelFingerprint
from ..profile import Profile
from ..setting import OFF, SteeringSetting
from ..sites import ModelShape

ProfileWeights = Mapping[str, float] | Sequence[tuple[Profile | str, float]]


class Steering:
    def __init__(self, shape: ModelShape, fingerprint: ModelFingerprint | None = None) -> None:
        self._shape = shape
        self._fingerprint = fingerprint
        self._lock = threading.Lock()
        self._library: dict[str, Profile] = {}
        self._profiles: tuple[tuple[Profile, float], ...] = ()
        self._enabled = True
        self._strength = 1.0
        self._scope = "all"
        self._control: ControlVector | None = None
        self._multiplier = 1.0
        self._allow_model_mismatch = False  # as the profiles set were allowed
        self._requested: SteeringSetting = OFF
        self._overrides: list[SteeringSetting] = []

    # ---- settings as values ---------------------------------------------------------------------------

    def setting(self, profiles: ProfileWeights = (), *, strength: float = 1.0, enabled: bool = True,
                scope: str = "all", control: ControlVector | None = None, multiplier: float = 1.0,
                allow_model_mismatch: bool = False) -> SteeringSetting:
        """A setting for this model, made from parts (profiles by name among those available, or as
        `Profile`s), checked once; the user's controls are left as they are."""
        return SteeringSetting.make(self._shape, self._fingerprint, profiles=self._named_weights(profiles),
                                    strength=strength, enabled=enabled, scope=scope, control=control,
                                    multiplier=multiplier, allow_model_mismatch=allow_model_mismatch)

    @contextlib.contextmanager
    def using(self, setting: SteeringSetting) -> Iterator[SteeringSetting]:
        """Completions that start within this block run under `setting` (made for this model), whatever the
        user's controls say. The model decodes one completion at a time: use it from the code that decodes."""
        if not isinstance(setting, SteeringSetting):
            raise TypeError(f"using() takes a SteeringSetting, not {type(setting).__name__}")
        with self._lock:
            self._overrides.append(setting)
        try:
            yield setting
        finally:
            with self._lock:
                self._overrides.remove(setting)

    def current(self) -> SteeringSetting:
        """The setting a completion starting now runs under: the innermost `using`, else `requested`."""
        with self._lock:
            return self._overrides[-1] if self._overrides else self._requested

    @property
    def requested(self) -> SteeringSetting:
        """The setting the user's controls give (what the next completion runs under outside `using`)."""
        with self._lock:
            return self._requested

    # ---- the user's controls --------------------------------------------------------------------------

    def set_profile(self, profile: Profile | None, *, allow_model_mismatch: bool = False) -> None:
        """Steer with `profile` alone (None: steer nothing). Raises InputError before anything is decoded
        when the profile does not fit this model."""
        if profile is not None and not isinstance(profile, Profile):
            raise TypeError(f"set_profile takes a Profile or None, not {type(profile).__name__}")
        self.set_profiles([] if profile is None else [(profile, 1.0)], allow_model_mismatch=allow_model_mismatch)

    def set_profiles(self, weights: ProfileWeights, *, allow_model_mismatch: bool = False) -> None:
        """Steer with several profiles at once: {name: weight} of available profiles, or (profile or name,
        weight) pairs. Weight 0 leaves a profile out; overlapping units multiply their factors."""
        self.configure(profiles=weights, allow_model_mismatch=allow_model_mismatch)

    def configure(self, *, profiles: ProfileWeights | None = None, strength: float | None = None,
                  enabled: bool | None = None, scope: str | None = None,
                  allow_model_mismatch: bool = False) -> SteeringSetting:
        """Change several controls at once (those given), checked together and committed together, so no other
        thread sees a combination nobody checked. Returns the setting the next completion will run under."""
        named = None if profiles is None else self._named_weights(profiles)
        with self._lock:
            changes = {"strength": strength, "enabled": enabled, "scope": scope}
            changes = {key: value for key, value in changes.items() if value is not None}
            if named is not None:
                changes.update(profiles=named, allow_model_mismatch=allow_model_mismatch)
            self._commit(changes)
            return self._requested

    def set_control_vector(self, vector: ControlVector | None, multiplier: float = 1.0) -> None:
        """Add a CAA control vector times `multiplier` to the residual stream (None: remove it). It is switched
        on and off together with the profiles."""
        with self._lock:
            self._commit({"control": vector, "multiplier": multiplier if vector is not None else 1.0})

    def add_profiles(self, profiles: dict[str, Profile]) -> None:
        """Make named profiles available by name (e.g. those embedded in the model file); each is checked
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
        """The profile when exactly one is set (see `profiles` for several)."""
        with self._lock:
            return self._profiles[0][0] if len(self._profiles) == 1 else None

    @property
    def profiles(self) -> tuple[tuple[Profile, float], ...]:
        with self._lock:
            return self._profiles

    @property
    def control(self) -> ControlVector | None:
        """The control vector set with `set_control_vector` (profiles' own vectors are part of the profiles)."""
        with self._lock:
            return self._control

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
        """"all" (every position) or "generation" (generated tokens only; see `austeer_gguf.setting`)."""
        return self._scope

    @scope.setter
    def scope(self, value: str) -> None:
        self.configure(scope=value)

    # ---- internals ------------------------------------------------------------------------------------

    def _named_weights(self, weights: ProfileWeights) -> list[tuple[Profile, float]]:
        items = list(weights.items()) if isinstance(weights, Mapping) else list(weights)
        named = []
        for spec, weight in items:
            profile = self.named(spec) if isinstance(spec, str) else spec
            if not isinstance(profile, Profile):
                raise TypeError(f"set_profiles takes profiles or their names, not {type(spec).__name__}")
            named.append((profile, weight))
        return named

    def _commit(self, changes: dict) -> None:
        """With the lock held: make the setting the controls give with `changes`, then keep both."""
        parts = dict(profiles=self._profiles, strength=self._strength, enabled=self._enabled, scope=self._scope,
                     control=self._control, multiplier=self._multiplier,
                     allow_model_mismatch=self._allow_model_mismatch)
        parts.update(changes)
        requested = SteeringSetting.make(self._shape, self._fingerprint, **parts)
        self._allow_model_mismatch = parts["allow_model_mismatch"]
        self._profiles = tuple((p, float(w)) for p, w in parts["profiles"] if w != 0.0)
        self._strength, self._enabled, self._scope = float(parts["strength"]), parts["enabled"], parts["scope"]
        self._control, self._multiplier = parts["control"], float(parts["multiplier"])
        self._requested = requested
