"""Distributed training scenarios, each run in a fresh process by
tests/test_distribution.py.

A backend fixes its device count when it initialises, so every scenario runs
in its own process with the environment the test sets (`XLA_FLAGS`,
`TF_CONFIG`, ...) and writes its numbers to OUT_DIR: final weights as .npz,
layouts and errors as JSON. The test compares them with single-device
training in the pytest process, built from the same pieces defined here.

    python _distributed_worker.py jax OUT_DIR
    python _distributed_worker.py tf_mirrored OUT_DIR
    python _distributed_worker.py tf_multi_worker OUT_DIR   (TF_CONFIG set)
    python _distributed_worker.py torch_ddp OUT_DIR RANK PORT
    python _distributed_worker.py jax_multiprocess OUT_DIR RANK PORT

No scenario calls `keras.utils.set_random_seed`: it imports TensorFlow on
every backend, which costs seconds per process. Initial weights come from
NumPy and training uses no randomness, so nothing else needs a seed.
"""

import json
import os
import sys
import traceback

import numpy as np

SAMPLES, FEATURES, OUTPUTS = 32, 6, 4
GLOBAL_BATCH = 8  # divisible by 4 devices and by 2 workers
STEPS_PER_EPOCH = SAMPLES // GLOBAL_BATCH
EPOCHS = 3
CHANGE_AT_EPOCH = 1  # set_multipliers({body: 0.5}) when this epoch begins
SAVE_AFTER_EPOCHS = 2  # checkpoints are taken here; training goes on to EPOCHS
SINGLE_CHECKPOINT = "single_device.keras"  # written by the test, loaded here
# From this Keras on, torch `model.fit` in a torch.distributed process group
# wraps the model in DistributedDataParallel (`Trainer._initialize_ddp`), so
# gradients are all-reduced; before it, difflr refuses such a fit.
TORCH_FIT_SYNCHRONISES_FROM = (3, 16, 0)


def torch_fit_synchronises():
    from difflr._keras_compat import keras_version

    return keras_version() >= TORCH_FIT_SYNCHRONISES_FROM


def data():
    rng = np.random.default_rng(1)
    return (rng.normal(size=(SAMPLES, FEATURES)).astype("float32"),
            rng.normal(size=(SAMPLES, OUTPUTS)).astype("float32"))


def build_model():
    """stem (frozen: no optimizer state) -> body (x0.1) -> head (x2.0)."""
    import keras

    inputs = keras.Input((FEATURES,))
    h = keras.layers.Dense(8, activation="tanh", name="stem")(inputs)
    h = keras.layers.Dense(8, activation="tanh", name="body")(h)
    outputs = keras.layers.Dense(OUTPUTS, name="head")(h)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32")
                       for w in model.get_weights()])
    return model


def make_optimizer(model, multipliers=True):
    import keras

    import difflr

    inner = keras.optimizers.AdamW(0.01, weight_decay=0.1)
    if not multipliers:
        return inner
    return difflr.LRMultiplier(
        inner,
        {model.get_layer("stem"): 0.0, model.get_layer("body"): 0.1,
         model.get_layer("head"): 2.0},
        decay_multipliers={"head/bias": 0.0},
    )


def change_multipliers(optimizer, model):
    """The change every scenario makes when epoch CHANGE_AT_EPOCH begins."""
    if hasattr(optimizer, "set_multipliers"):
        optimizer.set_multipliers({model.get_layer("body"): 0.5})


def make_paused_sgd(model):
    """SGD with momentum, whose velocity holds the rate: the pause scenario
    (`pause_body`) must clear the body's velocity on every replica or shard,
    or the body would coast on."""
    import keras

    import difflr

    return difflr.LRMultiplier(
        keras.optimizers.SGD(0.05, momentum=0.9),
        {model.get_layer("stem"): 0.0, model.get_layer("body"): 0.1,
         model.get_layer("head"): 2.0})


def pause_body(optimizer, model):
    """The change of the pause scenario: the body stops where it is."""
    optimizer.set_multipliers({model.get_layer("body"): 0.0})


