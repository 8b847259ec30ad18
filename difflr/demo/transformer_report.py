"""The transformer experiment's part of the report: claims and figures.

`report` gives the tables, CSV, Markdown and the figures both experiments
share; this module adds, for `--experiment transformer`, each paper's claim
beside what the run measured (`claims`), a figure per claim (`llrd.png`,
`lora_plus.png`; LP-FT's is the shared `forgetting_and_shift.png`), and
`difflr.summary` of each arm's optimizer, once.
"""

import io
import os

import numpy as np

import difflr
from difflr.demo import claims as claims_lib
from difflr.demo import data
from difflr.demo import experiment
from difflr.demo import report

FILES = ("llrd.png", "lora_plus.png")


def claim_lines(results, summaries=None):
    """Each claim: the paper's words, then what this run measured."""
    summaries = summaries or report.summarize(results)
    lines = []
    for claim in claims_lib.claims(results, summaries):
        lines += ["", f"{claim.title}", f"  the paper: {claim.paper}",
                  "  this run:"]
        lines += [f"    {line}" for line in claim.measured]
        if claim.verdict:
            lines.append(f"  here: {claim.verdict}")
        lines.append(f"  figure: {claim.figure}")
    if lines:
        lines = ["", "What the papers claim, and what this run measured "
                 f"(failed run: below the majority class + "
                 f"{claims_lib.FAIL_MARGIN:g}; {report.WITHIN_NOISE}: the "
                 "95% interval contains 0)"] + lines
    return lines


def summaries_text(config, lr=None):
    """`difflr.summary` of each arm's optimizer on a fresh model, at base
    rate `lr` (the middle of the grid by default), in the first epoch (LP-FT
    unfreezes the body halfway: learning_rates.png shows both states)."""
    lr = config.lrs[len(config.lrs) // 2] if lr is None else lr
    arms = experiment.arms_of(config)
    net = experiment.network_of(config)
    out = io.StringIO()
    for name in config.arms:
        model, optimizer, callbacks = report.rate_states(
            arms[name], lr, config.epochs, net)
        for callback in callbacks:
            callback.on_epoch_begin(0)
        out.write(f"\n{name} at base rate {lr:g}, first epoch:\n")
        difflr.summary(model, optimizer,
                       print_fn=lambda line: out.write(line + "\n"))
    return out.getvalue()


def section(results):
    """The terminal's transformer section: claims, then the summaries."""
    text = "\n".join(claim_lines(results))
    return (text + "\n\nThe learning rate of each layer, per arm "
            "(difflr.summary):\n" + summaries_text(results.config))


def markdown(results):
    """The claims as a Markdown section, with their figures."""
    summaries = report.summarize(results)
    out = ["", "## What the papers claim, and what this run measured", "",
           f"A failed run ends below the majority class + "
           f"{claims_lib.FAIL_MARGIN:g}; intervals are Student's t at 95%, "
           f"\"{report.WITHIN_NOISE}\" when they contain 0.", "",
           "| claim | the paper | this run | reproduced here? |",
           "|---|---|---|---|"]
    found = claims_lib.claims(results, summaries)
    for claim in found:
        out.append(f"| {claim.title} | {claim.paper} | "
                   + "<br>".join(claim.measured) + f" | {claim.verdict} |")
    for claim in found:
        out += ["", f"![{claim.title}]({claim.figure})"]
    return "\n".join(out) + "\n"


def plot_llrd(results, path):
    """Every run of `full` and the LLRD arms: accuracy against base rate,
    seed by seed, against the failure line (majority class + margin)."""
    plt = report.pyplot()
    config = results.config
    names = [n for n in ("full",) + claims_lib.LLRD_ARMS if n in config.arms]
    styles = report.arm_styles(plt, tuple(experiment.arms_of(config)))
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    fail = float(np.mean(list(claims_lib.floors(config).values()))) \
        + claims_lib.FAIL_MARGIN
    ax.axhline(fail, color="0.4", linestyle=(0, (1, 3)), linewidth=1)
    ax.annotate(f"failed below {fail:.3f} (majority class + "
                f"{claims_lib.FAIL_MARGIN:g})", (0.01, fail),
                xycoords=("axes fraction", "data"), xytext=(0, 3),
                textcoords="offset points", fontsize="x-small", color="0.3")
    for i, name in enumerate(names):
        color, marker, line = styles[name]
        runs = [r for r in results.runs
                if r["arm"] == name and r["source"] == experiment.DIGITS]
        shift = 1.06 ** (i - (len(names) - 1) / 2)
        ax.scatter([r["lr"] * shift for r in runs],
                   [r["accuracy"] for r in runs], marker=marker,
                   facecolors="none", edgecolors=color, s=28)
        means = [np.mean([r["accuracy"] for r in runs if r["lr"] == lr])
                 for lr in config.lrs]
        ax.plot(np.array(config.lrs) * shift, means, color=color,
                linestyle=line, marker=marker, label=f"{name} (mean)")
    ax.set_xscale("log")
    ax.set_xlabel("base learning rate (the head's)", fontsize="small")
    ax.set_ylabel("test accuracy (digit % 3)")
    ax.set_title("LLRD: accuracy and spread over seeds (open: each seed)",
                 fontsize="medium")
    ax.legend(fontsize="small")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    report.save_figure(fig, path)


def plot_lora_plus(results, path):
    """LoRA and LoRA+ at their best rates: accuracy against steps."""
    plt = report.pyplot()
    config = results.config
    summaries = {s.arm: s for s in report.summarize(results)
                 if s.source == experiment.DIGITS}
    comparison = claims_lib.lora_comparison(results, summaries, config)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    if comparison is None:
        ax.annotate("needs both lora and lora+", (0.5, 0.5),
                    xycoords="axes fraction", ha="center")
    else:
        _lora_curves(ax, plt, config, summaries, comparison)
    report.save_figure(fig, path)


def _lora_curves(ax, plt, config, summaries, comparison):
    styles = report.arm_styles(plt, tuple(experiment.arms_of(config)))
    steps = comparison["steps"] * np.arange(1, config.epochs + 1)
    for name in ("lora", "lora+"):
        color, marker, line = styles[name]
        curves = np.array(comparison["curves"][name])
        for curve in curves:
            ax.plot(steps, curve, color=color, alpha=0.3, linewidth=0.8)
        s = summaries[name]
        ax.plot(steps, curves.mean(axis=0), color=color, marker=marker,
                linestyle=line, label=f"{name} at lr {s.lrs[s.best]:g} "
                                      "(mean; thin: seeds)")
    ax.axhline(comparison["target"], color="0.4", linestyle=(0, (1, 3)),
               linewidth=1)
    ax.annotate(f"target {comparison['target']:.3f}", (0.01,
                comparison["target"]), xycoords=("axes fraction", "data"),
                xytext=(0, 3), textcoords="offset points",
                fontsize="x-small", color="0.3")
    ax.set_xlabel("optimizer steps", fontsize="small")
    ax.set_ylabel(f"test accuracy (digit % {data.TASK_CLASSES})")
    ax.set_title("LoRA vs LoRA+ (ratio 16), each at its best base rate",
                 fontsize="medium")
    ax.legend(fontsize="small")
    ax.grid(True, alpha=0.3)


def write_all(results, out_dir):
    """Writes `FILES` into `out_dir` (`report.write_all` calls it)."""
    plot_llrd(results, os.path.join(out_dir, "llrd.png"))
    plot_lora_plus(results, os.path.join(out_dir, "lora_plus.png"))
