"""Runs every benchmark on every backend and regenerates docs/performance.md,
docs/img/overhead_vs_multipliers.png and docs/performance.json.

    python benchmarks/run_all.py                  # the full run (~20 min on 2 cores)
    python benchmarks/run_all.py --quick --out /tmp/perf   # check the scripts
    python benchmarks/run_all.py --render docs/performance.json  # only the report
    python benchmarks/run_all.py --only first_call   # one benchmark, into the
                                   # existing docs/performance.json, and the report

Each benchmark runs once per backend in a process of its own (Keras picks its
backend at import). Timings alternate the variants round by round and report
medians of per-round ratios, so run it on a quiet machine: the report records
the load average before and after.
"""

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _common as c  # noqa: E402
import compile_cost  # noqa: E402
import first_call  # noqa: E402
import memory  # noqa: E402
import op_counts  # noqa: E402
import scaling  # noqa: E402
import scheduled  # noqa: E402
import set_multipliers  # noqa: E402
import step_time  # noqa: E402
import tf_split  # noqa: E402
import torch_native  # noqa: E402

# In running order: the counts first (they do not depend on the load).
BENCHMARKS = {
    "op_counts": op_counts,
    "memory": memory,
    "step_time": step_time,
    "scaling": scaling,
    "torch_native": torch_native,
    "tf_split": tf_split,
    "set_multipliers": set_multipliers,
    "scheduled": scheduled,
    "first_call": first_call,
    "compile_cost": compile_cost,
}


def run(backends, quick, names=None, into=None):
    """Runs the benchmarks `names` (all by default); with `into` (an earlier
    run's results), only those, recorded with their own machine, time and
    load, the earlier ones kept."""
    results = {"machine": c.machine(), "load_before": c.load_average(),
               "started": time.strftime("%Y-%m-%d %H:%M"), "quick": quick, "runs": {}}
    if into is not None:
        results = into
    start = time.time()
    for name, module in BENCHMARKS.items():
        chosen = [b for b in getattr(module, "BACKENDS", backends) if b in backends]
        if not chosen or (names and name not in names):
            continue
        options = c.options_for(module.DEFAULTS, quick)
        began, load_before = time.time(), c.load_average()
        started = time.strftime("%Y-%m-%d %H:%M")
        print(f"[{time.strftime('%H:%M:%S')}] {name} on {', '.join(chosen)}", flush=True)
        devices = {}
        per_backend = c.run_per_backend(module.__file__, chosen, options, devices)
        print(c.device_lines(devices), flush=True)
        if into is not None:
            # Backends not run this time keep their earlier results.
            earlier = results["runs"].get(name, {}).get("results", {})
            results["runs"][name] = {
                "options": options, "results": {**earlier, **per_backend},
                "seconds": time.time() - began, "machine": c.machine(),
                "started": started, "load": [load_before, c.load_average()],
                "devices": {**results["runs"].get(name, {}).get("devices", {}),
                            **devices}}
            continue
        results["runs"][name] = {"options": options, "results": per_backend,
                                 "seconds": time.time() - began, "devices": devices}
        results.setdefault("load_during", []).append(c.load_average())
    if into is not None:
        return results
    results["seconds"] = time.time() - start
    results["load_after"] = c.load_average()
    return results


def _step_rows(results):
    """(optimizer, backend, difflr ratio, MultiOptimizer ratio, A/A ratio) on
    the optimizer-bound model; a variant that did not run gives None."""
    run = results["runs"].get("step_time")
    if not run:
        return []
    rows = []
    for name in run["options"]["optimizers"]:
        for backend, r in run["results"].items():
            v = r[f"optimizer-bound/{name}"]["variants"]
            ratios = [v[k]["ratio"] if k in v else None
                      for k in ("difflr", "MultiOptimizer", c.AGAIN)]
            rows.append((name, backend, *ratios))
    return rows


def _scaling(results, backend):
    """({count: difflr ratio}, A/A ratio or None) on the scaling benchmark's
    model, or None where it did not run."""
    run = results["runs"].get("scaling")
    if not run or backend not in run["results"]:
        return None
    per_backend = run["results"][backend]
    at = dict(scaling.series(per_backend, run["options"], "difflr"))
    again = per_backend[str(run["options"]["layers"])]["variants"].get(c.AGAIN)
    return at, None if again is None else again["ratio"]


