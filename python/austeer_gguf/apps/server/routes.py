"""The HTTP routes: OpenAI chat and text completions (streaming by server-sent events), the steering
endpoints, and the assistant page with its static files."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from llama_cpp.server.app import prepare_request_resources

from ..._version import __version__
from ...errors import InputError
from ...jsonfile import load_json
from ...setting import SteeringSetting
from . import batched
from .guards import BodyLimit, SteeringRoute, check_key, check_request
from .service import SteeringServer
from .types import EXCLUDED, ChatRequest, CompletionRequest, SteeringRequest

STATIC = "static"
STATIC_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png", ".svg": "image/svg+xml"}


def create_app(server: SteeringServer, api_key: str | None = None) -> FastAPI:
    """The app; with `api_key`, every route that completes or changes state asks for it (`Authorization: Bearer
    KEY`, as OpenAI clients send it, or `X-Api-Key`)."""
    app = FastAPI(title="austeer-gguf", version=__version__)
    app.add_middleware(BodyLimit)
    router = APIRouter(route_class=SteeringRoute)
    def key_checked(request: Request) -> None:
        check_key(request, api_key)

    keyed = [Depends(key_checked)]

    @router.post("/v1/chat/completions", dependencies=keyed)
    async def chat_completions(request: Request, body: ChatRequest):
        return await _complete(server, request, body, "create_chat_completion")

    @router.post("/v1/completions", dependencies=keyed)
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

    @router.put("/v1/steering", dependencies=keyed)
    async def put_steering(body: SteeringRequest):
        async with server.lock:
            default = server.set_default(body)
        return {"default": default.describe()}

    @router.post("/v1/steering/profiles", status_code=201, dependencies=keyed)
    async def post_profile(request: Request, replace: bool = False):
        try:
            text = (await request.body()).decode("utf-8")
        except UnicodeDecodeError:
            raise InputError("the request body is not UTF-8: send a profile JSON object") from None
        data = load_json(text, "the request body")
        async with server.lock:
            profile = server.add_profile(data, replace=replace)
        return {"name": profile.name, "k": profile.k, "sites": list(profile.sites)}

    app.include_router(router)

    @app.get("/", include_in_schema=False)
    async def page():
        return HTMLResponse(_asset_bytes("index.html").decode("utf-8"))

    @app.get("/static/{name}", include_in_schema=False)
    async def asset(name: str):
        suffix = Path(name).suffix
        if not STATIC_NAME.match(name) or suffix not in STATIC_TYPES:
            raise HTTPException(404)
        try:
            data = _asset_bytes(name)
        except FileNotFoundError:
            raise HTTPException(404) from None
        return Response(data, media_type=STATIC_TYPES[suffix])

    return app


def _asset_bytes(name: str) -> bytes:
    return (resources.files("austeer_gguf.apps.server") / STATIC / name).read_bytes()


def _run(server: SteeringServer, setting: SteeringSetting, body, call: str, kwargs: dict[str, Any]) -> Any:
    """One completion under `setting` (the caller holds the lock and the setting's scope). llama-cpp-python's
    own server code turns the request's grammar, logit bias and min_tokens into call arguments."""
    llm = prepare_request_resources(body, lambda _model: server.llm, None, kwargs)
    return getattr(llm, call)(**kwargs)


async def _complete(server: SteeringServer, request: Request, body, call: str):
    check_request(server.llm, body, server.n_ctx)
    setting = server.setting(body.steering)
    if server.scheduler is not None:
        if body.stream:
            drain = batched.Drain(server.drain_seconds)
            return drain.response(batched.stream(server, request, body, setting, drain))
        return await batched.complete(server, request, body, setting)
    kwargs = body.model_dump(exclude=EXCLUDED | set(body.model_extra or {}))
    if kwargs.get("stream"):
        drain = batched.Drain(server.drain_seconds)
        return drain.response(_stream(server, request, setting, body, call, kwargs, drain))
    async with server.lock:
        if await request.is_disconnected():
            raise HTTPException(400, "client closed the request")
        with server.llm.steering.using(setting):
            result = await server.decoding.run(_run, server, setting, body, call, kwargs)
    return {**result, "model": server.alias, "steering": setting.describe()}


async def _stream(server: SteeringServer, request: Request, setting: SteeringSetting, body, call: str,
                  kwargs: dict, drain: batched.Drain) -> AsyncIterator[dict]:
    described = setting.describe()
    async with server.lock:
        with server.llm.steering.using(setting):  # the completion starts at the first chunk, within this block
            chunks: Iterator[dict] = await server.decoding.run(_run, server, setting, body, call, kwargs)
            try:
                async for chunk in server.decoding.iterate(chunks):
                    yield {"data": json.dumps({**chunk, "model": server.alias, "steering": described})}
                    if drain.expired():
                        yield batched.SHUT_DOWN
                        return
                    if await request.is_disconnected():
                        return
                yield {"data": "[DONE]"}
            finally:
                # Stop the generation in this request's turn (not when the generator is collected later, while
                # another request is running) and free the model for the next request, also when cancelled.
                with anyio.CancelScope(shield=True):
                    await server.decoding.run(getattr(chunks, "close", lambda: None))


def serve(server: SteeringServer, *, host: str = "127.0.0.1", port: int = 8080, api_key: str | None = None) -> None:
    import uvicorn

    try:
        uvicorn.run(create_app(server, api_key), host=host, port=port, log_level="warning")
    finally:
        server.close()
