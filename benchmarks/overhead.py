"""Step time of model.fit: plain optimizer vs difflr.LRMultiplier vs
keras.optimizers.MultiOptimizer doing the same job.

An optimizer-bound model (many small layers, a small batch) with 25 distinct
multipliers. Each backend runs in its own process; inside it the variants
alternate round by round, and the table reports the median time per step and
its ratio to the plain optimizer.

    python benchmarks/overhead.py                 # all three backends
    python benchmarks/overhead.py --backends jax --rounds 3
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

LAYERS, WIDTH, BATCH, STEPS, GROUPS = 50, 16, 8, 100, 25


def _measure(rounds, optimizer_name):
    import numpy as np
    import keras

    import difflr

    multipliers = [0.5 ** (g / 4) for g in range(GROUPS)]  # 25 distinct values

    def model():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((WIDTH,))
        x = inputs
        for i in range(LAYERS):
            x = keras.layers.Dense(WIDTH, activation="tanh", name=f"l{i}")(x)
        return keras.Model(inputs, x)

    def base(lr):
        return getattr(keras.optimizers, optimizer_name)(lr)

    def groups():
        return {g: [i for i in range(LAYERS) if i % GROUPS == g] for g in range(GROUPS)}

    def plain(m):
        return base(1e-3)

    def wrapped(m):
        rules = {}
        for g, ids in groups().items():
            for i in ids:
                rules[m.get_layer(f"l{i}")] = multipliers[g]
        return difflr.LRMultiplier(base(1e-3), rules)

    def multi(m):
        mapping = keras.optimizers.OptimizerMap(default_optimizer=base(1e-3))
        for g, ids in groups().items():
            mapping["|".join(f"l{i}/.*" for i in ids)] = base(1e-3 * multipliers[g])
        return keras.optimizers.MultiOptimizer(mapping)

    variants = {"plain": plain, "difflr": wrapped}
    if hasattr(keras.optimizers, "MultiOptimizer"):
        variants["MultiOptimizer"] = multi
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH * STEPS, WIDTH)).astype("float32")
    y = rng.normal(size=(BATCH * STEPS, WIDTH)).astype("float32")
    models = {}
    for name, make in variants.items():
        m = model()
        m.compile(optimizer=make(m), loss="mse")
        m.fit(x[: BATCH * 5], y[: BATCH * 5], batch_size=BATCH, epochs=2, verbose=0)  # compile
        models[name] = m
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, m in models.items():
            start = time.perf_counter()
            m.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
            times[name].append((time.perf_counter() - start) / STEPS * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="jax,tensorflow,torch")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--optimizer", default="Adam")
    parser.add_argument("--json", help="write the results here as JSON")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_measure(args.rounds, args.optimizer)))
        return 0
    results = {}
    for backend in args.backends.split(","):
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        out = subprocess.run([sys.executable, __file__, "--child", "--rounds", str(args.rounds),
                              "--optimizer", args.optimizer], env=env, capture_output=True,
                             text=True, check=True)
        results[backend] = json.loads(out.stdout.strip().splitlines()[-1])
    import keras

    print(f"keras {keras.__version__}, python {platform.python_version()}, "
          f"{platform.machine()}, {os.cpu_count()} cores; {LAYERS} Dense({WIDTH}) layers "
          f"({2 * LAYERS} variables), batch {BATCH}, {GROUPS} distinct multipliers, "
          f"{args.optimizer}, median of {args.rounds} rounds of {STEPS} steps\n")
    print("| backend | plain ms/step | difflr ms/step | difflr / plain | "
          "MultiOptimizer ms/step | MultiOptimizer / plain |")
    print("|---|---:|---:|---:|---:|---:|")
    for backend, r in results.items():
        multi = r.get("MultiOptimizer")
        multi_cells = ("n/a | n/a" if multi is None
                       else f"{multi:.2f} | {multi / r['plain']:.3f}")
        print(f"| {backend} | {r['plain']:.2f} | {r['difflr']:.2f} | "
              f"{r['difflr'] / r['plain']:.3f} | {multi_cells} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
