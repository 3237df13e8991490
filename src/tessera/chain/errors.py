"""The chain's part of the exception tree (:mod:`tessera.errors`).

    TesseraError
    ├── ChainError                 a chain call failed; the message says why and what next
    │   ├── ChainUnavailable       the node cannot be reached or answered garbage
    │   ├── TransactionReverted    the contract refused the call (its reason is in the message)
    │   └── TransactionTimeout     a transaction was not mined in time (it may still be)
    └── ConfigError                a key file, deployment file or tool is missing or wrong

web3, eth-account and subprocess errors are translated into these where they enter
(``raise ... from exc``), so callers and the CLI handle one tree.
"""

from __future__ import annotations

from tessera.errors import TesseraError


class ChainError(TesseraError):
    status_code = 502
    error_type = "chain_error"
    default_code = "chain_error"


class ChainUnavailable(ChainError):
    status_code = 503
    error_type = "service_unavailable"
    default_code = "chain_unavailable"


class TransactionReverted(ChainError):
    """The contract refused the transaction (or its gas estimate); ``reason`` is the
    contract's own message, e.g. ``vault: still locked``."""

    default_code = "transaction_reverted"

    def __init__(self, message: str, *, reason: str | None = None):
        super().__init__(message)
        self.reason = reason


class TransactionTimeout(ChainError):
    default_code = "transaction_timeout"
