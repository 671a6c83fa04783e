"""Matched-cost sweep results (`sweep.SweepReport` JSON) as Markdown with Pareto plots: one page per model
(`write_model_report`: per task, the dev score of every method's measured settings against their side effect,
each method's frontier as a line, and a table per budget) and the headline tables of every model and task
(`write_summary`). Methods are shown in the order and colours the report names (`methods.Method.describe`),
tasks by their kind's columns (`tasks.KINDS`) and their headline figure. scripts/report.py is the command.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from . import metrics
from .methods import METHODS
from .sweep import compare
from .tasks import KINDS, load_task

TASK_ORDER = ["word-polarity", "word-polarity-question", "sentiment", "detox"]


def load(model_dir: Path) -> dict[str, dict]:
    paths = sorted(model_dir.glob("*.json"), key=lambda p: (TASK_ORDER.index(p.stem) if p.stem in TASK_ORDER
                                                           else len(TASK_ORDER), p.stem))
    return {path.stem: upgraded(json.loads(path.read_text())) for path in paths}


def upgraded(report: dict) -> dict:
    """Reports written by earlier sweeps get what they lack from their task and their per-item test results:
    the headline figure, the methods shown, and p-values with Holm's check (the same bootstrap, so the same
    intervals)."""
    task = None
    if "headline" not in report or not all("holm" in c for budget in report["comparisons"].values()
                                           for c in budget.values()):
        task = task_as_written(report)
    if "headline" not in report:
        report["headline"] = task.headline
    if "methods" not in report:
        present = {trial["setting"]["method"] for trial in report["trials"]}
        report["methods"] = [method.describe() for method in METHODS if method.name in present]
    reference = next((m.name for m in METHODS if m.reference), "austeer")
    for budget, results in report["test"].items():
        stored = report["comparisons"].get(budget, {})
        if not all("holm" in comparison for comparison in stored.values()):
            report["comparisons"][budget] = compare(task, results, reference)
    return report


def task_as_written(report: dict):
    """The report's task, scored by the behaviour its figures were computed from: detox reports written before
    the rudeness judge (and before reports named their headline) scored the profanity detector's rate."""
    task = load_task(report["task"])
    if task.kind != "generation":
        return task
    if "headline" in report:
        return dataclasses.replace(task, behaviour=report["headline"]["key"])
    result = next(result for budget in report["test"].values() for result in budget.values())
    if result.get(task.behaviour) is not None:
        return task
    written = next(key for key in metrics.BEHAVIOURS
                   if result.get(key) is not None and abs(task.sign * result[key] - result["score"]) < 1e-9)
    return dataclasses.replace(task, behaviour=written)


