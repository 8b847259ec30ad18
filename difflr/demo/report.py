"""The demo's results: terminal tables, CSV, Markdown and PNG plots.

Per arm (and pretraining source), over the grid of base learning rates:

- the mean test accuracy over seeds at each base rate, and its standard
  deviation (sample std, `ddof=1`; none with a single seed);
- the best rate: the one with the highest mean (chosen on the test set, so
  an optimistic, oracle choice, the same for every arm);
- the worst rate: the one with the lowest mean, i.e. how much choosing the
  rate badly costs;
- against `full` (uniform fine-tuning), paired by seed: each arm at its best
  rate minus `full` at its best rate, seed by seed (within a seed every arm
  sees the same labelled images, head initialisation and batches), as mean
  ± std of the differences and the number of seeds the arm wins; "within
  noise" when the 95% interval of the mean difference contains 0 (Student's
  t, the spread pooled over the arms: `_pool`), i.e. these seeds cannot
  separate the arm from `full`.

The other measures of `experiment.MEASURES` (retained 10-way accuracy, the
shifted test sets) get the same mean and std at each base rate, and the same
paired comparison, taken at each arm's best rate for the new task: the rate
one would have picked, not the one that flatters the measure.

Every file is written to a temporary file in the output directory first and
then renamed over its name (`os.replace`), so none is ever half-written.
"""

import csv
import dataclasses
import io
import math
import os
import platform
import tempfile

import keras
import numpy as np

import difflr
from difflr.demo import arms as arms_lib
from difflr.demo import catalog
from difflr.demo import data
from difflr.demo import experiment
from difflr.demo import network
from difflr import _machine

CSV_COLUMNS = ("source", "arm", "ulmfit_row", "seed", "base_lr",
               "test_accuracy", "retained_accuracy", "translated_accuracy",
               "noisy_accuracy")
FILES = ("results.csv", "results.md", "accuracy_vs_lr.png",
         "learning_rates.png", "forgetting_and_shift.png")


def files(config):
    """The files `write_all` writes for `config`: `FILES`, and the
    transformer experiment's figures per claim."""
    if config.experiment == "transformer":
        from difflr.demo import transformer_report

        return FILES + transformer_report.FILES
    return FILES
# Column titles of `experiment.MEASURES`.
TITLES = {"accuracy": "new task", "retained": "retained 10-way",
          "translated": "translated", "noisy": "noisy"}
# What fine-tuning kept: the pretraining task, and the new one under shifts.
KEPT = ("retained",) + tuple(experiment.SHIFTED)


# What the tables and the figure say of a paired difference whose interval
# contains 0.
WITHIN_NOISE = "within noise"
NOISE_NOTE = (f"{WITHIN_NOISE}: the 95% interval of the mean paired "
              "difference contains 0 (Student's t, with the spread of the "
              "differences pooled over the arms compared with full on that "
              "measure), so these seeds cannot separate the arm from full")


@dataclasses.dataclass
class Measure:
    """One measure of one arm: per base rate, the value of each seed."""
    scores: list
    vs_full: tuple = None  # (mean, std, wins, seeds) of paired differences
    differences: list = None  # those differences, seed by seed
    pooled: tuple = None  # (std, degrees of freedom): see `_pool`

    @property
    def means(self):
        return [float(np.mean(s)) for s in self.scores]

    @property
    def stds(self):
        return [_std(s) for s in self.scores]

    @property
    def interval(self):
        """The 95% interval of the mean paired difference, or None.

        Student's t, with the pooled spread of `_pool`. None without `full`
        to compare with or with a single seed (no spread to judge by).
        """
        if self.differences is None or self.pooled is None:
            return None
        std, dof = self.pooled
        half = (_t_quantile(0.975, dof) * std
                / math.sqrt(len(self.differences)))
        mean = float(np.mean(self.differences))
        return mean - half, mean + half

    @property
    def separated(self):
        """Whether the seeds separate the arm from `full` on this measure.

        True when the interval excludes 0, False when it contains it, None
        when there is no interval (no `full`, or a single seed).
        """
        interval = self.interval
        if interval is None:
            return None
        return not interval[0] <= 0 <= interval[1]


