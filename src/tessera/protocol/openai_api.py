"""OpenAI API request types as the gateway accepts them.

Unknown fields are accepted and ignored (clients send newer ones). Known fields are
strict, as OpenAI's own API is: no string for a number, no ``true`` for an integer.

Every bound a provider job has (``wire.Job``, ``wire.SamplingParams``,
``wire.ChatMessage``) is imported from ``wire``, so a request that passes here always
becomes a valid job: whatever a job could not carry is a 400 naming its parameter here,
never an error deeper down. The JSON schema of these types is the OpenAPI document's, so
it states the real constraints, including options this network supports only at their
default (``n``, ``best_of``, penalties, ``logit_bias``, ``echo``, ``suffix``...): such
an option is refused by its own bound, and :data:`UNSUPPORTED` says why.
What depends on the model (tool calling, context length, embedding dimensions) is refused
by :func:`refuse_unhonourable` and the serving layer, also with a 400 that names it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictInt,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tessera.ledger.accounts import MAX_UNITS
from tessera.protocol.wire import (
    MAX_MESSAGES,
    MAX_NEW_TOKENS,
    MAX_PROMPTS,
    MAX_STOPS,
    MAX_TEXT_CHARS,
    MAX_TOKEN_IDS,
    MAX_TOP_LOGPROBS,
    Name,
    StopText,
    TokenId,
)

MAX_STOP = MAX_STOPS
MAX_STRING = MAX_TEXT_CHARS
MAX_PARTS = 10_000
MIN_HEDGE_AFTER_MS = 100  # the earliest a request may ask to be hedged
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# A provider is named by its id (64 hex digits) or a prefix of at least this many.
MIN_ID_PREFIX = 16  # market/policy.py MIN_ID_PREFIX (a unit test keeps the two equal)
# market/regions.py REGIONS (a unit test keeps the two equal): protocol imports no market.
REGION_NAMES = ("eu", "eea", "europe", "na", "latam", "asia", "apac", "me", "oceania", "africa")


def _any_case(word: str) -> str:
    """A regex matching ``word`` in any letter case (JSON Schema patterns take no flags)."""
    return "".join(f"[{c.upper()}{c}]" for c in word)


REGION_PATTERN = "^([A-Za-z]{2}|" + "|".join(_any_case(r) for r in REGION_NAMES) + ")$"
PROVIDER_NAME_PATTERN = f"^[0-9a-fA-F]{{{MIN_ID_PREFIX},64}}$"

Units = Annotated[StrictInt, Field(ge=0, le=MAX_UNITS)]

# Why a request naming an option with a value other than its default is refused: the
# option's parameter name -> the message the 400 carries (code ``unsupported_parameter``).
UNSUPPORTED: dict[str, str] = {
    "n": "n > 1 is not supported: send one request per choice",
    "best_of": "best_of > 1 is not supported",
    "presence_penalty": "presence_penalty is not supported by this network yet (only 0)",
    "frequency_penalty": "frequency_penalty is not supported by this network yet (only 0)",
    "logit_bias": "logit_bias is not supported by this network yet",
    "echo": "echo is not supported by this network yet",
    "suffix": "suffix (insertion) is not supported",
    "response_format": "only response_format {'type': 'text'} is supported",
    "modalities": "only the 'text' modality is supported",
    "audio": "audio output is not supported",
    "prediction": "predicted outputs are not supported",
}


class ApiModel(BaseModel):
    """Strict known fields, unknown fields kept and ignored, no NaN or infinity."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)


