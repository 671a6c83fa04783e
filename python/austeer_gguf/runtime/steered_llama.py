"""`SteeredLlama`: a `llama_cpp.Llama` that steers, controlled through `.steering`."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import llama_cpp

from ..engine.hooked import HookedLlama
from ..engine.kv import KvRecord
from ..errors import InputError
from ..formats.embedded import embedded_profiles
from ..formats.profiles import resolve
from ..profile import Profile
from ..setting import SteeringSetting
from .steering import Steering


class SteeredLlama(HookedLlama):
    """A `llama_cpp.Llama` with AUSteer steering, controlled through `.steering`.

    `profile` may be a `Profile`, the name of a profile embedded in the model file, a path to a profile JSON
    file, or inline profile JSON (see `austeer_gguf.formats.profiles.resolve` for the order). Every other
    keyword goes to `HookedLlama` (eval_callback, rpc_servers, sequences) and on to `llama_cpp.Llama`.

    A completion runs under `steering.current()` as it is when the completion starts: the user's controls,
    or the setting of an enclosing `with llm.steering.using(setting):`. The prompt prefix llama-cpp-python
    would reuse from its KV cache is dropped whenever the setting differs from the one it was computed under.
    """

    def __init__(self, model_path: str | Path, profile: Profile | str | Path | None = None, *,
                 allow_model_mismatch: bool = False, **kwargs: Any) -> None:
        super().__init__(model_path, **kwargs)
        embedded = embedded_profiles(self.model_file.fields)
        self.steering = Steering(self.shape, self.fingerprint)
        self._kv = KvRecord()  # which settings the cached positions were computed under
        self._setting: SteeringSetting | None = None  # the setting of the running (or last) completion
        self._generating: SteeringSetting | None = None  # the setting of the generate() running now
        self._phase_is_prompt = True
        for name, why in embedded.broken.items():
            warnings.warn(f"{model_path}: embedded profile {name!r} is left out: {why} (remove it with "
                          f"`python -m austeer_gguf strip MODEL --name {name}`)", stacklevel=2)
        self.steering.add_profiles(embedded.profiles)
        if profile is not None:
            self.steering.set_profile(resolve(profile, embedded.profiles), allow_model_mismatch=allow_model_mismatch)

    def resolve_profile(self, spec: Profile | str | Path) -> Profile:
        """A profile named by the user: see `austeer_gguf.formats.profiles.resolve` for the order."""
        return resolve(spec, {name: self.steering.named(name) for name in self.steering.available})

    def current_setting(self) -> SteeringSetting:
        return self.steering.current()

    # ---- steering around every decode -----------------------------------------------------------------
    #
    # A completion runs under one setting. Its prompt positions are computed under setting.for_prompt() and its
    # generated positions under the setting itself (the two differ only for scope "generation"). The KV record
    # says which setting computed which cached positions; a cached prefix is reused only where it was computed
    # under the setting the new positions need.

    def generate(self, tokens: Sequence[int], *args: Any, **kwargs: Any):  # type: ignore[override]
        setting = self._start(self.steering.current())
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
            self.warn_once_if_skipped()

    def eval(self, tokens: Sequence[int]) -> None:
        if self._generating is None:
            # A plain eval: every position is a prompt position.
            prompt = self._start(self.steering.current()).for_prompt()
            reusable = self._kv.reusable(prompt, self.n_tokens)
            if reusable < self.n_tokens:
                tokens = list(self._input_ids[reusable:]) + list(tokens)
                self.n_tokens = reusable
            self.install(prompt)
            super().eval(tokens)
            self._kv = KvRecord(prompt, self.n_tokens, prompt)
            self.warn_once_if_skipped()
            return
        # Inside generate: the first eval holds the prompt (what was not reused), later ones generated tokens.
        self.install(self._generating.for_prompt() if self._phase_is_prompt else self._generating)
        super().eval(tokens)
        if self._phase_is_prompt:
            self._prompt_end = self.n_tokens  # the prompt's positions end here; generated ones follow
            self._phase_is_prompt = False

    def reset(self) -> None:
        super().reset()
        self._kv = KvRecord()  # what the engine's decoder leaves in the cache is nobody's prefix

    def _start(self, setting: SteeringSetting) -> SteeringSetting:
        self._setting = setting
        self._phase_is_prompt = True
        return setting

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
        self.install(self._start(self.steering.current()).for_prompt())
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

    @property
    def steering_in_effect(self) -> SteeringSetting | None:
        """The setting the last completion (or eval) ran under."""
        return self._setting


def context_overflow(error: Exception) -> InputError | None:
    """llama-cpp-python's "Requested tokens (N) exceed context window of M" as an InputError (else None)."""
    if isinstance(error, ValueError) and str(error).startswith("Requested tokens"):
        return InputError(f"{error}: shorten the text, start over, or open the model with a larger n_ctx")
    return None
