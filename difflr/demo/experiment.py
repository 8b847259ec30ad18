"""The grid: every arm x every base learning rate x every seed.

For each seed the body is pretrained once on the pretraining half (and once
more on pixel-shuffled images for the control), and every run copies those
weights into a fresh model. Every run starts from
`keras.utils.set_random_seed(seed)`, so within a seed all arms and rates get
the same fresh head and the same batches: they differ only in how they treat
the learning rates. Runs are deterministic for a given seed and backend.

Each run measures, on the test images of the fine-tuning half (which no run
trains on), in one pass of its body (`MEASURES`):

- `accuracy`: the new task's test accuracy, the one the best rate is picked on;
- `retained`: forgetting. The pretrained 10-way head, put back on the
  fine-tuned body, classifies the digits of the same images (pixels shuffled
  on the control, as it was pretrained); the pretrained network itself scores
  `heldout_accuracy` of `Results.pretraining` there. None for `scratch`,
  whose body was not pretrained;
- `translated`, `noisy`: the new task's test accuracy on the same images under
  each distribution shift of `SHIFTED`, drawn per seed.

With `Config.curve`, each run also records `curve`: the new task's test
accuracy after every epoch (the transformer experiment's steps to a target).

`config.experiment` picks the network and the arms: the CNN (`network`,
`arms`) or the KerasHub ViT (`transformer`), imported only when it runs.
"""

import contextlib
import dataclasses
import time

import keras
import numpy as np

from difflr.demo import arms as arms_lib
from difflr.demo import catalog
from difflr.demo import data
from difflr.demo import network

# `Config` and the presets live in `catalog`, which `--help` reads without Keras.
Config = catalog.Config
QUICK = catalog.QUICK
FULL = catalog.FULL

DIGITS = "digits"  # pretrained on the 10-way digit label
CONTROL = "control"  # pretrained on pixel-shuffled images
# The new task's test images under each shift (`data`); the same for every
# arm and source of a seed.
SHIFTED = {"translated": data.translate, "noisy": data.add_noise}
MEASURES = ("accuracy", "retained") + tuple(SHIFTED)
SOURCE_TITLES = {
    DIGITS: "Pretrained on digits 0-9 (the other half of the images)",
    CONTROL: "Control: pretrained on pixel-shuffled images "
             "(features that do not transfer)",
}


@dataclasses.dataclass
class Results:
    config: Config
    runs: list  # dicts: source, arm, seed, lr and each of `MEASURES`
    pretraining: list  # dicts: source, seed, heldout_accuracy
    seconds: float


@dataclasses.dataclass(frozen=True)
class EvalSets:
    """The images a seed's runs are measured on, for one source."""
    x: np.ndarray  # the new task's test images
    y: np.ndarray  # their new-task labels
    shifted: dict  # name in `SHIFTED` -> `x` under that shift
    x_pretask: np.ndarray  # `x` as the pretraining saw images
    y_pretask: np.ndarray  # their digit labels


def eval_sets(x, digits, seed, source):
    """The `EvalSets` of test images `x`, which show `digits`.

    On the control, `x_pretask` has its pixels shuffled as in pretraining.
    """
    x_pretask = data.permute_pixels(x, seed) if source == CONTROL else x
    return EvalSets(x, data.task_labels(digits),
                    {name: shift(x, seed) for name, shift in SHIFTED.items()},
                    x_pretask, digits)


def sources(config):
    return (DIGITS, CONTROL) if config.control_arms else (DIGITS,)


def arms_of(config):
    """`{name: Arm}` of `config.experiment`, in the order of its catalog."""
    catalog.arm_infos(config.experiment)  # a clear error for a bad name
    if config.experiment == "transformer":
        from difflr.demo import transformer

        return transformer.ARMS
    return arms_lib.ARMS


def network_of(config):
    """The module that builds and pretrains `config.experiment`'s network."""
    if config.experiment == "transformer":
        from difflr.demo import transformer

        return transformer
    return network


def arms_for(config, source):
    """The arms run for `source`, in the order of `arms_of(config)`."""
    if source == DIGITS:
        return [arm for name, arm in arms_of(config).items()
                if name in config.arms]
    # Training from scratch does not depend on the pretraining.
    return [arm for name, arm in arms_of(config).items()
            if name in config.control_arms and arm.pretrained]


