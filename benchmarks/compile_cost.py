"""How the first `model.fit` call grows with the number of variables.

The first call is what a user waits for before training starts: difflr's
rules and optimizer, `model.compile`, and a one-step `fit` that traces the
train step, compiles it and runs it once. It is timed as a user pays it: on
a fresh model with a fresh optimizer, each in a process of its own (a fresh
Python, so no trace or compilation of an earlier model is reused), with
JAX's persistent compilation cache off (`JAX_ENABLE_COMPILATION_CACHE=false`,
and no `JAX_COMPILATION_CACHE_DIR`) and TorchInductor's caches off. Imports
and the model's construction are not timed: they are the same for every
variant.

The model looks like a transformer (`model="transformer"`): an embedding,
blocks of attention, two layer norms and a two-layer MLP (16 variables a
block, like a KerasHub `BertBackbone` layer, named `transformer_layer_k` so
that `difflr.groups` splits it into blocks), a final norm and a head; as
many blocks as come closest to each size asked for. `model="dense"` is a
stack of Dense layers instead (`_common.mlp`). Four variants under AdamW
(weight decay 0.01), as in `first_call.py`: the plain optimizer,
`LRMultiplier` with no rules, `LRMultiplier` with `layerwise_decay` and
`no_decay`, and the plain optimizer again, the A/A control. Every round
times each variant once at each size, in mirrored order from round to round
(A B C D, then D C B A); a ratio is the median over rounds of the variant's time over the
plain time of the same round and size (`_common.summarize`: the geometric
mean of both plain variants, the A/A ratio against the first).

    python benchmarks/compile_cost.py                        # all backends
    python benchmarks/compile_cost.py --quick --out /tmp/cc  # a check: 1-2 min a backend
    python benchmarks/compile_cost.py --backends jax --sizes 50,200,1000
    python benchmarks/compile_cost.py --backends tensorflow,torch --set jit_compile=true

Beyond `_common.main`'s options: `--sizes N,N,...` (trainable variables),
`--out DIR` (writes DIR/compile_cost.json and, with matplotlib,
DIR/compile_cost.png: seconds against variables, log-log, one line per
variant, one panel per backend).
"""

import argparse
import json
import os
import statistics
import sys
import time

import _common as c

DEFAULTS = {
    # About 15 minutes a backend on 2 cores. A first call takes about 45 ms
    # a variable on JAX (plain; 65 with difflr), 150 on TensorFlow (its graph
    # optimizations) and 8 on torch, measured under load, plus 5-20 s a
    # process to import and build: JAX at 2,000 variables would add 8-9
    # minutes a round (`--sizes 50,100,200,500,1000,2000`). Width 128, as
    # first_call.py's BERT: at width 32 and 8 tokens, XLA on CPU inlines the
    # tiny matrix products and compiles in a time that grows faster than the
    # model (40 s of CPU for 197 variables, 7 at width 128), which measures
    # XLA's handling of tiny matrices, not difflr.
    "full": {"rounds": 2,
             "sizes": {"jax": [50, 100, 200, 500, 1000],
                       "tensorflow": [50, 100, 200, 500],
                       "torch": [50, 100, 200, 500, 1000, 2000]},
             "model": "transformer", "width": 128, "heads": 2, "batch": 2,
             "sequence": 16, "jit_compile": "auto", "decay": 0.8},
    "quick": {"rounds": 1, "sizes": [20, 50], "model": "transformer", "width": 128,
              "heads": 2, "batch": 2, "sequence": 16, "jit_compile": "auto", "decay": 0.8},
}
VARIANTS = ("plain", "no rules", "layerwise_decay + no_decay", c.AGAIN)
# Variables of the transformer outside its blocks: the embedding, the final
# norm's two, the head's two.
_OUTSIDE_BLOCKS = 5
_PER_BLOCK = 16
# The lowest multiplier `layerwise_decay` may give (see `llrd_decay`).
_LOWEST = 0.01
# Keeps every compilation cache that outlives a process out of the timing.
_NO_PERSISTENT_CACHES = {"JAX_ENABLE_COMPILATION_CACHE": "false",
                         "TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1"}
_CACHE_DIRECTORIES = ("JAX_COMPILATION_CACHE_DIR",)


# The models.

def layout(model, variables):
    """The number of blocks (transformer) or Dense layers (dense) whose model
    comes closest to `variables` trainable variables, at least one."""
    if model == "transformer":
        return max(1, round((variables - _OUTSIDE_BLOCKS) / _PER_BLOCK))
    if model == "dense":
        return max(1, round(variables / 2))
    raise ValueError(f"model must be 'transformer' or 'dense', not {model!r}")


