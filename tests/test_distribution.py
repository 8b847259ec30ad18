"""LRMultiplier under the distribution engines, against one-device training.

A backend fixes its device count when it initialises, so each distributed run
happens in a subprocess (tests/_distributed_worker.py) with its own
environment: 4 host devices for JAX (`XLA_FLAGS`) in one process, or 2
processes of 2 devices each (`jax.distributed`), 2 logical CPUs or 2 worker
processes (`TF_CONFIG`) for TensorFlow, 2 gloo processes for torch (a custom
loop over DistributedDataParallel; from Keras 3.16 also `model.fit`, which
wraps the model in it, and `keras.distribution.DataParallel`). Each process of
a multi-process run feeds its share of every global batch. The subprocesses
write their final weights; this process trains the same model on one device,
on the same global batches, and compares.

Every scenario trains `stem` at 0 (frozen at build, so without optimizer
state), `body` at 0.1 and `head` at 2.0 with AdamW, `head/bias` without weight
decay, and changes `body` to 0.5 after the first epoch; the pause scenario
trains with SGD and momentum and pauses `body` (multiplier 0) there, which
must clear its velocity on every replica or shard. The single-device path
itself is proven elsewhere against per-variable copies (test_contract.py,
test_fit.py); here a run without multipliers shows the comparison would
notice multipliers that were lost on the way.

Each backend's scenarios run only in that backend's pass of run_tests.py.
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import keras

import difflr
import _distributed_worker as worker
from conftest import assert_close, backend

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "_distributed_worker.py")
TIMEOUT = 300  # seconds for one launch; the machine is shared and slow


def _only(name):
    return pytest.mark.skipif(backend() != name,
                              reason=f"runs in the {name} pass")


_TORCH_FIT_SYNCHRONISES = worker.torch_fit_synchronises()
_SYNCHRONISED_FROM = ".".join(map(str, worker.TORCH_FIT_SYNCHRONISES_FROM))
# Up to Keras 3.15 torch `model.fit` in a process group trains unsynchronised
# copies, and difflr refuses it; from 3.16 Keras wraps the model in
# DistributedDataParallel and the fit is tested against one device instead.
_while_torch_fit_is_refused = pytest.mark.skipif(
    _TORCH_FIT_SYNCHRONISES,
    reason=f"Keras >= {_SYNCHRONISED_FROM} synchronises torch fit across processes: "
           "test_torch_model_fit_over_two_processes_equals_one_device covers it")
_once_torch_fit_synchronises = pytest.mark.skipif(
    not _TORCH_FIT_SYNCHRONISES,
    reason=f"torch fit in a process group is refused before Keras {_SYNCHRONISED_FROM} "
           "(test_torch_model_fit_in_a_multi_process_group_raises)")


# Running the subprocesses.


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
               JAX_PLATFORMS="cpu", GLOO_SOCKET_IFNAME="lo")
    env.pop("TF_CONFIG", None)
    # Not the pass's JAX compilation cache (run_tests.py): workers at once
    # would share it, and JAX writes its entries unlocked.
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env.update(extra)
    return env


def _launch(out_dir, runs):
    """Runs `[(args, env), ...]` at once and waits for all of them.

    If one fails the others are killed at once (they would wait for it
    forever in a collective), and so is everything after TIMEOUT. Output
    goes to files, so that no pipe can fill up and block a process.
    """
    procs = []
    try:
        for i, (args, env) in enumerate(runs):
            log = open(os.path.join(out_dir, f"log_{args[0]}_{i}.txt"), "w")
            procs.append((subprocess.Popen(
                [sys.executable, WORKER, args[0], str(out_dir), *args[1:]],
                env=env, stdout=log, stderr=subprocess.STDOUT), log))
        deadline = time.monotonic() + TIMEOUT
        while any(p.poll() is None for p, _ in procs):
            failed = [p for p, _ in procs if p.poll() not in (None, 0)]
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            log.close()
    for p, log in procs:
        if p.returncode != 0:
            with open(log.name) as f:
                tail = f.read()[-4000:]
            pytest.fail(f"{p.args[2:4]} exited with {p.returncode}:\n{tail}")


def _load_json(out_dir, name):
    with open(os.path.join(out_dir, name)) as f:
        return json.load(f)


def _load_weights(out_dir, name):
    with np.load(os.path.join(out_dir, name)) as f:
        return [f[f"arr_{i}"] for i in range(len(f.files))]


def _check_ran(out_dir, prefix, scenario):
    error = _load_json(out_dir, f"{prefix}_errors.json").get(scenario)
    assert error is None, f"{prefix} {scenario} failed in the subprocess:\n{error}"


# The single-device reference, in this process.


def _one_device(save_to=None, multipliers=True):
    """Trains on one device over the global batches; optionally saves the
    model where the distributed runs take their checkpoints."""
    model = worker.build_model()
    model.compile(optimizer=worker.make_optimizer(model, multipliers), loss="mse")
    worker.fit(model, worker.SAVE_AFTER_EPOCHS)
    if save_to is not None:
        model.save(save_to)
    worker.fit(model, worker.EPOCHS, initial_epoch=worker.SAVE_AFTER_EPOCHS)
    return worker.weights(model)


def _continue_on_one_device(path):
    model = keras.models.load_model(path)
    optimizer = model.optimizer
    body, head = model.get_layer("body"), model.get_layer("head")
    # The checkpoint holds the multipliers in force when it was taken.
    assert optimizer.multiplier_for(model.get_layer("stem").kernel) == 0.0
    assert optimizer.multiplier_for(body.kernel) == 0.5
    assert optimizer.multiplier_for(head.kernel) == 2.0
    assert optimizer.decay_multiplier_for(head.bias) == 0.0
    expected_steps = worker.SAVE_AFTER_EPOCHS * worker.STEPS_PER_EPOCH
    assert int(keras.ops.convert_to_numpy(optimizer.iterations)) == expected_steps
    worker.fit(model, worker.EPOCHS, initial_epoch=worker.SAVE_AFTER_EPOCHS)
    return worker.weights(model)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Single-device final weights, a checkpoint taken on one device after
    SAVE_AFTER_EPOCHS, and the same training without multipliers."""
    out = tmp_path_factory.mktemp("distribution")
    weights = _one_device(save_to=os.path.join(out, worker.SINGLE_CHECKPOINT))
    plain = _one_device(multipliers=False)
    keras.backend.clear_session()
    return {"out": out, "weights": weights, "plain": plain}


