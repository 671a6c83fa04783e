"""Does a reply answer its request? `evaluate.reply_relevance`: the reply's mean log-probability per token after its own
request minus after the next item's request, under the unsteered model.

Checked against the NumPy reference on the tiny model, then on SmolLM2: replies written for their requests (the
shipped positive-chat pairs) are likelier after their own request, and one stock reply given to every request
(the off-topic apology a detox toggle produced) is not: its relevances sum to zero around the cycle.
"""

from __future__ import annotations

import numpy as np
import pytest

from austeer_gguf import datasets
from austeer_gguf.evaluation import metrics
from austeer_gguf.evaluation.evaluate import Prompt, prompt_renderer, reply_logprobs, reply_relevance
from austeer_gguf.evaluation.scoring import answer_tokens
from austeer_gguf.localization.pairs import load_pairs

from conftest import open_steered
from reference import ReferenceModel

STOCK = " I'm sorry for your loss, but as a chatbot, I don't have the ability to access personal data."


def reference_mean_logprob(reference: ReferenceModel, tokens: list[int], start: int) -> float:
    logits = reference.forward(tokens).logits
    values = []
    for position in range(start, len(tokens)):
        row = logits[position - 1].astype(np.float64)
        values.append(row[tokens[position]] - (row.max() + np.log(np.exp(row - row.max()).sum())))
    return float(np.mean(values))


def test_relevance_is_the_log_probability_after_its_own_request_minus_after_the_next_one(tiny_f32):
    llm = open_steered(tiny_f32)
    reference = ReferenceModel(tiny_f32)
    prompts = [Prompt("the cat is", " so"), Prompt("I hate this", ""), Prompt("hello world", "")]
    texts = [" very happy", " day and you", ""]
    own, related = reply_relevance(llm, prompts, texts, chat=False)
    render = prompt_renderer(llm, False)
    for i in range(2):
        mine = reference_mean_logprob(reference, *answer_tokens(llm, render(prompts[i]), texts[i]))
        other = Prompt(prompts[i + 1].text, prompts[i].prefill)  # the next request, the reply's own prefill
        expected = mine - reference_mean_logprob(reference, *answer_tokens(llm, render(other), texts[i]))
        assert own[i] == pytest.approx(mine, abs=1e-3)  # test_scoring's tolerance for a float32 sum
        assert related[i] == pytest.approx(expected, abs=2e-3)  # a difference of two such sums
    assert related[2] is None and np.isnan(own[2])  # an empty reply is not measured
    alone, unrelated = reply_relevance(llm, prompts[:1], texts[:1], chat=False)
    assert unrelated == [None] and alone[0] == pytest.approx(own[0], abs=1e-3)  # a single prompt: nothing to compare
    assert own == pytest.approx(reply_logprobs(llm, prompts, texts, chat=False), abs=1e-3, nan_ok=True)
    assert metrics.relevant_rate(related) == float(np.mean([value > 0 for value in related[:2]]))
    assert metrics.relevant_rate([None]) is None


def test_on_smollm2_replies_written_for_their_request_answer_it_and_a_stock_reply_does_not(smollm2):
    from austeer_gguf.engine.hooked import HookedLlama

    pairs = load_pairs(datasets.pairs_path("positive-chat", "train"))[:40]
    prompts = [pair.messages[0][1] for pair in pairs]
    llm = HookedLlama.for_evaluation(smollm2, n_threads=2, n_threads_batch=2, verbose=False)
    try:
        for side in ("positive", "negative"):
            texts = [getattr(pair, side) for pair in pairs]
            _, matched = reply_relevance(llm, prompts, texts, chat=True)
            assert metrics.relevant_rate(matched) >= 0.85, side
        stock = [STOCK] * len(prompts)
        _, unrelated = reply_relevance(llm, prompts, stock, chat=True)
    finally:
        llm.close()
    # The same text around a cycle of requests: the differences cancel, up to how the reply's first tokens merge
    # with each request's end (per-token means of slightly different tokenizations).
    assert abs(np.mean(unrelated)) < 0.02
    assert metrics.relevant_rate(unrelated) <= 0.65
