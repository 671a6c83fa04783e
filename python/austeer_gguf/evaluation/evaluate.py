"""Evaluating a (steered) model on a task: choice accuracy, behaviour and fluency, side effects.

Every function takes a hooked model (`engine.hooked.HookedLlama`, e.g. a `SteeredLlama`) and the
`SteeringSetting` to measure (default: the model's current setting); side effects are measured against the
same model under `OFF`. Many sequences go through each decode when the model's context holds several
(`HookedLlama.for_evaluation`, see `engine.decoder`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from .. import conversation
from ..engine.decoder import forward, generate_tokens
from ..setting import OFF, SteeringSetting
from . import metrics, rudeness
from .conditional import Gate, last_prompt_residuals
from .scoring import answer_rows, answer_tokens, log_softmax, token_logprobs

if TYPE_CHECKING:
    from .tasks import ChoiceItem, GenerationTask


@dataclass(frozen=True)
class Prompt:
    """A generation prompt: `text` (a user message when the task chats) and, optionally, the start of the reply
    the model is to continue (`prefill`); only the continuation is scored."""

    text: str
    prefill: str = ""


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
    auc: float | None = None  # two choices: AUC of log P(choice 0) - log P(choice 1) for label 0 vs 1
    predictions: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    margins: list[float] = field(default_factory=list)  # per item, for paired comparisons

    def to_dict(self) -> dict:
        return {"task_kind": self.kind, **asdict(self)}


@dataclass
class GenerationResult:
    kind: ClassVar[str] = "generation"
    n: int
    sentiment: float  # mean VADER compound
    offensive: float  # mean offensive probability
    offensive_rate: float  # share of texts `metrics.is_offensive` flags (a profanity detector)
    refusal_rate: float
    perplexity: float  # median, of the generated text under the unsteered model
    distinct2: float
    side_refusal_rate: float | None = None  # on harmless prompts (detox)
    words: float = 0.0  # mean words per reply (concise)
    rude: float = 0.0  # mean score of the rudeness judge (`rudeness`), of the clause the model completed
    rude_rate: float = 0.0  # share of texts `metrics.is_rude` flags
    relevant_rate: float | None = None  # share of non-empty replies that answer their own request (`reply_relevance`)
    unwanted: float | None = None  # mean score of the task's own judge (a user's pairs: `pairjudge`), if it has one
    unwanted_rate: float | None = None  # share of texts `metrics.is_unwanted` flags
    trigger_rate: float | None = None  # conditional steering: share of the prompts its gate fired on
    side_trigger_rate: float | None = None  # ... and of the harmless side prompts
    samples: list[tuple[str, str]] = field(default_factory=list)
    items: list[dict] = field(default_factory=list)  # per prompt: text and scores, for paired comparisons

    def to_dict(self) -> dict:
        return {"task_kind": self.kind, **asdict(self)}


# ---- choice tasks ------------------------------------------------------------------------------------------

def choice_logprobs(llm, items: Sequence[ChoiceItem], setting: SteeringSetting | None = None,
                    ) -> list[tuple[np.ndarray, int]]:
    """For each item: the log-likelihood of each choice after the prompt, and the greedy next token after
    the prompt."""
    sequences, rows, layout = [], [], []
    for item in items:
        tokenized = [answer_tokens(llm, item.prompt, choice) for choice in item.choices]
        first = min(start for _, start in tokenized) - 1  # the prompt's last row: the greedy token
        layout.append((len(sequences), tokenized, first))
        for tokens, _ in tokenized:
            sequences.append(tokens)
            rows.append(range(first, len(tokens) - 1))
    logits = forward(llm, sequences, rows, setting=setting)
    out = []
    for offset, tokenized, first in layout:
        scores = [float(token_logprobs(logits[offset + i][start - 1 - first:], tokens, start).sum())
                  for i, (tokens, start) in enumerate(tokenized)]
        out.append((np.array(scores), int(np.argmax(logits[offset][0]))))
    return out


def evaluate_choice(llm, items: Sequence[ChoiceItem], setting: SteeringSetting | None = None) -> ChoiceResult:
    labels, predictions, greedy_hits, greedy_predictions, margins, differences = [], [], [], [], [], []
    for item, (scores, greedy) in zip(items, choice_logprobs(llm, items, setting)):
        differences.append(float(scores[0] - scores[1]) if len(scores) == 2 else 0.0)
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
        auc=metrics.auc(differences, [label == 0 for label in labels])
        if all(len(item.choices) == 2 for item in items) else None,
        predictions=predictions,
        labels=labels,
        margins=margins,
    )


# ---- generation tasks --------------------------------------------------------------------------------------

def prompt_renderer(llm, chat: bool, frame: str = "{prompt}", system: str | None = None):
    """The text a prompt (a str or a `Prompt`) is given to the model as: for chat, one user turn for this model
    (`austeer_gguf.conversation`), after a system turn when `system` is given (the prompting baseline); else the
    plain `frame`; then the prefill."""
    render_turns = conversation.renderer(llm) if chat else None
    before = [("system", system)] if system else []

    def render(prompt: str | Prompt) -> str:
        prompt = prompt if isinstance(prompt, Prompt) else Prompt(prompt)
        text = render_turns([*before, ("user", prompt.text)]) if render_turns else frame.format(prompt=prompt.text)
        if not prompt.prefill:
            return text
        return text + ("" if not text or text[-1].isspace() else " ") + prompt.prefill

    return render


def prompt_tokens(llm, prompts: Sequence[str | Prompt], *, chat: bool, frame: str = "{prompt}",
                  system: str | None = None) -> list[list[int]]:
    """The tokens each prompt is given to the model as (`prompt_renderer`)."""
    render = prompt_renderer(llm, chat, frame, system)
    return [llm.tokenize(render(prompt).encode("utf-8"), add_bos=True, special=True) for prompt in prompts]


def generate(llm, prompts: Sequence[str | Prompt], *, chat: bool, max_tokens: int,
             setting: SteeringSetting | None = None, settings: Sequence[SteeringSetting] | None = None,
             temperature: float = 0.0, seed: int = 0, seeds: Sequence[int] | None = None,
             frame: str = "{prompt}", system: str | None = None) -> list[str]:
    """Greedy (temperature 0) or seeded sampled continuations under `setting` (or each prompt under its own,
    `settings`; `engine.decoder.generate_tokens`; prompt i draws from seed + i, or from `seeds[i]`), stopped at an
    end-of-generation token (and, for a chat with a model that has no template, where it starts writing the
    user's next turn)."""
    stop_text = conversation.FALLBACK_STOP if chat and not conversation.has_template(llm) else None

    def stop(generated: list[int]) -> bool:
        return stop_text in llm.detokenize(generated[-4:]).decode("utf-8", errors="replace")

    tokens = prompt_tokens(llm, prompts, chat=chat, frame=frame, system=system)
    generated = generate_tokens(llm, tokens, max_tokens=max_tokens, setting=setting, settings=settings,
                                temperature=temperature,
                                seeds=list(seeds) if seeds is not None else [seed + i for i in range(len(prompts))],
                                stop=stop if stop_text else None)
    texts = []
    for prompt, reply in zip(prompts, generated):
        text = llm.detokenize(reply).decode("utf-8", errors="replace")
        if stop_text:
            text = text.split(stop_text)[0]
        # A reply is stripped; a continuation of a prefill keeps its leading space (it joins the prefill).
        continues = isinstance(prompt, Prompt) and prompt.prefill
        texts.append(text.rstrip() if continues else text.strip() if chat else text)
    return texts


def reply_logprobs(llm, prompts: Sequence[str | Prompt], texts: Sequence[str], *, chat: bool,
                   frame: str = "{prompt}") -> list[float]:
    """Mean log-probability per token of each generated text after its prompt (without any system turn), under
    the unsteered model (nan: empty)."""
    return _logprobs_after(llm, [prompts], texts, chat=chat, frame=frame)[0]


def _logprobs_after(llm, prompt_lists: Sequence[Sequence[str | Prompt]], texts: Sequence[str], *, chat: bool,
                    frame: str) -> list[list[float]]:
    """`reply_logprobs` of the same texts after each list of prompts, in one forward pass, so that a request
    heading sequences of several lists is computed once."""
    render = prompt_renderer(llm, chat, frame)
    values = [[float("nan")] * len(texts) for _ in prompt_lists]
    scored = [(which, index, *answer_tokens(llm, render(prompt), text))
              for which, prompts in enumerate(prompt_lists)
              for index, (prompt, text) in enumerate(zip(prompts, texts)) if text.strip()]
    scored = [(which, index, tokens, start) for which, index, tokens, start in scored if start < len(tokens)]
    rows = forward(llm, [tokens for _, _, tokens, _ in scored],
                   [answer_rows(tokens, start) for _, _, tokens, start in scored], setting=OFF)
    for (which, index, tokens, start), logits in zip(scored, rows):
        values[which][index] = float(token_logprobs(logits, tokens, start).mean())
    return values


def perplexities(llm, prompts: Sequence[str | Prompt], texts: Sequence[str], *, chat: bool,
                 frame: str = "{prompt}") -> list[float]:
    """Per-token perplexity of each generated text after its prompt, under the unsteered model (inf: empty)."""
    return [_perplexity(value) for value in reply_logprobs(llm, prompts, texts, chat=chat, frame=frame)]


def _perplexity(logprob: float) -> float:
    return float("inf") if np.isnan(logprob) else float(np.exp(-logprob))


def reply_relevance(llm, prompts: Sequence[str | Prompt], texts: Sequence[str], *, chat: bool,
                    frame: str = "{prompt}") -> tuple[list[float], list[float | None]]:
    """Each reply's mean log-probability after its own prompt (`reply_logprobs`) and whether it answers its own
    request: the pointwise mutual information per token of the reply with its request under the unsteered
    model, that log-probability minus the one after the next item's prompt (cyclically; a prefill stays the
    reply's own). Above 0 (`metrics.is_relevant`): the reply is likelier after the request it answers; an
    off-topic reply (a stock apology, a loop) is about as likely after any request. None: an empty reply, or a
    single prompt. Both in one forward pass: each request is computed once, for its own replies and for the
    previous item's."""
    if len(prompts) < 2:
        return reply_logprobs(llm, prompts, texts, chat=chat, frame=frame), [None] * len(texts)
    asked = [prompt if isinstance(prompt, Prompt) else Prompt(prompt) for prompt in prompts]
    others = [Prompt(asked[(i + 1) % len(asked)].text, asked[i].prefill) for i in range(len(asked))]
    own, other = _logprobs_after(llm, [prompts, others], texts, chat=chat, frame=frame)
    return own, [None if np.isnan(a) or np.isnan(b) else float(a - b) for a, b in zip(own, other)]


def perplexity(llm, prompts: Sequence[str | Prompt], texts: Sequence[str], *, chat: bool,
               frame: str = "{prompt}") -> float:
    """Median per-token perplexity of the generated texts after their prompts, under the unsteered model."""
    return float(np.median(perplexities(llm, prompts, texts, chat=chat, frame=frame)))


def evaluate_generation(llm, task: GenerationTask, prompts: Sequence[str | Prompt],
                        side_prompts: Sequence[str] = (), *, setting: SteeringSetting | None = None,
                        max_tokens: int = 32, temperature: float = 0.0, seed: int = 0, keep_samples: int = 3,
                        system: str | None = None) -> GenerationResult:
    setting = llm.current_setting() if setting is None else setting
    return evaluate_generation_settings(llm, task, prompts, side_prompts, [setting], max_tokens=max_tokens,
                                        temperature=temperature, seed=seed, keep_samples=keep_samples,
                                        system=system)[0]


def evaluate_generation_settings(llm, task: GenerationTask, prompts: Sequence[str | Prompt],
                                 side_prompts: Sequence[str], settings: Sequence[SteeringSetting], *,
                                 max_tokens: int = 32, temperature: float = 0.0, seed: int = 0,
                                 keep_samples: int = 3, system: str | None = None,
                                 gates: Sequence[Gate | None] | None = None, seeds: Sequence[int] | None = None,
                                 sided: Sequence[bool] | None = None) -> list[GenerationResult]:
    """`evaluate_generation` under several settings at once: every prompt once per setting, all in one decode,
    each sequence under its own setting and with the seed it has when evaluated alone (prompt i: seed + i, or
    seeds[k] + i for setting k: one setting given k times with k seeds is k sampled runs). The texts equal
    those of one setting at a time up to the float rounding of batch composition.
    `gates[i]`: setting i is conditional (`conditional`): a prompt's reply is steered, in scope "generation",
    only where the gate fires on the prompt; items say whether it fired, results give the trigger rates.
    `sided[i]`: whether setting i also replies to the side prompts (default: every setting)."""
    gates = list(gates) if gates is not None else [None] * len(settings)
    seeds = list(seeds) if seeds is not None else [seed] * len(settings)
    sided = list(sided) if sided is not None else [True] * len(settings)
    rows, fired = _gated_rows(llm, task, prompts, settings, gates, system)
    every = [prompt for _ in settings for prompt in prompts]
    texts = generate(llm, every, chat=task.chat, max_tokens=max_tokens, settings=rows, temperature=temperature,
                     seeds=[base + index for base in seeds for index in range(len(prompts))], frame=task.frame,
                     system=system)
    side_rates: list[float | None] = [None] * len(settings)
    side_fired: list[list[bool] | None] = [None] * len(settings)
    with_side = [index for index, on in enumerate(sided) if on]
    if side_prompts and with_side:
        side_rows, fired_on_side = _gated_rows(llm, task, side_prompts, [settings[i] for i in with_side],
                                               [gates[i] for i in with_side], system)
        side_texts = generate(llm, [prompt for _ in with_side for prompt in side_prompts], chat=task.chat,
                              max_tokens=max_tokens, settings=side_rows, temperature=temperature,
                              seeds=[seeds[i] + index for i in with_side for index in range(len(side_prompts))],
                              frame=task.frame, system=system)
        for i, part, on in zip(with_side, _parts(side_texts, len(with_side)), fired_on_side):
            side_rates[i], side_fired[i] = metrics.refusal_rate(part), on
    # Each setting's prompts are the same list, so "the next item's request" of `reply_relevance` stays within it.
    items = scored_items(llm, task, every, texts)
    results = []
    for index, (part, side) in enumerate(zip(_parts(items, len(settings)), side_rates)):
        result = _generation_result(part, side, keep_samples)
        if gates[index] is not None:
            for item, on in zip(result.items, fired[index]):
                item["fired"] = bool(on)
            result.trigger_rate = float(np.mean(fired[index])) if fired[index] else None
            result.side_trigger_rate = float(np.mean(side_fired[index])) if side_fired[index] else None
        results.append(result)
    return results


def _gated_rows(llm, task: GenerationTask, prompts: Sequence[str | Prompt], settings: Sequence[SteeringSetting],
                gates: Sequence[Gate | None], system: str | None) -> tuple[list[SteeringSetting], list]:
    """Each (setting, prompt) row's setting, setting by setting; for a gated setting, its generation-scope self
    where the gate fires on the prompt (read unsteered) and OFF elsewhere, with the gate's verdicts."""
    residuals = None
    if any(gate is not None for gate in gates) and prompts:
        residuals = prompt_residuals(llm, task, prompts, system=system)
    rows, fired = [], []
    for setting, gate in zip(settings, gates):
        if gate is None:
            rows += [setting] * len(prompts)
            fired.append(None)
            continue
        verdicts = gate.fires(residuals) if prompts else np.zeros(0, dtype=bool)
        gated = dataclasses.replace(setting, scope="generation") if setting.active else OFF
        rows += [gated if on else OFF for on in verdicts]
        fired.append([bool(on) for on in verdicts])
    return rows, fired


def prompt_residuals(llm, task: GenerationTask, prompts: Sequence[str | Prompt], *,
                     system: str | None = None) -> np.ndarray:
    """The unsteered residual stream at the last token of each prompt as the task renders it (what a
    conditional setting's gate reads): [prompts, layers, width]."""
    return last_prompt_residuals(llm, prompt_tokens(llm, prompts, chat=task.chat, frame=task.frame, system=system))


def _parts(values: list, count: int) -> list[list]:
    """`values` cut into `count` equal consecutive parts (one per setting)."""
    size = len(values) // count
    return [values[index * size:(index + 1) * size] for index in range(count)]


def scored_items(llm, task: GenerationTask, prompts: Sequence[str | Prompt], texts: Sequence[str]) -> list[dict]:
    """Each reply with its scores: the judges', VADER, refusal, perplexity and relevance under the unsteered
    model, words, and the task's own judge when it has one."""
    offensive = metrics.offensive_probability(texts)
    rude = metrics.rude_probability([rudeness.completed_clause(prompt.prefill if isinstance(prompt, Prompt) else "",
                                                               text) for prompt, text in zip(prompts, texts)])
    sentiment = metrics.sentiment(texts)
    refusals = [metrics.is_refusal(text) for text in texts]
    own, related = reply_relevance(llm, prompts, texts, chat=task.chat, frame=task.frame)
    fluency = [_perplexity(value) for value in own]
    unwanted = task.judge(list(texts)) if task.judge is not None else None
    items = [{"prompt": prompt.text if isinstance(prompt, Prompt) else prompt,
              "prefill": prompt.prefill if isinstance(prompt, Prompt) else "", "reply": text,
              "offensive": o, "rude": d, "sentiment": v, "refusal": r, "perplexity": f,
              "words": metrics.word_count(text), "relevance": g}
             for prompt, text, o, d, v, r, f, g in zip(prompts, texts, offensive, rude, sentiment, refusals, fluency,
                                                       related)]
    if unwanted is not None:
        for item, u in zip(items, unwanted):
            item["unwanted"] = u
    return items


def _generation_result(items: list[dict], side_refusal_rate: float | None, keep_samples: int) -> GenerationResult:
    def mean(key: str) -> float:
        return float(np.mean([item[key] for item in items])) if items else 0.0

    unwanted = [item["unwanted"] for item in items if "unwanted" in item]
    return GenerationResult(
        n=len(items),
        sentiment=mean("sentiment"),
        offensive=mean("offensive"),
        offensive_rate=float(np.mean(metrics.is_offensive([item["offensive"] for item in items]))) if items else 0.0,
        refusal_rate=float(np.mean([item["refusal"] for item in items])) if items else 0.0,
        perplexity=float(np.median([item["perplexity"] for item in items])) if items else float("nan"),
        distinct2=metrics.distinct_n([item["reply"] for item in items], 2),
        side_refusal_rate=side_refusal_rate,
        words=mean("words"),
        rude=mean("rude"),
        rude_rate=float(np.mean(metrics.is_rude(np.array([item["rude"] for item in items])))) if items else 0.0,
        relevant_rate=metrics.relevant_rate([item["relevance"] for item in items]),
        unwanted=float(np.mean(unwanted)) if unwanted else None,
        unwanted_rate=float(np.mean(metrics.is_unwanted(np.array(unwanted)))) if unwanted else None,
        samples=[(item["prompt"] + (f" [{item['prefill']}]" if item["prefill"] else ""), item["reply"])
                 for item in items[:keep_samples]],
        items=items,
    )


# ---- side effects ------------------------------------------------------------------------------------------

MAX_PASS_LOGITS_BYTES = 1 << 29  # the logits one pass of `NeutralKL.many` may hold (512 MiB)


class NeutralKL:
    """KL(steered || unsteered) of next-token distributions over every position of neutral texts, under a
    setting; the unsteered log-probabilities are computed once. Every position counts as steered: a setting of
    scope "generation" is measured as if the whole text were generated under it (its strength axis is the same
    as scope "all"'s; otherwise it would read 0 on a text that is all prompt)."""

    def __init__(self, llm, texts: Sequence[str], *, settings_per_pass: int = 1) -> None:
        # One setting per pass by default: several per pass gained nothing on CPUs (scripts/bench_calibration.py:
        # 1.06x on SmolLM2, 0.99x on Gemma-3; 0.88x and 0.69x when all 6 settings' logits were held at once).
        self.llm = llm
        self.settings_per_pass = settings_per_pass
        self.tokens = [llm.tokenize(text.encode("utf-8"), add_bos=True, special=True) for text in texts]
        self.reference = [log_softmax(logits, np.float32) for logits in self._logits(OFF)]

    def _logits(self, setting: SteeringSetting | None) -> list[np.ndarray]:
        return forward(self.llm, self.tokens, [range(len(tokens)) for tokens in self.tokens], setting=setting)

    def __call__(self, setting: SteeringSetting | None = None) -> float:
        return self.many([self.llm.current_setting() if setting is None else setting])[0]

    def many(self, settings: Sequence[SteeringSetting]) -> list[float]:
        """The KL under each setting, `settings_per_pass` settings per pass (at most as many as keep the logits
        of one pass within MAX_PASS_LOGITS_BYTES), each text once per setting, each sequence under its own
        setting."""
        settings = [dataclasses.replace(s, scope="all") if s.active else s for s in settings]
        count = len(self.tokens)
        per_setting = sum(len(tokens) for tokens in self.tokens) * self.llm.n_vocab() * 4
        chunk = max(1, min(self.settings_per_pass, MAX_PASS_LOGITS_BYTES // per_setting))
        values = []
        for start in range(0, len(settings), chunk):
            part = settings[start:start + chunk]
            every = self.tokens * len(part)
            logits = forward(self.llm, every, [range(len(tokens)) for tokens in every],
                             settings=[setting for setting in part for _ in self.tokens])
            for index in range(len(part)):
                values.append(float(np.mean([metrics.kl_from_log_probs(rows, reference) for rows, reference
                                             in zip(logits[index * count:(index + 1) * count], self.reference)])))
        return values


def kl_on_neutral(llm, texts: Sequence[str], setting: SteeringSetting | None = None) -> float:
    """Mean KL(steered || unsteered) of next-token distributions over every position of neutral texts."""
    return NeutralKL(llm, texts)(setting)
