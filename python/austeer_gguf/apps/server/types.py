"""The request bodies the server takes: llama-cpp-python's OpenAI request types with a `steering` object."""

from __future__ import annotations

from typing import Any, Literal

from llama_cpp.server.types import CreateChatCompletionRequest, CreateCompletionRequest
from pydantic import BaseModel, ConfigDict, Field

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
