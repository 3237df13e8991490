"""The gateway's verification loop: receipts, join challenges, audits, disputes, penalties.

Policy lives in ``tessera.verify``; this module owns the tasks and the I/O around it.

- Every finished job's receipt is checked against what the gateway relayed before any
  money moves. A good one is countersigned and stored in the background; a bad one is
  refused (the provider earns nothing) and, when it is signed evidence of cheating,
  slashed at once through the slashing table.
- A provider is routed for a catalog model only if it announces the catalog's weight
  hash and passes the model's join challenge.
- After a receipt is stored the request may be audited: an independent auditor re-scores
  it; a failure goes to two more auditors and only two failures of three slash: a share
  of stake, the request's earnings back to its consumer, and a ban when the table says so
  or failures repeat. Auditors are paid from the verification pool.

Audit tasks run beside the hot path and never hold it up; their state is in memory, so a
gateway restart drops audits in flight (their receipts stay stored).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from nacl.signing import SigningKey

from tessera.config import GatewaySettings
from tessera.errors import NoCapacity
from tessera.gateway.bookkeeper import Bookkeeper
from tessera.gateway.events import AuditClosed, EventSink, Slashed
from tessera.gateway.hub import AUDITOR_BUSY, AuditAnswer, ProviderHub
from tessera.gateway.transport import JobStream, ProviderGone
from tessera.ledger.escrow import split_fee
from tessera.ledger.journal import LedgerError
from tessera.market.registry import ROUTABLE, ProviderRegistry
from tessera.protocol import signing
from tessera.protocol.canonical import canonical_bytes, sha256_hex
from tessera.protocol.receipts import (
    ChoiceOutput,
    CountersignedReceipt,
    OutputDigest,
    countersign,
    request_id_of,
)
from tessera.protocol.wire import (
    AUDIT_RESULT_DOMAIN,
    Audit,
    AuditChoice,
    AuditResult,
    Capabilities,
    Chunk,
    Done,
    Job,
    JobError,
    ModelOffer,
)
from tessera.store.verification import (
    AuditRow,
    CaseRow,
    ReceiptRow,
    ReceiptWriter,
    VerificationStore,
    ViolationRow,
)
from tessera.verify.auditors import Candidate, auditor_order
from tessera.verify.catalog import Catalog, CatalogModel
from tessera.verify.challenge import (
    challenge_job,
    check_embedding_challenge,
    check_text_challenge,
)
from tessera.verify.disputes import Case
from tessera.verify.evidence import public_evidence
from tessera.verify.penalties import (
    Penalty,
    auditor_pay,
    bans,
    cheat_exposure,
    close,
    penalty_for,
)
from tessera.verify.receipts import CheckedBodies, ReceiptCheck, check_receipt
from tessera.verify.reputation import ReputationBook
from tessera.verify.sampling import AuditPolicy, audit_rate, should_audit
from tessera.verify.scoring import Verdict, score_embeddings, score_text

log = logging.getLogger("tessera.gateway.verification")

CHALLENGE = "challenge"
CHALLENGE_FAILED = "challenge_failed"
WEIGHTS_MISMATCH = "weights_mismatch"
BANNED = "banned"
MAX_AUDIT_ATTEMPTS = 9  # auditors asked per case, failures to answer included


@dataclass(slots=True)
class Subject:
    """A finished request kept in memory while it is audited."""

    request_id: str
    provider_id: str
    model: str
    job: Job
    offer: ModelOffer
    choices: list[ChoiceOutput]
    embeddings_b64: list[str] | None
    prompt_tokens: int
    consumer: str
    cost: int
    earnings: int


@dataclass(slots=True)
class _Online:
    since: float
    counted_until: float = field(default=0.0)


def audit_secret(key: SigningKey) -> bytes:
    """The key of the audit draw: derived from the gateway's own secret, never published."""
    return hmac.new(key.encode(), b"tessera/audit-draw/v1", hashlib.sha256).digest()


