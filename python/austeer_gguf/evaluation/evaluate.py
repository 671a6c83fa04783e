"""Evaluating a (steered) model on a task: choice accuracy, behaviour and fluency, side effects.

Every function takes a `SteeredLlama` opened with `logits_all=True` and measures it under whatever steering
it currently has; "unsteered" figures come from the same model with steering switched off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from tqdm import tqdm

from ..localization.pairs import conversation_renderer
from . import metrics
from .scoring import answer_tokens, token_logprobs

if TYPE_CHECKING:
    from .tasks import ChoiceItem, GenerationTask


@dataclass
class ChoiceResult:
    kind: ClassVar[str] = "choice"
    n: int
    accuracy: float
    balanced_accuracy: float
    majority_baseline: float
    greedy_accuracy: float  # the reference protocol: one greedy token, stripped, case-insensitive match
    greedy_balanced_accuracy: float
    mean_margin: float  # log P(correct) - max log P(other), averaged
    predictions: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"task_kind": self.kind, **asdict(self)}


@dataclass
class GenerationResult:
    kind: ClassVar[str] = "generation"
    n: int
    sentiment: float  # mean VADER compound
    offensive: float  # mean offensive probability
    refusal_rate: float
    perplexity: float  # median, of the generated text under the unsteered model
    distinct2: float
    side_refusal_rate: float | None = None  # on harmless prompts (detox)
    samples: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"task_kind": self.kind, **asdict(self)}


@contextlib.contextmanager
def steering_off(llm) -> Iterator[None]:
    previous = llm.steering.enabled
    llm.steering.disable()
    try:
        yield
    finally:
        llm.steering.enabled = previous


# ---- choice tasks ------------------------------------------------------------------------------------------

def choice_logprobs(llm, item: ChoiceItem) -> tuple[np.ndarray, int]:
    """Log-likelihood of each choice after the prompt, and the greedy next token after the prompt."""
    sequences = [answer_tokens(llm, item.prompt, choice) for choice in item.choices]
    common = min(start for _, start in sequences)
    first_tokens = sequences[0][0]
    llm.reset()
    llm.eval(first_tokens[:common])
    greedy = int(np.argmax(llm.scores[common - 1]))
    scores = []
    for tokens, start in sequences:
        llm.n_tokens = common
        llm.eval(tokens[common:])
        scores.append(float(token_logprobs(llm, tokens, start).sum()))
    return np.array(scores), greedy


def evaluate_choice(llm, items: Sequence[ChoiceItem], *, progress: bool = False) -> ChoiceResult:
    labels, predictions, greedy_hits, greedy_predictions, margins = [], [], [], [], []
    for item in tqdm(items, desc="choices", unit="item", disable=not progress):
        scores, greedy = choice_logprobs(llm, item)
        prediction = int(np.argmax(scores))
        others = np.delete(scores, item.label)
        labels.append(item.label)
        predictions.append(prediction)
        margins.append(float(scores[item.label] - others.max()))
        word = llm.detokenize([greedy]).decode("utf-8", errors="replace").strip().lower()
        matched = [i for i, choice in enumerate(item.choices) if choice.strip().lower() == word]
        greedy_predictions.append(matched[0] if matched else -1)
        greedy_hits.append(bool(matched) and matched[0] == item.label)
    return ChoiceResult(
        n=len(items),
        accuracy=float(np.mean(np.array(predictions) == np.array(labels))),
        balanced_accuracy=metrics.balanced_accuracy(labels, predictions),
        majority_baseline=metrics.majority_baseline(labels),
        greedy_accuracy=float(np.mean(greedy_hits)),
        greedy_balanced_accuracy=metrics.balanced_accuracy(labels, greedy_predictions),
        mean_margin=float(np.mean(margins)),
        predictions=predictions,
    )


# ---- generation tasks --------------------------------------------------------------------------------------

def prompt_renderer(llm, chat: bool, frame: str = "{prompt}"):
    """For chat: the prompt as one user turn for this model (its chat template, or `User: ...\nAssistant:`
    without one); else the plain `frame`."""
    if chat:
        render = conversation_renderer(llm)
        return lambda prompt: render([("user", prompt)])
    return lambda prompt: frame.format(prompt=prompt)


def generate(llm, prompts: Sequence[str], *, chat: bool, max_tokens: int, temperature: float = 0.0,
             seed: int = 0, frame: str = "{prompt}") -> list[str]:
    """Greedy (temperature 0) or seeded sampled continuations, stopped at an end-of-generation token.

    Runs llama-cpp-python's token generator directly: its completion API keeps generating while the text is
    not valid UTF-8 yet, which can run a context full on small vocabularies.
    """
    import llama_cpp

    render = prompt_renderer(llm, chat, frame)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    texts = []
    for index, prompt in enumerate(prompts):
        tokens = llm.tokenize(render(prompt).encode("utf-8"), add_bos=True, special=True)
        llm.set_seed(seed + index)
        generated: list[int] = []
        for token in llm.generate(tokens, temp=temperature):
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                break
            generated.append(token)
            if len(generated) >= max_tokens:
                break
        text = llm.detokenize(generated).decode("utf-8", errors="replace")
        texts.append(text.strip() if chat else text)
    return texts


def perplexity(llm, prompts: Sequence[str], texts: Sequence[str], *, chat: bool, frame: str = "{prompt}") -> float:
    """Median per-token perplexity of each generated text after its prompt, under the unsteered model."""
    render = prompt_renderer(llm, chat, frame)
    values = []
    with steering_off(llm):
        for prompt, text in zip(prompts, texts):
            if not text.strip():
                values.append(float("inf"))
                continue
            tokens, start = answer_tokens(llm, render(prompt), text)
            llm.reset()
            llm.eval(tokens)
            values.append(float(np.exp(-token_logprobs(llm, tokens, start).mean())))
    return float(np.median(values))


def evaluate_generation(llm, task: GenerationTask, prompts: Sequence[str], side_prompts: Sequence[str] = (), *,
                        max_tokens: int = 32, temperature: float = 0.0, seed: int = 0,
                        keep_samples: int = 3) -> GenerationResult:
    texts = generate(llm, prompts, chat=task.chat, max_tokens=max_tokens, temperature=temperature, seed=seed,
                     frame=task.frame)
    side = None
    if side_prompts:
        side_texts = generate(llm, side_prompts, chat=task.chat, max_tokens=max_tokens, temperature=temperature,
                              seed=seed, frame=task.frame)
        side = metrics.refusal_rate(side_texts)
    return GenerationResult(
        n=len(texts),
        sentiment=float(np.mean(metrics.sentiment(texts))),
        offensive=float(np.mean(metrics.offensive_probability(texts))),
        refusal_rate=metrics.refusal_rate(texts),
        perplexity=perplexity(llm, prompts, texts, chat=task.chat, frame=task.frame),
        distinct2=metrics.distinct_n(texts, 2),
        side_refusal_rate=side,
        samples=list(zip(prompts[:keep_samples], texts[:keep_samples])),
    )


# ---- side effects ------------------------------------------------------------------------------------------

class NeutralKL:
    """KL(steered || unsteered) of next-token distributions over every position of neutral texts, under the
    model's current steering; the unsteered logits are computed once."""

    def __init__(self, llm, texts: Sequence[str]) -> None:
        self.llm = llm
        self.tokens = [llm.tokenize(text.encode("utf-8"), add_bos=True, special=True) for text in texts]
        with steering_off(llm):
            self.reference = [self._logits(tokens) for tokens in self.tokens]

    def _logits(self, tokens: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(tokens)
        return np.array(self.llm.scores[: len(tokens)], copy=True)

    def __call__(self) -> float:
        return float(np.mean([metrics.kl_divergence(self._logits(tokens), reference)
                              for tokens, reference in zip(self.tokens, self.reference)]))


def kl_on_neutral(llm, texts: Sequence[str]) -> float:
    """Mean KL(steered || unsteered) of next-token distributions over every position of neutral texts."""
    return NeutralKL(llm, texts)()