@dataclasses.dataclass
class ArmSummary:
    source: str
    arm: str
    ulmfit_row: str
    lrs: list
    measures: dict  # name in `experiment.MEASURES` -> `Measure`; `scratch`
    # has no `retained` (its body was not pretrained)

    @property
    def means(self):  # the new task's, as for the rest of this class
        return self.measures["accuracy"].means

    @property
    def stds(self):
        return self.measures["accuracy"].stds

    @property
    def vs_full(self):
        return self.measures["accuracy"].vs_full

    @property
    def best(self):
        return int(np.argmax(self.means))

    @property
    def worst(self):
        return int(np.argmin(self.means))


def summarize(results):
    """One `ArmSummary` per (source, arm), in the order they ran."""
    config = results.config
    run = {(r["source"], r["arm"], r["lr"], r["seed"]): r
           for r in results.runs}
    summaries = []
    for source in experiment.sources(config):
        by_arm = {}
        for arm in experiment.arms_for(config, source):
            measures = {}
            for name in experiment.MEASURES:
                scores = [[run[source, arm.name, lr, seed].get(name)
                           for seed in config.seeds] for lr in config.lrs]
                if all(v is not None for v in np.ravel(scores)):
                    measures[name] = Measure(scores)
            by_arm[arm.name] = ArmSummary(source, arm.name, arm.ulmfit_row,
                                          list(config.lrs), measures)
        full = by_arm.get("full")
        for name, summary in by_arm.items():
            if full is not None and name != "full":
                _compare(summary, full)
        _pool(by_arm.values())
        summaries += by_arm.values()
    return summaries


def _pool(summaries):
    """Sets `pooled`: per measure, the std of the paired differences pooled
    over the arms of `summaries` (one source) compared with `full`.

    Two seeds give each arm one degree of freedom: its own std is a wild
    guess, and two differences that happen to agree would make any gap look
    certain. Pooled over the arms, the spread has their degrees of freedom
    together (the error term of arms x seeds, seeds as blocks).
    """
    for name in experiment.MEASURES:
        measures = [s.measures[name] for s in summaries
                    if name in s.measures
                    and s.measures[name].differences is not None]
        dof = sum(len(m.differences) - 1 for m in measures)
        if dof == 0:
            continue
        variance = sum((len(m.differences) - 1) * _std(m.differences) ** 2
                       for m in measures if len(m.differences) > 1) / dof
        for measure in measures:
            measure.pooled = (math.sqrt(variance), dof)


def _compare(summary, full):
    """Sets each measure's `vs_full`: paired by seed, at the best rates."""
    for name, measure in summary.measures.items():
        d = (np.array(measure.scores[summary.best])
             - np.array(full.measures[name].scores[full.best]))
        measure.vs_full = (float(np.mean(d)), _std(d), int(np.sum(d > 0)),
                           len(d))
        measure.differences = [float(v) for v in d]


def _std(values):
    """Sample standard deviation; NaN for a single value."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def _t_quantile(p, dof):
    """Student's t quantile (scipy comes with scikit-learn, the demo's)."""
    from scipy import stats

    return float(stats.t.ppf(p, dof))


def _paired(measure):
    """`+0.100 ± 0.100 (2/3)`, and `, within noise` when not separated."""
    if measure is None or measure.vs_full is None:
        return "-"
    mean, std, wins, n = measure.vs_full
    spread = "" if math.isnan(std) else f" ± {std:.3f}"
    noise = f", {WITHIN_NOISE}" if measure.separated is False else ""
    return f"{mean:+.3f}{spread} ({wins}/{n}){noise}"


def _pm(mean, std):
    return f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def _lr(lr):
    return f"{lr:g}"


def _setup(config):
    seeds = (f"mean ± std over {len(config.seeds)} seeds"
             if len(config.seeds) > 1 else "one seed")
    return (f"test accuracy on `digit % 3` ({data.TASK_CLASSES} classes), "
            f"{config.shots} labelled images per digit, "
            f"{config.epochs} epochs; {seeds}")


def _pretrained(results, source):
    """The pretrained networks' mean 10-way accuracy on the test images."""
    scores = [p["heldout_accuracy"] for p in results.pretraining
              if p["source"] == source]
    return float(np.mean(scores)) if scores else math.nan


