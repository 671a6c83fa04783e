"""The report card of a build: one Markdown page (and its Pareto plot) beside the profile it ships.

It says first what the capture pass read (will it steer?) and whether any method met the target, then the test
table (the behaviour off and on with paired 95% intervals, fluency, harmless refusals, asking the model beside
the steering methods), the plan and what it bought, the dev trials against their side effect, and a few
replies off and on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..localization.steerability import Reading
from .budgets import RELEVANCE_SLACK
from .build import Build, share
from .metrics import BEHAVIOURS
from .tasks import GenerationTask

SAMPLES = 4


def write_card(result: Build, task: GenerationTask, path: Path, *, model: str, command: str,
               plan: dict | None = None) -> Path:
    """Write `path` (Markdown) and `path` with `.png` (the dev trials' Pareto plot); return the Markdown path."""
    plot = path.with_suffix(".png")
    plot_dev_trials(result, task, plot, model)
    behaviour = BEHAVIOURS[task.behaviour]
    also = [BEHAVIOURS[key] for key in task.also]
    lines = [f"# {task.name} on {model}", "", f"`{command}`: {result.seconds / 60:.1f} minutes"
             f"{f' over {result.runs} runs' if result.runs > 1 else ''}.", "",
             f"Data: {task.provenance}.", "", *before_generating(result), verdict(result, task), "", "## Test", "",
             f"{len(next(iter(result.test_items.values()), []))} held-out prompts, each method's dev choice measured "
             "once; intervals are paired bootstrap 95% intervals against unsteered on the same prompts.", "",
             f"| method | dev choice | {behaviour} (unsteered -> on) | difference, 95% CI | relative improvement, "
             f"95% CI | {''.join(f'{name} (unsteered -> on) | ' for name in also)}perplexity x | distinct-2 on / off "
             "| harmless refusals on / off | answers the request on / off | target |",
             "|---|---|---|---|---|" + "---|" * len(also) + "---|---|---|---|---|"]
    for method, c in result.comparisons.items():
        low, high = c["difference_ci"]
        rel_low, rel_high = c["relative_improvement_ci"]
        lines.append(f"| {method}{' (ships)' if method == result.winner else ''} | {result.chosen[method]['setting']} "
                     f"| {c['unsteered']:.3f} -> {c[task.behaviour]:.3f} | {c['difference']:+.3f} "
                     f"({low:+.3f}..{high:+.3f}){' ‡' if c.get('holm_significant') else ''} | "
                     f"{percent(c['relative_improvement'])} ({percent(rel_low)}.."
                     f"{percent(rel_high)}) | {''.join(f'{off:.3f} -> {on:.3f} | ' for off, on in c['also'].values())}"
                     f"{c['perplexity_ratio']:.2f} | {c['distinct2']:.2f} / "
                     f"{c['distinct2_unsteered']:.2f} | {share(c['harmless_refusals'])} / "
                     f"{share(c['harmless_refusals_unsteered'])} | {share(c.get('relevant'))} / "
                     f"{share(c.get('relevant_unsteered'))} | {'met' if c['meets_target'] else 'not met'} |")
    for method in dict.fromkeys(trial["method"] for trial in result.dev):
        if method not in result.chosen:
            lines.append(f"| {method} | none: no dev trial kept fluency, refusals and relevance | | | | "
                         f"{'| ' * len(also)}| | | | not measured |")
    for method, c in result.comparisons.items():
        if c.get("trigger_rate") is not None:
            lines += ["", f"{method} is conditional: its gate fired on {c['trigger_rate']:.0%} of the test prompts "
                      f"and {rate(c.get('harmless_trigger_rate'))} of the harmless ones; its perplexity counts the "
                      "replies where it fired."]
    lines += ["", "‡: the difference from unsteered holds after Holm's correction over every method measured on "
              "test (paired bootstrap p-values, family-wise 5%)."]
    lines += ["", f"Target: {behaviour} improved by at least {result.target:.0%} of the way from unsteered to its "
              "best value, perplexity of the replies within the fluency limit, distinct bigrams kept, harmless "
              f"refusals not risen, the share of replies that answer their request down by at most "
              f"{RELEVANCE_SLACK:.0%} (a reply answers it when it is likelier after it than after another request)."]
    if plan:
        measured = max((abs(h - c["difference"]) for c in result.comparisons.values() for h in c["difference_ci"]),
                       default=float("nan"))
        lines += ["", "## Plan", "", f"{plan.get('minutes', '?')} minutes asked: {result.pairs} training pairs "
                  f"captured; {plan['dev_trials']} dev trials on {plan['dev_items']} prompts (KL budgets "
                  f"{', '.join(f'{b:g}' for b in plan['kl_budgets'])}); {plan['test_items']} test prompts. Expected "
                  f"half-width of the headline interval +-{plan['expected_half_width']:.3f}; measured (widest "
                  f"method) +-{measured:.3f}."]
    lines += ["", "## Dev trials", "", f"![{behaviour} against perplexity on dev]({plot.name})", "",
              f"| method | setting | {behaviour} | {''.join(f'{name} | ' for name in also)}perplexity x | harmless "
              "refusals | admissible |", "|---|---|---|" + "---|" * len(also) + "---|---|---|"]
    for trial in result.dev:
        lines.append(f"| {trial['method']} | {trial['setting']} | {trial[task.behaviour]:.3f} | "
                     f"{''.join(f'{trial[key]:.3f} | ' for key in task.also)}"
                     f"{trial['perplexity_ratio']:.2f} | {share(trial['harmless_refusals'])} | "
                     f"{'yes' if trial['admissible'] else 'no'} |")
    lines += ["", "## Replies", ""] + sample_lines(result)
    path.write_text("\n".join(lines) + "\n")
    return path


def before_generating(result: Build) -> list[str]:
    """Will it steer? The capture pass's reading, before the measured answer."""
    if result.reading is None:
        return []
    return [f"Will it steer? Read from the capture pass alone: {Reading(**result.reading).describe()}.", ""]


def verdict(result: Build, task: GenerationTask) -> str:
    met = [m for m, c in result.comparisons.items() if c["meets_target"]]
    if result.winner is None:
        return ("**No profile**: no shippable steering method improved the behaviour on test (or none was chosen "
                "on dev), so none ships.")
    c = result.comparisons[result.winner]
    low, high = c["relative_improvement_ci"]
    effect = (f"{BEHAVIOURS[task.behaviour]} {c['unsteered']:.3f} -> {c[task.behaviour]:.3f} "
              f"({percent(c['relative_improvement'])}, 95% CI {percent(low)}..{percent(high)}) at perplexity "
              f"x{c['perplexity_ratio']:.2f}")
    if low <= 0:
        effect += "; the interval includes no change, so the effect is within noise on this many prompts"
    if result.winner in met:
        return f"**Target met by {', '.join(met)}.** The profile ships **{result.winner}**: {effect}."
    return (f"**Nothing met the target.** The profile ships **{result.winner}**, the best method that keeps "
            f"fluency, refusals and relevance (or the best at all when none does): {effect}. Treat it as weak.")


def rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def percent(value: float) -> str:
    return f"{round(100 * value) + 0:+d}%" if np.isfinite(value) else "-"  # "-": unsteered was at the best value


def sample_lines(result: Build) -> list[str]:
    """Replies to the first test prompts where unsteered and the shipped method differ."""
    if result.winner is None or "unsteered" not in result.test_items:
        return ["(none)"]
    lines = []
    pairs = zip(result.test_items["unsteered"], result.test_items[result.winner])
    for off, on in [(off, on) for off, on in pairs if off["reply"] != on["reply"]][:SAMPLES]:
        lines += [f"> {_one_line(off['prompt'])}", "", f"- off: {_one_line(off['reply'])}",
                  f"- on ({result.winner}): {_one_line(on['reply'])}", ""]
    return lines or ["(every reply the same off and on)"]


def _one_line(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")[:300]


def plot_dev_trials(result: Build, task: GenerationTask, path: Path, model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.2))
    methods = list(dict.fromkeys(trial["method"] for trial in result.dev))
    colors = plt.get_cmap("tab10")
    for index, method in enumerate(methods):
        own = [(t["perplexity_ratio"], t[task.behaviour]) for t in result.dev if t["method"] == method]
        axis.plot(*zip(*own), "o-" if len(own) > 1 else "o", color=colors(index % 10), label=method, alpha=0.8)
    axis.set_xlabel("perplexity of the replies / unsteered")
    axis.set_ylabel(f"dev {BEHAVIOURS[task.behaviour]}")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="best")
    axis.set_title(f"{model} / {task.name}: dev trials")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
