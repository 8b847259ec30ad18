"""The cost of `set_multipliers` during training.

On the optimizer-bound model (50 Dense(16) layers, Adam, 25 distinct
multipliers): the time of one `set_multipliers` call on a built optimizer,
and the step time of `model.fit` with a callback that calls it before every
batch (alternating two values for one layer) against the same callback doing
nothing. It must not recompile: the table counts how often the Python train
step ran, that is, was traced (JAX and TensorFlow trace once per `fit`; the
torch backend runs eagerly, so there it runs every step and nothing compiles).

    python benchmarks/set_multipliers.py
"""

import sys
import time

import _common as c

DEFAULTS = {
    "full": {"rounds": 7, "layers": 50, "width": 16, "batch": 8, "steps": 40,
             "multipliers": 25, "calls": 200},
    "quick": {"rounds": 2, "layers": 4, "width": 8, "batch": 8, "steps": 3,
              "multipliers": 3, "calls": 5},
}


def _changer(active):
    import keras

    class Change(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def on_train_batch_begin(self, batch, logs=None):
            if active:
                model = self.model  # on JAX this syncs the training state
                value = 0.25 if self.calls % 2 else 0.5
                model.optimizer.set_multipliers({model.get_layer("l0"): value})
            self.calls += 1

    return Change()


def measure(options):
    import statistics

    import keras

    layers, width, batch = options["layers"], options["width"], options["batch"]
    x, y = c.mlp_data(batch * options["steps"], width)
    out = {}

    # One call on a built optimizer, outside training.
    model = c.mlp(layers, width)
    opt = c.difflr_optimizer("Adam", model, options["multipliers"])
    opt.build(model.trainable_variables)
    layer = model.get_layer("l0")
    samples = []
    for r in range(options["rounds"]):
        start = time.perf_counter()
        for k in range(options["calls"]):
            opt.set_multipliers({layer: 0.25 if k % 2 else 0.5})
        samples.append((time.perf_counter() - start) / options["calls"] * 1e3)
    out["call_ms"] = statistics.median(samples)

    # Inside fit.
    timers, runs, callbacks, models = {}, {}, {}, {}
    for name, active in (("plain", False), ("set every step", True)):
        model = c.mlp(layers, width)
        model.compile(optimizer=c.difflr_optimizer("Adam", model, options["multipliers"]),
                      loss="mse")
        counter = []
        original = model.train_step

        def counted(*args, _original=original, _counter=counter, **kwargs):
            _counter.append(1)  # Python runs here only when the step is traced
            return _original(*args, **kwargs)

        model.train_step = counted
        callback = _changer(active)
        model.fit(x[:batch * 2], y[:batch * 2], batch_size=batch, epochs=1, verbose=0,
                  callbacks=[callback])
        runs[name], callbacks[name], models[name] = counter, callback, model

        def run(model=model, callback=callback):
            start = time.perf_counter()
            model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0,
                      callbacks=[callback])
            return (time.perf_counter() - start) / options["steps"]

        timers[name] = run
    before = {k: len(v) for k, v in runs.items()}
    out["fit"] = c.summarize(c.alternate(timers, options["rounds"]))
    total_steps = options["rounds"] * options["steps"]
    out["steps"] = total_steps
    out["traced_first_fit"] = before
    out["train_step_runs"] = {k: len(runs[k]) - before[k] for k in runs}
    out["changes"] = callbacks["set every step"].calls
    out["eager"] = keras.backend.backend() == "torch"
    final = models["set every step"].optimizer.multiplier_for(
        models["set every step"].get_layer("l0").kernel)
    out["last_value_in_force"] = final
    return out


def report(results, options):
    lines = [f"{options['layers']} Dense({options['width']}) layers, Adam, "
             f"{options['multipliers']} distinct multipliers; a callback sets one layer's "
             "multiplier before every batch. Median of "
             f"{options['rounds']} alternating rounds of {options['steps']} steps.\n"]
    lines.append("| backend | one call (ms) | fit ms/step, unchanged | fit ms/step, set every "
                 "step | ratio | traces of the train step |")
    lines.append("|---|---:|---:|---:|---:|---|")
    for backend, r in results.items():
        fit = r["fit"]
        runs = r["train_step_runs"]["set every step"]
        first = r["traced_first_fit"]["set every step"]
        traced = ("eager: none, the Python step runs every step" if r["eager"] else
                  f"{first} in the first `fit`, then {runs} during {r['steps']} steps "
                  f"that each changed a multiplier")
        lines.append(f"| {backend} | {r['call_ms']:.3f} | {c.fmt_ms(fit['plain']['ms'])} | "
                     f"{c.fmt_ms(fit['set every step']['ms'])} | "
                     f"{c.fmt_ratio(fit['set every step']['ratio'])} | {traced} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(c.main(__file__, measure, report, DEFAULTS, __doc__.splitlines()[0]))
