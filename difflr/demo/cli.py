"""`python -m difflr demo`: its options and what it prints and writes.

Parsing the options, and `--help`, import neither Keras nor a backend (the
arms and presets come from `catalog`): `run` imports them.
"""

import argparse
import dataclasses
import math
import os
import shlex
import sys

from difflr.demo import catalog
from difflr.demo import data

# Wall time of `python -m difflr demo` (the quick preset) on 2 cores, as
# docs/demo.md gives it per backend.
QUICK_TIME = ("30 s on torch, 46 s on JAX, 64 s on TensorFlow, on 2 quiet "
              "cores (docs/demo.md)")
FULL_TIME = ("about 2 minutes on torch and 9 of CPU time on JAX, on 2 quiet "
             "cores (23 minutes of wall time on JAX on a loaded machine)")
# `--experiment transformer --quick`: one of its three seeds took 89 s on
# torch on 2 cores under a load average of 3; not yet timed whole.
TRANSFORMER_QUICK_TIME = ("157 s on torch on 2 quiet cores (docs/demo.md)")

DESCRIPTION = """\
What differential learning rates buy, on real data, on a laptop CPU with no
network (the data set ships with scikit-learn). The default preset takes
{quick_time}.

A small CNN is pretrained on half of scikit-learn's 8x8 digits (the 10-way
digit label), once per seed. It is then fine-tuned, with a fresh head, on the
other half for a new task, the label `digit % 3`, from only a few labelled
images per digit, and tested on the rest of that half. Each arm treats the
learning rates its own way, mirroring the rows of ULMFiT's classifier
fine-tuning ablation (Howard & Ruder 2018, Table 7):

{arms}

Every arm runs over the same grid of base learning rates (Adam, the head's
rate) and the same seeds. The table gives, per arm, the best and the worst
mean accuracy over the grid, with the standard deviation over seeds. The
control pretrains on pixel-shuffled images, whose features do not transfer.

Each run also measures what fine-tuning kept: forgetting (the pretrained
10-way head put back on the fine-tuned body, on the test images) and the new
task's accuracy under two shifts of the test images (moved one pixel, a shift
pretraining showed; Gaussian noise, one it did not), reported at each arm's
best rate and over the grid.

`--experiment transformer` runs the same protocol on a transformer: a
KerasHub ViTBackbone (8x8 digits in 2x2 patches, 3 blocks of width 32,
random initialisation) pretrained in-process on the same half, with the
transformer recipes as arms:

{transformer_arms}

and sets each paper's claim (LLRD: ELECTRA, Sun et al. 2019, Zhang et al.
2021; LoRA+: Hayou et al. 2024; LP-FT: Kumar et al. 2022) beside what the run
measured, with its uncertainty, the failed runs (below the majority class +
0.05) per arm, and LoRA vs LoRA+ accuracy by step. Its quick preset takes
{transformer_time}; it also needs keras-hub.

Runs are deterministic for a given seed and backend. The backend is the one
KERAS_BACKEND selects. Needs scikit-learn and matplotlib:
`pip install scikit-learn matplotlib`.
"""


def _arm_lines(infos=catalog.ARMS):
    return "\n".join(f"  {arm.name:<12} {arm.ulmfit_row:<19} {arm.description}"
                     for arm in infos)


def _count(name, low, high):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be a whole number from {low} to {high}; "
                f"received {text!r}.") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{name} must be from {low} to {high}; received {value}.")
        return value
    return parse


def _learning_rates(text):
    rates = []
    for piece in text.split(","):
        try:
            rate = float(piece)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"base learning rates must be positive numbers separated by "
                f"commas, like 0.001,0.01,0.1; {piece.strip()!r} in {text!r} "
                "is not a number.") from None
        if not (math.isfinite(rate) and rate > 0):
            raise argparse.ArgumentTypeError(
                f"base learning rates must be positive and finite; received "
                f"{piece.strip()} in {text!r}.")
        if rate in rates:
            raise argparse.ArgumentTypeError(
                f"the base learning rate {rate:g} is listed twice in {text!r}.")
        rates.append(rate)
    return tuple(rates)


def _arm_names(text):
    # Checked against the chosen experiment's arms in `config_from`.
    known = catalog.NAMES + tuple(n for n in catalog.TRANSFORMER_NAMES
                                  if n not in catalog.NAMES)
    names = [piece.strip() for piece in text.split(",")]
    for name in names:
        if name not in known:
            raise argparse.ArgumentTypeError(
                f"unknown arm {name!r} in {text!r}; the arms are "
                f"{', '.join(catalog.NAMES)} (--experiment cnn) and "
                f"{', '.join(catalog.TRANSFORMER_NAMES)} (--experiment "
                "transformer).")
        if names.count(name) > 1:
            raise argparse.ArgumentTypeError(
                f"the arm {name!r} is listed twice in {text!r}.")
    return tuple(names)


