"""`python -m difflr`: command-line entry points.

    python -m difflr check    per-copy contract check on this machine's backend
    python -m difflr demo     what differential learning rates buy, on real data

This module imports nothing heavy at the top: the parser and every `--help`
need neither Keras nor a backend, and a missing backend is reported as a
choice to make (which backend Keras is trying to use, how to pick another,
which package installs it) rather than as a traceback from inside Keras.
"""

import argparse
import importlib
import shutil
import sys

from difflr._backend import BackendMissing
from difflr._backend import backend_problem
from difflr._backend import configured_backend  # noqa: F401 (tests, users)
from difflr._backend import quiet_idle_tensorflow
from difflr.demo import cli as demo_cli

DESCRIPTION = """\
keras-difflr: differential learning rates for Keras 3.

The commands run on the Keras backend that KERAS_BACKEND selects (else the
"backend" in ~/.keras/keras.json, else TensorFlow). Pick one for the shell
with `export KERAS_BACKEND=jax` (or tensorflow, torch)."""

EPILOG = """\
examples:
  python -m difflr check
  python -m difflr demo             about a minute on 2 cores
  python -m difflr demo --help      what the demo runs, and its options"""

CHECK_DESCRIPTION = """\
Trains a few variables with every built-in Keras optimizer under an
LRMultiplier, and each variable with its own copy of that optimizer built at
lr * m, and prints the largest difference. Under a minute."""

# Lines past this are hard to read on a wide terminal.
MAX_HELP_WIDTH = 100


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions keep their line breaks (the demo's arm table); the rest
    wraps to the terminal, at most `MAX_HELP_WIDTH` columns."""

    def __init__(self, prog, **kwargs):
        columns = shutil.get_terminal_size().columns - 2  # argparse's margin
        kwargs.setdefault("width", min(columns, MAX_HELP_WIDTH))
        super().__init__(prog, **kwargs)


def _check(args):
    import keras

    import difflr
    from difflr import _selfcheck

    names = sorted(_selfcheck.OPTIMIZERS)
    print(f"difflr {difflr.__version__}, Keras {keras.__version__}, "
          f"backend {keras.backend.backend()}")
    print("Each variable (multipliers 0.1, 1, 2.5, 0.3; decay multipliers 1, 0,"
          " 2, 0.5)\nagainst its own copy of the optimizer built at lr * m:\n")
    print(f"{'optimizer':<28}{'max |difference|':>18}  result")
    failed = 0
    for name in names:
        error = _selfcheck.max_error(name)
        ok = error <= 1e-5
        failed += not ok
        print(f"{name:<28}{error:>18.2e}  {'ok' if ok else 'MISMATCH'}")
    print(f"\n{len(names) - failed} passed, {failed} failed")
    return 1 if failed else 0


def build_parser():
    """The command-line parser; building it imports neither Keras nor a
    backend."""
    parser = argparse.ArgumentParser(
        prog="python -m difflr", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=_HelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True,
                                     metavar="{check,demo}")
    check = commands.add_parser(
        "check", help="check the per-variable contract for every built-in "
                      "Keras optimizer on this machine's backend",
        description=CHECK_DESCRIPTION, formatter_class=_HelpFormatter)
    check.set_defaults(run=lambda args: _check(args))
    demo = commands.add_parser(
        "demo", help="what differential learning rates buy: pretrain a small "
                     "CNN on digits, fine-tune it for a new task with few "
                     "labels, compare the ULMFiT fine-tuning recipes "
                     "(`demo --help` for its options)",
        formatter_class=_HelpFormatter)
    demo_cli.add_arguments(demo)
    demo.set_defaults(run=lambda args: demo_cli.run(args, demo))
    return parser


def _import_library():
    """`python -m difflr` imports the package without Keras, so that the
    parser answers first (`difflr/__init__.py`); a command needs it all."""
    import difflr

    if not hasattr(difflr, "LRMultiplier"):
        importlib.reload(difflr)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
        _import_library()
        return args.run(args)
    except BackendMissing as error:
        print(error, file=sys.stderr)
        return 1
    except ImportError as error:
        message = backend_problem(error)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 1


if __name__ == "__main__":
    quiet_idle_tensorflow()  # this process's own environment, before Keras
    sys.exit(main())
