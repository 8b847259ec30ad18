"""`python -m difflr`: command-line entry points.

    python -m difflr check    per-copy contract check on this machine's backend
    python -m difflr demo     what differential learning rates buy, on real data
"""

import argparse
import sys


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


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m difflr",
        description="keras-difflr: differential learning rates for Keras 3. "
                    "The backend is the one KERAS_BACKEND selects.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check", help="check the per-variable contract for every built-in "
                      "Keras optimizer on this machine's backend")
    check.set_defaults(run=_check)
    from difflr.demo import cli as demo_cli

    demo = commands.add_parser(
        "demo", help="what differential learning rates buy: pretrain a small "
                     "CNN on digits, fine-tune it for a new task with few "
                     "labels, compare the ULMFiT fine-tuning recipes")
    demo_cli.add_arguments(demo)
    demo.set_defaults(run=lambda args: demo_cli.run(args, demo))
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
