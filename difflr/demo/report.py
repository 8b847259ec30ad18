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
  ± std of the differences and the number of seeds the arm wins.

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
from difflr.demo import data
from difflr.demo import experiment
from difflr.demo import network
from difflr import _machine

CSV_COLUMNS = ("source", "arm", "ulmfit_row", "seed", "base_lr",
               "test_accuracy")
FILES = ("results.csv", "results.md", "accuracy_vs_lr.png",
         "learning_rates.png")


@dataclasses.dataclass
class ArmSummary:
    source: str
    arm: str
    ulmfit_row: str
    lrs: list
    means: list  # per base rate, over seeds
    stds: list  # sample std per base rate (NaN with one seed)
    scores: list  # per base rate, the accuracy of each seed
    vs_full: tuple = None  # (mean, std, wins, seeds) of paired differences

    @property
    def best(self):
        return int(np.argmax(self.means))

    @property
    def worst(self):
        return int(np.argmin(self.means))


def summarize(results):
    """One `ArmSummary` per (source, arm), in the order they ran."""
    config = results.config
    accuracy = {(r["source"], r["arm"], r["lr"], r["seed"]): r["accuracy"]
                for r in results.runs}
    summaries = []
    for source in experiment.sources(config):
        by_arm = {}
        for arm in experiment.arms_for(config, source):
            scores = [[accuracy[source, arm.name, lr, seed]
                       for seed in config.seeds] for lr in config.lrs]
            by_arm[arm.name] = ArmSummary(
                source, arm.name, arm.ulmfit_row, list(config.lrs),
                means=[float(np.mean(s)) for s in scores],
                stds=[_std(s) for s in scores], scores=scores)
        full = by_arm.get("full")
        for name, summary in by_arm.items():
            if full is not None and name != "full":
                d = (np.array(summary.scores[summary.best])
                     - np.array(full.scores[full.best]))
                summary.vs_full = (float(np.mean(d)), _std(d),
                                   int(np.sum(d > 0)), len(d))
        summaries += by_arm.values()
    return summaries


