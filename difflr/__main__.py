"""`python -m difflr`: command-line entry points.

    python -m difflr check    per-copy contract check on this machine's backend
    python -m difflr demo     what differential learning rates buy, on real data

This module imports nothing heavy at the top: the parser and `--help` need
neither Keras nor a backend, and a missing backend is reported as a choice to
make (which backend Keras is trying to use, how to pick another, which extra
installs it) rather than as a traceback from inside Keras.
"""

import argparse
import importlib
import sys

from difflr._backend import BackendMissing
from difflr._backend import backend_problem
from difflr._backend import configured_backend  # noqa: F401 (tests, users)

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


def _demo(args, parser):
    from difflr.demo import cli as demo_cli

    return demo_cli.run(args, parser)


def build_parser(demo_options=False):
    """The command-line parser.

    Args:
        demo_options: Add the demo's own options, which imports Keras (the
            demo's help lists its arms and presets); only `main` asks for
            them, when the command is `demo`.
    """
    parser = argparse.ArgumentParser(
        prog="python -m difflr", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True,
                                     metavar="{check,demo}")
    check = commands.add_parser(
        "check", help="check the per-variable contract for every built-in "
                      "Keras optimizer on this machine's backend",
        description="Trains a few variables with every built-in Keras "
                    "optimizer under an LRMultiplier, and each variable with "
                    "its own copy of that optimizer built at lr * m, and "
                    "prints the largest difference. Under a minute.")
    check.set_defaults(run=lambda args: _check(args))
    demo = commands.add_parser(
        "demo", help="what differential learning rates buy: pretrain a small "
                     "CNN on digits, fine-tune it for a new task with few "
                     "labels, compare the ULMFiT fine-tuning recipes "
                     "(`demo --help` for its options)")
    if demo_options:
        from difflr.demo import cli as demo_cli

        demo_cli.add_arguments(demo)
    demo.set_defaults(run=lambda args: _demo(args, demo))
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
        parser = build_parser(demo_options="demo" in argv)
        args = parser.parse_args(argv)
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
    sys.exit(main())
