"""Completions on the continuous-batching scheduler (`engine.scheduler`), in the OpenAI formats llama-cpp-python's
server answers with: a request becomes one `Job` (its prompt rendered through the model's chat template, its
setting, its sampling), joins the running batch, and its events become a response or a stream of chunks."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from ... import conversation
from ...engine.scheduler import Done, Failed, Job, Sampling, Text, logit_bias_of
from ...errors import InputError
from ...setting import SteeringSetting
from .types import ChatRequest, CompletionRequest


def job_of(server, body: ChatRequest | CompletionRequest, setting: SteeringSetting) -> Job:
    """The scheduler job a request asks for (InputError for what it cannot run)."""
    llm = server.llm
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    if isinstance(body, ChatRequest):
        prompt = conversation.renderer(llm)([(m["role"], m["content"]) for m in body.messages])
        stop += conversation.chat_stops(llm)
    else:
        prompt = str(body.prompt)
    tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
    limit = server.n_ctx - len(tokens)
    max_tokens = limit if body.max_tokens is None else min(body.max_tokens, limit)
    return Job(tokens, setting, sampling_of(llm, body), max(max_tokens, 1), tuple(s for s in stop if s),
               streamed=bool(body.stream))


def sampling_of(llm, body) -> Sampling:
    bias = {}
    if body.logit_bias:
        for key, value in body.logit_bias.items():
            if body.logit_bias_type == "tokens":  # text whose tokens get the bias, as llama-cpp-python's server does
                bias.update({token: value for token in llm.tokenize(key.encode("utf-8"), add_bos=False, special=True)})
            else:
                bias[int(key)] = value
    return Sampling(temperature=body.temperature, top_k=body.top_k, top_p=body.top_p, min_p=body.min_p,
                    repeat_penalty=body.repeat_penalty, frequency_penalty=body.frequency_penalty or 0.0,
                    presence_penalty=body.presence_penalty or 0.0, seed=body.seed, grammar=_grammar(body),
                    logit_bias=logit_bias_of(bias), min_tokens=body.min_tokens, mirostat=body.mirostat_mode,
                    mirostat_tau=body.mirostat_tau, mirostat_eta=body.mirostat_eta)


def _grammar(body) -> str | None:
    """The request's grammar, or the JSON grammar its response_format asks for (as llama-cpp-python's chat
    handler makes it)."""
    response_format = getattr(body, "response_format", None)
    if response_format is not None and response_format.get("type") == "json_object":
        from llama_cpp import llama_grammar

        schema = response_format.get("schema")
        return llama_grammar.json_schema_to_gbnf(json.dumps(schema)) if schema else llama_grammar.JSON_GBNF
    return body.grammar


# ---- responses -------------------------------------------------------------------------------------------


async def complete(server, request, body, setting: SteeringSetting) -> dict[str, Any]:
    """A whole response (the request waits for its job to end)."""
    job = server.scheduler.submit(job_of(server, body, setting))
    try:
        text, done = await run_in_threadpool(_collect, job)
    finally:
        server.scheduler.cancel(job)  # a no-op for a job that ended; frees the slot of one whose client left
    chat = isinstance(body, ChatRequest)
    text = _edited(body, text)
    choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
               "finish_reason": done.finish_reason} if chat else
              {"text": text, "index": 0, "logprobs": None, "finish_reason": done.finish_reason})
    return {"id": _id(chat), "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": server.alias, "choices": [choice], "usage": _usage(done), "steering": setting.describe()}


def _collect(job: Job) -> tuple[str, Done]:
    for event in job.stream():
        if isinstance(event, Failed):
            raise InputError(event.message)
        if isinstance(event, Done):
            return event.text, event
    raise RuntimeError("the job ended without an event")


DRAIN_SECONDS = 10.0  # by default, how long a shutdown lets running streams go on before it ends them
SHUT_DOWN = {"data": json.dumps({"error": {"message": "the server is shutting down: this reply was cut short; send the "
                                           "request again", "type": "server_error"}})}


class Drain:
    """One stream's view of a server shutdown (SIGTERM, SIGINT): the stream goes on for up to `seconds`, and
    then ends with an error event, so that no client takes a cut reply for a whole one."""

    def __init__(self, seconds: float = DRAIN_SECONDS) -> None:
        self.seconds = seconds
        self.event = anyio.Event()  # set by sse-starlette when the server starts shutting down
        self._deadline: float | None = None

    def expired(self) -> bool:
        if not self.event.is_set():
            return False
        if self._deadline is None:
            self._deadline = time.monotonic() + 0.8 * self.seconds  # before sse-starlette cancels the stream
        return time.monotonic() >= self._deadline

    def response(self, events: AsyncIterator[dict]) -> EventSourceResponse:
        return EventSourceResponse(events, sep="\n", shutdown_event=self.event, shutdown_grace_period=self.seconds)


async def stream(server, request, body, setting: SteeringSetting, drain: Drain) -> AsyncIterator[dict]:
    """Server-sent events: one chunk per piece of text, then one with the finish reason, then [DONE]."""
    job = server.scheduler.submit(job_of(server, body, setting))
    chat = isinstance(body, ChatRequest)
    head = {"id": _id(chat), "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()), "model": server.alias}
    described = setting.describe()

    def chunk(piece: str | None, finish: str | None = None, role: bool = False) -> dict:
        if chat:
            delta = {"role": "assistant"} if role else ({"content": piece} if piece is not None else {})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"text": piece or "", "index": 0, "logprobs": None, "finish_reason": finish}
        return {"data": json.dumps({**head, "choices": [choice], "steering": described})}

    try:
        if chat:
            yield chunk(None, role=True)
        elif getattr(body, "echo", False):
            yield chunk(str(body.prompt))
        async for event in iterate_in_threadpool(job.stream()):
            if isinstance(event, Text):
                yield chunk(event.text)
            elif isinstance(event, Failed):
                yield {"data": json.dumps({"error": {"message": event.message, "type": "server_error"}})}
                return
            else:
                if not chat and getattr(body, "suffix", None):
                    yield chunk(body.suffix)
                yield chunk(None, event.finish_reason)
            if drain.expired():
                yield SHUT_DOWN
                return
            if await request.is_disconnected():
                return
        yield {"data": "[DONE]"}
    finally:
        server.scheduler.cancel(job)  # a client that went away frees its slot at the next step


def _edited(body, text: str) -> str:
    """What llama-cpp-python adds to a text completion: the prompt before it (echo), the suffix after it."""
    if isinstance(body, ChatRequest):
        return text
    return (str(body.prompt) if body.echo else "") + text + (body.suffix or "")


def _id(chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4()}"


def _usage(done: Done) -> dict[str, Any]:
    """OpenAI's usage, with the prompt tokens whose cells a slot kept from an earlier request (not computed again)
    as OpenAI reports cached prompt tokens."""
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": done.reused}}