def fit(model, epochs, initial_epoch=0, change=change_multipliers, rank=0, world=1):
    """Plain `model.fit` over the global batches, changing multipliers once.

    With `world` > 1 (one process of a multi-process run), the process fits
    its share of each global batch (`local_share`): the engine combines the
    shares into the global batch.
    """
    import keras

    class Change(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == CHANGE_AT_EPOCH:
                model = self.model  # on JAX this syncs the training state
                change(model.optimizer, model)

    x, y = local_share(rank, world)
    model.fit(x, y, batch_size=GLOBAL_BATCH // world, epochs=epochs,
              initial_epoch=initial_epoch, shuffle=False, verbose=0,
              callbacks=[Change()])


def train_and_pause(model, path, train=None):
    """The pause scenario: trains to CHANGE_AT_EPOCH and writes
    `path`_at_pause.npz, then trains on with the body paused (`pause_body`)
    and writes `path`.npz.

    `train(epochs, initial_epoch, change)` trains the model, `change` at
    CHANGE_AT_EPOCH; `fit` by default.
    """
    train = train or (lambda *args: fit(model, *args))
    train(CHANGE_AT_EPOCH, 0, pause_body)  # (ends before the change)
    save_weights(f"{path}_at_pause.npz", model)
    train(EPOCHS, CHANGE_AT_EPOCH, pause_body)
    save_weights(f"{path}.npz", model)


def local_batches(epochs, rank, world, initial_epoch=0):
    """(epoch, step, x, y): this worker's share of each global batch."""
    x, y = data()
    local = GLOBAL_BATCH // world
    for epoch in range(initial_epoch, epochs):
        for step in range(STEPS_PER_EPOCH):
            start = step * GLOBAL_BATCH + rank * local
            yield epoch, step, x[start:start + local], y[start:start + local]


def local_share(rank, world):
    """This worker's share of every global batch, in order: batches of
    GLOBAL_BATCH // world of it are its share of the global batches."""
    x, y = data()
    local = GLOBAL_BATCH // world
    rows = np.concatenate([
        np.arange(step * GLOBAL_BATCH + rank * local,
                  step * GLOBAL_BATCH + (rank + 1) * local)
        for step in range(STEPS_PER_EPOCH)])
    return x[rows], y[rows]


def weights(model):
    import keras

    return [keras.ops.convert_to_numpy(v) for v in model.weights]


def save_weights(path, model):
    np.savez(path, *weights(model))


def _write_json(out_dir, name, payload):
    with open(os.path.join(out_dir, name), "w") as f:
        json.dump(payload, f, indent=1)


def _run_scenarios(out_dir, prefix, scenarios):
    """Runs each scenario, recording its traceback instead of stopping, so a
    test can show what went wrong in the subprocess."""
    errors = {}
    for name, scenario in scenarios:
        try:
            scenario()
        except Exception:
            errors[name] = traceback.format_exc()
    _write_json(out_dir, f"{prefix}_errors.json", errors)


# JAX: keras.distribution over 4 host devices.


def _spec(variable):
    """The variable's PartitionSpec as JSON: one entry per dimension."""
    return [axis if axis is None or isinstance(axis, str) else list(axis)
            for axis in variable.value.sharding.spec]


def _jax_layouts(model, optimizer):
    """PartitionSpec of each model variable, of each optimizer slot (keyed by
    the variable it belongs to) and whether the multiplier vectors are fully
    replicated."""
    specs = {v.path: _spec(v) for v in model.trainable_variables}
    slots = {}
    for slot in optimizer.inner_optimizer.variables:
        for v in model.trainable_variables:
            # Keras names a slot `<variable path with _>_<slot name>`.
            if slot.name.startswith(v.path.replace("/", "_") + "_"):
                slots.setdefault(v.path, []).append(_spec(slot))
    own = [v for v in optimizer.variables
           if v.name in ("lr_multipliers", "decay_multipliers")]
    return {
        "variables": specs,
        "slots": slots,
        "multiplier_vectors": {v.name: bool(v.value.sharding.is_fully_replicated)
                               for v in own},
    }


def _model_parallel():
    import keras

    mesh = keras.distribution.DeviceMesh(
        (2, 2), ("batch", "model"), devices=keras.distribution.list_devices())
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map["stem/kernel"] = (None, "model")
    layout_map["stem/bias"] = ("model",)
    layout_map["body/kernel"] = (None, "model")
    layout_map["body/bias"] = ("model",)
    layout_map["head/kernel"] = ("model", None)
    return keras.distribution.ModelParallel(layout_map=layout_map,
                                            batch_dim_name="batch")


def run_jax(out_dir):
    import jax
    import keras

    assert len(jax.devices()) == 4, jax.devices()
    layouts = {}

    def data_parallel():
        keras.distribution.set_distribution(keras.distribution.DataParallel())
        model = build_model()
        model.compile(optimizer=make_optimizer(model), loss="mse")
        fit(model, EPOCHS)
        save_weights(os.path.join(out_dir, "jax_data_parallel.npz"), model)

    def model_parallel():
        keras.distribution.set_distribution(_model_parallel())
        model = build_model()
        model.compile(optimizer=make_optimizer(model), loss="mse")
        fit(model, SAVE_AFTER_EPOCHS)
        model.save(os.path.join(out_dir, "jax_model_parallel.keras"))
        fit(model, EPOCHS, initial_epoch=SAVE_AFTER_EPOCHS)
        layouts["trained"] = _jax_layouts(model, model.optimizer)
        save_weights(os.path.join(out_dir, "jax_model_parallel.npz"), model)

    def load_under_model_parallel():
        keras.distribution.set_distribution(_model_parallel())
        model = keras.models.load_model(os.path.join(out_dir, SINGLE_CHECKPOINT))
        layouts["loaded"] = _jax_layouts(model, model.optimizer)
        fit(model, EPOCHS, initial_epoch=SAVE_AFTER_EPOCHS)
        save_weights(os.path.join(out_dir, "jax_model_parallel_loaded.npz"), model)

    def paused_sgd_model_parallel():
        keras.distribution.set_distribution(_model_parallel())
        model = build_model()
        model.compile(optimizer=make_paused_sgd(model), loss="mse")
        train_and_pause(model, os.path.join(out_dir, "jax_paused_sgd"))

    _run_scenarios(out_dir, "jax", [
        ("data_parallel", data_parallel),
        ("model_parallel", model_parallel),
        ("load_under_model_parallel", load_under_model_parallel),
        ("paused_sgd_model_parallel", paused_sgd_model_parallel),
    ])
    _write_json(out_dir, "jax_layouts.json", layouts)


# TensorFlow: tf.distribute.


def _tf_kinds(optimizer):
    """The TF variable class behind each multiplier vector and slot."""
    return sorted({type(v.value).__name__ for v in optimizer.variables
                   if "iteration" not in v.name and "learning_rate" not in v.name})


def run_tf_mirrored(out_dir):
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    kinds = {}

    def trained():
        with strategy.scope():
            model = build_model()
            model.compile(optimizer=make_optimizer(model), loss="mse")
        fit(model, SAVE_AFTER_EPOCHS)
        model.save(os.path.join(out_dir, "tf_mirrored.keras"))
        fit(model, EPOCHS, initial_epoch=SAVE_AFTER_EPOCHS)
        kinds["trained"] = _tf_kinds(model.optimizer)
        save_weights(os.path.join(out_dir, "tf_mirrored.npz"), model)

    def loaded():
        with strategy.scope():
            model = keras.models.load_model(
                os.path.join(out_dir, SINGLE_CHECKPOINT))
        fit(model, EPOCHS, initial_epoch=SAVE_AFTER_EPOCHS)
        kinds["loaded"] = _tf_kinds(model.optimizer)
        save_weights(os.path.join(out_dir, "tf_mirrored_loaded.npz"), model)

    def paused_sgd():
        with strategy.scope():
            model = build_model()
            model.compile(optimizer=make_paused_sgd(model), loss="mse")
        train_and_pause(model, os.path.join(out_dir, "tf_mirrored_paused_sgd"))

    _run_scenarios(out_dir, "tf_mirrored", [("trained", trained),
                                            ("loaded", loaded),
                                            ("paused_sgd", paused_sgd)])
    _write_json(out_dir, "tf_mirrored_kinds.json", kinds)


def run_tf_multi_worker(out_dir):
    import tensorflow as tf

    rank = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    world = strategy.num_replicas_in_sync
    assert world == 2, world
    import keras

    with strategy.scope():
        model = build_model()
        optimizer = make_optimizer(model)
        optimizer.build(model.trainable_variables)

    @tf.function
    def step(x, y):
        def replica_step(x, y):
            with tf.GradientTape() as tape:
                per_example = tf.reduce_mean(
                    tf.square(model(x, training=True) - y), axis=-1)
                # Summed over the worker's share and divided by the global
                # batch: the all-reduced gradient is the global batch's mean.
                loss = tf.nn.compute_average_loss(
                    per_example, global_batch_size=GLOBAL_BATCH)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))

        strategy.run(replica_step, args=(x, y))

    for epoch, step_in_epoch, x, y in local_batches(EPOCHS, rank, world):
        if epoch == CHANGE_AT_EPOCH and step_in_epoch == 0:
            change_multipliers(optimizer, model)
        step(tf.constant(x), tf.constant(y))
    save_weights(os.path.join(out_dir, f"tf_multi_worker_{rank}.npz"), model)
    _write_json(out_dir, f"tf_multi_worker_kinds_{rank}.json",
                {"kinds": _tf_kinds(optimizer),
                 "iterations": int(keras.ops.convert_to_numpy(
                     optimizer.iterations))})

    # model.fit under MultiWorkerMirroredStrategy, with LRMultiplier and with
    # a plain Keras optimizer: Keras 3 fails in both (keras-team/keras#20585).
    x, y = data()
    fit_errors = {}
    for name, multipliers in (("lr_multiplier", True), ("plain", False)):
        try:
            with strategy.scope():
                other = build_model()
                other.compile(optimizer=make_optimizer(other, multipliers),
                              loss="mse")
            other.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False,
                      verbose=0)
            fit_errors[name] = None
        except Exception as e:
            first_line = (str(e).splitlines() or [""])[0]
            fit_errors[name] = f"{type(e).__name__}: {first_line}"
    _write_json(out_dir, f"tf_multi_worker_fit_{rank}.json", fit_errors)


