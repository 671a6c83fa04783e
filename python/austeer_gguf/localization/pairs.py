"""Contrastive pairs: reading JSONL, rendering (optionally through the model's chat template), tokenizing.

One pair a line, one of:
- ``{"prompt": P, "positive": A, "negative": B}``: texts P+A and P+B, plain concatenation (`--chat` renders
  P as one user turn through the model's chat template);
- ``{"positive": full_text, "negative": full_text}``;
- ``{"messages": [{"role": "user", "content": ...}, ...], "positive": A, "negative": B}``: the conversation is
  always rendered for the model that reads it (`austeer_gguf.conversation`), then A or B is the assistant's
  reply: localized in the format an assistant is used in.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..conversation import ROLES
from ..errors import InputError
from ..jsonfile import read_jsonl_objects

MAX_TURNS = 64


@dataclass(frozen=True)
class Pair:
    prompt: str
    positive: str
    negative: str
    messages: tuple[tuple[str, str], ...] = ()  # (role, content) turns before the reply; rendered per model


@dataclass(frozen=True)
class TokenPair:
    """A pair as tokens: the longest shared prefix, then each side's own tail (never empty)."""

    shared: list[int]
    positive_tail: list[int]
    negative_tail: list[int]

    @property
    def positive(self) -> list[int]:
        return self.shared + self.positive_tail

    @property
    def negative(self) -> list[int]:
        return self.shared + self.negative_tail


def load_pairs(path: str | Path) -> list[Pair]:
    path = Path(path)
    pairs = [_pair(where, data) for where, data in read_jsonl_objects(path, "pairs")]
    if not pairs:
        raise InputError(f"{path} holds no pairs: write one JSON object per line with 'positive' and "
                         "'negative' (and optionally 'prompt')")
    return pairs


def _pair(where: str, data: dict[str, Any]) -> Pair:
    messages = _messages(where, data["messages"]) if "messages" in data else ()
    if messages and "prompt" in data:
        raise InputError(f"{where}: give either 'prompt' or 'messages', not both")
    for key in ("positive", "negative"):
        if key not in data:
            raise InputError(f"{where}: missing field {key!r}")
    for key in ("prompt", "positive", "negative"):
        value = data.get(key, "")
        if not isinstance(value, str):
            raise InputError(f"{where}: field {key!r} must be a string")
        if key != "prompt" and not value.strip():
            raise InputError(f"{where}: field {key!r} is empty")
    return Pair(data.get("prompt", ""), data["positive"], data["negative"], messages)


def _messages(where: str, value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not value or len(value) > MAX_TURNS:
        raise InputError(f"{where}: 'messages' must be a list of 1..{MAX_TURNS} turns")
    turns = []
    for turn in value:
        if not isinstance(turn, dict) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
            raise InputError(f"{where}: each message needs a role ({', '.join(ROLES)}) and a string content")
        turns.append((turn["role"], turn["content"]))
    if turns[-1][0] == "assistant":
        raise InputError(f"{where}: the last message is the assistant's; the pair's answers are the reply to it")
    return tuple(turns)


def data_sha256(pairs: Iterable[Pair]) -> str:
    digest = hashlib.sha256()
    for pair in pairs:
        fields = [pair.prompt, pair.positive, pair.negative] + ([list(pair.messages)] if pair.messages else [])
        digest.update(json.dumps(fields).encode() + b"\n")
    return digest.hexdigest()


@dataclass
class TokenizedPairs:
    pairs: list[TokenPair]
    truncated: int  # pairs cut to fit max_tokens (the same number of leading tokens off both sides)
    identical: int  # pairs whose two sides tokenize identically (dropped)
    uneven: int = 0  # pairs whose shorter side would be cut away entirely to fit max_tokens (dropped)


def tokenize_pairs(pairs: Sequence[Pair], tokenize: Callable[[str], list[int]], *, max_tokens: int,
                   render_prompt: Callable[[str], str] | None = None,
                   render_messages: Callable[[Sequence[tuple[str, str]]], str] | None = None) -> TokenizedPairs:
    """Tokenize both full texts of every pair; cut over-long pairs from the front, equally on both sides."""
    out, truncated, identical, uneven = [], 0, 0, 0
    for index, pair in enumerate(pairs):
        if pair.messages:
            if render_messages is None:
                raise ValueError("pairs with messages need render_messages")
            prompt = render_messages(pair.messages)
        else:
            prompt = render_prompt(pair.prompt) if render_prompt else pair.prompt
        positive, negative = tokenize(prompt + pair.positive), tokenize(prompt + pair.negative)
        if positive == negative:
            identical += 1
            warnings.warn(f"pair #{index} renders identically on both sides and is skipped", stacklevel=2)
            continue
        excess = max(len(positive), len(negative)) - max_tokens
        if excess >= min(len(positive), len(negative)):
            uneven += 1
            warnings.warn(f"pair #{index}: its sides differ by more than {max_tokens} tokens, so cutting both to fit "
                          "would empty the shorter one; it is skipped", stacklevel=2)
            continue
        if excess > 0:
            truncated += 1
            positive, negative = positive[excess:], negative[excess:]
        shared = _shared_prefix_length(positive, negative)
        out.append(TokenPair(positive[:shared], positive[shared:], negative[shared:]))
    return TokenizedPairs(out, truncated, identical, uneven)


def _shared_prefix_length(a: list[int], b: list[int]) -> int:
    limit = min(len(a), len(b)) - 1  # each side keeps at least its last token
    length = 0
    while length < limit and a[length] == b[length]:
        length += 1
    return length