def _kept_notes(results, source):
    """What the measures of `KEPT` are, one sentence each."""
    shuffled = (", pixels shuffled as in its pretraining"
                if source == experiment.CONTROL else "")
    return [
        "retained 10-way: the pretrained 10-way head put back on the "
        f"fine-tuned body, on the same test images{shuffled} (the "
        f"pretrained network: {_pretrained(results, source):.3f});",
        "translated: the test images each moved one pixel (pretraining "
        "showed such shifts, fine-tuning did not);",
        f"noisy: Gaussian noise of std {data.NOISE_STD:g} on every pixel "
        "(shown by neither).",
    ]


def _row_title(config):
    """What the second column names: ULMFiT's row, or the recipe's paper."""
    return "ULMFiT row" if config.experiment == "cnn" else "recipe"


def _accuracy_lines(rows, paired, row_title="ULMFiT row"):
    """The terminal's table of the new task: best, worst, against full."""
    head = (f"{'arm':<12} {row_title:<19} "
            f"{'best over the grid':<26} {'worst over the grid':<26}")
    sub = (f"{'':<12} {'':<19} "
           f"{'accuracy':<17}{'lr':<9} {'accuracy':<17}{'lr':<9}")
    lines = [head + (" best - full's best" if paired else ""),
             sub + (" paired (seeds won)" if paired else "")]
    for s in rows:
        line = (f"{s.arm:<12} {s.ulmfit_row:<19} "
                f"{_pm(s.means[s.best], s.stds[s.best]):<17}"
                f"{_lr(s.lrs[s.best]):<9} "
                f"{_pm(s.means[s.worst], s.stds[s.worst]):<17}"
                f"{_lr(s.lrs[s.worst]):<9}")
        lines.append((line + (f" {_paired(s.measures['accuracy'])}"
                               if paired else ""))
                     .rstrip())
    return lines


def _at_best(summary, name):
    """`(mean ± std, paired)` of measure `name` at the arm's best rate."""
    measure = summary.measures.get(name)
    if measure is None:
        return "-", "-"
    best = summary.best
    return _pm(measure.means[best], measure.stds[best]), _paired(measure)


def _kept_lines(rows, paired):
    """The terminal's table of `KEPT`, at each arm's best rate."""
    cells = {s.arm: [_at_best(s, name) for name in KEPT] for s in rows}
    # As wide as the widest paired cell: `, within noise` is long.
    vs_width = max([len(vs) + 2 for arm in cells.values() for _, vs in arm]
                   + [len("- full, paired") + 2])
    width = 17 + (vs_width if paired else 0)
    lines = [f"{'arm':<12} {'at lr':<7} " + "".join(
        f"{TITLES[name]:<{width}}" for name in KEPT).rstrip()]
    if paired:
        lines.append(f"{'':<20} " + "".join(
            f"{'':<17}{'- full, paired':<{vs_width}}" for _ in KEPT).rstrip())
    for s in rows:
        lines.append((f"{s.arm:<12} {_lr(s.lrs[s.best]):<7} " + "".join(
            f"{value:<17}" + (f"{vs:<{vs_width}}" if paired else "")
            for value, vs in cells[s.arm])).rstrip())
    return lines


def _any_interval(rows):
    """Whether any paired difference of `rows` has an interval to judge by."""
    return any(m.interval is not None for s in rows
               for m in s.measures.values())


def _grid_lines(rows, lrs, name):
    """The terminal's mean of measure `name` at each base rate."""
    lines = [f"{'arm':<12} " + " ".join(f"{_lr(lr):>8}" for lr in lrs)]
    for s in rows:
        measure = s.measures.get(name)
        means = measure.means if measure else ["-"] * len(lrs)
        lines.append(f"{s.arm:<12} " + " ".join(
            f"{m:>8}" if m == "-" else f"{m:>8.3f}" for m in means))
    return lines


def table(results):
    """The results as plain text for the terminal."""
    summaries = summarize(results)
    config = results.config
    lines = []
    for source in experiment.sources(config):
        rows = [s for s in summaries if s.source == source]
        paired = any(s.vs_full is not None for s in rows)
        lines += ["", experiment.SOURCE_TITLES[source],
                  _setup(config).replace("`", ""), ""]
        lines += _accuracy_lines(rows, paired, _row_title(config))
        lines += ["", "What fine-tuning kept, at each arm's best rate "
                  "for the new task" + (" (paired: minus full at its best "
                                        "rate, seeds won)" if paired else "")]
        lines += _kept_notes(results, source) + [""]
        lines += _kept_lines(rows, paired)
        if _any_interval(rows):
            lines += ["", NOISE_NOTE + "."]
        if len(config.lrs) > 1:
            for name in ("accuracy",) + KEPT:
                title = "" if name == "accuracy" else f"{TITLES[name]} "
                lines += ["", f"mean {title}accuracy at each base "
                              "learning rate"]
                lines += _grid_lines(rows, config.lrs, name)
    text = "\n".join(lines).lstrip("\n")
    if config.experiment == "transformer":
        from difflr.demo import transformer_report

        text += "\n" + transformer_report.section(results)
    return text


