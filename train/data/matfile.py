"""Reading integer tables out of MATLAB .mat files, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from train.data.tracklet import require_file


def load_int_matrix(path: Path, key: str, what: str) -> np.ndarray:
    """Return the variable `key` of the .mat file `path` as a 2-D int64 array.

    Raises FileNotFoundError if the file is missing and ValueError if it is unreadable, lacks `key`,
    or holds something other than a numeric 2-D array of integers.
    """
    require_file(path, what)
    try:
        content = scipy.io.loadmat(str(path))
    except Exception as err:
        raise ValueError(f"{path}: cannot read {what} as a .mat file ({err})") from err
    if key not in content:
        found = sorted(k for k in content if not k.startswith("__"))
        raise ValueError(f"{path}: expected a variable {key!r} in {what}, found {found}")
    value = np.asarray(content[key])
    if value.ndim != 2 or not np.issubdtype(value.dtype, np.number):
        raise ValueError(
            f"{path}: {key!r} must be a numeric 2-D array, got dtype {value.dtype} shape {value.shape}"
        )
    if value.size and not np.all(np.isfinite(value) & (value == np.round(value))):
        raise ValueError(f"{path}: {key!r} must hold integers only")
    return value.astype(np.int64)
