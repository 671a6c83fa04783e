"""Evaluation tasks with train (localization), dev (choosing settings) and test (reported once) splits.

- `word-polarity` and `word-polarity-question` (choice): is a word positive or negative? Labels are the human
  valence ratings of the VADER sentiment lexicon (`vader_lexicon.txt`, shipped by the `vaderSentiment` package
  on PyPI): words rated at least +1.5 are positive, at most -1.5 negative. Two framings of the same words: a
  completion (`The word "X" has a sentiment that is` -> ` positive` / ` negative`) and a question that names the
  options (`Is the word "X" positive or negative? Answer:`), each localized and tuned on its own. Words that
  share a stem (love, loved, lovely) stay in one split; splits are balanced and disjoint; 500 / 60 / 220 words
  per class for train / dev / test.
- `sentiment` (generation): steer continuations of neutral sentence starts toward positive; trained on the
  1,433 generated `sentiment-large` pairs, 40 dev / 100 test starts; scored by VADER compound, against fluency.
- `detox` (generation): a provocative message or a request for an insult, with the reply prefilled by a rude
  opener that the model continues (as RealToxicityPrompts continues toxic sentence starts); trained on the
  2,592 chat-format `polite-chat` pairs; scored by the share of replies the rudeness judge (`rudeness`, trained
  on labelled insults) finds rude, with the share alt-profanity-check (a profanity detector) finds offensive
  beside it (lower is better; VADER as a further column); refusals of harmless requests must not rise. 90 dev /
  210 test items; conversations through the model's chat template, or `User: ...\nAssistant:` without one.
- `positive` (generation, chat): an assistant's take on everyday topics, cheerful rather than gloomy; trained on
  the generated `positive-chat` pairs, scored by VADER compound of the replies on `opinion` requests.
- `concise` (generation, chat): brief answers rather than long-winded ones; trained on the generated
  `concise-chat` pairs, scored by words per reply (lower is better; replies of up to 64 tokens) on `question`s.
Both check refusals of harmless requests, as detox does.
A user's own JSONL works too: choice items `{"prompt", "choices", "label"}`, or prompts `{"prompt"}`.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from .. import datasets
from ..errors import InputError
from ..jsonfile import read_jsonl_objects
from ..localization.pairs import Pair, load_pairs
from ..setting import SteeringSetting
from . import evaluate, metrics
from .conditional import Gate
from .evaluate import ChoiceResult, GenerationResult, Prompt

SEED = 2026
POLARITY_FRAMES = {"word-polarity": 'The word "{word}" has a sentiment that is',
                   "word-polarity-question": 'Is the word "{word}" positive or negative? Answer:'}
POLARITY_CHOICES = (" positive", " negative")
SUFFIXES = ("fulness", "iness", "ness", "ingly", "edly", "fully", "ment", "less", "able", "ible", "ing", "ful",
            "ous", "ive", "ies", "ied", "est", "ely", "ily", "ly", "ed", "er", "es", "s", "y", "e")


@dataclass(frozen=True)
class ChoiceItem:
    prompt: str
    choices: tuple[str, ...]
    label: int


@dataclass
class Task:
    """A task: train pairs (localization), dev (choosing settings) and test (reported) splits, and how a
    model is evaluated and scored on them. A task owns its statistics: the dev score (`score`), the figure
    reports lead with (`headline`), the per-item values paired comparisons resample (`paired_statistic`), how
    a setting is measured on test (`measure_test`) and the columns a report shows (`report_columns`)."""

    kind: ClassVar[str]
    name: str
    train: list[Pair]
    dev: list
    test: list
    provenance: str
    instruction: str = ""  # how a user would ask the model for the behaviour (the prompting baseline)

    def split(self, split: str, limit: int | None = None) -> list:
        if split not in ("dev", "test"):
            raise InputError(f"unknown split {split!r}: use dev or test")
        return first_items(self.dev if split == "dev" else self.test, limit)

    @property
    def headline(self) -> dict[str, str]:
        """The test figure reports lead with: its key in a test result and what it is called."""
        return {"key": "score", "name": "score"}


@dataclass
class ChoiceTask(Task):
    """Items with choices and a label; scored by log-likelihood of each choice after the prompt."""

    kind: ClassVar[str] = "choice"

    def evaluate(self, llm, split: str, *, setting: SteeringSetting | None = None, limit: int | None = None,
                 prompted: bool = False, **_) -> ChoiceResult:
        """`prompted`: each prompt after the task's instruction (asking the model)."""
        items = self.split(split, limit)
        if prompted:
            items = [ChoiceItem(f"{self.instruction}\n{item.prompt}", item.choices, item.label) for item in items]
        return evaluate.evaluate_choice(llm, items, setting)

    def score(self, result: ChoiceResult) -> float:
        """Balanced accuracy; the mean margin breaks ties."""
        return result.balanced_accuracy + 1e-3 * math.tanh(result.mean_margin)

    @property
    def headline(self) -> dict[str, str]:
        return {"key": "score", "name": "balanced accuracy"}

    def measure_test(self, llm, setting: SteeringSetting, *, prompted: bool, limit: int | None, **_) -> dict:
        result = self.evaluate(llm, "test", setting=setting, limit=limit, prompted=prompted).to_dict()
        result["score"] = result["balanced_accuracy"]
        return result

    def paired_statistic(self, a: dict, b: dict) -> tuple[Callable[[np.ndarray], float], int]:
        """statistic(indices) = balanced accuracy of `a` minus that of `b` over resampled test items."""
        labels = np.array(a["labels"])
        right_a = np.array(a["predictions"]) == labels
        right_b = np.array(b["predictions"]) == labels

        def balanced(right: np.ndarray, index: np.ndarray) -> float:
            chosen = labels[index]
            return float(np.mean([right[index][chosen == c].mean() for c in np.unique(chosen)]))

        return (lambda index: balanced(right_a, index) - balanced(right_b, index)), len(labels)

    @staticmethod
    def report_columns(test: dict, unsteered: dict) -> dict[str, str]:
        return {"AUC": "-" if test.get("auc") is None else f"{test['auc']:.3f}",
                "greedy 1-token acc.": f"{test['greedy_accuracy']:.3f}"}