def machine():
    """What the results were measured on."""
    cpu = _machine.cpu_model()
    backend = keras.backend.backend()
    backend_version = _machine.package_version(backend)
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "backend": f"{backend} {backend_version}",
        "keras": keras.__version__,
        "difflr": difflr.__version__,
        "python": platform.python_version(),
        "os": platform.platform(),
    }


def _write_atomic(path, write, mode="w"):
    """Calls `write(file)` on a temporary file, then renames it to `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-",
                               suffix=os.path.splitext(path)[1])
    try:
        # mkstemp makes the file private (0600); give it the permissions
        # a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, mode, **({"newline": ""} if "b" not in mode
                                    else {})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _cell(value):
    return "" if value is None else repr(value)


def write_csv(results, path):
    """One row per run: source, arm, ulmfit_row, seed, base_lr, measures.

    `retained_accuracy` is empty for `scratch`, whose body was not
    pretrained.
    """
    arms = experiment.arms_of(results.config)
    rows = [(r["source"], r["arm"], arms[r["arm"]].ulmfit_row,
             r["seed"], repr(float(r["lr"])))
            + tuple(_cell(r.get(name)) for name in experiment.MEASURES)
            for r in results.runs]

    def write(f):
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        writer.writerows(rows)

    _write_atomic(path, write)


def markdown(results, command, info=None):
    """The results as Markdown: setup, machine, tables, figures."""
    info = info or machine()
    config = results.config
    summaries = summarize(results)
    out = io.StringIO()
    w = lambda line="": out.write(line + "\n")  # noqa: E731
    w("# keras-difflr demo: what differential learning rates buy")
    w()
    w(f"Command: `{command}`")
    w()
    w(f"Machine: {info['cores']} cores ({info['cpu']}), backend "
      f"{info['backend']}, Keras {info['keras']}, difflr {info['difflr']}, "
      f"Python {info['python']}; {results.seconds:.0f} s in all.")
    w()
    w(f"Setup: {_setup(config)}. Base learning rates "
      f"{', '.join(_lr(lr) for lr in config.lrs)} "
      f"({catalog.OPTIMIZER_WORDS[config.experiment]}, constant; the "
      f"head's rate); an epoch is {config.repeats} passes over the "
      f"{config.shots * data.CLASSES} labelled images in batches of "
      f"{config.batch_size}. Best and worst: the base rates with the "
      "highest and lowest mean accuracy (chosen on the test set: the best "
      "is an oracle choice, the same for every arm). Paired: seed by seed, "
      "the arm at its best rate minus `full` at its best rate (within a "
      "seed all arms share the labelled images, the head's initialisation "
      "and the batches)"
      + (f"; {NOISE_NOTE}" if _any_interval(summaries) else "")
      + ". What fine-tuning kept is measured on the same runs, at the same "
      "best rates (those of the new task).")
    for source in experiment.sources(config):
        rows = [s for s in summaries if s.source == source]
        w()
        w(f"## {experiment.SOURCE_TITLES[source]}")
        _markdown_source(w, results, source, rows)
    w()
    w("## Arms")
    w()
    for name in config.arms:
        arm = experiment.arms_of(config)[name]
        row = arm.ulmfit_row  # parenthesised when not a row of Table 7
        row = row if row.startswith("(") else f"({row})"
        w(f"- `{arm.name}` {row}: {arm.description}.")
    w()
    w("![Accuracy against base learning rate](accuracy_vs_lr.png)")
    w()
    w("![Each arm at its best rate: new-task, retained and shifted "
      "accuracy, seed by seed, against full](forgetting_and_shift.png)")
    w()
    w("![Effective learning rate per layer](learning_rates.png)")
    if config.experiment == "transformer":
        from difflr.demo import transformer_report

        w(transformer_report.markdown(results))
    return out.getvalue()


def _markdown_source(w, results, source, rows):
    """One source's tables, written line by line with `w`."""
    if any(p["source"] == source for p in results.pretraining):
        w()
        w(f"Pretraining: 10-way accuracy on the test images "
          f"{_pretrained(results, source):.3f} (mean over seeds"
          + (", pixels shuffled the same way" if
             source == experiment.CONTROL else "") + ").")
    paired = any(s.vs_full is not None for s in rows)
    w()
    w(f"| arm | {_row_title(results.config)} | best accuracy | at lr "
      "| worst accuracy "
      "| at lr |" + (" best - full's best, paired (seeds won) |"
                     if paired else ""))
    w("|---|---|---|---|---|---|" + ("---|" if paired else ""))
    for s in rows:
        w(f"| {s.arm} | {s.ulmfit_row} | "
          f"{_pm(s.means[s.best], s.stds[s.best])} | "
          f"{_lr(s.lrs[s.best])} | "
          f"{_pm(s.means[s.worst], s.stds[s.worst])} | "
          f"{_lr(s.lrs[s.worst])} |"
          + (f" {_paired(s.measures['accuracy'])} |" if paired else ""))
    w()
    w("What fine-tuning kept, at each arm's best rate for the new task"
      + (" (paired: minus `full` at its best rate, seeds won)" if paired
         else "") + ": " + " ".join(_kept_notes(results, source)))
    w()
    w("| arm | at lr | " + " | ".join(
        TITLES[name] + (f" | {TITLES[name]} - full, paired" if paired
                        else "") for name in KEPT) + " |")
    w("|---|---|" + "---|" * len(KEPT) * (2 if paired else 1))
    for s in rows:
        cells = [_at_best(s, name) for name in KEPT]
        w(f"| {s.arm} | {_lr(s.lrs[s.best])} | " + " | ".join(
            value + (f" | {vs}" if paired else "") for value, vs in cells)
          + " |")
    for name in ("accuracy",) + KEPT:
        w()
        w(f"Mean ± std {TITLES[name]} accuracy at each base learning rate:")
        w()
        w("| arm | " + " | ".join(_lr(lr) for lr in results.config.lrs)
          + " |")
        w("|---|" + "---|" * len(results.config.lrs))
        for s in rows:
            measure = s.measures.get(name)
            cells = (["-"] * len(s.lrs) if measure is None else
                     [_pm(m, sd) for m, sd in zip(measure.means,
                                                   measure.stds)])
            w(f"| {s.arm} | " + " | ".join(cells) + " |")