class MaxPriceField(BaseModel):
    """OpenRouter's ``provider.max_price``, in base units per million tokens (integers)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: Units | None = None
    completion: Units | None = None


ProviderName = Annotated[
    str,
    Field(
        pattern=PROVIDER_NAME_PATTERN,
        description=f"A provider id (64 hex digits) or its first {MIN_ID_PREFIX}+ digits.",
    ),
]
ProviderNames = Annotated[list[ProviderName], Field(max_length=64)]
RegionName = Annotated[
    str,
    Field(
        pattern=REGION_PATTERN,
        description="An ISO 3166-1 country code (DE) or a region: " + ", ".join(REGION_NAMES),
    ),
]
RegionNames = Annotated[list[RegionName], Field(max_length=64)]
ModelName = Name


class ProviderPreferences(ApiModel):
    """The optional ``provider`` object: OpenRouter's routing preferences, extended.

    Providers are named by id or an id prefix of 16+ hex digits. Regions are ISO country
    codes or coarse regions (``eu``, ``na``, ...). Unknown keys are ignored, as OpenRouter
    clients may send ones we do not implement.
    """

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


class OpenAIRequest(ApiModel):
    model: ModelName
    # Fallback models, tried in order when ``model`` has no provider that can answer.
    models: Annotated[list[ModelName], Field(max_length=8)] | None = None
    user: Annotated[str, Field(max_length=256)] | None = None
    provider: ProviderPreferences | None = None


class TextPart(ApiModel):
    type: Literal["text"]
    text: Annotated[str, Field(max_length=MAX_STRING)]


class Message(ApiModel):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: (
        Annotated[str, Field(max_length=MAX_STRING)]
        | Annotated[list[TextPart], Field(max_length=MAX_PARTS)]
        | None
    ) = Field(
        default=None,
        description=f"Text, or text parts that join to at most {MAX_STRING} characters.",
    )
    name: Annotated[str, Field(max_length=256)] | None = None

    @model_validator(mode="after")
    def _parts_fit_one_message(self) -> Message:
        if isinstance(self.content, list):
            if sum(len(part.text) for part in self.content) > MAX_STRING:
                raise ValueError(f"the text parts join to more than {MAX_STRING} characters")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(ApiModel):
    include_usage: bool = False


class ResponseFormat(ApiModel):
    type: Literal["text"] = "text"


Stop = StopText
NewTokens = Annotated[int, Field(ge=1, le=MAX_NEW_TOKENS)]
Empty = Annotated[dict[str, Any], Field(max_length=0)]
OnlyZero = Annotated[float, Field(ge=0.0, le=0.0)]
OnlyOne = Annotated[int, Field(ge=1, le=1)]


def _false(value: bool) -> bool:
    if value:
        raise ValueError("only false is supported")
    return value


# ``Literal[False]`` would take 0 for false; this takes only the boolean.
OnlyFalse = Annotated[bool, AfterValidator(_false), Field(json_schema_extra={"const": False})]


class SamplingFields(OpenAIRequest):
    """Fields shared by chat and text completions."""

    max_tokens: NewTokens | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    seed: Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)] | None = None
    stop: Stop | Annotated[list[Stop], Field(max_length=MAX_STOP)] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: OnlyOne | None = None
    presence_penalty: OnlyZero | None = None
    frequency_penalty: OnlyZero | None = None
    logit_bias: Empty | None = None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(SamplingFields):
    # What _top_logprobs_need_logprobs checks, stated in the schema.
    model_config = ConfigDict(
        json_schema_extra={
            "if": {
                "properties": {"top_logprobs": {"type": "integer", "minimum": 1}},
                "required": ["top_logprobs"],
            },
            "then": {"properties": {"logprobs": {"const": True}}, "required": ["logprobs"]},
        }
    )

    messages: Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_completion_tokens: NewTokens | None = None
    logprobs: bool | None = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    tools: Annotated[list[dict[str, Any]], Field(max_length=128)] | None = Field(
        default=None, description="Only for models whose /v1/models entry has supports_tools."
    )
    tool_choice: Any = None
    functions: Annotated[list[dict[str, Any]], Field(max_length=128)] | None = Field(
        default=None, description="Only for models whose /v1/models entry has supports_tools."
    )
    response_format: ResponseFormat | None = None
    modalities: Annotated[list[Literal["text"]], Field(max_length=1)] | None = None
    audio: Empty | None = None
    prediction: Empty | None = None

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_need_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value and not info.data.get("logprobs"):
            raise ValueError("top_logprobs requires logprobs: true")
        return value


TokenIds = Annotated[list[TokenId], Field(min_length=1, max_length=MAX_TOKEN_IDS)]
PromptText = Annotated[str, Field(max_length=MAX_STRING)]


def _text_or_tokens(value: Any) -> str | None:
    """Which shape a prompt or input has, so only that shape's errors are reported."""
    if isinstance(value, str):
        return "text"
    if not isinstance(value, list) or not value:
        return "token-ids" if isinstance(value, list) else None
    first = value[0]
    if isinstance(first, str):
        return "texts"
    if isinstance(first, list):
        return "token-id-lists"
    return "token-ids"


TextOrTokens = Annotated[
    Annotated[PromptText, Tag("text")]
    | Annotated[TokenIds, Tag("token-ids")]
    | Annotated[list[PromptText], Field(min_length=1, max_length=MAX_PROMPTS), Tag("texts")]
    | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS), Tag("token-id-lists")],
    Discriminator(
        _text_or_tokens,
        custom_error_type="invalid_shape",
        custom_error_message=(
            "Input should be a string, a list of strings, a list of token ids or a list "
            "of lists of token ids"
        ),
    ),
]


class CompletionRequest(SamplingFields):
    prompt: TextOrTokens
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: OnlyFalse | None = False
    best_of: OnlyOne | None = None
    suffix: Annotated[str, Field(max_length=0)] | None = None

    def prompts(self) -> list[str | list[int]]:
        """The prompt as a list, one entry per choice."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            return []
        if isinstance(p[0], int):
            return [list(p)]
        return list(p)


class EmbeddingRequest(OpenAIRequest):
    input: TextOrTokens
    encoding_format: Literal["float", "base64"] | None = "float"
    dimensions: Annotated[int, Field(ge=1, le=65_536)] | None = None

    def inputs(self) -> list[str | list[int]]:
        v = self.input
        if isinstance(v, str):
            return [v]
        if not v:
            return []
        if isinstance(v[0], int):
            return [list(v)]
        return list(v)


def refuse_unhonourable(
    request: ChatCompletionRequest | CompletionRequest, *, supports_tools: bool
) -> tuple[str, str] | None:
    """(param, reason) for the first known field this model cannot honour, or None.

    Options no model here supports are refused when the request is parsed (their bounds
    above); what is left depends on the model.
    """
    if isinstance(request, ChatCompletionRequest):
        if (request.tools or request.functions) and not supports_tools:
            param = "tools" if request.tools else "functions"
            return param, f"model {request.model} does not support tool calling"
    return None