@pytest.fixture(scope="module")
def paused_sgd_reference(tmp_path_factory):
    """The pause scenario on one device: final weights, and the weights when
    the pause began."""
    out = tmp_path_factory.mktemp("paused_sgd")
    model = worker.build_model()
    model.compile(optimizer=worker.make_paused_sgd(model), loss="mse")
    worker.train_and_pause(model, os.path.join(out, "one_device"))
    body = [i for i, v in enumerate(model.weights) if v.path.startswith("body/")]
    keras.backend.clear_session()
    return {"weights": _load_weights(out, "one_device.npz"),
            "at_pause": _load_weights(out, "one_device_at_pause.npz"), "body": body}


def _assert_paused_like_one_device(out_dir, name, reference, what):
    """The run's final weights (`name`.npz) match one device's, and its body
    ends exactly where it was when the pause began (`name`_at_pause.npz)."""
    actual = _load_weights(out_dir, f"{name}.npz")
    at_pause = _load_weights(out_dir, f"{name}_at_pause.npz")
    assert len(actual) == len(reference["weights"])
    for a, r in zip(actual, reference["weights"]):
        assert_close(a, r, rtol=1e-5, atol=1e-6, what=what)
    assert len(reference["body"]) == 2
    for i in reference["body"]:
        # A velocity left over would have carried the body on (by 0.9 of its
        # last step, then 0.81, ...).
        np.testing.assert_array_equal(actual[i], at_pause[i], err_msg=what)
        np.testing.assert_array_equal(reference["weights"][i], reference["at_pause"][i])


def _assert_equals_one_device(actual, reference, what):
    assert len(actual) == len(reference["weights"])
    for a, r, p in zip(actual, reference["weights"], reference["plain"]):
        assert_close(a, r, rtol=1e-5, atol=1e-6, what=what)
    # The comparison can tell: without multipliers training ends elsewhere.
    moved = max(np.abs(r - p).max() for r, p in zip(reference["weights"],
                                                    reference["plain"]))
    assert moved > 1e-2, moved


