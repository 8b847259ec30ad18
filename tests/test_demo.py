"""`python -m difflr demo`: its data, arms, runner, report and command line."""

import argparse
import csv
import dataclasses
import math
import os
import re
import sys

import keras
import numpy as np
import pytest

import difflr
from difflr import __main__ as cli_main
from difflr.demo import arms as arms_lib
from difflr.demo import cli
from difflr.demo import data
from difflr.demo import experiment
from difflr.demo import network
from difflr.demo import report

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

# Hand-computed: ULMFiT's factor 2.6 over four groups, bottom first.
DISCR = (1 / 17.576, 1 / 6.76, 1 / 2.6, 1.0)
LAYERS = ("conv1", "conv2", "fc", "head")
# A reduced size for end-to-end runs: seconds, not minutes.
TINY = dict(seeds=(0,), lrs=(0.01,), epochs=2, repeats=1, batch_size=50,
            pretrain_epochs=1)


# Data.

@pytest.mark.backend_free
def test_halves_are_stratified_disjoint_and_exact():
    x, y = data.load()
    assert x.shape == (1797, 8, 8, 1) and x.dtype == np.float32
    assert x.min() == 0.0 and x.max() == 1.0
    pretrain, finetune = data.halves(y)
    assert len(pretrain) == 896 and len(finetune) == 901
    assert not set(pretrain) & set(finetune)
    assert sorted(np.concatenate([pretrain, finetune])) == list(range(1797))
    counts = np.bincount(y, minlength=10)
    assert list(np.bincount(y[pretrain])) == list(counts // 2)
    assert list(np.bincount(y[finetune])) == list(counts - counts // 2)
    again = data.halves(y)
    np.testing.assert_array_equal(again[0], pretrain)
    np.testing.assert_array_equal(again[1], finetune)


@pytest.mark.backend_free
def test_few_shot_draws_k_per_digit_and_tests_on_the_rest():
    _, y = data.load()
    _, finetune = data.halves(y)
    train, test = data.few_shot(y, finetune, 5, seed=0)
    assert len(train) == 50 and len(set(train)) == 50
    assert list(y[train]) == [d for d in range(10) for _ in range(5)]
    assert set(train) <= set(finetune)
    assert sorted(np.concatenate([train, test])) == sorted(finetune)
    assert len(test) == 851
    np.testing.assert_array_equal(data.few_shot(y, finetune, 5, seed=0)[0], train)
    assert set(data.few_shot(y, finetune, 5, seed=1)[0]) != set(train)
    for bad in (0, data.MAX_SHOTS + 1):
        with pytest.raises(ValueError, match="shots must be between 1 and 50"):
            data.few_shot(y, finetune, bad, seed=0)


@pytest.mark.backend_free
def test_task_labels_are_digit_mod_3():
    assert list(data.task_labels(range(10))) == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]


@pytest.mark.backend_free
def test_shift_augment_against_hand_shifted_images():
    x = np.arange(1, 13, dtype="float32").reshape(1, 3, 4, 1)
    xs, ys = data.shift_augment(np.concatenate([x, x + 100]), np.array([7, 8]))
    assert xs.shape == (10, 3, 4, 1) and list(ys) == [7, 8] * 5
    image = x[0, ..., 0]
    down = np.array([[0, 0, 0, 0], [1, 2, 3, 4], [5, 6, 7, 8]])
    up = np.array([[5, 6, 7, 8], [9, 10, 11, 12], [0, 0, 0, 0]])
    right = np.array([[0, 1, 2, 3], [0, 5, 6, 7], [0, 9, 10, 11]])
    left = np.array([[2, 3, 4, 0], [6, 7, 8, 0], [10, 11, 12, 0]])
    for k, expected in enumerate([image, down, up, right, left]):
        np.testing.assert_array_equal(xs[2 * k, ..., 0], expected)
    np.testing.assert_array_equal(xs[3, ..., 0], np.where(down > 0, down + 100, 0))


@pytest.mark.backend_free
def test_permute_pixels_is_one_fixed_permutation_per_seed():
    x = np.random.default_rng(0).random((3, 8, 8, 1)).astype("float32")
    shuffled = data.permute_pixels(x, seed=0)
    flat, flat_shuffled = x.reshape(3, 64), shuffled.reshape(3, 64)
    order = [int(np.flatnonzero(flat[0] == v)[0]) for v in flat_shuffled[0]]
    assert sorted(order) == list(range(64)) and order != list(range(64))
    np.testing.assert_array_equal(flat_shuffled, flat[:, order])  # same for all
    np.testing.assert_array_equal(data.permute_pixels(x, seed=0), shuffled)
    assert not np.array_equal(data.permute_pixels(x, seed=1), shuffled)


def _hand_shifts(image):
    """`image` (2-D) moved one pixel down, up, right and left, zeros in."""
    down, up, right, left = (np.zeros_like(image) for _ in range(4))
    down[1:], up[:-1] = image[:-1], image[1:]
    right[:, 1:], left[:, :-1] = image[:, :-1], image[:, 1:]
    return [down, up, right, left]


@pytest.mark.backend_free
def test_translate_moves_each_image_one_pixel_in_a_drawn_direction():
    x = np.random.default_rng(0).random((200, 5, 6, 1)).astype("float32")
    moved = data.translate(x, seed=0)
    assert moved.shape == x.shape and moved.dtype == x.dtype
    directions = []
    for image, out in zip(x[..., 0], moved[..., 0]):
        matches = [k for k, shifted in enumerate(_hand_shifts(image))
                   if np.array_equal(out, shifted)]
        assert len(matches) == 1  # exactly one of the four, never unmoved
        directions.append(matches[0])
    assert sorted(set(directions)) == [0, 1, 2, 3]  # all four are drawn
    np.testing.assert_array_equal(data.translate(x, seed=0), moved)
    assert not np.array_equal(data.translate(x, seed=1), moved)


@pytest.mark.backend_free
def test_add_noise_is_gaussian_of_the_stated_std_drawn_per_seed_and_clipped():
    x = np.full((4000, 8, 8, 1), 0.5, dtype="float32")
    noisy = data.add_noise(x, seed=0)
    assert noisy.dtype == np.float32 and noisy.min() >= 0 and noisy.max() <= 1
    # The documented draw: seed [seed, 4], std NOISE_STD, clipped to [0, 1].
    noise = np.random.default_rng([0, 4]).normal(0.0, data.NOISE_STD, x.shape)
    np.testing.assert_allclose(noisy, np.clip(0.5 + noise, 0, 1), atol=1e-7)
    inside = np.abs(noise) < 0.5  # the pixels clipping left alone
    assert np.std(noisy[inside] - 0.5) == pytest.approx(
        np.std(noise[inside]), rel=1e-5)
    assert np.std(noise) == pytest.approx(data.NOISE_STD, rel=0.01)
    np.testing.assert_array_equal(data.add_noise(x, seed=0), noisy)
    assert not np.array_equal(data.add_noise(x, seed=1), noisy)


# Arms.

def _model():
    keras.utils.set_random_seed(0)
    return network.build_model(network.build_body(), data.TASK_CLASSES)


def _multipliers_by_layer(model, optimizer):
    """{layer name: [multiplier of each of its variables]}."""
    layers = {"head": model.get_layer("head")}
    body = model.get_layer("body")
    layers.update({name: body.get_layer(name) for name in LAYERS[:3]})
    return {name: [optimizer.multiplier_for(v) for v in layer.trainable_variables]
            for name, layer in layers.items()}


def _expected(values):
    return dict(zip(LAYERS, ([m, m] for m in values)))


def test_groups_of_the_demo_model():
    model = _model()
    assert [[layer.name for layer in g] for g in difflr.groups(model)] == [
        ["conv1"], ["conv2"], ["fc"], ["head"]]


@pytest.mark.parametrize("name, expected", [
    ("probe", (0.0, 0.0, 0.0, 1.0)),
    ("discr", DISCR),
    ("body0.1", (0.1, 0.1, 0.1, 1.0)),
])
def test_constant_arms_set_the_expected_multipliers(name, expected):
    model = _model()
    optimizer, callbacks = arms_lib.ARMS[name].plan(model, 0.01, 6)
    assert callbacks == []
    assert isinstance(optimizer, difflr.LRMultiplier)
    assert isinstance(optimizer.inner_optimizer, keras.optimizers.Adam)
    model.compile(optimizer, network.LOSS)
    optimizer.build(model.trainable_variables)
    got = _multipliers_by_layer(model, optimizer)
    assert got.keys() == _expected(expected).keys()
    for layer, values in _expected(expected).items():
        assert got[layer] == pytest.approx(values, rel=1e-12, abs=0), layer
    assert float(optimizer.learning_rate) == pytest.approx(0.01)


@pytest.mark.parametrize("name", ["scratch", "full"])
def test_baselines_use_plain_adam(name):
    optimizer, callbacks = arms_lib.ARMS[name].plan(_model(), 0.03, 6)
    # Not an LRMultiplier: no difflr code touches the baselines.
    assert isinstance(optimizer, keras.optimizers.Adam) and callbacks == []
    assert float(optimizer.learning_rate) == pytest.approx(0.03)


class _Record(keras.callbacks.Callback):
    """The multipliers in force in each epoch, read inside `fit`."""

    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(_multipliers_by_layer(self.model, self.model.optimizer))


@pytest.mark.parametrize("name, per_epoch", [
    ("probe+discr", [(0, 0, 0, 1), (0, 0, 0, 1), DISCR, DISCR]),
    ("freez", [(0, 0, 0, 1), (0, 0, 1, 1), (0, 1, 1, 1), (1, 1, 1, 1)]),
    ("freez+discr", [(0, 0, 0, 1), (0, 0) + DISCR[2:], (0,) + DISCR[1:], DISCR]),
])
def test_scheduled_arms_change_multipliers_inside_fit(name, per_epoch):
    model = _model()
    optimizer, callbacks = arms_lib.ARMS[name].plan(model, 0.01, 4)
    record = _Record()
    model.compile(optimizer, network.LOSS)
    x = np.random.default_rng(0).random((10, 8, 8, 1)).astype("float32")
    model.fit(x, np.arange(10) % 3, batch_size=10, epochs=4, verbose=0,
              callbacks=callbacks + [record])
    assert len(record.epochs) == 4
    for epoch, (got, values) in enumerate(zip(record.epochs, per_epoch)):
        for layer, expected in _expected(values).items():
            assert got[layer] == pytest.approx(expected, rel=1e-12, abs=0), (
                f"epoch {epoch}, {layer}")
    # The report draws the same states without training.
    assert report._distinct_epochs(arms_lib.ARMS[name], 0.01, 4) == [
        e for e in range(4) if e == 0 or per_epoch[e] != per_epoch[e - 1]]


def test_every_arm_mirrors_a_named_row():
    assert list(arms_lib.ARMS) == ["scratch", "probe", "full", "discr", "body0.1",
                                   "probe+discr", "freez", "freez+discr"]
    assert [a.pretrained for a in arms_lib.ARMS.values()] == [False] + [True] * 7


# Runner.

def test_run_is_deterministic_and_pretrains_once_per_seed():
    config = dataclasses.replace(experiment.QUICK, arms=("freez+discr",),
                                 control_arms=(), **TINY)
    lines = []
    first = experiment.run(config, log=lines.append)
    second = experiment.run(config, log=lambda line: None)
    assert first.runs == second.runs  # exactly equal accuracies
    assert first.pretraining == second.pretraining
    assert [(r["source"], r["arm"], r["seed"], r["lr"]) for r in first.runs] == [
        ("digits", "freez+discr", 0, 0.01)]
    assert len(lines) == 2
    assert re.fullmatch(r"seed 0  digits   pretrained: 10-way accuracy "
                        r"0\.\d{3} on the test images  \(\d+\.\d s\)", lines[0])
    assert re.fullmatch(r"seed 0  digits   freez\+discr  accuracy at lr 0\.01: "
                        r"0\.\d{3}  "
                        r"\(\d+\.\d s\)", lines[1])
    assert list(first.runs[0])[4:] == list(experiment.MEASURES)
    # 851 test images: every measure is a whole number of them.
    for value in [first.pretraining[0]["heldout_accuracy"]] + [
            first.runs[0][name] for name in experiment.MEASURES]:
        assert 0 <= value <= 1 and value * 851 == pytest.approx(round(value * 851))


def test_a_frozen_body_retains_exactly_what_the_pretrained_network_scored():
    # The probe's body does not move (multiplier 0): with the pretrained head
    # put back, it is the pretrained network, on the same images. On the
    # control too, whose head reads pixel-shuffled images.
    config = dataclasses.replace(experiment.QUICK, arms=("scratch", "probe", "full"),
                                 control_arms=("probe",), **TINY)
    results = experiment.run(config, log=lambda line: None)
    pretrained = {p["source"]: p["heldout_accuracy"] for p in results.pretraining}
    run = {(r["source"], r["arm"]): r for r in results.runs}
    assert run["digits", "probe"]["retained"] == pretrained["digits"]
    assert run["control", "probe"]["retained"] == pretrained["control"]
    assert run["digits", "full"]["retained"] != pretrained["digits"]  # it moved
    assert run["digits", "scratch"]["retained"] is None  # nothing pretrained
    assert run["digits", "scratch"]["translated"] is not None


def test_eval_sets_shift_the_images_by_seed_and_shuffle_them_for_the_control():
    x, y = data.load()
    x, digits = x[:30], y[:30]
    for source in ("digits", "control"):
        tests = experiment.eval_sets(x, digits, seed=3, source=source)
        np.testing.assert_array_equal(tests.x, x)
        np.testing.assert_array_equal(tests.y, digits % 3)
        np.testing.assert_array_equal(tests.y_pretask, digits)
        assert list(tests.shifted) == ["translated", "noisy"]
        np.testing.assert_array_equal(tests.shifted["translated"],
                                      data.translate(x, 3))
        np.testing.assert_array_equal(tests.shifted["noisy"], data.add_noise(x, 3))
        pixels = data.permute_pixels(x, 3) if source == "control" else x
        np.testing.assert_array_equal(tests.x_pretask, pixels)


# A NumPy forward pass of the demo's network: the independent reference for
# what `experiment.evaluate` measures.

def _np_conv(x, kernel, bias, stride):
    """A 'same' convolution, padded as Keras pads it (an odd pixel at the end)."""
    size, (n, height, width, _) = kernel.shape[0], x.shape
    out_h, out_w = -(-height // stride), -(-width // stride)
    pad_h = max((out_h - 1) * stride + size - height, 0)
    pad_w = max((out_w - 1) * stride + size - width, 0)
    x = np.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2),
                   (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    out = np.zeros((n, out_h, out_w, kernel.shape[3]))
    for i in range(out_h):
        for j in range(out_w):
            patch = x[:, i * stride:i * stride + size, j * stride:j * stride + size]
            out[:, i, j] = np.tensordot(patch, kernel, axes=3)
    return out + bias


def _np_logits(body_weights, head_weights, x):
    conv1_k, conv1_b, conv2_k, conv2_b, fc_k, fc_b = body_weights
    h = np.maximum(_np_conv(x.astype("float64"), conv1_k, conv1_b, 1), 0)
    h = np.maximum(_np_conv(h, conv2_k, conv2_b, 2), 0)
    h = np.maximum(h.reshape(len(h), -1) @ fc_k + fc_b, 0)
    return h @ head_weights[0] + head_weights[1]


def _known(rng, shape, fan_in):
    return rng.normal(0, np.sqrt(2 / fan_in), shape).astype("float32")


def _known_head(rng, body_weights, x, classes):
    """A random kernel, and a bias that centres its logits on `x`."""
    kernel = _known(rng, (64, classes), 64)
    identity = [np.eye(64, dtype="float32"), np.zeros(64, "float32")]
    features = _np_logits(body_weights, identity, x)
    return [kernel, (-features.mean(axis=0) @ kernel).astype("float32")]


def test_evaluate_against_a_numpy_forward_pass():
    # A known body and heads, known images and shifts, labels drawn at
    # random: each measure is the accuracy NumPy's forward pass gives.
    rng = np.random.default_rng(1)
    model = _model()
    body = model.get_layer("body")
    body.set_weights([_known(rng, w.shape, np.prod(w.shape[:-1]) if w.ndim > 1
                             else 100) for w in body.get_weights()])
    x = data.load()[0][:60]  # real digits: features that differ
    head = _known_head(rng, body.get_weights(), x, 3)
    model.get_layer("head").set_weights(head)
    pretrained_weights = _known_head(rng, body.get_weights(), x, 10)
    pretrained = network.build_head(pretrained_weights)
    right = np.zeros_like(x)
    right[:, :, 1:] = x[:, :, :-1]  # every image moved one pixel right
    brighter = np.clip(x + 0.3, 0, 1)
    flipped = x[:, ::-1]  # stands in for the control's pixel order
    y, digits = rng.integers(0, 3, 60), rng.integers(0, 10, 60)
    tests = experiment.EvalSets(x, y, {"translated": right, "noisy": brighter},
                                flipped, digits)
    expected = {}
    for name, images, weights, labels in [
            ("accuracy", x, head, y), ("retained", flipped, pretrained_weights, digits),
            ("translated", right, head, y), ("noisy", brighter, head, y)]:
        logits = _np_logits(body.get_weights(), weights, images)
        top = np.sort(logits, axis=1)
        assert np.min(top[:, -1] - top[:, -2]) > 1e-4  # no tie float32 could flip
        expected[name] = np.mean(np.argmax(logits, axis=1) == labels)
    assert len(set(expected.values())) == 4  # a mix-up would show
    assert experiment.evaluate(model, pretrained, tests) == pytest.approx(
        expected, rel=0, abs=1e-12)
    without = experiment.evaluate(model, None, tests)  # a body not pretrained
    assert without.pop("retained") is None
    assert without == pytest.approx(
        {k: v for k, v in expected.items() if k != "retained"}, rel=0, abs=1e-12)


# Report.

def _fake_results():
    config = dataclasses.replace(experiment.QUICK, seeds=(0, 1, 2),
                                 lrs=(0.001, 0.01),
                                 arms=("scratch", "probe", "full", "discr"),
                                 control_arms=("discr",))
    accuracy = {  # (source, arm, lr) -> per seed
        ("digits", "scratch", 0.001): [0.6, 0.6, 0.6],
        ("digits", "scratch", 0.01): [0.7, 0.7, 0.7],
        ("digits", "probe", 0.001): [0.5, 0.6, 0.7],
        ("digits", "probe", 0.01): [0.8, 0.8, 0.8],
        ("digits", "full", 0.001): [0.7, 0.8, 0.6],
        ("digits", "full", 0.01): [0.7, 0.6, 0.5],
        ("digits", "discr", 0.001): [0.9, 0.7, 0.8],
        ("digits", "discr", 0.01): [0.6, 0.6, 0.9],
        ("control", "discr", 0.001): [0.4, 0.4, 0.4],
        ("control", "discr", 0.01): [0.5, 0.6, 0.7],
    }
    retained = {  # full retains most at 0.01, which is not its best rate
        ("digits", "probe", 0.001): [0.9, 0.9, 0.9],
        ("digits", "probe", 0.01): [0.9, 0.9, 0.9],
        ("digits", "full", 0.001): [0.5, 0.4, 0.6],
        ("digits", "full", 0.01): [0.8, 0.8, 0.8],
        ("digits", "discr", 0.001): [0.7, 0.8, 0.6],
        ("digits", "discr", 0.01): [0.3, 0.4, 0.5],
        ("control", "discr", 0.001): [0.5, 0.5, 0.5],
        ("control", "discr", 0.01): [0.1, 0.2, 0.3],
    }
    runs = [dict(source=s, arm=a, seed=seed, lr=lr, accuracy=v[seed],
                 retained=retained.get((s, a, lr), [None] * 3)[seed],
                 translated=round(v[seed] - 0.2, 6), noisy=0.5)
            for (s, a, lr), v in accuracy.items() for seed in range(3)]
    pretraining = [dict(source=s, seed=seed, heldout_accuracy=0.9)
                   for s in ("digits", "control") for seed in range(3)]
    return experiment.Results(config, runs, pretraining, 12.0)


@pytest.mark.backend_free
def test_summary_best_worst_mean_sample_std_and_paired_difference():
    summaries = report.summarize(_fake_results())
    assert [(s.source, s.arm) for s in summaries] == [
        ("digits", "scratch"), ("digits", "probe"), ("digits", "full"),
        ("digits", "discr"), ("control", "discr")]
    scratch, probe, full, discr, control = summaries
    assert probe.means == pytest.approx([0.6, 0.8])
    assert probe.stds == pytest.approx([0.1, 0.0], abs=1e-12)  # ddof=1
    assert (probe.best, probe.worst) == (1, 0)
    assert discr.means == pytest.approx([0.8, 0.7])
    assert discr.stds == pytest.approx([0.1, np.sqrt(0.03)])
    assert (discr.best, discr.worst) == (0, 1)
    assert (full.best, full.vs_full) == (0, None)
    # Seed by seed, each arm at its best rate minus full at its (0.001):
    # probe [0.8, 0.8, 0.8] - [0.7, 0.8, 0.6]; discr [0.9, 0.7, 0.8] - same.
    assert probe.vs_full[:2] == pytest.approx((0.1, 0.1))
    assert probe.vs_full[2:] == (2, 3)  # a tie is not a win
    assert discr.vs_full[:2] == pytest.approx((0.1, np.sqrt(0.03)))
    assert discr.vs_full[2:] == (2, 3)
    assert control.means == pytest.approx([0.4, 0.6])
    assert control.vs_full is None  # no full on the control here
    text = report.table(_fake_results())
    # Three seeds cannot separate either from full (see test_within_noise).
    assert ("probe        Last                0.800 ± 0.000    0.01      "
            "0.600 ± 0.100    0.001     +0.100 ± 0.100 (2/3), within noise\n"
            ) in text
    assert ("full         Full                0.700 ± 0.100    0.001     "
            "0.600 ± 0.100    0.01      -\n") in text
    assert ("discr        Full + discr        0.800 ± 0.100    0.001     "
            "0.700 ± 0.173    0.01      +0.100 ± 0.173 (2/3), within noise\n"
            ) in text
    control_part = text[text.index("Control: pretrained on pixel-shuffled"):]
    assert "paired" not in control_part  # no full to compare with there
    assert ("discr        Full + discr        0.600 ± 0.100    0.01      "
            "0.400 ± 0.000    0.001\n") in control_part


@pytest.mark.backend_free
def test_what_was_kept_is_taken_at_the_best_rate_for_the_new_task():
    scratch, probe, full, discr, control = report.summarize(_fake_results())
    assert list(probe.measures) == list(experiment.MEASURES)
    assert "retained" not in scratch.measures  # its body was not pretrained
    assert full.measures["retained"].means == pytest.approx([0.5, 0.8])
    assert full.measures["retained"].vs_full is None
    # At the best rates for the new task, paired by seed, minus full's
    # [0.5, 0.4, 0.6] at 0.001 (not its 0.8 at 0.01):
    # probe [0.9] * 3 at 0.01; discr [0.7, 0.8, 0.6] at 0.001.
    assert probe.measures["retained"].vs_full[:2] == pytest.approx((0.4, 0.1))
    assert probe.measures["retained"].vs_full[2:] == (3, 3)
    assert discr.measures["retained"].vs_full[:2] == pytest.approx((0.2, 0.2))
    assert discr.measures["retained"].vs_full[2:] == (2, 3)
    # translated is accuracy - 0.2: the same differences; noisy ties.
    assert discr.measures["translated"].vs_full[:2] == pytest.approx(
        (0.1, np.sqrt(0.03)))
    assert scratch.measures["noisy"].vs_full[:2] == pytest.approx((0, 0), abs=1e-12)
    assert scratch.measures["noisy"].vs_full[2:] == (0, 3)
    assert control.measures["retained"].means == pytest.approx([0.5, 0.2])
    text = report.table(_fake_results())
    assert "(the pretrained network: 0.900)" in text
    # Paired cells as wide as the widest, `, within noise` and two spaces.
    vs = lambda cell: cell.ljust(36)  # noqa: E731
    assert ("probe        0.01    0.900 ± 0.000    " + vs("+0.400 ± 0.100 (3/3)")
            + "0.600 ± 0.000    " + vs("+0.100 ± 0.100 (2/3), within noise")
            + "0.500 ± 0.000    +0.000 ± 0.000 (0/3), within noise\n") in text
    assert ("scratch      0.01    -                " + vs("-")
            + "0.500 ± 0.000    ") in text  # no retained accuracy
    assert ("full         0.001   0.500 ± 0.100    " + vs("-")
            + "0.500 ± 0.100    " + vs("-") + "0.500 ± 0.000    -\n") in text
    assert "\n" + report.NOISE_NOTE + ".\n" in text
    assert ("mean retained 10-way accuracy at each base learning rate\n"
            "arm             0.001     0.01\n"
            "scratch             -        -\n"
            "probe           0.900    0.900\n"
            "full            0.500    0.800\n") in text
    control_part = text[text.index("Control: pretrained on pixel-shuffled"):]
    assert "pixels shuffled as in its pretraining" in control_part
    assert "discr        0.01    0.200 ± 0.100    0.400 ± 0.100" in control_part


@pytest.mark.backend_free
def test_within_noise_is_a_95_percent_t_interval_that_contains_zero():
    # Student's t quantiles in closed form: 1 degree of freedom (Cauchy) and 2.
    t1 = math.tan(math.pi * (0.975 - 0.5))  # 12.706
    t2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # 4.303
    two = report.Measure([], differences=[0.3, 0.1], pooled=(0.1, 1))
    half = t1 * 0.1 / math.sqrt(2)
    assert two.interval == pytest.approx((0.2 - half, 0.2 + half))
    assert two.separated is False  # one degree of freedom: a wide interval
    three = report.Measure([], differences=[0.4, 0.5, 0.3], pooled=(0.1, 2))
    half = t2 * 0.1 / math.sqrt(3)
    assert three.interval == pytest.approx((0.4 - half, 0.4 + half))
    assert three.separated is True
    below = report.Measure([], differences=[-0.4, -0.5, -0.3], pooled=(0.1, 2))
    assert below.separated is True  # separated below full too
    tie = report.Measure([], differences=[0.0, 0.0], pooled=(0.0, 1))
    assert tie.separated is False
    for nothing in (report.Measure([], differences=[0.5]),  # one seed
                    report.Measure([], pooled=(0.1, 2))):  # no full
        assert nothing.interval is None and nothing.separated is None


@pytest.mark.backend_free
def test_the_spread_is_pooled_over_the_arms_compared_with_full():
    scratch, probe, full, discr, control = report.summarize(_fake_results())
    # Paired differences at the best rates, by hand (full: 0.001).
    accuracy = {"scratch": [0, -0.1, 0.1], "probe": [0.1, 0, 0.2],
                "discr": [0.2, -0.1, 0.2]}  # variances 0.01, 0.01, 0.03
    for summary in (scratch, probe, discr):
        assert summary.measures["accuracy"].differences == pytest.approx(
            accuracy[summary.arm])
    # Pooled: (2 * 0.01 + 2 * 0.01 + 2 * 0.03) / 6 degrees of freedom.
    std, dof = probe.measures["accuracy"].pooled
    assert (std, dof) == (pytest.approx(math.sqrt(0.1 / 6)), 6)
    assert discr.measures["accuracy"].pooled == probe.measures["accuracy"].pooled
    half = 2.447 * std / math.sqrt(3)  # t(0.975, 6) from a printed table
    low, high = probe.measures["accuracy"].interval
    assert (low, high) == pytest.approx((0.1 - half, 0.1 + half), abs=1e-3)
    assert probe.measures["accuracy"].separated is False  # 0.1 ± 0.182
    # retained: probe [0.4, 0.5, 0.3], discr [0.2, 0.4, 0.0]; scratch has
    # none. (2 * 0.01 + 2 * 0.04) / 4 degrees of freedom.
    assert probe.measures["retained"].differences == pytest.approx([0.4, 0.5, 0.3])
    std, dof = discr.measures["retained"].pooled
    assert (std, dof) == (pytest.approx(math.sqrt(0.1 / 4)), 4)
    half = 2.776 * std / math.sqrt(3)  # t(0.975, 4), 0.253
    assert probe.measures["retained"].interval == pytest.approx(
        (0.4 - half, 0.4 + half), abs=1e-3)
    assert probe.measures["retained"].separated is True
    assert discr.measures["retained"].separated is False  # 0.2 ± 0.253
    assert scratch.measures["noisy"].separated is False  # every seed ties
    assert full.measures["accuracy"].separated is None  # the reference
    assert control.measures["accuracy"].separated is None  # no full there


@pytest.mark.backend_free
def test_the_figure_says_what_the_tables_say(tmp_path, monkeypatch):
    # Beside each arm, its paired difference from full and seeds won, grey
    # and marked when the seeds cannot separate it, bold when they can.
    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig))
    report.plot_forgetting_and_shift(_fake_results(), str(tmp_path / "f.png"))
    (fig,) = figures
    digits = fig.axes[:4]  # new task, retained, translated, noisy
    titles = [ax.get_title() for ax in digits]
    assert titles[0].startswith("New task") and "forgetting" in titles[1]
    labels = {ax.get_title(): {t.get_text(): (t.get_color(), t.get_fontweight())
                               for t in ax.texts} for ax in digits}
    kept = labels[titles[1]]
    assert kept["+0.400 (3/3)"] == ("black", "bold")
    assert kept["+0.200 (2/3)\nwithin noise"] == ("0.55", "normal")
    assert "no pretrained body" in kept  # scratch's row
    assert "pretrained 0.900" in kept
    assert labels[titles[0]]["+0.100 (2/3)\nwithin noise"] == ("0.55", "normal")
    assert labels[titles[3]]["+0.000 (0/3)\nwithin noise"] == ("0.55", "normal")
    assert [t.get_text() for t in digits[0].get_yticklabels()] == [
        "scratch", "probe", "full", "discr"]
    assert "3 seeds cannot separate the arm from full" in fig.get_suptitle()
    # Each arm's mean at its best rate, in its row (y = the arm's index).
    means = {(round(float(x), 6), round(float(y))) for ax in digits[1:2]
             for c in ax.collections for x, y in c.get_offsets()
             if c.get_sizes()[0] == 70}
    assert means == {(0.9, 1), (0.5, 2), (0.7, 3)}  # probe, full, discr


