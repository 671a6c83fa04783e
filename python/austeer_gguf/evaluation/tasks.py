"""Evaluation tasks with train (localization), dev (choosing alpha, k, site) and test (reported) splits.

- `word-polarity` (choice): is a word positive or negative? Labels are the human valence ratings of the VADER
  sentiment lexicon (`vader_lexicon.txt`, shipped by the `vaderSentiment` package on PyPI): words rated at
  least +1.5 are positive, at most -1.5 negative. Small models can partly do this (word polarity is
  in their pretraining data), unlike generated reasoning tasks. Splits are balanced (as many positive as
  negative words) and disjoint (no word in two splits); the order comes from a fixed seed.
- `sentiment` (generation): steer continuations of neutral sentence starts toward positive; trained on the
  shipped `sentiment` pairs, scored by VADER compound, against fluency.
- `detox` (generation): steer replies to provocative messages toward polite ones, trained on the shipped
  `polite` pairs, scored by VADER compound and offensive probability of the replies; replies to harmless
  requests must not turn into refusals. Prompts go through the model's chat template; a model without one
  (the Gemma-3-270M file here is the base model) gets the pairs' own "User: ...\nAssistant:" framing.
A user's own JSONL works too: choice items `{"prompt", "choices", "label"}`, or prompts `{"prompt"}`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from .. import datasets
from ..errors import InputError
from ..jsonfile import read_jsonl_objects
from ..localization.pairs import Pair, load_pairs
from . import evaluate
from .evaluate import ChoiceResult, GenerationResult

SEED = 2026
POLARITY_PROMPT = 'The word "{word}" has a sentiment that is'
POLARITY_CHOICES = (" positive", " negative")


@dataclass(frozen=True)
class ChoiceItem:
    prompt: str
    choices: tuple[str, ...]
    label: int


@dataclass
class Task:
    """A task: train pairs (localization), dev (choosing settings) and test (reported) splits, and how a
    model is evaluated and scored on them."""

    kind: ClassVar[str]
    name: str
    train: list[Pair]
    dev: list
    test: list
    provenance: str

    def split(self, split: str, limit: int | None = None) -> list:
        if split not in ("dev", "test"):
            raise InputError(f"unknown split {split!r}: use dev or test")
        return first_items(self.dev if split == "dev" else self.test, limit)


@dataclass
class ChoiceTask(Task):
    """Items with choices and a label; scored by log-likelihood of each choice after the prompt."""

    kind: ClassVar[str] = "choice"

    def evaluate(self, llm, split: str, *, limit: int | None = None, progress: bool = False, **_) -> ChoiceResult:
        return evaluate.evaluate_choice(llm, self.split(split, limit), progress=progress)

    def score(self, result: ChoiceResult, baseline: ChoiceResult | None = None, **_) -> float:
        """Balanced accuracy; the mean margin breaks ties."""
        return result.balanced_accuracy + 1e-3 * math.tanh(result.mean_margin)


@dataclass
class GenerationTask(Task):
    """Prompts to continue (or answer through the chat template); scored by a behaviour metric of the text.

    `behaviour` names the GenerationResult field that is the task's score (higher is better). On dev, a
    setting counts only when it keeps fluency: median perplexity within `fluency_factor` times the baseline,
    distinct-2 at least half the baseline's (repetition has a low perplexity) and, with side prompts,
    refusals on them rising by at most 0.1.
    """

    kind: ClassVar[str] = "generation"
    behaviour: str = "sentiment"
    chat: bool = False  # generation through the model's chat template, when it has one
    frame: str = "{prompt}"  # how a prompt is written when not chat
    side_dev: list[str] = field(default_factory=list)  # harmless prompts: refusals must not rise
    side_test: list[str] = field(default_factory=list)

    def side(self, split: str, limit: int | None = None) -> list[str]:
        return first_items(self.side_dev if split == "dev" else self.side_test, limit)

    def evaluate(self, llm, split: str, *, limit: int | None = None, max_tokens: int = 32,
                 temperature: float = 0.0, seed: int = 0, **_) -> GenerationResult:
        return evaluate.evaluate_generation(llm, self, self.split(split, limit), self.side(split, limit),
                                            max_tokens=max_tokens, temperature=temperature, seed=seed)

    def score(self, result: GenerationResult, baseline: GenerationResult | None = None, *,
              fluency_factor: float = 2.0, **_) -> float:
        if baseline is not None:
            if result.perplexity > fluency_factor * baseline.perplexity:
                return -math.inf
            if result.distinct2 < 0.5 * baseline.distinct2:
                return -math.inf
            side, base_side = result.side_refusal_rate, baseline.side_refusal_rate
            if side is not None and base_side is not None and side > base_side + 0.1:
                return -math.inf
        return float(getattr(result, self.behaviour))


def first_items(items: list, limit: int | None) -> list:
    """The first `limit` items; for choice items, as many of each label as possible (a balanced subset)."""
    if not limit or limit >= len(items):
        return list(items)
    if not items or not isinstance(items[0], ChoiceItem):
        return list(items[:limit])
    labels = sorted({item.label for item in items})
    per_label = limit // len(labels)
    chosen = []
    for label in labels:
        chosen += [index for index, item in enumerate(items) if item.label == label][:per_label]
    return [items[index] for index in sorted(chosen)]


def sentiment() -> GenerationTask:
    return GenerationTask("sentiment", load_pairs(datasets.pairs_path("sentiment", "train")),
                          datasets.prompts("neutral", "dev"), datasets.prompts("neutral", "test"),
                          "austeer-gguf sentiment pairs and neutral prompts (written for the project, see "
                          "data/README.md)", behaviour="sentiment")


def detox() -> GenerationTask:
    return GenerationTask("detox", load_pairs(datasets.pairs_path("polite", "train")),
                          datasets.prompts("provocative", "dev"), datasets.prompts("provocative", "test"),
                          "austeer-gguf polite pairs and provocative/harmless prompts (written for the project)",
                          behaviour="sentiment", chat=True,
                          side_dev=datasets.prompts("harmless", "dev"), side_test=datasets.prompts("harmless", "test"))


def vader_lexicon() -> dict[str, float]:
    from importlib import resources

    text = (resources.files("vaderSentiment") / "vader_lexicon.txt").read_text(encoding="utf-8")
    lexicon = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            lexicon[parts[0]] = float(parts[1])
    return lexicon


def word_polarity(threshold: float = 1.5, n_train: int = 120, n_dev: int = 40, n_test: int = 100) -> ChoiceTask:
    """Sizes are per class: 2 * n words in each split."""
    words = {word: valence for word, valence in vader_lexicon().items()
             if word.isalpha() and word.islower() and len(word) >= 3 and abs(valence) >= threshold}
    positive = sorted(w for w, v in words.items() if v > 0)
    negative = sorted(w for w, v in words.items() if v < 0)
    rng = random.Random(SEED)
    rng.shuffle(positive)
    rng.shuffle(negative)
    needed = n_train + n_dev + n_test
    if min(len(positive), len(negative)) < needed:
        raise ValueError(f"the lexicon has {len(positive)} positive and {len(negative)} negative words; "
                         f"{needed} of each are needed")

    def items(first: int, last: int) -> list[ChoiceItem]:
        out = [ChoiceItem(POLARITY_PROMPT.format(word=w), POLARITY_CHOICES, 0) for w in positive[first:last]]
        out += [ChoiceItem(POLARITY_PROMPT.format(word=w), POLARITY_CHOICES, 1) for w in negative[first:last]]
        random.Random(SEED + first).shuffle(out)
        return out

    train = [Pair(item.prompt, item.choices[item.label], item.choices[1 - item.label])
             for item in items(0, n_train)]
    return ChoiceTask("word-polarity", train, items(n_train, n_train + n_dev), items(n_train + n_dev, needed),
                      f"VADER sentiment lexicon (vaderSentiment on PyPI), words with |valence| >= {threshold}, "
                      f"seed {SEED}: {2 * n_train} train / {2 * n_dev} dev / {2 * n_test} test words, balanced, "
                      "disjoint")


TASKS: dict[str, Callable[[], Task]] = {"word-polarity": word_polarity, "sentiment": sentiment, "detox": detox}


def load_task(name: str) -> Task:
    """A registered task by name, or a user's JSONL file."""
    if name in TASKS:
        return TASKS[name]()
    path = Path(name)
    if path.is_file():
        return user_task(path)
    raise InputError(f"unknown task {name!r}: use {', '.join(TASKS)}, or a JSONL file")


def user_task(path: Path) -> Task:
    """Choice items `{"prompt", "choices", "label"}` or prompts `{"prompt"}`, one JSON object a line."""
    lines = read_jsonl_objects(path, "task item")
    if not lines:
        raise InputError(f"{path} is empty: write one JSON object a line")
    if "choices" in lines[0][1]:
        items = [_choice_item(where, data) for where, data in lines]
        return ChoiceTask(path.stem, [], items, items, str(path))
    prompts = [_prompt(where, data) for where, data in lines]
    return GenerationTask(path.stem, [], prompts, prompts, str(path))


def _prompt(where: str, data: dict) -> str:
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise InputError(f"{where}: 'prompt' must be a non-empty string")
    return prompt


def _choice_item(where: str, data: dict) -> ChoiceItem:
    choices, label = data.get("choices"), data.get("label")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise InputError(f"{where}: 'choices' must be a list of at least two non-empty strings")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
        raise InputError(f"{where}: 'label' must be the index of the right choice, 0..{len(choices) - 1}")
    return ChoiceItem(_prompt(where, data), tuple(choices), label)
