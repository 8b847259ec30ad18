"""`python -m difflr demo --experiment transformer`: the KerasHub ViT, its
arms' rates, the claims' measures and the report."""

import argparse
import contextlib
import dataclasses
import math
import os

import keras
import numpy as np
import pytest

import difflr
from conftest import keras_hub_or_skip
from difflr.demo import catalog
from difflr.demo import claims
from difflr.demo import cli
from difflr.demo import experiment
from difflr.demo import report

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

TINY = catalog.TRANSFORMER_TINY
# Hand-written: the groups of the demo's ViT classifier, bottom to head.
GROUPS = ["vit_patching_and_embedding", "transformer_block_1",
          "transformer_block_2", "transformer_block_3", "ln", "head"]


def _group_of(variable):
    """The group (a name of `GROUPS`) a variable's path puts it in."""
    parts = variable.path.split("/")
    return next(p for p in parts if p in GROUPS)


# The report test and the tiny run build a ViT of this many blocks rather
# than the demo's `transformer.LAYERS`: every block adds to each model's
# build and compilation, and what they check does not depend on the depth
# (the arms' rates are checked on the demo's own ViT).
TEST_BLOCKS = 1


@contextlib.contextmanager
def _test_sized_vit():
    keras_hub_or_skip()
    from difflr.demo import transformer

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(transformer, "LAYERS", TEST_BLOCKS)
        yield


def _arm_state(name, epochs=6, lr=1e-3):
    """A fresh model and `name`'s optimizer (built), its callbacks begun."""
    keras_hub_or_skip()
    from difflr.demo import transformer

    return report.rate_states(transformer.ARMS[name], lr, epochs, transformer)


# The arms: the rates each recipe promises, per variable.

def test_groups_follow_the_vit_blocks():
    model, _, _ = _arm_state("full")
    split = difflr.groups(model)
    assert [[layer.name for layer in g] for g in split] == [[g] for g in GROUPS]


@pytest.mark.parametrize("name, decay", [("llrd0.8", 0.8), ("llrd0.65", 0.65)])
def test_layerwise_decay_arms_give_each_block_decay_to_the_depth(name, decay):
    model, optimizer, _ = _arm_state(name)
    # Hand-computed: six groups, group i at decay ** (5 - i).
    expected = {"vit_patching_and_embedding": decay ** 5,
                "transformer_block_1": decay ** 4,
                "transformer_block_2": decay ** 3,
                "transformer_block_3": decay ** 2, "ln": decay, "head": 1.0}
    no_decay = {"bias", "gamma", "beta", "class_token", "embeddings"}
    for v in model.trainable_variables:
        assert optimizer.multiplier_for(v) == pytest.approx(
            expected[_group_of(v)], rel=1e-12), v.path
        assert optimizer.decay_multiplier_for(v) == (
            0.0 if v.name in no_decay else 1.0), v.path
    assert isinstance(optimizer.inner_optimizer, keras.optimizers.AdamW)


def test_full_is_plain_adamw():
    keras_hub_or_skip()
    from difflr.demo import transformer

    model = transformer.build_model(transformer.build_body(), 3)
    optimizer, callbacks = transformer.ARMS["full"].plan(model, 0.01, 6)
    # Not an LRMultiplier: no difflr code touches the baseline.
    assert isinstance(optimizer, keras.optimizers.AdamW) and callbacks == []
    assert not isinstance(optimizer, difflr.LRMultiplier)
    assert float(optimizer.learning_rate) == pytest.approx(0.01)
    assert optimizer.weight_decay == pytest.approx(transformer.WEIGHT_DECAY)


def test_probe_and_lp_ft_freeze_the_whole_body_layer_norms_included():
    for name in ("probe", "lp-ft"):
        model, optimizer, callbacks = _arm_state(name, epochs=6)
        for callback in callbacks:
            callback.on_epoch_begin(0)
        for v in model.trainable_variables:
            expected = 1.0 if _group_of(v) == "head" else 0.0
            assert optimizer.multiplier_for(v) == expected, (name, v.path)
    # LP-FT: every layer at the base rate from epoch 6 // 2.
    for epoch in (1, 2, 3):
        for callback in callbacks:
            callback.on_epoch_begin(epoch)
    assert {optimizer.multiplier_for(v)
            for v in model.trainable_variables} == {1.0}


# Hand-written: what trains after `backbone.enable_lora(4)` in each block
# (the query and value layers: their bias and the two LoRA factors), and the
# head outside the backbone.
LORA_VARIABLES = [
    f"vit_encoder/transformer_block_{i}/mha/{layer}/{name}"
    for i in (1, 2, 3) for layer in ("query", "value")
    for name in ("bias", "lora_kernel_a", "lora_kernel_b")
] + ["head/kernel", "head/bias"]


