#!/usr/bin/env python3
"""Turn matched-cost sweep results (reports/evidence/<model>/<task>.json) into reports/evidence/<model>.md with
Pareto plots: one per task, the dev score of every method's measured settings against their side effect
(KL on neutral text, and the perplexity ratio of neutral continuations), each method's frontier as a line;
and reports/evidence/summary.md, the headline tables: every model and task, each budget.

    .venv/bin/python scripts/report.py                       # every model under reports/evidence
    .venv/bin/python scripts/report.py --reports DIR --models smollm2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

from austeer_gguf.evaluation.sweep import compare
from austeer_gguf.evaluation.tasks import load_task

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METHODS = ["austeer", "single-unit", "whole-layer", "random-units", "caa-layer", "caa-range", "prompting",
           "prompting+austeer", "unsteered"]
COLORS = dict(zip(METHODS, ["tab:red", "tab:orange", "tab:olive", "tab:pink", "tab:blue", "tab:cyan", "tab:green",
                            "tab:purple", "black"]))


TASK_ORDER = ["word-polarity", "word-polarity-question", "sentiment", "detox"]


def load(model_dir: Path) -> dict[str, dict]:
    paths = sorted(model_dir.glob("*.json"), key=lambda p: (TASK_ORDER.index(p.stem) if p.stem in TASK_ORDER
                                                           else len(TASK_ORDER), p.stem))
    return {path.stem: with_holm(json.loads(path.read_text())) for path in paths}


def with_holm(report: dict) -> dict:
    """Reports written before the comparisons carried p-values and Holm's check get them from their per-item
    test results (the same bootstrap, so the same intervals)."""
    for budget, results in report["test"].items():
        stored = report["comparisons"].get(budget, {})
        if not all("holm" in comparison for comparison in stored.values()):
            report["comparisons"][budget] = compare(load_task(report["task"]), results)
    return report


def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The upper-left frontier: for increasing cost, the best score so far."""
    best, out = -float("inf"), []
    for cost, score in sorted(points):
        if score > best:
            best = score
            out.append((cost, score))
    return out


def plot_pareto(report: dict, path: Path, score_name: str) -> None:
    measured = [t for t in report["trials"] if t["score"] is not None]
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for axis, cost, label in ((axes[0], "kl", "KL(steered || unsteered) on neutral text, nats"),
                              (axes[1], "perplexity_ratio", "perplexity of neutral continuations / unsteered")):
        for method in METHODS:
            own = [(t[cost], t["score"]) for t in measured if t["setting"]["method"] == method
                   and t[cost] is not None]
            if not own:
                continue
            axis.scatter(*zip(*own), color=COLORS[method], s=14, alpha=0.5)
            line = frontier(own)
            axis.plot(*zip(*line), "-", color=COLORS[method], label=method)
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
    generation = report["task_kind"] == "generation"
    chosen, tests, comparisons = report["chosen"][budget], report["test"][budget], report["comparisons"].get(budget, {})
    head = ("| method | dev-chosen setting | test score | vs AUSteer (95% CI) | KL (dev) | neutral ppl ratio (dev) | "
            + ("offensive rate | VADER | harmless refusals | test ppl / unsteered | test distinct-2 / unsteered |"
               if generation else "AUC | greedy 1-token acc. |"))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for method in METHODS:
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
        auc = "-" if test.get("auc") is None else f"{test['auc']:.3f}"
        extra = (f"{test['offensive_rate']:.3f} | {test['sentiment']:+.3f} | "
                 f"{test['side_refusal_rate'] if test['side_refusal_rate'] is not None else '-'} | "
                 f"{ratio(test['perplexity'], tests['unsteered']['perplexity'])} | "
                 f"{ratio(test['distinct2'], tests['unsteered']['distinct2'])} |" if generation
                 else f"{auc} | {test['greedy_accuracy']:.3f} |")
        lines.append(f"| {method} | {setting} | {test['score']:.3f} | {versus} | {trial['kl']:.3f} | "
                     f"{trial['perplexity_ratio']:.2f} | {extra}")
    return lines


