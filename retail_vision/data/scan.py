"""Scan image files before training: unreadable ones are skipped and reported, never crash an epoch.

Pillow opens and fully decodes each file (a header check alone misses truncated JPEGs).
Decoding is done in threads: Pillow releases the GIL while it decodes.
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pillow_heif
from PIL import Image

from retail_vision.console import Progress
from retail_vision.data.sources import IMAGE_EXTENSIONS, Examples

pillow_heif.register_heif_opener()  # Pillow then opens HEIC/HEIF (iPhone) photos

# The formats the pipeline decodes (TensorFlow's decoders; HEIF through Pillow); anything else would fail inside it.
DECODABLE_FORMATS = {"JPEG", "PNG", "BMP", "GIF", "WEBP", "HEIF"}
USABLE = "JPEG, PNG, BMP, GIF, WebP or HEIC"
EXIF_ORIENTATION = 0x0112  # phones store portrait photos sideways plus this tag; TF's decoders ignore it


@dataclasses.dataclass
class SkippedFile:
    path: str
    reason: str


def inspect_image(path: str) -> tuple[str | None, int]:
    """(why `path` cannot be used or None, its EXIF orientation 1..8; 1 when upright or unknown)."""
    orientation = 1
    if not path.lower().endswith(IMAGE_EXTENSIONS):
        kind = os.path.splitext(path)[1] or "without an extension"
        return f"unsupported file type {kind} (use {USABLE})", orientation
    try:
        if os.path.getsize(path) == 0:
            return "zero-byte file", orientation
        with Image.open(path) as image:
            if image.format not in DECODABLE_FORMATS:
                return f"unsupported format {image.format} (use {USABLE})", orientation
            if image.format == "WEBP" and getattr(image, "is_animated", False):
                return "animated WebP (use a still image)", orientation
            # pillow-heif turns HEIF photos upright as it decodes them: their EXIF tag must not turn them again.
            orientation = image.getexif().get(EXIF_ORIENTATION, 1) if image.format != "HEIF" else 1
            image.load()
    except FileNotFoundError:
        return "file not found", orientation
    except PermissionError:
        return "permission denied", orientation
    except OSError as error:  # Pillow's UnidentifiedImageError and truncation errors are OSErrors
        text = str(error)
        if "cannot identify image file" in text:
            return "not an image", orientation
        if "Too many levels of symbolic links" in text:
            return "symlink loop", orientation
        return f"unreadable image ({text.splitlines()[0][:80]})", orientation
    except Exception as error:  # a hostile or broken file must not stop the scan
        return f"unreadable image ({type(error).__name__})", orientation
    return None, orientation if orientation in range(1, 9) else 1


def rgb_pixels(path: str) -> np.ndarray:
    """A photo's pixels as uint8 RGB [H, W, 3], decoded by Pillow (HEIF included)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def check_image(path: str) -> str | None:
    """Return why `path` cannot be used, or None when it decodes."""
    return inspect_image(path)[0]


def scan(examples: Examples, workers: int = 8) -> tuple[Examples, list[SkippedFile]]:
    """Split examples into the usable ones (with their EXIF orientations) and the skipped files."""
    results = []
    progress = Progress(len(examples.paths), "scanned", "photos")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for result in pool.map(inspect_image, examples.paths):
            results.append(result)
            progress.advance()
    keep = [i for i, (reason, _) in enumerate(results) if reason is None]
    skipped = [SkippedFile(path, reason) for path, (reason, _) in zip(examples.paths, results) if reason]
    usable = examples.subset(keep)
    usable.orientations = [results[i][1] for i in keep]
    return usable, skipped
