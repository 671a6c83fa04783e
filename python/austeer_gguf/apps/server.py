"""`python -m austeer_gguf serve MODEL`: an OpenAI-compatible server with per-request steering, and the desktop
assistant page at `/`.

Built on llama-cpp-python's own server stack (its `server` extra: FastAPI, uvicorn, sse-starlette, and its
request types, error formatting and threadpool helpers), hosting one `SteeredLlama`:

- `POST /v1/chat/completions`, `POST /v1/completions` (streaming by server-sent events), `GET /v1/models`;
  a request may carry a `steering` object (OpenAI clients send it with `extra_body`):
  `{"profiles": {"polite": 1.0}, "enabled": true, "strength": 1.0, "apply": "all" | "generation",
  "profile": {...an inline profile...}}`; fields left out take the server default. Every response (every
  chunk of a stream) says the setting it ran under in `steering`.
- `GET /v1/steering` lists the profiles (embedded and loaded) and the default; `PUT /v1/steering` sets the
  default; `POST /v1/steering/profiles` adds a validated profile.

One completion runs at a time (the model has one KV cache); a request holds the model from its first to its
last token, so no request's setting can leak into another's, and the prefix cache is reused only where it
was computed under the setting a request needs (SteeredLlama's KV record). A client that disconnects mid-stream
stops its generation and frees the model. Bad requests get a 4xx whose message says what to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from collections.abc import AsyncIterator, Iterator
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import anyio
import llama_cpp
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from llama_cpp.server.app import prepare_request_resources
from llama_cpp.server.errors import RouteErrorHandler
from llama_cpp.server.types import CreateChatCompletionRequest, CreateCompletionRequest
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from .._version import __version__
from ..errors import InputError
from ..ggufio.metadata import check_name
from ..jsonfile import load_json, read_json_file
from ..localization.pairs import ROLES, conversation_renderer
from ..profile import Profile, check_strength, parse_mix
from ..runtime import limits
from ..runtime.steered_llama import SteeredLlama
from ..runtime.steering import native_units

MAX_BODY_BYTES = 1 << 20
STATIC = "static"
# What the server passes to llama-cpp-python's completion functions; everything else in a request is ignored,
# as llama-cpp-python's own server does.
EXCLUDED = {"n", "best_of", "logit_bias_type", "user", "min_tokens", "steering", "model"}


class SteeringRequest(BaseModel):
    """The per-request steering object; a field left out takes the server default."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool | None = None
    profiles: dict[str, float] | None = Field(None, description="profile name -> weight")
    profile: dict[str, Any] | None = Field(None, description="an inline profile (profile JSON), weight 1")
    strength: float | None = None
    apply: Literal["all", "generation"] | None = None


class ChatRequest(CreateChatCompletionRequest):
    steering: SteeringRequest | None = None


class CompletionRequest(CreateCompletionRequest):
    steering: SteeringRequest | None = None


@dataclasses.dataclass(frozen=True)
class RequestedSteering:
    """A request's steering, resolved against the server default and checked: what the runtime is configured
    with for the request's completion."""

    enabled: bool
    profiles: tuple[tuple[Profile, float], ...]
    strength: float
    scope: str

    def describe(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "profiles": {p.name: w for p, w in self.profiles},
                "strength": self.strength, "apply": self.scope}


