"""Provider protocol: the typed frames that cross the provider WebSocket.

Every frame is a JSON object with a ``type`` field. The provider dials out to the
gateway; the conversation is::

    gateway  -> hello        (fresh nonce)
    provider -> register     (capabilities + nonce, signed by the provider key)
    gateway  -> welcome      | error + close
    provider -> heartbeat    (every heartbeat_interval_s)       gateway -> heartbeat_ack
    provider -> goodbye      (shutting down on purpose: route nothing new, no SLA debit)
    gateway  -> job          provider -> chunk* then done (with a signed receipt) | job_error
    gateway  -> cancel       (client went away)
    gateway  -> audit        provider -> audit_result (signed) | job_error

Chunks always carry the sampled token ids and their raw log-probabilities, whatever the
client asked for: the receipt commits to them and an audit re-scores them.

Our own protocol forbids unknown fields: a peer that sends them is broken or hostile.

A WebSocket text message carries one or more frames, one per line (``\n`` between them;
compact JSON never holds a raw newline). A provider streaming many jobs at once sends the
frames that are ready together as one message: the per-message costs (the WebSocket
framing, masking, the server's read and dispatch) are then paid once per batch instead
of once per token. See :func:`frames_of` and :func:`batch_text`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

# 2: a job carries its tenant tag. Frames refuse unknown fields, so an agent of version 1
# would fail every job; the handshake tells it to upgrade instead.
# 3: a message may carry several frames, one per line; a version-2 gateway would refuse
# such a message as one malformed frame.
PROTOCOL_VERSION = 3
FRAME_SEPARATOR = "\n"
REGISTER_DOMAIN = "tessera/register/v1"
RECEIPT_DOMAIN = "tessera/receipt/v1"
COUNTERSIGN_DOMAIN = "tessera/receipt-countersign/v1"
AUDIT_RESULT_DOMAIN = "tessera/audit-result/v1"

HexKey = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
HexSig = Annotated[str, Field(pattern=r"^[0-9a-f]{128}$")]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Name = Annotated[str, Field(min_length=1, max_length=200)]
ShortText = Annotated[str, Field(max_length=2_000)]
JobId = Annotated[str, Field(min_length=1, max_length=100)]
Count = Annotated[int, Field(ge=0, le=10_000_000)]
ModelKind = Literal["text", "embedding"]

# Bounds of a job's input. The OpenAI request types (openai_api.py) are built from these,
# so the API refuses with a 400 whatever a job could not carry.
MAX_TEXT_CHARS = 4_000_000
MAX_TOKEN_ID = 10_000_000
MAX_TOKEN_IDS = 1_000_000
MAX_PROMPTS = 2_048
MAX_MESSAGES = 10_000
MAX_NEW_TOKENS = 1_000_000
MAX_STOPS = 4
MAX_STOP_CHARS = 500
MAX_TOP_LOGPROBS = 20
StopText = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]


class Frame(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# ---------------------------------------------------------------- capabilities


class ModelOffer(Frame):
    """One model a provider serves, with the hash of its weights and its price."""

    name: Name
    weights_sha256: Sha256
    kind: ModelKind
    context_length: Annotated[int, Field(ge=1, le=10_000_000)]
    supports_tools: bool = False
    embedding_dimensions: Annotated[int, Field(ge=1, le=65_536)] | None = None
    # Token ids the model accepts are 0 .. vocab_size - 1 (its embedding rows). Lets the
    # gateway refuse out-of-vocabulary ids itself; None when the backend cannot tell.
    vocab_size: Annotated[int, Field(ge=1, le=MAX_TOKEN_ID + 1)] | None = None
    # Base units (1 token = 10**9 units) per million tokens.
    price_input_per_mtok: Annotated[int, Field(ge=0, le=10**18)] = 0
    price_output_per_mtok: Annotated[int, Field(ge=0, le=10**18)] = 0


class GpuInfo(Frame):
    name: Name
    memory_bytes: Annotated[int, Field(ge=0)]


class Hardware(Frame):
    cpu: ShortText
    cpu_cores: Annotated[int, Field(ge=1, le=100_000)]
    ram_bytes: Annotated[int, Field(ge=0)]
    gpus: Annotated[list[GpuInfo], Field(max_length=64)] = []


class Capabilities(Frame):
    """What a provider announces. Signed together with the gateway's nonce."""

    public_key: HexKey
    agent_version: Annotated[str, Field(max_length=50)]
    models: Annotated[list[ModelOffer], Field(min_length=1, max_length=64)]
    hardware: Hardware
    region: Annotated[str, Field(pattern=r"^[A-Z]{2}(-[a-z0-9-]{1,30})?$")]
    max_concurrent_jobs: Annotated[int, Field(ge=1, le=1024)]
    label: Annotated[str, Field(max_length=100)] = ""
    # The provider declares it keeps no prompts or outputs after a job ends
    # (``provider.data_collection: "deny"`` routes only to these).
    no_retention: bool = False
    # Uptime the provider promises per epoch, in basis points (9900 = 99 %); 0 promises
    # nothing. Downtime beyond it is slashed a small share of stake (the "downtime" rule).
    sla_uptime_bps: Annotated[int, Field(ge=0, le=10_000)] = 0