def _std(values):
    """Sample standard deviation; NaN for a single value."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def _paired(vs_full):
    if vs_full is None:
        return "-"
    mean, std, wins, n = vs_full
    spread = "" if math.isnan(std) else f" ± {std:.3f}"
    return f"{mean:+.3f}{spread} ({wins}/{n})"


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


def table(results):
    """The results as plain text for the terminal."""
    summaries = summarize(results)
    config = results.config
    lines = []
    for source in experiment.sources(config):
        rows = [s for s in summaries if s.source == source]
        lines += ["", experiment.SOURCE_TITLES[source],
                  _setup(config).replace("`", ""), ""]
        paired = any(s.vs_full is not None for s in rows)
        head = (f"{'arm':<12} {'ULMFiT row':<19} "
                f"{'best over the grid':<26} {'worst over the grid':<26}")
        sub = (f"{'':<12} {'':<19} "
               f"{'accuracy':<17}{'lr':<9} {'accuracy':<17}{'lr':<9}")
        lines += [head + (" best - full's best" if paired else ""),
                  sub + (" paired (seeds won)" if paired else "")]
        for s in rows:
            line = (f"{s.arm:<12} {s.ulmfit_row:<19} "
                    f"{_pm(s.means[s.best], s.stds[s.best]):<17}"
                    f"{_lr(s.lrs[s.best]):<9} "
                    f"{_pm(s.means[s.worst], s.stds[s.worst]):<17}"
                    f"{_lr(s.lrs[s.worst]):<9}")
            lines.append((line + (f" {_paired(s.vs_full)}" if paired else ""))
                         .rstrip())
        if len(config.lrs) > 1:
            lines += ["", "mean accuracy at each base learning rate"]
            lines.append(f"{'arm':<12} " + " ".join(
                f"{_lr(lr):>8}" for lr in config.lrs))
            for s in rows:
                lines.append(f"{s.arm:<12} " + " ".join(
                    f"{m:>8.3f}" for m in s.means))
    return "\n".join(lines).lstrip("\n")


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


def write_csv(results, path):
    """One row per run: source, arm, ulmfit_row, seed, base_lr, accuracy."""
    rows = [(r["source"], r["arm"], arms_lib.ARMS[r["arm"]].ulmfit_row,
             r["seed"], repr(float(r["lr"])), repr(r["accuracy"]))
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
      f"{', '.join(_lr(lr) for lr in config.lrs)} (Adam, constant; the "
      f"head's rate); an epoch is {config.repeats} passes over the "
      f"{config.shots * data.CLASSES} labelled images in batches of "
      f"{config.batch_size}. Best and worst: the base rates with the "
      "highest and lowest mean accuracy (chosen on the test set: the best "
      "is an oracle choice, the same for every arm). Paired: seed by seed, "
      "the arm at its best rate minus `full` at its best rate (within a "
      "seed all arms share the labelled images, the head's initialisation "
      "and the batches).")
    for source in experiment.sources(config):
        rows = [s for s in summaries if s.source == source]
        pre = [p["heldout_accuracy"] for p in results.pretraining
               if p["source"] == source]
        w()
        w(f"## {experiment.SOURCE_TITLES[source]}")
        w()
        if pre:
            w(f"Pretraining: 10-way accuracy on the held-out half "
              f"{np.mean(pre):.3f} (mean over seeds"
              + (", pixels shuffled the same way" if
                 source == experiment.CONTROL else "") + ").")
            w()
        paired = any(s.vs_full is not None for s in rows)
        w("| arm | ULMFiT row | best accuracy | at lr | worst accuracy "
          "| at lr |" + (" best - full's best, paired (seeds won) |"
                         if paired else ""))
        w("|---|---|---|---|---|---|" + ("---|" if paired else ""))
        for s in rows:
            w(f"| {s.arm} | {s.ulmfit_row} | "
              f"{_pm(s.means[s.best], s.stds[s.best])} | "
              f"{_lr(s.lrs[s.best])} | "
              f"{_pm(s.means[s.worst], s.stds[s.worst])} | "
              f"{_lr(s.lrs[s.worst])} |"
              + (f" {_paired(s.vs_full)} |" if paired else ""))
        w()
        w("Mean ± std accuracy at each base learning rate:")
        w()
        w("| arm | " + " | ".join(_lr(lr) for lr in config.lrs) + " |")
        w("|---|" + "---|" * len(config.lrs))
        for s in rows:
            w(f"| {s.arm} | " + " | ".join(
                _pm(m, sd) for m, sd in zip(s.means, s.stds)) + " |")
    w()
    w("## Arms")
    w()
    for name in config.arms:
        arm = arms_lib.ARMS[name]
        row = arm.ulmfit_row  # parenthesised when not a row of Table 7
        row = row if row.startswith("(") else f"({row})"
        w(f"- `{arm.name}` {row}: {arm.description}.")
    w()
    w("![Accuracy against base learning rate](accuracy_vs_lr.png)")
    w()
    w("![Effective learning rate per layer](learning_rates.png)")
    return out.getvalue()


def write_markdown(results, path, command, info=None):
    text = markdown(results, command, info)
    _write_atomic(path, lambda f: f.write(text))


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError(
            "The demo's plots need matplotlib. Install it with "
            "`pip install keras-difflr[demo]`."
        ) from e
    return plt


def _save(fig, path):
    plt = _pyplot()
    try:
        _write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=80),
                      mode="wb")
    finally:
        plt.close(fig)


def plot_accuracy(results, path):
    """Mean accuracy (± std) against base learning rate, one line per arm."""
    plt = _pyplot()
    config = results.config
    summaries = summarize(results)
    sources = experiment.sources(config)
    fig, axes = plt.subplots(1, len(sources), figsize=(6 * len(sources), 4.2),
                             sharey=True, squeeze=False)
    colors = dict(zip(arms_lib.ARMS, plt.get_cmap("tab10").colors))
    # Arms that tie (scratch and full collapse to the same floor at 0.1)
    # would hide one another: each arm gets its own marker and line style,
    # and is shifted a little along the (log) rate axis.
    styles = {name: (marker, line) for name, marker, line in zip(
        arms_lib.ARMS, "osD^vP*X", ["-", "--", "-", "-.", ":", "--", "-.", ":"])}
    offsets = {name: 1.04 ** (i - (len(arms_lib.ARMS) - 1) / 2)
               for i, name in enumerate(arms_lib.ARMS)}
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
            marker, line = styles[s.arm]
            ax.errorbar(np.array(s.lrs) * offsets[s.arm], s.means, yerr=stds,
                        marker=marker, linestyle=line, markersize=5,
                        capsize=3, label=s.arm, color=colors[s.arm],
                        alpha=0.9)
        ax.set_xscale("log")
        ax.set_xlabel("base learning rate (the head's); arms shifted "
                      "slightly apart", fontsize="small")
        ax.set_title(experiment.SOURCE_TITLES[source].split(" (")[0],
                     fontsize="medium")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (digit % 3)")
    # One legend for both panels (scratch is only in the first), below them.
    legend = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    order = [name for name in arms_lib.ARMS if name in legend]
    fig.legend([legend[name] for name in order], order, loc="lower center",
               ncol=len(order), fontsize="small", frameon=False)
    fig.suptitle(f"{config.shots} labels per digit; " + (
        f"mean ± std over {len(config.seeds)} seeds"
        if len(config.seeds) > 1 else "one seed"), fontsize="medium")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    _save(fig, path)


def _rate_states(arm, lr, epochs):
    """A fresh model, `arm`'s optimizer (built) and its callbacks (begun).

    The callers then drive the callbacks (gradual unfreezing) through the
    epochs by hand, without training, as `fit` calls them.
    """
    keras.utils.set_random_seed(0)
    model = network.build_model(network.build_body(), data.TASK_CLASSES)
    optimizer, callbacks = arm.plan(model, lr, epochs)
    if not isinstance(optimizer, difflr.LRMultiplier):
        # A plain optimizer trains every variable at its rate, which is
        # what an LRMultiplier without rules shows.
        optimizer = difflr.LRMultiplier(optimizer)
    model.compile(optimizer, network.LOSS)
    optimizer.build(model.trainable_variables)
    for callback in callbacks:
        callback.set_model(model)
        callback.on_train_begin()
    return model, optimizer, callbacks


def _multipliers(model, optimizer):
    return tuple(optimizer.multiplier_for(v)
                 for v in model.trainable_variables)


def _distinct_epochs(arm, lr, epochs):
    """The epochs at which `arm`'s multipliers change (the first included)."""
    model, optimizer, callbacks = _rate_states(arm, lr, epochs)
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
    plt = _pyplot()
    lr = config.lrs[len(config.lrs) // 2] if lr is None else lr
    names = [n for n in config.arms if n != "scratch"]  # same rates as full
    panels = [(name, epoch) for name in names
              for epoch in _distinct_epochs(arms_lib.ARMS[name], lr,
                                            config.epochs)]
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3 * rows),
                             squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    k = 0
    for name in names:
        arm = arms_lib.ARMS[name]
        model, optimizer, callbacks = _rate_states(arm, lr, config.epochs)
        epochs = [e for n, e in panels if n == name]
        for epoch in range(config.epochs):
            for callback in callbacks:
                callback.on_epoch_begin(epoch)
            if epoch not in epochs:
                continue
            ax = axes.flat[k]
            k += 1
            difflr.plot(model, optimizer, ax=ax)
            last = epochs[epochs.index(epoch) + 1] if epoch != epochs[-1] \
                else config.epochs
            span = (f"epoch {epoch + 1}" if last == epoch + 1
                    else f"epochs {epoch + 1}-{last}")
            ax.set_title(f"{name}: {span}" if len(epochs) > 1 else name,
                         fontsize="medium", pad=16)
            ax.set_ylim(lr * 0.02, lr * 2)  # the same scale in every panel
            if ax.get_legend() is not None:
                ax.get_legend().remove()
            ax.set_xlabel("variable (conv1, conv2, fc, head)",
                          fontsize="small")
    fig.suptitle(f"Effective learning rate per variable at base rate "
                 f"{_lr(lr)} (x: frozen)", fontsize="medium")
    fig.tight_layout()
    _save(fig, path)


def write_all(results, out_dir, command):
    """Writes every file of `FILES` into `out_dir` (which must exist)."""
    write_csv(results, os.path.join(out_dir, "results.csv"))
    write_markdown(results, os.path.join(out_dir, "results.md"), command)
    plot_accuracy(results, os.path.join(out_dir, "accuracy_vs_lr.png"))
    plot_learning_rates(results.config,
                        os.path.join(out_dir, "learning_rates.png"))
