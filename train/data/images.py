"""Reading one frame from disk as an RGB PIL image, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

from PIL import Image


def load_image(path: str | Path) -> Image.Image:
    """Decode the image at `path` fully into RGB; FileNotFoundError or ValueError naming `path` on failure."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError as err:
        raise FileNotFoundError(f"image not found: {path}") from err
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err
