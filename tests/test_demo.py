"""`python -m difflr demo`: its data, arms, runner, report and command line."""

import argparse
import csv
import dataclasses
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


def test_task_labels_are_digit_mod_3():
    assert list(data.task_labels(range(10))) == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]


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


def test_permute_pixels_is_one_fixed_permutation_per_seed():
    x = np.random.default_rng(0).random((3, 8, 8, 1)).astype("float32")
    shuffled = data.permute_pixels(x, seed=0)
    flat, flat_shuffled = x.reshape(3, 64), shuffled.reshape(3, 64)
    order = [int(np.flatnonzero(flat[0] == v)[0]) for v in flat_shuffled[0]]
    assert sorted(order) == list(range(64)) and order != list(range(64))
    np.testing.assert_array_equal(flat_shuffled, flat[:, order])  # same for all
    np.testing.assert_array_equal(data.permute_pixels(x, seed=0), shuffled)
    assert not np.array_equal(data.permute_pixels(x, seed=1), shuffled)


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
                        r"0\.\d{3} on the other half  \(\d+\.\d s\)", lines[0])
    assert re.fullmatch(r"seed 0  digits   freez\+discr  accuracy at lr 0\.01: "
                        r"0\.\d{3}  "
                        r"\(\d+\.\d s\)", lines[1])
    # 851 test images: an accuracy is a whole number of them.
    correct = first.runs[0]["accuracy"] * 851
    assert correct == pytest.approx(round(correct))


def test_scratch_does_not_run_on_the_control():
    config = dataclasses.replace(experiment.QUICK, arms=("scratch", "full"),
                                 control_arms=("scratch", "full"))
    assert experiment.sources(config) == ("digits", "control")
    assert [a.name for a in experiment.arms_for(config, "digits")] == [
        "scratch", "full"]
    assert [a.name for a in experiment.arms_for(config, "control")] == ["full"]
    no_control = dataclasses.replace(config, control_arms=())
    assert experiment.sources(no_control) == ("digits",)


# Report.

def _fake_results():
    config = dataclasses.replace(experiment.QUICK, seeds=(0, 1, 2),
                                 lrs=(0.001, 0.01),
                                 arms=("probe", "full", "discr"),
                                 control_arms=("discr",))
    accuracy = {  # (source, arm, lr) -> per seed
        ("digits", "probe", 0.001): [0.5, 0.6, 0.7],
        ("digits", "probe", 0.01): [0.8, 0.8, 0.8],
        ("digits", "full", 0.001): [0.7, 0.8, 0.6],
        ("digits", "full", 0.01): [0.7, 0.6, 0.5],
        ("digits", "discr", 0.001): [0.9, 0.7, 0.8],
        ("digits", "discr", 0.01): [0.6, 0.6, 0.9],
        ("control", "discr", 0.001): [0.4, 0.4, 0.4],
        ("control", "discr", 0.01): [0.5, 0.6, 0.7],
    }
    runs = [dict(source=s, arm=a, seed=seed, lr=lr, accuracy=v[seed])
            for (s, a, lr), v in accuracy.items() for seed in range(3)]
    pretraining = [dict(source=s, seed=seed, heldout_accuracy=0.9)
                   for s in ("digits", "control") for seed in range(3)]
    return experiment.Results(config, runs, pretraining, 12.0)


def test_summary_best_worst_mean_sample_std_and_paired_difference():
    summaries = report.summarize(_fake_results())
    assert [(s.source, s.arm) for s in summaries] == [
        ("digits", "probe"), ("digits", "full"), ("digits", "discr"),
        ("control", "discr")]
    probe, full, discr, control = summaries
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
    assert ("probe        Last                0.800 ± 0.000    0.01      "
            "0.600 ± 0.100    0.001     +0.100 ± 0.100 (2/3)\n") in text
    assert ("full         Full                0.700 ± 0.100    0.001     "
            "0.600 ± 0.100    0.01      -\n") in text
    assert ("discr        Full + discr        0.800 ± 0.100    0.001     "
            "0.700 ± 0.173    0.01      +0.100 ± 0.173 (2/3)\n") in text
    control_part = text[text.index("Control: pretrained on pixel-shuffled"):]
    assert "paired" not in control_part  # no full to compare with there
    assert ("discr        Full + discr        0.600 ± 0.100    0.01      "
            "0.400 ± 0.000    0.001\n") in control_part


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
        "source", "arm", "ulmfit_row", "seed", "base_lr", "test_accuracy")
    assert len(rows) == 1 + len(results.runs)
    assert rows[1] == ["digits", "probe", "Last", "0", "0.001", "0.5"]
    md = (tmp_path / "results.md").read_text()
    assert "Command: `python -m difflr demo --quick`" in md
    assert ("| discr | Full + discr | 0.800 ± 0.100 | 0.001 | 0.700 ± 0.173 "
            "| 0.01 | +0.100 ± 0.173 (2/3) |") in md
    assert "| full | Full | 0.700 ± 0.100 | 0.001 | 0.600 ± 0.100 | 0.01 | - |" in md
    assert f"{os.cpu_count()} cores" in md and keras.__version__ in md
    for png in ("accuracy_vs_lr.png", "learning_rates.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    umask = os.umask(0)
    os.umask(umask)
    for name in report.FILES:  # the permissions open() would give
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o666 & ~umask


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
    assert "needs scikit-learn" in err and "pip install keras-difflr[demo]" in err
    with pytest.raises(ImportError, match=r"pip install keras-difflr\[demo\]"):
        data.load()


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        _demo(["--help"], capsys)
    assert e.value.code == 0
    text = capsys.readouterr().out
    for option in ("--quick", "--full", "--out", "--seeds", "--lrs", "--arms",
                   "--no-control", "--shots", "--epochs", "KERAS_BACKEND",
                   "Table 7", "keras-difflr[demo]"):
        assert option in text
    for name in arms_lib.ARMS:
        assert name in text


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


def test_progress_names_each_rate():
    assert experiment.progress_scores((0.001, 0.01, 0.1), (0.8124, 0.845, 0.4)) == (
        "accuracy at lr 0.001: 0.812, 0.01: 0.845, 0.1: 0.400")


def test_header_says_quick_only_when_typed():
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert parser.parse_args([]).preset is None
    assert parser.parse_args(["--quick"]).preset == "quick"
    assert cli.config_from(parser.parse_args([])) == experiment.QUICK
    # The record of a run still names the preset that ran.
    assert "demo --quick" in cli.command_line(parser.parse_args([]))


def test_majority_class_floor():
    # The figure's floor: always answering the largest class (docs/demo.md).
    assert round(data.majority_share(5, 0), 3) == 0.402


def test_what_the_quick_run_can_show():
    text = cli.what_it_can_show(experiment.QUICK)
    assert "2 seeds" in text and "0.001, 0.01, 0.1" in text and "--full" in text
    assert "docs/demo.md" not in cli.what_it_can_show(experiment.FULL)
