"""The grid: every arm x every base learning rate x every seed.

For each seed the body is pretrained once on the pretraining half (and once
more on pixel-shuffled images for the control), and every run copies those
weights into a fresh model. Every run starts from
`keras.utils.set_random_seed(seed)`, so within a seed all arms and rates get
the same fresh head and the same batches: they differ only in how they treat
the learning rates. Runs are deterministic for a given seed and backend.
"""

import contextlib
import dataclasses
import time

import keras
import numpy as np

from difflr.demo import arms as arms_lib
from difflr.demo import data
from difflr.demo import network

DIGITS = "digits"  # pretrained on the 10-way digit label
CONTROL = "control"  # pretrained on pixel-shuffled images
SOURCE_TITLES = {
    DIGITS: "Pretrained on digits 0-9 (the other half of the images)",
    CONTROL: "Control: pretrained on pixel-shuffled images "
             "(features that do not transfer)",
}


@dataclasses.dataclass(frozen=True)
class Config:
    seeds: tuple
    lrs: tuple
    arms: tuple  # names in `arms.ARMS`
    control_arms: tuple  # pretrained arms to run on the control too
    shots: int = 5  # labelled images per digit for fine-tuning
    epochs: int = 6  # fine-tuning epochs
    repeats: int = 4  # passes over the labelled images per epoch
    batch_size: int = 25
    pretrain_epochs: int = 10  # over the five shifted copies


_ALL = tuple(arms_lib.ARMS)
_PRETRAINED = tuple(n for n, arm in arms_lib.ARMS.items() if arm.pretrained)
# Under a minute on two cores, by backend (docs/demo.md has the timings):
# every arm but plain gradual unfreezing, and the control for the four arms
# that tell its story.
QUICK = Config(seeds=(0, 1), lrs=(1e-3, 1e-2, 1e-1),
               arms=tuple(n for n in _ALL if n != "freez"),
               control_arms=("probe", "full", "discr", "freez+discr"))
FULL = Config(seeds=(0, 1, 2, 3, 4),
              lrs=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
              arms=_ALL, control_arms=_PRETRAINED)


@dataclasses.dataclass
class Results:
    config: Config
    runs: list  # dicts: source, arm, seed, lr, accuracy
    pretraining: list  # dicts: source, seed, heldout_accuracy
    seconds: float


def sources(config):
    return (DIGITS, CONTROL) if config.control_arms else (DIGITS,)


def arms_for(config, source):
    """The arms run for `source`, in the order of `arms.ARMS`."""
    if source == DIGITS:
        return [arm for name, arm in arms_lib.ARMS.items()
                if name in config.arms]
    # Training from scratch does not depend on the pretraining.
    return [arm for name, arm in arms_lib.ARMS.items()
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
    runs, pretraining = [], []
    with _single_threaded_torch():
        for seed in config.seeds:
            train_idx, test_idx = data.few_shot(y, finetune_idx, config.shots,
                                                seed)
            x_train = np.tile(x[train_idx], (config.repeats, 1, 1, 1))
            y_train = np.tile(data.task_labels(y[train_idx]), config.repeats)
            x_test, y_test = x[test_idx], data.task_labels(y[test_idx])
            for source in sources(config):
                chosen = arms_for(config, source)
                weights = None
                if any(arm.pretrained for arm in chosen):
                    weights = _pretrain(x, y, pretrain_idx, finetune_idx,
                                        seed, source, config, pretraining, log)
                for arm in chosen:
                    began = time.perf_counter()
                    scores = []
                    for lr in config.lrs:
                        accuracy = fine_tune(arm, weights, lr, seed, config,
                                             x_train, y_train, x_test, y_test)
                        scores.append(accuracy)
                        runs.append(dict(source=source, arm=arm.name,
                                         seed=seed, lr=lr, accuracy=accuracy))
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


def _pretrain(x, y, pretrain_idx, finetune_idx, seed, source, config,
              pretraining, log):
    began = time.perf_counter()
    x_pre, x_heldout = x[pretrain_idx], x[finetune_idx]
    if source == CONTROL:
        x_pre = data.permute_pixels(x_pre, seed)
        x_heldout = data.permute_pixels(x_heldout, seed)
    weights, heldout = network.pretrain(
        x_pre, y[pretrain_idx], x_heldout, y[finetune_idx], seed,
        config.pretrain_epochs)
    pretraining.append(dict(source=source, seed=seed,
                            heldout_accuracy=heldout))
    log(f"seed {seed}  {source:<7}  pretrained: 10-way accuracy "
        f"{heldout:.3f} on the other half  "
        f"({time.perf_counter() - began:.1f} s)")
    return weights


def fine_tune(arm, weights, lr, seed, config, x_train, y_train, x_test,
              y_test):
    """One run: a fresh model, `arm`'s rates at base rate `lr`, test accuracy."""
    keras.utils.set_random_seed(seed)
    body = network.build_body()
    model = network.build_model(body, data.TASK_CLASSES)
    if arm.pretrained:
        body.set_weights(weights)
    optimizer, callbacks = arm.plan(model, lr, config.epochs)
    model.compile(optimizer, network.LOSS)
    model.fit(x_train, y_train, batch_size=config.batch_size,
              epochs=config.epochs, callbacks=callbacks, shuffle=True,
              verbose=0)
    return network.accuracy(model, x_test, y_test)


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
