"""A judge for a behaviour the project has never seen, learned from the user's own pairs.

When a user builds a profile from their own pairs (`build MODEL pairs.jsonl --prompts ...`), no ready-made
metric knows their behaviour. The pairs themselves say what it is: a word and character n-gram logistic
regression is fitted on the replies of most pairs (wanted side 1, unwanted side 0) and checked on the replies
of the pairs it never saw. Its held-out balanced accuracy is reported on the card; below `MIN_ACCURACY` the
build is refused, because a judge that cannot tell the pairs' own sides apart cannot score replies either.

It is a proxy: it learned the pairs' wording, and the model's replies may say the same thing in other words.
Where a built-in metric measures the behaviour (`--metric sentiment`, `rude`, `words`), prefer it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from ..localization.pairs import Pair
from . import metrics

MIN_PAIRS = 40  # 8 held out: 16 replies to check the judge on
HELD_OUT_SHARE = 0.2
MIN_ACCURACY = 0.75


@dataclass
class PairJudge:
    model: Any  # the fitted scikit-learn pipeline
    held_out_accuracy: float  # balanced, on the replies of the held-out pairs
    n_train: int  # pairs fitted on
    n_held_out: int

    @classmethod
    def fit(cls, pairs: Sequence[Pair], *, seed: int = 0) -> PairJudge:
        """Fit on all but a held-out share of the pairs; InputError when the pairs are too few or their sides
        cannot be told apart on the held-out pairs."""
        if len(pairs) < MIN_PAIRS:
            raise InputError(f"the pairs' judge needs at least {MIN_PAIRS} pairs, got {len(pairs)}: give more "
                             "pairs (a few hundred localize well), or choose a built-in --metric")
        order = np.random.default_rng(seed).permutation(len(pairs))
        n_held_out = max(4, round(HELD_OUT_SHARE * len(pairs)))
        held_out, train = order[:n_held_out], order[n_held_out:]
        try:
            model = _pipeline().fit(*_replies(pairs, train))
        except ValueError as error:  # e.g. replies with no words at all
            raise InputError(f"the pairs' judge cannot be fitted on these replies ({error}): give replies in words, "
                             "or choose a built-in --metric") from None
        texts, labels = _replies(pairs, held_out)
        predicted = (~metrics.is_unwanted(model.predict_proba(texts)[:, 0])).astype(int)
        accuracy = metrics.balanced_accuracy(labels, predicted)
        if accuracy < MIN_ACCURACY:
            raise InputError(f"the pairs' judge tells the wanted from the unwanted replies of held-out pairs with "
                             f"balanced accuracy {accuracy:.2f} (< {MIN_ACCURACY}): the two sides of the pairs do "
                             "not differ in their words consistently. Make the sides differ in the behaviour only "
                             "and consistently, or choose a built-in --metric")
        return cls(model, float(accuracy), len(train), len(held_out))

    def __call__(self, texts: Sequence[str]) -> list[float]:
        """The probability that each text is on the unwanted side (`metrics.is_unwanted` above a half)."""
        return [float(p) for p in self.model.predict_proba(list(texts))[:, 0]] if texts else []

    def describe(self) -> str:
        return (f"an n-gram judge fitted on the replies of {self.n_train} of the pairs; balanced accuracy "
                f"{self.held_out_accuracy:.2f} on the replies of the {self.n_held_out} it never saw")


def _replies(pairs: Sequence[Pair], index: np.ndarray) -> tuple[list[str], list[int]]:
    chosen = [pairs[i] for i in index]
    return [p.positive for p in chosen] + [p.negative for p in chosen], [1] * len(chosen) + [0] * len(chosen)


def _pipeline():
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise InputError("the pairs' judge needs scikit-learn: pip install 'austeer-gguf[eval]', or choose a "
                         "built-in --metric") from None
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    features = make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                          TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True))
    return make_pipeline(features, LogisticRegression(max_iter=1000))
