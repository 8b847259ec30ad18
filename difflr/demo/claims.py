"""The transformer experiment's claims: what each paper says, what ran.

Three claims of the literature, each set beside what the run measured, with
its uncertainty (`claims`), and a figure each (`plot_llrd`, `plot_lora_plus`;
LP-FT's is `report.plot_forgetting_and_shift`):

- LLRD (Clark et al. 2020, ELECTRA; Sun et al. 2019; Zhang et al. 2021): a
  small accuracy gain at best and, with few samples, less spread across
  seeds and fewer failed runs. Measured: each decay against `full` at their
  best rates, paired by seed (`report.Measure`); the spread over seeds at
  the best rate; the failed runs over the whole grid.
- LoRA+ (Hayou, Ghosh and Yu 2024): B at 16 x A's rate gains 1-2 points and
  reaches a given accuracy up to 2x faster. Measured: `lora+ - lora` at
  their best rates, paired by seed; the accuracy after the first epoch; the
  steps each takes to reach `TARGET_SHARE` of the way from the majority
  class to the lower of their two final accuracies.
- LP-FT (Kumar et al. 2022): a slow body keeps out-of-distribution accuracy.
  Measured: the shifted test sets, each arm against `full` at its best rate.

A failed run ends below the majority-class floor plus `FAIL_MARGIN`: it
learned (almost) nothing about the images (Mosbach et al. 2021 call a run
failed below the majority class). The measures here are plain functions of
the runs' accuracies, so that tests check them on fixed values.
"""

import dataclasses
import math

import numpy as np

from difflr.demo import data

FAIL_MARGIN = 0.05
# LoRA vs LoRA+ speed: steps to this share of the way from the majority
# class to the lower of the two final accuracies (the last stretch to a
# final accuracy is flat and noisy, so the time to reach it says little).
TARGET_SHARE = 0.9
LLRD_ARMS = ("llrd0.8", "llrd0.65")
OOD_ARMS = ("lp-ft", "probe", "llrd0.65")


