import pytest

from tessera.errors import InvalidRequest
from tessera.gateway.request_body import validated
from tessera.market.policy import MIN_ID_PREFIX as POLICY_MIN_ID_PREFIX
from tessera.market.regions import REGIONS
from tessera.protocol.openai_api import (
    MIN_ID_PREFIX,
    REGION_NAMES,
    UNSUPPORTED,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    refuse_unhonourable,
)
from tessera.protocol.wire import (
    MAX_NEW_TOKENS,
    MAX_TEXT_CHARS,
    MAX_TOKEN_ID,
    ChatMessage,
    Job,
    SamplingParams,
)

MSG = [{"role": "user", "content": "hi"}]


def chat(**kw: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, **kw})


def test_unknown_fields_are_accepted() -> None:
    assert chat(some_future_field={"x": 1}).model == "m"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logit_bias": {"1": 5}}, "logit_bias"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": -1}, "frequency_penalty"),
        ({"modalities": ["audio"]}, "modalities"),
        ({"audio": {"voice": "x"}}, "audio"),
        ({"prediction": {"type": "content"}}, "prediction"),
    ],
)
def test_options_no_model_supports_are_refused_by_name(
    fields: dict[str, object], param: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        validated({"model": "m", "messages": MSG, **fields}, ChatCompletionRequest)
    assert (info.value.param, info.value.code) == (param, "unsupported_parameter")
    assert info.value.message == UNSUPPORTED[param]


def test_tools_are_refused_only_where_the_model_lacks_them() -> None:
    tools = chat(tools=[{"type": "function", "function": {"name": "f"}}])
    refused = refuse_unhonourable(tools, supports_tools=False)
    assert refused is not None and refused[0] == "tools"
    assert refuse_unhonourable(tools, supports_tools=True) is None


def test_honourable_request_passes() -> None:
    assert (
        refuse_unhonourable(chat(n=1, response_format={"type": "text"}), supports_tools=False)
        is None
    )


def test_completion_prompt_shapes() -> None:
    def prompts(p: object) -> list[object]:
        return CompletionRequest.model_validate({"model": "m", "prompt": p}).prompts()  # type: ignore[return-value]

    assert prompts("a") == ["a"]
    assert prompts(["a", "b"]) == ["a", "b"]
    assert prompts([1, 2]) == [[1, 2]]
    assert prompts([[1], [2, 3]]) == [[1], [2, 3]]
    for option in ({"echo": True}, {"best_of": 2}, {"suffix": "tail"}):
        with pytest.raises(InvalidRequest) as info:
            validated({"model": "m", "prompt": "x", **option}, CompletionRequest)
        assert info.value.param == next(iter(option))
        assert info.value.code == "unsupported_parameter"


def test_embedding_input_shapes_and_bad_types() -> None:
    assert EmbeddingRequest.model_validate({"model": "m", "input": [3, 4]}).inputs() == [[3, 4]]
    with pytest.raises(ValueError):
        EmbeddingRequest.model_validate({"model": "m", "input": []})
    with pytest.raises(ValueError):
        EmbeddingRequest.model_validate({"model": "m", "input": [1.5]})
    with pytest.raises(ValueError):
        EmbeddingRequest.model_validate({"model": "m", "input": "x", "encoding_format": "hex"})


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_tokens": "8"}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"temperature": True}, "temperature"),
        ({"temperature": "0.5"}, "temperature"),
        ({"seed": "1"}, "seed"),
        ({"stream": "true"}, "stream"),
        ({"stream": 1}, "stream"),
        ({"n": "2"}, "n"),
        ({"provider": {"allow_fallbacks": "no"}}, "provider.allow_fallbacks"),
        ({"provider": {"hedge_after_ms": True}}, "provider.hedge_after_ms"),
    ],
)
def test_known_fields_are_strict_as_openai_is(fields: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        validated({"model": "m", "messages": MSG, **fields}, ChatCompletionRequest)
    code = "invalid_provider_policy" if param.startswith("provider.") else "invalid_value"
    assert (info.value.param, info.value.code) == (param, code)
    assert chat(max_tokens=8, temperature=1, extra_field="kept").max_tokens == 8


@pytest.mark.parametrize(
    ("provider", "param"),
    [
        ({"only": ["not-hex-at-all"]}, "provider.only"),
        ({"order": ["abc"]}, "provider.order"),
        ({"ignore": ["a" * 65]}, "provider.ignore"),
        ({"regions_allow": ["atlantis"]}, "provider.regions_allow"),
        ({"regions_deny": ["e"]}, "provider.regions_deny"),
    ],
)
def test_provider_names_and_regions_are_checked_when_parsed(
    provider: dict[str, object], param: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        validated({"model": "m", "messages": MSG, "provider": provider}, ChatCompletionRequest)
    assert (info.value.param, info.value.code) == (param, "invalid_provider_policy")
    ok = chat(provider={"only": ["ABCDEF0123456789"], "regions_allow": ["eu", "Europe", "de"]})
    assert ok.provider is not None


def test_region_names_are_the_markets() -> None:
    assert set(REGION_NAMES) == set(REGIONS)


def test_the_schema_asks_provider_prefixes_as_long_as_the_policy_does() -> None:
    assert MIN_ID_PREFIX == POLICY_MIN_ID_PREFIX
    prefix = "ab" * (MIN_ID_PREFIX // 2 - 1)
    with pytest.raises(InvalidRequest):
        validated(
            {"model": "m", "messages": [], "provider": {"only": [prefix]}}, ChatCompletionRequest
        )


# What a provider job accepts, from each API field (what serving copies into the job).
def _job_of(request: ChatCompletionRequest | CompletionRequest | EmbeddingRequest) -> Job:
    if isinstance(request, EmbeddingRequest):
        return Job(job_id="j", model=request.model, kind="embedding", inputs=request.inputs())
    params = SamplingParams(
        max_tokens=getattr(request, "max_completion_tokens", None) or request.max_tokens or 1,
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        seed=request.seed,
        stop=request.stop_list(),
        top_logprobs=getattr(request, "top_logprobs", None) or 0,
    )
    if isinstance(request, CompletionRequest):
        return Job(
            job_id="j",
            model=request.model,
            kind="completion",
            prompts=request.prompts(),
            params=params,
        )
    messages = [ChatMessage(role=m.role, content=m.text()) for m in request.messages]
    return Job(job_id="j", model=request.model, kind="chat", messages=messages, params=params)


HALF = "a" * (MAX_TEXT_CHARS // 2)
AT_THE_BOUNDS = [
    (CompletionRequest, {"prompt": [MAX_TOKEN_ID]}, {"prompt": [MAX_TOKEN_ID + 1]}, "prompt"),
    (
        CompletionRequest,
        {"prompt": [[0, MAX_TOKEN_ID]]},
        {"prompt": [[MAX_TOKEN_ID + 1]]},
        "prompt",
    ),
    (EmbeddingRequest, {"input": [MAX_TOKEN_ID]}, {"input": [10**8]}, "input"),
    (
        ChatCompletionRequest,
        {"messages": [{"role": "user", "content": [{"type": "text", "text": HALF}] * 2}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": HALF + "a"}] * 2}]},
        "messages",
    ),
    (
        ChatCompletionRequest,
        {"messages": MSG, "max_tokens": MAX_NEW_TOKENS},
        {"messages": MSG, "max_tokens": MAX_NEW_TOKENS + 1},
        "max_tokens",
    ),
    (
        ChatCompletionRequest,
        {"messages": MSG, "max_completion_tokens": MAX_NEW_TOKENS},
        {"messages": MSG, "max_completion_tokens": MAX_NEW_TOKENS + 1},
        "max_completion_tokens",
    ),
    (
        CompletionRequest,
        {"prompt": "x", "stop": ["s" * 500] * 4},
        {"prompt": "x", "stop": ["s" * 501]},
        "stop",
    ),
    (
        CompletionRequest,
        {"prompt": "x", "model": "m" * 200},
        {"prompt": "x", "model": "m" * 201},
        "model",
    ),
]


@pytest.mark.parametrize(("model", "at", "beyond", "param"), AT_THE_BOUNDS)
def test_what_the_api_accepts_a_job_carries_and_what_a_job_refuses_is_a_400(
    model: type[ChatCompletionRequest | CompletionRequest | EmbeddingRequest],
    at: dict[str, object],
    beyond: dict[str, object],
    param: str,
) -> None:
    _job_of(validated({"model": "m", **at}, model))  # the largest request makes a job
    with pytest.raises(InvalidRequest) as info:
        validated({"model": "m", **beyond}, model)
    assert info.value.param == param


def test_sampling_bounds_are_the_jobs() -> None:
    """Each sampling field's bounds in the API schema lie within the job's."""
    api = ChatCompletionRequest.model_json_schema()["properties"]
    job = SamplingParams.model_json_schema()["properties"]
    for name in ("max_tokens", "temperature", "top_p", "top_logprobs"):
        (bounds,) = [b for b in api[name]["anyOf"] if b.get("type") != "null"]
        for low in ("minimum", "exclusiveMinimum"):
            if low in job[name]:
                assert bounds[low] >= job[name][low], name
        for high in ("maximum", "exclusiveMaximum"):
            if high in job[name]:
                assert bounds[high] <= job[name][high], name
