"""Compare a miner's image with the auditor's replay of the same job (same seed, model, size, steps, guidance).

Two measures, both of which must be inside ``ImageBands``:

- a 64-bit DCT perceptual hash (``imagehash.phash``): a coarse gate, blind to pixel-level drift, that rejects a
  different seed, a random or blank image and most model swaps by tens of bits;
- mean SSIM over the R, G and B channels (7x7 uniform window, the standard constants): the tight gate. SSIM
  compares local structure, so the low-bit noise of another GPU/precision/thread count barely moves it while
  the smoothing of fewer steps or lower guidance does. On tiny-sd it separated honest replays from the
  nearest cheat (20 -> 10 steps) by a 7.4x gap in 1 - SSIM against 2.9x for ``1 - mean |a - b| / 255``.

A different image size fails at once: a replay always has the size the job asked for.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image

from workers.audit.bands import DEFAULT_BANDS, ImageBands

SSIM_WINDOW = 7
SSIM_C1 = (0.01 * 255) ** 2
SSIM_C2 = (0.03 * 255) ** 2
PHASH_BITS = 64


@dataclass(frozen=True)
class ImageVerdict:
    """The outcome of one image audit: ``passed`` and, if not, why; plus the measured numbers for the record."""

    passed: bool
    reason: str | None
    phash_distance: int
    similarity: float
    size_ok: bool


def _decode(png: bytes) -> Image.Image:
    """Decode to 8-bit RGB (alpha or palette PNGs compare on the same footing as the replay's RGB)."""
    with Image.open(io.BytesIO(png)) as image:
        return image.convert("RGB")


def undecodable(data: bytes) -> str | None:
    """Why ``data`` is not an image the audit can compare (None: it decodes). Pillow's errors differ by
    format and damage (``UnidentifiedImageError``, ``OSError`` on truncation, ``ValueError``, a decompression
    bomb warning raised as an error), so all of them are this one verdict. Only the error's type is kept: its
    text can quote the file's bytes (a PPM header's width, parsed by int()), and a private job's bytes are
    decrypted plaintext."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        return f"the stored output is not a decodable image ({type(err).__name__})"
    return None


def phash_distance(a: Image.Image, b: Image.Image) -> int:
    """Hamming distance between the 64-bit DCT perceptual hashes of two images."""
    return int(imagehash.phash(a) - imagehash.phash(b))


def _box_mean(x: np.ndarray, w: int) -> np.ndarray:
    """Mean over every w x w window ('valid' positions only), via an integral image: O(pixels) at any size."""
    c = np.pad(x, ((1, 0), (1, 0))).cumsum(axis=0).cumsum(axis=1)
    return (c[w:, w:] - c[:-w, w:] - c[w:, :-w] + c[:-w, :-w]) / (w * w)


def _ssim_channel(a: np.ndarray, b: np.ndarray, w: int) -> float:
    ma, mb = _box_mean(a, w), _box_mean(b, w)
    va = _box_mean(a * a, w) - ma * ma
    vb = _box_mean(b * b, w) - mb * mb
    cov = _box_mean(a * b, w) - ma * mb
    ssim = ((2 * ma * mb + SSIM_C1) * (2 * cov + SSIM_C2)) / ((ma * ma + mb * mb + SSIM_C1) * (va + vb + SSIM_C2))
    return float(ssim.mean())


def ssim(a: Image.Image, b: Image.Image) -> float:
    """Mean SSIM of two same-size RGB images, averaged over channels (1.0 = identical, ~0 = unrelated)."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    w = min(SSIM_WINDOW, x.shape[0], x.shape[1])
    return sum(_ssim_channel(x[..., c], y[..., c], w) for c in range(3)) / 3


def _reason(distance: int, similarity: float, bands: ImageBands) -> str | None:
    if distance > bands.max_phash_distance:
        return f"perceptual hash differs by {distance} bits (band {bands.max_phash_distance})"
    if similarity < bands.min_similarity:
        return f"SSIM {similarity:.4f} below band {bands.min_similarity}"
    return None


def compare_images(reference_png: bytes, claimed_png: bytes, bands: ImageBands = DEFAULT_BANDS) -> ImageVerdict:
    """Judge a miner's ``claimed_png`` against the auditor's ``reference_png`` replay of the same job."""
    reference, claimed = _decode(reference_png), _decode(claimed_png)
    if reference.size != claimed.size:
        size = f"size {claimed.size[0]}x{claimed.size[1]} != replay {reference.size[0]}x{reference.size[1]}"
        return ImageVerdict(passed=False, reason=size, phash_distance=PHASH_BITS, similarity=0.0, size_ok=False)
    distance = phash_distance(reference, claimed)
    similarity = ssim(reference, claimed)
    reason = _reason(distance, similarity, bands)
    return ImageVerdict(passed=reason is None, reason=reason, phash_distance=distance, similarity=similarity,
                        size_ok=True)
