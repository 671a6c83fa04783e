"""The side-effect budgets and admission rules the comparisons use (the sweep and the build).

A setting is within a budget when its KL(steered || unsteered) on neutral text and the perplexity ratio of
its continuations are (tight: KL <= 0.1 and perplexity <= 1.1x; loose: 0.3 and 1.3x) and, on generation
tasks, its texts keep at least `DISTINCT2_RATIO` of the unsteered distinct bigrams (a loop has a low
perplexity: it passes the other two). Refusals of harmless requests may rise by at most `REFUSAL_SLACK`, and
the share of replies that answer their request (`evaluate.reply_relevance`) may fall by at most `RELEVANCE_SLACK`
(or one reply) where it was measured. The sweep's budgets (`Trial.within`) check KL, perplexity and distinct
bigrams; refusals and relevance are the build's.
"""

from __future__ import annotations

from dataclasses import dataclass

DISTINCT2_RATIO = 0.8  # distinct bigrams of generated texts, steered / unsteered, at least
REFUSAL_SLACK = 0.02  # harmless refusals may rise by at most this share
RELEVANCE_SLACK = 0.1  # the share of replies that answer their request may fall by at most this
PERPLEXITY_LIMIT = 1.1  # the tight budget's perplexity ratio, which the detox build's fluency rule uses


@dataclass(frozen=True)
class Budget:
    name: str
    kl: float
    perplexity: float
    distinct2: float = DISTINCT2_RATIO  # generation tasks only, on the dev texts


BUDGETS = (Budget("tight", 0.1, PERPLEXITY_LIMIT), Budget("loose", 0.3, 1.3))


def keeps_fluency(perplexity_ratio: float, distinct2: float, unsteered_distinct2: float) -> bool:
    return perplexity_ratio <= PERPLEXITY_LIMIT and distinct2 >= DISTINCT2_RATIO * unsteered_distinct2


def keeps_refusals(refusals: float | None, unsteered_refusals: float | None) -> bool:
    return refusals is None or unsteered_refusals is None or refusals <= unsteered_refusals + REFUSAL_SLACK


def relevance_slack(n_replies: int | None) -> float:
    """How far the share of replies that answer their request may fall: `RELEVANCE_SLACK`, or one reply when
    there are too few replies for that (a small dev split must not fail a trial on one reply)."""
    return max(RELEVANCE_SLACK, 1.0 / n_replies) if n_replies else RELEVANCE_SLACK


def keeps_relevance(relevant: float | None, unsteered_relevant: float | None, n_replies: int | None = None) -> bool:
    return (relevant is None or unsteered_relevant is None
            or relevant >= unsteered_relevant - relevance_slack(n_replies) - 1e-9)
