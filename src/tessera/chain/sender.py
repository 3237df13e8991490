"""Send transactions from one key so that none is lost or sent twice across restarts.

:class:`TxSender` owns the key's nonces. Every signed transaction is written to a small
SQLite file (beside the key) *before* it is broadcast, so after a crash or restart:

* a transaction that was sent but never mined (dropped from the pool, or the node
  restarted) is broadcast again, with the same nonce;
* the next nonce is ``max(chain pending nonce, highest nonce we signed + 1)``, never a
  reused one.

A transaction not mined within ``replace_after_s`` is replaced by the same transaction
with the same nonce and fees raised by ``fee_bump`` (at least 12.5 %, above geth's 10 %
rule); :meth:`TxSender.wait` returns the receipt of whichever version was mined.
"nonce too low" for a new transaction re-reads the nonce and signs again; "already known"
counts as sent. A state file written on another chain (chain id or genesis differ: e.g. a
restarted anvil) is cleared.

Synchronous web3: callers on an event loop run it in a thread. One lock covers nonce
allocation, signing and the state file, so two threads never share a nonce. One process
per key: two processes with the same key would still race each other.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address
from web3 import Web3
from web3.contract.contract import ContractConstructor, ContractFunction
from web3.exceptions import (
    ContractLogicError,
    TransactionNotFound,
    Web3Exception,
    Web3RPCError,
)
from web3.types import TxReceipt

from tessera.chain.errors import (
    ChainError,
    ChainUnavailable,
    TransactionReverted,
    TransactionTimeout,
)
from tessera.chain.keys import EthKey

log = logging.getLogger(__name__)

MIN_FEE_BUMP = 1.125
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS txs (
    tx_hash TEXT PRIMARY KEY,
    nonce INTEGER NOT NULL,
    tx TEXT NOT NULL,          -- the unsigned fields, JSON, to re-sign with new fees
    raw BLOB NOT NULL,         -- the signed bytes, to re-broadcast as they are
    sent_at REAL NOT NULL,
    state TEXT NOT NULL        -- pending | mined | replaced | dropped
);
CREATE INDEX IF NOT EXISTS txs_nonce ON txs (nonce);
"""

Call = ContractFunction | ContractConstructor | dict[str, Any]


@dataclass(frozen=True, slots=True)
class SentTx:
    tx_hash: str
    nonce: int
    max_fee_wei: int
    priority_fee_wei: int
    sent_at: float
    state: str


def state_path_for(key_path: Path) -> Path:
    """The sender's state file for the key at ``key_path``: ``<key>.txs.sqlite``."""
    key_path = Path(key_path).expanduser()
    return key_path.with_name(key_path.name + ".txs.sqlite")


