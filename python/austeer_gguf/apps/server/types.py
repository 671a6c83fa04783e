"""The request bodies the server takes: llama-cpp-python's OpenAI request types with a `steering` object."""

from __future__ import annotations

from typing import Any, Literal

from llama_cpp.server.types import CreateChatCompletionRequest, CreateCompletionRequest
from pydantic import BaseModel, ConfigDict, Field

from ...errors import InputError

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
    model_config = ConfigDict(extra="allow")  # unknown fields are kept, so that guards can name them
    steering: SteeringRequest | None = None


class CompletionRequest(CreateCompletionRequest):
    model_config = ConfigDict(extra="allow")
    steering: SteeringRequest | None = None


# OpenAI request fields this server knows but does not use: accepted and ignored, as llama-cpp-python's server
# ignores what it does not use. Any other field is refused with a message naming it (a misspelt `max_token`
# must not silently give a default-length reply).
IGNORED_FIELDS = {"store", "metadata", "service_tier", "parallel_tool_calls", "modalities", "prediction",
                  "reasoning_effort", "web_search_options", "audio", "stream_options", "max_completion_tokens"}


class Conflict(InputError):
    """A request that clashes with what the server holds (answered 409)."""


class Unauthorized(InputError):
    """A request without the server's API key (answered 401)."""
