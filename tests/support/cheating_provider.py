"""Providers that cheat, run as a real process by the adversarial end-to-end test.

``python -m tests.support.cheating_provider --gateway URL --model-dir DIR
--cheater MODE=KEY_FILE [--cheater ...] [--naive MODE=KEY_FILE ...] [--impostor-dir DIR]
[--catalog FILE]`` (from the repository root).

One process runs every cheater it is given: each its own :class:`ProviderAgent` with its
own key (so its own identity, WebSocket, slots and stake at the gateway) and its own
cheat, all sharing the models this process loaded once (torch and a model load take
seconds per process; the gateway cannot tell where an identity runs). Everything but the
cheat is the real provider: the agent, its WebSocket to the gateway, and
:class:`TransformersTextBackend` on a real model. The cheat sits in one of two seams: a
:class:`TextBackend` wrapper that changes what runs (``impostor``, ``quantized``,
``random``, ``truncate``, ``inflate``), or the agent's outgoing frames, which changes what
it signs (``forge``, ``replay``). Modes:

- ``impostor``: another model (``--impostor-dir``) under the real name and weight hash;
- ``quantized``: the right model with every Linear weight (the output layer, tied to the
  embeddings, included) fake-quantized: symmetric, one scale per output channel,
  ``--bits``. int4 by default, what a cheater ships to halve memory again: int8 moves
  log-probabilities no more than an honest bfloat16 run does, so no tolerance can tell
  it from honest hardware (tests/integration/test_cheating_provider.py measures both);
- ``random``: uniformly random non-special token ids with made-up log-probabilities;
- ``truncate``: the model sees only the prompt's last ``TRUNCATE_TO`` tokens while usage
  reports the whole prompt;
- ``inflate``: usage and the signed receipt claim ``INFLATE_PROMPT`` more prompt and
  ``INFLATE_COMPLETION`` more completion tokens than were processed;
- ``forge``: receipts signed with a key that is not the provider's;
- ``replay``: every receipt after the first is the first one again.

Bait and switch: given the public catalog (``--catalog``), a ``--cheater`` answers the
catalog's join-challenge prompts honestly and cheats on everything else. A ``--naive``
one never read the catalog and cheats on the challenge too. Audits of other providers are
answered honestly (the gateway only asks trusted providers, which a newcomer is not).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import random
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from nacl.signing import SigningKey

from tessera.config import ProviderSettings
from tessera.errors import TesseraError
from tessera.protocol.receipts import sign_receipt
from tessera.protocol.wire import ChatMessage, Done, Frame, Job, SamplingParams
from tessera.provider.agent import ProviderAgent, ServedModel
from tessera.provider.backends.base import (
    BackendError,
    CancelToken,
    Delta,
    Finish,
    ModelInfo,
    Prompt,
    ScoreRequest,
    ScoreResult,
    TextBackend,
    TokenLogprob,
)
from tessera.provider.backends.transformers_text import (
    IncrementalDetokenizer,
    TransformersTextBackend,
)
from tessera.provider.hardware import probe
from tessera.provider.identity import load_or_create_key
from tessera.provider.loading import offer_for
from tessera.verify.catalog import Catalog

log = logging.getLogger("tessera.cheater")

MODES = ("impostor", "quantized", "random", "truncate", "inflate", "forge", "replay")
BACKEND_MODES = ("impostor", "quantized", "random", "truncate", "inflate")
TRUNCATE_TO = 8
INFLATE_PROMPT = 10
INFLATE_COMPLETION = 5
DEFAULT_BITS = 4

CheatStream = Callable[[Prompt, SamplingParams, CancelToken], AsyncIterator[Delta | Finish]]


# ---------------------------------------------------------------- recognising challenges


class ChallengeBook:
    """The catalog's join-challenge prompts for one model: what a cheater answers honestly.

    A challenge is a greedy completion of a catalog prompt for the catalog's max_tokens;
    the catalog is public, so anyone can recognise one. An empty book knows none (naive).
    """

    def __init__(self, prompts: Sequence[tuple[str, int]] = ()) -> None:
        self._prompts = frozenset(prompts)

    @classmethod
    def from_catalog(cls, path: Path, model: str) -> ChallengeBook:
        entry = Catalog.load(path).get(model)
        if entry is None:
            return cls()
        return cls([(c.prompt, c.max_tokens) for c in entry.challenges if c.prompt])

    def __len__(self) -> int:
        return len(self._prompts)

    def recognises(self, prompt: Prompt, params: SamplingParams) -> bool:
        return (
            isinstance(prompt, str)
            and params.temperature == 0.0
            and (prompt, params.max_tokens) in self._prompts
        )

    def recognises_job(self, job: Job) -> bool:
        prompts = job.prompts or []
        return (
            job.kind == "completion"
            and job.params is not None
            and len(prompts) == 1
            and self.recognises(prompts[0], job.params)
        )


# ---------------------------------------------------------------- the backend seam


class BaitAndSwitch:
    """A TextBackend that runs the honest model on challenges and ``cheat`` on the rest.

    It announces the honest backend's info (name, weight hash, context), and scores audits
    with the honest model. ``cheated`` counts the streams it cheated on.
    """

    def __init__(
        self,
        honest: TextBackend,
        cheat: CheatStream,
        challenges: ChallengeBook,
        extra: Sequence[TextBackend] = (),
    ) -> None:
        self.info: ModelInfo = honest.info
        self._honest = honest
        self._cheat = cheat
        self._challenges = challenges
        self._extra = tuple(extra)
        self.cheated = 0
        self.honest_streams = 0

    def stream(
        self, prompt: Prompt, params: SamplingParams, cancel: CancelToken
    ) -> AsyncIterator[Delta | Finish]:
        if self._challenges.recognises(prompt, params):
            self.honest_streams += 1
            log.info("a join challenge: answering it honestly")
            return self._honest.stream(prompt, params, cancel)
        self.cheated += 1
        return self._cheat(prompt, params, cancel)

    async def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        return await self._honest.score(requests)

    async def close(self) -> None:
        for backend in (self._honest, *self._extra):
            await backend.close()


class PromptEncoder:
    """A prompt's token ids as the model's tokenizer makes them (what a provider counts):
    text with special tokens, chat through the chat template, token ids as they are."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def encode(self, prompt: Prompt) -> list[int]:
        tok = self.tokenizer
        if isinstance(prompt, str):
            ids = list(tok(prompt, add_special_tokens=True)["input_ids"])
            if not ids and tok.bos_token_id is not None:
                ids = [int(tok.bos_token_id)]
            return ids
        items = list(prompt)
        if all(isinstance(t, int) for t in items):
            return [int(t) for t in items]  # type: ignore[arg-type]
        messages = [
            {"role": m.role, "content": m.content} for m in items if isinstance(m, ChatMessage)
        ]
        rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(tok(str(rendered), add_special_tokens=False)["input_ids"])


