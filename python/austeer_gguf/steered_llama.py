"""`SteeredLlama`: a `llama_cpp.Llama` whose context scales atomic units through our eval callback."""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import llama_cpp

from . import context_hook, native
from .control_vector import apply_control_vector
from .fingerprint import ModelFingerprint, fingerprint_file
from .gguf_meta import profiles_from_metadata
from .profile import Profile
from .sites import ModelShape
from .steering import ControlSetting, Steering, SteeringSetting

EvalCallback = Callable[[int, bool], bool]


class SteeredLlama(llama_cpp.Llama):
    """A `llama_cpp.Llama` with AUSteer steering, controlled through `.steering`.

    `profile` may be a `Profile`, a path to a profile JSON file, or the name of a profile embedded in the
    model file. `eval_callback`, if given, is chained: it is asked about every node as llama.cpp would ask
    it, and its compute call sees the values after our scaling. Every other keyword goes to `llama_cpp.Llama`.

    Steering changes take effect at the next completion; the prompt prefix llama-cpp-python would reuse from
    its KV cache is dropped whenever the setting differs from the one it was computed under.
    """

    def __init__(
        self,
        model_path: str,
        profile: Profile | str | Path | None = None,
        *,
        eval_callback: EvalCallback | Any | None = None,
        allow_model_mismatch: bool = False,
        _context_overrides: dict[str, Any] | None = None,
        **llama_kwargs: Any,
    ) -> None:
        self._native_state = native.new_state()
        self._chained_callback = None
        if eval_callback is not None:
            self._chain(eval_callback)
        callback_address = native.callback_address()
        with context_hook.callback_for_next_context(
            callback_address, self._native_state.user_data, _context_overrides
        ):
            super().__init__(model_path, **llama_kwargs)
        if context_hook.installed_callback(self.context_params) != (callback_address, self._native_state.user_data):
            raise RuntimeError("llama_cpp.Llama did not build its context from llama_context_default_params(): "
                               "austeer-gguf supports llama-cpp-python==0.3.36 only")

        self.shape = ModelShape.from_llama(self)
        self.fingerprint: ModelFingerprint | None = fingerprint_file(model_path)
        self.steering = Steering(self._native_state, self.shape, self.fingerprint)
        self._kv_setting: SteeringSetting | None = None
        self._applied_control: ControlSetting | None = None
        self._generating = 0

        # Profiles embedded in the model file, read through llama.cpp's own metadata API.
        self.steering.add_profiles(profiles_from_metadata(self.metadata))
        if profile is not None:
            self.steering.set_profile(self._resolve_profile(profile), allow_model_mismatch=allow_model_mismatch)

    # ---- steering around every decode -----------------------------------------------------------------

    def _sync_steering(self) -> bool:
        """Apply the requested setting; True when the KV cache holds tokens computed under another one."""
        setting = self.steering.apply()
        if setting.control != self._applied_control:
            control = setting.control
            apply_control_vector(self, control.vector if control else None, control.multiplier if control else 0.0)
            self._applied_control = control
        stale = self.n_tokens > 0 and setting != self._kv_setting
        self._kv_setting = setting
        return stale

    def generate(self, tokens: Sequence[int], *args: Any, **kwargs: Any):  # type: ignore[override]
        if self._sync_steering():
            self.reset()
        self._generating += 1
        try:
            return (yield from super().generate(tokens, *args, **kwargs))
        finally:
            self._generating -= 1

    def eval(self, tokens: Sequence[int]) -> None:
        if not self._generating and self._sync_steering():
            # The cached prefix was computed under another setting: compute it again under this one.
            tokens = list(self._input_ids) + list(tokens)
            self.reset()
        super().eval(tokens)

    def embed(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        self._sync_steering()
        self._kv_setting = None  # embed clears the KV cache and leaves its own tokens in it
        return super().embed(*args, **kwargs)

    def save_state(self) -> llama_cpp.LlamaState:
        state = super().save_state()
        state.austeer_setting = self._kv_setting  # type: ignore[attr-defined]
        return state

    def load_state(self, state: llama_cpp.LlamaState) -> None:
        super().load_state(state)
        # A state saved elsewhere (or by a plain Llama) has an unknown setting: None never matches, so its
        # tokens are computed again before they are reused.
        self._kv_setting = getattr(state, "austeer_setting", None)

    # ---- helpers --------------------------------------------------------------------------------------

    @property
    def steering_in_effect(self) -> SteeringSetting | None:
        """The setting the current KV cache (and the last completion) was computed under."""
        return self._kv_setting

    def native_counters(self) -> dict[str, int]:
        """What the callback did: tensors steered/captured, and tensors it had to skip (not F32, ...)."""
        return dict(self._native_state.counters())

    def _resolve_profile(self, profile: Profile | str | Path) -> Profile:
        if isinstance(profile, Profile):
            return profile
        if isinstance(profile, str) and profile in self.steering.available:
            return self.steering.named(profile)
        path = Path(profile)
        if path.is_file():
            return Profile.from_json(path)
        available = ", ".join(self.steering.available) or "none"
        raise ValueError(f"profile {profile!r} is neither a profile file nor a profile embedded in the model "
                         f"(embedded: {available})")

    def _chain(self, callback: EvalCallback | Any) -> None:
        if isinstance(callback, llama_cpp.ggml_backend_sched_eval_callback):
            pointer = callback
        elif callable(callback):
            def trampoline(tensor: int | None, ask: bool, _user_data: int | None) -> bool:
                return bool(callback(tensor or 0, bool(ask)))

            pointer = llama_cpp.ggml_backend_sched_eval_callback(trampoline)
        else:
            raise TypeError("eval_callback must be a callable (tensor_address, ask) -> bool or a "
                            "llama_cpp.ggml_backend_sched_eval_callback")
        self._chained_callback = pointer  # keep the ctypes thunk alive as long as the model
        address = ctypes.cast(pointer, ctypes.c_void_p).value or 0
        self._native_state.set_chained(address, 0)