def write_markdown(results, path, command, info=None):
    text = markdown(results, command, info)
    _write_atomic(path, lambda f: f.write(text))


def pyplot():
    """`matplotlib.pyplot`, drawing to files only; a clear error without it."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError(
            "The demo's plots need matplotlib. Install it with "
            "`pip install matplotlib`."
        ) from e
    return plt


def save_figure(fig, path):
    """Writes `fig` to `path` as a PNG (atomically), then closes it."""
    _save(fig, path)


def _save(fig, path):
    plt = pyplot()
    try:
        _write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=100),
                      mode="wb")
    finally:
        plt.close(fig)


def arm_styles(plt, names=tuple(arms_lib.ARMS)):
    """`{arm: (color, marker, line style)}`, the same in every figure.

    Arms that tie (scratch and full collapse to the same floor at 0.1)
    would hide one another: each arm gets its own marker and line style.
    """
    return {name: style for name, *style in zip(
        names, plt.get_cmap("tab10").colors, "osD^vP*X",
        ["-", "--", "-", "-.", ":", "--", "-.", ":"])}


def _legend_below(fig, axes, names=tuple(arms_lib.ARMS)):
    """One legend for all panels (scratch is only in some), below them."""
    legend = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    order = [name for name in names if name in legend]
    fig.legend([legend[name] for name in order], order, loc="lower center",
               ncol=len(order), fontsize="small", frameon=False)


def _seeds_title(config):
    return f"{config.shots} labels per digit; " + (
        f"mean ± std over {len(config.seeds)} seeds"
        if len(config.seeds) > 1 else "one seed")


def plot_accuracy(results, path):
    """Mean accuracy (± std) against base learning rate, one line per arm."""
    plt = pyplot()
    config = results.config
    summaries = summarize(results)
    sources = experiment.sources(config)
    fig, axes = plt.subplots(1, len(sources), figsize=(6 * len(sources), 4.2),
                             sharey=True, squeeze=False)
    names = tuple(experiment.arms_of(config))
    styles = arm_styles(plt, names)
    # Arms are also shifted a little along the (log) rate axis.
    offsets = {name: 1.04 ** (i - (len(names) - 1) / 2)
               for i, name in enumerate(names)}
    floor = float(np.mean([data.majority_share(config.shots, seed)
                           for seed in config.seeds]))
    for ax, source in zip(axes[0], sources):
        ax.axhline(floor, color="0.4", linestyle=(0, (1, 3)), linewidth=1)
        ax.annotate(f"majority class {floor:.3f}", (0.01, floor),
                    xycoords=("axes fraction", "data"),
                    xytext=(0, 3), textcoords="offset points",
                    fontsize="x-small", color="0.3")
        for s in (s for s in summaries if s.source == source):
            stds = np.nan_to_num(np.array(s.stds))
            color, marker, line = styles[s.arm]
            ax.errorbar(np.array(s.lrs) * offsets[s.arm], s.means, yerr=stds,
                        marker=marker, linestyle=line, markersize=5,
                        capsize=3, label=s.arm, color=color, alpha=0.9)
        ax.set_xscale("log")
        ax.set_xlabel("base learning rate (the head's); arms shifted "
                      "slightly apart", fontsize="small")
        ax.set_title(experiment.SOURCE_TITLES[source].split(" (")[0],
                     fontsize="medium")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (digit % 3)")
    _legend_below(fig, axes[0], names)
    fig.suptitle(_seeds_title(config), fontsize="medium")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    _save(fig, path)


_PANELS = {  # measure -> (column title, x label)
    "accuracy": ("New task (the rate is picked on it)",
                 "test accuracy, digit % 3"),
    "retained": ("Pretraining task kept (forgetting)",
                 "10-way accuracy,\npretrained head on the fine-tuned body"),
    "translated": ("A shift pretraining showed",
                   "new-task accuracy,\ntest images moved one pixel"),
    "noisy": ("A shift neither showed",
              f"new-task accuracy,\nnoise of std {data.NOISE_STD:g} on every "
              "pixel"),
}


def plot_forgetting_and_shift(results, path):
    """Each arm at its best rate for the new task, on every measure.

    One row of panels per source, one panel per measure (the new task, then
    `KEPT`), one line per arm: each seed (open markers, joined by their
    range) and their mean (filled), against `full`'s mean (dashed). Beside
    each arm, its paired difference from `full` (`_forest_label`), in grey
    when the seeds cannot separate the two.
    """
    plt = pyplot()
    config = results.config
    summaries = summarize(results)
    sources = experiment.sources(config)
    names = ("accuracy",) + KEPT
    rows = [[s for s in summaries if s.source == source] for source in sources]
    styles = arm_styles(plt, tuple(experiment.arms_of(config)))
    fig, axes = plt.subplots(
        len(sources), len(names), sharex="col", sharey="row", squeeze=False,
        figsize=(3.1 * len(names), 0.42 * sum(map(len, rows))
                 + 1.5 * len(sources) + 0.9),
        gridspec_kw=dict(height_ratios=[len(r) + 1.5 for r in rows]))
    for panels, source, arms in zip(axes, sources, rows):
        for ax, name in zip(panels, names):
            _forest_panel(ax, arms, name, styles)
            if name == "retained":
                _pretrained_line(ax, _pretrained(results, source))
        panels[0].set_yticks(range(len(arms)), [s.arm for s in arms])
        panels[0].set_ylim(len(arms) - 0.5, -0.8)  # first arm on top
        panels[0].set_ylabel(experiment.SOURCE_TITLES[source].split(" (")[0],
                             fontsize="small")
    for ax, name in zip(axes[0], names):
        ax.set_title(_PANELS[name][0], fontsize="medium")
    for ax, name in zip(axes[-1], names):
        ax.set_xlabel(_PANELS[name][1], fontsize="small")
    fig.suptitle(_forest_title(config), fontsize="medium")
    fig.tight_layout(w_pad=3.2)
    _save(fig, path)


def _forest_title(config):
    seeds = len(config.seeds)
    lines = [f"Each arm at its best base rate for the new task; "
             f"{config.shots} labels per digit, {seeds} seed"
             + ("s" if seeds > 1 else ""),
             "open markers: seeds; filled: their mean; dashed: full's mean. "
             "Beside each arm: arm - full, paired by seed (seeds won)"]
    if seeds > 1:
        lines.append(f"grey, '{WITHIN_NOISE}': the 95% interval of that "
                     f"difference contains 0; {seeds} seeds cannot separate "
                     "the arm from full")
    return "\n".join(lines)


def _forest_label(measure):
    """What the figure writes beside an arm: `(text, separated)`.

    `text` is the paired difference from `full` with the seeds won, and
    `within noise` when the seeds cannot separate the two; `separated` is
    `Measure.separated` (None: no interval, i.e. one seed or no `full`).
    """
    if measure.vs_full is None:
        return "", None
    mean, _, wins, n = measure.vs_full
    text = f"{mean:+.3f} ({wins}/{n})"
    if measure.separated is False:
        text += f"\n{WITHIN_NOISE}"
    return text, measure.separated


def _forest_panel(ax, arms, name, styles):
    """One measure: a line per arm of `arms`, against `full`'s mean."""
    full = next((s for s in arms if s.arm == "full"), None)
    if full is not None and name in full.measures:
        ax.axvline(full.measures[name].means[full.best],
                   color=styles["full"][0], linestyle="--", linewidth=1)
    for y, s in enumerate(arms):
        measure = s.measures.get(name)
        if measure is None:
            ax.annotate("no pretrained body", (0.02, y),
                        xycoords=("axes fraction", "data"), va="center",
                        fontsize="x-small", color="0.45")
            continue
        color, marker, _ = styles[s.arm]
        seeds = measure.scores[s.best]
        ax.plot([min(seeds), max(seeds)], [y, y], color=color, linewidth=1.2,
                alpha=0.6)
        ax.scatter(seeds, [y] * len(seeds), marker=marker, s=30,
                   facecolors="none", edgecolors=color, linewidths=1)
        ax.scatter([measure.means[s.best]], [y], marker=marker, s=70,
                   color=color, zorder=3)
        text, separated = _forest_label(measure)
        ax.annotate(text, (1, y), xycoords=("axes fraction", "data"),
                    xytext=(3, 0), textcoords="offset points", va="center",
                    fontsize="small", linespacing=0.9,
                    color="0.55" if separated is False else "black",
                    fontweight="bold" if separated else "normal")
    ax.grid(True, axis="x", alpha=0.3)