def truncating(honest: TextBackend, encoder: PromptEncoder, keep: int = TRUNCATE_TO) -> CheatStream:
    """Run only the prompt's last ``keep`` tokens; report the whole prompt's count."""

    async def stream(
        prompt: Prompt, params: SamplingParams, cancel: CancelToken
    ) -> AsyncIterator[Delta | Finish]:
        ids = await asyncio.to_thread(encoder.encode, prompt)
        full = len(ids)
        async for event in honest.stream(ids[-keep:], params, cancel):
            if isinstance(event, Delta) and event.prompt_tokens is not None:
                event = dataclasses.replace(event, prompt_tokens=full)
            elif isinstance(event, Finish):
                event = dataclasses.replace(event, prompt_tokens=full)
            yield event

    return stream


def inflating(
    honest: TextBackend,
    prompt_extra: int = INFLATE_PROMPT,
    completion_extra: int = INFLATE_COMPLETION,
) -> CheatStream:
    """Run honestly; claim more prompt and completion tokens than were processed."""

    async def stream(
        prompt: Prompt, params: SamplingParams, cancel: CancelToken
    ) -> AsyncIterator[Delta | Finish]:
        async for event in honest.stream(prompt, params, cancel):
            if isinstance(event, Delta) and event.prompt_tokens is not None:
                event = dataclasses.replace(event, prompt_tokens=event.prompt_tokens + prompt_extra)
            elif isinstance(event, Finish):
                event = dataclasses.replace(
                    event,
                    prompt_tokens=event.prompt_tokens + prompt_extra,
                    completion_tokens=event.completion_tokens + completion_extra,
                )
            yield event

    return stream


