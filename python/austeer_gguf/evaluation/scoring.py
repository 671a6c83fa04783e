"""Log-likelihood of an answer after a prompt under a (steered) model.

The model is opened with logits_all=True, which makes llama-cpp-python 0.3.36 compute and copy the logits of
every evaluated position. Scoring needs only the rows from the answer on, and sampling only the last: the
unembedding of Gemma-3's 262k-token vocabulary costs more per position than its layers, so the positions
before those rows are evaluated without logits (`logits_from`, `last_logits_only`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def answer_tokens(llm, prompt: str, answer: str) -> tuple[list[int], int]:
    """Tokens of prompt + answer and the index where the answer starts (the first token not shared with
    the tokenization of the prompt alone)."""
    full = llm.tokenize((prompt + answer).encode("utf-8"), add_bos=True, special=True)
    alone = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
    start = 0
    while start < min(len(full), len(alone)) and full[start] == alone[start]:
        start += 1
    return full, max(start, 1)


def token_logprobs(llm, tokens: list[int], start: int) -> np.ndarray:
    """Log-probability of each of tokens[start:], read from the logits rows the last eval left in
    `llm.scores` (the model must be opened with logits_all=True and hold `tokens`)."""
    rows = np.asarray(llm.scores[start - 1: len(tokens) - 1])
    return log_softmax(rows)[np.arange(len(tokens) - start), tokens[start:]]


def answer_logprobs(llm, prompt: str, answer: str) -> np.ndarray:
    """Log-probability of each of the answer's tokens after the prompt. `llm` must be opened with logits_all=True."""
    tokens, start = answer_tokens(llm, prompt, answer)
    logits_from(llm, tokens, start - 1)
    return token_logprobs(llm, tokens, start)


def answer_logprob(llm, prompt: str, answer: str) -> float:
    """Sum of the log-probabilities of the answer's tokens."""
    return float(answer_logprobs(llm, prompt, answer).sum())


def logits_from(llm, tokens: list[int], first_row: int) -> None:
    """Evaluate `tokens` on an empty cache, with logits rows (in `llm.scores`) from `first_row` on only."""
    llm.reset()
    if first_row > 0:
        with last_logits_only(llm):
            llm.eval(tokens[:first_row])
    llm.eval(tokens[first_row:])


@contextlib.contextmanager
def last_logits_only(llm) -> Iterator[None]:
    """Evaluate without copying every position's logits: only the last position's are computed, in the
    context (where llama-cpp-python's sampler reads them); `llm.scores` is not written."""
    previous = llm._logits_all  # llama-cpp-python 0.3.36 reads it at every eval: the batch's logits flags
    llm._logits_all = False
    try:
        yield
    finally:
        llm._logits_all = previous
