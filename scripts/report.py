#!/usr/bin/env python3
"""Turn the sweep results (reports/<model>/<task>.json) into reports/<model>.md with PNG plots.

    .venv/bin/python scripts/report.py                 # every model under reports/
    .venv/bin/python scripts/report.py --models smollm2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METHOD_ORDER = ["unsteered", "austeer", "single-unit", "whole-layer", "caa", "random-units"]
SITE_COLORS = {"attn": "tab:blue", "ffn": "tab:orange", "layer": "tab:green"}


def load(model_dir: Path) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(model_dir.glob("*.json"))}


def dev_trials(report: dict, method: str) -> list[dict]:
    return [t for t in report["trials"] if t["setting"]["method"] == method and t["score"] > -1e9]


def plot_k_and_alpha(report: dict, path: Path, score_name: str) -> None:
    trials = dev_trials(report, "austeer") + dev_trials(report, "single-unit")
    base = report["best"]["unsteered"]["score"]
    figure, (by_k, by_alpha) = plt.subplots(1, 2, figsize=(10, 3.8))
    for site, color in SITE_COLORS.items():
        own = [t for t in trials if t["setting"]["site"] == site]
        if not own:
            continue
        ks = sorted({t["setting"]["k"] for t in own})
        alphas = sorted({t["setting"]["alpha"] for t in own})
        by_k.plot(ks, [max(t["score"] for t in own if t["setting"]["k"] == k) for k in ks], "o-", color=color,
                  label=site)
        by_alpha.plot(alphas, [max(t["score"] for t in own if t["setting"]["alpha"] == a) for a in alphas], "o-",
                      color=color, label=site)
    ks = sorted({t["setting"]["k"] for t in trials})
    alphas = sorted({t["setting"]["alpha"] for t in trials})
    for axis, name, ticks in ((by_k, "k (units steered)", ks), (by_alpha, "alpha", alphas)):
        axis.axhline(base, color="gray", linestyle="--", label="unsteered")
        axis.set_xscale("log")
        axis.set_xticks(ticks)
        axis.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.set_xlabel(name)
        axis.set_ylabel(f"dev {score_name} (best over the other knob)")
        axis.legend()
        axis.grid(alpha=0.3)
    by_k.set_title(f"{report['task']}: AUSteer vs k")
    by_alpha.set_title(f"{report['task']}: AUSteer vs alpha")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def test_rows(report: dict) -> list[tuple[str, dict]]:
    rows = [(m, report["test"][m]) for m in METHOD_ORDER if m in report["test"]]
    rows += [(name, trial) for name, trial in report["test"].items() if name.startswith("random-units")]
    return rows


def plot_methods(report: dict, path: Path, score_name: str, generation: bool) -> None:
    rows = test_rows(report)
    labels = [name for name, _ in rows]
    figure, axes = plt.subplots(1, 2 if generation else 1, figsize=(11 if generation else 7, 3.8), squeeze=False)
    axis = axes[0][0]
    axis.bar(labels, [trial["score"] for _, trial in rows], color="tab:blue")
    axis.set_ylabel(f"test {score_name}")
    axis.set_title(f"{report['task']}: methods on test (tuned on dev)")
    axis.tick_params(axis="x", rotation=30)
    if not generation:
        axis.axhline(0.5, color="gray", linestyle="--", label="chance / always one answer")
        axis.legend(loc="lower right")
        axis.set_ylim(0, 1)
    else:
        fluency = axes[0][1]
        fluency.bar(labels, [trial["result"]["perplexity"] for _, trial in rows], color="tab:red")
        fluency.set_ylabel("median perplexity (unsteered model)")
        fluency.set_title("fluency of the same generations (lower is better)")
        fluency.tick_params(axis="x", rotation=30)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_unit_map(report: dict, path: Path) -> None:
    figure, axes = plt.subplots(1, len(report["units"]), figsize=(4 * len(report["units"]), 3.6), squeeze=False)
    for axis, (site, units) in zip(axes[0], report["units"].items()):
        top = units[:100]
        colors = ["tab:red" if u["r_pos"] >= u["r_neg"] else "tab:blue" for u in top]
        axis.scatter([u["layer"] for u in top], [u["dim"] for u in top], c=colors, s=12)
        axis.set_title(f"top-100 {site} units (red: score > 0)")
        axis.set_xlabel("layer")
        axis.set_ylabel("dim")
        axis.grid(alpha=0.3)
    figure.suptitle(f"{report['task']}: where the selected units are")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def describe(trial: dict, generation: bool) -> str:
    result = trial["result"]
    kl = f"{trial['kl']:.3f}" if trial.get("kl") is not None else "-"
    if generation:
        side = result.get("side_refusal_rate")
        side_text = f"{side:.2f}" if side is not None else "-"
        return (f"{trial['score']:.3f} | {result['offensive']:.3f} | {result['refusal_rate']:.2f} | {side_text} | "
                f"{result['perplexity']:.2f} | {result['distinct2']:.2f} | {kl}")
    return (f"{result['balanced_accuracy']:.3f} | {result['accuracy']:.3f} | {result['greedy_accuracy']:.3f} | "
            f"{result['mean_margin']:+.2f} | {kl}")


def write_model_report(model: str, reports: dict[str, dict], out_dir: Path) -> Path:
    lines = [f"# AUSteer on {model}: test results", "",
             "Localized on the model's float32 copy (train split); alpha, k and site chosen on dev with the "
             "quantized file; each method's dev-best setting measured once on test (never tuned on test). "
             "KL: mean KL(steered || unsteered) of next-token distributions on 10 neutral texts.", ""]
    for task, report in reports.items():
        generation = report["task_kind"] == "generation"
        score_name = "VADER compound" if generation else "balanced accuracy"
        lines += [f"## {task}", "", f"Data: {report['provenance']}.", ""]
        if generation:
            lines += ["| method | dev-chosen setting | sentiment (test score) | offensive prob | refusals | "
                      "refusals on harmless | perplexity | distinct-2 | KL |", "|---|---|---|---|---|---|---|---|---|"]
        else:
            unsteered = report["test"]["unsteered"]["result"]
            lines += [f"Test: {unsteered['n']} items, balanced (majority baseline "
                      f"{unsteered['majority_baseline']:.2f}; an always-the-same-answer model scores 0.50 balanced "
                      "accuracy).", "",
                      "| method | dev-chosen setting | balanced accuracy | accuracy | greedy 1-token accuracy | "
                      "mean margin | KL |", "|---|---|---|---|---|---|---|"]
        for name, trial in test_rows(report):
            setting = " ".join(f"{k}={v}" for k, v in trial["setting"].items() if v is not None and k != "method")
            if not trial.get("admissible", True):
                setting += " (no setting within the fluency bounds on dev; the most fluent one)"
            lines.append(f"| {name} | {setting or '-'} | {describe(trial, generation)} |")
        stem = f"{model}-{task}"
        plot_k_and_alpha(report, out_dir / f"{stem}-k-alpha.png", score_name)
        plot_methods(report, out_dir / f"{stem}-methods.png", score_name, generation)
        plot_unit_map(report, out_dir / f"{stem}-units.png")
        lines += ["", f"![k and alpha]({stem}-k-alpha.png)", "", f"![methods]({stem}-methods.png)", "",
                  f"![unit map]({stem}-units.png)", ""]
        if generation:
            lines += ["Samples (test, first prompts):", ""]
            for name in ("unsteered", "austeer", "caa"):
                for prompt, text in report["test"][name]["result"]["samples"][:2]:
                    flat = " ".join(text.split())[:160]
                    lines.append(f"- *{name}* - {prompt} -> {flat}")
            lines.append("")
        lines += [f"Sweep time {report['seconds'] / 60:.1f} min, {len(report['trials'])} dev trials.", ""]
    path = out_dir / f"{model}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", default="reports")
    parser.add_argument("--models", help="comma separated (default: every folder under --reports)")
    args = parser.parse_args()
    root = Path(args.reports)
    names = args.models.split(",") if args.models else sorted(p.name for p in root.iterdir() if p.is_dir())
    for name in names:
        reports = load(root / name)
        if reports:
            print(write_model_report(name, reports, root))


if __name__ == "__main__":
    main()