@pytest.mark.parametrize("name, ratio", [("lora", 1.0), ("lora+", 16.0)])
def test_lora_arms_train_b_at_ratio_times_a(name, ratio):
    model, optimizer, _ = _arm_state(name)
    variables = model.trainable_variables
    assert sorted(v.path for v in variables) == sorted(LORA_VARIABLES)
    for v in variables:
        expected = ratio if v.name == "lora_kernel_b" else 1.0
        assert optimizer.multiplier_for(v) == expected, v.path
    # B starts at zero: the adapted backbone starts as the pretrained one.
    for v in variables:
        if v.name == "lora_kernel_b":
            assert not np.any(keras.ops.convert_to_numpy(v)), v.path


def test_every_arm_is_in_the_catalog_in_order():
    keras_hub_or_skip()
    from difflr.demo import transformer

    assert list(transformer.ARMS) == list(catalog.TRANSFORMER_NAMES) == [
        "full", "llrd0.8", "llrd0.65", "probe", "lp-ft", "lora", "lora+"]


# The measures, on fixed values.

def test_failed_counts_runs_below_the_floor_plus_the_margin():
    assert claims.FAIL_MARGIN == 0.05
    # Floor 0.4: failed below 0.45; 0.45 itself is not a failure.
    assert claims.failed([0.3, 0.449, 0.45, 0.9], 0.4) == 2
    # A floor per run (each seed's test set has its own).
    assert claims.failed([0.44, 0.44], np.array([0.38, 0.40])) == 1


def test_spread_and_steps_to_reach():
    assert claims.spread([0.1, 0.2, 0.3]) == pytest.approx(0.1)
    assert math.isnan(claims.spread([0.5]))
    # 8 steps an epoch: reached after the third epoch, i.e. 24 steps.
    assert claims.steps_to_reach([0.3, 0.5, 0.7, 0.8], 0.7, 8) == 24
    assert claims.steps_to_reach([0.3, 0.5], 0.7, 8) is None
    assert claims.steps_per_epoch(catalog.TRANSFORMER_QUICK) == 8  # 200 / 25
    assert claims.steps_per_epoch(TINY) == 4  # 40 / 10
    assert claims.steps_per_epoch(dataclasses.replace(TINY, batch_size=30)) == 2


def test_paired_interval_is_students_t():
    mean, low, high = claims.paired_interval([0.1, 0.2, 0.3])
    # t(0.975, 2) = 4.30265272975 (tables); std 0.1; n 3.
    half = 4.30265272975 * 0.1 / math.sqrt(3)
    assert (mean, low, high) == pytest.approx((0.2, 0.2 - half, 0.2 + half))
    mean, low, high = claims.paired_interval([0.1])
    assert mean == pytest.approx(0.1) and math.isnan(low) and math.isnan(high)


def _fixed_results(arms=("full", "llrd0.8", "lp-ft", "lora", "lora+")):
    """Three seeds, two rates, fixed accuracies and curves (4 epochs); an arm
    of `arms` without accuracies below scores 0.5 throughout."""
    config = dataclasses.replace(
        TINY, seeds=(0, 1, 2), lrs=(0.001, 0.01), epochs=4, arms=arms)
    accuracy = {  # (arm, lr): one per seed
        ("full", 0.001): [0.80, 0.40, 0.70], ("full", 0.01): [0.30, 0.30, 0.30],
        ("llrd0.8", 0.001): [0.70, 0.80, 0.75],
        ("llrd0.8", 0.01): [0.60, 0.60, 0.60],
        ("lp-ft", 0.001): [0.70, 0.60, 0.70], ("lp-ft", 0.01): [0.5] * 3,
        ("lora", 0.001): [0.50, 0.50, 0.50], ("lora", 0.01): [0.60, 0.70, 0.50],
        ("lora+", 0.001): [0.65, 0.60, 0.70],
        ("lora+", 0.01): [0.40, 0.40, 0.40],
    }
    curves = {  # at the best rates: lora at 0.01, lora+ at 0.001
        ("lora", 0.01): [[0.4, 0.5, 0.55, 0.61], [0.5, 0.61, 0.7, 0.7],
                         [0.3, 0.4, 0.45, 0.5]],
        ("lora+", 0.001): [[0.55, 0.65, 0.65, 0.65], [0.5, 0.62, 0.6, 0.6],
                           [0.62, 0.7, 0.7, 0.7]],
    }
    runs = []
    for arm, lr in [(arm, lr) for arm in arms for lr in config.lrs]:
        for seed, value in enumerate(accuracy.get((arm, lr), [0.5] * 3)):
            curve = curves.get((arm, lr), [[value] * 4] * 3)[seed]
            runs.append(dict(source="digits", arm=arm, seed=seed, lr=lr,
                             accuracy=value, retained=0.5, translated=value,
                             noisy=value, curve=curve))
    pretraining = [dict(source="digits", seed=s, heldout_accuracy=0.9)
                   for s in range(3)]
    return experiment.Results(config, runs, pretraining, 1.0)