def random_tokens(encoder: PromptEncoder, rng: random.Random | None = None) -> CheatStream:
    """Tokens drawn uniformly from the vocabulary without its special tokens, each with a
    made-up log-probability, decoded to text as a stream would be. Never ends on EOS."""
    tok = encoder.tokenizer
    special = set(tok.all_special_ids)
    vocabulary = [i for i in range(len(tok)) if i not in special]
    draw = rng or random.Random()

    def decode(ids: list[int]) -> str:
        return str(tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))

    async def stream(
        prompt: Prompt, params: SamplingParams, cancel: CancelToken
    ) -> AsyncIterator[Delta | Finish]:
        prompt_tokens: int | None = len(await asyncio.to_thread(encoder.encode, prompt))
        counted = prompt_tokens or 0
        detok = IncrementalDetokenizer(decode)
        pending: list[TokenLogprob] = []
        made = 0
        while made < params.max_tokens and not cancel.cancelled:
            token = draw.choice(vocabulary)
            made += 1
            logprob = -draw.uniform(0.05, 3.0)
            pending.append(TokenLogprob(decode([token]), token, logprob))
            text = detok.push(token)
            if text:
                yield Delta(text, tuple(pending), prompt_tokens)
                pending, prompt_tokens = [], None
            await asyncio.sleep(0)
        text = detok.flush()
        if text or pending:
            yield Delta(text, tuple(pending), prompt_tokens)
        reason: Literal["stop", "length"] = "length" if made >= params.max_tokens else "stop"
        yield Finish(reason=reason, prompt_tokens=counted, completion_tokens=made)

    return stream


def fake_quantize_(model: torch.nn.Module, bits: int = DEFAULT_BITS) -> dict[str, float]:
    """Round every Linear weight in place to ``bits``-bit symmetric integers, one scale per
    output channel (what an int4/int8 weight-only checkpoint computes with). Returns the
    layers touched and the mean relative weight error."""
    if not 2 <= bits <= 8:
        raise ValueError("bits must lie in 2..8")
    qmax = 2 ** (bits - 1) - 1
    layers = 0
    errors: list[float] = []
    seen: set[int] = set()
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, torch.nn.Linear) or id(module.weight) in seen:
                continue
            seen.add(id(module.weight))  # a tied weight (lm_head = embeddings) once
            weight = module.weight
            scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / qmax
            quantized = (weight / scale).round().clamp(-qmax - 1, qmax) * scale
            errors.append(float((quantized - weight).norm() / weight.norm().clamp(min=1e-12)))
            weight.copy_(quantized)
            layers += 1
    return {"layers": float(layers), "relative_error": sum(errors) / max(1, len(errors))}


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    found: set[int] = set()
    for value in (
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
        getattr(model.config, "eos_token_id", None),
        tokenizer.eos_token_id,
    ):
        if isinstance(value, int):
            found.add(value)
        elif isinstance(value, list | tuple):
            found.update(v for v in value if isinstance(v, int))
    return found


