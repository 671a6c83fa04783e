"""Log-likelihood of an answer after a prompt under a (steered) model."""

from __future__ import annotations

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


def answer_logprob(llm, prompt: str, answer: str) -> float:
    """Sum of the log-probabilities of the answer's tokens. `llm` must be opened with logits_all=True."""
    tokens, start = answer_tokens(llm, prompt, answer)
    llm.reset()
    llm.eval(tokens)
    return float(token_logprobs(llm, tokens, start).sum())