def _pretrained_line(ax, pretrained):
    """The pretrained network's own 10-way accuracy: nothing forgotten."""
    ax.axvline(pretrained, color="0.4", linestyle=(0, (1, 3)), linewidth=1)
    ax.annotate(f"pretrained {pretrained:.3f}", (pretrained, -0.65),
                xytext=(-3, 0), textcoords="offset points", ha="right",
                va="center", fontsize="x-small", color="0.3")


def rate_states(arm, lr, epochs, net=network):
    """A fresh model, `arm`'s optimizer (built) and its callbacks (begun).

    The callers then drive the callbacks (gradual unfreezing) through the
    epochs by hand, without training, as `fit` calls them.
    """
    keras.utils.set_random_seed(0)
    model = net.build_model(net.build_body(), data.TASK_CLASSES)
    optimizer, callbacks = arm.plan(model, lr, epochs)
    if not isinstance(optimizer, difflr.LRMultiplier):
        # A plain optimizer trains every variable at its rate, which is
        # what an LRMultiplier without rules shows.
        optimizer = difflr.LRMultiplier(optimizer)
    model.compile(optimizer, net.LOSS)
    optimizer.build(model.trainable_variables)
    for callback in callbacks:
        callback.set_model(model)
        callback.on_train_begin()
    return model, optimizer, callbacks


