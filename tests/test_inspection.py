"""difflr.summary and difflr.plot: the rates they show, against values by hand."""

import re
import sys

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display in tests

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import keras  # noqa: E402

import difflr  # noqa: E402

F32 = lambda x: float(np.float32(x))  # the base rate lives in a float32 variable


def _toy():
    """body (Dense 3->4), head (Dense 4->1): 16 + 5 parameters."""
    inputs = keras.Input((3,))
    body = keras.layers.Dense(4, name="body")
    head = keras.layers.Dense(1, name="head")
    return keras.Model(inputs, head(body(inputs)), name="toy"), body, head


def _deep():
    """A nested backbone (two Dense layers), a declaring layer and a head."""
    inner = keras.Input((3,))
    b1 = keras.layers.Dense(4, name="b1")
    b2 = keras.layers.Dense(4, name="b2")
    backbone = keras.Model(inner, b2(b1(inner)), name="backbone")
    inputs = keras.Input((3,))
    mid = difflr.layers.Dense(4, kernel_lr_multiplier=0.5, name="mid")
    norm = keras.layers.LayerNormalization(name="norm")
    head = keras.layers.Dense(2, name="head")
    model = keras.Model(inputs, head(norm(mid(backbone(inputs)))), name="deep")
    return model, backbone, b1, b2, mid, norm, head


def _capture(*args, **kwargs):
    lines = []
    assert difflr.summary(*args, print_fn=lines.append, **kwargs) is None
    return lines


def _cells(line):
    return re.split(r"\s{2,}", line.strip())


def test_preview_prints_the_exact_table_and_builds_nothing():
    model, body, head = _toy()
    opt = difflr.LRMultiplier(keras.optimizers.SGD(0.01),
                              {body: 0.1, "head/bias": 2.0},
                              decay_multipliers={"head/bias": 0.0})
    lines = _capture(model, opt, groups=[[body], [head]])
    assert lines == [
        "Model 'toy': LRMultiplier over SGD at step 0, base learning rate 0.01",
        "Preview: the optimizer is not built yet; rules resolved as `fit` will.",
        "=" * 69,
        "Group  Layer         Params  LR mult  Decay mult  Effective LR",
        "=" * 69,
        "0      body (Dense)  16      0.1      1           0.001",
        "       group 0: 2 variables, 16 params; frozen: 0 variables, 0 params",
        "-" * 69,
        "1      head (Dense)  5       1 / 2    1 / 0       0.01 / 0.02",
        "       group 1: 2 variables, 5 params; frozen: 0 variables, 0 params",
        "=" * 69,
        "Total: 2 groups, 4 variables, 21 params; frozen: 0 variables, 0 params",
        "Several values: in variable order; expand=True shows each variable "
        "and its rule.",
    ]
    assert not opt.built
    # The preview is what fit resolves.
    model.compile(optimizer=opt, loss="mse")
    opt.build(model.trainable_variables)
    assert [opt.multiplier_for(v) for v in model.trainable_variables] == [
        0.1, 0.1, 1.0, 2.0]
    assert _capture(model, groups=[[body], [head]])[1:] == lines[2:]