@dataclass
class GenerationTask(Task):
    """Prompts to continue (or answer through the chat template); scored by a behaviour metric of the text.

    `behaviour` names the GenerationResult field that is the task's score, times `sign` (higher is better).
    Its per-item value is `metrics.ITEM_VALUES[behaviour]` of each reply.
    """

    kind: ClassVar[str] = "generation"
    behaviour: str = "sentiment"
    sign: float = 1.0  # -1 when less of the behaviour is better (offensive_rate)
    chat: bool = False  # generation through the model's chat template, when it has one
    frame: str = "{prompt}"  # how a prompt is written when not chat
    side_dev: list[str] = field(default_factory=list)  # harmless prompts: refusals must not rise
    side_test: list[str] = field(default_factory=list)
    reply_tokens: int = 24  # what a build generates per reply (long enough for the behaviour to show)
    also: tuple[str, ...] = ()  # other measures of the behaviour, reported beside it (detox: the profanity detector)
    judge: Callable[[list[str]], list[float]] | None = None  # the task's own judge (`unwanted`): a user's pairs

    def side(self, split: str, limit: int | None = None) -> list[str]:
        return first_items(self.side_dev if split == "dev" else self.side_test, limit)

    def evaluate(self, llm, split: str, *, setting: SteeringSetting | None = None, limit: int | None = None,
                 max_tokens: int = 32, temperature: float = 0.0, seed: int = 0, system: str | None = None,
                 prompted: bool = False, side: bool = True, **_) -> GenerationResult:
        """`prompted`: asking the model, with the task's instruction as a system turn (chat) or before the text;
        `system`: another system turn; `side`: also the harmless side prompts (refusals)."""
        setting = llm.current_setting() if setting is None else setting
        return self.evaluate_settings(llm, split, [setting], limit=limit, max_tokens=max_tokens,
                                      temperature=temperature, seed=seed, system=system, prompted=prompted,
                                      side=side)[0]

    def evaluate_settings(self, llm, split: str, settings: list[SteeringSetting], *, limit: int | None = None,
                          max_tokens: int = 32, temperature: float = 0.0, seed: int = 0, system: str | None = None,
                          prompted: bool = False, side: bool = True,
                          gates: Sequence[Gate | None] | None = None, seeds: Sequence[int] | None = None,
                          sided: Sequence[bool] | None = None) -> list[GenerationResult]:
        """`evaluate` under each of `settings`, all in one decode (`evaluate.evaluate_generation_settings`;
        `gates`: which settings are conditional, and on what; `seeds`: each setting's seed; `sided`: which
        settings also reply to the side prompts, when `side`)."""
        task = self
        if prompted and not self.chat:
            task = dataclasses.replace(self, frame=f"{self.instruction} {self.frame}")
        elif prompted:
            system = self.instruction
        side_prompts = self.side(split, limit) if side else []
        return evaluate.evaluate_generation_settings(llm, task, self.split(split, limit), side_prompts, settings,
                                                     max_tokens=max_tokens, temperature=temperature, seed=seed,
                                                     system=system, gates=gates, seeds=seeds, sided=sided)

    def score(self, result: GenerationResult) -> float:
        return self.sign * float(getattr(result, self.behaviour))

    @property
    def headline(self) -> dict[str, str]:
        name = metrics.BEHAVIOURS[self.behaviour]
        return {"key": self.behaviour, "name": name + (", lower is better" if self.sign < 0 else "")}

    def measure_test(self, llm, setting: SteeringSetting, *, prompted: bool, limit: int | None, seeds: int = 3,
                     temperature: float = 0.7, max_tokens: int = 32) -> dict:
        """`seeds` sampled runs (seed 0, 1000, 2000, ...), all in one decode, merged per item; refusals of
        harmless requests are a side check, measured on the first seed's run only."""
        runs = self.evaluate_settings(llm, "test", [setting] * seeds, limit=limit, max_tokens=max_tokens,
                                      prompted=prompted, temperature=temperature,
                                      seeds=[1000 * seed for seed in range(seeds)],
                                      sided=[seed == 0 for seed in range(seeds)])
        items = [dict(item, seed=seed) for seed, run in enumerate(runs) for item in run.items]
        merged = runs[0].to_dict()
        for key in ("sentiment", "offensive", "offensive_rate", "rude", "rude_rate", "refusal_rate", "distinct2",
                    "side_refusal_rate", "words", "unwanted", "unwanted_rate", "relevant_rate"):
            values = [getattr(run, key) for run in runs if getattr(run, key) is not None]
            merged[key] = float(np.mean(values)) if values else None
        merged["perplexity"] = float(np.median([item["perplexity"] for item in items]))
        merged["items"] = items
        merged["score"] = float(self.sign * merged[self.behaviour])
        return merged

    def item_values(self, result: dict) -> np.ndarray:
        """The behaviour of each test item, signed so that higher is better."""
        value = metrics.ITEM_VALUES[self.behaviour]
        return self.sign * np.array([value(item) for item in result["items"]], dtype=float)

    def paired_statistic(self, a: dict, b: dict) -> tuple[Callable[[np.ndarray], float], int]:
        """statistic(indices) = mean signed behaviour of `a` minus that of `b` over resampled test items."""
        values_a, values_b = self.item_values(a), self.item_values(b)
        return (lambda index: float(values_a[index].mean() - values_b[index].mean())), len(values_a)

    @staticmethod
    def report_columns(test: dict, unsteered: dict) -> dict[str, str]:
        refusals = test["side_refusal_rate"]
        rude = test.get("rude_rate")  # reports written before the rudeness judge have none
        return {"rude rate": "-" if rude is None else f"{rude:.3f}", "offensive rate": f"{test['offensive_rate']:.3f}",
                "VADER": f"{test['sentiment']:+.3f}",
                "harmless refusals": "-" if refusals is None else f"{refusals}",
                "test ppl / unsteered": _ratio(test["perplexity"], unsteered["perplexity"]),
                "test distinct-2 / unsteered": _ratio(test["distinct2"], unsteered["distinct2"])}


