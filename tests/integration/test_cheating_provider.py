"""The cheating providers' pieces, each on its own, on the real tiny model.

The adversarial end-to-end test (tests/e2e/test_adversarial.py) runs these cheaters as
real processes against a real gateway; here each cheat is shown to do what it claims, so
a cheater that goes unnoticed there is the gateway's miss, not a cheat that never
happened. The numbers the cheats move (log-probability deviations, token counts) are
printed, and compared with what honest hardware differences move.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from tessera.config import ProviderSettings
from tessera.protocol import signing
from tessera.protocol.receipts import OutputDigest, verify_receipt_signature
from tessera.protocol.wire import (
    ChatMessage,
    Chunk,
    Done,
    Frame,
    Hardware,
    Job,
    SamplingParams,
)
from tessera.provider.agent import ProviderAgent, ServedModel
from tessera.provider.backends.base import (
    CancelToken,
    Delta,
    Finish,
    Prompt,
    ScoreRequest,
    TextBackend,
)
from tessera.provider.backends.transformers_text import TransformersTextBackend
from tessera.provider.loading import offer_for
from tessera.provider.model_hash import weights_sha256
from tessera.verify.catalog import Catalog, CatalogModel, Challenge
from tessera.verify.challenge import challenge_job
from tessera.verify.receipts import FORGED, TAMPERED, check_receipt

from support.cheating_provider import (
    INFLATE_COMPLETION,
    INFLATE_PROMPT,
    TRUNCATE_TO,
    BaitAndSwitch,
    ChallengeBook,
    PromptEncoder,
    ReceiptCheatingAgent,
    Tamper,
    forging,
    inflating,
    load_quantized,
    random_tokens,
    replaying,
    truncating,
)
from support.impostor_model import ensure_impostor_model
from support.torch_threads import one_torch_thread

pytestmark = pytest.mark.integration

CHALLENGE_PROMPT = "Once upon a time there was"
CHALLENGE_TOKENS = 12
FOX = [ChatMessage(role="user", content="Tell me a story about a fox and the grapes.")]
PROMPTS: tuple[Prompt, ...] = (
    "The Fox and the Grapes. A hungry Fox saw some fine bunches of Grapes hanging",
    "What did the Ant say to the Grasshopper when the winter came?",
    "The old woman said to the wolf who came knocking at her door one night:",
    "In olden times, when wishing still helped, there lived a king whose daughters",
    FOX,
    [ChatMessage(role="user", content="Why did the ant work all summer?")],
)
GREEDY = SamplingParams(max_tokens=16, temperature=0.0)


@pytest.fixture(scope="module", autouse=True)
def torch_on_one_thread() -> Iterator[None]:
    """The models here run in the test process: on one torch thread, as a provider's do."""
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def honest(tiny_model_dir: Path) -> Iterator[TransformersTextBackend]:
    backend = TransformersTextBackend.load(tiny_model_dir, device="cpu", dtype="float32")
    yield backend
    asyncio.run(backend.close())


@pytest.fixture(scope="module")
def encoder(tiny_model_dir: Path) -> PromptEncoder:
    from transformers import AutoTokenizer

    return PromptEncoder(AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True))


@pytest.fixture
def catalog_file(tmp_path: Path, honest: TransformersTextBackend) -> Path:
    entry = CatalogModel(
        name=honest.info.name,
        weights_sha256=honest.info.weights_sha256,
        kind="text",
        challenges=[Challenge(prompt=CHALLENGE_PROMPT, max_tokens=CHALLENGE_TOKENS)],
    )
    path = tmp_path / "catalog.json"
    path.write_text(Catalog([entry]).to_json(), encoding="utf-8")
    return path


class Run:
    """One stream's events, gathered."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.logprobs: list[float] = []
        self.text = ""
        self.first_prompt_tokens: int | None = None
        self.finish: Finish | None = None


async def collect(events: AsyncIterator[Delta | Finish]) -> Run:
    run = Run()
    async for event in events:
        if isinstance(event, Delta):
            if run.first_prompt_tokens is None:
                run.first_prompt_tokens = event.prompt_tokens
            run.text += event.text
            run.ids.extend(e.token_id for e in event.logprobs)
            run.logprobs.extend(e.logprob for e in event.logprobs)
        else:
            run.finish = event
    return run


async def deviation(auditor: TextBackend, prompt: Prompt, run: Run) -> tuple[float, float]:
    """(max, mean) |claimed - audited| log-prob of a run under the auditor's model."""
    [scored] = await auditor.score([ScoreRequest(prompt, run.ids)])
    diffs = [abs(c - s.logprob) for c, s in zip(run.logprobs, scored.tokens, strict=True)]
    return max(diffs), math.fsum(diffs) / len(diffs)


