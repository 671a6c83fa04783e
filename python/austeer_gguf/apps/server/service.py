"""The steering service behind the routes: the model, its profile library, the default steering, and turning
each request's `steering` object into one `SteeringSetting` (checked against the model once, then handed to
the completion as a value)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import anyio
import llama_cpp

from ... import conversation
from ...engine import limits
from ...engine.scheduler import Scheduler
from ...engine.threads import DecodeThread
from ...errors import InputError
from ...formats.embedded import check_name
from ...formats.model_file import ModelFile
from ...formats.profiles import profile_from_dict
from ...jsonfile import read_json_file
from ...profile import Profile, parse_mix
from ...runtime.steered_llama import SteeredLlama
from ...setting import SteeringSetting
from .batched import DRAIN_SECONDS
from .types import Conflict, SteeringRequest

MAX_PROFILES = 64  # profiles the library holds (embedded and loaded)


@dataclasses.dataclass(frozen=True)
class Defaults:
    """The server default each field of a request's `steering` falls back to (kept as parts: switching it off
    keeps its profiles for a request that switches it on)."""

    enabled: bool = True
    profiles: tuple[tuple[Profile, float], ...] = ()
    strength: float = 1.0
    scope: str = "all"

    def describe(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "profiles": {p.name: w for p, w in self.profiles},
                "strength": self.strength, "apply": self.scope}


class SteeringServer:
    """The model, its profiles and the default steering; completions either on the continuous-batching scheduler
    (`scheduler`, when the model's context holds several sequences) or one at a time under `lock`, on the one
    thread that decodes them (`decoding`; see engine.threads)."""

    def __init__(self, llm: SteeredLlama, alias: str, n_ctx: int | None = None, parallel: int | None = None) -> None:
        self.llm = llm
        self.alias = alias
        self.n_ctx = n_ctx or llm.n_ctx()  # what one request may use: prompt and reply
        self.sources = {name: "embedded" for name in llm.steering.available}
        self.lock = anyio.Lock()
        self.default = Defaults()
        self.drain_seconds = DRAIN_SECONDS  # how long a shutdown lets streams run on (then an error event ends them)
        sequences = int(llama_cpp.llama_n_seq_max(llm.ctx))
        self.scheduler = Scheduler(llm, slots=parallel).start() if sequences > 1 else None
        self.decoding = DecodeThread() if self.scheduler is None else None

    @property
    def parallel(self) -> int:
        return len(self.scheduler.slots) if self.scheduler is not None else 1

    def close(self) -> None:
        """End the running jobs (their streams get an error event) and stop the scheduler."""
        if self.scheduler is not None:
            self.scheduler.close()
        if self.decoding is not None:
            self.decoding.close()

    def setting(self, request: SteeringRequest | None) -> SteeringSetting:
        """The setting a request asks for, its fields over the server default, checked against the model;
        InputError (400) otherwise."""
        return self.llm.steering.setting(**self._parts(request))

    def set_default(self, request: SteeringRequest) -> Defaults:
        parts = self._parts(request)
        self.llm.steering.setting(**parts)  # checked as a request would be
        self.default = Defaults(parts["enabled"], tuple(parts["profiles"]), parts["strength"], parts["scope"])
        return self.default

    def _parts(self, request: SteeringRequest | None) -> dict[str, Any]:
        request = request or SteeringRequest()
        base = self.default
        weights: list[tuple[Profile | str, float]] = list(base.profiles)
        if request.profiles is not None:
            weights = list(request.profiles.items())
        if request.profile is not None:
            named = {spec if isinstance(spec, str) else spec.name for spec, _ in weights}
            weights.append((self._inline(request.profile, also_named=named), 1.0))
        profiles = [(self.llm.steering.named(spec) if isinstance(spec, str) else spec, weight)
                    for spec, weight in weights]
        return {"profiles": profiles, "strength": base.strength if request.strength is None else request.strength,
                "enabled": base.enabled if request.enabled is None else request.enabled,
                "scope": base.scope if request.apply is None else request.apply}

    def _inline(self, data: Any, also_named: set[str]) -> Profile:
        """A request's inline profile: a valid name, and not a different profile under a library profile's name
        (a reply reports profiles by name, so one name must mean one profile; a name the request also gives in
        `profiles` is refused as named twice when the setting is made)."""
        profile = profile_from_dict(data)
        check_name(profile.name)
        clashes = profile.name in self.sources and profile.name not in also_named
        if clashes and self.llm.steering.named(profile.name) != profile:
            raise InputError(f"the inline profile {profile.name!r} differs from the server's profile of that name: "
                             "give it another name")
        return profile

    def add_profile(self, data: Any, *, replace: bool = False) -> Profile:
        """Add a profile to the library; one of the same name is replaced only when asked (and never an embedded
        one). The default keeps naming it, and runs the new one from the next request on."""
        profile = profile_from_dict(data)
        check_name(profile.name)
        source = self.sources.get(profile.name)
        if source == "embedded":
            raise Conflict(f"profile {profile.name!r} is embedded in the model; add yours under another name")
        if source is not None and not replace:
            raise Conflict(f"a profile named {profile.name!r} is loaded already: add yours under another name, or "
                           "replace it (POST /v1/steering/profiles?replace=true)")
        if source is None and len(self.sources) >= MAX_PROFILES:
            raise InputError(f"the server holds {MAX_PROFILES} profiles, its limit: restart it with the ones you need")
        profile.check_model(self.llm.shape, self.llm.fingerprint)
        self.llm.steering.add_profiles({profile.name: profile})
        self.sources[profile.name] = "loaded"
        if any(p.name == profile.name for p, _ in self.default.profiles):
            swapped = tuple((profile if p.name == profile.name else p, w) for p, w in self.default.profiles)
            self.default = dataclasses.replace(self.default, profiles=swapped)
        return profile

    def listing(self) -> dict[str, Any]:
        profiles = []
        for name in self.llm.steering.available:
            profile = self.llm.steering.named(name)
            profiles.append({"name": name, "source": self.sources.get(name, "loaded"), "sites": list(profile.sites),
                             "k": profile.k, "alpha": profile.alpha, "layers": list(profile.layers)})
        return {"object": "list", "data": profiles, "default": self.default.describe()}


def open_server(model: str | Path, *, profiles: list[str] = (), default: str | None = None, n_ctx: int = 2048,
                threads: int | None = None, strength: float = 1.0, apply: str = "all", parallel: int = limits.PARALLEL,
                flash_attn: bool = True, kv_unified: bool = True, **llama_kwargs: Any) -> SteeringServer:
    """A SteeringServer for a model file: `profiles` are profile JSON files loaded beside the embedded ones;
    `default` names the default mix ("polite", "polite:0.5+positive"); without it, the only profile there is.
    `parallel` requests are decoded together, each with up to `n_ctx` tokens (1: one at a time), all slots on one
    KV cache (`kv_unified`), or each on a KV stream of its own (llama-server's default layout: a row attends over
    its own slot's cells only, but llama.cpp then computes a step as several micro-batches whenever the running
    slots' ids are not consecutive or a prompt is admitted; slower here, `reports/bench_server_kv_streams.txt`).

    Flash attention is on unless `flash_attn` is False, as llama-server's default ("auto") resolves on CPU, CUDA
    and Metal (llama-cpp-python turns it off by default): the plain path multiplies and softmaxes every cell a
    row's mask hides, where flash attention skips them, which matters most on a unified cache."""
    limits.check_count(parallel, "parallel", 1, limits.MAX_SEQUENCES, "llama.cpp's limit on sequences")
    model_file = ModelFile.open(model)
    n_ctx = limits.check_context(n_ctx, model_file)  # one request's context (the spare sequence ids hold no request)
    if parallel > 1:  # on one cache, as many sequence ids again hold prompts idle slots computed (Scheduler)
        parked = min(parallel, limits.MAX_SEQUENCES - parallel) if kv_unified else 0
        llama_kwargs.update(sequences=parallel + parked, kv_unified=kv_unified, n_batch=min(512, n_ctx * parallel))
    llm = SteeredLlama(str(model), model_file=model_file, n_ctx=n_ctx * parallel, n_threads=threads,
                       n_threads_batch=threads, verbose=False, flash_attn=flash_attn, **llama_kwargs)
    llm.chat_handler = conversation.chat_handler(llm)  # one-at-a-time chats are written as the batched ones
    server = SteeringServer(llm, Path(model).name, n_ctx, parallel)
    for path in profiles:
        try:
            server.add_profile(read_json_file(Path(path), "profile"))
        except Conflict as clash:
            raise InputError(f"{path}: {clash}") from None
    names = list(llm.steering.available)
    only = {names[0]: 1.0} if len(names) == 1 else {}
    mix = only if default is None else dict(parse_mix(default))
    server.set_default(SteeringRequest(profiles=mix, strength=strength, apply=apply))
    return server