def test_expand_shows_every_variable_and_the_rule_that_decided_it():
    model, backbone, b1, b2, mid, norm, head = _deep()
    opt = difflr.LRMultiplier(
        keras.optimizers.AdamW(0.002, weight_decay=0.01),
        [(backbone, 0.1), (b2.bias, 0.0), ("head/.*", 3.0),
         (keras.layers.LayerNormalization, 0.2)],
        decay_multipliers={keras.layers.LayerNormalization: 0.0,
                           "b1/bias": 0.0},
    )
    lines = _capture(model, opt, expand=True,
                     groups=[[backbone], [mid, norm], [head]])
    base = F32(0.002)
    rows = [_cells(l) for l in lines if re.match(r"\d\s", l)]
    backbone_rule = "layer 'backbone' (Functional)"
    norm_rule = "layer class LayerNormalization"
    assert rows == [
        ["0", "b1/kernel", "(3, 4)", "12", "0.1", "1", f"{base * 0.1:.4g}",
         backbone_rule, "default"],
        ["0", "b1/bias", "(4,)", "4", "0.1", "0", f"{base * 0.1:.4g}",
         backbone_rule, "rule 'b1/bias'"],
        ["0", "b2/kernel", "(4, 4)", "16", "0.1", "1", f"{base * 0.1:.4g}",
         backbone_rule, "default"],
        ["0", "b2/bias", "(4,)", "4", "0", "1", "0",
         "variable 'b2/bias'", "default"],
        ["1", "mid/kernel", "(4, 4)", "16", "0.5", "1", f"{base * 0.5:.4g}",
         "layer declaration", "default"],
        ["1", "mid/bias", "(4,)", "4", "1", "1", f"{base:.4g}",
         "default", "default"],
        ["1", "norm/gamma", "(4,)", "4", "0.2", "0", f"{base * 0.2:.4g}",
         norm_rule, norm_rule],
        ["1", "norm/beta", "(4,)", "4", "0.2", "0", f"{base * 0.2:.4g}",
         norm_rule, norm_rule],
        ["2", "head/kernel", "(4, 2)", "8", "3", "1", f"{base * 3:.4g}",
         "rule 'head/.*'", "default"],
        ["2", "head/bias", "(2,)", "2", "3", "1", f"{base * 3:.4g}",
         "rule 'head/.*'", "default"],
    ]
    assert ("       group 0: 4 variables, 36 params; frozen: 1 variables, "
            "4 params") in lines
    assert lines[-1] == ("Total: 3 groups, 10 variables, 74 params; frozen: "
                         "1 variables, 4 params")

    # Per layer: a nested model is one row; many values show as a range.
    opt.set_multipliers([(b1.bias, 0.3), (b2.kernel, 0.4)])
    rows = [_cells(l) for l in _capture(model, opt, groups=[[backbone], [mid, norm], [head]])
            if re.match(r"\d\s", l)]
    assert rows[0] == ["0", "backbone (Functional)", "36",
                       "0 .. 0.4 (4 values)", "1 / 0",
                       f"0 .. {base * 0.4:.4g} (4 values)"]
    assert rows[1] == ["1", "mid (Dense)", "20", "0.5 / 1", "1",
                       f"{base * 0.5:.4g} / {base:.4g}"]


def test_after_fit_shows_the_multipliers_in_force_at_the_current_step():
    model, body, head = _toy()
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 1, 0.5)
    opt = difflr.LRMultiplier(keras.optimizers.SGD(schedule), {body: 0.1})
    model.compile(optimizer=opt, loss="mse")
    x, y = np.ones((4, 3), "float32"), np.zeros((4, 1), "float32")
    model.fit(x, y, batch_size=2, epochs=1, verbose=0)  # 2 steps
    opt.set_multipliers({body: 0.0, head: 4.0})
    lines = _capture(model, groups=[[body], [head]])
    base = F32(0.1) * 0.25  # the schedule at step 2
    assert lines[0] == ("Model 'toy': LRMultiplier over SGD at step 2, "
                        f"base learning rate {base:.4g}")
    assert not lines[1].startswith("Preview")
    rows = [_cells(l) for l in lines if re.match(r"\d\s", l)]
    assert rows == [["0", "body (Dense)", "16", "0", "1", "0"],
                    ["1", "head (Dense)", "5", "4", "1", f"{base * 4:.4g}"]]
    assert lines[-1] == ("Total: 2 groups, 4 variables, 21 params; frozen: "
                         "2 variables, 16 params")


def test_looks_through_loss_scale_optimizer():
    model, body, head = _toy()
    opt = difflr.LRMultiplier("sgd", {body: 0.5})
    lines = _capture(model, keras.optimizers.LossScaleOptimizer(opt),
                     groups=[[body], [head]])
    rows = [_cells(l) for l in lines if re.match(r"\d\s", l)]
    assert [r[3] for r in rows] == ["0.5", "1"]


def test_default_groups_are_difflr_groups():
    model, body, head = _toy()
    opt = difflr.LRMultiplier("sgd", {body: 0.5})
    expected = difflr.groups(model)
    assert [[layer.name for layer in g] for g in expected] == [["body"], ["head"]]
    assert _capture(model, opt) == _capture(model, opt, groups=expected)


