"""OpenAI API request types as the gateway accepts them.

Unknown fields are accepted and ignored (clients send newer ones), but a known field the
network cannot honour is refused by :func:`refuse_unhonourable` with a 400 that names it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from tessera.ledger.accounts import MAX_UNITS

MAX_STOP = 4
MAX_STRING = 4_000_000
MIN_HEDGE_AFTER_MS = 100  # the earliest a request may ask to be hedged

Units = Annotated[StrictInt, Field(ge=0, le=MAX_UNITS)]


class MaxPriceField(BaseModel):
    """OpenRouter's ``provider.max_price``, in base units per million tokens (integers)."""

    model_config = ConfigDict(extra="forbid")

    prompt: Units | None = None
    completion: Units | None = None


ProviderName = Annotated[str, Field(min_length=1, max_length=64)]
ProviderNames = Annotated[list[ProviderName], Field(max_length=64)]
RegionName = Annotated[str, Field(min_length=2, max_length=20)]
RegionNames = Annotated[list[RegionName], Field(max_length=64)]
ModelName = Annotated[str, Field(min_length=1, max_length=200)]


class ProviderPreferences(BaseModel):
    """The optional ``provider`` object: OpenRouter's routing preferences, extended.

    Providers are named by id or an id prefix of 8+ characters. Regions are ISO country
    codes or coarse regions (``eu``, ``na``, ...). Unknown keys are ignored, as OpenRouter
    clients may send ones we do not implement.
    """

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    order: ProviderNames | None = None
    only: ProviderNames | None = None
    ignore: ProviderNames | None = None
    allow_fallbacks: bool = True
    sort: Literal["price", "latency", "throughput"] | None = None
    max_price: MaxPriceField | None = None
    data_collection: Literal["allow", "deny"] = "allow"
    regions_allow: RegionNames | None = None
    regions_deny: RegionNames | None = None
    min_reputation: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    # At least MIN_HEDGE_AFTER_MS: an earlier hedge would run nearly every request twice.
    hedge_after_ms: Annotated[int, Field(ge=MIN_HEDGE_AFTER_MS, le=600_000)] | None = None


class OpenAIRequest(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: ModelName
    # Fallback models, tried in order when ``model`` has no provider that can answer.
    models: Annotated[list[ModelName], Field(max_length=8)] | None = None
    user: Annotated[str, Field(max_length=256)] | None = None
    provider: ProviderPreferences | None = None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text"]
    text: Annotated[str, Field(max_length=MAX_STRING)]


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Annotated[str, Field(max_length=MAX_STRING)] | list[TextPart] | None = None
    name: Annotated[str, Field(max_length=256)] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


Stop = Annotated[str, Field(min_length=1, max_length=500)]


class SamplingFields(OpenAIRequest):
    """Fields shared by chat and text completions."""

    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    seed: int | None = None
    stop: Stop | Annotated[list[Stop], Field(max_length=MAX_STOP)] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    logit_bias: dict[str, float] | None = None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[Message], Field(min_length=1, max_length=10_000)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    functions: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1, max_length=1_000_000)]
PromptText = Annotated[str, Field(max_length=MAX_STRING)]


class CompletionRequest(SamplingFields):
    prompt: (
        PromptText
        | TokenIds
        | Annotated[list[PromptText], Field(min_length=1, max_length=2048)]
        | Annotated[list[TokenIds], Field(min_length=1, max_length=2048)]
    )
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: bool | None = False
    best_of: Annotated[int, Field(ge=1, le=20)] | None = None
    suffix: str | None = None

    def prompts(self) -> list[str | list[int]]:
        """The prompt as a list, one entry per choice."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and isinstance(p[0], int):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


class EmbeddingRequest(OpenAIRequest):
    input: (
        PromptText
        | TokenIds
        | Annotated[list[PromptText], Field(min_length=1, max_length=2048)]
        | Annotated[list[TokenIds], Field(min_length=1, max_length=2048)]
    )
    encoding_format: Literal["float", "base64"] | None = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("input must not be empty")
        return value

    def inputs(self) -> list[str | list[int]]:
        v = self.input
        if isinstance(v, str):
            return [v]
        if v and isinstance(v[0], int):
            return [list(v)]  # type: ignore[arg-type]
        return list(v)  # type: ignore[arg-type]


def refuse_unhonourable(
    request: ChatCompletionRequest | CompletionRequest, *, supports_tools: bool
) -> tuple[str, str] | None:
    """(param, reason) for the first known field we cannot honour, or None."""
    if request.n not in (None, 1):
        return "n", "n > 1 is not supported: send one request per choice"
    if request.presence_penalty not in (None, 0.0):
        return "presence_penalty", "presence_penalty is not supported by this network yet"
    if request.frequency_penalty not in (None, 0.0):
        return "frequency_penalty", "frequency_penalty is not supported by this network yet"
    if request.logit_bias:
        return "logit_bias", "logit_bias is not supported by this network yet"
    if isinstance(request, ChatCompletionRequest):
        if (request.tools or request.functions) and not supports_tools:
            param = "tools" if request.tools else "functions"
            return param, f"model {request.model} does not support tool calling"
        fmt = (request.response_format or {}).get("type", "text")
        if fmt != "text":
            return "response_format", f"response_format {fmt!r} is not supported: use 'text'"
        if request.modalities and request.modalities != ["text"]:
            return "modalities", "only the 'text' modality is supported"
        if request.audio:
            return "audio", "audio output is not supported"
        if request.prediction:
            return "prediction", "predicted outputs are not supported"
    else:
        if request.echo:
            return "echo", "echo is not supported by this network yet"
        if request.best_of not in (None, 1):
            return "best_of", "best_of > 1 is not supported"
        if request.suffix:
            return "suffix", "suffix (insertion) is not supported"
    return None
