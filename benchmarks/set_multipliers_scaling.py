"""How the cost of `set_multipliers` grows with one rule key per variable.

Issue 14, item 12: on a built LRMultiplier over N scalar variables, one
`set_multipliers` call given N `(variable, value)` pairs, for N = 2k, 4k, 8k.
Linear parsing and merging keeps the time per variable flat; the issue measured
0.3 / 1.1 / 6.0 s (quadratic). Prints a table; asserts nothing (the test suite
checks only the result, in tests/test_keras_fidelity.py).

    KERAS_BACKEND=jax python benchmarks/set_multipliers_scaling.py [--sizes 2000 4000 8000]
"""

import argparse
import time


def _variables(n):
    """The trainable variables of a model with one layer of n scalars."""
    import keras

    class Scalars(keras.layers.Layer):
        def build(self, input_shape):
            self.scalars = [self.add_weight(shape=(1,), initializer="ones", name=f"s{i}")
                            for i in range(n)]

        def call(self, x):
            total = self.scalars[0]
            for scalar in self.scalars[1:]:
                total = total + scalar
            return x * total

    inputs = keras.Input((1,))
    model = keras.Model(inputs, Scalars(name="many")(inputs))
    return model.trainable_variables


def measure(n, rounds, keys):
    import keras

    import difflr

    variables = _variables(n)
    opt = difflr.LRMultiplier(keras.optimizers.SGD(0.1))
    opt.build(variables)
    times = []
    for r in range(rounds):
        pairs = [(v.path if keys == "paths" else v, ((i + r) % 7) / 4)
                 for i, v in enumerate(variables)]
        start = time.perf_counter()
        opt.set_multipliers(pairs)
        times.append(time.perf_counter() - start)
        assert opt.multiplier_for(variables[-1]) == ((n - 1 + r) % 7) / 4
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 4000, 8000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keys", choices=["variables", "paths", "both"], default="both",
                        help="key each variable by the object or by its exact path")
    args = parser.parse_args()
    import keras

    print(f"backend: {keras.backend.backend()}, best of {args.rounds} rounds")
    print(f"{'keys':>9}  {'variables':>10}  {'seconds':>9}  {'us/variable':>11}  "
          f"{'x previous':>10}")
    for keys in (["variables", "paths"] if args.keys == "both" else [args.keys]):
        previous = None
        for n in args.sizes:
            seconds = measure(n, args.rounds, keys)
            ratio = "" if previous is None else f"{seconds / previous:.2f}"
            print(f"{keys:>9}  {n:>10}  {seconds:>9.3f}  {1e6 * seconds / n:>11.1f}  "
                  f"{ratio:>10}")
            previous = seconds


if __name__ == "__main__":
    main()
