"""The fine-tuning arms: one way each to treat the learning rates.

Every arm trains the same model (the body, pretrained or not, plus a fresh
head) with Adam at a constant base rate `lr`, for the same number of epochs
and on the same batches; only the per-layer multipliers differ. The base rate
is the head's rate. The rows mirror the ablation of ULMFiT's classifier
fine-tuning (Howard & Ruder 2018, Table 7); `probe+discr` is LP-FT (Kumar
et al. 2022), fastai's `fine_tune` without its one-cycle schedule.

Each arm is a `plan(model, lr, epochs) -> (optimizer, callbacks)`. The
baselines (`scratch`, `full`) use a plain `keras.optimizers.Adam`, so that no
difflr code touches them.
"""

import dataclasses

import keras

import difflr
from difflr.callbacks import GradualUnfreezing
from difflr.demo import catalog

ULMFIT_FACTOR = 2.6  # ULMFiT: each group 2.6 times slower than the one above


@dataclasses.dataclass(frozen=True)
class Arm(catalog.ArmInfo):
    plan: object  # (model, lr, epochs) -> (optimizer, callbacks)


def _adam(lr):
    return keras.optimizers.Adam(lr)


def _uniform(model, lr, epochs):
    return _adam(lr), []


def _probe(model, lr, epochs):
    # Multiplier 0 at build: the body gets no optimizer state at all.
    return difflr.LRMultiplier(_adam(lr), {model.get_layer("body"): 0.0}), []


def _discriminative(model, lr, epochs):
    rules = difflr.discriminative(model, factor=ULMFIT_FACTOR)
    return difflr.LRMultiplier(_adam(lr), rules), []


def _body_tenth(model, lr, epochs):
    # fastai's `lr=slice(hi)`: every group but the head at hi / 10.
    rules = difflr.discriminative(model, lr=slice(lr))
    return difflr.LRMultiplier(_adam(lr), rules), []


def _probe_then_discriminative(model, lr, epochs):
    # The head alone for the first half, then every group at once with
    # discriminative rates: gradual unfreezing whose schedule unfreezes all
    # groups below the head at the same epoch.
    rules = difflr.discriminative(model, factor=ULMFIT_FACTOR)
    switch = epochs // 2
    schedule = [switch] * (len(difflr.groups(model)) - 1)
    unfreeze = GradualUnfreezing(schedule=schedule, multipliers=rules)
    return difflr.LRMultiplier(_adam(lr), rules), [unfreeze]


def _gradual(model, lr, epochs):
    return difflr.LRMultiplier(_adam(lr)), [GradualUnfreezing(every=1)]


def _gradual_discriminative(model, lr, epochs):
    rules = difflr.discriminative(model, factor=ULMFIT_FACTOR)
    unfreeze = GradualUnfreezing(every=1, multipliers=rules)
    return difflr.LRMultiplier(_adam(lr), rules), [unfreeze]


_PLANS = {
    "scratch": _uniform,
    "probe": _probe,
    "full": _uniform,
    "discr": _discriminative,
    "body0.1": _body_tenth,
    "probe+discr": _probe_then_discriminative,
    "freez": _gradual,
    "freez+discr": _gradual_discriminative,
}
# Names and descriptions live in `catalog`, which `--help` reads without Keras.
ARMS = {info.name: Arm(*dataclasses.astuple(info), _PLANS[info.name])
        for info in catalog.ARMS}
