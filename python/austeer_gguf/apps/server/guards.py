"""What the server refuses, and how: everything about a request that can be refused before any token is
decoded (so that a streamed request is refused with a 4xx too, not after its 200 has gone out), bodies over
the size limit, and errors in the OpenAI format with a message that says what to do."""

from __future__ import annotations

import contextlib
import difflib
import hmac
import json
import math

import llama_cpp
from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from llama_cpp.server.errors import RouteErrorHandler
from llama_cpp.server.types import CreateChatCompletionRequest, CreateCompletionRequest
from starlette.exceptions import HTTPException as StarletteHTTPException

from ... import conversation
from ...engine import limits
from ...errors import InputError
from ...jsonfile import load_json
from ...runtime.steered_llama import SteeredLlama
from .types import IGNORED_FIELDS, ChatRequest, CompletionRequest, Conflict, Unauthorized

MAX_BODY_BYTES = 1 << 20


def check_request(llm: SteeredLlama, body: ChatRequest | CompletionRequest, n_ctx: int) -> None:
    """InputError (400) for a request that cannot run as asked (`n_ctx`: what one request may use). Chat
    messages whose content is a list of text parts (what OpenAI clients send for multi-part messages) are
    joined into text here, so that everything after sees text."""
    _check_fields(body)
    if isinstance(body, ChatRequest):
        body.messages = _text_messages(body.messages)
    if body.n not in (None, 1) or getattr(body, "best_of", 1) not in (None, 1):
        raise InputError("this server returns one choice per request: leave out n and best_of (or set them to 1), "
                         "and send several requests for several replies")
    if body.max_tokens is not None:
        limits.check_max_tokens(body.max_tokens, n_ctx)
    if body.temperature is not None and not (math.isfinite(body.temperature) and 0 <= body.temperature <= 100):
        raise InputError(f"temperature must be a finite number in 0..100, got {body.temperature}")
    if getattr(body, "logprobs", None) or getattr(body, "top_logprobs", None):
        raise InputError("this server does not return log-probabilities: leave out logprobs and top_logprobs")
    if body.grammar is not None:
        _check_grammar(llm, body.grammar)
    if body.logit_bias:
        vocabulary = llm.n_vocab()
        for key, value in body.logit_bias.items():
            if body.logit_bias_type != "tokens" and not (key.isascii() and key.isdigit() and int(key) < vocabulary):
                raise InputError(f"logit_bias key {key!r} is not a token id below {vocabulary}")
            if not (math.isfinite(value) and -100 <= value <= 100):
                raise InputError(f"logit_bias value {value!r} of {key!r} must be a number in -100..100 (as in the "
                                 "OpenAI API)")
    tokens = _prompt_tokens(llm, body)
    if tokens is not None and tokens >= n_ctx:
        raise InputError(f"Requested tokens ({tokens}) exceed context window of {n_ctx}: this model's maximum "
                         f"context length is {n_ctx} tokens; shorten the prompt or the messages")


def _check_fields(body) -> None:
    unknown = sorted(set(body.model_extra or {}) - IGNORED_FIELDS)
    if unknown:
        known = [*type(body).model_fields, *IGNORED_FIELDS]
        hints = [f"{name!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(name, known, 1))
                 else repr(name) for name in unknown]
        raise InputError(f"unknown field {', '.join(hints)}: leave it out, or put steering options under `steering`")
    extra = body.model_extra or {}
    if body.max_tokens is None and isinstance(extra.get("max_completion_tokens"), int):
        body.max_tokens = extra["max_completion_tokens"]


def _text_messages(messages: list) -> list:
    """Messages with text content: a list of text parts is joined with newlines; other parts are refused."""
    if not messages:
        raise InputError("messages is empty: send at least one message (for example a user turn)")
    out = []
    for index, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise InputError(f"messages[{index}] has a {kind!r} part: this model reads text only (send "
                                     "{\"type\": \"text\", \"text\": ...} parts)")
                texts.append(part["text"])
            message = {**message, "content": "\n".join(texts)}
        out.append(message)
    return out


def _check_grammar(llm: SteeredLlama, grammar: str) -> None:
    """llama.cpp returns no sampler for a grammar it cannot parse, and llama-cpp-python then crashes the
    process adding it: parse it here first."""
    if len(grammar) > 1 << 16:
        raise InputError("the grammar is over 64 KiB: send a shorter one")
    vocabulary = llama_cpp.llama_model_get_vocab(llm.model)
    sampler = llama_cpp.llama_sampler_init_grammar(vocabulary, grammar.encode("utf-8"), b"root")
    if not sampler:
        raise InputError("the grammar does not parse as GBNF with a `root` rule: fix it or leave it out")
    llama_cpp.llama_sampler_free(sampler)


def _prompt_tokens(llm: SteeredLlama, body) -> int | None:
    """The prompt's length in tokens, as the completion will see it (None when it cannot be told here)."""
    if isinstance(body, CompletionRequest):
        return len(llm.tokenize(str(body.prompt).encode("utf-8"), add_bos=True, special=True))
    turns = [(m.get("role"), m.get("content")) for m in body.messages]
    if body.tools or body.functions or not all(role in conversation.ROLES and isinstance(text, str)
                                               for role, text in turns):
        return None
    rendered = conversation.renderer(llm)(turns)
    return len(llm.tokenize(rendered.encode("utf-8"), add_bos=True, special=True))


def check_key(request: Request, api_key: str | None) -> None:
    """Unauthorized (401) unless the request carries the server's key (when it has one)."""
    if api_key is None:
        return
    given = request.headers.get("x-api-key", "")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        given = token.strip()
    if not hmac.compare_digest(given.encode(), api_key.encode()):
        raise Unauthorized("this server needs its API key: send `Authorization: Bearer KEY` (the OpenAI clients' "
                           "api_key) or `X-Api-Key: KEY`")


# ---- errors in the OpenAI format --------------------------------------------------------------------------


def error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}},
                        status_code=status)


def _validation_message(failure: RequestValidationError) -> str:
    parts = []
    for item in failure.errors()[:5]:
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
            except StarletteHTTPException as failure:
                if failure.status_code == 400 and "parsing the body" in str(failure.detail):
                    return error(400, await _body_problem(request))
                return error(failure.status_code, str(failure.detail))
            except RequestValidationError as failure:
                return error(400, _validation_message(failure))
            except Unauthorized as failure:
                return error(401, str(failure), "authentication_error")
            except Conflict as failure:
                return error(409, str(failure))
            except InputError as failure:
                return error(400, str(failure))
            except Exception as failure:  # llama-cpp-python's messages (context length), else 500
                body = None
                with contextlib.suppress(Exception):
                    data = json.loads(await request.body())
                    body = (CreateChatCompletionRequest if "messages" in data else CreateCompletionRequest)(**data)
                status, message = self.error_message_wrapper(error=failure, body=body)
                return JSONResponse({"error": message}, status_code=status)

        return route


async def _body_problem(request: Request) -> str:
    """What is wrong with a body FastAPI could not parse, in words that say what to do."""
    raw = await request.body()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "the request body is not UTF-8 text: send JSON encoded as UTF-8"
    try:
        load_json(text, "the request body")
    except InputError as problem:
        return str(problem)
    return "the request body could not be parsed: send a JSON object"


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413 before it is read whole."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await error(413, f"the request body is over {self.limit} bytes: send less")(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:  # FastAPI passes an HTTPException on as it is
                raise HTTPException(413, f"the request body is over {self.limit} bytes: send less")
            return message

        await self.app(scope, limited, send)
