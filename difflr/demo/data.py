"""The demo's data: scikit-learn's bundled 8x8 digits, split two ways.

`load_digits` (1,797 images of 8x8 pixels, 16 grey levels, digits 0-9) ships
inside scikit-learn, so nothing is downloaded. The images are split once, the
same way for every seed, into two disjoint halves, stratified by digit:

- the pretraining half (896 images) keeps its 10-way digit label;
- the fine-tuning half (901 images) gets a new task, the label `digit % 3`
  ({0, 3, 6, 9} -> 0, {1, 4, 7} -> 1, {2, 5, 8} -> 2), with only `shots`
  labelled images per digit for training (drawn per seed); every other image
  of that half is the test set.

The control pretrains on images whose pixels are shuffled by one fixed
permutation (per seed): the labels are as learnable as before, but the
features learned from them are useless on real images.

Two distribution shifts of the test images, drawn per seed, measure how
robust a fine-tuned model is to inputs no labelled image showed it:

- `translate`: each image moved one pixel in one of four directions, a shift
  that the pretraining's augmentation showed the body and fine-tuning did not;
- `add_noise`: Gaussian noise on every pixel, a shift that neither showed.
"""

import numpy as np

SPLIT_SEED = 0  # the two halves are the same for every seed
CLASSES = 10
TASK_CLASSES = 3
MAX_SHOTS = 50  # of at least 87 images per digit in the fine-tuning half
# The augmentation for pretraining: the image and its four one-pixel shifts.
SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))
# The noise shift: a standard deviation of about five of the 16 grey levels,
# enough to cost a fine-tuned model several points without reaching the floor.
NOISE_STD = 0.3


def _sklearn_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError(
            "The demo needs scikit-learn for its bundled digits data set "
            "(and matplotlib for its plots). Install both with "
            "`pip install scikit-learn matplotlib`."
        ) from e
    return load_digits()


def load():
    """All digits: images `(1797, 8, 8, 1)` float32 in [0, 1], labels int."""
    digits = _sklearn_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    return x, digits.target.astype("int64")


def halves(y):
    """Indices of the pretraining and fine-tuning halves, stratified.

    Each digit's images are shuffled with `SPLIT_SEED`; the first
    `count // 2` go to pretraining, the rest to fine-tuning.

    Returns:
        `(pretrain, finetune)`, sorted index arrays into `y`.
    """
    rng = np.random.default_rng(SPLIT_SEED)
    pretrain, finetune = [], []
    for digit in range(CLASSES):
        members = rng.permutation(np.flatnonzero(y == digit))
        pretrain.append(members[: len(members) // 2])
        finetune.append(members[len(members) // 2:])
    return np.sort(np.concatenate(pretrain)), np.sort(np.concatenate(finetune))


def few_shot(y, finetune, shots, seed):
    """`shots` training images per digit from the fine-tuning half.

    Args:
        y: All digit labels.
        finetune: Indices of the fine-tuning half (from `halves`).
        shots: Labelled images per digit, 1 to `MAX_SHOTS`.
        seed: Which images are drawn.

    Returns:
        `(train, test)`, index arrays into `y`: `train` holds `shots` images
        of each digit, ordered by digit; `test` is the rest of `finetune`.
    """
    if not 1 <= shots <= MAX_SHOTS:
        raise ValueError(
            f"shots must be between 1 and {MAX_SHOTS} labelled images per "
            f"digit; received {shots}."
        )
    rng = np.random.default_rng([seed, 1])
    train = np.concatenate([
        rng.choice(finetune[y[finetune] == digit], shots, replace=False)
        for digit in range(CLASSES)
    ])
    return train, np.setdiff1d(finetune, train)


def task_labels(digits):
    """The fine-tuning task's label: `digit % 3`."""
    return np.asarray(digits) % TASK_CLASSES


def shift_augment(x, y):
    """Each image and its four one-pixel shifts (zeros shifted in).

    Returns:
        `(x, y)` five times as long: all originals first, then each shift.
    """
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    height, width = x.shape[1:3]
    copies = [padded[:, 1 - dy: 1 - dy + height, 1 - dx: 1 - dx + width]
              for dy, dx in SHIFTS]
    return np.concatenate(copies), np.tile(y, len(SHIFTS))


def permute_pixels(x, seed):
    """`x` with its pixels shuffled by one permutation drawn from `seed`."""
    n, height, width, channels = x.shape
    order = np.random.default_rng([seed, 2]).permutation(height * width)
    flat = x.reshape(n, height * width, channels)[:, order]
    return flat.reshape(x.shape)


def translate(x, seed):
    """`x` with each image moved one pixel in one of the four directions.

    The directions are those of `shift_augment` (zeros shifted in), one drawn
    per image from `seed`: the one-pixel shifts pretraining was shown.
    """
    copies, _ = shift_augment(x, np.zeros(len(x)))
    copies = copies.reshape((len(SHIFTS),) + x.shape)
    which = np.random.default_rng([seed, 3]).integers(1, len(SHIFTS), len(x))
    return copies[which, np.arange(len(x))]


def add_noise(x, seed):
    """`x` plus Gaussian noise of std `NOISE_STD` drawn from `seed`, clipped.

    Clipped to [0, 1], the range of the images.
    """
    noise = np.random.default_rng([seed, 4]).normal(0.0, NOISE_STD, x.shape)
    return np.clip(x + noise, 0.0, 1.0).astype(x.dtype)


def majority_share(shots, seed):
    """The test accuracy of always answering the test set's largest class.

    The floor that a run which learned nothing about the images reaches
    (0.402 for 5 labelled images per digit): the fine-tuning task's classes
    `{0, 3, 6, 9}`, `{1, 4, 7}`, `{2, 5, 8}` are not the same size.
    """
    x, y = load()
    _, finetune = halves(y)
    _, test = few_shot(y, finetune, shots, seed)
    counts = np.bincount(task_labels(y[test]), minlength=TASK_CLASSES)
    return float(counts.max() / counts.sum())