def test_errors_name_the_culprit():
    model, body, head = _toy()
    opt = difflr.LRMultiplier("sgd", {body: 0.5})
    groups = [[body], [head]]
    with pytest.raises(ValueError, match="'toy' is not compiled"):
        difflr.summary(model, groups=groups)
    with pytest.raises(TypeError, match="needs the model to be compiled with "
                       "a difflr.LRMultiplier optimizer; its optimizer is SGD"):
        difflr.summary(model, keras.optimizers.SGD(), groups=groups)
    with pytest.raises(ValueError, match=r"leave out .*'head/kernel', "
                       "'head/bias'"):
        difflr.summary(model, opt, groups=[[body]])
    with pytest.raises(ValueError, match="'body/kernel' is in group 0 "
                       r"\(layer 'body'\) and again in group 1"):
        difflr.summary(model, opt, groups=[[body], [body, head]])
    stranger = keras.layers.Dense(2, name="stranger")
    stranger.build((None, 2))
    with pytest.raises(ValueError, match="'stranger' in group 1 .* not a "
                       "trainable variable of the model 'toy'"):
        difflr.summary(model, opt, groups=[[body], [head, stranger]])
    with pytest.raises(TypeError, match="the groups must be a list of groups"):
        difflr.summary(model, opt, groups=body)
    with pytest.raises(TypeError, match="group 1 must be a non-empty list of "
                       "Keras layers"):
        difflr.summary(model, opt, groups=[[body], ["head"]])
    with pytest.raises(TypeError, match="`print_fn` must be a callable"):
        difflr.summary(model, opt, groups=groups, print_fn="stdout")
    with pytest.raises(TypeError, match="difflr.summary needs a Keras model"):
        difflr.summary("toy", opt)
    # A rule fit would reject is rejected by the preview, which builds nothing.
    bad = difflr.LRMultiplier("sgd", {"backbone/.*": 0.1})
    with pytest.raises(ValueError, match="'backbone/.*' matches no trainable "
                       "variable"):
        difflr.summary(model, bad, groups=groups)
    assert not bad.built


def test_model_changed_after_build_is_an_error():
    model, body, head = _toy()
    opt = difflr.LRMultiplier("sgd")
    opt.build([head.kernel, head.bias])  # built for other variables
    with pytest.raises(ValueError, match="'body/kernel' is not one of the "
                       "trainable variables .* Compile the model again"):
        difflr.summary(model, opt, groups=[[body], [head]])


def _line(ax, label):
    (line,) = [l for l in ax.get_lines() if l.get_label() == label]
    return line


def test_plot_data_are_the_effective_rates():
    model, backbone, b1, b2, mid, norm, head = _deep()
    opt = difflr.LRMultiplier(
        keras.optimizers.Adam(0.01),
        [(backbone, 0.01), (b1.bias, 0.0), (head, 2.0)])
    fig = difflr.plot(model, opt, groups=[[backbone], [mid, norm], [head]])
    try:
        (ax,) = fig.axes
        base = F32(0.01)
        # Variable order: b1 kernel, bias; b2 kernel, bias; mid kernel
        # (declared 0.5), bias; norm gamma, beta; head kernel, bias.
        mults = [0.01, 0.0, 0.01, 0.01, 0.5, 1, 1, 1, 2, 2]
        line = _line(ax, "effective learning rate")
        np.testing.assert_array_equal(line.get_xdata(), np.arange(10))
        expected = np.array([base * m if m else np.nan for m in mults])
        np.testing.assert_array_equal(line.get_ydata(), expected)
        np.testing.assert_array_equal(
            _line(ax, "frozen (multiplier 0)").get_xdata(), [1])
        np.testing.assert_array_equal(
            _line(ax, f"base rate {base:.4g}").get_ydata(), [base, base])
        assert ax.get_yscale() == "log"
        assert [t.get_text() for t in ax.texts] == ["0", "1", "2"]
        assert len(ax.patches) == 2  # groups 0 and 2 are shaded
    finally:
        plt.close(fig)