class ServedJob(Protocol):
    """What sampling a served job for audit reads of it (a JobStream has it all; so does
    a job another replica served, sent here: gateway/cluster_audits.py)."""

    job: Job
    offer: ModelOffer
    digest: OutputDigest | None

    @property
    def provider_id(self) -> str: ...


class Verifier:
    def __init__(
        self,
        settings: GatewaySettings,
        catalog: Catalog,
        key: SigningKey,
        registry: ProviderRegistry,
        hub: ProviderHub,
        bookkeeper: Bookkeeper | None,
        store: VerificationStore,
        receipts: ReceiptWriter,
        reputation: ReputationBook,
        bans: set[tuple[str, str]],
        events: EventSink,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.events = events
        self.catalog = catalog
        self.key = key
        self.public_key = signing.public_key_hex(key)
        self.registry = registry
        self.hub = hub
        self.bookkeeper = bookkeeper
        self.store = store
        self.receipts = receipts
        self.reputation = reputation
        self.bans = bans
        self.clock = clock
        self.secret = audit_secret(key)
        self.policy = AuditPolicy(
            probation_audits=settings.audit_probation,
            half_life_audits=settings.audit_half_life,
            floor_rate=settings.audit_floor_rate,
            deterrence=settings.audit_deterrence,
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._checked_bodies = CheckedBodies()  # from check() to accepted()
        self._audit_slots = asyncio.Semaphore(settings.max_concurrent_audits)
        self._online: dict[str, _Online] = {}
        self._last_tick = clock()
        self.audits_started = 0
        # A replica without the ledger sends its paid requests here to the owner.
        self.forward_audit: Callable[[ServedJob, Done, str, int], None] | None = None
        # Told of each ban decided here (replicas apply it too: cluster_audits.py).
        self.on_ban: Callable[[str, str], None] | None = None

    # ------------------------------------------------------------ lifecycle

    def spawn(self, work: object) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("verification task failed", exc_info=task.exception())

    async def idle(self, timeout_s: float = 30.0) -> None:
        """Wait until no challenge or audit is running (tests and shutdown)."""
        async with asyncio.timeout(timeout_s):
            while self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        self._count_online()
        with contextlib.suppress(Exception):
            await self.save_reputation()

    async def save_reputation(self) -> None:
        snapshot = {pid: rep.public() for pid, rep in self.reputation.snapshot().items()}
        await self.store.save_reputation(snapshot, datetime.now(UTC))

    async def run_housekeeping(self, interval_s: float = 30.0) -> None:
        """Count uptime and persist reputation now and then, until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            self._count_online()
            try:
                await self.save_reputation()
            except Exception:
                log.exception("could not store reputation")

    # ------------------------------------------------------------ connections

    def initial_status(self, provider_id: str, caps: Capabilities) -> dict[str, str]:
        """Where each announced model starts: routable, or held back until proven."""
        status: dict[str, str] = {}
        for offer in caps.models:
            entry = self.catalog.get(offer.name)
            if (provider_id, offer.name) in self.bans:
                status[offer.name] = BANNED
            elif entry is None:
                status[offer.name] = ROUTABLE
            elif entry.weights_sha256 != offer.weights_sha256 or entry.kind != offer.kind:
                status[offer.name] = WEIGHTS_MISMATCH
            elif entry.challenges:
                status[offer.name] = CHALLENGE
            else:
                status[offer.name] = ROUTABLE
        return status

    def on_connect(self, provider_id: str, caps: Capabilities) -> None:
        now = self.clock()
        self._online[provider_id] = _Online(since=now, counted_until=now)
        self._refresh_score(provider_id)
        live = self.registry.get(provider_id)
        if live is None:
            return
        for model, status in live.status.items():
            entry = self.catalog.get(model)
            if status == WEIGHTS_MISMATCH and entry is not None:
                self.spawn(
                    self._violation(
                        provider_id,
                        None,
                        WEIGHTS_MISMATCH,
                        f"announced {model} with weights {live.offers[model].weights_sha256}, "
                        f"the catalog pins {entry.weights_sha256}",
                    )
                )
            elif status == CHALLENGE and entry is not None:
                self.spawn(self._challenge(provider_id, entry))

    def on_disconnect(self, provider_id: str) -> None:
        self._count_online(provider_id)
        self._online.pop(provider_id, None)

    def _count_online(self, only: str | None = None) -> None:
        """Add the time since the last count to uptime (connected) and to time seen (all)."""
        now = self.clock()
        for pid, online in list(self._online.items()):
            if only is not None and pid != only:
                continue
            elapsed = max(0.0, now - online.counted_until)
            self.reputation.online(pid, elapsed)
            self.reputation.seen(pid, elapsed)
            online.counted_until = now
        if only is None:
            elapsed = max(0.0, now - self._last_tick)
            for pid in self.reputation.snapshot():
                if pid not in self._online:
                    self.reputation.seen(pid, elapsed)
            self._last_tick = now

    def refresh_score(self, provider_id: str) -> None:
        """Give the router the provider's current score (after the record changed)."""
        self._refresh_score(provider_id)

    def _refresh_score(self, provider_id: str) -> None:
        live = self.registry.get(provider_id)
        if live is not None:
            live.reputation = self.reputation.get(provider_id).score()

    # ------------------------------------------------------------ join challenges

    async def _challenge(self, provider_id: str, entry: CatalogModel) -> None:
        """Run the model's reference prompts on the provider; route it only if all pass."""
        for number, challenge in enumerate(entry.challenges):
            job = challenge_job(entry.name, challenge, f"challenge-{secrets.token_hex(8)}.0")
            outcome = await self._run_challenge_job(provider_id, job)
            if outcome is None:
                return  # gone or never free: the next connection tries again
            done, stream = outcome
            check = check_receipt(
                done,
                provider_id=provider_id,
                job=job,
                offer=stream.offer,
                digest=stream.digest,
            )
            if not check.ok:
                verdict_detail = f"challenge {number}: receipt refused: {check.detail}"
                await self._fail_challenge(provider_id, entry.name, verdict_detail)
                return
            if entry.kind == "embedding":
                verdict = check_embedding_challenge(
                    challenge, done.embeddings_b64 or [], entry.tolerances
                )
            else:
                assert stream.digest is not None
                choices = stream.digest.ordered()
                output = choices[0] if choices else ChoiceOutput(0)
                verdict = check_text_challenge(
                    challenge, output, done.usage.prompt_tokens, entry.tolerances
                )
            if not verdict.passed:
                detail = "; ".join(f.detail for f in verdict.findings[:3])
                await self._fail_challenge(provider_id, entry.name, f"challenge {number}: {detail}")
                return
        live = self.registry.get(provider_id)
        if live is not None and live.status.get(entry.name) == CHALLENGE:
            self.registry.set_status(provider_id, entry.name, ROUTABLE)
            await self.hub.notify_slot()
            log.info("provider %s passed the %s challenge", provider_id[:12], entry.name)

    async def _run_challenge_job(self, provider_id: str, job: Job) -> tuple[Done, JobStream] | None:
        for _ in range(60):
            try:
                stream = await self.hub.open_job_on(provider_id, job)
                break
            except NoCapacity:
                if self.registry.get(provider_id) is None:
                    return None
                await asyncio.sleep(0.5)
        else:
            return None
        try:
            while True:
                event = await stream.next_event(self.settings.first_token_timeout_s)
                if isinstance(event, Chunk):
                    continue
                if isinstance(event, Done):
                    return event, stream
                if isinstance(event, JobError):
                    await self._fail_challenge(
                        provider_id, job.model, f"refused the challenge: {event.message}"
                    )
                return None
        finally:
            await stream.close()

    async def _fail_challenge(self, provider_id: str, model: str, detail: str) -> None:
        log.warning("provider %s failed the %s challenge: %s", provider_id[:12], model, detail)
        self.registry.set_status(provider_id, model, CHALLENGE_FAILED)
        await self._violation(provider_id, None, CHALLENGE_FAILED, f"{model}: {detail}")

    # ------------------------------------------------------------ receipts

    def check(self, stream: JobStream, done: Done) -> ReceiptCheck:
        """Check a finished job's receipt; a refused one is penalised in the background."""
        result = check_receipt(
            done,
            provider_id=stream.provider_id,
            job=stream.job,
            offer=stream.offer,
            digest=stream.digest,
        )
        if not result.ok:
            self.reputation.receipt_refused(stream.provider_id)
            self._refresh_score(stream.provider_id)
            self.spawn(self._refused(stream, result))
        elif result.signed_body is not None and done.receipt is not None:
            self._checked_bodies.keep(done.receipt, result.signed_body)
        return result

    async def _refused(self, stream: JobStream, result: ReceiptCheck) -> None:
        provider_id, job = stream.provider_id, stream.job
        log.warning("refused receipt from %s: %s", provider_id[:12], result.detail)
        kind = result.problem or "bad_receipt"
        await self._violation(provider_id, request_id_of(job), kind, result.detail)
        if result.slashable:
            await self._penalise(
                provider_id,
                job.model,
                f"receipt for job {job.job_id}: {result.detail}",
                penalty_for(kind, None, 0, 0),
                reference=f"receipt:{job.job_id}",
            )

    def accepted(
        self, stream: JobStream, done: Done, consumer: str, cost: int
    ) -> CountersignedReceipt | None:
        """Countersign and store a good receipt; maybe open an audit. Never blocks."""
        receipt, signature = done.receipt, done.receipt_signature
        if receipt is None or signature is None:
            return None
        signed = countersign(
            self.key,
            self.settings.gateway_id,
            receipt,
            signature,
            int(self.clock() * 1000),
            receipt_body=self._checked_bodies.take(receipt),
        )
        self.receipts.submit(
            ReceiptRow(
                request_id=receipt.request_id,
                job_id=receipt.job_id,
                provider_id=receipt.provider_id,
                model=receipt.model,
                weights_sha256=receipt.weights_sha256,
                account_id=consumer,
                body_json=signed.model_dump_json(),
                created_at=datetime.now(UTC),
            )
        )
        self.reputation.job_completed(stream.provider_id)
        self._refresh_score(stream.provider_id)
        self._maybe_audit(stream, done, consumer, cost)
        return signed

    async def receipt_for(self, request_id: str, account_id: str) -> CountersignedReceipt | None:
        row = self.receipts.pending(request_id) or await self.store.receipt(request_id)
        if row is None or row.account_id != account_id:
            return None
        return CountersignedReceipt.model_validate_json(row.body_json)

    # ------------------------------------------------------------ audits

    def sample_for_audit(self, stream: ServedJob, done: Done, consumer: str, cost: int) -> None:
        """Sample a request another replica served, as if it had been served here (only
        where the ledger is)."""
        if self.bookkeeper is not None:
            self._maybe_audit(stream, done, consumer, cost)

    def _maybe_audit(self, stream: ServedJob, done: Done, consumer: str, cost: int) -> None:
        entry = self.catalog.get(stream.job.model)
        if not self.settings.audits_enabled or entry is None or done.receipt is None:
            return
        if self.bookkeeper is None:
            # A replica without the ledger: audits move money (auditor pay, refunds,
            # slashes), so the owner samples and runs them (gateway/cluster_audits.py).
            if self.forward_audit is not None:
                self.forward_audit(stream, done, consumer, cost)
            return
        provider_id = stream.provider_id
        fees = self.bookkeeper.book.policy.fees
        earnings = split_fee(cost, fees.fee_bps, fees.verification_share_bps)[0]
        view = self.bookkeeper.book.provider(provider_id)
        exposed = view.bonded + sum(t.amount for t in view.unbonding)
        loss = cheat_exposure(self.bookkeeper.book.policy.slashing, exposed, earnings)
        rep = self.reputation.get(provider_id)
        rate = audit_rate(self.policy, rep.clean_audits(), rep.audits_failed, earnings, loss)
        request_id = done.receipt.request_id
        if not should_audit(self.secret, request_id, rate):
            return
        subject = Subject(
            request_id=request_id,
            provider_id=provider_id,
            model=stream.job.model,
            job=stream.job,
            offer=stream.offer,
            choices=stream.digest.ordered() if stream.digest is not None else [],
            embeddings_b64=done.embeddings_b64,
            prompt_tokens=done.usage.prompt_tokens,
            consumer=consumer,
            cost=cost,
            earnings=earnings,
        )
        self.audits_started += 1
        self.spawn(self._audit_case(subject, entry))

    def _keeper(self) -> Bookkeeper:
        """The ledger, for a case's money; only a replica that owns it opens cases."""
        if self.bookkeeper is None:
            raise RuntimeError("audit cases run only on the replica that owns the ledger")
        return self.bookkeeper

    def _eligible_auditors(self, subject: Subject, excluded: set[str]) -> list[str]:
        """Who may audit now: serving the same weights, free, not excluded; trusted and in
        the order ``verify.auditors`` decides."""
        validators = set(self.settings.validator_keys)
        candidates = []
        for live in self.registry.serving(subject.model):
            pid = live.provider_id
            offer = live.offers.get(subject.model)
            if pid in excluded or offer is None or live.free_slots <= 0:
                continue
            if offer.weights_sha256 != subject.offer.weights_sha256:
                continue
            rep = self.reputation.get(pid)
            candidates.append(
                Candidate(pid, pid in validators, rep.clean_audits(), rep.audits_failed,
                          live.reputation)
            )  # fmt: skip
        return auditor_order(candidates, self.settings.auditor_min_clean_audits, self.hub.rng)

    async def _audit_case(self, subject: Subject, entry: CatalogModel) -> None:
        case = Case(subject.request_id, subject.provider_id, subject.model)
        opened = datetime.now(UTC)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.audit_deadline_s
        attempt = busy_retries = 0
        while case.auditors_needed() > 0 and attempt < MAX_AUDIT_ATTEMPTS:
            auditors = self._eligible_auditors(subject, case.excluded())
            if not auditors:
                if loop.time() >= deadline:
                    break
                await asyncio.sleep(1.0)
                continue
            auditor = auditors[0]
            async with self._audit_slots:
                answer = await self._ask(subject, auditor, attempt + 1)
            if _busy(answer) and busy_retries < 20:
                # Its slots filled up since we looked: ask again shortly, it is not at fault.
                busy_retries += 1
                await asyncio.sleep(0.25)
                continue
            attempt += 1
            vote = min(3, len(case.verdicts) + 1)  # the vote this audit was asked for
            verdict = await self._judge(subject, entry, auditor, attempt, vote, answer)
            if verdict is None or (verdict.reason is None and not verdict.passed):
                case.auditor_failed(auditor)
                continue
            case.add(auditor, verdict)
        await self._close_case(case, subject, opened)

    def _audit_frame(self, subject: Subject, attempt: int) -> Audit:
        return Audit(
            job_id=f"audit-{subject.request_id}-{attempt}"[:100],
            weights_sha256=subject.offer.weights_sha256,
            job=subject.job,
            choices=[
                AuditChoice(index=c.index, token_ids=c.token_ids, eos=c.eos)
                for c in subject.choices
            ],
        )

    async def _ask(self, subject: Subject, auditor: str, attempt: int) -> AuditAnswer:
        audit = self._audit_frame(subject, attempt)
        return await self.hub.request_audit(auditor, audit, self.settings.audit_timeout_s)

    async def _judge(
        self,
        subject: Subject,
        entry: CatalogModel,
        auditor: str,
        attempt: int,
        vote: int,
        answer: AuditAnswer,
    ) -> Verdict | None:
        """Score an auditor's answer and store the audit (as vote 1 to 3) with its evidence."""
        audit = self._audit_frame(subject, attempt)
        verdict: Verdict | None = None
        outcome, reason = "no_answer", None
        evidence: dict[str, object] = {}
        if isinstance(answer, AuditResult):
            problem = _result_problem(answer, audit, auditor)
            if problem is not None:
                evidence["problem"] = problem
                await self._violation(auditor, subject.request_id, "bad_audit_result", problem)
            else:
                verdict = self._score(subject, entry, answer)
                evidence = public_evidence(
                    {"verdict": verdict.public(), "result": answer.model_dump(mode="json")}
                )
                if verdict.passed:
                    outcome = "passed"
                elif verdict.reason is not None:
                    outcome, reason = "failed", verdict.reason
                await self._pay_auditor(auditor, subject, answer, attempt)
        elif isinstance(answer, JobError):
            evidence["problem"] = f"{answer.code}: {answer.message}"
        elif isinstance(answer, ProviderGone):
            evidence["problem"] = answer.reason
        await self.store.save_audit(
            AuditRow(
                request_id=subject.request_id,
                round=vote,
                provider_id=subject.provider_id,
                auditor_id=auditor,
                model=subject.model,
                outcome=outcome,
                reason=reason,
                evidence_json=json.dumps(evidence, separators=(",", ":")),
                created_at=datetime.now(UTC),
            )
        )
        return verdict

    def _score(self, subject: Subject, entry: CatalogModel, result: AuditResult) -> Verdict:
        if subject.job.kind == "embedding":
            return score_embeddings(
                subject.embeddings_b64 or [], subject.prompt_tokens, result, entry.tolerances
            )
        return score_text(
            subject.job,
            subject.choices,
            subject.prompt_tokens,
            subject.offer.context_length,
            result,
            entry.tolerances,
        )

    async def _pay_auditor(
        self, auditor: str, subject: Subject, result: AuditResult, attempt: int
    ) -> None:
        live = self.registry.get(auditor)
        if live is None or subject.model not in live.offers:
            return
        scored = subject.prompt_tokens + sum(c.completion_tokens for c in subject.choices)
        amount = auditor_pay(scored, live.offers[subject.model].price_input_per_mtok)
        if amount <= 0:
            return
        try:
            await self._keeper().pay_auditor(
                auditor, amount, f"audit:{subject.request_id}:{attempt}"
            )
        except LedgerError as exc:
            log.warning("could not pay auditor %s: %s", auditor[:12], exc)

    async def _close_case(self, case: Case, subject: Subject, opened: datetime) -> None:
        closed = close(case)
        status = closed.status
        slashed = refunded = 0
        provider_id = subject.provider_id
        if closed.reputation_event is not None:
            self.reputation.record(provider_id, closed.reputation_event)
        if closed.reason is not None:
            slashed, refunded = await self._penalise(
                provider_id,
                subject.model,
                f"audit case {subject.request_id}: 2 of 3 auditors failed it",
                penalty_for(closed.reason, subject.consumer, subject.cost, subject.earnings),
                reference=f"audit:{subject.request_id}",
            )
        for dissenter in closed.dissenters:
            self.reputation.dissent(dissenter)
            self._refresh_score(dissenter)
        self._refresh_score(provider_id)
        await self.store.upsert_case(
            CaseRow(
                request_id=subject.request_id,
                provider_id=provider_id,
                model=subject.model,
                status=status,
                reason=closed.reason,
                slashed_units=slashed,
                refunded_units=refunded,
                opened_at=opened,
                closed_at=datetime.now(UTC),
            )
        )
        self.events.publish(
            AuditClosed(subject.request_id, provider_id, subject.model, status, slashed, refunded)
        )
        if status != "passed":
            log.warning(
                "audit case %s against %s: %s", subject.request_id, provider_id[:12], status
            )

    # ------------------------------------------------------------ penalties

    async def _penalise(
        self,
        provider_id: str,
        model: str,
        evidence: str,
        penalty: Penalty,
        *,
        reference: str,
    ) -> tuple[int, int]:
        """Apply ``penalty`` in its order (``verify.penalties``): the clawback, the slash by
        the table, a ban if due; (slashed, refunded)."""
        reason = penalty.reason
        refunded = 0
        if penalty.consumer is not None and penalty.clawback > 0:
            try:
                entry = await self._keeper().clawback(
                    provider_id, penalty.consumer, penalty.clawback, f"clawback:{reference}"
                )
                if entry is not None:
                    refunded += sum(p.amount for p in entry.postings if p.amount > 0)
            except LedgerError as exc:
                log.warning("clawback for %s failed: %s", reference, exc)
        harmed = penalty.owed_after(refunded)
        slashed = 0
        try:
            outcome = await self._keeper().slash(
                provider_id, reason, evidence[:500], harmed, f"slash:{reference}"
            )
            slashed = outcome.taken
            refunded += sum(amount for _, amount in outcome.to_consumers)
        except LedgerError as exc:
            log.warning("no stake slashed from %s for %s: %s", provider_id[:12], reason, exc)
        self.reputation.slashed(provider_id)
        rule = self._keeper().book.policy.slashing.rule(reason)
        if bans(
            rule, self.reputation.get(provider_id).audits_failed, self.settings.ban_after_failures
        ):
            await self.ban(provider_id, model, reason)
        self._refresh_score(provider_id)
        self.events.publish(Slashed(provider_id, model, reason, slashed, refunded, reference))
        log.warning(
            "slashed %s for %s: %d base units, %d refunded",
            provider_id[:12],
            reason,
            slashed,
            refunded,
        )
        return slashed, refunded

    async def ban(self, provider_id: str, model: str, reason: str) -> None:
        self.apply_ban(provider_id, model)
        await self.store.ban(provider_id, model, reason, datetime.now(UTC))
        if self.on_ban is not None:
            self.on_ban(provider_id, model)

    def apply_ban(self, provider_id: str, model: str) -> None:
        """Stop routing ``model`` to the provider, here and on any later connection (a ban
        decided here, or by the replica that owns the ledger)."""
        self.bans.add((provider_id, model))
        self.registry.set_status(provider_id, model, BANNED)

    async def _violation(
        self, provider_id: str, request_id: str | None, kind: str, detail: str
    ) -> None:
        try:
            await self.store.add_violation(
                ViolationRow(
                    provider_id=provider_id,
                    request_id=request_id,
                    kind=kind,
                    detail=detail[:2000],
                    created_at=datetime.now(UTC),
                )
            )
        except Exception:
            log.exception("could not store a violation by %s", provider_id[:12])


def _busy(answer: AuditAnswer) -> bool:
    """The auditor had no free slot: not a failure to answer."""
    if isinstance(answer, JobError):
        return answer.code == "busy"
    return isinstance(answer, ProviderGone) and answer.reason == AUDITOR_BUSY


def _result_problem(result: AuditResult, audit: Audit, auditor: str) -> str | None:
    """Why an audit result cannot be used, or None: it must answer this audit, signed."""
    if result.job_id != audit.job_id:
        return "the result answers another audit"
    if result.auditor_id != auditor:
        return "the result names another auditor"
    if result.weights_sha256 != audit.weights_sha256:
        return "the auditor scored other weights"
    if result.audit_sha256 != sha256_hex(canonical_bytes(audit.model_dump(mode="json"))):
        return "the result is for a different audit question"
    try:
        signing.verify(auditor, AUDIT_RESULT_DOMAIN, result.signed_payload(), result.signature)
    except signing.SignatureInvalid:
        return "the audit result signature does not verify"
    return None
