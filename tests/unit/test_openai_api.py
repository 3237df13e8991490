import pytest

from tessera.protocol.openai_api import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    refuse_unhonourable,
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
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logit_bias": {"1": 5}}, "logit_bias"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
    ],
)
def test_fields_we_cannot_honour_are_named(fields: dict[str, object], param: str) -> None:
    refused = refuse_unhonourable(chat(**fields), supports_tools=False)
    assert refused is not None and refused[0] == param


def test_honourable_request_passes() -> None:
    assert (
        refuse_unhonourable(chat(n=1, response_format={"type": "text"}), supports_tools=False)
        is None
    )
    tools = chat(tools=[{"type": "function", "function": {"name": "f"}}])
    assert refuse_unhonourable(tools, supports_tools=True) is None


def test_completion_prompt_shapes() -> None:
    def prompts(p: object) -> list[object]:
        return CompletionRequest.model_validate({"model": "m", "prompt": p}).prompts()  # type: ignore[return-value]

    assert prompts("a") == ["a"]
    assert prompts(["a", "b"]) == ["a", "b"]
    assert prompts([1, 2]) == [[1, 2]]
    assert prompts([[1], [2, 3]]) == [[1], [2, 3]]
    refused = refuse_unhonourable(
        CompletionRequest.model_validate({"model": "m", "prompt": "x", "echo": True}),
        supports_tools=False,
    )
    assert refused is not None and refused[0] == "echo"


def test_embedding_input_shapes_and_bad_types() -> None:
    assert EmbeddingRequest.model_validate({"model": "m", "input": [3, 4]}).inputs() == [[3, 4]]
    with pytest.raises(ValueError):
        EmbeddingRequest.model_validate({"model": "m", "input": []})
    with pytest.raises(ValueError):
        EmbeddingRequest.model_validate({"model": "m", "input": [1.5]})
    with pytest.raises(ValueError):
        EmbeddingRequest.model_validate({"model": "m", "input": "x", "encoding_format": "hex"})
