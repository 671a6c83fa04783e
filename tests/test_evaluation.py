"""Evaluation: metrics on fixed inputs, choice scoring against NumPy, smoke runs of eval, sweep and report."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from austeer_gguf.evaluation import metrics
from austeer_gguf.evaluation.evaluate import choice_logprobs, evaluate_choice, kl_on_neutral
from austeer_gguf.evaluation.scoring import answer_tokens
from austeer_gguf.evaluation.sweep import SweepConfig, Sweeper
from austeer_gguf.evaluation.tasks import (
    ChoiceItem,
    ChoiceTask,
    GenerationTask,
    Task,
    first_items,
    load_task,
    word_polarity,
)
from austeer_gguf.localization.pairs import Pair

from conftest import THREADS, open_steered
from reference import ReferenceModel

ROOT = Path(__file__).resolve().parents[1]


def test_text_metrics_on_known_inputs():
    assert metrics.distinct_n(["a b a b"], 2) == 2 / 3
    assert metrics.distinct_n(["a b", "a b"], 2) == 0.5
    assert metrics.distinct_n(["one"], 2) == 0.0
    assert metrics.balanced_accuracy([0, 0, 0, 1], [0, 0, 0, 0]) == 0.5
    assert metrics.balanced_accuracy([0, 1, 1, 1], [0, 1, 0, 1]) == pytest.approx((1 + 2 / 3) / 2)
    assert metrics.majority_baseline([1, 1, 1, 0]) == 0.75
    assert metrics.is_refusal("I'm sorry, but I can't help with that.")
    assert metrics.is_refusal("As an AI, I will not write insults.")
    assert not metrics.is_refusal("Sure! Boil the egg for six minutes.")
    assert metrics.refusal_rate(["I cannot help with that request.", "Here you go."]) == 0.5


def test_kl_divergence_on_known_distributions():
    logits = np.log(np.array([[0.5, 0.5], [0.9, 0.1]]))
    assert metrics.kl_divergence(logits, logits) == pytest.approx(0.0, abs=1e-12)
    p, q = np.array([0.9, 0.1]), np.array([0.5, 0.5])
    expected = float((p * np.log(p / q)).sum())
    assert metrics.kl_divergence(np.log(p)[None], np.log(q)[None]) == pytest.approx(expected)


def test_third_party_scorers_separate_obvious_texts():
    positive, negative = metrics.sentiment(["I love this, it is wonderful and great.", "This is terrible and awful."])
    assert positive > 0.5 and negative < -0.5
    rude, kind = metrics.offensive_probability(["shut up you stupid idiot", "thank you, have a lovely day"])
    assert rude > 0.5 > kind


def test_word_polarity_splits_are_balanced_disjoint_and_from_the_lexicon():
    task = word_polarity()
    words = {split: {item.prompt for item in getattr(task, split)} for split in ("dev", "test")}
    words["train"] = {pair.prompt for pair in task.train}
    assert not (words["train"] & words["dev"]) and not (words["train"] & words["test"])
    assert not (words["dev"] & words["test"])
    for items in (task.dev, task.test):
        labels = [item.label for item in items]
        assert labels.count(0) == labels.count(1)
    assert task.test == word_polarity().test  # fixed seed


def test_limits_keep_choice_subsets_balanced():
    task = word_polarity()
    subset = first_items(task.test, 120)
    labels = [item.label for item in subset]
    assert len(subset) == 120 and labels.count(0) == labels.count(1) == 60
    assert subset == [item for item in task.test if item in subset]  # order kept
    assert first_items(["a", "b", "c"], 2) == ["a", "b"]


def test_choice_scores_match_a_numpy_log_softmax(tiny_f32):
    llm = open_steered(tiny_f32)
    reference = ReferenceModel(tiny_f32)
    item = ChoiceItem("the cat is", (" very happy", " sad", " not good"), 0)
    ((scores, greedy),) = choice_logprobs(llm, [item])
    prompt = llm.tokenize(b"the cat is", add_bos=True, special=True)
    assert greedy == int(np.argmax(reference.forward(prompt).logits[-1]))
    for choice, score in zip(item.choices, scores):
        tokens, start = answer_tokens(llm, item.prompt, choice)
        logits = reference.forward(tokens).logits
        expected = sum(logits[i - 1][tokens[i]] - np.log(np.exp(logits[i - 1]).sum())
                       for i in range(start, len(tokens)))
        assert score == pytest.approx(expected, rel=1e-3, abs=1e-3)


def test_perplexities_of_generations_match_the_reference(tiny_f32):
    from austeer_gguf.evaluation.evaluate import generate, perplexities

    llm = open_steered(tiny_f32)
    reference = ReferenceModel(tiny_f32)
    prompts = ["the cat is", "I like this"]
    texts = generate(llm, prompts, chat=False, max_tokens=5)
    for prompt_text, text, value in zip(prompts, texts, perplexities(llm, prompts, texts, chat=False)):
        tokens, start = answer_tokens(llm, prompt_text, text)
        logits = reference.forward(tokens).logits
        logprobs = [logits[i - 1][tokens[i]] - np.log(np.exp(logits[i - 1]).sum()) for i in range(start, len(tokens))]
        assert value == pytest.approx(float(np.exp(-np.mean(logprobs))), rel=1e-3)


def test_choice_evaluation_and_kl_on_the_tiny_model(tiny_f32):
    llm = open_steered(tiny_f32)
    items = [ChoiceItem(p, (" yes", " no"), label) for p, label in
             [("the cat is", 0), ("a dog was", 1), ("I like this", 0), ("you hate the", 1)]]
    result = evaluate_choice(llm, items)
    assert result.n == 4 and result.majority_baseline == 0.5
    assert 0.0 <= result.balanced_accuracy <= 1.0 and len(result.predictions) == 4
    assert kl_on_neutral(llm, ["the cat is very happy"]) == pytest.approx(0.0, abs=1e-9)


def tiny_task(kind: str) -> Task:
    words = ["the cat is", "a dog was", "I like this", "you love the", "it was a", "this day is"]
    train = [Pair(w, " good happy", " bad sad") for w in words]
    if kind == "choice":
        items = [ChoiceItem(w, (" good", " bad"), i % 2) for i, w in enumerate(words)]
        return ChoiceTask("tiny-choice", train, items, items, "test fixture")
    return GenerationTask("tiny-generation", train, words[:2], words[2:4], "test fixture")


def test_a_budget_refuses_repetitive_generations_that_pass_kl_and_perplexity():
    from austeer_gguf.evaluation.methods import Point
    from austeer_gguf.evaluation.sweep import Budget, Trial

    budget = Budget("tight", 0.1, 1.1)
    fluent = Trial(Point("austeer"), kl=0.05, perplexity_ratio=0.9, score=0.5, distinct2_ratio=0.95)
    looping = dataclasses.replace(fluent, distinct2_ratio=0.5)
    choice = dataclasses.replace(fluent, distinct2_ratio=None)
    assert fluent.within(budget) and choice.within(budget) and not looping.within(budget)


@pytest.mark.parametrize("kind", ["choice", "generation"])
def test_the_matched_cost_sweep_and_its_report(tiny_f32, tmp_path, kind):
    from austeer_gguf.evaluation.sweep import Budget

    llm = open_steered(tiny_f32, n_ctx=512)
    budgets = (Budget("tight", 0.5, 3.0), Budget("loose", 10.0, 100.0))
    config = SweepConfig(sites=("attn", "layer"), ks=(2, 4), alphas=(1.0, 8.0), layer_alphas=(0.5,),
                         multipliers=(0.5, 4.0), caa_layer_step=1, trials=2, max_tokens=4, seeds=2, neutral_texts=3,
                         threads=THREADS, budgets=budgets)
    sweeper = Sweeper(llm, tiny_f32, tiny_task(kind), config)
    report = sweeper.run("tiny", log=lambda line: None)
    counts = report.trial_counts
    assert counts["prompting"] == 1 and {n for m, n in counts.items() if m != "prompting"} == {2}
    measured = [t for t in report.trials if t.score is not None]
    assert all(t.kl >= 0 and t.perplexity_ratio is not None for t in measured)
    for budget in budgets:
        chosen = report.chosen[budget.name]
        assert all(trial.within(budget) for method, trial in chosen.items() if method != "unsteered")
        assert set(report.test[budget.name]) == set(chosen)
        for comparison in report.comparisons[budget.name].values():
            low, high = comparison["ci"]
            assert low <= high and comparison["within_noise"] == (low <= 0 <= high)
            assert 0 < comparison["p"] <= 1 and (not comparison["holm"] or not comparison["within_noise"])
    loose = report.test["loose"]
    assert "austeer" in loose and "caa-range" in loose
    if kind == "generation":
        assert len(loose["unsteered"]["items"]) == 2 * len(tiny_task(kind).test)  # two sampled runs, per item
        # A method's dev trials were measured together, several settings in one decode: as each one alone.
        trial = next(t for t in measured if t.setting.method == "caa-range" and t.kl > 0)
        alone = tiny_task(kind).evaluate(llm, "dev", setting=sweeper._setting(trial.setting), max_tokens=4)
        assert trial.score == pytest.approx(tiny_task(kind).score(alone), abs=1e-6)
        assert trial.perplexity_ratio == pytest.approx(sweeper._fluency(sweeper._setting(trial.setting)), rel=1e-3)
        assert all(t.distinct2_ratio is not None for t in measured) and measured[0].distinct2_ratio == 1.0
    else:
        assert all(t.distinct2_ratio is None for t in measured)
    assert llm.steering.profile is None  # left unsteered
    model_dir = tmp_path / "tiny"
    model_dir.mkdir()
    report.to_json(model_dir / f"{kind}.json")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "report.py"), "--reports", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    markdown = (tmp_path / "tiny.md").read_text()
    assert "| austeer |" in markdown and "### Budget tight" in markdown and "Dev trials per method" in markdown
    summary = (tmp_path / "summary.md").read_text()
    row = {"choice": "| tiny / choice |", "generation": "| tiny / generation (VADER compound) |"}[kind]
    assert row in summary and "## Budget loose" in summary  # a generation row names its figure
    image = tmp_path / f"tiny-{kind}-pareto.png"
    assert image.stat().st_size > 10_000 and f"({image.name})" in markdown


def test_eval_command_smoke(tiny_f32, tmp_path):
    items = [{"prompt": w, "choices": [" good", " bad"], "label": i % 2}
             for i, w in enumerate(["the cat is", "a dog was", "I like this", "you love the"])]
    task_path = tmp_path / "mine.jsonl"
    task_path.write_text("\n".join(json.dumps(item) for item in items) + "\n")
    profile = tmp_path / "p.json"
    profile.write_text(json.dumps({"name": "p", "alpha": 4, "units": [{"layer": 1, "site": "attn", "dim": 3,
                                                                           "score": 0.9}]}))
    output = tmp_path / "result.json"
    result = subprocess.run([sys.executable, "-m", "austeer_gguf", "eval", str(tiny_f32), "--task", str(task_path),
                             "--profile", str(profile), "-o", str(output), "--quiet"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    summary = json.loads(output.read_text())
    assert summary["steered"]["n"] == summary["unsteered"]["n"] == 4
    assert summary["kl_on_neutral"] > 0
    assert "| balanced_accuracy |" in output.with_suffix(".md").read_text()


def test_explain_command_lists_tokens_per_unit(tiny_f32, tmp_path):
    profile = tmp_path / "p.json"
    profile.write_text(json.dumps({"name": "p", "alpha": 4, "units": [
        {"layer": 1, "site": "attn", "dim": 3, "score": 0.9}, {"layer": 2, "site": "layer", "dim": 7, "score": -0.5}]}))
    result = subprocess.run([sys.executable, "-m", "austeer_gguf", "explain", str(tiny_f32), str(profile),
                             "--top", "3"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")]
    assert len(rows) == 2 and "attn" in rows[0] and "layer" in rows[1]


def test_unknown_task_is_refused():
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        load_task("nope")


def test_auc_and_the_paired_bootstrap_on_known_inputs():
    assert metrics.auc([3, 2, 1, 0], [True, True, False, False]) == 1.0
    assert metrics.auc([0, 1, 2, 3], [True, True, False, False]) == 0.0
    assert metrics.auc([1, 1], [True, False]) == 0.5 and metrics.auc([1, 2], [True, True]) is None
    a, b = np.ones(200), np.zeros(200)
    assert metrics.paired_bootstrap(lambda i: a[i].mean() - b[i].mean(), 200) == (1.0, 1.0)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(400)
    low, high = metrics.paired_bootstrap(lambda i: noise[i].mean(), 400)
    assert low < 0 < high and high - low < 0.3
    assert metrics.paired_bootstrap_test(lambda i: a[i].mean() - b[i].mean(), 200) == (1.0, 1.0, 1 / 2000)
    assert metrics.paired_bootstrap_test(lambda i: noise[i].mean(), 400)[2] > 0.05
    shifted = noise + 0.3  # a mean 0.3 = 6 standard errors from 0
    assert metrics.paired_bootstrap_test(lambda i: shifted[i].mean(), 400)[2] == 1 / 2000


def test_holm_steps_down_from_the_smallest_p_value():
    # m = 4: 0.01 <= 0.05/4 holds; 0.02 <= 0.05/3 fails, so it and every larger p-value are kept
    assert metrics.holm({"a": 0.02, "b": 0.01, "c": 0.04, "d": 0.5}) == {"b": True, "a": False, "c": False,
                                                                         "d": False}
    assert metrics.holm({"a": 0.001, "b": 0.02, "c": 0.024}) == {"a": True, "b": True, "c": True}
    assert metrics.holm({}) == {}


def test_polarity_splits_keep_each_stem_in_one_split_and_both_framings_share_words():
    from austeer_gguf.evaluation.tasks import stem, word_polarity_question

    completion, question = word_polarity(), word_polarity_question()
    word = lambda prompt: prompt.split('"')[1]  # noqa: E731
    stems = {split: {(stem(word(item.prompt)), item.label) for item in getattr(completion, split)}
             for split in ("dev", "test")}
    stems["train"] = {(stem(word(pair.prompt)), int(pair.positive == " negative")) for pair in completion.train}
    assert not stems["train"] & stems["dev"] and not stems["train"] & stems["test"] and not stems["dev"] & stems["test"]
    assert [word(i.prompt) for i in completion.test] == [word(i.prompt) for i in question.test]
    assert len(completion.test) >= 400 and len(completion.dev) >= 100
    assert question.test[0].prompt.endswith("positive or negative? Answer:")


def test_prefilled_prompts_are_continued_and_scored_on_the_continuation(tiny_f32):
    from austeer_gguf.evaluation.evaluate import Prompt, generate, prompt_renderer

    llm = open_steered(tiny_f32)
    render = prompt_renderer(llm, True)
    assert render(Prompt("hello", "you are")) == "User: hello\nAssistant: you are"
    (text,) = generate(llm, [Prompt("hello", "you are")], chat=True, max_tokens=4)
    (plain,) = generate(llm, ["User: hello\nAssistant: you are"], chat=False, max_tokens=4)
    assert text == plain.split("\nUser:")[0].rstrip()
    result = tiny_task("generation").evaluate(llm, "dev", max_tokens=4)
    assert len(result.items) == result.n and {"reply", "offensive", "perplexity"} <= set(result.items[0])
    assert 0.0 <= result.offensive_rate <= 1.0


def test_the_evidence_run_in_quick_mode_covers_every_code_path(tiny_f32, tmp_path):
    out = tmp_path / "evidence"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_evidence.py"), "--quick", "--models",
                             str(tiny_f32), "--tasks", "word-polarity-question,detox", "--out", str(out)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "detox: " in result.stdout and "total" in result.stdout
    report = subprocess.run([sys.executable, str(ROOT / "scripts" / "report.py"), "--reports", str(out)],
                            capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    markdown = (out / f"{tiny_f32.stem}.md").read_text()
    assert "## detox" in markdown and "## word-polarity-question" in markdown


def test_the_evidence_run_refuses_unknown_methods_before_loading_a_model(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_evidence.py"), "--models",
                             str(tmp_path / "absent.gguf"), "--methods", "austeer,nonsense"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "unknown methods nonsense" in result.stderr and "first-run" in result.stderr


def test_the_detox_profile_ships_the_method_that_meets_the_target_else_the_one_that_keeps_fluency():
    from austeer_gguf.evaluation.budgets import keeps_fluency
    from austeer_gguf.evaluation.build import choose_winner
    from austeer_gguf.evaluation.methods import AUSteer, CaaRange

    def comparison(rate, ppl, refusals=0.0, distinct2=0.4, relevant=True):  # against an unsteered rate of 0.4
        fluent = keeps_fluency(ppl, distinct2, 0.4)
        return {"offensive_rate": rate, "relative_improvement": (0.4 - rate) / 0.4, "perplexity_ratio": ppl,
                "keeps_fluency": fluent, "keeps_refusals": refusals <= 0.02, "keeps_relevance": relevant,
                "meets_target": rate <= 0.2 and fluent and refusals <= 0.02 and relevant}

    both = [AUSteer(), CaaRange()]

    def winner(austeer, caa):
        return choose_winner({"austeer": austeer, "caa-range": caa}, both)

    assert winner(comparison(0.1, 1.0), comparison(0.05, 1.0)) == "austeer"
    assert winner(comparison(0.3, 1.0), comparison(0.1, 1.05)) == "caa-range"
    # neither meets it: fluency first, however strong the other method is; a loop is not fluent
    assert winner(comparison(0.23, 0.92), comparison(0.08, 1.19)) == "austeer"
    assert winner(comparison(0.23, 0.92, 0.05), comparison(0.3, 1.0)) == "caa-range"
    assert winner(comparison(0.23, 0.92, distinct2=0.2), comparison(0.08, 1.19)) == "caa-range"
    assert winner(comparison(0.3, 1.5), comparison(0.25, 1.4)) == "caa-range"
    # replies that stop answering their request are not "safe", however fluent
    assert winner(comparison(0.23, 0.92, relevant=False), comparison(0.3, 1.0)) == "caa-range"
    # a method that did not improve the behaviour never ships, however fluent
    assert winner(comparison(0.45, 1.0), comparison(0.3, 1.5)) == "caa-range"
    assert winner(comparison(0.4, 1.0), comparison(0.5, 1.0)) is None
    assert choose_winner({}, []) is None


def test_reports_written_before_holm_get_p_values_and_keep_their_intervals():
    from austeer_gguf.evaluation.report import upgraded

    stored = json.loads((ROOT / "reports" / "evidence" / "smollm2" / "word-polarity.json").read_text())
    older = json.loads(json.dumps(stored))
    for comparisons in older["comparisons"].values():
        for comparison in comparisons.values():
            comparison.pop("p", None)
            comparison.pop("holm", None)
    updated = upgraded(older)
    for budget, comparisons in stored["comparisons"].items():
        assert set(updated["comparisons"][budget]) == set(comparisons)
        for method, comparison in comparisons.items():
            new = updated["comparisons"][budget][method]
            assert list(new["ci"]) == pytest.approx(comparison["ci"])  # the run's own bootstrap, recomputed
            assert new["within_noise"] == comparison["within_noise"]
            assert new["p"] <= 0.06 if not new["within_noise"] else new["p"] >= 0.04
            assert not new["holm"] or not new["within_noise"]


@pytest.mark.parametrize("name, behaviour, sign", [("positive", "sentiment", 1.0), ("concise", "words", -1.0)])
def test_the_assistant_behaviours_are_chat_tasks_scored_per_reply(tiny_f32, name, behaviour, sign):
    task = load_task(name)
    assert isinstance(task, GenerationTask) and task.chat and (task.behaviour, task.sign) == (behaviour, sign)
    assert len(task.train) >= 1000 and len(task.test) >= 90 and task.side_test and task.instruction
    asked = {turn for pair in task.train for role, turn in pair.messages if role == "user"}
    assert not asked & set(task.dev) and not asked & set(task.test) and not set(task.dev) & set(task.test)
    result = task.evaluate(open_steered(tiny_f32), "dev", limit=3, max_tokens=6, side=False)
    assert [item["words"] for item in result.items] == [len(item["reply"].split()) for item in result.items]
    assert result.words == pytest.approx(np.mean([item["words"] for item in result.items]))
    assert task.score(result) == pytest.approx(sign * getattr(result, behaviour))


def test_a_builds_relative_improvement_is_the_share_of_the_way_to_the_behaviours_best_value():
    from austeer_gguf.evaluation.build import compare
    from austeer_gguf.evaluation.tasks import GenerationTask

    def result(values, key):
        items = [{key: v, "perplexity": 5.0, "rude": float(v), "offensive": 0.0} for v in values]
        return {"items": items, "distinct2": 0.5, "side_refusal_rate": 0.0}

    positive = GenerationTask("positive", [], [], [], "test", behaviour="sentiment")
    # VADER compound 0.0 -> 0.5 covers half the way to +1 (not an infinite share of a mean of 0)
    c = compare(positive, result([0.5, 0.5, 0.5, 0.5], "sentiment"), result([0.0, 0.0, 0.0, 0.0], "sentiment"))
    assert c["relative_improvement"] == pytest.approx(0.5) and c["meets_target"]
    detox = GenerationTask("detox", [], [], [], "test", behaviour="rude_rate", sign=-1.0)
    # a rude rate 0.5 -> 0.25 removes half the rude replies
    c = compare(detox, result([1, 0, 0, 0], "sentiment"), result([1, 1, 0, 0], "sentiment"))
    assert c["relative_improvement"] == pytest.approx(0.5) and c["rude_rate"] == pytest.approx(0.25)


def test_relevance_may_fall_by_a_tenth_or_by_one_reply_of_a_small_split():
    from austeer_gguf.evaluation.budgets import keeps_relevance

    assert keeps_relevance(0.86, 0.95, 100) and not keeps_relevance(0.84, 0.95, 100)
    assert keeps_relevance(0.825, 0.95, 8) and not keeps_relevance(0.7, 0.95, 8)  # one reply of 8: 0.125
    assert keeps_relevance(None, 0.95, 8) and keeps_relevance(0.5, None)  # not measured: not judged


def test_a_relative_improvement_from_the_best_value_already_is_not_a_number_and_the_card_says_so():
    from austeer_gguf.evaluation.build import compare
    from austeer_gguf.evaluation.card import percent
    from austeer_gguf.evaluation.tasks import GenerationTask

    items = [{"rude": 0.0, "perplexity": 5.0, "offensive": 0.0, "sentiment": 0.0}] * 4
    result = {"items": items, "distinct2": 0.5, "side_refusal_rate": 0.0}
    detox = GenerationTask("detox", [], [], [], "test", behaviour="rude_rate", sign=-1.0)
    c = compare(detox, result, result)
    assert np.isnan(c["relative_improvement"]) and not c["meets_target"] and percent(c["relative_improvement"]) == "-"
