"""What the demo can run, without Keras: the arms as the command line names
and describes them, and the presets, of both experiments (the CNN and the
transformer).

`python -m difflr demo --help` lists these before anything imports Keras
(a backend takes seconds to import); `arms` gives each arm its plan, and
`experiment` runs a `Config`.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class ArmInfo:
    name: str  # the id on the command line
    ulmfit_row: str  # the row of ULMFiT's Table 7 it mirrors
    pretrained: bool  # starts from the pretrained body
    description: str


# In the order the tables and plots show them.
ARMS = (
    ArmInfo("scratch", "From scratch", False,
            "random body, every layer at the base rate"),
    ArmInfo("probe", "Last", True,
            "linear probe: body frozen (multiplier 0), head only"),
    ArmInfo("full", "Full", True,
            "uniform fine-tuning: every layer at the base rate"),
    ArmInfo("discr", "Full + discr", True,
            "discriminative: group i of n at 2.6 ** -(n - 1 - i)"),
    ArmInfo("body0.1", "(fastai slice(lr))", True,
            "body at x0.1, head at the base rate"),
    ArmInfo("probe+discr", "(LP-FT)", True,
            "head only for half the epochs, then discriminative"),
    ArmInfo("freez", "Freez", True,
            "gradual unfreezing, one group per epoch from the top"),
    ArmInfo("freez+discr", "Freez + discr", True,
            "gradual unfreezing with discriminative rates"),
)
NAMES = tuple(arm.name for arm in ARMS)


@dataclasses.dataclass(frozen=True)
class Config:
    seeds: tuple
    lrs: tuple
    arms: tuple  # names in `ARMS`
    control_arms: tuple  # pretrained arms to run on the control too
    shots: int = 5  # labelled images per digit for fine-tuning
    epochs: int = 6  # fine-tuning epochs
    repeats: int = 4  # passes over the labelled images per epoch
    batch_size: int = 25
    pretrain_epochs: int = 10  # over the five shifted copies
    # Pretrain on the first n images of the pretraining half (None: all of
    # them): the tests' tiny runs need a pretrained body, not a good one.
    pretrain_images: int = None
    experiment: str = "cnn"  # a key of `EXPERIMENTS`
    curve: bool = False  # also measure the new task after every epoch


# Under a minute on two cores, by backend (docs/demo.md has the timings):
# every arm but plain gradual unfreezing, and the control for the four arms
# that tell its story.
QUICK = Config(seeds=(0, 1), lrs=(1e-3, 1e-2, 1e-1),
               arms=tuple(n for n in NAMES if n != "freez"),
               control_arms=("probe", "full", "discr", "freez+discr"))
FULL = Config(seeds=(0, 1, 2, 3, 4),
              lrs=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
              arms=NAMES,
              control_arms=tuple(arm.name for arm in ARMS if arm.pretrained))


# The transformer experiment (`transformer`): a KerasHub ViT backbone. The
# second column names the paper whose recipe the arm is.
TRANSFORMER_ARMS = (
    ArmInfo("full", "uniform", True,
            "uniform fine-tuning: every layer at the base rate (AdamW)"),
    ArmInfo("llrd0.8", "ELECTRA / Sun 2019", True,
            "layerwise_decay(0.8): each block 0.8 x the one above; no_decay"),
    ArmInfo("llrd0.65", "BEiT / Zhang 2021", True,
            "layerwise_decay(0.65), no_decay"),
    ArmInfo("probe", "linear probe", True,
            "body frozen (multiplier 0), head only"),
    ArmInfo("lp-ft", "LP-FT (Kumar 2022)", True,
            "head only for half the epochs, then every layer at the base"),
    ArmInfo("lora", "LoRA (Hu 2021)", True,
            "enable_lora(4), lora_plus(ratio=1): A and B at one rate"),
    ArmInfo("lora+", "LoRA+ (Hayou 2024)", True,
            "enable_lora(4), lora_plus(ratio=16): B at 16 x A's rate"),
)
TRANSFORMER_NAMES = tuple(arm.name for arm in TRANSFORMER_ARMS)
EXPERIMENTS = {"cnn": ARMS, "transformer": TRANSFORMER_ARMS}
# What every arm of an experiment trains with (`arms`, `transformer`), as the
# report names it.
TRANSFORMER_WEIGHT_DECAY = 0.01  # BERT's
OPTIMIZER_WORDS = {"cnn": "Adam", "transformer":
                   f"AdamW, weight decay {TRANSFORMER_WEIGHT_DECAY:g}"}

# A few minutes on two cores (cli.TRANSFORMER_QUICK_TIME). `TRANSFORMER_TINY`
# is the tests' end-to-end run: one seed, one rate, two epochs, two arms
# (each arm's rates are tested on a built model, without training), and a
# pretraining of five steps.
TRANSFORMER_QUICK = Config(
    seeds=(0, 1, 2), lrs=(1e-3, 3e-3, 1e-2), arms=TRANSFORMER_NAMES,
    control_arms=(), epochs=6, pretrain_epochs=10, experiment="transformer",
    curve=True)
TRANSFORMER_FULL = Config(
    seeds=tuple(range(8)), lrs=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2),
    arms=TRANSFORMER_NAMES, control_arms=(), epochs=8, pretrain_epochs=20,
    experiment="transformer", curve=True)
TRANSFORMER_TINY = Config(
    seeds=(0,), lrs=(3e-3,), arms=("probe", "lp-ft"), control_arms=(),
    shots=2, epochs=2, repeats=2, batch_size=10, pretrain_epochs=1,
    pretrain_images=64, experiment="transformer", curve=True)


def arm_infos(experiment):
    """The `ArmInfo`s of `experiment` (a key of `EXPERIMENTS`), in order."""
    if experiment not in EXPERIMENTS:
        raise ValueError(
            f"unknown experiment {experiment!r}; the experiments are "
            f"{', '.join(EXPERIMENTS)}.")
    return EXPERIMENTS[experiment]