# ---------------------------------------------------------------- recognising challenges


def test_the_challenge_book_knows_the_catalog_prompts_and_nothing_else(
    catalog_file: Path, honest: TransformersTextBackend
) -> None:
    book = ChallengeBook.from_catalog(catalog_file, honest.info.name)
    assert len(book) == 1
    greedy = SamplingParams(max_tokens=CHALLENGE_TOKENS, temperature=0.0)
    assert book.recognises(CHALLENGE_PROMPT, greedy)
    assert not book.recognises(CHALLENGE_PROMPT, greedy.model_copy(update={"temperature": 0.7}))
    assert not book.recognises(CHALLENGE_PROMPT, greedy.model_copy(update={"max_tokens": 13}))
    assert not book.recognises(CHALLENGE_PROMPT + " a", greedy)
    assert not book.recognises(FOX, greedy)
    # The very job the gateway sends as a join challenge.
    entry = Catalog.load(catalog_file).get(honest.info.name)
    assert entry is not None
    assert book.recognises_job(challenge_job(entry.name, entry.challenges[0], "challenge-x.0"))
    assert len(ChallengeBook.from_catalog(catalog_file, "another-model")) == 0


async def test_bait_and_switch_is_honest_on_challenges_only(
    catalog_file: Path, honest: TransformersTextBackend, encoder: PromptEncoder
) -> None:
    book = ChallengeBook.from_catalog(catalog_file, honest.info.name)
    cheater = BaitAndSwitch(honest, random_tokens(encoder), book)
    assert cheater.info == honest.info  # the real name and weight hash
    greedy = SamplingParams(max_tokens=CHALLENGE_TOKENS, temperature=0.0)
    reference = await collect(honest.stream(CHALLENGE_PROMPT, greedy, CancelToken()))
    answered = await collect(cheater.stream(CHALLENGE_PROMPT, greedy, CancelToken()))
    assert (answered.ids, answered.logprobs) == (reference.ids, reference.logprobs)
    assert (cheater.honest_streams, cheater.cheated) == (1, 0)
    # The same prompt outside a challenge (other max_tokens) is cheated on.
    other = greedy.model_copy(update={"max_tokens": CHALLENGE_TOKENS + 4})
    cheated = await collect(cheater.stream(CHALLENGE_PROMPT, other, CancelToken()))
    assert cheated.ids[:CHALLENGE_TOKENS] != reference.ids
    assert cheater.cheated == 1
    # Audits of other providers are scored by the honest model.
    [mine] = await cheater.score([ScoreRequest(CHALLENGE_PROMPT, reference.ids)])
    [theirs] = await honest.score([ScoreRequest(CHALLENGE_PROMPT, reference.ids)])
    assert mine == theirs
    naive = BaitAndSwitch(honest, random_tokens(encoder), ChallengeBook())
    guessed = await collect(naive.stream(CHALLENGE_PROMPT, greedy, CancelToken()))
    assert guessed.ids != reference.ids and naive.cheated == 1


# ---------------------------------------------------------------- what each cheat changes


async def test_the_encoder_counts_prompts_as_the_backend_does(
    honest: TransformersTextBackend, encoder: PromptEncoder
) -> None:
    for prompt in PROMPTS:
        run = await collect(honest.stream(prompt, SamplingParams(max_tokens=1), CancelToken()))
        assert run.finish is not None
        assert len(encoder.encode(prompt)) == run.finish.prompt_tokens


