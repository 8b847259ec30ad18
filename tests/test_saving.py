"""model.save / keras.models.load_model round trips, with no custom_objects."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import keras

import difflr
from conftest import assert_close, to_numpy


def _model():
    inputs = keras.Input((4,))
    body = keras.Sequential([keras.layers.Dense(6, activation="tanh"),
                             keras.layers.Dense(5, activation="tanh")], name="body")
    outputs = keras.layers.Dense(2, name="head")(body(inputs))
    return keras.Model(inputs, outputs), body


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(32, 4)).astype("float32"), rng.normal(size=(32, 2)).astype("float32")


def _compiled(body_rule_value=0.1):
    model, body = _model()
    opt = difflr.LRMultiplier(
        keras.optimizers.AdamW(0.01, weight_decay=0.05),
        # objects and callables: only their resolution can be saved
        [(body.layers[0], 0.0), (body, body_rule_value),
         (lambda v: 2.0 if v.path.endswith("head/bias") else None, None)],
        decay_multipliers={keras.layers.Dense: 0.5},
    )
    model.compile(optimizer=opt, loss="mse")
    return model, opt


def test_continuing_after_load_equals_an_uninterrupted_run(tmp_path):
    x, y = _data()
    keras.utils.set_random_seed(3)
    model, opt = _compiled()
    initial = [to_numpy(v).copy() for v in model.weights]
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)

    loaded = keras.models.load_model(path)  # no custom_objects
    assert isinstance(loaded.optimizer, difflr.LRMultiplier)
    assert [loaded.optimizer.multiplier_for(v) for v in loaded.trainable_variables] == \
        [opt.multiplier_for(v) for v in model.trainable_variables]
    assert [loaded.optimizer.decay_multiplier_for(v) for v in loaded.trainable_variables] == \
        [opt.decay_multiplier_for(v) for v in model.trainable_variables]
    assert int(to_numpy(loaded.optimizer.iterations)) == 8
    loaded.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(loaded.weights, model.weights):
        assert_close(a, b, rtol=1e-5, atol=1e-6, what=b.path)
    # The frozen layer never moved and holds no optimizer state after loading.
    for v, v0 in zip(loaded.get_layer("body").layers[0].weights, initial[:2]):
        np.testing.assert_array_equal(to_numpy(v), v0)
    assert len(loaded.optimizer.variables) == len(opt.variables)


def test_set_multipliers_changes_survive_saving(tmp_path):
    x, y = _data()
    model, opt = _compiled()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    opt.set_multipliers({model.get_layer("head"): 3.0})
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    head = loaded.get_layer("head")
    assert loaded.optimizer.multiplier_for(head.kernel) == 3.0
    # New rules on a loaded optimizer apply on top of the saved resolution.
    loaded.optimizer.set_multipliers({head: 0.25})
    assert loaded.optimizer.multiplier_for(head.bias) == 0.25
    assert loaded.optimizer.multiplier_for(loaded.trainable_variables[2]) == 0.1


def test_a_variable_paused_after_build_keeps_its_saved_state(tmp_path):
    """Paused by set_multipliers (as GradualUnfreezing does), a variable still
    has optimizer state: the loaded optimizer must restore it, not drop it,
    and unfreezing it after loading must continue as an uninterrupted run."""
    x, y = _data()
    model, opt = _compiled()
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    body = model.get_layer("body")
    opt.set_multipliers({body: 0.0})
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert len(loaded.optimizer.variables) == len(opt.variables)
    for a, b in zip(loaded.optimizer.variables, opt.variables):
        assert_close(a, b, rtol=0, atol=0, what=b.path)
    for m, o in ((model, opt), (loaded, loaded.optimizer)):
        o.set_multipliers({m.get_layer("body").layers[1]: 0.3})
        m.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(loaded.weights, model.weights):
        assert_close(a, b, rtol=1e-5, atol=1e-6, what=b.path)


def test_unbuilt_optimizer_with_string_rules_saves_its_rules(tmp_path):
    model, body = _model()
    opt = difflr.LRMultiplier("adam", {"head/.*": 2.0},
                              decay_multipliers={keras.layers.Dense: 0.0})
    model.compile(optimizer=opt, loss="mse")
    config = opt.get_config()
    assert config["multipliers"] == [["head/.*", 2.0]]
    assert config["decay_multipliers"] == [[{"layer_class": "keras.layers.Dense"}, 0.0]]
    clone = difflr.LRMultiplier.from_config(config)
    clone.build(model.trainable_variables)
    head = model.get_layer("head")
    assert clone.multiplier_for(head.kernel) == 2.0
    assert clone.decay_multiplier_for(head.kernel) == 0.0


def test_unbuilt_optimizer_with_object_rules_refuses_to_save_half():
    model, body = _model()
    opt = difflr.LRMultiplier("adam", {body: 0.1})
    with pytest.raises(ValueError, match="not built yet"):
        opt.get_config()


def test_loading_onto_a_different_model_raises(tmp_path):
    model, opt = _compiled()
    model.fit(*_data(), batch_size=8, epochs=1, verbose=0)
    config = keras.saving.serialize_keras_object(opt)
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    restored = keras.saving.deserialize_keras_object(config)
    with pytest.raises(ValueError, match="Load it with the model it was saved with"):
        restored.build(other.trainable_variables)


def test_a_fresh_process_loads_with_only_import_difflr(tmp_path):
    x, y = _data()
    model, opt = _compiled()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    script = textwrap.dedent(f"""
        import keras, difflr
        m = keras.models.load_model({path!r})
        print(type(m.optimizer).__name__,
              [m.optimizer.multiplier_for(v) for v in m.trainable_variables])
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True,
                         text=True, env=os.environ.copy(), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    expected = [opt.multiplier_for(v) for v in model.trainable_variables]
    assert out.stdout.strip().splitlines()[-1] == f"LRMultiplier {expected}"