def test_plot_draws_into_given_axes():
    model, body, head = _toy()
    opt = difflr.LRMultiplier("sgd", {body: 0.1})
    fig, ax = plt.subplots()
    try:
        assert difflr.plot(model, opt, ax=ax, groups=[body, head]) is fig
        np.testing.assert_array_equal(
            _line(ax, "effective learning rate").get_ydata(),
            [F32(0.01) * 0.1] * 2 + [F32(0.01)] * 2)
    finally:
        plt.close(fig)


def test_plot_without_matplotlib_names_the_extra(monkeypatch):
    model, body, head = _toy()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"`pip install matplotlib`"):
        difflr.plot(model, difflr.LRMultiplier("sgd"), groups=[body, head])


# Multipliers that follow a schedule (issue 26): shown at the current step,
# against the schedule evaluated on its own.

def _value(schedule, step):
    return float(np.asarray(keras.ops.convert_to_numpy(
        keras.ops.cast(schedule(step), "float32"))))


def _scheduled_toy():
    model, body, head = _toy()
    ramp = difflr.schedules.Ramp(start=2, steps=4, value=0.5)
    cosine = keras.optimizers.schedules.CosineDecay(1.0, 10)
    opt = difflr.LRMultiplier(keras.optimizers.AdamW(0.01, weight_decay=0.1),
                              {body: ramp, "head/bias": 0.0},
                              decay_multipliers={"head/kernel": cosine})
    return model, body, head, opt, ramp, cosine


def _expected_rows(ramp, cosine, step, bias_decay):
    base, r, c = F32(0.01), _value(ramp, step), _value(cosine, step)
    return [["0", "body (Dense)", "16", f"{r:.4g} (Ramp)", "1", f"{base * r:.4g}"],
            ["1", "head (Dense)", "5", "1 / 0", f"{c:.4g} (CosineDecay) / {bias_decay}",
             f"{base:.4g} / 0"]]


def test_summary_shows_each_schedule_at_the_current_step():
    model, body, head, opt, ramp, cosine = _scheduled_toy()
    lines = _capture(model, opt, groups=[[body], [head]])  # a preview, at step 0
    rows = [_cells(l) for l in lines if re.match(r"\d\s", l)]
    assert rows == _expected_rows(ramp, cosine, 0, bias_decay=1)
    # The body's schedule is 0 now but not frozen; the head's bias is.
    assert [l.strip() for l in lines if "group " in l and "frozen" in l] == [
        "group 0: 2 variables, 16 params; frozen: 0 variables, 0 params",
        "group 1: 2 variables, 5 params; frozen: 1 variables, 1 params"]
    assert lines[-1] == ("Schedules (class in parentheses): values at step 0; "
                         "`difflr.plot(model, steps=n)` draws the rates over n steps.")
    model.compile(optimizer=opt, loss="mse")
    x, y = np.ones((8, 3), "float32"), np.zeros((8, 1), "float32")
    model.fit(x, y, batch_size=2, epochs=1, verbose=0)  # 4 steps: half-way up
    lines = _capture(model, groups=[[body], [head]])
    assert lines[0].startswith("Model 'toy': LRMultiplier over AdamW at step 4,")
    rows = [_cells(l) for l in lines if re.match(r"\d\s", l)]
    # (The bias, frozen at build, has no state and no decay applied.)
    assert rows == _expected_rows(ramp, cosine, 4, bias_decay=0)
    assert rows[0][3] == "0.25 (Ramp)"
    # One row per variable: the same values.
    rows = [_cells(l) for l in _capture(model, groups=[[body], [head]], expand=True)
            if re.match(r"\d\s", l)]
    cosine_now = f"{_value(cosine, 4):.4g} (CosineDecay)"
    assert [r[4:6] for r in rows] == [["0.25 (Ramp)", "1"], ["0.25 (Ramp)", "1"],
                                      ["1", cosine_now], ["0", "0"]]