async def test_random_tokens_are_uniform_non_special_and_made_up(
    honest: TransformersTextBackend, encoder: PromptEncoder
) -> None:
    tok = encoder.tokenizer
    special = set(tok.all_special_ids)
    params = SamplingParams(max_tokens=24, temperature=0.7)
    seen: set[int] = set()
    for prompt in PROMPTS[:3]:
        run = await collect(random_tokens(encoder)(prompt, params, CancelToken()))
        assert run.finish is not None
        assert len(run.ids) == run.finish.completion_tokens == params.max_tokens
        assert run.finish.reason == "length" and not run.finish.eos
        assert not special & set(run.ids) and all(0 <= t < len(tok) for t in run.ids)
        assert run.text == tok.decode(
            run.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        assert run.first_prompt_tokens == run.finish.prompt_tokens == len(encoder.encode(prompt))
        worst, mean = await deviation(honest, prompt, run)
        print(f"random {prompt!r:.40}: max |d| {worst:.2f}, mean {mean:.2f}")
        assert mean > 0.5  # made-up numbers, nowhere near the model's
        seen.update(run.ids)
    assert len(seen) > 50  # spread over the vocabulary, not a few favourites


async def test_truncation_runs_only_the_prompt_tail_and_reports_the_whole_prompt(
    honest: TransformersTextBackend, encoder: PromptEncoder
) -> None:
    for prompt in PROMPTS:
        full = encoder.encode(prompt)
        assert len(full) > TRUNCATE_TO
        cut = await collect(truncating(honest, encoder)(prompt, GREEDY, CancelToken()))
        tail = await collect(honest.stream(full[-TRUNCATE_TO:], GREEDY, CancelToken()))
        assert cut.finish is not None and tail.finish is not None
        assert (cut.ids, cut.logprobs) == (tail.ids, tail.logprobs)
        assert cut.first_prompt_tokens == cut.finish.prompt_tokens == len(full)
        assert tail.finish.prompt_tokens == TRUNCATE_TO
        if cut.ids:
            worst, mean = await deviation(honest, prompt, cut)
            print(f"truncate {prompt!r:.40}: max |d| {worst:.3f}, mean {mean:.3f}")


async def test_inflation_claims_more_tokens_than_ran(
    honest: TransformersTextBackend,
) -> None:
    real = await collect(honest.stream(FOX, GREEDY, CancelToken()))
    claimed = await collect(inflating(honest)(FOX, GREEDY, CancelToken()))
    assert real.finish is not None and claimed.finish is not None
    assert claimed.ids == real.ids
    assert claimed.finish.prompt_tokens == real.finish.prompt_tokens + INFLATE_PROMPT
    assert claimed.finish.completion_tokens == real.finish.completion_tokens + INFLATE_COMPLETION
    assert claimed.first_prompt_tokens == real.finish.prompt_tokens + INFLATE_PROMPT


async def test_int4_moves_log_probs_far_beyond_honest_hardware_noise(
    tiny_model_dir: Path, honest: TransformersTextBackend
) -> None:
    """An honest bfloat16 provider is the largest honest difference calibration sees;
    calibration allows it times a margin of 3. Fake int4 must land beyond that in every
    output, int8 does not (so int8 is within what honest hardware does: a cheater gains
    little from it, and no tolerance could tell it apart)."""
    bf16 = TransformersTextBackend.load(tiny_model_dir, device="cpu", dtype="bfloat16")
    int4 = load_quantized(tiny_model_dir, honest.info, bits=4)
    int8 = load_quantized(tiny_model_dir, honest.info, bits=8)
    try:
        honest_worst = 0.0
        rows = []
        for prompt in PROMPTS:
            numbers = []
            for backend in (bf16, int8, int4):
                run = await collect(backend.stream(prompt, GREEDY, CancelToken()))
                numbers.append(await deviation(honest, prompt, run))
            honest_worst = max(honest_worst, numbers[0][0])
            rows.append(numbers)
        for prompt, (b, i8, i4) in zip(PROMPTS, rows, strict=True):
            print(
                f"{str(prompt)[:40]!r}: bf16 max {b[0]:.3f} mean {b[1]:.3f} | "
                f"int8 max {i8[0]:.3f} mean {i8[1]:.3f} | int4 max {i4[0]:.3f} mean {i4[1]:.3f}"
            )
        assert all(i4[0] > 3 * honest_worst for _, _, i4 in rows), (honest_worst, rows)
        assert max(i8[0] for _, i8, _ in rows) < 3 * honest_worst
    finally:
        for backend in (bf16, int4, int8):
            await backend.close()


async def test_the_impostor_is_another_model_under_the_same_name(
    honest: TransformersTextBackend,
) -> None:
    impostor_dir = await asyncio.to_thread(ensure_impostor_model)
    impostor = TransformersTextBackend.load(impostor_dir, device="cpu", dtype="float32")
    try:
        assert impostor.info.name == honest.info.name
        assert weights_sha256(impostor_dir) != honest.info.weights_sha256
        for prompt in PROMPTS[:3]:
            run = await collect(impostor.stream(prompt, GREEDY, CancelToken()))
            reference = await collect(honest.stream(prompt, GREEDY, CancelToken()))
            assert run.ids != reference.ids
            worst, mean = await deviation(honest, prompt, run)
            print(f"impostor {prompt!r:.40}: max |d| {worst:.2f}, mean {mean:.2f}")
            assert worst > 1.0
    finally:
        await impostor.close()


# ---------------------------------------------------------------- receipts, through the agent


async def run_jobs(agent: ProviderAgent, jobs: list[Job]) -> list[tuple[Done, OutputDigest]]:
    """Run jobs through the agent's own job path; each job's Done and its relayed chunks."""
    results = []
    for job in jobs:
        frames: list[Frame] = []

        async def send(frame: Frame) -> None:
            frames.append(frame)  # noqa: B023 (used before the next job starts)

        await agent._run_job(job, send, CancelToken())
        digest = OutputDigest()
        for frame in frames:
            if isinstance(frame, Chunk):
                digest.add(frame)
        [done] = [f for f in frames if isinstance(f, Done)]
        results.append((done, digest))
    return results


def receipt_agent(
    backend: TextBackend, tamper: Tamper, book: ChallengeBook
) -> tuple[ReceiptCheatingAgent, ServedModel]:
    settings = ProviderSettings(gateway_urls=["http://127.0.0.1:1"], max_concurrent_jobs=2)
    served = ServedModel(offer=offer_for(backend.info, settings), backend=backend)
    hardware = Hardware(cpu="test", cpu_cores=1, ram_bytes=0)
    agent = ReceiptCheatingAgent(
        settings, SigningKey.generate(), [served], hardware, tamper=tamper, challenges=book
    )
    return agent, served


def chat_job(number: int, model: str) -> Job:
    return Job(
        job_id=f"req-{number}.0",
        request_id=f"req-{number}",
        model=model,
        kind="chat",
        messages=FOX,
        params=SamplingParams(max_tokens=6, temperature=0.0),
    )


async def test_forged_receipts_are_signed_by_another_key(
    catalog_file: Path, honest: TransformersTextBackend
) -> None:
    book = ChallengeBook.from_catalog(catalog_file, honest.info.name)
    agent, served = receipt_agent(honest, forging(), book)
    entry = Catalog.load(catalog_file).get(honest.info.name)
    assert entry is not None
    challenge = challenge_job(entry.name, entry.challenges[0], "challenge-abc.0")
    jobs = [challenge, chat_job(1, honest.info.name)]
    (c_done, c_digest), (done, digest) = await run_jobs(agent, jobs)
    checks = [
        check_receipt(d, provider_id=agent.provider_id, job=j, offer=served.offer, digest=g)
        for (d, g), j in zip([(c_done, c_digest), (done, digest)], jobs, strict=True)
    ]
    assert checks[0].ok  # the challenge's receipt is honest
    assert checks[1].problem == FORGED and "signature" in checks[1].detail
    assert done.receipt is not None and done.receipt_signature is not None
    with pytest.raises(signing.SignatureInvalid):
        verify_receipt_signature(done.receipt, done.receipt_signature)
    assert agent.tampered == 1


async def test_replayed_receipts_repeat_the_first_one(honest: TransformersTextBackend) -> None:
    agent, served = receipt_agent(honest, replaying(), ChallengeBook())
    jobs = [chat_job(n, honest.info.name) for n in (1, 2, 3)]
    results = await run_jobs(agent, jobs)
    checks = [
        check_receipt(d, provider_id=agent.provider_id, job=j, offer=served.offer, digest=g)
        for (d, g), j in zip(results, jobs, strict=True)
    ]
    assert checks[0].ok
    assert [c.problem for c in checks[1:]] == [FORGED, FORGED]
    first = results[0][0]
    assert all(d.receipt == first.receipt for d, _ in results[1:])
    assert agent.tampered == 2


async def test_inflated_counts_are_signed_by_the_real_agent(
    honest: TransformersTextBackend,
) -> None:
    backend = BaitAndSwitch(honest, inflating(honest), ChallengeBook())
    settings = ProviderSettings(gateway_urls=["http://127.0.0.1:1"])
    served = ServedModel(offer=offer_for(backend.info, settings), backend=backend)
    agent = ProviderAgent(
        settings, SigningKey.generate(), [served], Hardware(cpu="t", cpu_cores=1, ram_bytes=0)
    )
    job = chat_job(1, honest.info.name)
    [(done, digest)] = await run_jobs(agent, [job])
    assert done.receipt is not None and done.receipt_signature is not None
    verify_receipt_signature(done.receipt, done.receipt_signature)  # genuinely signed
    assert done.receipt.completion_tokens == digest.completion_tokens + INFLATE_COMPLETION
    assert done.usage.prompt_tokens == done.receipt.prompt_tokens
    check = check_receipt(
        done, provider_id=agent.provider_id, job=job, offer=served.offer, digest=digest
    )
    assert check.problem == TAMPERED and "completion_tokens" in check.detail