def ratio(value: float, unsteered: float) -> str:
    return f"{value / unsteered:.2f}" if unsteered else "-"  # "-": the unsteered texts had none (tiny runs)


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
        generation = report["task_kind"] == "generation"
        score_name = ("-offensive rate" if report["task"] == "detox" else "VADER compound") if generation \
            else "balanced accuracy"
        stem = f"{model}-{task}"
        plot_pareto(report, out_dir / f"{stem}-pareto.png", score_name)
        counts = ", ".join(f"{m} {n}" for m, n in report["trial_counts"].items())
        lines += [f"## {task}", "", f"Data: {report['provenance']}; {report['n_pairs']} training pairs.", "",
                  f"Dev trials per method: {counts}.", ""]
        if not generation:
            unsteered = report["test"][report["config"]["budgets"][0]["name"]]["unsteered"]
            lines += [f"Test: {unsteered['n']} items; majority baseline (always the commoner label) "
                      f"{unsteered['majority_baseline']:.3f}, whose balanced accuracy is 0.500.", ""]
        for budget in report["config"]["budgets"]:
            lines += [f"### Budget {budget['name']}: KL <= {budget['kl']}, perplexity <= {budget['perplexity']}x", ""]
            lines += budget_table(report, budget["name"]) + [""]
        lines += [f"![Pareto]({stem}-pareto.png)", ""]
        if generation:
            tests = report["test"][report["config"]["budgets"][-1]["name"]]
            lines += ["Samples (test, loose budget):", ""]
            for method in ("unsteered", "austeer", "caa-range", "prompting"):
                if method in tests:
                    for item in tests[method]["items"][:2]:
                        lines.append(f"- *{method}* - {item['prompt']} {item['prefill']} -> "
                                     f"{' '.join(item['reply'].split())[:160]}")
            lines.append("")
        seconds = ", ".join(f"{part} {value / 60:.1f} min" for part, value in report["seconds"].items())
        lines += [f"Time: {seconds}.", ""]
    path = out_dir / f"{model}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


HEADLINE_METHODS = ["unsteered", "austeer", "single-unit", "whole-layer", "random-units", "caa-layer", "caa-range",
                    "prompting", "prompting+austeer"]


def headline_cell(report: dict, budget: str, method: str) -> str:
    """The test figure of a method (offensive rate for detox, else the score), bold when better than AUSteer and
    italic when worse (95% interval clear of 0), plain within noise, with a dagger when the difference holds
    after Holm's correction over the row; "-" when no setting was within budget."""
    test = report["test"][budget].get(method)
    if test is None:
        return "-"
    value = test["offensive_rate"] if report["task"] == "detox" else test["score"]
    comparison = report["comparisons"].get(budget, {}).get(method)
    text = f"{value:.3f}"
    if comparison is None or comparison["within_noise"]:
        return text
    text = f"**{text}**" if comparison["difference"] > 0 else f"_{text}_"
    return text + (" †" if comparison["holm"] else "")


def write_summary(all_reports: dict[str, dict[str, dict]], out_dir: Path) -> Path:
    measure = {"detox": "offensive rate, lower is better", "sentiment": "VADER compound"}
    lines = ["# Matched-cost evidence: every model and task", "",
             "Test figures of each method's dev-chosen setting within the budget. **Bold**: better than AUSteer, "
             "_italic_: worse, both with a paired bootstrap 95% interval clear of 0; plain: within noise of AUSteer; "
             "†: the difference also holds after Holm's correction over the row's comparisons (family-wise 5%). "
             "-: no dev setting within the budget. Choice tasks: balanced accuracy (always giving one answer scores "
             "0.500; the majority baselines are in the model reports).", ""]
    budgets = next(iter(next(iter(all_reports.values())).values()))["config"]["budgets"]
    for budget in budgets:
        lines += [f"## Budget {budget['name']}: KL <= {budget['kl']}, perplexity <= {budget['perplexity']}x", ""]
        head = "| model / task | " + " | ".join(HEADLINE_METHODS) + " | minutes |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for model, reports in all_reports.items():
            for task, report in reports.items():
                name = f"{task} ({measure[task]})" if task in measure else task
                cells = [headline_cell(report, budget["name"], method) for method in HEADLINE_METHODS]
                minutes = sum(report["seconds"].values()) / 60
                lines.append(f"| {model} / {name} | " + " | ".join(cells) + f" | {minutes:.0f} |")
        lines.append("")
    total = sum(sum(r["seconds"].values()) for reports in all_reports.values() for r in reports.values()) / 60
    lines += [f"Wall time of the runs above: {total:.0f} min on 2 cores.", ""]
    path = out_dir / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", default="reports/evidence")
    parser.add_argument("--models", help="comma separated (default: every folder under --reports)")
    args = parser.parse_args()
    root = Path(args.reports)
    names = args.models.split(",") if args.models else sorted(p.name for p in root.iterdir() if p.is_dir())
    all_reports = {name: reports for name in names if (reports := load(root / name))}
    for name, reports in all_reports.items():
        print(write_model_report(name, reports, root))
    if all_reports:
        print(write_summary(all_reports, root))


if __name__ == "__main__":
    main()
