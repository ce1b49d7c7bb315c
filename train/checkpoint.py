"""Checkpoints that survive interruption, detect corruption and load with ``torch.load(weights_only=True)``.

A checkpoint holds only tensors and plain containers: model, optimizer and scheduler states, the
epoch, the RNG states of every rank and the config as a dict, plus ``sha256``, a digest of all of
that content. ``torch.load`` does not check the zip CRCs, so a flipped bit inside a tensor would
load silently; ``load`` recomputes the digest and refuses a mismatch, and refuses non-finite
floats. Writes go to a temporary file in the same folder, are fsynced, moved in place with
``os.replace`` and the folder is fsynced, so a crash mid-write leaves the previous checkpoint as
it was; temporaries a killed write left behind are removed by the next save.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

PathLike = str | Path
DIGEST_KEY = "sha256"


class CheckpointError(ValueError):
    """A file is not a readable checkpoint, or its content is corrupt or unusable."""


def save_atomic(state: dict, path: PathLike) -> None:
    """``torch.save(state + digest)`` to ``path`` all at once: either the new file or the old one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    state = {**state, DIGEST_KEY: digest(state)}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_directory(path.parent)


def load(path: PathLike) -> dict:
    """The state saved at ``path``, after checking its digest and that every float in it is finite.

    Raises CheckpointError naming ``path`` and what is wrong: unreadable or truncated, not a
    checkpoint of this format, content that differs from its digest, or non-finite values.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ... by damage
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or not a torch file): {err}") from err
    if not isinstance(state, dict) or DIGEST_KEY not in state:
        found = sorted(map(str, state))[:8] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not a checkpoint of this format (no {DIGEST_KEY!r} digest; found {found})")
    stored = state.pop(DIGEST_KEY)
    if stored != digest(state):
        raise CheckpointError(f"{path}: content does not match its SHA-256 digest; the file is corrupt")
    bad = non_finite(state)
    if bad:
        raise CheckpointError(f"{path}: non-finite values (NaN or inf) in {', '.join(bad[:5])}")
    return state


def digest(state: Any) -> str:
    """SHA-256 of the content of ``state`` (nested dicts, lists, tensors, numbers, strings) in a fixed order."""
    h = hashlib.sha256()
    _feed(h, state)
    return h.hexdigest()


def _feed(h: Any, node: Any) -> None:
    if isinstance(node, torch.Tensor):
        data = node.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        h.update(f"tensor {node.dtype} {tuple(node.shape)}\n".encode())
        h.update(data.numpy())
    elif isinstance(node, dict):
        h.update(f"dict {len(node)}\n".encode())
        for key in sorted(node, key=repr):
            h.update(f"{type(key).__name__} {key!r}\n".encode())
            _feed(h, node[key])
    elif isinstance(node, (list, tuple)):
        h.update(f"{type(node).__name__} {len(node)}\n".encode())
        for item in node:
            _feed(h, item)
    else:
        h.update(f"{type(node).__name__} {node!r}\n".encode())


def non_finite(state: Any, where: str = "") -> list[str]:
    """The dotted names of every floating tensor or float in ``state`` holding NaN or inf."""
    if isinstance(state, torch.Tensor):
        return [where] if state.is_floating_point() and not bool(torch.isfinite(state).all()) else []
    if isinstance(state, float):
        return [] if np.isfinite(state) else [where]
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return []
    return [bad for key, value in items for bad in non_finite(value, f"{where}.{key}" if where else str(key))]


def remove_stale_temporaries(path: PathLike) -> list[Path]:
    """Delete the temporaries ``save_atomic(…, path)`` names (``.<name>.<random>.tmp``) that a killed write left."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[A-Za-z0-9_]+\.tmp")
    removed = []
    if path.parent.is_dir():
        for entry in path.parent.iterdir():
            if pattern.fullmatch(entry.name) and entry.is_file():
                entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


def _fsync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict[str, Any]:
    """This process's Python, NumPy, torch (and CUDA) RNG states as tensors and plain values."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(words), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
