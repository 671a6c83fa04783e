"""`SteeredLlama`: a `llama_cpp.Llama` whose context scales atomic units through our eval callback."""

from __future__ import annotations

import ctypes
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

from ..errors import InputError
from ..fingerprint import ModelFingerprint, fingerprint_of
from ..ggufio.layout import scan
from ..ggufio.metadata import embedded_profiles
from ..profile import Profile, resolve
from ..sites import ModelShape
from . import context_hook, limits, native, rpc
from .steering import Steering, SteeringSetting

EvalCallback = Callable[[int, bool], bool]
SKIP_COUNTERS = ("skipped_not_f32", "skipped_not_contiguous", "skipped_width", "skipped_no_data",
                 "skipped_unknown_layout", "errors")


@dataclass(frozen=True)
class KvRecord:
    """Cached positions [0, split) were computed under `prompt`, positions from `split` on under `rest`."""

    prompt: SteeringSetting | None = None
    split: int = 0
    rest: SteeringSetting | None = None

    def reusable(self, needed: SteeringSetting, n_tokens: int) -> int:
        """How many cached positions were computed under `needed`."""
        if self.prompt is None or self.prompt != needed:
            return 0
        return n_tokens if self.rest == needed else min(n_tokens, self.split)


class SteeredLlama(llama_cpp.Llama):
    """A `llama_cpp.Llama` with AUSteer steering, controlled through `.steering`.

    `profile` may be a `Profile`, the name of a profile embedded in the model file, a path to a profile JSON
    file, or inline profile JSON (see `austeer_gguf.profile.resolve` for the order). `eval_callback`, if
    given, is chained: it is asked about every node as llama.cpp would ask it, and its compute call sees the
    values after our scaling. `rpc_servers` (["host:port", ...]) registers llama.cpp RPC servers the way
    llama.cpp's `--rpc` does (process-wide, see `runtime.rpc`) and offloads every layer to them unless
    `n_gpu_layers` says otherwise. Every other keyword goes to `llama_cpp.Llama`, after the resource requests
    (threads, n_ctx, n_batch) are checked against the model and the machine.

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
        rpc_servers: Sequence[str] | None = None,
        _context_overrides: dict[str, Any] | None = None,
        **llama_kwargs: Any,
    ) -> None:
        # Read the file ourselves first: a damaged file gets a message that says what is wrong with it.
        layout = scan(model_path)
        fields = layout.values()
        self.shape = ModelShape.from_gguf_fields(fields)
        self.fingerprint: ModelFingerprint | None = fingerprint_of(layout)
        _check_resources(llama_kwargs, fields, self.shape.n_layers)
        embedded = embedded_profiles(fields)
        chosen = None
        if profile is not None:  # a mistyped or misfit profile is refused before the model is loaded
            chosen = resolve(profile, embedded.profiles)
            chosen.check_model(self.shape, self.fingerprint, allow_mismatch=allow_model_mismatch)
        rpc.check_registered()
        if rpc_servers is not None:
            rpc.add_servers(list(rpc_servers))
            llama_kwargs.setdefault("n_gpu_layers", -1)

        self._native_state = native.new_state()
        self._chained_callback = None
        self._warned_skips = False
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

        self.steering = Steering(self._native_state, self.shape, self.fingerprint)
        self._kv = KvRecord()  # which settings the cached positions were computed under
        self._setting: SteeringSetting | None = None  # the setting of the running (or last) completion
        self._generating: SteeringSetting | None = None  # the setting of the generate() running now
        self._phase_is_prompt = True
        self._control_key: tuple | None = ()  # what the context's control vector was made from

        for name, why in embedded.broken.items():
            warnings.warn(f"{model_path}: embedded profile {name!r} is left out: {why} (remove it with "
                          f"`python -m austeer_gguf strip MODEL --name {name}`)", stacklevel=2)
        self.steering.add_profiles(embedded.profiles)
        if chosen is not None:
            self.steering.set_profile(chosen, allow_model_mismatch=allow_model_mismatch)

    def resolve_profile(self, spec: Profile | str | Path) -> Profile:
        """A profile named by the user: see `austeer_gguf.profile.resolve` for the order."""
        return resolve(spec, {name: self.steering.named(name) for name in self.steering.available})

    # ---- steering around every decode -----------------------------------------------------------------
    #
    # A completion runs under one setting. Its prompt positions are computed under setting.for_prompt() and its
    # generated positions under the setting itself (the two differ only for scope "generation"). The KV record
    # says which setting computed which cached positions; a cached prefix is reused only where it was computed
    # under the setting the new positions need.

    def generate(self, tokens: Sequence[int], *args: Any, **kwargs: Any):  # type: ignore[override]
        setting = self._start(self.steering.apply())
        tokens = list(tokens)
        reset = kwargs.get("reset", args[6] if len(args) > 6 else True)
        if reset:
            self._drop_stale_prefix(setting.for_prompt())
        else:  # appended to the cached tokens: recompute those not computed under the prompt's setting
            reusable = self._kv.reusable(setting.for_prompt(), self.n_tokens)
            tokens = list(self._input_ids[reusable:]) + tokens
            self.n_tokens = reusable
        self._generating = setting
        self._prompt_end = self.n_tokens + len(tokens)  # corrected by the prompt's eval (prefix reuse)
        try:
            return (yield from super().generate(tokens, *args, **kwargs))
        finally:
            self._generating = None
            self._kv = KvRecord(setting.for_prompt(), self._prompt_end, setting)
            self._warn_once_if_skipped()

    def eval(self, tokens: Sequence[int]) -> None:
        if self._generating is None:
            # A plain eval: every position is a prompt position.
            prompt = self._start(self.steering.apply()).for_prompt()
            reusable = self._kv.reusable(prompt, self.n_tokens)
            if reusable < self.n_tokens:
                tokens = list(self._input_ids[reusable:]) + list(tokens)
                self.n_tokens = reusable
            self._enter(prompt)
            super().eval(tokens)
            self._kv = KvRecord(prompt, self.n_tokens, prompt)
            self._warn_once_if_skipped()
            return
        # Inside generate: the first eval holds the prompt (what was not reused), later ones generated tokens.
        self._enter(self._generating.for_prompt() if self._phase_is_prompt else self._generating)
        super().eval(tokens)
        if self._phase_is_prompt:
            self._prompt_end = self.n_tokens  # the prompt's positions end here; generated ones follow
            self._phase_is_prompt = False

    def apply_steering(self) -> SteeringSetting:
        """For code that calls llama_decode itself (activation capture, batched evaluation): hand the requested
        setting to the native state as for a prompt, and forget the cached positions' record."""
        setting = self._start(self.steering.apply())
        self._enter(setting.for_prompt())
        self._kv = KvRecord()
        return setting

    def steer_generated(self, setting: SteeringSetting) -> None:
        """After `apply_steering()` returned `setting`: steer the generated positions decoded next as it says."""
        self._enter(setting)

    def _start(self, setting: SteeringSetting) -> SteeringSetting:
        self._setting = setting
        self._phase_is_prompt = True
        return setting

    def _enter(self, phase: SteeringSetting) -> None:
        """Make the native state and the control vector steer as `phase` says."""
        self._native_state.enabled = any(profile.units for profile, _ in phase.profiles)
        key = (phase.control, tuple((p, w) for p, w in phase.profiles if p.control is not None), phase.strength)
        if key != self._control_key:
            _apply_control(self, control_directions(phase))
            self._control_key = key

    def _drop_stale_prefix(self, prompt: SteeringSetting) -> None:
        """Cut the cached positions that were not computed under `prompt`, before llama-cpp-python looks for
        a prefix to reuse."""
        reusable = self._kv.reusable(prompt, self.n_tokens)
        if reusable == 0 and self.n_tokens > 0:
            self.reset()
        elif reusable < self.n_tokens:
            self.n_tokens = reusable
            self._ctx.kv_cache_seq_rm(-1, reusable, -1)
            self._requires_eval = True  # the logits held are not those of position reusable - 1

    def embed(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        self._enter(self._start(self.steering.apply()).for_prompt())
        self._kv = KvRecord()  # embed clears the KV cache and leaves its own tokens in it
        return super().embed(*args, **kwargs)

    def save_state(self) -> llama_cpp.LlamaState:
        state = super().save_state()
        state.austeer_kv = self._kv  # type: ignore[attr-defined]
        return state

    def load_state(self, state: llama_cpp.LlamaState) -> None:
        super().load_state(state)
        # A state saved elsewhere (or by a plain Llama) has an unknown setting: nothing of it is reused.
        self._kv = getattr(state, "austeer_kv", KvRecord())

    def close(self) -> None:
        # A model refused in __init__ (bad input) never reached llama_cpp.Llama.__init__: nothing to close.
        if "_stack" in self.__dict__:
            super().close()

    # ---- helpers --------------------------------------------------------------------------------------

    @property
    def steering_in_effect(self) -> SteeringSetting | None:
        """The setting the last completion (or eval) ran under."""
        return self._setting

    def native_counters(self) -> dict[str, int]:
        """What the callback did: tensors steered/captured, and tensors it had to skip (not F32, ...)."""
        return dict(self._native_state.counters())

    def _warn_once_if_skipped(self) -> None:
        """Steering that silently does nothing is worse than none: say which tensors were left alone."""
        if self._warned_skips:
            return
        counters = self._native_state.counters()
        if any(counters[name] for name in SKIP_COUNTERS):
            self._warned_skips = True
            names = "; ".join(self._native_state.skipped_names()) or "unknown tensors"
            warnings.warn(f"steering left some site tensors alone, so part of the profile has no effect: {names}",
                          RuntimeWarning, stacklevel=3)

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


def _check_resources(kwargs: dict[str, Any], fields: dict[str, Any], n_layers: int) -> None:
    """Refuse resource requests the model or machine cannot take, before llama.cpp allocates anything."""
    for name in ("n_threads", "n_threads_batch"):
        limits.check_threads(kwargs.get(name), name)
    n_ctx = limits.check_context(kwargs.get("n_ctx", 512), fields, n_layers)
    for name in ("n_batch", "n_ubatch"):
        if kwargs.get(name) is not None:
            limits.check_batch(kwargs[name], max(n_ctx, 1), name)


def context_overflow(error: Exception) -> InputError | None:
    """llama-cpp-python's "Requested tokens (N) exceed context window of M" as an InputError (else None)."""
    if isinstance(error, ValueError) and str(error).startswith("Requested tokens"):
        return InputError(f"{error}: shorten the text, start over, or open the model with a larger n_ctx")
    return None


def control_directions(setting: SteeringSetting) -> dict[int, np.ndarray]:
    """The residual additions of a setting: the control vectors of its profiles (times strength and weight)
    and its own control vector (times its multiplier), summed per layer."""
    parts = [p.control.scaled(setting.strength * w) for p, w in setting.profiles if p.control is not None]
    if setting.control is not None:
        parts.append(setting.control.vector.scaled(setting.control.multiplier))
    total: dict[int, np.ndarray] = {}
    for part in parts:
        for layer, direction in part.items():
            total[layer] = total[layer] + direction if layer in total else direction.copy()
    return total


def _apply_control(llm: SteeredLlama, directions: dict[int, np.ndarray]) -> None:
    """Set (or clear, when empty) the control vector of the context: direction L is added to layer L."""
    n_layers, n_embd = llm.shape.n_layers, llm.shape.widths["layer"]
    if not directions:
        status = llama_cpp.llama_set_adapter_cvec(llm.ctx, None, 0, n_embd, -1, -1)
    else:
        data = np.zeros((n_layers - 1, n_embd), dtype=np.float32)  # llama.cpp's buffer starts at layer 1
        for layer, direction in directions.items():
            data[layer - 1] = direction
        pointer = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        status = llama_cpp.llama_set_adapter_cvec(llm.ctx, pointer, data.size, n_embd, min(directions),
                                                  max(directions))
    if status != 0:
        raise RuntimeError(f"llama_set_adapter_cvec failed ({status})")