def load_quantized(model_dir: Path, info: ModelInfo, bits: int) -> TransformersTextBackend:
    """The model in ``model_dir`` with fake-quantized Linear weights, on the CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, local_files_only=True
    ).eval()
    stats = fake_quantize_(model, bits)
    log.info(
        "quantized %d Linear layers to int%d (relative weight error %.4f)",
        int(stats["layers"]),
        bits,
        stats["relative_error"],
    )
    return TransformersTextBackend(
        model, tokenizer, info, torch.device("cpu"), _eos_ids(model, tokenizer)
    )


# ---------------------------------------------------------------- the receipt seam

Tamper = Callable[[Job, Done], Done]


class ReceiptCheatingAgent(ProviderAgent):
    """The real agent, whose Done frames pass through ``tamper`` before they are sent
    (challenge jobs excepted: those go out untouched)."""

    def __init__(self, *args: Any, tamper: Tamper, challenges: ChallengeBook, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._tamper = tamper
        self._challenges = challenges
        self.tampered = 0

    async def _run_job(self, job: Job, send: Callable[[Frame], object], token: CancelToken) -> None:
        if self._challenges.recognises_job(job):
            await super()._run_job(job, send, token)
            return

        async def tampering(frame: Frame) -> None:
            if isinstance(frame, Done) and frame.receipt is not None:
                changed = self._tamper(job, frame)
                if changed is not frame:
                    self.tampered += 1
                frame = changed
            result = send(frame)
            if isinstance(result, Awaitable):
                await result

        await super()._run_job(job, tampering, token)


def forging(other: SigningKey | None = None) -> Tamper:
    """Sign every receipt with a key that is not the provider's own."""
    key = other or SigningKey.generate()

    def tamper(job: Job, done: Done) -> Done:
        if done.receipt is None:
            return done
        return done.model_copy(update={"receipt_signature": sign_receipt(key, done.receipt)})

    return tamper


def replaying() -> Tamper:
    """Keep the first receipt; send it again, signature and all, for every later job."""
    first: list[Done] = []

    def tamper(job: Job, done: Done) -> Done:
        if not first:
            first.append(done)
            return done
        return done.model_copy(
            update={
                "receipt": first[0].receipt,
                "receipt_signature": first[0].receipt_signature,
            }
        )

    return tamper


# ---------------------------------------------------------------- assembling the cheaters


@dataclasses.dataclass(frozen=True, slots=True)
class CheaterSpec:
    """One cheating identity: its cheat, its key file (whose stem is its label), and
    whether it is naive (never read the public catalog, so it cheats on challenges too)."""

    mode: str
    key_file: Path
    naive: bool = False

    @property
    def label(self) -> str:
        return self.key_file.stem


class SharedModels:
    """The models one process's cheaters share, each loaded once (blocking): the honest
    model at once, the impostor and the quantized copy on first use. One backend serves
    several agents' streams at once, each in its own generation thread."""

    def __init__(
        self,
        model_dir: Path,
        *,
        impostor_dir: Path | None = None,
        bits: int = DEFAULT_BITS,
        threads: int | None = None,
    ) -> None:
        self.model_dir = model_dir
        self.impostor_dir = impostor_dir
        self.bits = bits
        self.threads = threads
        self.honest = TransformersTextBackend.load(model_dir, dtype="float32", threads=threads)
        self._impostor: TransformersTextBackend | None = None
        self._quantized: TransformersTextBackend | None = None

    def impostor(self) -> TransformersTextBackend:
        if self._impostor is None:
            if self.impostor_dir is None:
                raise ValueError("an impostor cheater needs --impostor-dir")
            self._impostor = TransformersTextBackend.load(
                self.impostor_dir, dtype="float32", threads=self.threads
            )
        return self._impostor

    def quantized(self) -> TransformersTextBackend:
        if self._quantized is None:
            self._quantized = load_quantized(self.model_dir, self.honest.info, self.bits)
        return self._quantized

    def encoder(self) -> PromptEncoder:
        """A tokenizer of its own for each cheater: cheaters encode in worker threads, and
        one fast tokenizer used from several threads at once can fail."""
        from transformers import AutoTokenizer

        return PromptEncoder(AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True))


def cheating_backend(mode: str, models: SharedModels, challenges: ChallengeBook) -> BaitAndSwitch:
    """The backend for a backend-seam ``mode`` over the shared models (blocking: may load
    one). Its ``close`` closes the shared honest model: the process closes none."""
    honest = models.honest
    cheat: CheatStream
    if mode == "impostor":
        cheat = models.impostor().stream
    elif mode == "quantized":
        cheat = models.quantized().stream
    elif mode == "random":
        cheat = random_tokens(models.encoder())
    elif mode == "truncate":
        cheat = truncating(honest, models.encoder())
    elif mode == "inflate":
        cheat = inflating(honest)
    else:
        raise ValueError(f"{mode!r} is not a backend cheat; use one of {', '.join(BACKEND_MODES)}")
    return BaitAndSwitch(honest, cheat, challenges)