def test_a_file_saved_before_the_restructuring_loads_and_trains_on():
    """`tests/data/saved_v0_1_0.keras` was saved by difflr 0.1.0 before its
    internals moved (see `make_saved_v0_1_0.py`): its weights, optimizer
    state and multipliers load as saved, and training goes on as that
    version's own code went on (the paused layer stays put)."""
    import json
    import pathlib

    data = pathlib.Path(__file__).resolve().parent / "data"
    expected = json.loads((data / "saved_v0_1_0.json").read_text())
    model = keras.models.load_model(data / "saved_v0_1_0.keras")
    opt = model.optimizer
    for v in model.weights:
        np.testing.assert_array_equal(to_numpy(v), np.float32(expected["weights"][v.path]))
    # It holds no progress of gradual unfreezing (listed last): it stays 0.
    saved_count = len(expected["optimizer_variables"])
    assert [v.name for v in opt.variables[saved_count:]] == [
        "unfreezing_per_variable", "unfreezing_progress"]
    assert all(not to_numpy(v).any() for v in opt.variables[saved_count:])
    for v, value in zip(opt.variables, expected["optimizer_variables"]):
        np.testing.assert_array_equal(to_numpy(v), np.asarray(value, to_numpy(v).dtype))
    for v in model.trainable_variables:
        assert opt.multiplier_for(v) == expected["multipliers"][v.path]
        assert opt.decay_multiplier_for(v) == expected["decay_multipliers"][v.path]
    # (paths are no longer saved: a load renames the variables)
    saved = {k: v for k, v in expected["config"].items() if k != "paths"}
    assert opt.get_config()["saved_resolution"] == saved
    x, y = np.float32(expected["x"]), np.float32(expected["y"])
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    after = expected["weights_after_one_more_epoch"]
    for v in model.weights:
        if v.path.startswith("middle/"):
            np.testing.assert_array_equal(to_numpy(v), np.float32(after[v.path]))
        assert_close(v, np.float32(after[v.path]), what=v.path)


def test_a_file_saved_on_torch_loads_and_trains_on_the_other_backends(tmp_path):
    """The wrapped optimizer of a file saved on torch is serialized as the torch
    backend's class; it is rebuilt for the backend that loads it (Keras 3.16
    would load the torch class on JAX and TensorFlow, where it cannot run).
    The loaded model then trains as one compiled here from the same weights."""
    path = tmp_path / "torch.keras"
    code = textwrap.dedent(f"""
        import numpy as np, keras, difflr
        keras.utils.set_random_seed(0)
        inputs = keras.Input((4,))
        body = keras.layers.Dense(3, name="body")
        model = keras.Model(inputs, keras.layers.Dense(2, name="head")(body(inputs)))
        model.compile(difflr.LRMultiplier(keras.optimizers.AdamW(0.01), {{body: 0.5}}), "mse")
        model.fit(np.ones((8, 4)), np.ones((8, 2)), verbose=0)
        model.save({str(path)!r})
    """)
    env = dict(os.environ, KERAS_BACKEND="torch", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(__file__))]
                                          + sys.path))
    subprocess.run([sys.executable, "-c", code], check=True, env=env,
                   capture_output=True, text=True)
    loaded = keras.models.load_model(path)
    reference = keras.models.load_model(path, compile=False)
    body = reference.get_layer("body")
    reference.compile(difflr.LRMultiplier(keras.optimizers.AdamW(0.01), {body: 0.5}), "mse")
    reference.optimizer.build(reference.trainable_variables)
    reference.optimizer.set_weights([to_numpy(v) for v in loaded.optimizer.variables])
    x, y = _data()
    for m in (loaded, reference):
        m.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(loaded.trainable_variables, reference.trainable_variables):
        assert_close(a, b, what=a.path)
