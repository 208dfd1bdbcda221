"""``npz``: arrays from a NumPy ``.npz`` file (``--data npz:PATH`` or just ``--data PATH.npz``).

Arrays: ``x`` (evaluation inputs, batch axis first), optional ``y`` (integer labels;
without it cimguard runs label-free), optional ``x_train`` / ``y_train``.
"""

from __future__ import annotations

from cimguard.plugin_api import CimguardError, Dataset, hookimpl, read_npz


def load_npz_dataset(argument: str | None) -> Dataset:
    if not argument:
        raise CimguardError("the npz dataset needs a file: --data npz:PATH.npz")
    return read_npz(argument)


@hookimpl
def register_datasets(register):
    register("npz", load_npz_dataset)