# PyTorch: torch.distributed (gloo) and DistributedDataParallel.


def run_torch_ddp(out_dir, rank, port):
    import torch
    import torch.distributed as dist

    world = 2
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world)
    import keras

    results = {}

    def train(model, optimizer, epochs, initial_epoch=0, change=change_multipliers):
        """The custom loop difflr supports: DDP averages the gradients of the
        workers' shares, then every worker applies the same update."""
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        loss_fn = keras.losses.MeanSquaredError()
        for epoch, step, x, y in local_batches(epochs, rank, world,
                                               initial_epoch):
            if epoch == CHANGE_AT_EPOCH and step == 0:
                change(optimizer, model)
            model.zero_grad()
            loss = loss_fn(torch.from_numpy(y), ddp(torch.from_numpy(x)))
            loss.backward()
            with torch.no_grad():
                optimizer.apply([v.value.grad for v in model.trainable_variables],
                                model.trainable_variables)

    def trained():
        model = build_model()
        # Compiled only so that model.save keeps the optimizer.
        model.compile(optimizer=make_optimizer(model), loss="mse")
        model.optimizer.build(model.trainable_variables)
        train(model, model.optimizer, SAVE_AFTER_EPOCHS)
        if rank == 0:
            model.save(os.path.join(out_dir, "torch_ddp.keras"))
        train(model, model.optimizer, EPOCHS, SAVE_AFTER_EPOCHS)
        save_weights(os.path.join(out_dir, f"torch_ddp_{rank}.npz"), model)

    def loaded():
        model = keras.models.load_model(os.path.join(out_dir, SINGLE_CHECKPOINT))
        train(model, model.optimizer, EPOCHS, SAVE_AFTER_EPOCHS)
        save_weights(os.path.join(out_dir, f"torch_ddp_loaded_{rank}.npz"), model)

        if torch_fit_synchronises():
            return
        # Up to Keras 3.15, Keras's own fit on the torch backend never
        # synchronises gradients across processes: LRMultiplier refuses
        # instead of training copies.
        try:
            fit(model, EPOCHS + 1, initial_epoch=EPOCHS)
            results["fit_error"] = None
        except Exception as e:
            results["fit_error"] = f"{type(e).__name__}: {e}"

    def paused_sgd():
        model = build_model()
        optimizer = make_paused_sgd(model)
        optimizer.build(model.trainable_variables)
        train_and_pause(model, os.path.join(out_dir, f"torch_ddp_paused_sgd_{rank}"),
                        lambda *args: train(model, optimizer, *args))

    # Keras >= 3.16: `model.fit` itself, each process fitting its share of
    # every global batch; Keras wraps the model in DistributedDataParallel.

    def local_fit(model, *args, **kwargs):
        fit(model, *args, rank=rank, world=world, **kwargs)
        results.setdefault("ddp_model", []).append(
            type(getattr(model, "ddp_model", None)).__name__)

    def fit_trained():
        model = build_model()
        model.compile(optimizer=make_optimizer(model), loss="mse")
        local_fit(model, SAVE_AFTER_EPOCHS)
        if rank == 0:
            model.save(os.path.join(out_dir, "torch_fit.keras"))
        local_fit(model, EPOCHS, SAVE_AFTER_EPOCHS)
        save_weights(os.path.join(out_dir, f"torch_fit_{rank}.npz"), model)

    def fit_loaded():
        model = keras.models.load_model(os.path.join(out_dir, SINGLE_CHECKPOINT))
        local_fit(model, EPOCHS, SAVE_AFTER_EPOCHS)
        save_weights(os.path.join(out_dir, f"torch_fit_loaded_{rank}.npz"), model)

    def fit_paused_sgd():
        model = build_model()
        model.compile(optimizer=make_paused_sgd(model), loss="mse")
        train_and_pause(model, os.path.join(out_dir, f"torch_fit_paused_sgd_{rank}"),
                        lambda *args: local_fit(model, *args))

    def fit_data_parallel():
        # Over every process's CPU; the processes feed their own shares.
        distribution = keras.distribution.DataParallel()
        distribution.auto_shard_dataset = False
        keras.distribution.set_distribution(distribution)
        try:
            model = build_model()
            model.compile(optimizer=make_optimizer(model), loss="mse")
            local_fit(model, EPOCHS)
            save_weights(os.path.join(out_dir, f"torch_data_parallel_{rank}.npz"),
                         model)
        finally:
            keras.distribution.set_distribution(None)

    def fit_model_parallel():
        # keras.distribution.ModelParallel: variables are DTensors over a
        # (1, 2) mesh, the kernels split over the two processes (no DDP
        # wrap); the batch axis has one entry, so each process feeds the
        # global batches.
        mesh = keras.distribution.DeviceMesh(
            (1, 2), ("batch", "model"), devices=keras.distribution.list_devices())
        layout_map = keras.distribution.LayoutMap(mesh)
        layout_map["body/kernel"] = (None, "model")
        layout_map["head/kernel"] = ("model", None)
        distribution = keras.distribution.ModelParallel(layout_map=layout_map,
                                                        batch_dim_name="batch")
        distribution.auto_shard_dataset = False
        keras.distribution.set_distribution(distribution)
        try:
            model = build_model()
            model.compile(optimizer=make_optimizer(model), loss="mse")
            fit(model, EPOCHS)
            full = [v.value.full_tensor() if hasattr(v.value, "full_tensor")
                    else v.value for v in model.weights]
            np.savez(os.path.join(out_dir, f"torch_model_parallel_{rank}.npz"),
                     *[t.detach().cpu().numpy() for t in full])
        finally:
            keras.distribution.set_distribution(None)

    scenarios = [("trained", trained), ("loaded", loaded), ("paused_sgd", paused_sgd)]
    if torch_fit_synchronises():
        scenarios += [("fit_trained", fit_trained), ("fit_loaded", fit_loaded),
                      ("fit_paused_sgd", fit_paused_sgd),
                      ("fit_data_parallel", fit_data_parallel),
                      ("fit_model_parallel", fit_model_parallel)]
    _run_scenarios(out_dir, f"torch_ddp_{rank}", scenarios)
    _write_json(out_dir, f"torch_ddp_fit_{rank}.json", results)
    dist.destroy_process_group()