# ---------------------------------------------------------------- handshake


class Hello(Frame):
    type: Literal["hello"] = "hello"
    version: int = PROTOCOL_VERSION
    gateway_id: Name
    nonce: Sha256  # 32 random bytes, hex


class Register(Frame):
    type: Literal["register"] = "register"
    version: int
    nonce: Sha256
    capabilities: Capabilities
    signature: HexSig

    def signed_payload(self) -> dict[str, object]:
        return register_payload(self.nonce, self.capabilities)


def register_payload(nonce: str, capabilities: Capabilities) -> dict[str, object]:
    """What the provider signs on connect: the gateway's nonce and its capabilities."""
    return {"nonce": nonce, "capabilities": capabilities.model_dump(mode="json")}


class Welcome(Frame):
    type: Literal["welcome"] = "welcome"
    provider_id: Name
    heartbeat_interval_s: float


class Heartbeat(Frame):
    type: Literal["heartbeat"] = "heartbeat"
    active_jobs: Count = 0


class HeartbeatAck(Frame):
    type: Literal["heartbeat_ack"] = "heartbeat_ack"


class Goodbye(Frame):
    """The provider is shutting down on purpose: send it no new work.

    Jobs already running finish; downtime after a goodbye is not held against the
    provider's SLA (a crash or a lost connection sends none).
    """

    type: Literal["goodbye"] = "goodbye"
    reason: Annotated[str, Field(max_length=500)] = ""


class ErrorFrame(Frame):
    type: Literal["error"] = "error"
    code: Annotated[str, Field(max_length=100)]
    message: ShortText


# ---------------------------------------------------------------- jobs


class ChatMessage(Frame):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Annotated[str, Field(max_length=MAX_TEXT_CHARS)]


class SamplingParams(Frame):
    max_tokens: Annotated[int, Field(ge=1, le=MAX_NEW_TOKENS)]
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    seed: int | None = None
    stop: Annotated[list[StopText], Field(max_length=MAX_STOPS)] = []
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] = 0


TokenId = Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]
TokenIds = Annotated[list[TokenId], Field(max_length=MAX_TOKEN_IDS)]


class Job(Frame):
    """Work for one provider. ``kind`` says which of the input fields is set.

    chat: ``messages`` (the provider renders its model's chat template);
    completion: ``prompts`` (each a string or token ids; chunk ``index`` follows them);
    embedding: ``inputs`` (strings or token ids).
    ``request_id`` is the consumer request the job serves (its receipt names it).
    """

    type: Literal["job"] = "job"
    job_id: JobId
    request_id: JobId | None = None
    model: Name
    kind: Literal["chat", "completion", "embedding"]
    messages: Annotated[list[ChatMessage], Field(max_length=MAX_MESSAGES)] | None = None
    prompts: Annotated[list[str | TokenIds], Field(max_length=MAX_PROMPTS)] | None = None
    inputs: Annotated[list[str | TokenIds], Field(max_length=MAX_PROMPTS)] | None = None
    params: SamplingParams | None = None
    # Failover: output tokens another provider already delivered for this (single-choice,
    # greedy or seeded) job. The provider appends them after the prompt and generates what
    # follows, as if it had produced them itself; ``params.max_tokens`` counts new tokens.
    continue_from: TokenIds | None = None
    # Whose job it is: an opaque tag, the same for one account's jobs at one provider and
    # different at every other, so the provider can share its compute fairly between
    # accounts without learning who they are (see market/compute_turns.py).
    tenant: Annotated[str, Field(pattern=r"^[0-9a-f]{16,64}$")] | None = None


class TopLogprob(Frame):
    token: Annotated[str, Field(max_length=1_000)]
    logprob: Annotated[float, Field(le=0.0)]


class TokenLogprob(Frame):
    token: Annotated[str, Field(max_length=1_000)]
    token_id: Annotated[int, Field(ge=0)]
    logprob: Annotated[float, Field(le=0.0)]
    top_logprobs: Annotated[list[TopLogprob], Field(max_length=20)] = []


class Chunk(Frame):
    """Text produced for choice ``index``; finish_reason set on the choice's last chunk."""

    type: Literal["chunk"] = "chunk"
    job_id: JobId
    index: Annotated[int, Field(ge=0, le=2_048)] = 0
    text: Annotated[str, Field(max_length=1_000_000)] = ""
    logprobs: Annotated[list[TokenLogprob], Field(max_length=10_000)] = []
    finish_reason: Literal["stop", "length"] | None = None
    # Output tokens this chunk carries, and (first chunk only) the prompt's token count:
    # what a consumer who cancels mid-stream pays for.
    tokens: Annotated[int, Field(ge=0, le=10_000)] = 0
    prompt_tokens: Count | None = None
    # The sampled tokens behind ``text`` (an end-of-sequence token excluded) and each one's
    # raw log-probability (log_softmax of the logits, before temperature or top_p).
    token_ids: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=10_000)] = []
    token_logprobs: Annotated[list[Annotated[float, Field(le=0.0)]], Field(max_length=10_000)] = []
    # On a finishing chunk: the model chose its end-of-sequence token (counted in usage).
    eos: bool = False