def add_arguments(parser):
    """Adds the demo's options to `parser` (an argparse parser whose
    formatter keeps the description's line breaks, for the arm table)."""
    parser.description = DESCRIPTION.format(
        arms=_arm_lines(), quick_time=QUICK_TIME,
        transformer_arms=_arm_lines(catalog.TRANSFORMER_ARMS),
        transformer_time=TRANSFORMER_QUICK_TIME)
    size = parser.add_mutually_exclusive_group()
    quick, full = catalog.QUICK, catalog.FULL
    size.add_argument(
        "--quick", dest="preset", action="store_const", const="quick",
        help=f"the default: {len(quick.seeds)} seeds, base rates "
             f"{','.join(f'{lr:g}' for lr in quick.lrs)}, every arm but "
             "freez, and the control for "
             f"{', '.join(quick.control_arms)}; {QUICK_TIME}")
    size.add_argument(
        "--full", dest="preset", action="store_const", const="full",
        help=f"{len(full.seeds)} seeds, base rates "
             f"{','.join(f'{lr:g}' for lr in full.lrs)}, every arm, also on "
             f"the control; {FULL_TIME}")
    parser.set_defaults(preset=None)  # the quick preset, untyped
    tq, tf = catalog.TRANSFORMER_QUICK, catalog.TRANSFORMER_FULL
    parser.add_argument(
        "--experiment", choices=tuple(catalog.EXPERIMENTS), default="cnn",
        help="cnn (the default): the small CNN and ULMFiT's recipes; "
             "transformer: a KerasHub ViT and the transformer recipes (LLRD, "
             "LP-FT, LoRA and LoRA+), with each paper's claim beside what "
             f"the run measured. Its --quick: {len(tq.seeds)} seeds, base "
             f"rates {','.join(f'{lr:g}' for lr in tq.lrs)}, every arm, no "
             f"control, {TRANSFORMER_QUICK_TIME}; its --full: "
             f"{len(tf.seeds)} seeds, {len(tf.lrs)} base rates")
    parser.add_argument(
        "--out", metavar="DIR",
        help="also write results.csv (one row per run), results.md (the "
             "tables, setup and machine) and three PNG plots "
             "(accuracy_vs_lr.png, forgetting_and_shift.png, "
             "learning_rates.png; also llrd.png and lora_plus.png with "
             "--experiment transformer) into DIR, created if missing; existing "
             "files of those names are replaced")
    parser.add_argument(
        "--seeds", metavar="N", type=_count("--seeds", 1, 100),
        help="run seeds 0 to N-1 instead of the preset's")
    parser.add_argument(
        "--lrs", metavar="LR,LR,...", type=_learning_rates,
        help="the grid of base learning rates instead of the preset's, "
             "e.g. 0.001,0.01,0.1")
    parser.add_argument(
        "--arms", metavar="ARM,ARM,...", type=_arm_names,
        help="run only these arms (and the pretrained ones among them on the "
             f"control); from: {', '.join(catalog.NAMES)}; with --experiment "
             f"transformer, from: {', '.join(catalog.TRANSFORMER_NAMES)}")
    parser.add_argument(
        "--no-control", action="store_true",
        help="skip the control (pretraining on pixel-shuffled images)")
    parser.add_argument(
        "--shots", metavar="K", type=_count("--shots", 1, data.MAX_SHOTS),
        help=f"labelled images per digit for fine-tuning (default "
             f"{quick.shots})")
    parser.add_argument(
        "--epochs", metavar="E", type=_count("--epochs", 1, 100),
        help=f"fine-tuning epochs (default {quick.epochs}; gradual "
             "unfreezing unfreezes one group of four per epoch)")


def config_from(args):
    """The `experiment.Config` the parsed options ask for."""
    from difflr.demo import experiment

    presets = {"cnn": (experiment.QUICK, experiment.FULL),
               "transformer": (catalog.TRANSFORMER_QUICK,
                               catalog.TRANSFORMER_FULL)}
    quick, full = presets[args.experiment]
    config = full if args.preset == "full" else quick
    changes = {}
    if args.seeds is not None:
        changes["seeds"] = tuple(range(args.seeds))
    if args.lrs is not None:
        changes["lrs"] = args.lrs
    if args.arms is not None:
        names = tuple(a.name for a in catalog.arm_infos(args.experiment))
        wrong = [name for name in args.arms if name not in names]
        if wrong:
            raise ValueError(
                f"--arms: {', '.join(wrong)} is not an arm of --experiment "
                f"{args.experiment}, whose arms are {', '.join(names)}.")
        changes["arms"] = args.arms
        # The transformer's presets have no control: --arms adds none.
        changes["control_arms"] = args.arms if config.control_arms else ()
    if args.no_control:
        changes["control_arms"] = ()
    if args.shots is not None:
        changes["shots"] = args.shots
    if args.epochs is not None:
        changes["epochs"] = args.epochs
    return dataclasses.replace(config, **changes)


