"""Token counts are read from the stored answer, never taken from the claim: the last check of a text job.

Found live (issue 13, finding 1): a text miner stored an answer of 34+12 tokens and claimed 82+512. The ledger
credited from the claim (clamped only by ``max_tokens``) and was 13x over the honest amount; the gateway's
reconcile sweep billed the client from the same claim, and a miner colluding with a client could claim 0/0.

Now the ledger reads the frozen ``TextOutput`` (one GET of an object it has just verified, at most
``MAX_ANSWER_CHARS`` of text plus its ids) and refuses the completion as ``token_mismatch``, held against the
miner like any bad result (the job goes to another miner: docs/job-states.md), unless all of these hold:

* the object parses as a ``TextOutput``;
* its ``output_tokens`` is the number of ``output_token_ids`` it stores, and at most the job's ``max_tokens``;
* its ``input_tokens`` is at most the prompt's UTF-8 bytes plus ``PROMPT_TOKEN_SLACK`` (no tokenizer emits more
  tokens than bytes; the slack covers the chat template's tokens);
* the signed claim's two counts are exactly the stored ones.

and, where the ledger has the model's tokenizer (``heurist.catalog.tokenizer``: rebuilt torch-free from the
model's verified GGUF), two more that only it can tell:

* the stored ids decode to exactly the stored text (an answer cannot bill for tokens it does not show);
* ``input_tokens`` is exactly the prompt's count inside the model's chat template.

A private text job's answer is ciphertext the ledger cannot read (``heurist.privacy``), so nothing is parsed;
the claim is held to what the ledger can bound without the key (``private_bounds``):

* ``output_tokens`` at most the job's ``max_tokens`` (its clear, billed copy), and at most the stored ciphertext's
  bytes // 2 (each token id in the ``TextOutput`` JSON takes a digit and a comma at least);
* ``input_tokens`` at most the sealed parameters' bytes (base64-decoded: the prompt plus its JSON and a 16-byte
  tag, so never fewer than the prompt's bytes) plus ``PROMPT_TOKEN_SLACK``.

Its exact counts are checked by the audit: an auditor that satisfies the job's ACC gets the key through the same
key release, decrypts the answer and recounts it, so a miner that over-claims within these bounds fails that
audit and is clawed back like any failed audit. The bounds cap what it can take before then: for a 32-token job,
32 tokens, where a public answer's count is exact.

The completion row, the points and the gateway's bill (live or by the reconcile sweep) then all rest on
counts the ledger has read and recounted itself. Whether the ids are what the model would produce is the
audit's teacher forcing; an answer padded with ids the model would not produce fails it and is clawed back.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

from pydantic import ValidationError

from heurist.catalog import JobKind
from heurist.jobs import PrivateEnvelope, TextOutput, TextParams
from heurist.ledger.tables import Reason

if TYPE_CHECKING:
    from heurist.catalog.tokenizer import ModelTokenizer
    from heurist.ledger.verify import Attempt, Refusal, Verifier

# No tokenizer emits more tokens than the prompt has bytes; the slack covers chat-template tokens.
PROMPT_TOKEN_SLACK = 64


def stored_counts(data: bytes, params: TextParams, tokenizer: ModelTokenizer | None = None) -> tuple[int, int] | str:
    """(input, output) tokens of a stored answer, or why they cannot be believed (``tokenizer``: recount too)."""
    try:
        output = TextOutput.model_validate_json(data)
    except ValidationError as err:
        return f"the stored output is not a TextOutput ({err.error_count()} errors, first: {err.errors()[0]['msg']})"
    ids = len(output.output_token_ids)
    if output.output_tokens != ids:
        return f"the stored answer says {output.output_tokens} output tokens but holds {ids} token ids"
    if ids > params.max_tokens:
        return f"the stored answer holds {ids} tokens; the job allows {params.max_tokens}"
    most = len(params.prompt.encode("utf-8")) + PROMPT_TOKEN_SLACK
    if not 0 <= output.input_tokens <= most:
        return f"the stored answer says {output.input_tokens} prompt tokens; this prompt has at most {most}"
    if tokenizer is not None:
        if tokenizer.decode(output.output_token_ids) != output.text:
            return "the stored text is not what the stored token ids decode to"
        counted = tokenizer.prompt_tokens(params.prompt)
        if output.input_tokens != counted:
            return f"the stored answer says {output.input_tokens} prompt tokens; the model's tokenizer counts {counted}"
    return output.input_tokens, ids


def claim_mismatch(data: bytes, params: TextParams, claimed: tuple[int, int],
                   tokenizer: ModelTokenizer | None = None) -> str | None:
    """Why a claim of ``claimed`` (input, output) tokens is not the stored answer's, or None when it is: the one
    comparison the ledger (before crediting) and the auditor (after) both make."""
    counts = stored_counts(data, params, tokenizer)
    if isinstance(counts, str):
        return counts
    if claimed != counts:
        return f"claims {claimed[0]}+{claimed[1]} tokens; the stored answer holds {counts[0]}+{counts[1]}"
    return None


def private_bounds(sealed: PrivateEnvelope, stored_bytes: int, params: TextParams,
                   claimed: tuple[int, int]) -> str | None:
    """Why a private text job's claim of ``claimed`` (input, output) tokens exceeds what its ciphertexts can hold,
    or None: the ledger's check without the key (the audit recounts exactly)."""
    sealed_bytes = len(base64.b64decode(sealed.ciphertext))
    most_in, most_out = sealed_bytes + PROMPT_TOKEN_SLACK, min(params.max_tokens, stored_bytes // 2)
    if claimed[1] > most_out:
        return (f"claims {claimed[1]} output tokens; a private answer of {stored_bytes} bytes for a job allowing "
                f"{params.max_tokens} holds at most {most_out}")
    if claimed[0] > most_in:
        return f"claims {claimed[0]} prompt tokens; the sealed prompt ({sealed_bytes} bytes) has at most {most_in}"
    return None


def check_token_counts(v: Verifier, a: Attempt) -> Refusal | None:
    """Text jobs only: the stored answer's counts (a private job's: bounded), checked and recorded in ``a.counts``
    for the credit."""
    from heurist.ledger.reader import PARAMS
    from heurist.ledger.verify import Refusal

    assert a.job is not None and a.spec is not None and a.info is not None
    if a.spec.kind is not JobKind.TEXT:
        return None
    params = PARAMS.validate_python(a.job.params)
    assert isinstance(params, TextParams)
    claimed = (a.claim.input_tokens, a.claim.output_tokens)
    if a.job.sealed is not None:
        problem = private_bounds(PrivateEnvelope.model_validate(a.job.sealed), a.info.size, params, claimed)
    else:
        data = a.signed.output  # inline: checked before it is stored (``heurist.ledger.verify``), no GET
        if data is None:
            assert a.frozen_key is not None
            data = v.store.get(a.frozen_key)
        problem = claim_mismatch(data, params, claimed,
                                 v.tokenizers(a.spec) if v.tokenizers else None)
    if problem is not None:
        return Refusal(Reason.TOKEN_MISMATCH, problem, miner=a.signer, marks_job=True)
    a.counts = claimed  # equal to what the stored answer holds (a private one's: within its bounds)
    return None


__all__ = ["PROMPT_TOKEN_SLACK", "check_token_counts", "claim_mismatch", "private_bounds", "stored_counts"]