class Usage(Frame):
    prompt_tokens: Count
    completion_tokens: Count


class Receipt(Frame):
    """What a provider signs for one finished job (``RECEIPT_DOMAIN``).

    ``prompt_sha256`` and ``output_sha256`` are defined in ``tessera.protocol.receipts``;
    times are the provider's clock in Unix milliseconds; prices are the job's offer.
    """

    version: Literal[1] = 1
    request_id: JobId
    job_id: JobId
    provider_id: HexKey
    model: Name
    weights_sha256: Sha256
    kind: Literal["chat", "completion", "embedding"]
    prompt_sha256: Sha256
    output_sha256: Sha256
    prompt_tokens: Count
    completion_tokens: Count
    price_input_per_mtok: Annotated[int, Field(ge=0, le=10**18)]
    price_output_per_mtok: Annotated[int, Field(ge=0, le=10**18)]
    started_at_ms: Annotated[int, Field(ge=0)]
    finished_at_ms: Annotated[int, Field(ge=0)]


EmbeddingsB64 = Annotated[
    list[Annotated[str, Field(max_length=1_000_000)]], Field(max_length=2_048)
]


class Done(Frame):
    type: Literal["done"] = "done"
    job_id: JobId
    usage: Usage
    # Embedding jobs only: one base64 float32 little-endian vector per input.
    embeddings_b64: EmbeddingsB64 | None = None
    receipt: Receipt | None = None
    receipt_signature: HexSig | None = None


class JobError(Frame):
    type: Literal["job_error"] = "job_error"
    job_id: JobId
    code: Annotated[str, Field(max_length=100)]
    message: ShortText
    # True when the job never started, so another provider may take it.
    retryable: bool = False


class Cancel(Frame):
    type: Literal["cancel"] = "cancel"
    job_id: JobId


# ---------------------------------------------------------------- audits


class AuditChoice(Frame):
    """One choice's output as the audited provider produced it."""

    index: Annotated[int, Field(ge=0, le=2_048)] = 0
    token_ids: TokenIds
    eos: bool = False


class Audit(Frame):
    """Re-score another provider's output with one teacher-forced pass of the same model.

    ``job`` is the audited job as that provider received it (input and params). Text jobs
    list each choice's tokens; embedding jobs are recomputed from ``job.inputs``.
    """

    type: Literal["audit"] = "audit"
    job_id: JobId
    weights_sha256: Sha256
    job: Job
    choices: Annotated[list[AuditChoice], Field(max_length=2_048)] = []


class TokenScore(Frame):
    """A token under the auditor's model: rank 1 is the most likely token at its position."""

    rank: Annotated[int, Field(ge=1, le=10_000_000)]
    logprob: Annotated[float, Field(le=0.0)]
    top_logprob: Annotated[float, Field(le=0.0)]


class ChoiceScore(Frame):
    """The auditor's view of one choice.

    ``tokens`` scores each audited token in order; ``end`` scores the best-ranked
    end-of-sequence token at the position after the last one; ``text`` is the tokens
    decoded; ``prompt_tokens`` is the prompt's length under the model's tokenizer.
    """

    index: Annotated[int, Field(ge=0, le=2_048)] = 0
    prompt_tokens: Count
    tokens: Annotated[list[TokenScore], Field(max_length=1_000_000)]
    end: TokenScore
    text: Annotated[str, Field(max_length=4_000_000)]


class AuditResult(Frame):
    """The auditor's signed answer (``AUDIT_RESULT_DOMAIN``, over all but ``signature``).

    ``audit_sha256`` is the SHA-256 of the canonical audit frame it answers, so a result
    cannot be replayed for another audit.
    """

    type: Literal["audit_result"] = "audit_result"
    job_id: JobId
    auditor_id: HexKey
    weights_sha256: Sha256
    audit_sha256: Sha256
    choices: Annotated[list[ChoiceScore], Field(max_length=2_048)] | None = None
    embeddings_b64: EmbeddingsB64 | None = None
    prompt_tokens: Count = 0
    signature: HexSig

    def signed_payload(self) -> dict[str, object]:
        return self.model_dump(mode="json", exclude={"signature"})


ProviderFrame = Annotated[
    Register | Heartbeat | Chunk | Done | JobError | ErrorFrame | AuditResult | Goodbye,
    Field(discriminator="type"),
]
GatewayFrame = Annotated[
    Hello | Welcome | HeartbeatAck | Job | Cancel | ErrorFrame | Audit,
    Field(discriminator="type"),
]

provider_frame_adapter: TypeAdapter[ProviderFrame] = TypeAdapter(ProviderFrame)
gateway_frame_adapter: TypeAdapter[GatewayFrame] = TypeAdapter(GatewayFrame)


def frames_of(message: str) -> list[str]:
    """The frames (JSON texts) of one WebSocket text message, in order."""
    return message.split(FRAME_SEPARATOR)


def batch_text(frames: list[str]) -> str:
    """One message carrying ``frames`` (each a compact JSON text without newlines)."""
    return FRAME_SEPARATOR.join(frames)