class TxSender:
    """Signs EIP-1559 transactions for one key and sees them mined (see module doc)."""

    def __init__(
        self,
        w3: Web3,
        key: EthKey | LocalAccount,
        *,
        state_path: Path | None = None,
        replace_after_s: float = 60.0,
        fee_bump: float = 1.25,
        gas_margin: float = 1.2,
        max_fee_wei: int | None = None,
        poll_interval_s: float = 0.05,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if fee_bump < MIN_FEE_BUMP:
            raise ValueError(f"fee_bump must be at least {MIN_FEE_BUMP} (nodes refuse less)")
        self.w3 = w3
        self.account: LocalAccount = (
            key if isinstance(key, LocalAccount) else Account.from_key(key.private_key)
        )
        self.address = to_checksum_address(self.account.address)
        self.replace_after_s = replace_after_s
        self.fee_bump = fee_bump
        self.gas_margin = gas_margin
        self.max_fee_wei = max_fee_wei
        self.poll_interval_s = poll_interval_s
        self._clock = clock
        self._lock = threading.RLock()
        if state_path is not None:
            Path(state_path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            str(state_path) if state_path else ":memory:",
            check_same_thread=False,
            isolation_level=None,
        )
        self._db.executescript(_SCHEMA)
        self.chain_id = _chain(lambda: w3.eth.chain_id, "read the chain id")
        self._next_nonce = 0
        self._recover()

    # ------------------------------------------------------------------ public

    def send(self, call: Call, *, value_wei: int = 0, gas: int | None = None) -> str:
        """Sign and broadcast ``call`` (a contract function, a constructor, or a dict with
        ``to``/``data``/``value``); returns the tx hash (0x hex). A call the node says
        would revert raises TransactionReverted with the contract's reason, and uses no
        nonce."""
        with self._lock:
            tx = self._unsigned(call, value_wei, gas)
            for _attempt in range(3):
                tx["nonce"] = self._next_nonce
                tx.update(self._fees())
                try:
                    tx_hash = self._sign_record_broadcast(tx)
                except _NonceTooLow:
                    self._next_nonce = max(self._next_nonce + 1, self._chain_nonce("pending"))
                    continue
                except ChainError:
                    if self._has_pending(tx["nonce"]):
                        self._next_nonce += 1  # it may have left: never sign this nonce again
                    raise
                self._next_nonce += 1
                return tx_hash
            raise ChainError(
                f"the node kept answering 'nonce too low' for {self.address}: is another "
                "process sending from this key? Stop it and try again"
            )

    def wait(self, tx_hash: str, timeout_s: float = 120.0) -> TxReceipt:
        """The receipt of ``tx_hash`` or of the replacement that took its nonce.

        While waiting, a version pending for more than ``replace_after_s`` is replaced
        with higher fees. Raises TransactionReverted (status 0), ChainError (the nonce
        went to a transaction we did not send) or TransactionTimeout (still pending; it
        stays in the state file and is re-sent on the next start)."""
        nonce = self._nonce_of(tx_hash)
        deadline = self._clock() + timeout_s
        interval = self.poll_interval_s
        while True:
            receipt = self._settle_nonce(nonce)
            if receipt is not None:
                if receipt["status"] != 1:
                    raise TransactionReverted(
                        f"transaction {receipt['transactionHash'].to_0x_hex()} reverted in block "
                        f"{receipt['blockNumber']}; the state changed since it was sent: "
                        "read the balances and try again"
                    )
                return receipt
            if self._clock() >= deadline:
                raise TransactionTimeout(
                    f"transaction {tx_hash} (nonce {nonce}) not mined after {timeout_s:.0f} s; "
                    "it is kept and re-sent with higher fees on the next start"
                )
            if self._clock() - self._last_sent(nonce) >= self.replace_after_s:
                self.replace(nonce)
            time.sleep(interval)
            interval = min(interval * 1.5, 1.0)

    def transact(
        self, call: Call, *, value_wei: int = 0, gas: int | None = None, timeout_s: float = 120.0
    ) -> TxReceipt:
        """``send`` then ``wait``."""
        return self.wait(self.send(call, value_wei=value_wei, gas=gas), timeout_s)

    def replace(self, nonce: int) -> str | None:
        """Re-sign the newest version of pending ``nonce`` with fees raised by
        ``fee_bump`` (and at least today's), broadcast it; the new hash, or None when the
        nonce is already mined or the fee cap stops the bump."""
        with self._lock:
            row = self._db.execute(
                "SELECT tx FROM txs WHERE nonce = ? AND state = 'pending' "
                "ORDER BY sent_at DESC LIMIT 1",
                (nonce,),
            ).fetchone()
            if row is None:
                return None
            tx = json.loads(row[0])
            now_fees = self._fees()
            priority = max(
                math.ceil(tx["maxPriorityFeePerGas"] * self.fee_bump),
                now_fees["maxPriorityFeePerGas"],
            )
            max_fee = max(math.ceil(tx["maxFeePerGas"] * self.fee_bump), now_fees["maxFeePerGas"])
            max_fee = max(max_fee, priority)
            if self.max_fee_wei is not None and max_fee > self.max_fee_wei:
                log.warning("not bumping nonce %d: %d wei is above the fee cap", nonce, max_fee)
                return None
            tx.update(maxFeePerGas=max_fee, maxPriorityFeePerGas=priority)
            try:
                tx_hash = self._sign_record_broadcast(tx)
            except _NonceTooLow:
                return None  # a version was mined meanwhile; wait() will find it
            log.info("replaced nonce %d with %s (max fee %d wei)", nonce, tx_hash, max_fee)
            return tx_hash

    def pending(self) -> list[SentTx]:
        """Every version of every transaction not yet known to be mined."""
        with self._lock:
            rows = self._db.execute(
                "SELECT tx_hash, nonce, tx, sent_at, state FROM txs WHERE state = 'pending' "
                "ORDER BY nonce, sent_at"
            ).fetchall()
        return [_sent(row) for row in rows]

    @property
    def next_nonce(self) -> int:
        return self._next_nonce

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ internals

    def _recover(self) -> None:
        """Check the state file belongs to this chain, settle what was mined, re-broadcast
        what was not, and pick the next nonce."""
        genesis = _chain(lambda: self.w3.eth.get_block(0)["hash"].to_0x_hex(), "read block 0")
        identity = {"chain_id": str(self.chain_id), "genesis": genesis, "address": self.address}
        stored = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if stored and stored != identity:
            log.warning(
                "transaction state of %s belongs to another chain (%s); starting afresh",
                self.address,
                stored.get("genesis"),
            )
            self._db.execute("DELETE FROM txs")
        self._db.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", identity.items()
        )
        mined = self._chain_nonce("latest")
        nonces = [
            n for (n,) in self._db.execute("SELECT DISTINCT nonce FROM txs WHERE state = 'pending'")
        ]
        for nonce in sorted(nonces):
            if nonce < mined:
                self._settle_nonce(nonce)
                continue
            raw, tx_hash = self._db.execute(
                "SELECT raw, tx_hash FROM txs WHERE nonce = ? AND state = 'pending' "
                "ORDER BY sent_at DESC LIMIT 1",
                (nonce,),
            ).fetchone()
            log.info("re-broadcasting %s (nonce %d) left pending by an earlier run", tx_hash, nonce)
            with contextlib.suppress(_NonceTooLow):
                self._broadcast(bytes(raw))
        top = self._db.execute("SELECT MAX(nonce) FROM txs").fetchone()[0]
        self._next_nonce = max(self._chain_nonce("pending"), -1 if top is None else top + 1)

    def _unsigned(self, call: Call, value_wei: int, gas: int | None) -> dict[str, Any]:
        if isinstance(call, dict):
            tx = {k: v for k, v in call.items() if k in ("to", "data", "value")}
        else:
            # Every field given, so web3 asks the node nothing here; only the data is kept.
            built = call.build_transaction(
                {
                    "from": self.address,
                    "gas": 1,
                    "value": value_wei,
                    "nonce": 0,
                    "chainId": self.chain_id,
                    "maxFeePerGas": 1,
                    "maxPriorityFeePerGas": 1,
                }
            )
            tx = {k: built[k] for k in ("to", "data", "value") if k in built}  # type: ignore[literal-required]
        tx.setdefault("value", value_wei)
        tx["data"] = _hex(tx.get("data", "0x"))
        if tx.get("to"):
            tx["to"] = to_checksum_address(tx["to"])
        else:
            tx.pop("to", None)
        if gas is None:
            try:
                estimate = self.w3.eth.estimate_gas({"from": self.address, **tx})
            except ContractLogicError as exc:
                reason = _reason(exc)
                raise TransactionReverted(f"the contract refused: {reason}", reason=reason) from exc
            except Web3Exception as exc:
                raise _translate(exc, "estimate gas") from exc
            except OSError as exc:
                raise ChainUnavailable(f"cannot reach the chain to estimate gas: {exc}") from exc
            gas = math.ceil(estimate * self.gas_margin)
        tx.update(gas=gas, chainId=self.chain_id, type=2)
        return tx

    def _fees(self) -> dict[str, int]:
        block = _chain(lambda: self.w3.eth.get_block("latest"), "read the latest block")
        base = int(block.get("baseFeePerGas", 0))
        priority = int(_chain(lambda: self.w3.eth.max_priority_fee, "read the priority fee"))
        max_fee = 2 * base + priority
        if self.max_fee_wei is not None:
            max_fee = min(max_fee, self.max_fee_wei)
            priority = min(priority, max_fee)
        return {"maxFeePerGas": max_fee, "maxPriorityFeePerGas": priority}

    def _sign_record_broadcast(self, tx: dict[str, Any]) -> str:
        signed = self.account.sign_transaction(tx)
        tx_hash = signed.hash.to_0x_hex()
        # Written before it leaves, so a crash mid-broadcast still knows the nonce is used.
        self._db.execute(
            "INSERT OR REPLACE INTO txs (tx_hash, nonce, tx, raw, sent_at, state) "
            "VALUES (?, ?, ?, ?, ?, 'pending')",
            (tx_hash, tx["nonce"], json.dumps(tx), bytes(signed.raw_transaction), self._clock()),
        )
        try:
            self._broadcast(bytes(signed.raw_transaction))
        except _NonceTooLow:
            self._db.execute("DELETE FROM txs WHERE tx_hash = ?", (tx_hash,))
            raise
        except ChainError:
            # Unknown whether it left: keep the row, a later wait() or restart re-sends it.
            if self._was_refused(tx_hash):
                self._db.execute("DELETE FROM txs WHERE tx_hash = ?", (tx_hash,))
            raise
        return tx_hash

    def _was_refused(self, tx_hash: str) -> bool:
        try:
            self.w3.eth.get_transaction(tx_hash)  # type: ignore[arg-type]
        except TransactionNotFound:
            return True
        except (Web3Exception, OSError):
            return False
        return False

    def _broadcast(self, raw: bytes) -> None:
        try:
            self.w3.eth.send_raw_transaction(raw)
        except Web3RPCError as exc:
            text = str(exc).lower()
            if "already known" in text or "already imported" in text:
                return
            if "nonce too low" in text:
                raise _NonceTooLow() from exc
            if "underpriced" in text:
                raise ChainError(
                    f"the node refused the fees as too low ({exc}); raise --max-fee or wait"
                ) from exc
            if "insufficient funds" in text:
                raise ChainError(
                    f"{self.address} has too little ETH for gas: fund it "
                    "(`tessera chain fund ADDRESS --eth 1` on a dev chain)"
                ) from exc
            raise _translate(exc, "send the transaction") from exc
        except Web3Exception as exc:
            raise _translate(exc, "send the transaction") from exc
        except OSError as exc:
            raise ChainUnavailable(f"cannot reach the chain to send a transaction: {exc}") from exc

    def _settle_nonce(self, nonce: int) -> TxReceipt | None:
        """The receipt of whichever version of ``nonce`` was mined (marking the others
        replaced), or None while none is; ChainError if the nonce went elsewhere."""
        with self._lock:
            rows = self._db.execute(
                "SELECT tx_hash, state FROM txs WHERE nonce = ? ORDER BY sent_at DESC", (nonce,)
            ).fetchall()
        # Read the account's nonce before the receipts: read after them, it can count our
        # own transaction mined in between and blame another sender for it.
        used = self._chain_nonce("latest") > nonce
        for tx_hash, _state in rows:
            try:
                receipt = self.w3.eth.get_transaction_receipt(tx_hash)
            except TransactionNotFound:
                continue
            except (Web3Exception, OSError) as exc:
                raise ChainUnavailable(f"cannot read receipt {tx_hash}: {exc}") from exc
            with self._lock:
                self._db.execute(
                    "UPDATE txs SET state = CASE WHEN tx_hash = ? THEN 'mined' ELSE 'replaced' END "
                    "WHERE nonce = ?",
                    (tx_hash, nonce),
                )
            return receipt
        if used:
            with self._lock:
                self._db.execute(
                    "UPDATE txs SET state = 'dropped' WHERE nonce = ? AND state = 'pending'",
                    (nonce,),
                )
            raise ChainError(
                f"nonce {nonce} of {self.address} was used by a transaction this sender did not "
                "send: is another process using this key?"
            )
        return None

    def _has_pending(self, nonce: int) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM txs WHERE nonce = ? AND state = 'pending'", (nonce,)
            ).fetchone()
        return row is not None

    def _nonce_of(self, tx_hash: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT nonce FROM txs WHERE tx_hash = ?", (tx_hash,)).fetchone()
        if row is None:
            raise ChainError(f"{tx_hash} was not sent by this sender")
        return int(row[0])

    def _last_sent(self, nonce: int) -> float:
        with self._lock:
            row = self._db.execute(
                "SELECT MAX(sent_at) FROM txs WHERE nonce = ?", (nonce,)
            ).fetchone()
        return float(row[0] or 0.0)

    def _chain_nonce(self, tag: str) -> int:
        return int(
            _chain(
                lambda: self.w3.eth.get_transaction_count(self.address, tag),  # type: ignore[arg-type]
                "read the account nonce",
            )
        )


class _NonceTooLow(Exception):
    """The node already has a transaction with this nonce mined."""


def _sent(row: tuple[Any, ...]) -> SentTx:
    tx = json.loads(row[2])
    return SentTx(row[0], row[1], tx["maxFeePerGas"], tx["maxPriorityFeePerGas"], row[3], row[4])


def _hex(data: Any) -> str:
    if isinstance(data, bytes | bytearray):
        return "0x" + bytes(data).hex()
    return str(data)


def _reason(exc: ContractLogicError) -> str:
    text = str(exc.message if getattr(exc, "message", None) else exc)
    return (
        text.removeprefix("execution reverted: ").removeprefix("execution reverted") or "no reason"
    )


def _translate(exc: Exception, what: str) -> ChainError:
    return ChainError(f"the node refused to {what}: {exc}")


def _chain(read: Callable[[], Any], what: str) -> Any:
    """Run one read against the node, translating connection failures into ours."""
    try:
        return read()
    except (Web3Exception, OSError) as exc:
        raise ChainUnavailable(
            f"cannot {what}: {exc}; is the chain URL right and the node up?"
        ) from exc
