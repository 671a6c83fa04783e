"""Answer log-likelihoods against a NumPy log-softmax of the reference model's logits."""

from __future__ import annotations

import numpy as np

from austeer_gguf.engine.decoder import forward
from austeer_gguf.evaluation.scoring import answer_rows, answer_tokens, token_logprobs

from conftest import open_steered
from reference import ReferenceModel


def numpy_logprob(reference: ReferenceModel, tokens: list[int], start: int) -> float:
    logits = reference.forward(tokens).logits
    total = 0.0
    for position in range(start, len(tokens)):
        row = logits[position - 1]
        total += row[tokens[position]] - (row.max() + np.log(np.exp(row - row.max()).sum()))
    return float(total)


def test_answer_logprob_matches_the_reference(tiny_f32):
    llm = open_steered(tiny_f32)
    reference = ReferenceModel(tiny_f32)
    for prompt, answer in [("the cat is", " very happy"), ("hello world", " and you"), ("I", " hate this day")]:
        tokens, start = answer_tokens(llm, prompt, answer)
        assert llm.detokenize(tokens[start:]).decode().strip() == answer.strip()
        expected = numpy_logprob(reference, tokens, start)
        (rows,) = forward(llm, [tokens], [answer_rows(tokens, start)])
        assert rows.shape[0] == len(tokens) - start  # only the rows that score the answer
        assert abs(token_logprobs(rows, tokens, start).sum() - expected) < 1e-3 * max(1.0, abs(expected))