class SteeringServer:
    """The model, its profiles, the default setting and the lock that serializes completions."""

    def __init__(self, llm: SteeredLlama, alias: str, default: SteeringRequest | None = None) -> None:
        self.llm = llm
        self.alias = alias
        self.sources = {name: "embedded" for name in llm.steering.available}
        self.lock = anyio.Lock()
        self.default = RequestedSteering(True, (), 1.0, "all")
        self.default = self.resolve(default or SteeringRequest())

    # ---- settings -------------------------------------------------------------------------------------

    def resolve(self, request: SteeringRequest | None) -> RequestedSteering:
        """The steering a request asks for, checked as the runtime checks it (profile names, weights, fit,
        factor range); InputError (400) otherwise."""
        request = request or SteeringRequest()
        base = self.default
        steering = self.llm.steering
        weights: list[tuple[Profile | str, float]] = list(base.profiles)
        if request.profiles is not None:
            weights = list(request.profiles.items())
        if request.profile is not None:
            weights.append((Profile.from_dict(request.profile), 1.0))
        profiles = steering.resolve(weights)
        strength = base.strength if request.strength is None else check_strength(request.strength)
        native_units(profiles, strength)  # refuses a factor out of range before any decode
        return RequestedSteering(base.enabled if request.enabled is None else request.enabled, profiles, strength,
                                 base.scope if request.apply is None else request.apply)

    def add_profile(self, data: Any) -> Profile:
        profile = Profile.from_dict(data)
        check_name(profile.name)
        if self.sources.get(profile.name) == "embedded":
            raise InputError(f"profile {profile.name!r} is embedded in the model; add yours under another name")
        profile.check_model(self.llm.shape, self.llm.fingerprint)
        self.llm.steering.add_profiles({profile.name: profile})
        self.sources[profile.name] = "loaded"
        return profile

    def listing(self) -> dict[str, Any]:
        profiles = []
        for name in self.llm.steering.available:
            profile = self.llm.steering.named(name)
            profiles.append({"name": name, "source": self.sources.get(name, "loaded"), "sites": list(profile.sites),
                             "k": profile.k, "alpha": profile.alpha, "layers": list(profile.layers)})
        return {"object": "list", "data": profiles, "default": self.default.describe()}

    # ---- completions ----------------------------------------------------------------------------------

    def check_request(self, body: ChatRequest | CompletionRequest) -> RequestedSteering:
        """Everything about a request that can be refused before any token is decoded (so that a streamed
        request is refused with a 4xx too, not after its 200 has gone out)."""
        n_ctx = self.llm.n_ctx()
        if body.max_tokens is not None:
            limits.check_max_tokens(body.max_tokens, n_ctx)
        if body.temperature is not None and not (math.isfinite(body.temperature) and 0 <= body.temperature <= 100):
            raise InputError(f"temperature must be a finite number in 0..100, got {body.temperature}")
        if getattr(body, "logprobs", None) or getattr(body, "top_logprobs", None):
            raise InputError("this server does not return log-probabilities: leave out logprobs and top_logprobs")
        if body.grammar is not None:
            self._check_grammar(body.grammar)
        if body.logit_bias:
            vocabulary = self.llm.n_vocab()
            for key in body.logit_bias:
                if body.logit_bias_type != "tokens" and not (key.isascii() and key.isdigit()
                                                             and int(key) < vocabulary):
                    raise InputError(f"logit_bias key {key!r} is not a token id below {vocabulary}")
        tokens = self._prompt_tokens(body)
        if tokens is not None and tokens >= n_ctx:
            raise InputError(f"Requested tokens ({tokens}) exceed context window of {n_ctx}: this model's maximum "
                             f"context length is {n_ctx} tokens; shorten the prompt or the messages")
        return self.resolve(body.steering)

    def _check_grammar(self, grammar: str) -> None:
        """llama.cpp returns no sampler for a grammar it cannot parse, and llama-cpp-python then crashes the
        process adding it: parse it here first."""
        if len(grammar) > 1 << 16:
            raise InputError("the grammar is over 64 KiB: send a shorter one")
        vocabulary = llama_cpp.llama_model_get_vocab(self.llm.model)
        sampler = llama_cpp.llama_sampler_init_grammar(vocabulary, grammar.encode("utf-8"), b"root")
        if not sampler:
            raise InputError("the grammar does not parse as GBNF with a `root` rule: fix it or leave it out")
        llama_cpp.llama_sampler_free(sampler)

    def _prompt_tokens(self, body) -> int | None:
        """The prompt's length in tokens, as the completion will see it (None when it cannot be told here)."""
        if isinstance(body, CompletionRequest):
            return len(self.llm.tokenize(str(body.prompt).encode("utf-8"), add_bos=True, special=True))
        turns = [(m.get("role"), m.get("content")) for m in body.messages]
        if body.tools or body.functions or not all(role in ROLES and isinstance(text, str) for role, text in turns):
            return None
        rendered = conversation_renderer(self.llm)(turns)
        return len(self.llm.tokenize(rendered.encode("utf-8"), add_bos=True, special=True))

    def run(self, requested: RequestedSteering, body, call: str, kwargs: dict[str, Any]) -> tuple[Any, dict]:
        """One completion (the caller holds the lock): its result, and the setting it runs under. llama-cpp-
        python's own server code turns the request's grammar, logit bias and min_tokens into call arguments."""
        setting = self.llm.steering.configure(profiles=list(requested.profiles), strength=requested.strength,
                                              enabled=requested.enabled, scope=requested.scope)
        llm = prepare_request_resources(body, lambda _model: self.llm, None, kwargs)
        return getattr(llm, call)(**kwargs), setting.describe()


# ---- HTTP ------------------------------------------------------------------------------------------------


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}},
                        status_code=status)