def targets(results):
    """The issue's targets, judged from the measurements."""
    backends = _backends(results)
    lines = ["| target | " + " | ".join(backends) + " |",
             "|---|" + "---:|" * len(backends)]
    rows = _step_rows(results)
    scaled = {backend: _scaling(results, backend) for backend in backends}

    def verdict(values, limit):
        if not values:
            return "n/a"
        worst = max(values)
        return f"{'met' if worst <= limit else 'missed'} ({c.fmt_overhead(worst)})"

    cells = []
    for backend in backends:
        values = [d for _, b, d, _, _ in rows if b == backend]
        if scaled[backend]:
            values += [r for k, r in scaled[backend][0].items() if k == 25]
        cells.append(verdict(values, 1.02))
    lines.append("| 25 multipliers: within 2% of the plain optimizer (worst case) | "
                 + " | ".join(cells) + " |")
    cells = []
    for backend in backends:
        if scaled[backend]:
            cells.append(verdict([r for k, r in scaled[backend][0].items() if k == 100],
                                 1.05))
        else:
            cells.append("n/a")
    lines.append("| 100 multipliers: within 5% | " + " | ".join(cells) + " |")
    cells = []
    for backend in backends:
        pairs = [(d, m) for _, b, d, m, _ in rows if b == backend and m is not None]
        measurable = [(d, m) for d, m in pairs if m > 1.02]
        if not pairs:
            cells.append("n/a")
        elif not measurable:
            cells.append("MultiOptimizer has no measurable overhead")
        else:
            won = sum(1 for d, m in measurable if d < m)
            cells.append(f"{'met' if won == len(measurable) else 'missed'} "
                         f"(faster in {won} of {len(measurable)})")
    lines.append("| faster than MultiOptimizer where it has measurable (>2%) overhead | "
                 + " | ".join(cells) + " |")
    first = results["runs"].get("first_call", {}).get("results", {})
    cells = [verdict([v["ratio"] for name, v in first[backend]["variants"].items()
                      if name not in ("plain", c.AGAIN)], 1.05)
             if backend in first else "n/a" for backend in backends]
    lines.append("| first `fit` call (build, trace, compile): within 5% | "
                 + " | ".join(cells) + " |")
    cells = []
    for backend in backends:
        # The A/A ratios behind the 25-multiplier verdict.
        values = [a for _, b, _, _, a in rows if b == backend and a is not None]
        if scaled[backend] and scaled[backend][1] is not None:
            values.append(scaled[backend][1])
        cells.append("n/a" if not values else
                     f"{c.fmt_overhead(min(values))} to {c.fmt_overhead(max(values))}")
    lines.append("| noise floor: plain A/A on the same models (not a target) | "
                 + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _devices(results):
    """The devices the runs computed on, as a sentence for the report's
    header (empty for results recorded before runs recorded them)."""
    from difflr._machine import device_line

    seen = {}
    for run in results["runs"].values():
        for found in run.get("devices", {}).values():
            seen.setdefault(device_line(found), None)
    return f" Devices: {'; '.join(seen)}." if seen else ""


def _backends(results):
    seen = []
    for run in results["runs"].values():
        for backend in run["results"]:
            if backend not in seen and "skipped" not in run["results"][backend]:
                seen.append(backend)
    return [b for b in c.BACKENDS if b in seen]


def render(results, image):
    m = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    env = ", ".join(f"`{k}={v}`" for k, v in m["env"].items()) or "none"
    before, after = results["load_before"], results["load_after"]
    during = [l[0] for l in results.get("load_during", []) if l]
    load = (f"{before[0]:.2f} / {after[0]:.2f}" if before and after else "unknown")
    if during:
        load += f" (highest seen during the run: {max(during):.2f})"
    # A 2-core machine: above about 1.2 something else is competing.
    # The benchmarks alone reach 1.6 (JAX and TensorFlow run several threads);
    # above the 2 cores, something else was running.
    busy = bool(before and after and max([before[0], after[0]] + during) > 2.0)
    devices = _devices(results)
    parts = [
        "# Performance\n",
        "How much `difflr.LRMultiplier` costs against the plain optimizer it wraps, "
        "against `keras.optimizers.MultiOptimizer` doing the same job, and against "
        "PyTorch's own param groups. Everything on this page is regenerated by\n",
        "```bash\npython benchmarks/run_all.py\n```\n",
        f"Measured {results['started']} on {m['cpu']} ({m['cores']} cores), Python "
        f"{m['python']}, {versions}; environment: {env}. The run took "
        f"{results['seconds'] / 60:.0f} minutes. One-minute load average before / after: "
        f"{load}.{devices}",
    ]
    if busy:
        parts.append("\n> **Load**: the one-minute load average went above 2 on this "
                     "2-core machine (the benchmarks alone reach about 1.6), so something else "
                     "competed for the cores, and single timings are noisy. The "
                     "ratios are medians of rounds that alternate the variants, which cancels "
                     "most of it; the operation counts below do not depend on the load at "
                     "all. TensorFlow suffers most when the cores are shared: its step time "
                     "jumps between two levels about 2x apart, whatever the optimizer; every "
                     "round's time is in `performance.json`.\n")
    if results["quick"]:
        parts.append("\n> **Quick run** (`--quick`): tiny models and rounds, to check the "
                     "scripts only. These numbers mean nothing.\n")
    parts += [
        "\n## Targets\n",
        targets(results),
        "A ratio is a median of paired rounds, and the A/A row shows how far two identical "
        "optimizers drift apart at the same number of rounds: an overhead inside that spread "
        "cannot be told from noise here. The counts under *What a step executes* do not "
        "depend on noise, and say what each backend does more than the plain optimizer.\n",
        "\n## Step time of `model.fit`\n",
        "Each benchmark alternates its variants round by round in one process per backend; "
        "a ratio is the median over rounds of (variant time / plain time in the same round). "
        "The clock runs inside `fit`'s loop, from the start of batch 2 to the end of "
        "training: what `fit` costs once per call (the dataset, its iterator) is the same "
        "for every variant and would dilute the ratios toward 1 (on TensorFlow it is about "
        "a third of a 40-step epoch). Step counts differ by backend, so that one timed "
        "`fit` lasts 0.2 to 0.3 s everywhere. Of identical models, the one whose `fit` "
        "compiled later runs slower on JAX (five plain copies: 0, +2, +4, +6, +5% against "
        "the first; compiled in the reverse order, the drift reversed), which would charge "
        "a variant for its place in the build order. So every variant is built twice, in "
        "mirrored order (A B C, then C B A), and a round's time is the geometric mean of "
        "its two copies'. Mirroring alone left the second plain variant 4-5% slower than "
        "the first on the 200-variable model, because the drift is a curve, not a line; "
        "once all variants are built, every copy's train step is compiled a second time, "
        "which brought five plain copies within 1.5% of one another, in no order, and "
        "that A/A to 1.00. The plain optimizer is there twice as two variants: the plain "
        "time of a round is the geometric mean of both, and the **plain A/A** column (the "
        "second against the first, which measures no change at all) shows the noise floor. "
        "`python benchmarks/step_time.py`\n",
        _report("step_time", results),
        "\n## Scaling with the number of multipliers and of variables\n",
        "`python benchmarks/scaling.py`\n",
        f"![overhead against the number of multipliers]({image})\n",
        _report("scaling", results),
        "\n## Optimizer memory with a frozen backbone\n",
        "`python benchmarks/memory.py`\n",
        _report("memory", results),
        "\n## Torch backend against native PyTorch param groups\n",
        "`python benchmarks/torch_native.py`\n",
        _report("torch_native", results),
        "\n## `set_multipliers` during training\n",
        "`python benchmarks/set_multipliers.py`\n",
        _report("set_multipliers", results),
        "\n## Multipliers that follow a schedule\n",
        SCHEDULED,
        "`python benchmarks/scheduled.py`\n",
        _report("scheduled", results),
        "\n## The first `fit` call: build, trace, compile\n",
        FIRST_CALL,
        "`python benchmarks/first_call.py`\n",
        _report("first_call", results),
        "\n## How the first call grows with the model\n",
        COMPILE_COST,
        "`python benchmarks/compile_cost.py`\n",
        ("![first call against trainable variables](img/compile_cost.png)\n"
         if "compile_cost" in results["runs"] else ""),
        _report("compile_cost", results),
        "\n## What a step executes\n",
        "Counted, not timed: these do not depend on the machine's load. "
        "`python benchmarks/op_counts.py`\n",
        _report("op_counts", results),
        "\n## TensorFlow: a rate for each variable\n",
        "The TensorFlow step runs fewer ops than the plain one (above), but not all ops "
        "cost the same; this is what remains of difflr's overhead there (see *How the "
        "wrapper keeps each backend's fused path*). `python benchmarks/tf_split.py`\n",
        _report("tf_split", results),
        "\n" + ACCELERATOR,
        HOW,
    ]
    return "\n".join(parts)


def _report(name, results):
    run = results["runs"].get(name)
    if not run:
        return "(not measured)\n"
    module = BENCHMARKS[name]
    text = module.report(run["results"], run["options"])
    if "started" in run:  # run on its own (`--only`)
        m, load = run["machine"], run["load"]
        versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        loads = " / ".join("unknown" if l is None else f"{l[0]:.2f}" for l in load)
        text += (f"\nMeasured on its own, {run['started']}, on {m['cpu']} ({m['cores']} "
                 f"cores), Python {m['python']}, {versions}, in "
                 f"{run['seconds'] / 60:.0f} minutes; one-minute load average before / "
                 f"after: {loads}.\n")
    return text


SCHEDULED = """The steady step when groups follow schedules of their own
([Schedules as multipliers](rules.md#schedules-as-multipliers)): the same 25
groups with constant multipliers, with 4 of them on a schedule each, and with
all 25 on a schedule each. Each distinct schedule is evaluated once per step
and spread over its variables by an index vector. On torch, whose update runs
eagerly, SGD, Adam and AdamW keep their fused plan and scale its per-variable
rates by the schedules' values (one gather per step); other optimizers read
the multipliers from tensors while a schedule is in force. Each schedule is
then a few eager ops per step: with 4 scheduled groups the step is within the
noise floor, with 25 it costs 5-12% on torch (25 schedules evaluated each
step), 1-7% on JAX and 2-3% on TensorFlow. The baseline is difflr with the
constant multipliers, run as two variants (the A/A column is the noise
floor); "constant / plain" puts it against the plain optimizer, for scale.
Torch's rows are from a second run after the fused plan learned to scale
its rates (the first run, reading everything from tensors, had 4 scheduled
groups 10-12% slower).
"""

FIRST_CALL = """The steady step is not all a user waits for: the first `fit` call builds
the optimizer, traces the step and compiles it. The benchmark times that first
call on a KerasHub backbone, a fresh model each time, in a process that has
already run one unrecorded round (so imports and Keras's own eager
compilations are warm, as for every model after the first), and on JAX
splits it as JAX reports it (`jax.monitoring`).

- **TensorFlow and torch**: within the noise of the plain optimizer's first
  call (see the A/A rows).
- **JAX**: the extra time is XLA's compilation (1.5 s for 199 variables,
  about 8 ms each); tracing and lowering add under 0.1 s. XLA compiles each
  *distinct* fused kernel once, and the plain optimizer's update kernels
  are alike across the 12 transformer layers (equal shapes, one shared
  rate), so it compiles a layer's worth. difflr's update kernels each read
  their own entry of the multiplier vectors, a slice that XLA fuses into
  the kernel with its index, so every variable's update is a kernel of its
  own. It does not depend on the rules.

  What follows was measured once, with throwaway scripts (not in
  `benchmarks/`), on this machine. Compiled alone, the update of 192
  BERT-shaped variables took 2.1 s against plain's 0.6 s; with every
  variable given the same constant instead of its slice, 0.6 s; with a
  distinct constant each, 2.0 s. Keeping the kernels alike means handing
  each a scalar that XLA has computed elsewhere, and every such scalar
  costs at every step. As a separate input to the step (the fastest to
  compile: 0.30 s against 0.28 in a reduced test), JAX's dispatch costs
  about 0.75 us per input (150 us per step for 200 scalars). Read out of
  the vectors by one variadic reduction per 64 entries, which XLA does not
  fuse into the update, the first call fell from 1.35 to 1.17-1.20 times
  plain's (3 rounds), but the optimizer-bound step of `step_time.py`
  became 2.6% (Adam), 9.7% (AdamW) and 8.7% (SGD) slower, against an A/A
  within 1% (11 rounds). difflr keeps the slices: a training run takes
  many steps and compiles once, and JAX's persistent compilation cache
  saves the compilation of every run after the first: with
  `JAX_COMPILATION_CACHE_DIR=/some/dir`, the first call of difflr with no
  rules on this model, in a fresh process, took 7.2 s and then 2.8 s in
  the next one. Other ways tried, which changed nothing or made it worse:
  an optimization barrier (XLA on CPU removes it before fusing), a
  conditional, a one-trip `while` loop, slicing before multiplying, and
  one-hot dot products.

  Measured again on 2026-12-07 (a branch, `wip/issue-25-jax-split`, keeps
  the code): each variable's scalars split out of the vectors by one
  variadic reduction per 64 variables (`out_j = x_j + 0`, exact) bring the
  compiled step of this model from 315 distinct kernels to 139 (plain:
  134), and its first call from 1.33 (no rules) and 1.40 (LLRD) times
  plain's to 1.09 and 1.10 (A/A 1.03 and 1.01; one session, old code then
  new, 2 Xeon cores with a light load). But the optimizer-bound step of
  `step_time.py` (7 rounds, same session) became 5.7-7.5% slower than
  plain (A/A within 3.4%) against 2.1-3.8% for the slices: the same
  trade-off as before, and the same choice. The split also grows with the
  model (2.2 / 3.3 / 10.8 s of XLA compilation for plain / split / slices
  at 196 BERT-shaped Adam variables, 3.7 / 5.9 / 13.1 s at 964, compiled
  alone): its reductions each read their own slice of the vectors.

  A third time, the same day, on 2 quiet Xeon cores, with throwaway
  scripts around `benchmarks/_common.py` (the code was on a local branch,
  `wip/issue-25-rows`; this paragraph says enough to rebuild it): the
  split in two levels, the vectors into blocks of at least 32 rows and
  every block by one kernel alike for all blocks, the zeros padded in
  once. It fixes the compilation: a 24-layer Dense stack's step (48
  variables, each at a multiplier of its own) has 16 distinct kernels
  plain, 21 split, 60 with slices; compiled alone with a 64 x 64 update
  per variable, the split of 199 and 1,000 variables takes 0.3 and 1.4 s
  against 2.2 and 9.0 s for the slices (the BERT-shaped figures above are
  Adam updates). The step pays 6 kernels more than plain (100 variables),
  but it is not the launches that cost: on the optimizer-bound model of
  `step_time.py` (11 rounds, mirrored copies, one process) plain A/A 1.017
  / 0.986 / 0.995 (Adam / AdamW / SGD), slices 1.026 / 1.017 / 1.010,
  split 1.092 / 1.087 / 1.094, and for Adam the split into blocks of 4, 32
  or all 100 rows at once cost the same (1.12, 1.11, 1.11, another round
  of 11). 6-8% more than the slices, 0.7-0.9 us per variable per step, it
  comes with each update reading a buffer of its own that a reduction
  wrote (in a profile, XLA's execution of the step's kernels waits longer;
  the reductions' own kernels take 1.5 us). A conditional whose branch
  returns the slices (its predicate read at run time) ran about as fast as
  the slices in a reduced test, but XLA compiles the branch's slices one
  kernel each (0.9 s for 100 variables). The slices stay: the split saves
  about 8 ms of compilation once per variable and costs about 0.8 us per
  variable at every step, even after some 10,000 steps on this CPU, and
  JAX's persistent cache already saves the compilation of every later run.

  Why it stops here, on this CPU. An update kernel alike for many
  variables learns each one's multiplier only from data of its own, a
  buffer, which XLA on CPU charges 0.75-1 us a step (measured three ways:
  a separate input to the step, a reduction's row per variable, rows in
  blocks); read from a shared vector, the multiplier makes the kernel one
  of its own, 8-13 ms to compile. A scalar per group of variables rather
  than per variable would pay per group, but a group's variables can share
  one scalar only while their multipliers stay equal: `set_multipliers`
  with a rule that splits a group (an exact path, a regex) would need one
  scalar more, a retrace. The scale applied outside the fused update is
  the step form: XLA fuses it back in, and kept apart it would read and
  write each variable once more. Choosing by size cannot reach 1.10 times
  plain on the BERT model: 124 of its 199 variables are biases and norms
  (256 entries or fewer), and the split reached 1.09-1.10 only with a row
  for every variable; with rows for its 75 kernels and embeddings alone,
  about 0.9 s of the 1.5 s would remain (about 1.2 times plain). On an
  accelerator both costs differ, and neither is measured: the choice is
  to be made again there, with `benchmarks/accelerator.py`'s first call
  and step time and the split rebuilt as above.
"""

COMPILE_COST = """The first call of the section above, across model sizes, so that a
user can read off what difflr adds at their model's size. It is timed as a
user pays it: difflr's rules, the optimizer, `model.compile` and a one-step
`fit` (trace, compile, one step), each timing in a fresh Python process with
a fresh model and a fresh optimizer, so that nothing traced or compiled
before is reused (JAX's persistent compilation cache and TorchInductor's
caches are off; imports and building the model, the same for every variant,
are not timed). The model is a transformer-like stack: an embedding, blocks
of attention, two layer norms and a two-layer MLP (width 128, 16 variables
a block, as a KerasHub `BertBackbone` layer, which `difflr.groups` splits
by block), a final norm and a head, with as many blocks as come closest to
each size; AdamW, and the variants of the section above (`layerwise_decay`
at 0.8, or closer to 1 where the lowest block would get less than 1% of
the rate). A round times every variant once at every size, in mirrored
order from round to round (A B C D, then D C B A); a ratio is the median of
the per-round ratios to plain, and the **plain A/A** column is the noise.
`jit_compile` is Keras's default (XLA on JAX; on CPU, TensorFlow and torch
run without XLA or `torch.compile`); `--set jit_compile=true` measures
those too, and `--sizes` other sizes (the default stops at 1,000 variables
on JAX and 500 on TensorFlow, to keep the run to about 15 minutes a
backend).

- **JAX**: difflr's first call grows faster than plain's: 1.18 times
  plain's at 53 variables, 1.45 at 197, 1.52-1.59 at 501 and 997, the
  same with and without rules. What it adds per variable grows too, from
  7 ms (+0.4 s at 53 variables) to 13 ms (+13 s at 997, 37.6 s against
  24.5): XLA compiling every variable's update as a kernel of its own (the
  section above; why the cost a variable grows was not measured). The
  persistent compilation cache (`JAX_COMPILATION_CACHE_DIR`) removes it
  from every run after the first.
- **TensorFlow**: no further from 1 than the A/A (0.95-1.03 against
  0.97-1.06, 2 rounds); the first call is TensorFlow's graph building and
  optimization, about 95 ms a variable, the same for both.
- **torch**: under 2 s at 2,005 variables for every variant (there is no
  compilation), no rules within the A/A's spread (0.90-1.09 against
  0.91-1.09); with rules up to 1.15 at 53 and 1.12 at 101 variables (under
  10 ms), within 1.07 from 197 on.
"""

ACCELERATOR = """## On an accelerator

Nothing in difflr has run on a GPU or a TPU yet. What depends on the device
runs in one command, which writes one report:

```bash
python benchmarks/accelerator.py --out accelerator-report          # on the GPU or TPU machine
python benchmarks/accelerator.py --quick --out /tmp/accelerator     # a tiny version: checks the command
```

For each backend, in processes of its own and on the device the backend
picks (Keras's torch backend takes `cuda` when PyTorch sees one, JAX its
default platform, TensorFlow its first GPU), it records the device (kind,
model and count), runs the suite's device-sensitive tests (listed in the
script: no host synchronisation per step, the fast paths, `torch.compile`,
distribution, mixed precision, every optimizer against a copy per
variable), then `step_time.py`, `first_call.py` and `memory.py`, and writes
`accelerator.md` and `accelerator.json`; it exits non-zero if a test failed.
Every benchmark and `run_all.py` print the device each backend ran on
("Device: torch on cuda:0 NVIDIA A100-SXM4-40GB (1 device)."), as does the
header of a `pytest` run. The `--quick` run passes on this CPU-only machine
(14 minutes on the 2 shared cores).

**No host synchronisation per step.** On an accelerator, a read of a device
value on the host, or a blocking copy of host data to the device (PyTorch's
`torch.tensor(x, device="cuda")`, or a tensor indexed by a Python list, is
one), makes the host wait for every kernel queued before it.
`tests/test_host_sync.py` checks, on a CPU with the device abstracted, that
difflr's steady training steps (after the first, and after a
`set_multipliers`), in `fit` and in a custom loop, wait for the device no
more than the plain optimizer's, for every update path: the fused "rates"
plan of SGD, Adam and AdamW, one multiplier for all, the step form, one call
per group, one variable at a time, each of those with a schedule, a held
pause, `global_clipnorm`, gradient accumulation and `mixed_float16`.

- **torch**, whose update runs eagerly: every call that reads a tensor on
  the host (`item`, `tolist`, `numpy`, `bool(t)`, `float(t)`, `.cpu()`,
  `repr`, ...), copies host data to the device, or has a shape that depends
  on values (`nonzero`, a boolean index) is recorded with its call stack
  (a `TorchFunctionMode` and a `TorchDispatchMode`). None may be difflr's,
  and difflr may cause no more of each kind than the plain optimizer, plus
  each schedule's own cost once a step (Keras's code, as for a
  learning-rate schedule). A deliberate `.item()` in the fused update fails
  16 of its 30 cases. On CUDA the same runs also count what
  `torch.cuda.set_sync_debug_mode` reports.
- **JAX and TensorFlow** compile the step, where difflr reads the
  multipliers as tensors: no line of difflr runs in a steady step (a
  profiler hook counts its calls: none), and on JAX the steps run under
  `jax.transfer_guard("disallow")` (a custom loop of `stateless_apply`) or
  `jax.transfer_guard_device_to_host("disallow")` (`fit`).

What it found on torch, per step, fixed in `difflr/_update` (each a
blocking copy from the host on CUDA, none a read): Adam's and AdamW's
restated kernel added 1 to `iterations` as a Keras variable (1 copy); one
multiplier for all, one call per group and one variable at a time
multiplied the Keras learning-rate variable by a Python float (1 copy per
call: per group, per variable for Ftrl); a scheduled optimizer outside the
"rates" plan indexed the multipliers with Python lists and rebuilt its
weight-decay coefficients (3 to 4 copies), and evaluated every schedule
twice (a `CosineDecay` copies 3 constants an evaluation, and one with a
warm-up also reads a value back). Now difflr's steps copy fewer values
than the plain optimizer's (Adam in `fit`: 5 a step against 8; Keras's
Adam casts its Python floats at every step, difflr's kernel made them
tensors once) and read none. What remains is Keras's own: Keras's torch
SGD (3.15) reads its rate back with `alpha=-lr` at every step (difflr's
restated SGD does not), `LossScaleOptimizer` reads 2 conditions a step and
gradient accumulation 1 (`ops.cond`), and Keras converts Python floats
to device tensors throughout its optimizers and losses.

Not checked, and known: in an *eager* custom loop on JAX or TensorFlow
(`optimizer.apply` without `jit` or `tf.function`), difflr reads both
multiplier vectors to the host at every step (`Rates._split_on_host` in
`difflr/_update/compiled.py`, which keeps an eager apply from compiling a
slice per variable) and multiplies the base rate by them on the host, which
on JAX adds about 3 host-to-device transfers per variable (45 against
plain's 33 for an Adam step of 4 variables, counted with
`jax.transfer_guard("log")`). Compiled steps, `fit` and the torch backend
do not.

**What remains to be measured on a GPU or TPU** (nothing here has run on
one):

- everything the command reports: the tests, step time, first call and
  memory on a real device. The device descriptions for CUDA, TPU and
  TensorFlow's GPUs have not run.
- the torch host-sync counts as `torch.cuda.set_sync_debug_mode` sees
  them (on a CPU the count relies on the abstraction: a `.to("cpu")` or
  `.cuda()` cannot be told from a no-op there, and is counted on an
  accelerator only), and JAX's device-to-host guard in `fit`, which does
  nothing on a CPU (there the host is the device).
- the first call's compilation on JAX, where XLA compiles more slowly
  per kernel on a GPU (*The first `fit` call*).
- TensorFlow: with a GPU, Keras compiles the train step with XLA
  (`jit_compile="auto"`), so the op-by-op analysis above (*TensorFlow: a
  rate for each variable*) does not describe that step; it is untimed.
- numerics: float32 matmuls and convolutions may run in TF32 on recent
  NVIDIA GPUs (JAX's default precision does), against which the suite's
  tolerances have not been tried; float16 and bfloat16 kernels and loss
  scaling on a GPU; bfloat16 on a TPU.
- timings: the timers wait for the device at the end of a timed region
  (`_common.synchronize`), but `first_call.py` and `set_multipliers.py`
  read the clock without it, and on JAX `fit` gives no handle to wait on
  before its first timed batch.
- memory: `memory.py` counts the numbers in optimizer variables, the same
  on every device; the device's own peak memory is not measured.
- several devices: the distribution tests simulate devices on the host
  (`CUDA_VISIBLE_DEVICES=""`, `JAX_PLATFORMS=cpu`); several GPUs, a TPU
  slice and NCCL are untested.
- `torch.compile` on CUDA (Inductor's Triton kernels).
"""

HOW = """
## How the wrapper keeps each backend's fused path

The wrapped optimizer runs its own `apply`: clipping, `global_clipnorm`, loss
scaling, gradient accumulation and EMA are Keras's code, once per step. difflr
intercepts only the update itself, and how it gives each variable its rate
depends on what is cheap on each backend.

- **JAX (XLA).** Adam, AdamW, Adamax, Nadam, Adagrad, Adadelta, Lion and
  RMSprop without momentum move a variable by `lr * s`, where the step `s` and
  the optimizer state depend neither on the rate nor on the variable's value.
  difflr runs Keras's update at the base rate on a zeroed variable, which
  leaves `-lr * s` in it, and writes `v_decayed + m * (-lr * s)`. All of this
  is element-wise, so XLA fuses it into the update's own loop, and the scalar
  math (Adam's bias correction times the rate) stays one computation shared by
  every variable. Scaling the rate per variable instead would cost one tiny
  XLA kernel per variable. Other optimizers (SGD, Ftrl, Lamb, ...) get the
  rate `lr * m`.
- **TensorFlow.** On CPU, Keras does not XLA-compile TensorFlow (`jit_compile`
  is `"auto"`, which means off without a GPU), so the graph runs op by op and
  every op costs about the same, however small. So the rates `lr * m` and
  the decay coefficients `lr * m * d * wd` of all variables are computed once
  per step, as one vector each, and split into scalars: Keras's own update
  then runs at the variable's rate, with no op added per variable (the plain
  optimizer reads its rate variable once per variable; the split replaces
  those reads). Only a pause guard (below) costs an op per write, for
  optimizers difflr does not know. (Under `jit_compile=True`, XLA fuses all
  of it into the update as on JAX.) So the step runs fewer ops than the
  plain one, but not all ops cost the same: a read of a variable shares its
  buffer, while the split allocates a new scalar for each variable. That
  costs about 10 us per step for 100 variables (*TensorFlow: a rate for each
  variable*), about 1% of the optimizer-bound step with SGD, whatever the
  number of multipliers. It is the cheapest split found: one slice per
  variable costs two to three times as much.
- **torch.** Keras's torch optimizers update all variables with one
  `torch._foreach_*` call per kernel at one scalar rate. `_foreach_*` also
  takes a list of 0-d tensors, one scalar per tensor, where Keras passes one:
  for SGD, Adam and AdamW, difflr makes Keras's own calls with the rate as such
  a list (`difflr/_update/torch_sgd.py`, `torch_adam.py`), so the update makes the
  plain optimizer's passes over the variables, whatever the number of
  multipliers. The list costs one copy per step into a buffer that its 0-d
  tensors view (creating them anew would cost about a microsecond each).
  Weight decay is one `_foreach_mul_` by such a list, where Keras's own decay
  is one call too. Adamax, Nadam, Adagrad, Adadelta, Lion and RMSprop without
  momentum take their step at the base rate in zeroed variables, which one
  `_foreach_mul_` by the list of multipliers and one `_foreach_sub_` put back
  (four extra passes, with the copy of the old values and the zeroing). For a
  few groups of large tensors one call per group of equal multipliers costs
  less than those passes, and difflr picks it from a rough cost estimate, as
  for RMSprop with momentum and other optimizers (which need it); PyTorch's
  own param groups always run that way.
- **Multiplier 0 (pause).** The multipliers live in optimizer variables on
  TensorFlow and JAX, so a 0 set later must pause a variable inside the
  compiled step, without retracing. A paused variable does not move, and its
  state goes on as its own copy of the optimizer at rate 0 would keep it
  (`_pause.mode`). For Adam and its kin, "run at rate 0" is
  exactly that, so they need no guard at all. Keras's SGD and RMSprop keep
  the rate inside their momentum, a velocity that would coast: `set_multipliers`
  clears it when a pause begins (one assign, outside the step), and at rate
  0 it stays 0, so they need no guard either (an earlier version multiplied
  every increment they write by 0 or 1: one multiply per variable per step
  on TensorFlow). Ftrl divides by the rate, and other optimizers are not checked:
  their writes to the variable and its slots go through `where(m == 0, keep,
  value)`, so their state is held. Keras's optimizers write only through
  `optimizer.assign`, `assign_add` and `assign_sub`, which is where those
  guards sit; an `update_step` that is not Keras's own may write around them
  and gets the general path (the update, then the old values put back where
  `m` is 0). On XLA every guard fuses into the update. The torch backend runs
  eagerly and follows the same rules with host-side lists.

### What these paths replaced

The first design ran every update at `lr * m` and, to pause, copied the
variable and each of its slots before the update and put them back with
`where(m == 0, old, new)` after it; on torch it ran one fused call per group of
equal multipliers. The second guarded every write with a `where` and held the
paused variable's state for every optimizer (one select per write: 3 per
variable for Adam). Counted with `benchmarks/op_counts.py` (50 Dense(16)
layers, 100 variables), plain / first design / second / now:

| | plain | first design | second | now |
|---|---:|---:|---:|---:|
| JAX, XLA kernels in the train step, Adam | 606 | 709 | 608 | 608 |
| JAX, XLA kernels in the train step, SGD | 455 | 507 | 457 | 457 |
| TensorFlow, ops in the train step, Adam | 3,394 | 5,594 | 3,799 | 3,298 |
| TensorFlow, ops in the train step, SGD | 1,394 | 3,094 | 1,799 | 1,298 |
| torch, `_foreach_*` calls per step, Adam, 25 multipliers | 10 | 250 | 14 | 10 |
| torch, `_foreach_*` calls per step, Adam, 100 multipliers | 10 | 1,000 | 14 | 10 |

On TensorFlow difflr now runs fewer ops than the plain optimizer (it reads the
rate once per step, not once per variable): SGD no longer pays a multiply per
variable to keep a paused variable in place, since its velocity is cleared
when the pause begins.
On JAX difflr compiles to the plain optimizer's kernels: each fused update
reads its multiplier from the vector, and the step takes and returns two more
arrays (the multiplier vectors), which keep their buffers since Keras donates
the state to the step. (The JAX rows of this table were counted without that
donation: each unchanged output is then copied, and the two vectors showed as
two kernels more than plain. Counted as Keras compiles the step, above, the
numbers are equal.) On torch, SGD, Adam and AdamW
make the plain optimizer's calls. The step form's four extra `_foreach_*`
calls, which the other optimizers keep, each touch every moved tensor, which
on CPU means one small operation per tensor; for large tensors they are
memory traffic, which is why difflr then runs one call per group instead.
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default=",".join(c.BACKENDS))
    parser.add_argument("--quick", action="store_true",
                        help="tiny models and rounds, to check that everything runs")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "docs"),
                        help="where performance.md, performance.json and img/ go")
    parser.add_argument("--render", metavar="JSON",
                        help="only re-render the report from an earlier run's JSON")
    parser.add_argument("--only", metavar="NAME[,NAME]",
                        help="run only these benchmarks (of: " + ", ".join(BENCHMARKS)
                        + "), kept with the earlier results of OUT/performance.json")
    args = parser.parse_args()
    if args.render:
        with open(args.render) as f:
            results = json.load(f)
    elif args.only:
        if args.quick:
            parser.error("--only writes into the published results: "
                         "run --quick without --only, with --out elsewhere")
        names = args.only.split(",")
        unknown = [n for n in names if n not in BENCHMARKS]
        if unknown:
            parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
        with open(os.path.join(args.out, "performance.json")) as f:
            earlier = json.load(f)
        results = run(args.backends.split(","), args.quick, names, into=earlier)
        args.render = True  # the JSON is written below, the total time kept
        with open(os.path.join(args.out, "performance.json"), "w") as f:
            json.dump(results, f, indent=1)
    else:
        results = run(args.backends.split(","), args.quick)
    os.makedirs(os.path.join(args.out, "img"), exist_ok=True)
    image = "img/overhead_vs_multipliers.png"
    if "scaling" in results["runs"]:
        run_ = results["runs"]["scaling"]
        scaling.plot(run_["results"], run_["options"], os.path.join(args.out, image))
    if "compile_cost" in results["runs"]:
        run_ = results["runs"]["compile_cost"]
        compile_cost.plot(run_["results"], run_["options"],
                          os.path.join(args.out, "img", "compile_cost.png"))
    if not args.render:
        with open(os.path.join(args.out, "performance.json"), "w") as f:
            json.dump(results, f, indent=1)
    with open(os.path.join(args.out, "performance.md"), "w") as f:
        f.write(render(results, image))
    print(f"wrote {os.path.join(args.out, 'performance.md')} "
          f"({results['seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