def _transformer(blocks, options):
    import keras

    class Block(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            width, heads = options["width"], options["heads"]
            self.attention = keras.layers.MultiHeadAttention(heads, width // heads)
            self.attention_norm = keras.layers.LayerNormalization()
            self.up = keras.layers.Dense(2 * width, activation="gelu")
            self.down = keras.layers.Dense(width)
            self.mlp_norm = keras.layers.LayerNormalization()

        def call(self, x):
            x = self.attention_norm(x + self.attention(x, x))
            return self.mlp_norm(x + self.down(self.up(x)))

    keras.utils.set_random_seed(0)
    inputs = keras.Input((options["sequence"],), dtype="int32")
    x = keras.layers.Embedding(1000, options["width"], name="token_embedding")(inputs)
    for k in range(blocks):
        x = Block(name=f"transformer_layer_{k}")(x)
    x = keras.layers.LayerNormalization(name="final_norm")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    outputs = keras.layers.Dense(options["width"], name="head")(x)
    return keras.Model(inputs, outputs, name="transformer")


def _model_and_data(variables, options):
    import numpy as np

    count = layout(options["model"], variables)
    rng = np.random.default_rng(0)
    n, width = options["batch"], options["width"]
    y = rng.normal(size=(n, width)).astype("float32")
    if options["model"] == "dense":
        return c.mlp(count, width), rng.normal(size=(n, width)).astype("float32"), y
    x = rng.integers(0, 1000, (n, options["sequence"])).astype("int32")
    return _transformer(count, options), x, y


def llrd_decay(groups, decay):
    """`decay`, or the decay closer to 1 that gives the lowest of `groups`
    groups the multiplier `_LOWEST`, whichever is larger: `decay ** 1000`
    is 0 in float32 (a paused variable, another code path), and a model
    that deep would not decay by as much per layer."""
    if groups <= 1:
        return decay
    return max(decay, _LOWEST ** (1 / (groups - 1)))


def _optimizer(variant, model, options):
    import keras

    import difflr

    inner = keras.optimizers.AdamW(1e-3, weight_decay=0.01)
    if variant in ("plain", c.AGAIN):
        return inner
    if variant == "no rules":
        return difflr.LRMultiplier(inner)
    groups = difflr.groups(model)
    rules = difflr.layerwise_decay(model, llrd_decay(len(groups), options["decay"]),
                                   groups=groups)
    return difflr.LRMultiplier(inner, rules, decay_multipliers=difflr.no_decay(model))


# One first call, in a process of its own.

def _first_call(job, options):
    """Seconds of one first call (`job`: a size and a variant), in this
    fresh process, and what it ran on."""
    import keras

    import difflr  # noqa: F401  (imported by every variant: its import is not timed)

    model, x, y = _model_and_data(job["size"], options)
    start = time.perf_counter()
    model.compile(optimizer=_optimizer(job["variant"], model, options), loss="mse",
                  jit_compile=options["jit_compile"])
    compiled = time.perf_counter()
    model.fit(x, y, batch_size=options["batch"], epochs=1, verbose=0)
    c.synchronize(model)  # (an accelerator may still be running the step)
    end = time.perf_counter()
    return {"seconds": end - start, "setup": compiled - start, "fit": end - compiled,
            "variables": len(model.trainable_variables), "caches": _caches(),
            "jit_compile": model.jit_compile}


def _caches():
    """The persistent compilation caches as this process sees them (the
    JSON shows they were off)."""
    import keras

    if keras.backend.backend() != "jax":
        return {k: os.environ.get(k) for k in _NO_PERSISTENT_CACHES}
    import jax

    return {"jax_enable_compilation_cache": jax.config.jax_enable_compilation_cache,
            "jax_compilation_cache_dir": jax.config.jax_compilation_cache_dir}


# The rounds, run from the process of one backend.

def schedule(sizes, variants, rounds):
    """[(round, size, variant)]: every round runs every size, each size every
    variant; odd rounds in the order of the round before, reversed (A B C,
    then C B A: over two rounds every variant has the same mean place, as
    `_common.build_mirrored`), and each pair of rounds rotated by one from
    the pair before."""
    jobs = []
    for r in range(rounds):
        shift = (r // 2) % len(variants)
        order = list(variants[shift:]) + list(variants[:shift])
        if r % 2:
            order.reverse()
        jobs += [(r, size, variant) for size in sizes for variant in order]
    return jobs


def summarize(seconds):
    """{variant: [seconds, one per round]} of one size -> `_common.summarize`'s
    {variant: {"ms", "ratio", "rounds"}}: medians of the times and of the
    per-round ratios to plain (the A/A ratio for `_common.AGAIN`)."""
    return c.summarize({name: [s * 1e3 for s in values] for name, values in seconds.items()})


def measure(options):
    if "job" in options:
        return _first_call(options["job"], options)
    layout(options["model"], 1)  # (a bad model name fails before any process starts)
    for name in _CACHE_DIRECTORIES:
        os.environ.pop(name, None)
    os.environ.update(_NO_PERSISTENT_CACHES)
    backend = os.environ["KERAS_BACKEND"]
    sizes = c.for_backend(options["sizes"])
    runs = {size: {name: [] for name in VARIANTS} for size in sizes}
    for _, size, variant in schedule(sizes, VARIANTS, c.for_backend(options["rounds"])):
        job = dict(options, job={"size": size, "variant": variant})
        runs[size][variant].append(c.run_per_backend(__file__, [backend], job)[backend])
    return {str(size): size_result(runs[size]) for size in sizes}


def size_result(runs):
    """One size's {variant: [`_first_call` results]} -> its summary, each
    variant with the medians of its setup (rules, optimizer, `compile`) and
    `fit` seconds."""
    summary = summarize({name: [r["seconds"] for r in rs] for name, rs in runs.items()})
    for name, rs in runs.items():
        for part in ("setup", "fit"):
            summary[name][part] = statistics.median(r[part] for r in rs)
    last = runs[VARIANTS[-1]][-1]
    return {"variables": last["variables"], "jit_compile": last["jit_compile"],
            "caches": last["caches"], "variants": summary}


# Reporting.

def rows(per_backend):
    """[(variables, {variant: (seconds, ratio)})], smallest model first."""
    out = []
    for entry in sorted(per_backend.values(), key=lambda e: e["variables"]):
        out.append((entry["variables"], {name: (v["ms"] / 1e3, v["ratio"])
                                         for name, v in entry["variants"].items()}))
    return out


def report(results, options):
    what = ("a transformer-like stack (16 variables a block)"
            if options["model"] == "transformer" else "a stack of Dense layers")
    lines = [f"{what.capitalize()}, width {options['width']}, AdamW; seconds of the "
             "first call (rules, optimizer, `compile`, one-step `fit`) in a fresh "
             f"process, `jit_compile={options['jit_compile']!r}`, median of "
             f"{c.fmt_count(options['rounds'], 'rounds')}; in brackets, the median "
             "of the per-round ratios to plain\n",
             "| backend | variables | plain s | no rules s | layerwise_decay + no_decay s "
             "| plain A/A |",
             "|---|---:|---:|---:|---:|---:|"]
    for backend, per_backend in results.items():
        for variables, v in rows(per_backend):
            cells = [f"{v['plain'][0]:.2f}"]
            cells += [f"{v[name][0]:.2f} ({c.fmt_ratio(v[name][1])})"
                      for name in VARIANTS[1:3]]
            cells.append(c.fmt_ratio(v[c.AGAIN][1]))
            lines.append(f"| {backend} | {variables} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results, options, path):
    """Seconds of the first call against trainable variables, log-log, one
    line per variant, one panel per backend. Nothing without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.8),
                             squeeze=False)
    styles = {"plain": "-o", "no rules": "-s", "layerwise_decay + no_decay": "--^",
              c.AGAIN: ":x"}
    for ax, (backend, per_backend) in zip(axes[0], results.items()):
        points = rows(per_backend)
        for name in VARIANTS:
            ax.plot([n for n, _ in points], [v[name][0] for _, v in points],
                    styles[name], label=name, ms=4)
        _log_axes(ax, [n for n, _ in points])
        ax.set_title(backend)
        ax.set_xlabel("trainable variables")
        ax.grid(True, which="both", lw=0.3)
    axes[0][0].set_ylabel("first call (s)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"First model.fit call, fresh process, jit_compile="
                 f"{options['jit_compile']!r}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _log_axes(ax, variables):
    """Log scales labelled in plain numbers: the variables measured, and
    1-2-5 steps of seconds."""
    from matplotlib import ticker

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(variables)
    ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%d"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def _main():
    """`_common.main`, plus `--sizes` and `--out` (see the module's doc)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--sizes", help="trainable variables, e.g. 50,200,1000")
    parser.add_argument("--out", help="a directory for compile_cost.json and .png")
    parser.add_argument("--json")
    args, rest = parser.parse_known_args()
    if args.sizes:
        try:
            sizes = [int(s) for s in args.sizes.split(",")]
        except ValueError:
            parser.error(f"--sizes takes whole numbers separated by commas, "
                         f"not {args.sizes!r}")
        rest += ["--set", f"sizes={json.dumps(sizes)}"]
    written = args.json or (args.out and os.path.join(args.out, "compile_cost.json"))
    if written:
        os.makedirs(os.path.dirname(os.path.abspath(written)), exist_ok=True)
        rest += ["--json", written]
    sys.argv[1:] = rest
    code = c.main(__file__, measure, report, DEFAULTS, __doc__.splitlines()[0])
    if args.out and code == 0:
        with open(written) as f:
            done = json.load(f)
        image = os.path.join(args.out, "compile_cost.png")
        if plot(done["results"], done["options"], image):
            print(f"wrote {image}")
    return code


if __name__ == "__main__":
    sys.exit(_main())
