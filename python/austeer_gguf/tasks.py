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

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from . import datasets
from .pairs import Pair, load_pairs

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
    name: str
    kind: str  # "choice" or "generation"
    train: list[Pair]
    dev: list  # ChoiceItem for choice tasks, prompt strings for generation tasks
    test: list
    provenance: str
    chat: bool = False  # generation through the model's chat template, when it has one
    frame: str = "{prompt}"  # how a prompt is written for a model without a chat template
    side_dev: list[str] = field(default_factory=list)  # harmless prompts: refusals must not rise
    side_test: list[str] = field(default_factory=list)


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


def load_task(name: str) -> Task:
    if name == "word-polarity":
        return word_polarity()
    if name == "sentiment":
        return Task("sentiment", "generation", load_pairs(datasets.pairs_path("sentiment", "train")),
                    datasets.prompts("neutral", "dev"), datasets.prompts("neutral", "test"),
                    "austeer-gguf sentiment pairs and neutral prompts (written for the project, see data/README.md)")
    if name == "detox":
        return Task("detox", "generation", load_pairs(datasets.pairs_path("polite", "train")),
                    datasets.prompts("provocative", "dev"), datasets.prompts("provocative", "test"),
                    "austeer-gguf polite pairs and provocative/harmless prompts (written for the project)",
                    chat=True, frame="User: {prompt}\nAssistant:", side_dev=datasets.prompts("harmless", "dev"),
                    side_test=datasets.prompts("harmless", "test"))
    path = Path(name)
    if path.is_file():
        return _user_task(path)
    raise ValueError(f"unknown task {name!r}: use word-polarity, sentiment, detox, or a JSONL file")


def vader_lexicon() -> dict[str, float]:
    from importlib import resources

    text = (resources.files("vaderSentiment") / "vader_lexicon.txt").read_text(encoding="utf-8")
    lexicon = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            lexicon[parts[0]] = float(parts[1])
    return lexicon


def word_polarity(threshold: float = 1.5, n_train: int = 120, n_dev: int = 40, n_test: int = 100) -> Task:
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
    return Task("word-polarity", "choice", train, items(n_train, n_train + n_dev),
                items(n_train + n_dev, needed),
                f"VADER sentiment lexicon (vaderSentiment on PyPI), words with |valence| >= {threshold}, "
                f"seed {SEED}: {2 * n_train} train / {2 * n_dev} dev / {2 * n_test} test words, balanced, disjoint")


def _user_task(path: Path) -> Task:
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path} is empty")
    if "choices" in lines[0]:
        items = [ChoiceItem(d["prompt"], tuple(d["choices"]), int(d["label"])) for d in lines]
        return Task(path.stem, "choice", [], items, items, str(path))
    prompts = [d["prompt"] for d in lines]
    return Task(path.stem, "generation", [], prompts, prompts, str(path))