def test_claims_on_fixed_accuracies_against_hand_computed_values():
    keras_hub_or_skip()
    results = _fixed_results()
    summaries = report.summarize(results)
    by_arm = {s.arm: s for s in summaries}
    found = {c.title: c for c in claims.claims(results, summaries)}
    assert list(found) == ["Layer-wise learning-rate decay", "LoRA+",
                           "LP-FT: a slow body keeps out-of-distribution "
                           "accuracy"]
    # Floors (2 labels per digit): 0.402 for each seed (as
    # data.majority_share gives it), so failed below 0.452: full's 0.40 and
    # its three 0.30; none of llrd0.8's.
    floors = claims.floors(results.config)
    assert floors == pytest.approx({0: 0.4018, 1: 0.4018, 2: 0.4018}, abs=1e-4)
    llrd = found["Layer-wise learning-rate decay"].measured
    assert llrd[0] == ("full: best 0.633 at lr 0.001, spread over seeds "
                       "0.208, failed runs 4/6")
    # llrd0.8 - full at 0.001: [-0.1, 0.4, 0.05], mean 0.1167.
    assert llrd[1].startswith("llrd0.8: best 0.750 at lr 0.001, spread over "
                              "seeds 0.050, failed runs 0/6; minus full, "
                              "paired: +0.117, 95% interval [")
    # Below 0.452: lora+'s three 0.40 too.
    assert llrd[-1] == ("failed runs over the grid, every arm: full 4/6, "
                        "llrd0.8 0/6, lp-ft 0/6, lora 0/6, lora+ 3/6")
    # LoRA at 0.01 (mean 0.6), LoRA+ at 0.001 (0.65): the target is 90% of
    # the way from the floor to 0.6, 0.40182 + 0.9 * 0.19818 = 0.58018; one
    # epoch is 4 steps. LoRA reaches it at epochs 4, 2, never; LoRA+ at 2, 2, 1.
    c = claims.lora_comparison(results, by_arm, results.config)
    assert c["target"] == pytest.approx(0.58018, abs=1e-5)
    assert c["reach"] == {"lora": [16, 8, None], "lora+": [8, 8, 4]}
    assert c["first"] == {"lora": [0.4, 0.5, 0.3], "lora+": [0.55, 0.5, 0.62]}
    # lora+ - lora, paired: [0.05, -0.1, 0.2], mean 0.05.
    assert c["difference"][0] == pytest.approx(0.05)
    lines = found["LoRA+"].measured
    # After one epoch, paired: [0.15, 0.0, 0.32], mean 0.1567, std 0.1601,
    # half-width 4.30265 * 0.1601 / sqrt(3) = 0.3977.
    assert lines[1] == ("after 4 steps (one epoch): lora 0.400, lora+ 0.557; "
                        "lora+ - lora, paired: +0.157, 95% interval "
                        "[-0.241, +0.554], within noise")
    assert lines[2] == ("steps to reach 0.580 (90% of the way from the "
                        "majority class to the lower final accuracy): "
                        "lora 12 (1 seed(s) never, within 16), lora+ 7 "
                        "(resolution: one epoch, 4 steps)")


def test_the_claims_name_their_figures():
    keras_hub_or_skip()
    results = _fixed_results()
    found = claims.claims(results, report.summarize(results))
    from difflr.demo import transformer_report

    assert [c.figure for c in found] == ["llrd.png", "lora_plus.png",
                                         "forgetting_and_shift.png"]
    assert set(transformer_report.FILES) <= {c.figure for c in found}


# The report, on fixed results of every arm.

def test_report_prints_each_arms_summary_once_and_writes_every_file(
        tmp_path):
    results = _fixed_results(arms=catalog.TRANSFORMER_NAMES)
    with _test_sized_vit():
        text = report.table(results)
        report.write_all(results, str(tmp_path), "the command")
    assert "What the papers claim, and what this run measured" in text
    # At the middle of the grid (0.001, 0.01).
    for name in catalog.TRANSFORMER_NAMES:
        assert text.count(f"\n{name} at base rate 0.01, first epoch:\n") == 1
    assert text.count("Model 'classifier': LRMultiplier over AdamW") == len(
        catalog.TRANSFORMER_NAMES)
    assert sorted(os.listdir(tmp_path)) == sorted(report.files(TINY))
    for name in report.files(TINY):
        if name.endswith(".png"):
            assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "results.md").read_text()
    assert "| claim | the paper | this run |" in md
    assert "![LoRA+](lora_plus.png)" in md


# The tiny preset, end to end: pretraining, then two arms trained.

