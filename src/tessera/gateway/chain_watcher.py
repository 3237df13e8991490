"""The gateway's side of the vault: book the chain's events, collect what consumers spent.

Run only by the ledger's owner. Every ``poll_s`` it reads the vault's events up to the
final block (``finalized``, or ``latest - confirmations``), books those for this gateway
with ledger/chain_book.py, each keyed by its event so a re-read books nothing twice, and
saves how far it got only after the entries are stored. A restart resumes from there.

Every ``collect_s`` it collects, for each linked consumer, what they spent here and the
vault still holds as their deposit, with a custodial spend signed by the gateway's key.
The amount is read at the booked block, so it never counts a deposit the journal has not
credited: ``cumulative = collected + min(deposit, Σ deposits - what the account owns)``.
Then it pays providers: each one whose Ed25519 key is bound in the Registry to an account
gets its earnings as a cumulative cheque (``paid + cheques``, signed by the gateway's key,
served at ``GET /v1/providers/{id}/cheque`` so it can be cashed without this gateway), and
once per vault epoch the gateway pushes the largest owed amounts with ``settle``.

When the audits slash a provider, the stake is on chain, so the slash is proposed to the
StakeManager (this gateway must be on its committee) with the harmed consumers' linked
addresses as refunds, and executed by the same loop once the challenge window has passed;
the refunds come back as the vault's ``Refunded`` events and are booked like deposits.

A consumer links an address once (``link``); its earlier deposits are booked then, in the
order they happened. The web3 client is synchronous: every chain call runs in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tessera.chain.client import MAX_REFUNDS, ChainClient, ChainEvent, SlashProposal, Spend
from tessera.chain.deployment import Deployment
from tessera.chain.errors import ChainError, TransactionReverted
from tessera.chain.keys import EthKey, load_key_file
from tessera.chain.sender import TxSender, state_path_for
from tessera.chain.typed_data import Binding, SignedCheque, verify_binding
from tessera.config import GatewaySettings
from tessera.errors import ConfigError
from tessera.gateway.bookkeeper import Bookkeeper
from tessera.ledger import chain_book
from tessera.ledger.accounts import balance_of, cheques_of, earnings_of, hold_of, withdrawing_of
from tessera.ledger.journal import DuplicateEntry, Entry, Ledger, LedgerError
from tessera.ledger.slashing_table import chain_kind
from tessera.ledger.staking import SlashOutcome
from tessera.store.chain import ChainStore, Cursor, Payee, SlashClaim

log = logging.getLogger("tessera.gateway.chain")

CONSUMER_EVENTS = frozenset({"Deposited", "Refunded", "WithdrawRequested", "Withdrawn"})
MAX_SETTLE = 256  # PaymentVault.MAX_SETTLE: pushed payments per epoch
GAS_PER_PUSH = 51_000  # settle's gas per payment to a provider paid for the first time


@dataclass(frozen=True, slots=True)
class Collected:
    consumer: str
    cumulative: int
    amount: int


class ChainWatcher:
    def __init__(
        self,
        client: ChainClient,
        keeper: Bookkeeper,
        store: ChainStore,
        key: EthKey,
        sender: TxSender,
        *,
        poll_s: float = 2.0,
        collect_s: float = 30.0,
        confirmations: int | None = None,
        min_payout: int = 1,
        wei_per_token: int = 10**15,
        max_gas_share_bps: int = 100,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.keeper = keeper
        self.store = store
        self.key = key
        self.sender = sender
        self.gateway = sender.address
        self.poll_s = poll_s
        self.collect_s = collect_s
        self.confirmations = confirmations
        self.min_payout = min_payout
        self.wei_per_token = wei_per_token
        self.max_gas_share_bps = max_gas_share_bps
        self.posted_epoch = -1  # the last vault epoch whose ledger root was posted
        self.clock = clock
        self.payees: dict[str, Payee] = {}  # provider id -> where it is paid
        self.stakes: dict[str, int] = {}  # account -> stake bonded on chain (the router's)
        self.cheques: dict[str, SignedCheque] = {}  # provider id -> its newest cheque
        self.problems: list[str] = []  # events the journal could not take (see status)
        self.halted: str | None = None  # why booking stopped (a reorganization below it)
        self.links: dict[str, str] = {}
        self.cursor = Cursor(client.deployment.start_block - 1, "")
        self.unlinked: dict[str, int] = defaultdict(int)  # address -> deposits not credited
        # address -> the highest cumulative collect sent: the booked block may not show it
        # yet, and sending it again would only pay gas for a replay
        self.sent: dict[str, int] = {}
        self.last_error: str | None = None
        self.claims: list[SlashClaim] = []  # slashes decided here, not yet proposed
        self.proposals: dict[str, int] = {}  # a claim's reference -> its proposal id
        self.slash_errors: list[str] = []  # claims the StakeManager refused
        self.slash_scan_from = 1  # proposals below this one are executed or dead
        self._lock = asyncio.Lock()  # one booking pass at a time (poll, link)

    @property
    def chain_id(self) -> int:
        return self.client.deployment.chain_id

    async def start(self) -> None:
        self.links = await self.store.links()
        self.payees = await self.store.payees()
        self.claims = await self.store.queued_claims()  # decided before a crash, not sent
        self.proposals = await self.store.proposed_claims()
        stored = await self.store.cursor(self.gateway)
        if stored is not None:
            self.cursor = stored
        if self.cursor.block_number >= self.client.deployment.start_block:
            accounts = sorted({p.address for p in self.payees.values()})
            try:
                self.stakes = await asyncio.to_thread(
                    self._read_stakes, accounts, self.cursor.block_number
                )
            except Exception as exc:  # a node that keeps no state that old (pruned)
                log.warning(
                    "chain: cannot read stakes at booked block %d (%s); reading the latest",
                    self.cursor.block_number,
                    exc,
                )
                self.stakes = await asyncio.to_thread(self._read_stakes, accounts, "latest")

    # ------------------------------------------------------------ stake (the router's)

    def bonded(self, provider_id: str) -> int:
        """Stake bonded on chain by the account the provider's key is bound to."""
        payee = self.payees.get(provider_id)
        return 0 if payee is None else self.stakes.get(payee.address, 0)

    def staked(self) -> set[str]:
        return {p for p, payee in self.payees.items() if self.stakes.get(payee.address, 0) > 0}

    def _read_stakes(self, accounts: list[str], block: int | str) -> dict[str, int]:
        stake = self.client.stake.functions
        return {a: int(stake.bonded(a).call(block_identifier=block)) for a in accounts}

    async def run(self) -> None:
        """Poll and collect until cancelled; a failing node is logged and retried."""
        next_collect = self.clock() + self.collect_s
        try:
            await self._loop(next_collect)
        finally:
            self.sender.close()

    async def _loop(self, next_collect: float) -> None:
        while True:
            try:
                await self.poll()
                await self.send_claims()
                if self.clock() >= next_collect:
                    await self.collect()
                    await self.pay_providers()
                    await self.post_epoch()
                    await self.execute_slashes()
                    next_collect = self.clock() + self.collect_s
                self.last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the node is down, or a transaction failed
                if str(exc) != self.last_error:
                    log.warning("chain: %s (retrying every %.0f s)", exc, self.poll_s)
                self.last_error = str(exc)
            await asyncio.sleep(self.poll_s)

    # ------------------------------------------------------------ booking

    async def poll(self) -> int:
        """Book every event up to the final block; returns how many were this gateway's."""
        async with self._lock:
            if self.halted is not None:
                raise ChainError(self.halted)
            number, block_hash, booked_hash = await asyncio.to_thread(self._final_block)
            if self.cursor.block_hash and booked_hash != self.cursor.block_hash:
                self.halted = (
                    f"the chain replaced block {self.cursor.block_number}, which this gateway "
                    f"had booked as final ({self.cursor.block_hash}, now {booked_hash}): the "
                    "journal may hold events no longer on chain, so booking stopped. Raise "
                    "--chain-confirmations, compare `GET /v1/chain` with the vault, and restart"
                )
                self.problems.append(self.halted)
                log.error("chain: %s", self.halted)
                raise ChainError(self.halted)
            if number <= self.cursor.block_number:
                return 0
            events = await asyncio.to_thread(
                self.client.events, self.cursor.block_number + 1, number
            )
            booked = 0
            for event in events:
                booked += await self._book(event)
            self.cursor = Cursor(number, block_hash)
            await self.store.save_cursor(self.gateway, self.cursor)
            return booked

    def _final_block(self) -> tuple[int, str, str]:
        """The final block's number and hash, and the hash the chain now gives the block
        booked last (a reorganization below it changes it)."""
        if self.confirmations is None:
            number, block_hash = self.client.block("finalized")
        else:
            latest, _ = self.client.block("latest")
            number, block_hash = self.client.block(max(0, latest - self.confirmations))
        booked = ""
        if self.cursor.block_hash:
            booked = self.client.block(self.cursor.block_number)[1]
        return number, block_hash, booked

    def _ours(self, event: ChainEvent) -> bool:
        return (
            event.contract == "vault"
            and event.name in CONSUMER_EVENTS
            and event.args.get("gateway") == self.gateway
        )

    async def _book(self, event: ChainEvent) -> int:
        if event.contract == "registry" and event.name == "Bound":
            await self._bound(event)
            return 0
        if event.contract == "stake":
            account = (
                event.args.get("account") or event.args.get("offender") or event.args.get("gateway")
            )
            if account is not None:
                read = await asyncio.to_thread(self._read_stakes, [account], event.block_number)
                self.stakes.update(read)
            return 0
        if event.contract == "vault" and event.args.get("gateway") == self.gateway:
            if event.name == "Paid":
                await self._paid(event)
                return 1
            if event.name == "ChequeBounced" and event.args["covered"] > 0:
                covered = int(event.args["covered"])
                key = chain_book.chain_event_key(event.tx_hash, event.log_index)
                log.warning("chain: the gateway's bond covered %d of a cheque", covered)
                try:
                    await self.keeper.chain_move(
                        lambda ledger, at: chain_book.book_bounce_cover(ledger, covered, key, at)
                    )
                except DuplicateEntry:
                    pass
                return 1
        if not self._ours(event):
            return 0
        consumer = event.args["consumer"]
        account = self.links.get(consumer)
        key = chain_book.chain_event_key(event.tx_hash, event.log_index)
        if account is None:
            if event.name in ("Deposited", "Refunded"):
                self.unlinked[consumer] += event.args["amount"]
            elif event.name == "Withdrawn":
                self.unlinked[consumer] = max(0, self.unlinked[consumer] - event.args["amount"])
            return 1
        amount = event.args.get("amount", 0)
        moves: list[Callable[[Ledger, float], Entry | None]] = []
        if event.name == "Deposited":
            moves.append(lambda ledger, at: chain_book.unfreeze(ledger, account, key + ":u", at))
            moves.append(
                lambda ledger, at: chain_book.credit_deposit(ledger, account, amount, key, at)
            )
        elif event.name == "Refunded":
            moves.append(
                lambda ledger, at: chain_book.credit_deposit(
                    ledger, account, amount, key, at, refund=True
                )
            )
        elif event.name == "WithdrawRequested":
            moves.append(
                lambda ledger, at: chain_book.freeze_for_withdrawal(ledger, account, key, at)
            )
        elif event.name == "Withdrawn" and amount > 0:
            moves.append(
                lambda ledger, at: chain_book.freeze_for_withdrawal(ledger, account, key + ":f", at)
            )
            moves.append(
                lambda ledger, at: chain_book.book_withdrawal(ledger, account, amount, key, at)
            )
        for move in moves:
            try:
                await self.keeper.chain_move(move)
            except DuplicateEntry:
                pass  # booked before a restart that came before the cursor was saved
        return 1

    async def _bound(self, event: ChainEvent) -> None:
        """A provider bound its Ed25519 key to an account: believe it only if the key
        signed the binding for this registry (the chain does not check Ed25519)."""
        args = event.args
        binding = Binding(
            args["account"],
            bytes(args["key"]),
            int(args["valid_until"]),
            int(args["nonce"]),
            bytes(args["signature"]),
        )
        registry = self.client.deployment.contracts["registry"]
        if not verify_binding(self.chain_id, registry, binding, binding.key):
            log.warning("chain: ignoring a binding of %s with a bad signature", binding.account)
            return
        payee = Payee(
            binding.key.hex(),
            binding.account,
            binding.nonce,
            binding.valid_until,
            event.block_number,
        )
        known = self.payees.get(payee.provider_id)
        if known is not None and known.bound_at_block > payee.bound_at_block:
            return
        await self.store.save_payee(payee)
        # An account is bound to one key at a time: a key it bound before no longer earns
        # there, nor counts its stake.
        for provider, known in list(self.payees.items()):
            if known.address == payee.address and provider != payee.provider_id:
                del self.payees[provider]
        self.payees[payee.provider_id] = payee
        if payee.address not in self.stakes:
            read = await asyncio.to_thread(self._read_stakes, [payee.address], event.block_number)
            self.stakes.update(read)

    async def _paid(self, event: ChainEvent) -> None:
        amount = int(event.args["amount"])
        if amount == 0:
            return
        address = event.args["provider"]
        provider = next((p for p, payee in self.payees.items() if payee.address == address), None)
        key = chain_book.chain_event_key(event.tx_hash, event.log_index)
        if provider is None:
            self.problems.append(f"the vault paid {amount} to {address}, no provider's payee")
            log.error("chain: %s", self.problems[-1])
            return
        try:
            await self.keeper.chain_move(
                lambda ledger, at: chain_book.book_payment(ledger, provider, amount, key, at)
            )
        except DuplicateEntry:
            pass
        except LedgerError as exc:  # paid beyond the cheques: a signer key leaked?
            self.problems.append(f"payment {key} to {address} does not fit the journal: {exc}")
            log.error("chain: %s", self.problems[-1])

    async def link(self, address: str, account_id: str) -> int:
        """Make ``address`` pay for ``account_id`` and book its past events (the caller
        checked the signature). Returns the base units credited by the past deposits."""
        async with self._lock:
            await self.store.link(address, account_id)
            self.links[address] = account_id
            before = self.keeper.book.ledger.balance(balance_of(account_id))
            if self.cursor.block_number >= self.client.deployment.start_block:
                events = await asyncio.to_thread(
                    self.client.events,
                    self.client.deployment.start_block,
                    self.cursor.block_number,
                )
                for event in events:
                    if self._ours(event) and event.args["consumer"] == address:
                        await self._book(event)
            self.unlinked.pop(address, None)
            return self.keeper.book.ledger.balance(balance_of(account_id)) - before

    def addresses_of(self, account_id: str) -> list[str]:
        return sorted(a for a, owner in self.links.items() if owner == account_id)

    # ------------------------------------------------------------ collecting

    async def collect(self) -> list[Collected]:
        """Collect what linked consumers spent here from their deposits (custodial)."""
        async with self._lock:
            block = self.cursor.block_number
            if block < self.client.deployment.start_block:
                return []
            by_account: dict[str, list[str]] = defaultdict(list)
            for address, account in self.links.items():
                by_account[account].append(address)
            vault = await asyncio.to_thread(self._read_vault, sorted(self.links), block)
            spends: list[Spend] = []
            ledger = self.keeper.book.ledger
            for account, addresses in by_account.items():
                owns = (
                    ledger.balance(balance_of(account))
                    + ledger.balance(withdrawing_of(account))
                    + ledger.balance(hold_of(account))
                )
                uncollected = sum(vault[a][0] for a in addresses) - owns
                for address in sorted(addresses):
                    deposit, collected = vault[address]
                    take = min(deposit, uncollected)
                    if take <= 0:
                        continue
                    uncollected -= take
                    if collected + take <= self.sent.get(address, 0):
                        continue
                    spends.append(
                        self.client.sign_spend(
                            self.key.private_key, address, self.gateway, collected + take
                        )
                    )
        if not spends:
            return []
        receipts = await asyncio.to_thread(self.client.collect_many, self.sender, spends)
        for spend in spends:
            self.sent[spend.consumer] = max(self.sent.get(spend.consumer, 0), spend.cumulative)
        out = []
        for spend, receipt in zip(spends, receipts, strict=True):
            amount = sum(
                e.args["amount"]
                for e in self.client.decode_receipt(receipt)
                if e.name == "Collected"
            )
            out.append(Collected(spend.consumer, spend.cumulative, amount))
            log.info(
                "chain: collected %d from %s (cumulative %d)",
                amount,
                spend.consumer,
                spend.cumulative,
            )
        return out

    async def pay_providers(self) -> list[SignedCheque]:
        """Turn bound providers' earnings into cheques, and push the largest owed once per
        vault epoch. Returns the cheques signed now."""
        async with self._lock:
            block = self.cursor.block_number
            if block < self.client.deployment.start_block or not self.payees:
                return []
            ledger = self.keeper.book.ledger
            due = {
                p: payee
                for p, payee in self.payees.items()
                if ledger.balance(earnings_of(p)) >= self.min_payout
                or ledger.balance(cheques_of(p)) > 0
            }
            if not due:
                return []
            chain, gas_price = await asyncio.to_thread(self._read_payees, due, block)
            threshold = chain_book.push_threshold(
                gas_price, GAS_PER_PUSH, self.wei_per_token, self.max_gas_share_bps
            )
            signed = []
            for provider, payee in due.items():
                paid, bound_key = chain[provider]
                if bound_key != bytes.fromhex(provider):
                    continue  # the account bound another key since: pay it no more
                earned = ledger.balance(earnings_of(provider))
                outstanding = ledger.balance(cheques_of(provider))
                if earned >= self.min_payout:
                    cumulative = paid + outstanding + earned
                    await self.keeper.chain_move(
                        lambda led, at, p=provider, e=earned, c=cumulative: chain_book.issue_cheque(
                            led, p, e, f"cheque:{p}:{c}", at
                        )
                    )
                cumulative = paid + ledger.balance(cheques_of(provider))
                known = self.cheques.get(provider)
                if known is None or known.cumulative != cumulative:
                    cheque = self.client.sign_cheque(
                        self.key.private_key, self.gateway, payee.address, cumulative
                    )
                    self.cheques[provider] = cheque
                    signed.append(cheque)
            owed = sorted(
                (
                    (c.cumulative - chain[p][0], c.provider, c.cumulative)
                    for p, c in self.cheques.items()
                    if p in chain and c.cumulative - chain[p][0] >= max(1, threshold)
                ),
                reverse=True,
            )[:MAX_SETTLE]
        if owed:
            await asyncio.to_thread(self._push, [(a, c, amount) for amount, a, c in owed])
        return signed

    def _read_payees(
        self, due: dict[str, Payee], block: int
    ) -> tuple[dict[str, tuple[int, bytes]], int]:
        """Per provider: what the vault paid it and the key its account is bound to; and
        the gas price now."""
        vault = self.client.vault.functions
        registry = self.client.registry.functions
        out = {}
        for provider, payee in due.items():
            paid = int(vault.paid(self.gateway, payee.address).call(block_identifier=block))
            bound = registry.bindings(payee.address).call(block_identifier=block)
            out[provider] = (paid, bytes(bound[0]))
        return out, int(self.client.w3.eth.gas_price)

    async def post_epoch(self) -> int | None:
        """Once per vault epoch, commit on chain to the journal's balances (a Merkle root,
        chain_book.ledger_root) with what was collected and paid so far. Returns the epoch
        posted, or None when this one already was."""
        async with self._lock:
            block = self.cursor.block_number
            if block < self.client.deployment.start_block:
                return None
            snapshot = dict(self.keeper.book.ledger.balances())
            links = sorted(self.links)
            payees = sorted({p.address for p in self.payees.values()})

        def post() -> int | None:
            epoch = self.client.current_epoch()
            if epoch <= self.posted_epoch:
                return None
            vault = self.client.vault.functions
            if vault.epoch_root(self.gateway, epoch).call() != bytes(32):
                self.posted_epoch = epoch  # posted before a restart
                return None
            spent = sum(
                int(vault.collected(a, self.gateway).call(block_identifier=block)) for a in links
            )
            paid = sum(
                int(vault.paid(self.gateway, a).call(block_identifier=block)) for a in payees
            )
            root = chain_book.ledger_root(snapshot)
            self.client.post_epoch(self.sender, epoch, root, spent, paid)
            self.posted_epoch = epoch
            log.info("chain: posted epoch %d root %s", epoch, root.hex())
            return epoch

        return await asyncio.to_thread(post)

    # ------------------------------------------------------------ slashing

    async def propose_slash(
        self,
        provider: str,
        reason: str,
        evidence: str,
        harmed: list[tuple[str, int]],
        reference: str,
    ) -> SlashOutcome:
        """Queue a slash of ``provider``'s on-chain stake (sent by the loop within a poll,
        off the caller's path) and return what it is expected to take and refund: the
        StakeManager takes its share of what is slashable when the proposal executes.
        Harmed consumers without a linked address cannot be refunded on chain; their part
        goes to the insurance pool. LedgerError when the provider has no bound account."""
        payee = self.payees.get(provider)
        if payee is None:
            raise LedgerError(f"{provider[:12]} has no account bound on chain: no stake to slash")
        kind = chain_kind(reason)
        refunds: list[tuple[str, str, int]] = []
        accounts: list[tuple[str, int]] = []
        for account, amount in harmed:
            addresses = self.addresses_of(account)
            if not addresses or amount <= 0:
                log.warning("chain: %s has no linked address to refund %d to", account, amount)
                continue
            refunds.append((addresses[0], self.gateway, amount))
            accounts.append((account, amount))
        if len(refunds) > MAX_REFUNDS:
            refunds, accounts = refunds[:MAX_REFUNDS], accounts[:MAX_REFUNDS]
        from eth_utils.crypto import keccak

        claim = SlashClaim(
            reference,
            provider,
            payee.address,
            kind,
            keccak(f"{reference}\n{evidence}".encode()),
            tuple(refunds),
        )
        if await self.store.save_claim(claim):  # stored first: a crash loses no slash
            self.claims.append(claim)
        bonded = self.stakes.get(payee.address, 0)
        bps = self.keeper.book.policy.slashing.rule(reason).stake_bps
        taken = max(1, bonded * bps // 10_000) if bonded > 0 else 0
        left = taken
        to_consumers = []
        for account, amount in accounts:
            pay = min(amount, left)
            if pay > 0:
                to_consumers.append((account, pay))
                left -= pay
        return SlashOutcome(taken, tuple(to_consumers), left)

    async def send_claims(self) -> list[int]:
        """Propose every queued slash; a node that is down keeps the rest queued. Returns
        the proposal ids made now."""
        made = []
        while self.claims:
            claim = self.claims[0]
            try:
                proposal_id = await asyncio.to_thread(
                    self.client.propose_slash,
                    self.sender,
                    claim.offender,
                    claim.kind,
                    claim.evidence,
                    list(claim.refunds),
                )
            except TransactionReverted as exc:
                self.claims.pop(0)
                if "evidence already used" in str(exc.reason):  # proposed before a restart
                    await self.store.claim_done(claim.reference, "proposed")
                    continue
                await self.store.claim_done(claim.reference, "refused", detail=str(exc.reason))
                self.slash_errors.append(
                    f"slashing {claim.provider_id[:12]} ({claim.reference}) was refused: "
                    f"{exc.reason}. Is {self.gateway} on the StakeManager's committee, with "
                    "the stake it asks of members?"
                )
                log.error("chain: %s", self.slash_errors[-1])
                continue
            self.claims.pop(0)
            await self.store.claim_done(claim.reference, "proposed", proposal_id)
            self.proposals[claim.reference] = proposal_id
            made.append(proposal_id)
            log.warning(
                "chain: proposed slash %d of %s (%s) with %d refunds",
                proposal_id,
                claim.offender,
                claim.reference,
                len(claim.refunds),
            )
        return made

    async def execute_slashes(self) -> list[int]:
        """Execute every proposal that has its approvals and whose challenge window has
        passed (anyone may; the gateway does, so its consumers' refunds arrive). Returns
        the ids executed now."""

        def due() -> tuple[list[SlashProposal], int]:
            count = self.client.proposal_count()
            if count < self.slash_scan_from:
                return [], self.slash_scan_from
            version = self.client.committee_version()
            threshold = self.client.slash_threshold()
            window = self.client.challenge_period()
            now = self.client.block_timestamp("latest")
            ready, scan_from, settled_prefix = [], self.slash_scan_from, True
            for proposal_id in range(self.slash_scan_from, count + 1):
                proposal = self.client.proposal(proposal_id)
                dead = proposal.executed or proposal.vetoed or proposal.committee_version != version
                if dead and settled_prefix:
                    scan_from = proposal_id + 1
                    continue
                settled_prefix = False
                if dead:
                    continue
                if proposal.approvals >= threshold and now >= proposal.proposed_at + window:
                    ready.append(proposal)
            return ready, scan_from

        ready, self.slash_scan_from = await asyncio.to_thread(due)
        executed = []
        for proposal in ready:
            try:
                await asyncio.to_thread(self.client.execute_slash, self.sender, proposal.id)
            except TransactionReverted as exc:
                log.warning("chain: slash %d not executed: %s", proposal.id, exc.reason)
                continue
            executed.append(proposal.id)
            log.warning("chain: executed slash %d of %s", proposal.id, proposal.offender)
        return executed

    def _push(self, owed: list[tuple[str, int, int]]) -> None:
        """One ``settle`` per vault epoch, of the largest payments the gateway's vault
        balance covers now; the rest is cashed from the cheques. The vault skips an entry
        its balance cannot cover but still spends the epoch's one settle, so an entry
        earned after the last collect would waste the epoch: leave it for the next."""
        epoch = self.client.current_epoch()
        if epoch <= self.client.last_settled_epoch(self.gateway):
            return
        balance = self.client.gateway_balance(self.gateway)
        payments = []
        for address, cumulative, amount in owed:
            if amount <= balance:
                balance -= amount
                payments.append((address, cumulative))
        if payments:
            self.client.settle(self.sender, epoch, payments)

    def cheque_for(self, provider_id: str) -> SignedCheque | None:
        return self.cheques.get(provider_id)

    def _read_vault(self, addresses: list[str], block: int) -> dict[str, tuple[int, int]]:
        vault = self.client.vault.functions
        out = {}
        for address in addresses:
            deposit = vault.deposits(address, self.gateway).call(block_identifier=block)
            collected = vault.collected(address, self.gateway).call(block_identifier=block)
            out[address] = (int(deposit), int(collected))
        return out

    # ------------------------------------------------------------ reconciliation

    async def status(self) -> dict[str, Any]:
        """What the journal and the vault each say, at the booked block."""
        block = self.cursor.block_number
        view: dict[str, Any] = {
            "object": "chain",
            "chain_id": self.chain_id,
            "gateway": self.gateway,
            "contracts": dict(self.client.deployment.contracts),
            "booked_block": block,
            "booked_block_hash": self.cursor.block_hash,
            "backing": chain_book.backing(self.keeper.book.ledger),
            "linked_addresses": len(self.links),
            "unlinked_deposits": sum(self.unlinked.values()),
            "payees": len(self.payees),
            "cheques_outstanding": sum(
                self.keeper.book.ledger.balance(cheques_of(p)) for p in self.payees
            ),
            "last_error": self.last_error,
            "halted": self.halted,
            "slashing": {
                "queued": len(self.claims),
                "proposed": len(self.proposals),
                "refused": self.slash_errors[-10:],
            },
        }
        if block < self.client.deployment.start_block:
            view["problems"] = []
            return view
        try:
            vault = await asyncio.to_thread(self._read_vault, sorted(self.links), block)
            balance = await asyncio.to_thread(
                lambda: int(
                    self.client.vault.functions.gateway_balance(self.gateway).call(
                        block_identifier=block
                    )
                )
            )
        except ChainError as exc:
            view["problems"] = [f"could not read the vault: {exc}"]
            return view
        seen = chain_book.VaultView(
            linked_deposits=sum(d for d, _ in vault.values()),
            unlinked_deposits=sum(self.unlinked.values()),
            gateway_balance=balance,
        )
        view["vault"] = {
            "linked_deposits": seen.linked_deposits,
            "gateway_balance": seen.gateway_balance,
            "collected": sum(c for _, c in vault.values()),
        }
        view["problems"] = [
            *chain_book.backing_problems(self.keeper.book.ledger, seen),
            *self.problems[-10:],
        ]
        return view


async def open_chain_watcher(
    settings: GatewaySettings, keeper: Bookkeeper, store: ChainStore
) -> ChainWatcher:
    """The watcher for ``settings.chain_url``: ConfigError (saying what to fix) when the
    deployment or key file is missing or the node is another chain."""
    if settings.chain_deployment is None:
        raise ConfigError("--chain-url needs --deployment: the file `tessera chain up` wrote")
    key_path = settings.chain_key_file or settings.data_dir / "gateway-eth.key"
    if not key_path.exists():
        raise ConfigError(
            f"no Ethereum key at {key_path}: create one with `tessera wallet create "
            f"--key-file {key_path}` (and fund it with gas) or pass --chain-key-file"
        )
    deployment = Deployment.load(settings.chain_deployment)
    key = load_key_file(key_path)

    def connect() -> tuple[ChainClient, TxSender]:
        client = ChainClient(settings.chain_url or "", deployment)
        return client, TxSender(client.w3, key, state_path=state_path_for(key_path))

    client, sender = await asyncio.to_thread(connect)
    watcher = ChainWatcher(
        client,
        keeper,
        store,
        key,
        sender,
        poll_s=settings.chain_poll_s,
        collect_s=settings.chain_collect_s,
        confirmations=settings.chain_confirmations,
        min_payout=settings.chain_min_payout_units,
        wei_per_token=settings.chain_wei_per_token,
        max_gas_share_bps=settings.chain_max_gas_share_bps,
    )
    await watcher.start()
    keeper.book.chain_stake = watcher  # the router counts the stake bonded on chain
    keeper.chain_slasher = watcher  # and slashes go to the StakeManager
    log.info(
        "chain %d: vault %s, gateway %s, booked through block %d",
        deployment.chain_id,
        deployment.contracts["vault"],
        watcher.gateway,
        watcher.cursor.block_number,
    )
    return watcher