# JAX: keras.distribution on 4 host devices.


@pytest.fixture(scope="module")
def jax_run(reference):
    out = reference["out"]
    flags = os.environ.get("XLA_FLAGS", "")
    env = _env(XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count=4".strip())
    _launch(out, [(["jax"], env)])
    return out


@_only("jax")
def test_jax_data_parallel_equals_one_device(reference, jax_run):
    _check_ran(jax_run, "jax", "data_parallel")
    _assert_equals_one_device(_load_weights(jax_run, "jax_data_parallel.npz"),
                              reference, "DataParallel on 4 devices")


def _assert_state_follows_layouts(layouts):
    variables, slots = layouts["variables"], layouts["slots"]
    assert variables["body/kernel"] == [None, "model"]
    assert variables["head/kernel"] == ["model", None]
    assert "model" not in variables["head/bias"]  # replicated
    # AdamW's two slots of each trained variable are laid out like it; the
    # stem, frozen when the optimizer was built, has none.
    assert sorted(slots) == ["body/bias", "body/kernel", "head/bias", "head/kernel"]
    for path, specs in slots.items():
        assert specs == [variables[path]] * 2, path
    assert layouts["multiplier_vectors"] == {"lr_multipliers": True,
                                             "decay_multipliers": True}


@_only("jax")
def test_jax_model_parallel_equals_one_device_with_state_laid_out_like_variables(
        reference, jax_run):
    _check_ran(jax_run, "jax", "model_parallel")
    _assert_equals_one_device(_load_weights(jax_run, "jax_model_parallel.npz"),
                              reference, "ModelParallel on a 2x2 mesh")
    _assert_state_follows_layouts(_load_json(jax_run, "jax_layouts.json")["trained"])


@_only("jax")
def test_jax_checkpoint_from_model_parallel_continues_on_one_device(
        reference, jax_run):
    _check_ran(jax_run, "jax", "model_parallel")
    weights = _continue_on_one_device(os.path.join(jax_run, "jax_model_parallel.keras"))
    _assert_equals_one_device(weights, reference,
                              "saved under ModelParallel, continued on one device")


@_only("jax")
def test_jax_checkpoint_from_one_device_continues_under_model_parallel(
        reference, jax_run):
    _check_ran(jax_run, "jax", "load_under_model_parallel")
    _assert_equals_one_device(
        _load_weights(jax_run, "jax_model_parallel_loaded.npz"), reference,
        "saved on one device, continued under ModelParallel")
    _assert_state_follows_layouts(_load_json(jax_run, "jax_layouts.json")["loaded"])


@_only("jax")
def test_jax_pause_clears_the_sgd_velocity_of_sharded_variables(
        paused_sgd_reference, jax_run):
    _check_ran(jax_run, "jax", "paused_sgd_model_parallel")
    _assert_paused_like_one_device(jax_run, "jax_paused_sgd", paused_sgd_reference,
                                   "SGD, body paused, ModelParallel on a 2x2 mesh")


# JAX: keras.distribution over 2 processes (jax.distributed) x 2 host devices.


@pytest.fixture(scope="module")
def jax_multiprocess_run(reference):
    out = reference["out"]
    port = str(_free_port())
    flags = os.environ.get("XLA_FLAGS", "")
    env = _env(XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count=2".strip())
    _launch(out, [(["jax_multiprocess", str(rank), port], env) for rank in range(2)])
    return out


@_only("jax")
def test_jax_data_parallel_over_two_processes_equals_one_device(
        reference, jax_multiprocess_run):
    for rank in range(2):
        _check_ran(jax_multiprocess_run, f"jax_multiprocess_{rank}", "trained")
        info = _load_json(jax_multiprocess_run, f"jax_multiprocess_info_{rank}.json")
        # One mesh of the 4 devices; variables and optimizer state on both
        # processes' devices.
        assert info == {"mesh_shape": [4], "processes": [0, 1]}, info
        _assert_equals_one_device(
            _load_weights(jax_multiprocess_run, f"jax_multiprocess_{rank}.npz"),
            reference, f"DataParallel over 2 processes x 2 devices, process {rank}")


@_only("jax")
def test_jax_checkpoint_from_two_processes_continues_on_one_device(
        reference, jax_multiprocess_run):
    _check_ran(jax_multiprocess_run, "jax_multiprocess_0", "trained")
    weights = _continue_on_one_device(
        os.path.join(jax_multiprocess_run, "jax_multiprocess.keras"))
    _assert_equals_one_device(
        weights, reference,
        "saved under DataParallel over 2 processes, continued on one device")


@_only("jax")
def test_jax_pause_clears_the_sgd_velocity_in_every_process(
        paused_sgd_reference, jax_multiprocess_run):
    for rank in range(2):
        _check_ran(jax_multiprocess_run, f"jax_multiprocess_{rank}", "paused_sgd")
        _assert_paused_like_one_device(
            jax_multiprocess_run, f"jax_multiprocess_paused_sgd_{rank}",
            paused_sgd_reference,
            f"SGD, body paused, DataParallel over 2 processes, process {rank}")


# TensorFlow: tf.distribute.


@pytest.fixture(scope="module")
def tf_mirrored_run(reference):
    out = reference["out"]
    _launch(out, [(["tf_mirrored"], _env())])
    return out


@_only("tensorflow")
def test_tf_mirrored_strategy_equals_one_device(reference, tf_mirrored_run):
    _check_ran(tf_mirrored_run, "tf_mirrored", "trained")
    _assert_equals_one_device(_load_weights(tf_mirrored_run, "tf_mirrored.npz"),
                              reference, "MirroredStrategy on 2 CPUs")
    # Multiplier vectors and slots are mirrored like the model's variables.
    kinds = _load_json(tf_mirrored_run, "tf_mirrored_kinds.json")
    assert kinds["trained"] == ["MirroredVariable"]


@_only("tensorflow")
def test_tf_checkpoint_from_mirrored_strategy_continues_on_one_device(
        reference, tf_mirrored_run):
    _check_ran(tf_mirrored_run, "tf_mirrored", "trained")
    weights = _continue_on_one_device(os.path.join(tf_mirrored_run, "tf_mirrored.keras"))
    _assert_equals_one_device(weights, reference,
                              "saved under MirroredStrategy, continued on one device")


@_only("tensorflow")
def test_tf_checkpoint_from_one_device_continues_under_mirrored_strategy(
        reference, tf_mirrored_run):
    _check_ran(tf_mirrored_run, "tf_mirrored", "loaded")
    _assert_equals_one_device(
        _load_weights(tf_mirrored_run, "tf_mirrored_loaded.npz"), reference,
        "saved on one device, continued under MirroredStrategy")
    kinds = _load_json(tf_mirrored_run, "tf_mirrored_kinds.json")
    assert kinds["loaded"] == ["MirroredVariable"]


@_only("tensorflow")
def test_tf_mirrored_pause_clears_the_sgd_velocity_on_every_replica(
        paused_sgd_reference, tf_mirrored_run):
    _check_ran(tf_mirrored_run, "tf_mirrored", "paused_sgd")
    _assert_paused_like_one_device(tf_mirrored_run, "tf_mirrored_paused_sgd",
                                   paused_sgd_reference,
                                   "SGD, body paused, MirroredStrategy on 2 CPUs")


@pytest.fixture(scope="module")
def tf_multi_worker_run(reference):
    out = reference["out"]
    workers = [f"127.0.0.1:{_free_port()}" for _ in range(2)]
    runs = []
    for index in range(2):
        config = {"cluster": {"worker": workers},
                  "task": {"type": "worker", "index": index}}
        runs.append((["tf_multi_worker"], _env(TF_CONFIG=json.dumps(config))))
    _launch(out, runs)
    return out


@_only("tensorflow")
def test_tf_multi_worker_custom_loop_equals_one_device(reference, tf_multi_worker_run):
    for rank in range(2):
        _assert_equals_one_device(
            _load_weights(tf_multi_worker_run, f"tf_multi_worker_{rank}.npz"),
            reference, f"MultiWorkerMirroredStrategy, worker {rank}")
        kinds = _load_json(tf_multi_worker_run, f"tf_multi_worker_kinds_{rank}.json")
        assert kinds == {"kinds": ["MirroredVariable"],
                         "iterations": worker.EPOCHS * worker.STEPS_PER_EPOCH}


@_only("tensorflow")
def test_tf_multi_worker_model_fit_fails_in_keras_itself(tf_multi_worker_run):
    """`model.fit` under MultiWorkerMirroredStrategy fails in Keras 3 before
    any optimizer runs, with a plain Keras optimizer too (keras-team/keras
    #20585). If Keras fixes it, this fails: then test LRMultiplier's fit
    here against the reference and update the README."""
    for rank in range(2):
        errors = _load_json(tf_multi_worker_run, f"tf_multi_worker_fit_{rank}.json")
        assert errors["plain"] is not None, (
            "Keras now runs model.fit under MultiWorkerMirroredStrategy")
        assert errors["lr_multiplier"] == errors["plain"]


# PyTorch: torch.distributed with DistributedDataParallel.


@pytest.fixture(scope="module")
def torch_ddp_run(reference):
    out = reference["out"]
    port = str(_free_port())
    _launch(out, [(["torch_ddp", str(rank), port], _env()) for rank in range(2)])
    return out


@_only("torch")
def test_torch_ddp_custom_loop_equals_one_device(reference, torch_ddp_run):
    for rank in range(2):
        _check_ran(torch_ddp_run, f"torch_ddp_{rank}", "trained")
        _assert_equals_one_device(
            _load_weights(torch_ddp_run, f"torch_ddp_{rank}.npz"), reference,
            f"DDP over 2 gloo processes, rank {rank}")


@_only("torch")
def test_torch_checkpoint_from_ddp_continues_on_one_device(reference, torch_ddp_run):
    _check_ran(torch_ddp_run, "torch_ddp_0", "trained")
    weights = _continue_on_one_device(os.path.join(torch_ddp_run, "torch_ddp.keras"))
    _assert_equals_one_device(weights, reference,
                              "saved under DDP, continued on one device")


@_only("torch")
def test_torch_ddp_pause_clears_the_sgd_velocity_on_every_process(
        paused_sgd_reference, torch_ddp_run):
    for rank in range(2):
        _check_ran(torch_ddp_run, f"torch_ddp_{rank}", "paused_sgd")
        _assert_paused_like_one_device(torch_ddp_run, f"torch_ddp_paused_sgd_{rank}",
                                       paused_sgd_reference,
                                       f"SGD, body paused, DDP rank {rank}")


@_only("torch")
def test_torch_checkpoint_from_one_device_continues_under_ddp(reference, torch_ddp_run):
    for rank in range(2):
        _check_ran(torch_ddp_run, f"torch_ddp_{rank}", "loaded")
        _assert_equals_one_device(
            _load_weights(torch_ddp_run, f"torch_ddp_loaded_{rank}.npz"),
            reference, f"saved on one device, continued under DDP, rank {rank}")


def _check_fit_ran_under_ddp(out_dir, scenario):
    for rank in range(2):
        _check_ran(out_dir, f"torch_ddp_{rank}", scenario)
        wrappers = _load_json(out_dir, f"torch_ddp_fit_{rank}.json")["ddp_model"]
        assert set(wrappers) == {"DistributedDataParallel"}, wrappers


@_only("torch")
@_once_torch_fit_synchronises
def test_torch_model_fit_over_two_processes_equals_one_device(reference, torch_ddp_run):
    _check_fit_ran_under_ddp(torch_ddp_run, "fit_trained")
    for rank in range(2):
        _assert_equals_one_device(
            _load_weights(torch_ddp_run, f"torch_fit_{rank}.npz"), reference,
            f"model.fit over 2 gloo processes, rank {rank}")


@_only("torch")
@_once_torch_fit_synchronises
def test_torch_checkpoint_from_a_two_process_fit_continues_on_one_device(
        reference, torch_ddp_run):
    _check_fit_ran_under_ddp(torch_ddp_run, "fit_trained")
    weights = _continue_on_one_device(os.path.join(torch_ddp_run, "torch_fit.keras"))
    _assert_equals_one_device(weights, reference,
                              "saved in a 2-process fit, continued on one device")


@_only("torch")
@_once_torch_fit_synchronises
def test_torch_checkpoint_from_one_device_continues_in_a_two_process_fit(
        reference, torch_ddp_run):
    _check_fit_ran_under_ddp(torch_ddp_run, "fit_loaded")
    for rank in range(2):
        _assert_equals_one_device(
            _load_weights(torch_ddp_run, f"torch_fit_loaded_{rank}.npz"), reference,
            f"saved on one device, continued by model.fit in 2 processes, rank {rank}")


@_only("torch")
@_once_torch_fit_synchronises
def test_torch_two_process_fit_pause_clears_the_sgd_velocity_on_every_process(
        paused_sgd_reference, torch_ddp_run):
    _check_fit_ran_under_ddp(torch_ddp_run, "fit_paused_sgd")
    for rank in range(2):
        _assert_paused_like_one_device(torch_ddp_run, f"torch_fit_paused_sgd_{rank}",
                                       paused_sgd_reference,
                                       f"SGD, body paused, model.fit rank {rank}")


@_only("torch")
@_once_torch_fit_synchronises
def test_torch_keras_data_parallel_over_two_processes_equals_one_device(
        reference, torch_ddp_run):
    _check_fit_ran_under_ddp(torch_ddp_run, "fit_data_parallel")
    for rank in range(2):
        _assert_equals_one_device(
            _load_weights(torch_ddp_run, f"torch_data_parallel_{rank}.npz"), reference,
            f"keras.distribution.DataParallel over 2 gloo processes, rank {rank}")


@_only("torch")
@_once_torch_fit_synchronises
def test_torch_keras_model_parallel_over_two_processes_equals_one_device(
        reference, torch_ddp_run):
    for rank in range(2):
        _check_ran(torch_ddp_run, f"torch_ddp_{rank}", "fit_model_parallel")
        _assert_equals_one_device(
            _load_weights(torch_ddp_run, f"torch_model_parallel_{rank}.npz"), reference,
            f"keras.distribution.ModelParallel over 2 gloo processes, rank {rank}")


@_only("torch")
@_while_torch_fit_is_refused
def test_torch_model_fit_in_a_multi_process_group_raises(torch_ddp_run):
    for rank in range(2):
        error = _load_json(torch_ddp_run, f"torch_ddp_fit_{rank}.json")["fit_error"]
        assert error is not None and error.startswith("RuntimeError: "), error
        assert "world size 2" in error and "does not synchronise" in error, error
        assert "DistributedDataParallel" in error, error


@pytest.fixture
def torch_group_of_three(tmp_path, monkeypatch):
    """A real one-process gloo group that reports world size 3: the refusal
    is checked in this process, without starting two more."""
    import torch.distributed as dist

    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store",
                            rank=0, world_size=1)
    monkeypatch.setattr(dist, "get_world_size", lambda *args, **kwargs: 3)
    try:
        yield
    finally:
        monkeypatch.undo()
        dist.destroy_process_group()


@_only("torch")
@_while_torch_fit_is_refused
@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_torch_fit_is_refused_whenever_a_process_group_has_several_processes(
        torch_group_of_three, policy):
    """Keras's train_step is found also through the LossScaleOptimizer that
    mixed_float16 adds; a custom loop's `apply` is not refused."""
    keras.config.set_dtype_policy(policy)
    model = worker.build_model()
    model.compile(optimizer=worker.make_optimizer(model), loss="mse")
    x, y = worker.data()
    before = worker.weights(model)
    with pytest.raises(RuntimeError, match="world size 3.*does not synchronise"):
        model.fit(x, y, batch_size=worker.GLOBAL_BATCH, epochs=1, verbose=0)
    with pytest.raises(RuntimeError, match="world size 3"):
        model.train_on_batch(x, y)
    for a, b in zip(worker.weights(model), before):
        np.testing.assert_array_equal(a, b)  # refused before any update

    opt = difflr.lr_multiplier.find_lr_multiplier(model.optimizer, "this test")
    grads = [keras.ops.ones(v.shape, v.dtype) for v in model.trainable_variables]
    opt.apply(grads, model.trainable_variables)  # what a custom loop calls
    assert int(keras.ops.convert_to_numpy(opt.iterations)) == 1
    # Adam's first step moves every element by its rate (gradients of 1):
    # 0.01 x 2.0 for the head kernel, before weight decay.
    head_kernel = keras.ops.convert_to_numpy(model.get_layer("head").kernel)
    expected = before[4] * (1 - 0.01 * 2.0 * 0.1) - 0.01 * 2.0
    assert_close(head_kernel, expected, rtol=1e-4, atol=1e-5)