def steps_per_epoch(config):
    """Optimizer steps in one epoch of fine-tuning."""
    examples = config.shots * data.CLASSES * config.repeats
    return -(-examples // config.batch_size)


def failed(accuracies, floor, margin=FAIL_MARGIN):
    """How many of `accuracies` are below `floor + margin` (`floor` a number,
    or one per accuracy: each run's seed has its own test set)."""
    return int(np.sum(np.asarray(accuracies, dtype=float) < floor + margin))


def spread(values):
    """The sample standard deviation (`ddof=1`); NaN for a single value."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def steps_to_reach(curve, target, steps):
    """The first step count, a multiple of `steps` (one epoch), after which
    the accuracy `curve` (one value per epoch) is at least `target`; None if
    it never is."""
    for epoch, accuracy in enumerate(curve):
        if accuracy >= target:
            return (epoch + 1) * steps
    return None


def paired_interval(differences, level=0.95):
    """`(mean, low, high)`: Student's t interval of the mean difference.

    `low` and `high` are NaN with fewer than two differences.
    """
    d = np.asarray(differences, dtype=float)
    mean = float(np.mean(d))
    if len(d) < 2:
        return mean, math.nan, math.nan
    from scipy import stats

    half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1)) * spread(d) \
        / math.sqrt(len(d))
    return mean, mean - half, mean + half


def floors(config):
    """`{seed: majority-class accuracy}` of each seed's test set."""
    return {seed: data.majority_share(config.shots, seed)
            for seed in config.seeds}


@dataclasses.dataclass
class Claim:
    title: str
    paper: str  # what the paper claims
    measured: list  # lines: what this run measured
    figure: str  # the file that shows it
    verdict: str = ""  # whether this run reproduced it, in plain words


def direction(low, high):
    """A paired interval's verdict: "higher" (above 0), "lower" (below 0),
    or "within noise" (contains 0, or NaN: one seed)."""
    if math.isnan(low) or low <= 0 <= high:
        return "within noise"
    return "higher" if low > 0 else "lower"


def spreads_differ(a, b, level=0.95):
    """Whether the spreads of two samples differ at `level` (two-sided F
    test of their variances): with 8 seeds, one spread must be about 2.2x
    the other before it does."""
    if len(a) < 2 or len(b) < 2 or spread(b) == 0:
        return False
    from scipy import stats

    f = spread(a) ** 2 / spread(b) ** 2
    p = stats.f.cdf(f, len(a) - 1, len(b) - 1)
    return min(p, 1 - p) < (1 - level) / 2


def _interval_text(mean, low, high):
    if math.isnan(low):
        return f"{mean:+.3f} (one seed: no interval)"
    noise = ", within noise" if direction(low, high) == "within noise" else ""
    return f"{mean:+.3f}, 95% interval [{low:+.3f}, {high:+.3f}]{noise}"


def _vs_full(summary, name="accuracy"):
    """`summary`'s measure `name` minus `full`'s, paired, as text."""
    mean, low, high = _paired(summary, name)
    return "-" if math.isnan(mean) else _interval_text(mean, low, high)


def _grid_failures(results, arm, seed_floors):
    runs = [r for r in results.runs
            if r["arm"] == arm and r["source"] == "digits"]
    return (failed([r["accuracy"] for r in runs],
                   np.array([seed_floors[r["seed"]] for r in runs])),
            len(runs))


def _spread_text(values):
    return ("one seed: no spread" if len(values) < 2
            else f"spread over seeds {spread(values):.3f}")


def _llrd(results, by_arm, seed_floors):
    lines = []
    for name in ("full",) + LLRD_ARMS:
        s = by_arm.get(name)
        if s is None:
            continue
        bad, runs = _grid_failures(results, name, seed_floors)
        seeds = s.measures["accuracy"].scores[s.best]
        text = (f"{name}: best {s.means[s.best]:.3f} at lr "
                f"{s.lrs[s.best]:g}, {_spread_text(seeds)}, "
                f"failed runs {bad}/{runs}")
        if name != "full":
            text += f"; minus full, paired: {_vs_full(s)}"
        lines.append(text)
    lines.append("failed runs over the grid, every arm: " + ", ".join(
        "{} {}/{}".format(name, *_grid_failures(results, name, seed_floors))
        for name in by_arm))
    return Claim(
        "Layer-wise learning-rate decay",
        "a small accuracy gain at best (ELECTRA, Sun et al. 2019) and, with "
        "few samples, less spread across seeds and fewer failed runs "
        "(Zhang et al. 2021)", lines, "llrd.png",
        _llrd_verdict(results, by_arm, seed_floors))


def _llrd_verdict(results, by_arm, seed_floors):
    full = by_arm.get("full")
    decays = [by_arm[n] for n in LLRD_ARMS if n in by_arm]
    if full is None or not decays:
        return ""
    accuracy = {s.arm: direction(*_paired(s)[1:]) for s in decays}
    words = {"higher": "gained", "lower": "lost", "within noise": "no difference"}
    if "lower" in accuracy.values():
        gain = "accuracy: not reproduced, LLRD lost accuracy"
    elif "higher" in accuracy.values():
        gain = "accuracy: reproduced, a gain"
    else:
        gain = "accuracy: consistent with 'a small gain at best': no difference"
    gain += " (" + ", ".join(f"{a} {words[v]}" for a, v in accuracy.items()) + ")"
    scores = lambda s: s.measures["accuracy"].scores[s.best]  # noqa: E731
    less = [s.arm for s in decays if spreads_differ(scores(full), scores(s))
            and spread(scores(s)) < spread(scores(full))]
    failed_full = _grid_failures(results, "full", seed_floors)[0]
    fewer = [s.arm for s in decays
             if _grid_failures(results, s.arm, seed_floors)[0] < failed_full]
    spread_text = ("less spread: reproduced for " + ", ".join(less) if less
                   else "less spread: not reproduced (no spread told apart "
                        "from full's with these seeds, F test at 95%)")
    failed_text = ("fewer failed runs than full over the grid: "
                   + ("reproduced for " + ", ".join(fewer) if fewer
                      else "not reproduced"))
    return "; ".join([gain, spread_text, failed_text])


def _paired(summary, name="accuracy"):
    """`(mean, low, high)` of `summary`'s paired difference with full on
    `name` (NaN bounds without an interval)."""
    measure = summary.measures.get(name)
    if measure is None or measure.differences is None:
        return math.nan, math.nan, math.nan
    mean = float(np.mean(measure.differences))
    low, high = measure.interval if measure.interval is not None else (math.nan,) * 2
    return mean, low, high


def lora_comparison(results, by_arm, config):
    """The LoRA+ measures: a dict, or None without both arms and curves."""
    lora, plus = by_arm.get("lora"), by_arm.get("lora+")
    if lora is None or plus is None or not config.curve:
        return None
    curves = {s.arm: _curves_at_best(results, s) for s in (lora, plus)}
    finals = {s.arm: s.means[s.best] for s in (lora, plus)}
    floor = float(np.mean(list(floors(config).values())))
    target = floor + TARGET_SHARE * (min(finals.values()) - floor)
    steps = steps_per_epoch(config)
    reach = {arm: [steps_to_reach(c, target, steps) for c in curves[arm]]
             for arm in curves}
    first = {arm: [c[0] for c in curves[arm]] for arm in curves}
    d = (np.array(plus.measures["accuracy"].scores[plus.best])
         - np.array(lora.measures["accuracy"].scores[lora.best]))
    early = paired_interval(np.subtract(first["lora+"], first["lora"]))
    return dict(difference=paired_interval(d), early=early, target=target,
                steps=steps, reach=reach, first=first, curves=curves)


def _curves_at_best(results, summary):
    lr = summary.lrs[summary.best]
    return [r["curve"] for r in results.runs
            if r["arm"] == summary.arm and r["lr"] == lr
            and r["source"] == summary.source]


def _mean_steps(reached, total):
    got = [s for s in reached if s is not None]
    text = f"{np.mean(got):.0f}" if got else "never"
    if len(got) < len(reached):
        text += f" ({len(reached) - len(got)} seed(s) never, within {total})"
    return text


def _lora_plus(results, by_arm, config):
    c = lora_comparison(results, by_arm, config)
    if c is None:
        return None
    total = config.epochs * c["steps"]
    lines = [
        "lora+ - lora at their best rates, paired: "
        + _interval_text(*c["difference"]),
        f"after {c['steps']} steps (one epoch): lora "
        f"{np.mean(c['first']['lora']):.3f}, lora+ "
        f"{np.mean(c['first']['lora+']):.3f}; lora+ - lora, paired: "
        + _interval_text(*c["early"]),
        f"steps to reach {c['target']:.3f} ({TARGET_SHARE:.0%} of the way "
        "from the majority class to the lower final accuracy): lora "
        f"{_mean_steps(c['reach']['lora'], total)}, lora+ "
        f"{_mean_steps(c['reach']['lora+'], total)} (resolution: one epoch, "
        f"{c['steps']} steps)",
    ]
    return Claim(
        "LoRA+",
        "B trained at 16 x A's rate gains about 1-2 points over LoRA and "
        "reaches a given accuracy up to about 2x faster (Hayou et al. 2024)",
        lines, "lora_plus.png", _lora_plus_verdict(c, by_arm))


def _lora_plus_verdict(c, by_arm):
    final = direction(*c["difference"][1:])
    early = direction(*c["early"][1:])
    words = {"higher": "reproduced", "lower": "not reproduced, LoRA+ lower",
             "within noise": "not reproduced, no difference"}
    text = (f"accuracy: {words[final]}; faster (after one epoch): "
            f"{words[early]}")
    lora, plus = by_arm["lora"], by_arm["lora+"]
    if plus.lrs[plus.best] != lora.lrs[lora.best]:
        text += (f". lora+ is best at base rate {plus.lrs[plus.best]:g}, lora at "
                 f"{lora.lrs[lora.best]:g}: the head trains at the base rate "
                 "(A's) in both, as PEFT groups it")
    return text


def _lp_ft(by_arm):
    lines = []
    for name in OOD_ARMS:
        s = by_arm.get(name)
        if s is None:
            continue
        lines.append(f"{name} minus full, at their best rates: translated "
                     f"{_vs_full(s, 'translated')}; noisy "
                     f"{_vs_full(s, 'noisy')}; retained "
                     f"{_vs_full(s, 'retained')}")
    return Claim(
        "LP-FT: a slow body keeps out-of-distribution accuracy",
        "probing first, then fine-tuning, keeps the accuracy under "
        "distribution shift that full fine-tuning loses (Kumar et al. 2022)",
        lines, "forgetting_and_shift.png", _lp_ft_verdict(by_arm))


def _lp_ft_verdict(by_arm):
    shifts = {name: {m: direction(*_paired(by_arm[name], m)[1:])
                     for m in ("translated", "noisy")}
              for name in OOD_ARMS if name in by_arm}
    texts = []
    for name, directions in shifts.items():
        kept = [m for m, v in directions.items() if v == "higher"]
        lost = [m for m, v in directions.items() if v == "lower"]
        text = f"{name}: kept more under {' and '.join(kept) or 'no shift'}"
        if lost:
            text += f", less under {' and '.join(lost)}"
        texts.append(text)
    if not texts:
        return ""
    head = ("reproduced" if "lp-ft" in shifts and all(
        v == "higher" for v in shifts["lp-ft"].values())
        else "not reproduced by lp-ft")
    return f"{head} ({'; '.join(texts)}; against full, paired)"


def claims(results, summaries):
    """The `Claim`s this run can speak to (arms missing: claim left out).

    Args:
        results: `experiment.Results` of the transformer experiment.
        summaries: `report.summarize(results)`.
    """
    config = results.config
    by_arm = {s.arm: s for s in summaries if s.source == "digits"}
    found = []
    if "full" in by_arm and any(a in by_arm for a in LLRD_ARMS):
        found.append(_llrd(results, by_arm, floors(config)))
    lora = _lora_plus(results, by_arm, config)
    if lora is not None:
        found.append(lora)
    if "full" in by_arm and any(a in by_arm for a in OOD_ARMS):
        found.append(_lp_ft(by_arm))
    return found
