"""``digits``: scikit-learn's 1,797 handwritten 8×8 digits, shipped with the package.

Fixed split, the same one the project uses for MNIST: sample ``i`` is held out for
evaluation when ``i % 5 == 0`` (360 images); the other 1,437 are for training.
Pixels are scaled from 0..16 to [0, 1]; images are shaped ``(1, 8, 8)``.
"""

from __future__ import annotations

import numpy as np
import torch

from cimguard.plugin_api import CimguardError, Dataset, hookimpl


def load_digits_dataset(argument: str | None = None) -> Dataset:
    if argument:
        raise CimguardError("the digits dataset takes no argument (use --data digits)")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    held_out = np.arange(len(y)) % 5 == 0
    return Dataset(
        name="digits",
        description="scikit-learn digits, 8x8, held out i % 5 == 0 (360 eval / 1437 train)",
        x_eval=torch.from_numpy(x[held_out]),
        y_eval=torch.from_numpy(y[held_out]),
        x_train=torch.from_numpy(x[~held_out]),
        y_train=torch.from_numpy(y[~held_out]),
    )


@hookimpl
def register_datasets(register):
    register("digits", load_digits_dataset)