def _validation_message(error: RequestValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
        if item.get("type") == "json_invalid":
            return f"the request body is not valid JSON ({item.get('ctx', {}).get('error', 'malformed')}): send JSON"
        parts.append(f"{where or 'body'}: {item.get('msg')}")
    return "; ".join(parts) + " (see the OpenAI API reference and the steering object in the README)"


class SteeringRoute(RouteErrorHandler):
    """llama-cpp-python's route class (OpenAI-style errors, its context-length message), with bad input as
    400 (a body that is not JSON or not valid, an unknown profile, a number out of range) and HTTP errors (413)
    in the same OpenAI error format."""

    def get_route_handler(self):
        handler = super(RouteErrorHandler, self).get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except HTTPException as error:
                return _error(error.status_code, str(error.detail))
            except RequestValidationError as error:
                return _error(400, _validation_message(error))
            except InputError as error:
                return _error(400, str(error))
            except Exception as error:  # llama-cpp-python's messages (context length), else 500
                body = None
                with contextlib.suppress(Exception):
                    data = json.loads(await request.body())
                    body = (CreateChatCompletionRequest if "messages" in data else CreateCompletionRequest)(**data)
                status, message = self.error_message_wrapper(error=error, body=body)
                return JSONResponse({"error": message}, status_code=status)

        return route


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413 before it is read whole."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _error(413, f"the request body is over {self.limit} bytes: send less")(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:  # FastAPI passes an HTTPException on as it is
                raise HTTPException(413, f"the request body is over {self.limit} bytes: send less")
            return message

        await self.app(scope, limited, send)


def create_app(server: SteeringServer) -> FastAPI:
    app = FastAPI(title="austeer-gguf", version=__version__)
    app.add_middleware(BodyLimit)
    router = APIRouter(route_class=SteeringRoute)

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request, body: ChatRequest):
        return await _complete(server, request, body, "create_chat_completion")

    @router.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest):
        if isinstance(body.prompt, list):
            if len(body.prompt) > 1:
                raise InputError("send one prompt per request")
            body.prompt = body.prompt[0] if body.prompt else ""
        return await _complete(server, request, body, "create_completion")

    @router.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": server.alias, "object": "model", "owned_by": "me",
                                            "permissions": []}]}

    @router.get("/v1/steering")
    async def get_steering():
        return server.listing()

    @router.put("/v1/steering")
    async def put_steering(body: SteeringRequest):
        async with server.lock:
            server.default = server.resolve(body)
        return {"default": server.default.describe()}

    @router.post("/v1/steering/profiles", status_code=201)
    async def post_profile(request: Request):
        try:
            text = (await request.body()).decode("utf-8")
        except UnicodeDecodeError:
            raise InputError("the request body is not UTF-8: send a profile JSON object") from None
        data = load_json(text, "the request body")
        async with server.lock:
            profile = server.add_profile(data)
        return {"name": profile.name, "k": profile.k, "sites": list(profile.sites)}

    app.include_router(router)

    @app.get("/", include_in_schema=False)
    async def page():
        return HTMLResponse(_asset("index.html"))

    @app.get("/static/{name}", include_in_schema=False)
    async def asset(name: str):
        kinds = {".js": "text/javascript", ".css": "text/css", ".png": "image/png", ".svg": "image/svg+xml"}
        suffix = Path(name).suffix
        if "/" in name or suffix not in kinds:
            raise HTTPException(404)
        try:
            data = _asset_bytes(name)
        except FileNotFoundError:
            raise HTTPException(404) from None
        return Response(data, media_type=kinds[suffix])

    return app


def _asset_bytes(name: str) -> bytes:
    return (resources.files("austeer_gguf.apps") / STATIC / name).read_bytes()


def _asset(name: str) -> str:
    return _asset_bytes(name).decode("utf-8")


async def _complete(server: SteeringServer, request: Request, body, call: str):
    requested = server.check_request(body)
    kwargs = body.model_dump(exclude=EXCLUDED)
    if kwargs.get("stream"):
        return EventSourceResponse(_stream(server, request, requested, body, call, kwargs), sep="\n")
    async with server.lock:
        if await request.is_disconnected():
            raise HTTPException(400, "client closed the request")
        result, described = await run_in_threadpool(server.run, requested, body, call, kwargs)
    return {**result, "model": server.alias, "steering": described}


async def _stream(server: SteeringServer, request: Request, requested: RequestedSteering, body, call: str,
                  kwargs: dict) -> AsyncIterator[dict]:
    async with server.lock:
        chunks: Iterator[dict]
        chunks, described = await run_in_threadpool(server.run, requested, body, call, kwargs)
        try:
            async for chunk in iterate_in_threadpool(chunks):
                yield {"data": json.dumps({**chunk, "model": server.alias, "steering": described})}
                if await request.is_disconnected():
                    return
            yield {"data": "[DONE]"}
        finally:
            # Stop the generation in this request's turn (not when the generator is collected later, while
            # another request is running) and free the model for the next request, also when cancelled.
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(getattr(chunks, "close", lambda: None))


def open_server(model: str | Path, *, profiles: list[str] = (), default: str | None = None, n_ctx: int = 2048,
                threads: int | None = None, strength: float = 1.0, apply: str = "all",
                **llama_kwargs: Any) -> SteeringServer:
    """A SteeringServer for a model file: `profiles` are profile JSON files loaded beside the embedded ones;
    `default` names the default mix ("polite", "polite:0.5+positive"); without it, the only profile there is."""
    llm = SteeredLlama(str(model), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False,
                       **llama_kwargs)
    server = SteeringServer(llm, Path(model).name)
    for path in profiles:
        server.add_profile(read_json_file(Path(path), "profile"))
    names = list(llm.steering.available)
    only = {names[0]: 1.0} if len(names) == 1 else {}
    mix = only if default is None else dict(parse_mix(default))
    server.default = server.resolve(SteeringRequest(profiles=mix, strength=strength, apply=apply))
    return server


def serve(server: SteeringServer, *, host: str = "127.0.0.1", port: int = 8080) -> None:
    import uvicorn

    uvicorn.run(create_app(server), host=host, port=port, log_level="warning")