@pytest.fixture(scope="module")
def tiny_results():
    with _test_sized_vit():
        return experiment.run(TINY, log=lambda line: None)


def test_tiny_run_measures_what_it_trained(tiny_results):
    runs = tiny_results.runs
    assert [(r["arm"], r["lr"]) for r in runs] == [
        (a, lr) for a in TINY.arms for lr in TINY.lrs] == [
        ("probe", 0.003), ("lp-ft", 0.003)]
    # The measures the report is tested on (fixed results) are these.
    [fixed] = {tuple(sorted(r)) for r in _fixed_results().runs}
    assert {tuple(sorted(r)) for r in runs} == {fixed}
    [pretrained] = [p["heldout_accuracy"] for p in tiny_results.pretraining]
    for r in runs:
        # The curve's last point is the run's own final accuracy.
        assert len(r["curve"]) == TINY.epochs and r["curve"][-1] == r["accuracy"]
    probe, _ = runs
    assert probe["retained"] == pretrained  # a frozen body forgets nothing


def test_lp_ft_starts_as_the_linear_probe(tiny_results):
    # Within a seed every arm gets the same head and batches, and in its
    # first epoch LP-FT keeps the whole body still, as the probe does: after
    # it, both score the same.
    probe, lp_ft = tiny_results.runs
    assert lp_ft["curve"][0] == probe["curve"][0]


# The command line.

def _parser():
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser


def test_experiment_option_picks_the_transformer_presets():
    parser = _parser()
    assert cli.config_from(parser.parse_args([])) == catalog.QUICK
    args = parser.parse_args(["--experiment", "transformer"])
    assert cli.config_from(args) == catalog.TRANSFORMER_QUICK
    args = parser.parse_args(["--experiment", "transformer", "--full"])
    assert cli.config_from(args) == catalog.TRANSFORMER_FULL
    args = parser.parse_args(["--experiment", "transformer", "--arms",
                              "lora,lora+"])
    config = cli.config_from(args)
    assert (config.arms, config.control_arms) == (("lora", "lora+"), ())
    assert "--quick --experiment transformer --arms lora,lora+" in (
        cli.command_line(args))


def test_an_arm_of_the_other_experiment_is_a_clear_error():
    parser = _parser()
    for argv, message in [
            (["--arms", "lora"], "lora is not an arm of --experiment cnn"),
            (["--experiment", "transformer", "--arms", "discr,full"],
             "discr is not an arm of --experiment transformer, whose arms "
             "are full, llrd0.8")]:
        with pytest.raises(ValueError, match=message):
            cli.config_from(parser.parse_args(argv))


def test_verdicts_follow_the_intervals_and_the_f_test():
    assert claims.direction(0.01, 0.2) == "higher"
    assert claims.direction(-0.2, -0.01) == "lower"
    assert claims.direction(-0.1, 0.1) == "within noise"
    assert claims.direction(math.nan, math.nan) == "within noise"  # one seed
    # F(0.975; 7, 7) = 4.99 (tables): 8 seeds each, variances 5.29 and 4.84
    # times the other's.
    a = np.array([0.0, 1.0] * 4)
    assert claims.spreads_differ(a, 2.3 * a) and claims.spreads_differ(2.3 * a, a)
    assert not claims.spreads_differ(a, 2.2 * a)
    results = _fixed_results()
    verdicts = {c.title: c.verdict
                for c in claims.claims(results, report.summarize(results))}
    # llrd0.8 - full at their best rates (both 0.001): [-0.1, 0.4, 0.05],
    # interval contains 0; spreads 0.208 and 0.05, F = 17.3 < F(0.975; 2, 2)
    # = 39; failed over the grid: full 4/6, llrd0.8 0/6.
    assert verdicts["Layer-wise learning-rate decay"] == (
        "accuracy: consistent with 'a small gain at best': no difference "
        "(llrd0.8 no difference); less spread: not reproduced (no spread "
        "told apart from full's with these seeds, F test at 95%); fewer "
        "failed runs than full over the grid: reproduced for llrd0.8")
    # lora+ - lora: [0.05, -0.1, 0.2] and after one epoch [0.15, 0.0, 0.32]:
    # both intervals contain 0; best rates 0.001 and 0.01.
    assert verdicts["LoRA+"] == (
        "accuracy: not reproduced, no difference; faster (after one epoch): "
        "not reproduced, no difference. lora+ is best at base rate 0.001, "
        "lora at 0.01: the head trains at the base rate (A's) in both, as "
        "PEFT groups it")
    # lp-ft's shifted accuracies are its new-task ones: [0.7, 0.6, 0.7]
    # against full's [0.8, 0.4, 0.7], interval contains 0.
    assert verdicts["LP-FT: a slow body keeps out-of-distribution accuracy"] == (
        "not reproduced by lp-ft (lp-ft: kept more under no shift; against "
        "full, paired)")
