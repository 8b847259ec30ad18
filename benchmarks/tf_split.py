"""TensorFlow only: what it costs to give 100 variables a rate each, in a
graph that runs op by op (Keras does not XLA-compile TensorFlow on a CPU).

The plain optimizer reads its one learning-rate variable once per variable;
difflr computes `lr * m` for all variables as one vector and splits it into
scalars with one op (`unstack`); the obvious alternative is one slice per
variable. Each graph sums its 100 scalars (`add_n`), so that all of them are
computed; the table gives the time of one call, and the difference to the
reads is what the split costs a train step. The variants alternate round by
round; medians of per-round times.

    python benchmarks/tf_split.py
"""

import sys

import _common as c

BACKENDS = ("tensorflow",)  # the only backend this benchmark means anything on

DEFAULTS = {
    "full": {"rounds": 15, "reps": 2000, "variables": 100},
    "quick": {"rounds": 2, "reps": 20, "variables": 10},
}

VARIANTS = ("reads of one variable (plain)", "one split of a vector (difflr)",
            "one slice per variable")


def measure(options):
    import keras

    if keras.backend.backend() != "tensorflow":
        return {"skipped": "tensorflow backend only"}
    import tensorflow as tf

    n = options["variables"]
    lr = tf.Variable(1e-3)
    multipliers = tf.Variable(tf.ones([n]))

    @tf.function
    def reads():
        return tf.add_n([lr.read_value() for _ in range(n)])

    @tf.function
    def split():
        return tf.add_n(tf.unstack(lr * multipliers))

    @tf.function
    def slices():
        rates = lr * multipliers
        return tf.add_n([rates[i] for i in range(n)])

    graphs = dict(zip(VARIANTS, (reads, split, slices)))
    for graph in graphs.values():
        graph()  # trace
    times = c.alternate({k: c.repeat_timer(g, options["reps"]) for k, g in graphs.items()},
                        options["rounds"])
    return {"variants": c.summarize(times, baseline=VARIANTS[0])}


def report(results, options):
    tf_results = results.get("tensorflow")
    if not tf_results or "skipped" in tf_results:
        return "(tensorflow backend not measured)\n"
    v = tf_results["variants"]
    base = v[VARIANTS[0]]["ms"]
    lines = [f"{options['variables']} scalar rates, summed, in a `tf.function`; median of "
             f"{options['rounds']} alternating rounds of {options['reps']} calls.\n",
             "| variant | us per call | more than the reads (us) |", "|---|---:|---:|"]
    for name in VARIANTS:
        us = v[name]["ms"] * 1e3
        lines.append(f"| {name} | {us:.1f} | {us - base * 1e3:+.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(c.main(__file__, measure, report, DEFAULTS, __doc__.splitlines()[0],
                    BACKENDS))