def _multipliers(model, optimizer):
    return tuple(optimizer.multiplier_for(v)
                 for v in model.trainable_variables)


def _distinct_epochs(arm, lr, epochs, net=network):
    """The epochs at which `arm`'s multipliers change (the first included)."""
    model, optimizer, callbacks = rate_states(arm, lr, epochs, net)
    seen, changes = None, []
    for epoch in range(epochs):
        for callback in callbacks:
            callback.on_epoch_begin(epoch)
        now = _multipliers(model, optimizer)
        if now != seen:
            changes.append(epoch)
            seen = now
    return changes


def plot_learning_rates(config, path, lr=None):
    """The effective learning rate per layer of every arm, by `difflr.plot`.

    One panel per arm and per epoch at which its rates change (gradual
    unfreezing), at base rate `lr` (defaults to the middle of the grid).
    """
    plt = pyplot()
    lr = config.lrs[len(config.lrs) // 2] if lr is None else lr
    names = [n for n in config.arms if n != "scratch"]  # same rates as full
    arms, net = experiment.arms_of(config), experiment.network_of(config)
    states = {name: rate_states(arms[name], lr, config.epochs, net)
              for name in names}
    # Only callbacks change the multipliers between epochs: an arm without
    # any has one panel, and needs no second model to find when they change.
    panels = [(name, epoch) for name in names
              for epoch in (_distinct_epochs(arms[name], lr, config.epochs,
                                             net)
                            if states[name][2] else [0])]
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, sharey=True, squeeze=False,
                             figsize=(3.2 * columns, 2.5 * rows))
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    k, top = 0, 1.0
    for name in names:
        model, optimizer, callbacks = states[name]
        epochs = [e for n, e in panels if n == name]
        for epoch in range(config.epochs):
            for callback in callbacks:
                callback.on_epoch_begin(epoch)
            if epoch not in epochs:
                continue
            last = epochs[epochs.index(epoch) + 1] if epoch != epochs[-1] \
                else config.epochs
            span = (f"epoch {epoch + 1}" if last == epoch + 1
                    else f"epochs {epoch + 1}-{last}")
            top = max(top, _rate_panel(
                axes.flat[k], model, optimizer, lr,
                f"{name}: {span}" if len(epochs) > 1 else name))
            k += 1
    # The same scale in every panel (they share it): up to twice the fastest
    # rate of all (LoRA+'s B matrices train 16 times faster than the head).
    axes.flat[0].set_ylim(lr * 0.02, lr * 2 * top)
    for row in axes:
        row[0].set_ylabel("effective learning rate", fontsize="small")
    fig.suptitle(f"Effective learning rate of each layer's kernel and bias at "
                 f"base rate {_lr(lr)} (dashed; x: frozen)", fontsize="medium")
    fig.tight_layout()
    _save(fig, path)


