"""Text generation with a Hugging Face causal LM (transformers + torch).

The same code serves the tiny CPU model in tests and a real model on a GPU. Each stream runs
its own decoding loop with the KV cache in a worker thread and hands events to the event loop
with ``call_soon_threadsafe``; the loop is never blocked. The thread checks the cancel token
before every token, and a consumer that stops iterating cancels it. Every forward pass runs
on a turn at the backend's ``TurnGate`` (one at a time by default, shared when the agent
passes one gate to all its models): running jobs share the device fairly between the
accounts they serve (the token's ``tenant``), not equally between jobs, so one account's
many jobs cannot starve another's one, and a short answer for an account that was idle
runs its passes back to back.

Text contract: streamed text never contains half a UTF-8 character and never runs past a
stop string (text that could still become a stop string is held back). Logprobs come from
the model's raw ``log_softmax`` and do not depend on temperature or top_p; a Delta carries
the logprobs of the tokens that produced its text (held-back tokens ride on a later Delta).

Counting: ``completion_tokens`` counts every sampled token, an end-of-sequence token
included (it has no text and no logprob entry; ``Finish.eos`` says one was sampled). A
stream cancelled through its token ends with ``Finish(reason="stop")`` counting the tokens
made before the cancel was seen.

Continuations (failover): ``stream`` with ``continue_from`` reads prompt + continue_from in
one prefill and samples from output position ``len(continue_from)`` on (seeded draws depend
on the position only, see sampling.py), so a greedy or seeded answer goes on as the first
provider's would have. The detokenizer and stop filter are first fed ``continue_from``,
and what they release then is dropped (the client has it). When ``continue_from`` is the
ids of every chunk delivered (a chunk's ids and text travel together), the new text starts
exactly where the delivered text ended, with whatever the handed output still held back.

Scoring (audits): ``score`` encodes each prompt exactly as ``stream`` does, appends the
continued tokens (if any) and the audited tokens, and runs ONE forward pass over the whole
batch, right-padded with an attention mask (causal attention makes right padding exact), in
a worker thread. Each token gets its rank among the vocabulary, its raw logprob and its
position's top logprob; ``end`` scores the best-ranked end-of-sequence id after the last
token. A continuation's text is decoded as its stream delivers it (primed the same way).
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import itertools
import json
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tessera.errors import ConfigError
from tessera.protocol.wire import ChatMessage, SamplingParams
from tessera.provider.backends.base import (
    BackendError,
    CancelToken,
    Delta,
    Finish,
    ModelInfo,
    Prompt,
    PromptTooLong,
    ScoreRequest,
    ScoreResult,
    TokenLogprob,
    TokenRank,
    TopToken,
)
from tessera.provider.backends.sampling import counter_uniform, fresh_uniform, sample_token
from tessera.provider.compute_priority import ComputePriority, compute_executor, lower_this_thread
from tessera.provider.model_hash import weights_sha256
from tessera.provider.turn_gate import TurnGate

REPLACEMENT_CHAR = "\ufffd"
MIN_LOGPROB = -9999.0  # the wire forbids -inf; a token this unlikely is never chosen anyway
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
_thread_ids = itertools.count(1)
AUDIT_TENANT = "audits"  # the tenant an audit's scoring pass is charged to (tags are hex)

# ---------------------------------------------------------------- pure helpers


class StopStringFilter:
    """Releases text only once it can no longer be the beginning of a stop string.

    ``push`` returns the text that is safe to show; once a stop string is seen, ``stopped``
    is set, the text before it is returned, and everything after is dropped.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    @property
    def held(self) -> str:
        """Text pushed but not released yet (it may still begin a stop string)."""
        return self._held

    def push(self, text: str) -> str:
        if self.stopped:
            return ""
        buf = self._held + text
        hits = [i for i in (buf.find(s) for s in self._stops) if i >= 0]
        if hits:
            first = min(hits)
            # A longer stop string may start earlier and still be completed by text to
            # come: hold from there until that is decided.
            open_at = _open_stop_start(buf, self._stops, before=first)
            if open_at is None:
                self.stopped = True
                self._held = ""
                return buf[:first]
            self._held = buf[open_at:]
            return buf[:open_at]
        keep = held_suffix_length(buf, self._stops)
        self._held = buf[len(buf) - keep :]
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        """The held text at the end of the stream, cut at a stop string found in it."""
        out, self._held = self._held, ""
        if self.stopped:
            return ""
        hits = [i for i in (out.find(s) for s in self._stops) if i >= 0]
        if hits:
            self.stopped = True
            return out[: min(hits)]
        return out


