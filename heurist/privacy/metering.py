"""What a private job shows in the clear: only what it is billed by, so points and prices equal a public job's.

An image job's points are ``(width x height / 512^2) x (steps / 20) x coefficient`` and a text job's charge is
reserved from ``max_tokens``, so those stay in the job record, the signed message and the ledger, where the
trusted side computes from them as for any job. The prompt, negative prompt, seed, guidance and temperature are
only in the ciphertext; the clear copy has ``PRIVATE_PROMPT`` and neutral values. A miner refuses a job whose
decrypted parameters bill differently from the clear ones (``check``): a client cannot buy a 512² render and ask
for 1024².

What the size gives away is the same as the ciphertext's length does: a private job hides what is asked, not
how big the answer is.
"""

from __future__ import annotations

from heurist.jobs import ImageParams, JobParams, TextParams
from heurist.privacy.envelope import PrivacyError

PRIVATE_PROMPT = "[private]"
PRIVATE_CONTENT_TYPE = "application/vnd.heurist.private"


def metering(params: JobParams) -> JobParams:
    """The clear copy of ``params``: billed fields kept, everything else neutral."""
    if isinstance(params, ImageParams):
        return ImageParams(prompt=PRIVATE_PROMPT, width=params.width, height=params.height, steps=params.steps,
                           guidance=params.guidance, seed=0)
    return TextParams(prompt=PRIVATE_PROMPT, max_tokens=params.max_tokens, temperature=0.0, seed=0)


def check(clear: JobParams, real: JobParams) -> None:
    """Raise ``PrivacyError`` unless ``real`` is billed exactly as ``clear`` says."""
    if metering(real) != clear:
        raise PrivacyError("the decrypted parameters are billed differently from the job's clear ones "
                           f"({_billed(real)} inside, {_billed(clear)} outside): refused")


def _billed(params: JobParams) -> str:
    if isinstance(params, ImageParams):
        return f"{params.width}x{params.height}, {params.steps} steps, guidance {params.guidance}"
    return f"max_tokens {params.max_tokens}"


__all__ = ["PRIVATE_CONTENT_TYPE", "PRIVATE_PROMPT", "check", "metering"]
