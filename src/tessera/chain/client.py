"""Typed access to one deployment: reads, decoded events, and the writes a gateway makes.

``ChainClient(url, deployment)`` wraps a synchronous web3 over HTTP (callers on an event
loop run it in a thread). Every amount is an int of base units (9 decimals, as the
ledger); every address returned is checksummed. Writes take the :class:`TxSender` of the
account that sends them, so one client serves many accounts.

Errors: an unreachable node is ChainUnavailable; a call the contract refuses is
TransactionReverted with its reason (``exc.reason``, e.g. ``vault: bad spend signer``), and
such a call uses no nonce; the deployment being on another chain is ConfigError.

Batches: the vault has no batch ``collect``, so :meth:`ChainClient.collect_many` sends one
transaction per spend, at most ``max_in_flight`` unmined at once. ``settle`` takes at most
``MAX_SETTLE`` providers and cannot be split: the vault refuses a second ``settle`` for an
epoch, so a gateway with more payees pays the rest by cheque (or the next epoch).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from eth_typing import ChecksumAddress, HexAddress, HexStr
from eth_utils.abi import event_abi_to_log_topic
from eth_utils.address import to_checksum_address
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError, Web3Exception
from web3.types import FilterParams, TxReceipt

from tessera.chain import typed_data
from tessera.chain.artifacts import Artifact, load_artifacts
from tessera.chain.deploy import connect
from tessera.chain.deployment import ARTIFACT_OF, CONTRACT_KEYS, Deployment
from tessera.chain.errors import ChainError, ChainUnavailable, TransactionReverted
from tessera.chain.sender import TxSender
from tessera.chain.typed_data import Binding, SignedCheque
from tessera.errors import ConfigError, InvalidRequest

T = TypeVar("T")
MAX_SETTLE = 256  # PaymentVault.MAX_SETTLE
MAX_IN_FLIGHT = 64  # collect transactions sent before waiting for their receipts
MAX_REFUNDS = 32  # StakeManager.MAX_REFUNDS: consumers one slashing proposal refunds
BLOCK_TAGS = ("latest", "safe", "finalized", "earliest", "pending")


@dataclass(frozen=True, slots=True)
class ChainEvent:
    """One decoded log. ``contract`` is a deployment key (token, registry, stake, vault);
    ``args`` holds the event's fields by their Vyper names (addresses checksummed,
    bytes32 as bytes). Events sort by ``(block_number, log_index)``; an indexer keys them
    by ``(block_hash, tx_hash, log_index)`` to stay idempotent across reorgs."""

    contract: str
    name: str
    args: dict[str, Any]
    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int

    @property
    def key(self) -> tuple[str, str, int]:
        """``(block_hash, tx_hash, log_index)``: unique per log, the same on every read."""
        return (self.block_hash, self.tx_hash, self.log_index)


@dataclass(frozen=True, slots=True)
class SlashProposal:
    """A StakeManager proposal as the contract stores it."""

    id: int
    offender: str
    kind: int
    evidence: bytes
    proposed_at: int
    approvals: int
    committee_version: int
    executed: bool
    vetoed: bool


@dataclass(frozen=True, slots=True)
class Spend:
    """A signed ``Spend(consumer, gateway, cumulative)``, ready for ``collect``."""

    consumer: str
    gateway: str
    cumulative: int
    signature: bytes


class ChainClient:
    """Reads and writes against one :class:`Deployment`."""

    def __init__(
        self,
        url: str | Web3,
        deployment: Deployment,
        *,
        artifacts: dict[str, Artifact] | None = None,
    ) -> None:
        self.w3 = connect(url) if isinstance(url, str) else url
        self.deployment = deployment
        chain_id = _read(lambda: self.w3.eth.chain_id, "read the chain id")
        if chain_id != deployment.chain_id:
            raise ConfigError(
                f"the node is chain {chain_id} but the deployment is for chain "
                f"{deployment.chain_id}: pass the matching --chain-url or --deployment"
            )
        self.chain_id: int = chain_id
        artifacts = artifacts or load_artifacts()
        self.contracts: dict[str, Contract] = {
            key: self.w3.eth.contract(
                address=to_checksum_address(deployment.contracts[key]),
                abi=artifacts[ARTIFACT_OF[key]].abi,
            )
            for key in CONTRACT_KEYS
        }
        self.token = self.contracts["token"]
        self.registry = self.contracts["registry"]
        self.stake = self.contracts["stake"]
        self.vault = self.contracts["vault"]
        self._topics = {
            (self.contracts[key].address, event_abi_to_log_topic(abi)): (key, abi["name"])
            for key in CONTRACT_KEYS
            for abi in self.contracts[key].abi
            if abi["type"] == "event"
        }

    # ------------------------------------------------------------------ reads

    def eth_balance(self, address: str) -> int:
        return int(
            _read(
                lambda: self.w3.eth.get_balance(
                    ChecksumAddress(HexAddress(HexStr(_addr(address))))
                ),
                "read",
            )
        )

    def token_balance(self, address: str) -> int:
        return self._uint(self.token.functions.balanceOf(_addr(address)))

    def total_supply(self) -> int:
        return self._uint(self.token.functions.totalSupply())

    def permit_nonce(self, owner: str) -> int:
        """The token's EIP-2612 nonce of ``owner`` (what its next permit must carry)."""
        return self._uint(self.token.functions.nonces(_addr(owner)))

    def is_minter(self, address: str) -> bool:
        return bool(self._call(self.token.functions.is_minter(_addr(address))))

    def allowance(self, owner: str, spender: str) -> int:
        return self._uint(self.token.functions.allowance(_addr(owner), _addr(spender)))

    def deposits(self, consumer: str, gateway: str) -> int:
        return self._uint(self.vault.functions.deposits(_addr(consumer), _addr(gateway)))

    def collected(self, consumer: str, gateway: str) -> int:
        return self._uint(self.vault.functions.collected(_addr(consumer), _addr(gateway)))

    def paid(self, gateway: str, provider: str) -> int:
        return self._uint(self.vault.functions.paid(_addr(gateway), _addr(provider)))

    def gateway_balance(self, gateway: str) -> int:
        return self._uint(self.vault.functions.gateway_balance(_addr(gateway)))

    def insurance_pool(self) -> int:
        return self._uint(self.vault.functions.insurance_pool())

    def unlock_at(self, consumer: str, gateway: str) -> int:
        """Unix second the consumer's requested withdrawal unlocks (0: none requested)."""
        return self._uint(self.vault.functions.unlock_at(_addr(consumer), _addr(gateway)))

    def custodial_cap(self, consumer: str, gateway: str) -> int:
        return self._uint(self.vault.functions.custodial_cap(_addr(consumer), _addr(gateway)))

    def custodial_left(self, consumer: str, gateway: str) -> int:
        return self._uint(self.vault.functions.custodial_left(_addr(consumer), _addr(gateway)))

    def last_settled_epoch(self, gateway: str) -> int:
        return self._uint(self.vault.functions.last_settled_epoch(_addr(gateway)))

    def current_epoch(self) -> int:
        return self._uint(self.vault.functions.current_epoch())

    def bonded(self, account: str) -> int:
        return self._uint(self.stake.functions.bonded(_addr(account)))

    def unbonding(self, account: str) -> int:
        return self._uint(self.stake.functions.unbonding(_addr(account)))

    def stake_unlock_at(self, account: str) -> int:
        return self._uint(self.stake.functions.unlock_at(_addr(account)))

    def slashable(self, account: str) -> int:
        return self._uint(self.stake.functions.slashable(_addr(account)))

    def bindings(self, account: str) -> Binding | None:
        """The account's current binding, or None if it never bound a key."""
        key, valid_until, nonce, signature = self._call(
            self.registry.functions.bindings(_addr(account))
        )
        if nonce == 0:
            return None
        return Binding(_addr(account), bytes(key), int(valid_until), int(nonce), bytes(signature))

    def is_signer(self, gateway: str, signer: str) -> bool:
        return bool(self._call(self.registry.functions.is_signer(_addr(gateway), _addr(signer))))

    def current_signer(self, gateway: str) -> str:
        """The key that signs ``gateway``'s cheques now (the gateway itself if none named)."""
        return _addr(self._call(self.registry.functions.current_signer(_addr(gateway))))

    def gateway_of(self, signer: str) -> str | None:
        """The gateway whose current signer ``signer`` is, or None."""
        gateway = _addr(self._call(self.registry.functions.gateway_of(_addr(signer))))
        return None if int(gateway, 16) == 0 else gateway

    def epoch_root(self, gateway: str, epoch: int) -> bytes:
        """The ledger root ``gateway`` posted for ``epoch`` (32 zero bytes: none yet)."""
        return bytes(self._call(self.vault.functions.epoch_root(_addr(gateway), epoch)))

    def block(self, tag: str | int = "latest") -> tuple[int, str]:
        """``(number, hash)`` of a block: a number, or latest / safe / finalized."""
        if isinstance(tag, str) and tag not in BLOCK_TAGS:
            raise InvalidRequest(f"unknown block tag {tag!r}; use one of {', '.join(BLOCK_TAGS)}")
        block = _read(lambda: self.w3.eth.get_block(tag), f"read block {tag}")  # type: ignore[arg-type]
        return int(block["number"]), block["hash"].to_0x_hex()

    def block_timestamp(self, tag: str | int = "latest") -> int:
        block = _read(lambda: self.w3.eth.get_block(tag), f"read block {tag}")  # type: ignore[arg-type]
        return int(block["timestamp"])

    def events(
        self, from_block: int, to_block: int | str = "latest", *, chunk_blocks: int = 5000
    ) -> list[ChainEvent]:
        """Every event of the four contracts in ``[from_block, to_block]``, decoded and
        sorted by (block, log index). Reads in chunks, since nodes cap a log query."""
        last = to_block if isinstance(to_block, int) else self.block(to_block)[0]
        addresses = [c.address for c in self.contracts.values()]
        out: list[ChainEvent] = []
        start = from_block
        while start <= last:
            end = min(last, start + chunk_blocks - 1)
            query: FilterParams = {"fromBlock": start, "toBlock": end, "address": addresses}
            logs = _read(functools.partial(self.w3.eth.get_logs, query), "read logs")
            out.extend(event for log in logs if (event := self._decode(log)) is not None)
            start = end + 1
        out.sort(key=lambda e: (e.block_number, e.log_index))
        return out

    def decode_receipt(self, receipt: TxReceipt) -> list[ChainEvent]:
        """The events of one receipt (our contracts' only), in log order."""
        return [e for log in receipt["logs"] if (e := self._decode(log)) is not None]

    def verify_binding(
        self, binding: Binding, ed25519_public_key: bytes, *, now_unix_s: float | None = None
    ) -> bool:
        """Whether ``binding`` was signed by ``ed25519_public_key`` for this registry."""
        return typed_data.verify_binding(
            self.chain_id,
            self.registry.address,
            binding,
            ed25519_public_key,
            now_unix_s=now_unix_s,
        )

    # ------------------------------------------------------------------ signing helpers

    def sign_spend(
        self, private_key: bytes | str, consumer: str, gateway: str, cumulative: int
    ) -> Spend:
        signature = typed_data.sign_spend(
            private_key, self.chain_id, self.vault.address, consumer, gateway, cumulative
        )
        return Spend(_addr(consumer), _addr(gateway), cumulative, signature)

    def sign_cheque(
        self, private_key: bytes | str, gateway: str, provider: str, cumulative: int
    ) -> SignedCheque:
        return typed_data.sign_cheque(
            private_key, self.chain_id, self.vault.address, gateway, provider, cumulative
        )

    # ------------------------------------------------------------------ gateway writes

    def collect(self, sender: TxSender, spend: Spend) -> TxReceipt:
        """Move what ``spend`` allows from the consumer's deposit to the gateway."""
        return sender.transact(
            self.vault.functions.collect(
                spend.consumer, spend.gateway, spend.cumulative, spend.signature
            )
        )

    def collect_many(
        self, sender: TxSender, spends: Sequence[Spend], *, max_in_flight: int = MAX_IN_FLIGHT
    ) -> list[TxReceipt]:
        """``collect`` each spend; receipts in the order of ``spends``.

        One transaction per spend (the vault has no batch entry point), sent in chunks of
        ``max_in_flight`` on consecutive nonces, each chunk awaited before the next. If a
        send fails (e.g. the vault refuses a spend), the ones already sent are awaited
        before the error is raised, so none is left unaccounted for."""
        if max_in_flight < 1:
            raise InvalidRequest("max_in_flight must be at least 1")
        receipts: list[TxReceipt] = []
        for chunk in _chunks(spends, max_in_flight):
            hashes: list[str] = []
            refused: ChainError | None = None
            for s in chunk:
                call = self.vault.functions.collect(
                    s.consumer, s.gateway, s.cumulative, s.signature
                )
                try:
                    hashes.append(sender.send(call))
                except ChainError as exc:
                    refused = exc
                    break
            receipts.extend(sender.wait(h) for h in hashes)
            if refused is not None:
                raise refused
        return receipts

    def cash(self, sender: TxSender, cheque: SignedCheque) -> TxReceipt:
        """Pay ``cheque.provider`` what the cheque adds to what it was already paid."""
        if cheque.chain_id != self.chain_id or _addr(cheque.vault) != self.vault.address:
            raise InvalidRequest(
                f"the cheque is for vault {cheque.vault} on chain {cheque.chain_id}, not this "
                f"deployment's vault {self.vault.address} on chain {self.chain_id}"
            )
        return sender.transact(
            self.vault.functions.cash(
                cheque.gateway, cheque.provider, cheque.cumulative, cheque.signature
            )
        )

    def settle(
        self, sender: TxSender, epoch: int, payments: Sequence[tuple[str, int]]
    ) -> TxReceipt:
        """Push-pay providers up to their cumulative amounts for ``epoch`` (> the last
        settled). One transaction of at most ``MAX_SETTLE`` entries: the vault refuses a
        second batch for the same epoch, so the rest must be paid by cheque."""
        if len(payments) > MAX_SETTLE:
            raise InvalidRequest(
                f"settle takes at most {MAX_SETTLE} providers per epoch (got {len(payments)}) "
                "and the vault refuses a second batch for the same epoch: push the largest "
                f"{MAX_SETTLE} and hand the rest cheques"
            )
        providers = [_addr(p) for p, _ in payments]
        cumulatives = [int(c) for _, c in payments]
        return sender.transact(self.vault.functions.settle(epoch, providers, cumulatives))

    def post_epoch(
        self, sender: TxSender, epoch: int, ledger_root: bytes, spent: int, paid: int
    ) -> TxReceipt:
        if len(ledger_root) != 32:
            raise InvalidRequest("a ledger root is 32 bytes")
        return sender.transact(self.vault.functions.post_epoch(epoch, ledger_root, spent, paid))

    # ------------------------------------------------------------------ slashing

    def propose_slash(
        self,
        sender: TxSender,
        offender: str,
        kind: int,
        evidence: bytes,
        refunds: Sequence[tuple[str, str, int]],
    ) -> int:
        """Propose (and approve, as a committee member) slashing ``offender`` for an
        offence of ``kind``, refunding ``(consumer, gateway, amount)`` in order from what
        is taken. Returns the proposal id. The contract refuses evidence already used
        against the same offender for the same kind."""
        if len(evidence) != 32:
            raise InvalidRequest("slashing evidence is a 32-byte hash")
        if len(refunds) > MAX_REFUNDS:
            raise InvalidRequest(f"a proposal refunds at most {MAX_REFUNDS} consumers")
        receipt = sender.transact(
            self.stake.functions.propose_slash(
                _addr(offender),
                kind,
                evidence,
                [_addr(c) for c, _, _ in refunds],
                [_addr(g) for _, g, _ in refunds],
                [int(a) for _, _, a in refunds],
            )
        )
        for event in self.decode_receipt(receipt):
            if event.name == "SlashProposed":
                return int(event.args["id"])
        raise ChainError("propose_slash was mined without a SlashProposed event")

    def execute_slash(self, sender: TxSender, proposal_id: int) -> TxReceipt:
        return sender.transact(self.stake.functions.execute_slash(proposal_id))

    def proposal(self, proposal_id: int) -> SlashProposal:
        raw = self._call(self.stake.functions.proposals(proposal_id))
        return SlashProposal(proposal_id, *raw)

    def proposal_count(self) -> int:
        return self._uint(self.stake.functions.proposal_count())

    def challenge_period(self) -> int:
        return self._uint(self.stake.functions.challenge_period())

    def slash_threshold(self) -> int:
        return self._uint(self.stake.functions.threshold())

    def committee_version(self) -> int:
        return self._uint(self.stake.functions.committee_version())

    def set_gateway_signer(self, sender: TxSender, signer: str) -> TxReceipt:
        return sender.transact(self.registry.functions.set_gateway_signer(_addr(signer)))

    def gateway_withdraw(self, sender: TxSender, amount: int, to: str) -> TxReceipt:
        return sender.transact(self.vault.functions.gateway_withdraw(amount, _addr(to)))

    # ------------------------------------------------------------------ internals

    def _uint(self, function: Any) -> int:
        return int(self._call(function))

    def _call(self, function: Any) -> Any:
        try:
            return function.call()
        except ContractLogicError as exc:
            reason = str(exc.message or exc).removeprefix("execution reverted: ")
            raise TransactionReverted(
                f"the contract refused a read: {reason}", reason=reason
            ) from exc
        except (Web3Exception, OSError) as exc:
            raise ChainUnavailable(f"cannot read from the chain: {exc}") from exc

    def _decode(self, log: Any) -> ChainEvent | None:
        topics = log["topics"]
        if not topics:
            return None
        found = self._topics.get((to_checksum_address(log["address"]), bytes(topics[0])))
        if found is None:
            return None
        key, name = found
        data = getattr(self.contracts[key].events, name)().process_log(log)
        return ChainEvent(
            contract=key,
            name=name,
            args=dict(data["args"]),
            block_number=int(log["blockNumber"]),
            block_hash=log["blockHash"].to_0x_hex(),
            tx_hash=log["transactionHash"].to_0x_hex(),
            log_index=int(log["logIndex"]),
        )


def checksum(address: str) -> str:
    """``address`` EIP-55 checksummed; InvalidRequest if it is not an address."""
    try:
        return to_checksum_address(address)
    except ValueError as exc:
        raise InvalidRequest(
            f"{address!r} is not an Ethereum address (0x and 40 hex digits)"
        ) from exc


_addr = checksum


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _read(read: Callable[[], T], what: str) -> T:
    try:
        return read()
    except (Web3Exception, OSError) as exc:
        raise ChainUnavailable(
            f"cannot {what}: {exc}; is the chain URL right and the node up?"
        ) from exc
