"""The first `model.fit` call: build, trace and compile, plain against difflr.

A KerasHub `BertBackbone` from a small config (hidden 128, 12 layers by
default: 199 trainable variables) under AdamW (weight decay 0.01), three
ways: the plain optimizer, `LRMultiplier` with no rules, and `LRMultiplier`
with `layerwise_decay(0.8)` and `no_decay`; plus the plain optimizer again,
the A/A control. Each timing builds a fresh model and optimizer and times
its first one-step `fit` (everything the first call costs); the variants
alternate round by round after one unrecorded round (`_common.alternate`),
and the table reports the median seconds and the median of the per-round
ratios to plain. On JAX it also splits the time as JAX reports it
(`jax.monitoring`): tracing to a jaxpr, lowering to StableHLO, and XLA's
compilation; the rest is Python outside the trace (build, data, callbacks).

    python benchmarks/first_call.py                      # all three backends
    python benchmarks/first_call.py --backends jax --set rounds=3 --set layers=4

Needs keras-hub (installed by the project's test set-up).
"""

import collections
import statistics
import sys
import time

import _common as c

DEFAULTS = {
    "full": {"rounds": 5, "layers": 12, "batch": 8, "sequence": 32},
    "quick": {"rounds": 1, "layers": 1, "batch": 2, "sequence": 8},
}
VARIANTS = ("plain", "no rules", "layerwise_decay + no_decay", c.AGAIN)
# jax.monitoring events, and the phase each is reported as.
JAX_PHASES = {"/jax/core/compile/jaxpr_trace_duration": "trace",
              "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
              "/jax/core/compile/backend_compile_duration": "compile"}


def _backbone(options):
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=1000, num_layers=options["layers"], num_heads=2,
        hidden_dim=128, intermediate_dim=256,
        max_sequence_length=options["sequence"])
    return keras.Model(backbone.input, backbone(backbone.input)["pooled_output"])


def _data(options):
    import numpy as np

    rng = np.random.default_rng(0)
    n, length = options["batch"], options["sequence"]
    x = {"token_ids": rng.integers(0, 1000, (n, length)),
         "segment_ids": np.zeros((n, length), "int32"),
         "padding_mask": np.ones((n, length), "int32")}
    return x, rng.normal(size=(n, 128)).astype("float32")


def _optimizer(variant, model):
    import keras

    import difflr

    inner = keras.optimizers.AdamW(1e-3, weight_decay=0.01)
    if variant in ("plain", c.AGAIN):
        return inner
    if variant == "no rules":
        return difflr.LRMultiplier(inner)
    return difflr.LRMultiplier(inner, difflr.layerwise_decay(model, 0.8),
                               decay_multipliers=difflr.no_decay(model))


class _JaxPhases:
    """Seconds per phase of the JAX compilations since the last `take()`."""

    def __init__(self):
        import keras

        self.seconds = collections.Counter()
        if keras.backend.backend() == "jax":
            import jax

            jax.monitoring.register_event_duration_secs_listener(self._record)

    def _record(self, event, duration, **kwargs):
        if event in JAX_PHASES:
            self.seconds[JAX_PHASES[event]] += duration

    def take(self):
        taken, self.seconds = dict(self.seconds), collections.Counter()
        return taken


def measure(options):
    import keras

    x, y = _data(options)
    phases, split = _JaxPhases(), {name: [] for name in VARIANTS}
    variables = []

    def timer(variant):
        def run():
            model = _backbone(options)
            model.compile(optimizer=_optimizer(variant, model), loss="mse")
            phases.take()
            start = time.perf_counter()
            model.fit(x, y, batch_size=options["batch"], epochs=1, verbose=0)
            seconds = time.perf_counter() - start
            split[variant].append(phases.take())
            variables[:] = [len(model.trainable_variables)]
            keras.backend.clear_session()
            return seconds
        return run

    times = c.alternate({name: timer(name) for name in VARIANTS}, options["rounds"])
    summary = c.summarize(times)
    for name in VARIANTS:
        recorded = split[name][1:]  # the unrecorded round's first
        summary[name]["phases"] = {
            phase: statistics.median(r.get(phase, 0.0) for r in recorded)
            for phase in JAX_PHASES.values()} if any(recorded) else None
    return {"variants": summary, "variables": variables[0]}


def report(results, options):
    some = next(iter(results.values()))
    lines = [f"KerasHub `BertBackbone` (hidden 128, {options['layers']} layers, "
             f"{some['variables']} trainable variables), AdamW; seconds of the first "
             f"one-step `fit`, median of {c.fmt_count(options['rounds'], 'alternating rounds')}"
             " (a fresh model each)\n",
             "| backend | variant | first call s | / plain | JAX trace s | lower s | XLA compile s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for backend, per_backend in results.items():
        for name in VARIANTS:
            v = per_backend["variants"][name]
            p = v["phases"]
            cells = ("| | |" if p is None else
                     f"{p['trace']:.2f} | {p['lower']:.2f} | {p['compile']:.2f} |")
            lines.append(f"| {backend} | {name} | {v['ms'] / 1e3:.2f} | "
                         f"{c.fmt_ratio(v['ratio'])} | {cells}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(c.main(__file__, measure, report, DEFAULTS, __doc__.splitlines()[0]))