def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The upper-left frontier: for increasing cost, the best score so far."""
    best, out = -float("inf"), []
    for cost, score in sorted(points):
        if score > best:
            best = score
            out.append((cost, score))
    return out


def plot_pareto(report: dict, path: Path, score_name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [t for t in report["trials"] if t["score"] is not None]
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for axis, cost, label in ((axes[0], "kl", "KL(steered || unsteered) on neutral text, nats"),
                              (axes[1], "perplexity_ratio", "perplexity of neutral continuations / unsteered")):
        for method in report["methods"]:
            own = [(t[cost], t["score"]) for t in measured if t["setting"]["method"] == method["name"]
                   and t[cost] is not None]
            if not own:
                continue
            axis.scatter(*zip(*own), color=method["color"], s=14, alpha=0.5)
            axis.plot(*zip(*frontier(own)), "-", color=method["color"], label=method["name"])
        for budget in report["config"]["budgets"]:
            axis.axvline(budget["kl" if cost == "kl" else "perplexity"], color="gray", linestyle=":", linewidth=1)
        axis.set_xscale("symlog" if cost == "kl" else "linear", **({"linthresh": 0.01} if cost == "kl" else {}))
        axis.set_xlabel(label)
        axis.set_ylabel(f"dev {score_name}")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    figure.suptitle(f"{report['model']} / {report['task']}: score against side effect (dev; dotted: budgets)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def budget_table(report: dict, budget: str) -> list[str]:
    kind = KINDS[report["task_kind"]]
    chosen, tests, comparisons = report["chosen"][budget], report["test"][budget], report["comparisons"].get(budget, {})
    unsteered = _baseline(report, tests)
    columns = list(kind.report_columns(unsteered, unsteered))
    head = ("| method | dev-chosen setting | test score | vs AUSteer (95% CI) | KL (dev) | neutral ppl ratio (dev) | "
            + " | ".join(columns) + " |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for method in _names(report):
        if method not in tests:
            continue
        trial, test = chosen[method], tests[method]
        setting = " ".join(f"{k}={v}" for k, v in trial["setting"].items()
                           if v not in (None, False) and k != "method") or "-"
        comparison = comparisons.get(method)
        versus = "-" if comparison is None else (
            f"{comparison['difference']:+.3f} ({comparison['ci'][0]:+.3f}..{comparison['ci'][1]:+.3f}, "
            f"{p_value(comparison['p'])})" + (" within noise" if comparison["within_noise"] else "")
            + (" holds after Holm" if comparison["holm"] else ""))
        extra = " | ".join(kind.report_columns(test, unsteered).values())
        lines.append(f"| {method} | {setting} | {test['score']:.3f} | {versus} | {trial['kl']:.3f} | "
                     f"{trial['perplexity_ratio']:.2f} | {extra} |")
    return lines


def _names(report: dict) -> list[str]:
    return [method["name"] for method in report["methods"]]


def _measured(report: dict) -> set[str]:
    """The methods the run measured: a dev trial or a test figure (a sweep lists conditional steering, which
    only the build measures)."""
    tried = {trial["setting"]["method"] for trial in report["trials"]}
    tested = {method for results in report["test"].values() for method in results}
    return (tried | tested) & set(_names(report))


def _baseline(report: dict, tests: dict) -> dict:
    baselines = [m.name for m in METHODS if m.baseline]
    return next(tests[name] for name in baselines if name in tests)


def p_value(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p {p:.3f}"


def write_model_report(model: str, reports: dict[str, dict], out_dir: Path) -> Path:
    lines = [f"# AUSteer on {model}: matched-cost evidence", "",
             "Localized on the float32 copy (train pairs); every method screened along its strength axis by KL on "
             "neutral text, the same number of settings per method measured on dev, each method's best dev setting "
             "within a side-effect budget measured once on test. Differences against AUSteer: paired bootstrap 95% "
             "intervals over test items and p-values; an interval containing 0 is within noise; \"holds after "
             "Holm\": the difference stays significant after Holm's correction over the budget's comparisons "
             "(family-wise 5%).", ""]
    for task, report in reports.items():
        score_name = report["headline"]["name"]
        stem = f"{model}-{task}"
        plot_pareto(report, out_dir / f"{stem}-pareto.png", score_name)
        counts = ", ".join(f"{m} {n}" for m, n in report["trial_counts"].items())
        lines += [f"## {task}", "", f"Data: {report['provenance']}; {report['n_pairs']} training pairs.", "",
                  f"Dev trials per method: {counts}.", ""]
        unsteered = _baseline(report, report["test"][report["config"]["budgets"][0]["name"]])
        if "majority_baseline" in unsteered:
            lines += [f"Test: {unsteered['n']} items; majority baseline (always the commoner label) "
                      f"{unsteered['majority_baseline']:.3f}, whose balanced accuracy is 0.500.", ""]
        for budget in report["config"]["budgets"]:
            lines += [f"### Budget {budget['name']}: KL <= {budget['kl']}, perplexity <= {budget['perplexity']}x", ""]
            lines += budget_table(report, budget["name"]) + [""]
        lines += [f"![Pareto]({stem}-pareto.png)", ""]
        tests = report["test"][report["config"]["budgets"][-1]["name"]]
        sampled = [name for name in _names(report) if "items" in tests.get(name, {})]
        if sampled:
            lines += ["Samples (test, loose budget; the first item of each method):", ""]
            for method in sampled:
                item = tests[method]["items"][0]
                lines.append(f"- *{method}* - {item['prompt']} {item['prefill']} -> "
                             f"{' '.join(item['reply'].split())[:160]}")
            lines.append("")
        seconds = ", ".join(f"{part} {value / 60:.1f} min" for part, value in report["seconds"].items())
        lines += [f"Time: {seconds}.", ""]
    path = out_dir / f"{model}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def headline_cell(report: dict, budget: str, method: str) -> str:
    """The test figure of a method (the task's headline), bold when better than AUSteer and italic when worse
    (95% interval clear of 0), plain within noise, with a dagger when the difference holds after Holm's
    correction over the row; "-" when no setting was within budget, "n/m" when the run did not measure the method
    (a report written before the method existed, or conditional steering, which only the build measures)."""
    if method not in _measured(report):
        return "n/m"
    test = report["test"][budget].get(method)
    if test is None:
        return "-"
    value = test[report["headline"]["key"]]
    comparison = report["comparisons"].get(budget, {}).get(method)
    text = f"{value:.3f}"
    if comparison is None or comparison["within_noise"]:
        return text
    text = f"**{text}**" if comparison["difference"] > 0 else f"_{text}_"
    return text + (" †" if comparison["holm"] else "")


def write_summary(all_reports: dict[str, dict[str, dict]], out_dir: Path) -> Path:
    lines = ["# Matched-cost evidence: every model and task", "",
             "Test figures of each method's dev-chosen setting within the budget. **Bold**: better than AUSteer, "
             "_italic_: worse, both with a paired bootstrap 95% interval clear of 0; plain: within noise of AUSteer; "
             "†: the difference also holds after Holm's correction over the row's comparisons (family-wise 5%). "
             "-: no dev setting within the budget; n/m: not measured in that run (written before the method existed, "
             "or conditional steering, which only the build measures: `reports/detox/`). "
             "Choice tasks: balanced accuracy (always giving one answer scores "
             "0.500; the majority baselines are in the model reports).", ""]
    reports = [report for model_reports in all_reports.values() for report in model_reports.values()]
    shown = list(dict.fromkeys(name for report in reports for name in _names(report)))
    for budget in reports[0]["config"]["budgets"]:
        lines += [f"## Budget {budget['name']}: KL <= {budget['kl']}, perplexity <= {budget['perplexity']}x", ""]
        head = "| model / task | " + " | ".join(shown) + " | minutes |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for model, model_reports in all_reports.items():
            for task, report in model_reports.items():
                headline = report["headline"]
                name = task if headline["key"] == "score" else f"{task} ({headline['name']})"
                cells = [headline_cell(report, budget["name"], method) for method in shown]
                minutes = sum(report["seconds"].values()) / 60
                lines.append(f"| {model} / {name} | " + " | ".join(cells) + f" | {minutes:.0f} |")
        lines.append("")
    total = sum(sum(r["seconds"].values()) for r in reports) / 60
    lines += [f"Wall time of the runs above: {total:.0f} min on 2 cores.", ""]
    path = out_dir / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path