def build_agent(spec: CheaterSpec, models: SharedModels, args: argparse.Namespace) -> ProviderAgent:
    """The cheating agent ``spec`` describes, on ``models`` (blocking: may load a model)."""
    settings = ProviderSettings(
        gateway_urls=[args.gateway],
        key_file=spec.key_file,
        region=args.region,
        label=spec.label,
        max_concurrent_jobs=args.max_concurrent_jobs,
        price_input_per_mtok=args.price_in,
        price_output_per_mtok=args.price_out,
        torch_threads=args.threads,
        backoff_initial_s=0.5,
        backoff_max_s=5.0,
    )
    catalog: Path | None = args.catalog
    key = load_or_create_key(spec.key_file)
    honest = models.honest
    challenges = (
        ChallengeBook.from_catalog(catalog, honest.info.name)
        if catalog is not None and not spec.naive
        else ChallengeBook()
    )
    backend: TextBackend
    if spec.mode in BACKEND_MODES:
        backend = cheating_backend(spec.mode, models, challenges)
    else:
        backend = honest
    served = [ServedModel(offer=offer_for(backend.info, settings), backend=backend)]
    if spec.mode == "forge":
        return ReceiptCheatingAgent(
            settings, key, served, probe(), tamper=forging(), challenges=challenges
        )
    if spec.mode == "replay":
        return ReceiptCheatingAgent(
            settings, key, served, probe(), tamper=replaying(), challenges=challenges
        )
    return ProviderAgent(settings, key, served, probe())


def _cheater(naive: bool) -> Callable[[str], CheaterSpec]:
    def parse(text: str) -> CheaterSpec:
        mode, _, path = text.partition("=")
        if mode not in MODES or not path:
            raise argparse.ArgumentTypeError(
                f"{text!r}: give MODE=KEY_FILE with MODE one of {', '.join(MODES)}"
            )
        return CheaterSpec(mode, Path(path), naive)

    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cheating_provider", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--cheater",
        dest="cheaters",
        action="append",
        type=_cheater(naive=False),
        default=[],
        metavar="MODE=KEY_FILE",
        help="a cheater that read the catalog (bait and switch); repeat for more",
    )
    parser.add_argument(
        "--naive",
        dest="cheaters",
        action="append",
        type=_cheater(naive=True),
        metavar="MODE=KEY_FILE",
        help="a cheater that never read the catalog; repeat for more",
    )
    parser.add_argument("--gateway", required=True, help="gateway URL, http://host:port")
    parser.add_argument("--model-dir", type=Path, required=True, help="the real model")
    parser.add_argument("--impostor-dir", type=Path, help="the other model (impostor mode)")
    parser.add_argument("--catalog", type=Path, help="the public catalog")
    parser.add_argument("--bits", type=int, default=DEFAULT_BITS, help="quantized mode")
    parser.add_argument("--region", default="US")
    parser.add_argument("--price-in", type=int, default=0)
    parser.add_argument("--price-out", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-concurrent-jobs", type=int, default=2, help="per cheater")
    args = parser.parse_args(argv)
    if not args.cheaters:
        parser.error("give at least one --cheater or --naive")
    return args


def build_agents(args: argparse.Namespace) -> tuple[list[ProviderAgent], SharedModels]:
    """Load the shared models once and build every cheater the arguments name (blocking)."""
    models = SharedModels(
        args.model_dir, impostor_dir=args.impostor_dir, bits=args.bits, threads=args.threads
    )
    agents = [build_agent(spec, models, args) for spec in args.cheaters]
    return agents, models


async def serve(agents: Sequence[ProviderAgent]) -> None:
    """Run every agent until one fails or the process is stopped."""
    async with asyncio.TaskGroup() as group:
        for agent in agents:
            group.create_task(agent.run())


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("httpx", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        agents, _models = build_agents(args)
    except (ValueError, BackendError, TesseraError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    for spec, agent in zip(args.cheaters, agents, strict=True):
        naive = " (naive)" if spec.naive else ""
        print(f"provider id {agent.provider_id} mode {spec.mode}{naive} {spec.label}", flush=True)
    try:
        asyncio.run(serve(agents))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
