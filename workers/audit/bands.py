"""Tolerance bands for image audits, kept as data so they can be re-measured and changed in one place.

Measured on tiny-sd, 64x64, 20 steps, guidance 7.5, CPU (docs/audit-bands.md has the full tables). The auditor's
replay at 2 torch threads is compared with each claim; SSIM is the mean over R, G, B (7x7 window):

=============================  =====  ==========  =====================  =====================
claim                          seeds  phash bits  SSIM min..max          verdict with defaults
=============================  =====  ==========  =====================  =====================
honest, 1 thread               40     0..0        0.99999..1.00000       pass (must)
honest, identical rerun        5      0           1.0 (same bytes)       pass (must)
proxy: whole pipeline fp16     10     0..2        0.99994..0.99995       pass
proxy: whole pipeline bf16     10     0..2        0.99945..0.99958       pass
steps 20 -> 19 / 15            10     0..4        0.99919..0.99942 /     pass / pass
                                                  0.99807..0.99873
steps 20 -> 10                 20     0..4        0.99429..0.99712       fail (must)
steps 20 -> 5                  20     2..8        0.941..0.968           fail (must)
guidance 7.5 -> 1.0            20     0..8        0.947..0.985           fail (must)
cheaper model (other UNet)     20     6..18       0.798..0.867           fail (must)
different seed                 20     26..40      -0.09..0.10            fail (must)
random noise / blank           20     26..40/31   ~0.0 / 0.07..0.08      fail (must)
=============================  =====  ==========  =====================  =====================

``min_similarity`` = 0.998 sits between the worst honest-looking replay (bf16, 1 - SSIM = 0.00055: 3.6x inside)
and the nearest cheat that must fail (10 steps, 1 - SSIM >= 0.0029: 1.45x outside). ``max_phash_distance`` = 10 is
a loose gate for gross fakes (honest <= 2 bits, unrelated images >= 26 bits). These numbers are tiny-sd's; a real
SD model replayed across GPU/CPU must be re-measured (docs/audit-bands.md says how) before its audits rely on them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageBands:
    """How far a miner's image may drift from the auditor's replay and still pass.

    ``max_phash_distance``: highest Hamming distance (of 64 bits) between the two 64-bit DCT perceptual hashes.
    ``min_similarity``: lowest mean SSIM (over R, G, B; 7x7 uniform window) between the two images.
    """

    max_phash_distance: int
    min_similarity: float


DEFAULT_BANDS = ImageBands(max_phash_distance=10, min_similarity=0.998)
