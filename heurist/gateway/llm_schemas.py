"""OpenAI-shaped bodies of the LLM endpoints. Unknown OpenAI parameters (top_p, stop, ...) are accepted and
ignored, so unchanged clients (the ``openai`` package, LiteLLM) work; what we cannot honour (n > 1) is a 422."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_SEED = 2**32 - 1


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    type: str = "text"
    text: str = ""


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content if part.type == "text")
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    model: str = Field(..., min_length=1, max_length=64, description="A catalog text model id (GET /v1/models).")
    temperature: float | None = Field(None, ge=0, le=2, description="0: greedy (the default).")
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    n: int = Field(1, ge=1, le=1, description="Only 1: one job per request.")
    stream: bool = Field(False, description="Server-sent events, token by token as the miner produces them.")
    stream_options: StreamOptions | None = None


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(..., min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1, le=100_000)
    max_completion_tokens: int | None = Field(None, ge=1, le=100_000)

    def prompt(self) -> str:
        """One user turn holds the conversation: a lone user message as it is, else a labelled transcript."""
        if len(self.messages) == 1 and self.messages[0].role == "user":
            return self.messages[0].text()
        return "\n\n".join(f"{m.role.capitalize()}: {m.text()}" for m in self.messages)

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    """POST /v1/completions (one prompt; the model answers it as a single user turn)."""

    prompt: str = Field(..., min_length=1, max_length=100_000)
    max_tokens: int | None = Field(16, ge=1, le=100_000)

    def token_limit(self) -> int | None:
        return self.max_tokens


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    units_charged: float = Field(..., description="Standard Credit Units taken from the key.")


class TextChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage
    units_charged: float


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "heurist"
    kind: str = Field(..., description="'text' (chat/completions) or 'image' (images/generations).")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def chunk(job_id: str, created: int, model: str, kind: str, delta: dict[str, Any], finish: str | None,
          usage: Usage | None = None) -> dict[str, Any]:
    """One streamed event, shaped as OpenAI's ``chat.completion.chunk`` or ``text_completion``."""
    if kind == "chat":
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        body = {"id": f"chatcmpl-{job_id}", "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [choice] if delta or finish else []}
    else:
        body = {"id": f"cmpl-{job_id}", "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": delta.get("content", ""), "finish_reason": finish}]}
    if usage is not None:
        body["usage"] = usage.model_dump()
    return body