def _short(name):
    """A layer's name as a tick label: KerasHub's ViT names are long."""
    return (name.replace("vit_patching_and_embedding", "embed")
            .replace("transformer_block_", "block"))


def _rate_panel(ax, model, optimizer, lr, title):
    """`difflr.plot` of one state, its variables named by layer below.

    Returns its largest multiplier (at least 1), for the common scale.
    """
    difflr.plot(model, optimizer, ax=ax)
    for number in list(ax.texts):  # the group numbers: named below instead
        number.remove()
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    ticks, names, start = [], [], 0
    trainable = model.trainable_variables
    for group in difflr.groups(model):
        # Counted from the model's trainable variables: after KerasHub's
        # enable_lora a block is not trainable (its `trainable_variables`
        # is empty) while its LoRA layers inside it train.
        inside = {id(v) for layer in group for v in layer.variables}
        size = sum(id(v) in inside for v in trainable)
        ticks.append(start + (size - 1) / 2)
        names.append("+".join(_short(layer.name) for layer in group))
        start += size
    ax.set_xticks(ticks, names)
    ax.set_xlabel("")
    ax.set_ylabel("")
    ax.set_title(title, fontsize="medium")
    return max([1.0] + [optimizer.multiplier_for(v)
                        for v in model.trainable_variables])


def write_all(results, out_dir, command):
    """Writes every file of `files(config)` into `out_dir` (which must
    exist)."""
    write_csv(results, os.path.join(out_dir, "results.csv"))
    write_markdown(results, os.path.join(out_dir, "results.md"), command)
    plot_accuracy(results, os.path.join(out_dir, "accuracy_vs_lr.png"))
    plot_forgetting_and_shift(
        results, os.path.join(out_dir, "forgetting_and_shift.png"))
    plot_learning_rates(results.config,
                        os.path.join(out_dir, "learning_rates.png"))
    if results.config.experiment == "transformer":
        from difflr.demo import transformer_report

        transformer_report.write_all(results, out_dir)
