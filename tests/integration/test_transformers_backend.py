"""The transformers text backend, driven with the real tiny model on this CPU."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tessera.protocol.wire import ChatMessage, SamplingParams
from tessera.provider.backends.base import (
    BackendError,
    CancelToken,
    Delta,
    Finish,
    Prompt,
    PromptTooLong,
    TextBackend,
)
from tessera.provider.backends.transformers_text import TransformersTextBackend
from tessera.provider.model_hash import weights_sha256

pytestmark = pytest.mark.integration

FOX = [ChatMessage(role="user", content="Tell me a story about a fox.")]
ANT = [ChatMessage(role="user", content="What did the ant say?")]
WAIT_S = 20.0
RUNAWAY_TOKENS = 300
# Openings the tiny model continues; which of them runs long depends on the trained weights.
CANDIDATES = (
    "The Wolf",
    "The Fox",
    "The Lion",
    "Once upon a time",
    "The Hare",
    "The Ant said",
    "In olden times",
    "The old woman",
    "The Frog",
    "There was once",
    "The Crow",
    "The Dog",
    "The Goat",
    "The Mouse",
    "The little kids",
    "The Stork",
    "The Ass",
    "A man",
)


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path) -> Iterator[TransformersTextBackend]:
    b = TransformersTextBackend.load(tiny_model_dir)
    yield b
    asyncio.run(b.close())


@pytest.fixture(scope="module")
def runaway(backend: TransformersTextBackend) -> str:
    """A text prompt whose greedy continuation runs RUNAWAY_TOKENS tokens without ending."""

    async def find() -> str | None:
        for prompt in CANDIDATES:
            _, finish = await collect(backend, prompt, params(max_tokens=RUNAWAY_TOKENS))
            if finish.reason == "length":
                return prompt
        return None

    found = asyncio.run(find())
    if found is None:
        pytest.fail(f"every candidate prompt ends before {RUNAWAY_TOKENS} tokens; add more")
    return found


def params(**kw: object) -> SamplingParams:
    base: dict[str, object] = {"max_tokens": 40, "temperature": 0.0}
    return SamplingParams.model_validate(base | kw)


async def collect(
    backend: TransformersTextBackend, prompt: Prompt, p: SamplingParams
) -> tuple[list[Delta], Finish]:
    """Run one stream to the end; checks that exactly one Finish comes, last."""
    events = [e async for e in backend.stream(prompt, p, CancelToken())]
    assert isinstance(events[-1], Finish)
    assert all(isinstance(e, Delta) for e in events[:-1])
    return [e for e in events[:-1] if isinstance(e, Delta)], events[-1]


def text_of(deltas: Sequence[Delta]) -> str:
    return "".join(d.text for d in deltas)


async def wait_idle(backend: TransformersTextBackend) -> None:
    for _ in range(int(WAIT_S / 0.05)):
        if backend.active_streams == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the generation thread kept running after the consumer left")


def test_info_describes_the_model(backend: TransformersTextBackend, tiny_model_dir: Path) -> None:
    assert isinstance(backend, TextBackend)
    assert backend.info.name == "tessera-tiny"
    assert backend.info.kind == "text"
    assert backend.info.weights_sha256 == weights_sha256(tiny_model_dir)
    assert backend.info.context_length == 1024


async def test_chat_produces_words_and_counts_tokens(
    backend: TransformersTextBackend, tiny_model_dir: Path
) -> None:
    deltas, finish = await collect(backend, FOX, params(max_tokens=60))
    text = text_of(deltas)
    assert sum(c.isalpha() for c in text) > len(text) / 2
    tok = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    rendered = tok.apply_chat_template(
        [m.model_dump() for m in FOX], add_generation_prompt=True, tokenize=False
    )
    assert finish.prompt_tokens == len(tok(rendered, add_special_tokens=False)["input_ids"])
    assert 0 < finish.completion_tokens <= 60
    produced = sum(len(d.logprobs) for d in deltas)
    # every produced token has its logprob, except an end-of-sequence token
    eos = 1 if finish.reason == "stop" else 0
    assert produced == finish.completion_tokens - eos


async def test_greedy_is_deterministic(backend: TransformersTextBackend) -> None:
    first, _ = await collect(backend, ANT, params())
    second, _ = await collect(backend, ANT, params())
    assert text_of(first) == text_of(second)
    assert text_of(first)


async def test_same_seed_same_sample_other_seed_other_sample(
    backend: TransformersTextBackend,
) -> None:
    p = {"temperature": 1.0, "max_tokens": 40}
    a, _ = await collect(backend, FOX, params(seed=11, **p))
    b, _ = await collect(backend, FOX, params(seed=11, **p))
    c, _ = await collect(backend, FOX, params(seed=12, **p))
    assert text_of(a) == text_of(b)
    assert [lp.token_id for d in a for lp in d.logprobs] != [
        lp.token_id for d in c for lp in d.logprobs
    ]


async def test_max_tokens_gives_length_with_exact_count(
    backend: TransformersTextBackend, runaway: str
) -> None:
    full, finish = await collect(backend, runaway, params(max_tokens=30))
    assert finish.reason == "length"
    assert finish.completion_tokens == 30
    short, finish = await collect(backend, runaway, params(max_tokens=7))
    assert finish.reason == "length"
    assert finish.completion_tokens == 7
    assert sum(len(d.logprobs) for d in short) == 7
    assert text_of(full).startswith(text_of(short))


async def test_stop_string_split_across_tokens_never_leaks(
    backend: TransformersTextBackend, runaway: str
) -> None:
    deltas, _ = await collect(backend, runaway, params(max_tokens=40))
    texts = [d.text for d in deltas]
    k = next(
        i
        for i in range(4, len(texts) - 1)
        if len(texts[i].strip()) >= 2 and len(texts[i + 1].strip()) >= 2
    )
    stop = texts[k][-2:] + texts[k + 1][:2]  # spans the boundary between two tokens
    full = text_of(deltas)
    expected = full[: full.find(stop)]
    stopped, finish = await collect(backend, runaway, params(max_tokens=40, stop=[stop]))
    assert finish.reason == "stop"
    assert text_of(stopped) == expected
    assert stop not in text_of(stopped)
    assert finish.completion_tokens < 40


async def test_greedy_logprob_is_the_top_logprob(backend: TransformersTextBackend) -> None:
    deltas, _ = await collect(backend, FOX, params(top_logprobs=5, logprobs=True))
    entries = [lp for d in deltas for lp in d.logprobs]
    assert entries
    for lp in entries:
        assert len(lp.top) == 5
        assert lp.logprob == pytest.approx(lp.top[0].logprob, abs=1e-6)
        assert [t.logprob for t in lp.top] == sorted((t.logprob for t in lp.top), reverse=True)
        assert lp.logprob <= 0.0


async def test_logprobs_are_raw_and_match_a_teacher_forced_pass(
    backend: TransformersTextBackend, tiny_model_dir: Path
) -> None:
    deltas, finish = await collect(backend, "The Lion", params(temperature=1.7, seed=5, top_p=0.9))
    entries = [lp for d in deltas for lp in d.logprobs]
    tok = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True)
    prompt_ids = tok("The Lion")["input_ids"]
    ids = prompt_ids + [lp.token_id for lp in entries]
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    expected = torch.log_softmax(logits.float(), dim=-1)
    for i, lp in enumerate(entries):
        row = expected[len(prompt_ids) - 1 + i]
        assert lp.logprob == pytest.approx(float(row[lp.token_id]), abs=1e-3)
    assert finish.prompt_tokens == len(prompt_ids)


async def test_token_id_prompt_equals_text_prompt(
    backend: TransformersTextBackend, tiny_model_dir: Path
) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    ids = tok("The Hare")["input_ids"]
    by_text, f1 = await collect(backend, "The Hare", params())
    by_ids, f2 = await collect(backend, ids, params())
    assert text_of(by_text) == text_of(by_ids)
    assert f1 == f2
    assert f2.prompt_tokens == len(ids)


async def test_bad_prompts_fail_before_any_event(backend: TransformersTextBackend) -> None:
    ctx = backend.info.context_length
    with pytest.raises(PromptTooLong):
        await anext(aiter(backend.stream([5] * ctx, params(), CancelToken())))
    with pytest.raises(BackendError) as err:
        await anext(aiter(backend.stream([10**6], params(), CancelToken())))
    assert err.value.code == "invalid_prompt"
    with pytest.raises(BackendError) as err:
        await anext(aiter(backend.stream([], params(), CancelToken())))
    assert err.value.code == "invalid_prompt"


async def test_context_bounds_max_tokens(backend: TransformersTextBackend) -> None:
    ctx = backend.info.context_length
    _, finish = await collect(backend, [5] * (ctx - 3), params(max_tokens=50))
    assert finish.completion_tokens <= 3
    assert finish.prompt_tokens == ctx - 3


async def test_cancel_stops_early(backend: TransformersTextBackend, runaway: str) -> None:
    cancel = CancelToken()
    events = []
    async for event in backend.stream(runaway, params(max_tokens=RUNAWAY_TOKENS), cancel):
        events.append(event)
        cancel.cancel()
    finish = events[-1]
    assert isinstance(finish, Finish)
    # uncancelled, this prompt runs to the limit (that is how `runaway` was chosen)
    assert finish.completion_tokens < RUNAWAY_TOKENS
    await wait_idle(backend)


async def test_closing_the_consumer_stops_the_thread(
    backend: TransformersTextBackend, runaway: str
) -> None:
    cancel = CancelToken()
    gen = backend.stream(runaway, params(max_tokens=RUNAWAY_TOKENS), cancel)
    first = await anext(gen)
    assert isinstance(first, Delta)
    await gen.aclose()
    assert cancel.cancelled
    await wait_idle(backend)


async def test_cancelling_the_consumer_task_stops_the_thread(
    backend: TransformersTextBackend, runaway: str
) -> None:
    cancel = CancelToken()
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in backend.stream(runaway, params(max_tokens=RUNAWAY_TOKENS), cancel):
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancel.cancelled
    await wait_idle(backend)


async def test_two_concurrent_streams_both_complete(backend: TransformersTextBackend) -> None:
    alone_fox, _ = await collect(backend, FOX, params())
    alone_ant, _ = await collect(backend, ANT, params())
    (fox, f1), (ant, f2) = await asyncio.gather(
        collect(backend, FOX, params()), collect(backend, ANT, params())
    )
    assert text_of(fox) == text_of(alone_fox)
    assert text_of(ant) == text_of(alone_ant)
    assert f1.completion_tokens > 0 and f2.completion_tokens > 0


async def test_model_without_chat_template(tiny_model_dir: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    shutil.copytree(tiny_model_dir, plain)
    config_path = plain / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    del config["chat_template"]
    config_path.write_text(json.dumps(config))
    b = await asyncio.to_thread(TransformersTextBackend.load, plain, name="plain")
    try:
        assert b.info.name == "plain"
        with pytest.raises(BackendError) as err:
            await anext(aiter(b.stream(FOX, params(), CancelToken())))
        assert err.value.code == "chat_template_missing"
        _, finish = await collect(b, "The Fox", params(max_tokens=3))
        assert 1 <= finish.completion_tokens <= 3
    finally:
        await b.close()
    with pytest.raises(BackendError) as err:
        await anext(aiter(b.stream("The Fox", params(), CancelToken())))
    assert err.value.code == "backend_closed"