# JAX: several processes (jax.distributed), each with 2 host devices.


def run_jax_multiprocess(out_dir, rank, port):
    import keras

    world = 2
    keras.distribution.initialize(job_addresses=f"127.0.0.1:{port}",
                                  num_processes=world, process_id=rank)
    import jax

    assert jax.process_count() == world, jax.process_count()
    assert jax.local_device_count() == 2 and jax.device_count() == 4, jax.devices()
    info = {}

    def data_parallel():
        # DataParallel over the 4 devices of both processes; each process
        # feeds its share of every global batch.
        distribution = keras.distribution.DataParallel(
            devices=keras.distribution.list_devices())
        distribution.auto_shard_dataset = False
        keras.distribution.set_distribution(distribution)
        return distribution

    def local_fit(model, *args, **kwargs):
        fit(model, *args, rank=rank, world=world, **kwargs)

    def trained():
        distribution = data_parallel()
        info["mesh_shape"] = list(distribution.device_mesh.shape)
        model = build_model()
        model.compile(optimizer=make_optimizer(model), loss="mse")
        local_fit(model, SAVE_AFTER_EPOCHS)
        # Every process must call model.save: Keras creates a variable there
        # (a reference `Optimizer(1.0)`, `saving_lib.get_attr_skipset`),
        # which under a distribution is a `device_put` over the devices of
        # all processes, a collective. Called by process 0 alone, it fails
        # with "passed to device_put is not the same on each process" (a
        # plain Keras optimizer too). Every variable is replicated, so each
        # process writes the whole checkpoint: process 0 the one kept.
        name = "jax_multiprocess.keras" if rank == 0 else f"scratch_{rank}.keras"
        model.save(os.path.join(out_dir, name))
        if rank != 0:
            os.remove(os.path.join(out_dir, name))
        local_fit(model, EPOCHS, SAVE_AFTER_EPOCHS)
        # The processes of the devices each variable and slot lives on.
        info["processes"] = sorted({
            device.process_index
            for v in model.weights + model.optimizer.variables
            for device in v.value.sharding.device_set})
        # Replicated, so every process can read all of each variable.
        save_weights(os.path.join(out_dir, f"jax_multiprocess_{rank}.npz"), model)

    def paused_sgd():
        data_parallel()
        model = build_model()
        model.compile(optimizer=make_paused_sgd(model), loss="mse")
        train_and_pause(model,
                        os.path.join(out_dir, f"jax_multiprocess_paused_sgd_{rank}"),
                        lambda *args: local_fit(model, *args))

    _run_scenarios(out_dir, f"jax_multiprocess_{rank}",
                   [("trained", trained), ("paused_sgd", paused_sgd)])
    _write_json(out_dir, f"jax_multiprocess_info_{rank}.json", info)
    jax.distributed.shutdown()


if __name__ == "__main__":
    scenario, out = sys.argv[1], sys.argv[2]
    if scenario == "jax":
        run_jax(out)
    elif scenario == "tf_mirrored":
        run_tf_mirrored(out)
    elif scenario == "tf_multi_worker":
        run_tf_multi_worker(out)
    elif scenario == "torch_ddp":
        run_torch_ddp(out, int(sys.argv[3]), int(sys.argv[4]))
        # Everything is written and the process group destroyed. About one
        # run in ten, a gloo process then aborted in the interpreter's
        # teardown ("terminate called without an active exception": a C++
        # thread of torch's still joinable at exit), after all its scenarios
        # had passed: skip that teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    elif scenario == "jax_multiprocess":
        run_jax_multiprocess(out, int(sys.argv[3]), int(sys.argv[4]))
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
