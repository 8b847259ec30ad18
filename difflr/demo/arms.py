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

ULMFIT_FACTOR = 2.6  # ULMFiT: each group 2.6 times slower than the one above


@dataclasses.dataclass(frozen=True)
class Arm:
    name: str  # the id on the command line
    ulmfit_row: str  # the row of ULMFiT's Table 7 it mirrors
    pretrained: bool  # starts from the pretrained body
    description: str
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


ARMS = {arm.name: arm for arm in (
    Arm("scratch", "From scratch", False,
        "random body, every layer at the base rate", _uniform),
    Arm("probe", "Last", True,
        "linear probe: body frozen (multiplier 0), head only", _probe),
    Arm("full", "Full", True,
        "uniform fine-tuning: every layer at the base rate", _uniform),
    Arm("discr", "Full + discr", True,
        "discriminative: group i of n at 2.6 ** -(n - 1 - i)",
        _discriminative),
    Arm("body0.1", "(fastai slice(lr))", True,
        "body at x0.1, head at the base rate", _body_tenth),
    Arm("probe+discr", "(LP-FT)", True,
        "head only for half the epochs, then discriminative",
        _probe_then_discriminative),
    Arm("freez", "Freez", True,
        "gradual unfreezing, one group per epoch from the top", _gradual),
    Arm("freez+discr", "Freez + discr", True,
        "gradual unfreezing with discriminative rates",
        _gradual_discriminative),
)}