def test_plot_by_step_draws_each_group_over_the_steps():
    model, body, head = _toy()
    base_schedule = keras.optimizers.schedules.CosineDecay(0.01, 20)
    ramp = difflr.schedules.Ramp(start=3, steps=6, value=0.1)
    opt = difflr.LRMultiplier(keras.optimizers.SGD(base_schedule),
                              {body: ramp, "head/bias": 2.0})
    steps = range(0, 20, 3)
    fig = difflr.plot(model, opt, groups=[[body], [head]], steps=steps)
    try:
        (ax,) = fig.axes
        base = np.array([_value(base_schedule, t) for t in steps])
        expected = {
            "group 0 (Ramp)": base * [_value(ramp, t) for t in steps],
            "group 1: head/kernel": base,
            "group 1: head/bias": base * 2.0,
            "base rate": base,
        }
        for label, values in expected.items():
            line = _line(ax, label)
            np.testing.assert_array_equal(line.get_xdata(), list(steps))
            # (The plot evaluates a schedule on all the steps at once, whose
            # float32 math may differ from one step's in the last bits: near
            # the end of a cosine, 1 + cos(x) cancels them up to 1e-5.)
            np.testing.assert_allclose(line.get_ydata(), values, rtol=1e-5, err_msg=label)
        np.testing.assert_array_equal(_line(ax, "now (step 0)").get_xdata(), [0, 0])
        assert ax.get_yscale() == "log"
    finally:
        plt.close(fig)
    # An integer n: the steps 0 to n - 1, here after the optimizer is built.
    opt.build(model.trainable_variables)
    fig = difflr.plot(model, opt, groups=[[body], [head]], steps=12)
    try:
        line = _line(fig.axes[0], "group 0 (Ramp)")
        np.testing.assert_array_equal(line.get_xdata(), np.arange(12))
        np.testing.assert_allclose(
            line.get_ydata(), [_value(base_schedule, t) * _value(ramp, t)
                               for t in range(12)], rtol=1e-5)
    finally:
        plt.close(fig)


def test_plot_by_depth_marks_the_schedules_at_the_current_step():
    model, body, head, opt, ramp, cosine = _scheduled_toy()
    fig = difflr.plot(model, opt, groups=[[body], [head]])  # at step 0: the ramp at 0
    try:
        (ax,) = fig.axes
        # Not frozen, unlike the head's bias.
        np.testing.assert_array_equal(
            _line(ax, "schedule at 0 at this step").get_xdata(), [0, 1])
        np.testing.assert_array_equal(_line(ax, "frozen (multiplier 0)").get_xdata(), [3])
    finally:
        plt.close(fig)
    model.compile(optimizer=opt, loss="mse")
    model.fit(np.ones((6, 3), "float32"), np.zeros((6, 1), "float32"), batch_size=2,
              verbose=0)  # 3 steps
    fig = difflr.plot(model, groups=[[body], [head]])
    try:
        (ax,) = fig.axes
        line = _line(ax, "follows a schedule (value at step 3)")
        np.testing.assert_array_equal(line.get_xdata(), [0, 1])
        np.testing.assert_array_equal(line.get_ydata(), [F32(0.01) * _value(ramp, 3)] * 2)
        np.testing.assert_array_equal(
            _line(ax, "effective learning rate").get_ydata()[:2],
            [F32(0.01) * _value(ramp, 3)] * 2)
        assert "schedule at 0 at this step" not in [l.get_label() for l in ax.get_lines()]
    finally:
        plt.close(fig)


@pytest.mark.parametrize("steps,error,message", [
    (0, ValueError, r"`steps` must be an integer >= 1; received 0"),
    ([3, 1], ValueError, r"non-empty increasing sequence of steps.*\[3, 1\]"),
    ([], ValueError, r"non-empty increasing sequence"),
    ([0, -1], ValueError, r"each entry of steps` must be an integer >= 0"),
    ("10", TypeError, r"`steps` must be an integer \(the steps 0 to n - 1\) or a "
     "sequence of steps; received '10'"),
    (2.5, TypeError, r"received 2.5 of type float"),
])
def test_plot_refuses_bad_steps(steps, error, message):
    model, body, head = _toy()
    with pytest.raises(error, match=message):
        difflr.plot(model, difflr.LRMultiplier("sgd"), groups=[body, head], steps=steps)