def run(config, log=print):
    """Runs the whole grid.

    Args:
        config: A `Config`.
        log: Called with one progress line per (seed, source, arm).

    Returns:
        A `Results`.
    """
    start = time.perf_counter()
    x, y = data.load()
    pretrain_idx, finetune_idx = data.halves(y)
    pretrain_idx = pretrain_idx[:config.pretrain_images]  # None: all
    runs, pretraining = [], []
    with _single_threaded_torch():
        for seed in config.seeds:
            train_idx, test_idx = data.few_shot(y, finetune_idx, config.shots,
                                                seed)
            x_train = np.tile(x[train_idx], (config.repeats, 1, 1, 1))
            y_train = np.tile(data.task_labels(y[train_idx]), config.repeats)
            for source in sources(config):
                tests = eval_sets(x[test_idx], y[test_idx], seed, source)
                chosen = arms_for(config, source)
                pretrained = None
                if any(arm.pretrained for arm in chosen):
                    pretrained = _pretrain(x[pretrain_idx], y[pretrain_idx],
                                           tests, seed, source, config,
                                           pretraining, log)
                for arm in chosen:
                    began = time.perf_counter()
                    scores = []
                    for lr in config.lrs:
                        measures = fine_tune(arm, pretrained, lr, seed, config,
                                             x_train, y_train, tests)
                        scores.append(measures["accuracy"])
                        runs.append(dict(source=source, arm=arm.name,
                                         seed=seed, lr=lr, **measures))
                    log(f"seed {seed}  {source:<7}  {arm.name:<11}  "
                        + progress_scores(config.lrs, scores)
                        + f"  ({time.perf_counter() - began:.1f} s)")
            # Once per seed, not per run: it collects garbage, which takes
            # a good part of a second.
            keras.backend.clear_session()
    return Results(config, runs, pretraining, time.perf_counter() - start)


def progress_scores(lrs, scores):
    """`accuracy at lr 0.001: 0.812, 0.01: 0.845, 0.1: 0.402`."""
    return "accuracy at lr " + ", ".join(
        f"{lr:g}: {accuracy:.3f}" for lr, accuracy in zip(lrs, scores))


def _pretrain(x_pre, y_pre, tests, seed, source, config, pretraining, log):
    """Pretrains a body for `source`; returns its weights and its 10-way head.

    The head is a built `Dense` layer, to put back on each fine-tuned body.
    """
    began = time.perf_counter()
    if source == CONTROL:
        x_pre = data.permute_pixels(x_pre, seed)
    weights, head, heldout = network_of(config).pretrain(
        x_pre, y_pre, tests.x_pretask, tests.y_pretask, seed,
        config.pretrain_epochs)
    pretraining.append(dict(source=source, seed=seed,
                            heldout_accuracy=heldout))
    log(f"seed {seed}  {source:<7}  pretrained: 10-way accuracy "
        f"{heldout:.3f} on the test images  "
        f"({time.perf_counter() - began:.1f} s)")
    return weights, network.build_head(head)


def fine_tune(arm, pretrained, lr, seed, config, x_train, y_train, tests):
    """One run: a fresh model, `arm`'s rates at base rate `lr`, trained.

    Args:
        pretrained: `(body_weights, head)` from `_pretrain`; None if no arm
            of this source starts from a pretrained body.

    Returns:
        `{measure: value}` for each of `MEASURES`, measured on `tests`.
    """
    net = network_of(config)
    keras.utils.set_random_seed(seed)
    body = net.build_body()
    model = net.build_model(body, data.TASK_CLASSES)
    if arm.pretrained:
        body.set_weights(pretrained[0])
    optimizer, callbacks = arm.plan(model, lr, config.epochs)
    curve = _Curve(tests) if config.curve else None
    model.compile(optimizer, net.LOSS)
    model.fit(x_train, y_train, batch_size=config.batch_size,
              epochs=config.epochs,
              callbacks=callbacks + ([curve] if curve else []), shuffle=True,
              verbose=0)
    measures = evaluate(model, pretrained[1] if arm.pretrained else None,
                        tests)
    if curve is not None:
        measures["curve"] = curve.accuracies
    return measures


class _Curve(keras.callbacks.Callback):
    """The new task's test accuracy after every epoch, in `accuracies`."""

    def __init__(self, tests):
        super().__init__()
        self.tests = tests
        self.accuracies = []

    def on_epoch_end(self, epoch, logs=None):
        [accuracy] = network.accuracies(
            self.model.get_layer("body"), [self.model.get_layer("head")],
            [self.tests.x], [self.tests.y])
        self.accuracies.append(accuracy)


def evaluate(model, pretrained_head, tests):
    """`MEASURES` of a fine-tuned `model` on `tests`, in one pass of its body.

    Args:
        model: Body and new-task head, as `network.build_model` makes them.
        pretrained_head: The pretrained 10-way head, or None when the body
            was not pretrained (`retained` is then None).
    """
    head = model.get_layer("head")
    heads = [head] * (1 + len(SHIFTED))
    images = [tests.x] + [tests.shifted[name] for name in SHIFTED]
    labels = [tests.y] * len(heads)
    if pretrained_head is not None:
        heads.append(pretrained_head)
        images.append(tests.x_pretask)
        labels.append(tests.y_pretask)
    scores = network.accuracies(model.get_layer("body"), heads, images,
                                labels)
    measures = dict(accuracy=scores[0], retained=None)
    if pretrained_head is not None:
        measures["retained"] = scores.pop()
    measures.update(zip(SHIFTED, scores[1:]))
    return measures


@contextlib.contextmanager
def _single_threaded_torch():
    """One torch thread while the demo runs, then the previous count.

    The models are tiny: with two threads torch spends most of each step
    synchronising them, several times slower than one thread, and much worse
    on a busy machine. The other backends are left as they are.
    """
    if keras.backend.backend() != "torch":
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