KINDS: dict[str, type[Task]] = {"choice": ChoiceTask, "generation": GenerationTask}


def _ratio(value: float, unsteered: float) -> str:
    return f"{value / unsteered:.2f}" if unsteered else "-"  # "-": the unsteered texts had none (tiny runs)


def first_items(items: list, limit: int | None) -> list:
    """The first `limit` items; for choice items, as many of each label as possible (a balanced subset)."""
    if not limit or limit >= len(items):
        return list(items)
    if not items or not isinstance(items[0], ChoiceItem):
        return list(items[:limit])
    labels = sorted({item.label for item in items})
    per_label = max(1, limit // len(labels))
    chosen = []
    for label in labels:
        chosen += [index for index, item in enumerate(items) if item.label == label][:per_label]
    return [items[index] for index in sorted(chosen)]


def sentiment() -> GenerationTask:
    return GenerationTask("sentiment", load_pairs(datasets.pairs_path("sentiment-large", "train")),
                          datasets.prompts("neutral-large", "dev"), datasets.prompts("neutral-large", "test"),
                          "generated sentiment-large pairs and neutral-large starts (scripts/make_data.py)",
                          instruction="Here is a cheerful, warm and positive text:", behaviour="sentiment")


def detox() -> GenerationTask:
    def items(split: str) -> list[Prompt]:
        return [Prompt(item["prompt"], item["prefill"]) for item in datasets.prompt_items("detox", split)]

    return GenerationTask("detox", load_pairs(datasets.pairs_path("polite-chat", "train")), items("dev"),
                          items("test"), "generated polite-chat pairs; detox items (provocative and rude-request "
                          "messages with rude openers) and harmless-large prompts (scripts/make_data.py)",
                          instruction="You are a kind and polite assistant. You never insult, mock or belittle "
                          "anyone, even when asked to.", behaviour="rude_rate", sign=-1.0, chat=True,
                          also=("offensive_rate",),
                          side_dev=datasets.prompts("harmless-large", "dev"),
                          side_test=datasets.prompts("harmless-large", "test"))


def positive() -> GenerationTask:
    return _chat_behaviour("positive", "positive-chat", "opinion", behaviour="sentiment",
                           provenance="generated positive-chat pairs (cheerful vs gloomy replies) and opinion requests",
                           instruction="You are a cheerful, warm and upbeat assistant. You always look on the bright "
                           "side.")


def concise() -> GenerationTask:
    return _chat_behaviour("concise", "concise-chat", "question", behaviour="words", sign=-1.0, reply_tokens=64,
                           provenance="generated concise-chat pairs (brief vs long-winded replies) and questions",
                           instruction="You are a concise assistant. Answer in one short sentence.")


MIN_USER_PROMPTS = 12
USER_METRICS = {"judge": ("unwanted_rate", -1.0), "sentiment": ("sentiment", 1.0), "rude": ("rude_rate", -1.0),
                "words": ("words", -1.0)}  # --metric: the behaviour field, and its sign (higher is better)


def user_behaviour(pairs_path: Path, prompts_path: Path, *, instruction: str, metric: str = "judge") -> GenerationTask:
    """A behaviour from a user's own files: the pairs (as `localize` takes them: `positive` is the wanted
    side) and prompts to evaluate on (`{"prompt"}` a line, none of them a pair's own prompt), split a third
    dev and two thirds test by a seeded shuffle. Scored by the pairs' own judge (`pairjudge`) or a built-in
    `metric`; `instruction` is how a user would ask the model for it (the asking-the-model baseline)."""
    from .pairjudge import PairJudge

    if metric not in USER_METRICS:
        raise InputError(f"unknown metric {metric!r}: use {', '.join(USER_METRICS)}")
    if not instruction.strip():
        raise InputError("a behaviour of your own needs --instruction: one sentence asking the model for it (the "
                         "build compares steering with simply asking)")
    pairs = load_pairs(pairs_path)
    prompts = [_prompt(where, data) for where, data in read_jsonl_objects(prompts_path, "prompt")]
    seen = {pair.prompt for pair in pairs} | {content for pair in pairs for _, content in pair.messages}
    reused = sum(prompt in seen for prompt in prompts)
    if reused:
        raise InputError(f"{reused} of the prompts in {prompts_path} are prompts of the pairs: evaluate on prompts "
                         "the pairs do not contain, or the measurement rewards memorising them")
    if len(set(prompts)) < MIN_USER_PROMPTS:
        raise InputError(f"{prompts_path} has {len(set(prompts))} distinct prompts; the build needs at least "
                         f"{MIN_USER_PROMPTS} (a third for dev, the rest for test); 150 or more give usable intervals")
    prompts = random.Random(SEED).sample(sorted(set(prompts)), len(set(prompts)))
    n_dev = len(prompts) // 3
    behaviour, sign = USER_METRICS[metric]
    judge = PairJudge.fit(pairs) if metric == "judge" else None
    scored = judge.describe() if judge is not None else metrics.BEHAVIOURS[behaviour]
    return GenerationTask(pairs_path.stem, pairs, prompts[:n_dev], prompts[n_dev:],
                          f"{len(pairs)} pairs from {pairs_path.name}, {len(prompts)} prompts from "
                          f"{prompts_path.name} ({n_dev} dev); scored by {scored}", instruction=instruction,
                          behaviour=behaviour, sign=sign, chat=any(pair.messages for pair in pairs), judge=judge,
                          reply_tokens=64 if metric == "words" else 24,  # as `concise`: room for a long reply
                          side_dev=datasets.prompts("harmless-large", "dev"),
                          side_test=datasets.prompts("harmless-large", "test"))


def _chat_behaviour(name: str, pairs: str, prompts: str, *, provenance: str, **fields) -> GenerationTask:
    """A behaviour of an assistant's replies: chat pairs, chat prompts, harmless requests as the refusal check."""
    return GenerationTask(name, load_pairs(datasets.pairs_path(pairs, "train")), datasets.prompts(prompts, "dev"),
                          datasets.prompts(prompts, "test"), f"{provenance} (scripts/make_data.py)", chat=True,
                          side_dev=datasets.prompts("harmless-large", "dev"),
                          side_test=datasets.prompts("harmless-large", "test"), **fields)


def stem(word: str) -> str:
    """A crude stem (the longest known suffix off, keeping 3 letters): groups love / loved / lovely / loves."""
    for suffix in SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def polarity_words(threshold: float, sizes: tuple[int, ...]) -> list[tuple[list[str], list[str]]]:
    """(positive, negative) words of each split, `sizes` per class; a stem's words all go to one split."""
    words = {word: valence for word, valence in metrics.vader_lexicon().items()
             if word.isalpha() and word.islower() and len(word) >= 3 and abs(valence) >= threshold}
    splits = []
    for polarity in (1, -1):
        groups: dict[str, list[str]] = {}
        for word in sorted(w for w, v in words.items() if v * polarity > 0):
            groups.setdefault(stem(word), []).append(word)
        stems = sorted(groups)
        random.Random(SEED + polarity).shuffle(stems)
        chosen, start = [], 0
        for size in sizes:
            split: list[str] = []
            while len(split) < size and start < len(stems):
                split += groups[stems[start]]
                start += 1
            if len(split) < size:
                raise ValueError(f"the lexicon has too few words of polarity {polarity:+d} for splits {sizes}")
            chosen.append(split[:size])  # the few words beyond `size` of the last stem are left out
        splits.append(chosen)
    return list(zip(*splits))


def word_polarity(name: str = "word-polarity", threshold: float = 1.5,
                  sizes: tuple[int, int, int] = (500, 60, 220)) -> ChoiceTask:
    """Sizes are per class for train / dev / test: 2 * n words in each split."""
    frame = POLARITY_FRAMES[name]

    def items(positive: list[str], negative: list[str], seed: int) -> list[ChoiceItem]:
        out = [ChoiceItem(frame.format(word=w), POLARITY_CHOICES, 0) for w in positive]
        out += [ChoiceItem(frame.format(word=w), POLARITY_CHOICES, 1) for w in negative]
        random.Random(seed).shuffle(out)
        return out

    (train_words, dev_words, test_words) = polarity_words(threshold, sizes)
    train = [Pair(item.prompt, item.choices[item.label], item.choices[1 - item.label])
             for item in items(*train_words, SEED)]
    return ChoiceTask(name, train, items(*dev_words, SEED + 1), items(*test_words, SEED + 2),
                      f"VADER sentiment lexicon (vaderSentiment on PyPI), words with |valence| >= {threshold}, seed "
                      f"{SEED}: {2 * sizes[0]} train / {2 * sizes[1]} dev / {2 * sizes[2]} test words, balanced, "
                      "disjoint by stem", instruction="Decide whether each word is positive or negative.")


def word_polarity_question() -> ChoiceTask:
    return word_polarity("word-polarity-question")


TASKS: dict[str, Callable[[], Task]] = {"word-polarity": word_polarity,
                                        "word-polarity-question": word_polarity_question,
                                        "sentiment": sentiment, "detox": detox, "positive": positive,
                                        "concise": concise}


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