def command_line(args):
    """The command, as it would be typed, for the record."""
    import keras

    # The preset is always written out, so that the record still says
    # what ran if the default changes.
    words = ["python", "-m", "difflr", "demo", f"--{args.preset or 'quick'}"]
    if args.experiment != "cnn":
        words += ["--experiment", args.experiment]
    for option in ("seeds", "shots", "epochs"):
        if getattr(args, option) is not None:
            words += [f"--{option}", str(getattr(args, option))]
    if args.lrs is not None:
        words += ["--lrs", ",".join(f"{lr:g}" for lr in args.lrs)]
    if args.arms is not None:
        words += ["--arms", ",".join(args.arms)]
    if args.no_control:
        words.append("--no-control")
    if args.out is not None:
        words += ["--out", args.out]
    return (f"KERAS_BACKEND={keras.backend.backend()} "
            + " ".join(shlex.quote(w) for w in words))


def what_it_can_show(config):
    """What a run of this size can and cannot tell, printed after the table."""
    seeds, rates = len(config.seeds), len(config.lrs)
    lines = [f"With {seeds} seed{'s' if seeds > 1 else ''}, differences "
             "between arms smaller than their spread over seeds are noise"
             + ("" if seeds > 1 else " that one seed cannot measure") + "."]
    full = (catalog.TRANSFORMER_FULL if config.experiment == "transformer"
            else catalog.FULL)
    if config.lrs != full.lrs or seeds < len(full.seeds):
        lines.append(
            f"The best rates are picked from {rates} base rate"
            f"{'s' if rates > 1 else ''} "
            f"({', '.join(f'{lr:g}' for lr in config.lrs)}); "
            + ("docs/demo.md reports --full" if full is catalog.FULL
               else "--experiment transformer --full runs")
            + f" ({len(full.seeds)} seeds x {len(full.lrs)} rates, "
            f"{min(full.lrs):g} to {max(full.lrs):g}), whose claims rest on "
            "rates this grid may not have.")
    return "\n".join(lines)


def _check_out(out):
    """Creates `out` if needed; returns an error message or None."""
    if os.path.exists(out) and not os.path.isdir(out):
        return (f"--out {out!r} is an existing file; give a directory (it is "
                "created if missing).")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        return f"--out {out!r}: cannot create that directory ({e.strerror})."
    if not os.access(out, os.W_OK | os.X_OK):
        return f"--out {out!r}: that directory is not writable."
    return None


def _missing_dependencies(need_plots, experiment="cnn"):
    missing = []
    for module in (("sklearn",) + (("matplotlib",) if need_plots else ())
                   + (("keras_hub",) if experiment == "transformer" else ())):
        try:
            __import__(module)
        except ImportError:
            missing.append({"sklearn": "scikit-learn",
                            "keras_hub": "keras-hub"}.get(module, module))
    return missing


def run(args, parser):
    """Runs the demo for parsed `args`; returns the exit code."""
    missing = _missing_dependencies(args.out is not None, args.experiment)
    if missing:
        one = len(missing) == 1
        print(f"difflr demo needs {' and '.join(missing)}, which "
              f"{'is' if one else 'are'} not installed. Install "
              f"{'it' if one else 'them'} with `pip install {' '.join(missing)}`.",
              file=sys.stderr)
        return 1
    if args.out is not None:
        problem = _check_out(args.out)
        if problem:
            parser.error(problem)
    import keras

    from difflr.demo import experiment
    from difflr.demo import report

    try:
        config = config_from(args)
    except ValueError as e:
        parser.error(str(e))
    runs = len(config.seeds) * len(config.lrs) * sum(
        len(experiment.arms_for(config, s)) for s in experiment.sources(config))
    progress = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    preset = (f"--{args.preset}" if args.preset
              else "(the quick preset; --full for the whole grid)")
    progress(f"difflr demo {preset}: backend {keras.backend.backend()}, "
             f"Keras {keras.__version__}; {len(config.seeds)} seed(s) x "
             f"{len(config.lrs)} base rate(s) "
             f"({', '.join(f'{lr:g}' for lr in config.lrs)}), "
             f"{runs} fine-tuning runs")
    results = experiment.run(config, log=progress)
    print()
    print(report.table(results))
    print(f"\n{runs} runs in {results.seconds:.0f} s.")
    print(what_it_can_show(config))
    if args.out is not None:
        report.write_all(results, args.out, command_line(args))
        print(f"Wrote {', '.join(report.files(config))} to {args.out}.")
    return 0
