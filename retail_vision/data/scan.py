"""Scan image files before training: unreadable ones are skipped and reported, never crash an epoch.

Pillow opens and fully decodes each file (a header check alone misses truncated JPEGs).
Decoding is done in threads: Pillow releases the GIL while it decodes.
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from retail_vision.data.sources import Examples

# The formats tf.io.decode_image reads; anything else would fail inside the pipeline.
DECODABLE_FORMATS = {"JPEG", "PNG", "BMP", "GIF"}


@dataclasses.dataclass
class SkippedFile:
    path: str
    reason: str


def check_image(path: str) -> str | None:
    """Return why `path` cannot be used, or None when it decodes."""
    try:
        if os.path.getsize(path) == 0:
            return "zero-byte file"
        with Image.open(path) as image:
            if image.format not in DECODABLE_FORMATS:
                return f"unsupported format {image.format} (use JPEG, PNG, BMP or GIF)"
            image.load()
    except FileNotFoundError:
        return "file not found"
    except PermissionError:
        return "permission denied"
    except OSError as error:  # Pillow's UnidentifiedImageError and truncation errors are OSErrors
        text = str(error)
        if "cannot identify image file" in text:
            return "not an image"
        return f"unreadable image ({text.splitlines()[0][:80]})"
    except Exception as error:  # a hostile or broken file must not stop the scan
        return f"unreadable image ({type(error).__name__})"
    return None


def scan(examples: Examples, workers: int = 8) -> tuple[Examples, list[SkippedFile]]:
    """Split examples into the usable ones and the skipped files with their reasons."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = list(pool.map(check_image, examples.paths))
    keep = [i for i, reason in enumerate(reasons) if reason is None]
    skipped = [SkippedFile(path, reason) for path, reason in zip(examples.paths, reasons) if reason]
    return examples.subset(keep), skipped
