"""Log-likelihood of an answer after a prompt, from the logits rows that score it.

Row r of a sequence's logits predicts token r + 1, so the answer's tokens tokens[start:] are scored by rows
start - 1 .. len - 2 (`answer_rows`), which `engine.decoder.forward` computes without the rows before them.
"""

from __future__ import annotations

import numpy as np

from ..engine.decoder import common_prefix, forward
from ..setting import SteeringSetting


def log_softmax(logits: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    shifted = logits.astype(dtype) - logits.max(axis=-1, keepdims=True).astype(dtype)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def answer_tokens(llm, prompt: str, answer: str) -> tuple[list[int], int]:
    """Tokens of prompt + answer and the index where the answer starts (the first token not shared with
    the tokenization of the prompt alone)."""
    full = llm.tokenize((prompt + answer).encode("utf-8"), add_bos=True, special=True)
    alone = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
    return full, max(common_prefix(full, alone), 1)


def answer_rows(tokens: list[int], start: int) -> range:
    """The logits rows that score tokens[start:]."""
    return range(start - 1, len(tokens) - 1)


def token_logprobs(rows: np.ndarray, tokens: list[int], start: int) -> np.ndarray:
    """Log-probability of each of tokens[start:], from its rows (`answer_rows`)."""
    return log_softmax(rows)[np.arange(len(tokens) - start), tokens[start:]]


def answer_logprob(llm, prompt: str, answer: str, setting: SteeringSetting | None = None) -> float:
    """Sum of the log-probabilities of the answer's tokens after the prompt, under `setting` (default: the
    model's current setting)."""
    tokens, start = answer_tokens(llm, prompt, answer)
    (rows,) = forward(llm, [tokens], [answer_rows(tokens, start)], setting=setting)
    return float(token_logprobs(rows, tokens, start).sum())