@pytest.mark.backend_free
def test_the_demo_page_shows_every_figure_it_describes_full_width():
    # docs/demo.md against the files on disk and the code that drew them.
    docs = os.path.join(os.path.dirname(__file__), os.pardir, "docs")
    with open(os.path.join(docs, "demo.md"), encoding="utf-8") as f:
        page = f.read()
    shown = re.findall(r"!\[[^\]]+\]\((img/demo_[\w.]+\.png)\)(\{ \.wide \})?",
                       page)
    on_disk = {f"img/{name}" for name in os.listdir(os.path.join(docs, "img"))
               if name.startswith("demo_")}
    assert {path for path, _ in shown} == on_disk  # each shown, none missing
    assert all(wide for _, wide in shown)  # several panels: the page's width
    # The learning-rate figure is drawn at the middle of the --full grid.
    middle = experiment.FULL.lrs[len(experiment.FULL.lrs) // 2]
    assert (f"at base rate {middle:g}, the middle of the `--full` grid"
            in " ".join(page.split()))
    with open(os.path.join(docs, os.pardir, "mkdocs.yml"), encoding="utf-8") as f:
        config = f.read()
    assert "- glightbox:" in config and "- attr_list" in config
    assert os.path.exists(os.path.join(docs, "css", "figures.css"))
    assert "- css/figures.css" in config


@pytest.mark.backend_free
def test_one_seed_has_no_std():
    results = _fake_results()
    results.config = dataclasses.replace(results.config, seeds=(0,))
    results.runs = [r for r in results.runs if r["seed"] == 0]
    summary = report.summarize(results)[0]
    assert np.isnan(summary.stds).all()
    assert "0.800    " in report.table(results) and "±" not in report.table(results)


def test_files_are_written_whole_with_the_right_columns(tmp_path):
    results = _fake_results()
    report.write_all(results, str(tmp_path), "python -m difflr demo --quick")
    assert sorted(os.listdir(tmp_path)) == sorted(report.FILES)  # no temp left
    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == report.CSV_COLUMNS == (
        "source", "arm", "ulmfit_row", "seed", "base_lr", "test_accuracy",
        "retained_accuracy", "translated_accuracy", "noisy_accuracy")
    assert len(rows) == 1 + len(results.runs)
    assert rows[1] == ["digits", "scratch", "From scratch", "0", "0.001",
                       "0.6", "", "0.4", "0.5"]  # no retained for scratch
    assert rows[7] == ["digits", "probe", "Last", "0", "0.001", "0.5", "0.9",
                       "0.3", "0.5"]
    md = (tmp_path / "results.md").read_text()
    assert "Command: `python -m difflr demo --quick`" in md
    assert ("| discr | Full + discr | 0.800 ± 0.100 | 0.001 | 0.700 ± 0.173 "
            "| 0.01 | +0.100 ± 0.173 (2/3), within noise |") in md
    assert "| full | Full | 0.700 ± 0.100 | 0.001 | 0.600 ± 0.100 | 0.01 | - |" in md
    assert ("| arm | at lr | retained 10-way | retained 10-way - full, paired "
            "| translated | translated - full, paired | noisy | noisy - full, "
            "paired |") in md
    assert ("| probe | 0.01 | 0.900 ± 0.000 | +0.400 ± 0.100 (3/3) | "
            "0.600 ± 0.000 | +0.100 ± 0.100 (2/3), within noise | "
            "0.500 ± 0.000 | +0.000 ± 0.000 (0/3), within noise |") in md
    assert f"; {report.NOISE_NOTE}. What fine-tuning kept" in md
    assert "| scratch | - | - |" in md  # its retained accuracy over the grid
    assert "(forgetting_and_shift.png)" in md
    assert f"{os.cpu_count()} cores" in md and keras.__version__ in md
    for png in ("accuracy_vs_lr.png", "learning_rates.png",
                "forgetting_and_shift.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    umask = os.umask(0)
    os.umask(umask)
    for name in report.FILES:  # the permissions open() would give
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.backend_free
def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "results.md"
    path.write_text("old")

    def fail(f):
        f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        report._write_atomic(str(path), fail)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["results.md"]


# Command line.

def _demo(argv, capsys):
    code = cli_main.main(["demo"] + argv)
    out = capsys.readouterr()
    return code, out.out, out.err


BAD_ARGUMENTS = [
    (["--lrs", "0.01,abc"], "'abc' in '0.01,abc' is not a number"),
    (["--lrs", "0.01,0"], "must be positive and finite; received 0"),
    (["--lrs", "0.1,nan"], "must be positive and finite"),
    (["--lrs", "0.01,0.01"], "0.01 is listed twice"),
    (["--arms", "full,adam"], "unknown arm 'adam' in 'full,adam'; the arms are scratch"),
    (["--arms", "full,full"], "'full' is listed twice"),
    (["--seeds", "0"], "--seeds must be from 1 to 100; received 0"),
    (["--seeds", "two"], "--seeds must be a whole number"),
    (["--shots", "51"], "--shots must be from 1 to 50"),
    (["--epochs", "0"], "--epochs must be from 1 to 100"),
    (["--quick", "--full"], "not allowed with argument"),
]


def test_bad_arguments_exit_with_a_clear_message(capsys):
    # One test, not one per case: each test ends with a clear_session.
    for argv, message in BAD_ARGUMENTS:
        with pytest.raises(SystemExit) as e:
            _demo(argv, capsys)
        assert e.value.code == 2, argv
        assert message in capsys.readouterr().err, argv


def test_out_must_not_be_a_file(tmp_path, capsys):
    existing = tmp_path / "results"
    existing.write_text("")
    for out, message in [(existing, "is an existing file; give a directory"),
                         (existing / "sub", "cannot create that directory")]:
        with pytest.raises(SystemExit) as e:
            _demo(["--out", str(out)], capsys)
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_missing_dependencies_name_the_extra(monkeypatch, capsys):
    for module in ("sklearn", "sklearn.datasets"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails
    code, out, err = _demo([], capsys)
    assert code == 1
    assert "needs scikit-learn" in err and "`pip install scikit-learn`" in err
    with pytest.raises(ImportError, match=r"`pip install scikit-learn matplotlib`"):
        data.load()


@pytest.mark.backend_free
def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        _demo(["--help"], capsys)
    assert e.value.code == 0
    text = capsys.readouterr().out
    for option in ("--quick", "--full", "--out", "--seeds", "--lrs", "--arms",
                   "--no-control", "--shots", "--epochs", "KERAS_BACKEND",
                   "Table 7", "pip install scikit-learn matplotlib"):
        assert option in text
    for name in arms_lib.ARMS:
        assert name in text


@pytest.mark.backend_free
def test_presets():
    quick, full = experiment.QUICK, experiment.FULL
    assert (quick.seeds, quick.lrs) == ((0, 1), (0.001, 0.01, 0.1))
    assert "freez" not in quick.arms and len(quick.arms) == 7
    assert len(full.seeds) == 5 and len(full.lrs) == 7
    assert full.arms == tuple(arms_lib.ARMS)


def test_quick_end_to_end_at_a_reduced_size(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(experiment, "QUICK",
                        dataclasses.replace(experiment.QUICK, **TINY))
    out = tmp_path / "out"
    code, stdout, stderr = _demo(
        ["--arms", "scratch,freez+discr", "--out", str(out)], capsys)
    assert code == 0
    assert f"backend {keras.backend.backend()}" in stderr
    assert "3 fine-tuning runs" in stderr  # 2 arms + 1 on the control
    assert stderr.count("  accuracy at lr 0.01: 0.") == 3  # names the rate
    assert "difflr demo (the quick preset; --full" in stderr  # --quick untyped
    assert "With 1 seed, differences" in stdout  # what the run can show
    assert stderr.count("pretrained: 10-way accuracy") == 2
    assert "Pretrained on digits 0-9" in stdout and "Control:" in stdout
    assert "freez+discr  Freez + discr" in stdout
    assert sorted(os.listdir(out)) == sorted(report.FILES)
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["source"], r["arm"]) for r in rows] == [
        ("digits", "scratch"), ("digits", "freez+discr"),
        ("control", "freez+discr")]
    md = (out / "results.md").read_text()
    assert (f"Command: `KERAS_BACKEND={keras.backend.backend()} python -m "
            "difflr demo --quick --arms scratch,freez+discr "
            f"--out {out}`") in md


@pytest.mark.backend_free
def test_progress_names_each_rate():
    assert experiment.progress_scores((0.001, 0.01, 0.1), (0.8124, 0.845, 0.4)) == (
        "accuracy at lr 0.001: 0.812, 0.01: 0.845, 0.1: 0.400")


@pytest.mark.backend_free
def test_header_says_quick_only_when_typed():
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert parser.parse_args([]).preset is None
    assert parser.parse_args(["--quick"]).preset == "quick"
    assert cli.config_from(parser.parse_args([])) == experiment.QUICK
    # The record of a run still names the preset that ran.
    assert "demo --quick" in cli.command_line(parser.parse_args([]))


@pytest.mark.backend_free
def test_majority_class_floor():
    # The figure's floor: always answering the largest class (docs/demo.md).
    assert round(data.majority_share(5, 0), 3) == 0.402


@pytest.mark.backend_free
def test_what_the_quick_run_can_show():
    text = cli.what_it_can_show(experiment.QUICK)
    assert "2 seeds" in text and "0.001, 0.01, 0.1" in text and "--full" in text
    assert "docs/demo.md" not in cli.what_it_can_show(experiment.FULL)
