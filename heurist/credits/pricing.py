"""What a request costs in Standard Credit Units, known before the job is sent."""

from __future__ import annotations

from heurist.catalog.schema import ModelSpec
from heurist.jobs import ImageParams, TextParams
from heurist.points import job_points


def price_units(spec: ModelSpec, params: ImageParams | TextParams) -> float:
    """Images: the job's points. Text: the worst case (every prompt byte a token, every allowed output
    token produced), so a reservation never falls short; ``CreditLedger.settle`` refunds the rest."""
    if isinstance(params, ImageParams):
        return job_points(spec, params)
    return job_points(spec, params, len(params.prompt.encode()), params.max_tokens)