def _open_stop_start(text: str, stops: Sequence[str], before: int) -> int | None:
    """The first index below ``before`` where ``text``'s tail is a proper prefix of a stop."""
    for start in range(before):
        tail = text[start:]
        if any(len(stop) > len(tail) and stop.startswith(tail) for stop in stops):
            return start
    return None


def held_suffix_length(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of some stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text pieces without splitting characters.

    It decodes a small window of recent tokens twice (with and without the newest ones) and
    releases the difference, holding back while the decoded tail ends in U+FFFD (a UTF-8
    sequence still incomplete). The window keeps tokenizers that drop a leading space when
    decoding one token alone correct.
    """

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        done = self._decode(self._ids[self._prefix : self._read])
        full = self._decode(self._ids[self._prefix :])
        if len(full) <= len(done) or full.endswith(REPLACEMENT_CHAR):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return full[len(done) :]

    def flush(self) -> str:
        """Whatever is still held (an incomplete character decodes to U+FFFD)."""
        done = self._decode(self._ids[self._prefix : self._read])
        full = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return full[len(done) :] if len(full) > len(done) else ""


def primed_text_state(
    decode: Callable[[list[int]], str], continued: Sequence[int], stops: Sequence[str]
) -> tuple[IncrementalDetokenizer, StopStringFilter]:
    """The detokenizer and stop filter of a stream that already produced ``continued``.

    What they released for it is dropped: the client got it from the stream that made
    those tokens. BackendError (``invalid_continuation``) when ``continued`` already holds a
    stop string: that answer has ended.
    """
    detok = IncrementalDetokenizer(decode)
    stop_filter = StopStringFilter(stops)
    for token in continued:
        stop_filter.push(detok.push(token))
    if stop_filter.stopped:
        raise BackendError(
            "continue_from already contains a stop string: the answer ended there",
            code="invalid_continuation",
        )
    return detok, stop_filter


# ---------------------------------------------------------------- the backend


class TransformersTextBackend:
    """One causal LM served from a Hugging Face model directory."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        info: ModelInfo,
        device: torch.device,
        eos: set[int],
        gate: TurnGate | None = None,
        priority: ComputePriority = "normal",
    ) -> None:
        self.info = info
        # Passes run below the event loop's CPU priority (see compute_priority).
        self._priority: ComputePriority = priority
        self._scorer = compute_executor(priority, "tessera-score", workers=4)
        # Every forward pass takes a turn: jobs share the device fairly between tenants.
        self._gate = gate if gate is not None else TurnGate()
        self._model: Any = model
        self._tokenizer = tokenizer
        self._device = device
        self._eos_ids = frozenset(eos)
        self._vocab_size = int(model.get_input_embeddings().num_embeddings)
        # Scoring asks the model for the logits of the positions it needs only, when it can.
        self._trims_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        pad = getattr(tokenizer, "pad_token_id", None)
        if not isinstance(pad, int):
            pad = min(eos) if eos else 0
        self._pad_id = pad
        self._tok_lock = threading.Lock()
        self._token_texts: dict[int, str] = {}
        self._active: dict[threading.Thread, CancelToken] = {}

    @classmethod
    def load(
        cls,
        model_dir: Path,
        *,
        name: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        threads: int | None = None,
        gate: TurnGate | None = None,
        priority: ComputePriority = "normal",
    ) -> TransformersTextBackend:
        """Load a model directory (blocking: call it in a thread). ConfigError if unusable.

        ``device`` auto = cuda when available, else cpu; ``dtype`` auto = bfloat16 on cuda,
        float32 elsewhere. ``threads`` sets torch's CPU threads for the whole process.
        ``gate`` orders the forward passes (a new one-at-a-time gate when None);
        ``priority`` is the CPU priority of the threads that run them.
        """
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ConfigError(f"model directory {model_dir} does not exist")
        if threads is not None:
            torch.set_num_threads(threads)
        if device == "auto":
            dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            try:
                dev = torch.device(device)
            except RuntimeError as exc:
                raise ConfigError(f"unknown device {device!r}: {exc}") from exc
        if dtype == "auto":
            torch_dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
        elif dtype in _DTYPES:
            torch_dtype = _DTYPES[dtype]
        else:
            raise ConfigError(f"unknown dtype {dtype!r}; use auto, {', '.join(_DTYPES)}")
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                model_dir, dtype=torch_dtype, local_files_only=True
            )
            model = model.to(dev).eval()
        except (OSError, ValueError, RuntimeError, ImportError, KeyError) as exc:
            raise ConfigError(f"cannot load a causal LM from {model_dir}: {exc}") from exc
        info = ModelInfo(
            name=name or _manifest_name(model_dir) or model_dir.resolve().name,
            weights_sha256=weights_sha256(model_dir),
            kind="text",
            context_length=_context_length(model.config, tokenizer, model_dir),
            vocab_size=int(model.get_input_embeddings().num_embeddings),
        )
        return cls(model, tokenizer, info, dev, _eos_ids(model, tokenizer), gate, priority)

    @property
    def active_streams(self) -> int:
        """Generation threads still running (a closed consumer's thread ends within a step)."""
        return sum(1 for t in list(self._active) if t.is_alive())

    async def stream(
        self,
        prompt: Prompt,
        params: SamplingParams,
        cancel: CancelToken,
        continue_from: Sequence[int] = (),
    ) -> AsyncIterator[Delta | Finish]:
        """Yield Deltas, then one Finish. See the module docstring for the text contract
        and continuations (``invalid_token_ids`` / ``invalid_continuation`` when
        ``continue_from`` holds a token outside the vocabulary, an end-of-sequence token or
        a stop string)."""
        if self._model is None:
            raise BackendError("the backend is closed", code="backend_closed")
        continued = self._continued(continue_from)
        ids = await asyncio.to_thread(self._encode, prompt)
        ids += continued
        if len(ids) >= self.info.context_length:
            handed = f" ({len(continued)} of them continued output)" if continued else ""
            raise PromptTooLong(
                f"the prompt has {len(ids)} tokens{handed}; {self.info.name} has a context "
                f"of {self.info.context_length} tokens and needs room for at least one more"
            )
        max_new = min(params.max_tokens, self.info.context_length - len(ids))
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Delta | Finish | BaseException] = asyncio.Queue()

        def emit(item: Delta | Finish | BaseException) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone: nobody is listening any more
                cancel.cancel()

        thread = threading.Thread(
            target=self._run,
            args=(ids, continued, max_new, params, cancel, emit),
            name=f"tessera-textgen-{next(_thread_ids)}",
            daemon=True,
        )
        self._active[thread] = cancel
        thread.start()
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BackendError):
                    raise item
                if isinstance(item, BaseException):
                    raise BackendError(f"generation failed: {item}", "generation_failed") from item
                yield item
                if isinstance(item, Finish):
                    finished = True
                    return
        finally:
            if not finished:
                cancel.cancel()

    async def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        """Teacher-force each request's tokens after its prompt (and ``continue_from``);
        one forward pass in all.

        Raises BackendError (``invalid_token_ids`` for a token outside the vocabulary,
        ``invalid_continuation`` for a ``continue_from`` no stream could have delivered,
        PromptTooLong when prompt + continue_from + tokens exceed the context) before any
        work is done.
        """
        if self._model is None:
            raise BackendError("the backend is closed", code="backend_closed")
        if not requests:
            return []
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._scorer, self._score_sync, list(requests))

    async def close(self) -> None:
        """Stop running streams and release the model (and its GPU memory)."""
        for token in list(self._active.values()):
            token.cancel()
        threads = list(self._active)
        await asyncio.to_thread(lambda: [t.join(timeout=30) for t in threads])
        self._scorer.shutdown(wait=False)
        self._model = None
        gc.collect()
        if self._device.type == "cuda":
            torch.cuda.empty_cache()

    # ------------------------------------------------------------ inside the worker thread

    def _run(
        self,
        ids: list[int],
        continued: list[int],
        max_new: int,
        params: SamplingParams,
        cancel: CancelToken,
        emit: Callable[[Delta | Finish | BaseException], None],
    ) -> None:
        try:
            lower_this_thread(self._priority)
            self._generate(ids, continued, max_new, params, cancel, emit)
        except BaseException as exc:  # handed to the consumer, re-raised there
            emit(exc)
        finally:
            self._active.pop(threading.current_thread(), None)

    def _generate(
        self,
        ids: list[int],
        continued: list[int],
        max_new: int,
        params: SamplingParams,
        cancel: CancelToken,
        emit: Callable[[Delta | Finish | BaseException], None],
    ) -> None:
        """``ids`` is the prompt followed by ``continued`` (the output already delivered)."""
        model = self._model
        if model is None:
            raise BackendError("the backend is closed", code="backend_closed")
        seed = params.seed
        pending: list[TokenLogprob] = []
        produced = 0
        reason: Literal["stop", "length"] = "length"
        eos = False
        text = ""
        prompt_tokens: int | None = len(ids)  # sent with the first delta
        detok, stops = primed_text_state(self._decode, continued, params.stop)
        step = torch.tensor([ids], device=self._device)  # the prefill, then one token a step
        past: Any = None
        # The job holds its turn from one step to the next (the pass, the sampling that
        # waits for it (on a GPU the pass is only queued until then), the token's logprobs
        # and text) until another tenant's waiting job has a better claim: its measured
        # time is the tenant's, and no other job's step competes with it for the CPU or
        # the GIL.
        with torch.inference_mode(), self._gate.steps(cancel.tenant) as turns:
            while not cancel.cancelled:
                turns.next()
                out = model(input_ids=step, past_key_values=past, use_cache=True)
                logits = out.logits[0, -1]
                position = len(continued) + produced  # in the whole answer
                uniform = fresh_uniform() if seed is None else counter_uniform(seed, position)
                token = sample_token(logits, params.temperature, params.top_p, uniform)
                produced += 1
                if token in self._eos_ids:
                    reason, eos = "stop", True
                    break
                logprobs = torch.log_softmax(logits.float(), dim=-1)
                pending.append(self._token_logprob(token, logprobs, params.top_logprobs))
                past = out.past_key_values
                text = stops.push(detok.push(token))
                if stops.stopped or produced >= max_new:
                    break
                if text:
                    emit(Delta(text, tuple(pending), prompt_tokens))
                    pending, text, prompt_tokens = [], "", None
                step = torch.tensor([[token]], device=self._device)
        if not stops.stopped:
            text += stops.push(detok.flush())
            text += stops.flush()
        if stops.stopped or cancel.cancelled:
            reason = "stop"
        if text or pending:
            emit(Delta(text, tuple(pending), prompt_tokens))
        emit(Finish(reason=reason, prompt_tokens=len(ids), completion_tokens=produced, eos=eos))

    def _score_sync(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        continued = [self._continued(r.continue_from) for r in requests]
        prompts = [self._encode(r.prompt) + c for r, c in zip(requests, continued, strict=True)]
        outputs = [[int(t) for t in r.token_ids] for r in requests]
        for number, (prompt, tokens) in enumerate(zip(prompts, outputs, strict=True)):
            bad = [t for t in tokens if not 0 <= t < self._vocab_size]
            if bad:
                raise BackendError(
                    f"request {number}: token id {bad[0]} is outside the vocabulary "
                    f"(size {self._vocab_size})",
                    code="invalid_token_ids",
                )
            if len(prompt) + len(tokens) > self.info.context_length:
                raise PromptTooLong(
                    f"request {number}: {len(prompt)} prompt + {len(tokens)} output tokens "
                    f"exceed the context of {self.info.context_length} tokens of {self.info.name}"
                )
        texts = [
            self._scored_text(r, c, t) for r, c, t in zip(requests, continued, outputs, strict=True)
        ]
        model = self._model
        if model is None:
            raise BackendError("the backend is closed", code="backend_closed")
        rows = [p + t for p, t in zip(prompts, outputs, strict=True)]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        # Row i needs the logits from its last prompt position to its last token: the
        # trailing `keep` positions of the padded batch cover every row's need.
        keep = width - min(len(p) for p in prompts) + 1
        extra: dict[str, Any] = {"logits_to_keep": keep} if self._trims_logits else {}
        with torch.inference_mode(), self._gate.turn(AUDIT_TENANT):
            out = model(
                input_ids=input_ids.to(self._device),
                attention_mask=mask.to(self._device),
                use_cache=False,
                **extra,
            )
            logits = out.logits
            offset = width - logits.shape[1]  # position of logits[:, 0] in the sequence
            results = []
            for i, (prompt, tokens) in enumerate(zip(prompts, outputs, strict=True)):
                start = len(prompt) - 1 - offset
                row_logprobs = torch.log_softmax(
                    logits[i, start : start + len(tokens) + 1].float(), dim=-1
                )
                results.append(self._score_row(row_logprobs, len(prompt), tokens, texts[i]))
        return results

    def _score_row(
        self, logprobs: torch.Tensor, prompt_tokens: int, tokens: list[int], text: str
    ) -> ScoreResult:
        """``logprobs`` holds len(tokens) + 1 positions: one per token, then the end."""
        count = len(tokens)
        tops = logprobs.max(dim=-1).values
        scored: tuple[TokenRank, ...] = ()
        if count:
            picked = logprobs[torch.arange(count), torch.tensor(tokens, dtype=torch.long)]
            ranks = (logprobs[:count] > picked[:, None]).sum(dim=-1) + 1
            scored = tuple(
                TokenRank(rank, _clamp(lp), _clamp(top))
                for rank, lp, top in zip(
                    ranks.tolist(), picked.tolist(), tops[:count].tolist(), strict=True
                )
            )
        last = logprobs[count]
        top = _clamp(float(tops[count]))
        eos_ids = [e for e in self._eos_ids if 0 <= e < last.shape[-1]]
        if eos_ids:
            best = float(last[torch.tensor(eos_ids, dtype=torch.long)].max())
            end = TokenRank(int((last > best).sum()) + 1, _clamp(best), top)
        else:  # a model that cannot end: its end is as unlikely as a token can be
            end = TokenRank(int(last.shape[-1]), MIN_LOGPROB, top)
        return ScoreResult(prompt_tokens, scored, end, text)

    def _scored_text(self, request: ScoreRequest, continued: list[int], tokens: list[int]) -> str:
        """The tokens' text as their stream delivers it, before any stop-string cut."""
        if not continued:
            return self._decode(tokens)
        detok, stops = primed_text_state(self._decode, continued, request.stop)
        return stops.held + "".join(detok.push(t) for t in tokens) + detok.flush()

    def _token_logprob(self, token: int, logprobs: torch.Tensor, top_n: int) -> TokenLogprob:
        top: tuple[TopToken, ...] = ()
        if top_n > 0:
            values, indices = torch.topk(logprobs, min(top_n, logprobs.shape[-1]))
            top = tuple(
                TopToken(self._token_text(int(i)), _clamp(float(v)))
                for v, i in zip(values.tolist(), indices.tolist(), strict=True)
            )
        return TokenLogprob(self._token_text(token), token, _clamp(float(logprobs[token])), top)

    def _token_text(self, token: int) -> str:
        text = self._token_texts.get(token)
        if text is None:
            with self._tok_lock:
                text = self._tokenizer.decode([token], clean_up_tokenization_spaces=False)
            self._token_texts[token] = text
        return text

    def _decode(self, ids: list[int]) -> str:
        with self._tok_lock:
            return str(
                self._tokenizer.decode(
                    ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
                )
            )

    # ------------------------------------------------------------ prompts

    def _continued(self, continue_from: Sequence[int]) -> list[int]:
        """``continue_from`` checked: output ids a stream could have delivered (in the
        vocabulary, no end-of-sequence token: an answer ends there). BackendError if not."""
        ids = [int(t) for t in continue_from]
        bad = [t for t in ids if not 0 <= t < self._vocab_size]
        if bad:
            raise BackendError(
                f"continue_from: token id {bad[0]} is outside the vocabulary "
                f"(size {self._vocab_size})",
                code="invalid_token_ids",
            )
        ended = [t for t in ids if t in self._eos_ids]
        if ended:
            raise BackendError(
                f"continue_from holds the end-of-sequence token {ended[0]}: the answer ended there",
                code="invalid_continuation",
            )
        return ids

    def _encode(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt: chat messages, text, or token ids. BackendError if invalid."""
        tok = self._tokenizer
        if isinstance(prompt, str):
            with self._tok_lock:
                ids = list(tok(prompt, add_special_tokens=True)["input_ids"])
            if not ids:  # an empty prompt starts from the beginning-of-text token
                start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
                ids = [int(start)] if start is not None else []
            if not ids:
                raise BackendError("the prompt is empty", code="invalid_prompt")
            return ids
        items = list(prompt)
        if not items:
            raise BackendError("the prompt is empty", code="invalid_prompt")
        token_ids = [t for t in items if isinstance(t, int) and not isinstance(t, bool)]
        if len(token_ids) == len(items):
            bad = [t for t in token_ids if not 0 <= t < self._vocab_size]
            if bad:
                raise BackendError(
                    f"token id {bad[0]} is outside the vocabulary (size {self._vocab_size})",
                    code="invalid_prompt",
                )
            return token_ids
        messages = [m for m in items if isinstance(m, ChatMessage)]
        if len(messages) == len(items):
            return self._encode_chat([{"role": m.role, "content": m.content} for m in messages])
        raise BackendError(
            "a prompt is chat messages, a string, or token ids", code="invalid_prompt"
        )

    def _encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        tok = self._tokenizer
        if not getattr(tok, "chat_template", None):
            raise BackendError(
                f"{self.info.name} has no chat template; send a completion prompt instead",
                code="chat_template_missing",
            )
        try:
            with self._tok_lock:
                rendered = tok.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=False
                )
                return list(tok(str(rendered), add_special_tokens=False)["input_ids"])
        except (ValueError, TypeError, KeyError) as exc:
            raise BackendError(f"cannot render the chat: {exc}", code="invalid_prompt") from exc
        except Exception as exc:  # jinja2.TemplateError and friends from the model's template
            raise BackendError(f"the chat template failed: {exc}", code="invalid_prompt") from exc


def _clamp(logprob: float) -> float:
    return min(0.0, max(MIN_LOGPROB, logprob))


def _manifest_name(model_dir: Path) -> str | None:
    path = model_dir / "tessera-model.json"
    if not path.is_file():
        return None
    try:
        name = json.loads(path.read_text(encoding="utf-8")).get("name")
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{path} is not a valid tessera model manifest: {exc}") from exc
    return name if isinstance(name, str) and name else None


def _context_length(config: Any, tokenizer: Any, model_dir: Path) -> int:
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in _CONTEXT_KEYS:
        value = getattr(text_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10**8:
        return limit
    raise ConfigError(f"cannot tell the context length of the model in {model_dir}")


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    found: set[int] = set()
    gen_config = getattr(model, "generation_config", None)
    for value in (
        getattr(gen_config, "eos_token_id", None),
        getattr(model.config, "eos_token_id", None),
        tokenizer.eos_token_id,
    ):
        if isinstance(value, int):
            found.add(value)
        elif isinstance(value, list | tuple):
            found.update(v for v in value if isinstance(v, int))
    return found
