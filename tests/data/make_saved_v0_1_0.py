"""Writes `saved_v0_1_0.keras` and `saved_v0_1_0.json`: a model saved with an
`LRMultiplier` by difflr 0.1.0 as it was before its internals were
restructured (commit 8320ca4), so that `tests/test_saving.py` can check that
such files keep loading.

Run from a checkout of that commit:

    git worktree add /tmp/old 8320ca4
    PYTHONPATH=/tmp/old KERAS_BACKEND=jax python tests/data/make_saved_v0_1_0.py

with the oldest supported Keras (3.12.0), so that every supported Keras loads
the file (one saved by Keras 3.15 has a `Dense` config that 3.12 refuses),
on JAX (Keras 3.16 loads an optimizer saved on torch as the torch class on
every backend).

The model: Dense layers under AdamW with layer rules (saved resolved), a
decay multiplier, and one layer paused after the build (multiplier 0, its
optimizer state kept and saved). The JSON holds what was saved, and what
that commit's code does when it loads the file and trains one more epoch.
"""

import json
import pathlib

import keras
import numpy as np

import difflr

HERE = pathlib.Path(__file__).resolve().parent


def main():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    body = keras.layers.Dense(6, activation="tanh", name="body")
    middle = keras.layers.Dense(5, activation="tanh", name="middle")
    head = keras.layers.Dense(2, name="head")
    model = keras.Model(inputs, head(middle(body(inputs))), name="saved")
    opt = difflr.LRMultiplier(
        keras.optimizers.AdamW(0.01, weight_decay=0.05),
        {body: 0.1, "head/bias": 2.0}, decay_multipliers={middle: 0.5})
    model.compile(optimizer=opt, loss="mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype("float32")
    y = rng.normal(size=(16, 2)).astype("float32")
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    opt.set_multipliers({middle: 0.0})  # paused after the build
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    model.save(HERE / "saved_v0_1_0.keras")
    expected = {
        "difflr": difflr.__version__,
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "x": x.tolist(),
        "y": y.tolist(),
        "weights": {v.path: keras.ops.convert_to_numpy(v).tolist()
                    for v in model.weights},
        "optimizer_variables": [keras.ops.convert_to_numpy(v).tolist()
                                for v in opt.variables],
        "multipliers": {v.path: opt.multiplier_for(v) for v in model.trainable_variables},
        "decay_multipliers": {v.path: opt.decay_multiplier_for(v)
                              for v in model.trainable_variables},
        "config": opt.get_config()["saved_resolution"],
    }
    # What the code of that commit does when it loads the file and trains on.
    loaded = keras.models.load_model(HERE / "saved_v0_1_0.keras")
    loaded.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    expected["weights_after_one_more_epoch"] = {
        v.path: keras.ops.convert_to_numpy(v).tolist() for v in loaded.weights}
    (HERE / "saved_v0_1_0.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
