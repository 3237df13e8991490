"""The gateway's side of the vault: book the chain's events, collect what consumers spent.

Run only by the ledger's owner. Every ``poll_s`` it reads the vault's events up to the
final block (``finalized``, or ``latest - confirmations``), books those for this gateway
with ledger/chain_book.py, each keyed by its event so a re-read books nothing twice, and
saves how far it got only after the entries are stored. A restart resumes from there.

Every ``collect_s`` it collects, for each linked consumer, what they spent here and the
vault still holds as their deposit, with a custodial spend signed by the gateway's key.
The amount is read at the booked block, so it never counts a deposit the journal has not
credited: ``cumulative = collected + min(deposit, Σ deposits - what the account owns)``.

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

from tessera.chain.client import ChainClient, ChainEvent, Spend
from tessera.chain.deployment import Deployment
from tessera.chain.errors import ChainError
from tessera.chain.keys import EthKey, load_key_file
from tessera.chain.sender import TxSender, state_path_for
from tessera.config import GatewaySettings
from tessera.errors import ConfigError
from tessera.gateway.bookkeeper import Bookkeeper
from tessera.ledger import chain_book
from tessera.ledger.accounts import balance_of, hold_of, withdrawing_of
from tessera.ledger.journal import DuplicateEntry, Entry, Ledger
from tessera.store.chain import ChainStore, Cursor

log = logging.getLogger("tessera.gateway.chain")

CONSUMER_EVENTS = frozenset({"Deposited", "Refunded", "WithdrawRequested", "Withdrawn"})


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
        self.clock = clock
        self.links: dict[str, str] = {}
        self.cursor = Cursor(client.deployment.start_block - 1, "")
        self.unlinked: dict[str, int] = defaultdict(int)  # address -> deposits not credited
        # address -> the highest cumulative collect sent: the booked block may not show it
        # yet, and sending it again would only pay gas for a replay
        self.sent: dict[str, int] = {}
        self.last_error: str | None = None
        self._lock = asyncio.Lock()  # one booking pass at a time (poll, link)

    @property
    def chain_id(self) -> int:
        return self.client.deployment.chain_id

    async def start(self) -> None:
        self.links = await self.store.links()
        stored = await self.store.cursor(self.gateway)
        if stored is not None:
            self.cursor = stored

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
                if self.clock() >= next_collect:
                    await self.collect()
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
            number, block_hash = await asyncio.to_thread(self._final_block)
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

    def _final_block(self) -> tuple[int, str]:
        if self.confirmations is None:
            return self.client.block("finalized")
        latest, _ = self.client.block("latest")
        return self.client.block(max(0, latest - self.confirmations))

    def _ours(self, event: ChainEvent) -> bool:
        return (
            event.contract == "vault"
            and event.name in CONSUMER_EVENTS
            and event.args.get("gateway") == self.gateway
        )

    async def _book(self, event: ChainEvent) -> int:
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
            "last_error": self.last_error,
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
        view["problems"] = chain_book.backing_problems(self.keeper.book.ledger, seen)
        return view


async def open_chain_watcher(
    settings: GatewaySettings, keeper: Bookkeeper, store: ChainStore
) -> ChainWatcher:
    """The watcher for ``settings.chain_url``: ConfigError (saying what to fix) when the
    deployment or key file is missing or the node is another chain."""
    if settings.chain_deployment is None:
        raise ConfigError("--chain-url needs --chain-deployment: the file `tessera chain up` wrote")
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
    )
    await watcher.start()
    log.info(
        "chain %d: vault %s, gateway %s, booked through block %d",
        deployment.chain_id,
        deployment.contracts["vault"],
        watcher.gateway,
        watcher.cursor.block_number,
    )
    return watcher
