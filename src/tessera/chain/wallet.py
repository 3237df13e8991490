"""What a person does on chain with one Ethereum key: deposit at a gateway, withdraw,
bind a provider key, bond stake, cash a cheque.

``Wallet(client, key)`` sends from ``key`` through a :class:`TxSender` (give
``state_path`` so nonces survive restarts, as the CLI does: ``<key file>.txs.sqlite``).
Amounts are ints of base units. Every write checks what it can first (token balance, an
Ed25519 signature, a cheque's vault) and says what to do instead, so a person does not pay
gas to be refused; what only the contract knows comes back as TransactionReverted with its
reason.

Dev helpers :func:`fund_eth` and :func:`mint` use anvil's public dev key, and only on a
local chain 31337 whose token that key deployed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from web3.types import TxReceipt

from tessera.chain.anvil import ANVIL_CHAIN_ID, DEV_ADDRESS, DEV_PRIVATE_KEY
from tessera.chain.client import ChainClient
from tessera.chain.client import checksum as _addr
from tessera.chain.errors import TransactionReverted
from tessera.chain.keys import EthKey
from tessera.chain.sender import TxSender
from tessera.chain.typed_data import Binding, SignedCheque, sign_binding
from tessera.errors import ConfigError, InvalidRequest
from tessera.units import format_tokens

PERMIT_DEADLINE_S = 3600  # a permit signed now is good for an hour
BINDING_VALID_S = 365 * 86_400  # a binding lasts a year unless told otherwise
U64_MAX = 2**64 - 1


@dataclass(frozen=True, slots=True)
class WalletBalance:
    """What one address holds, in base units (``eth_wei`` in wei); the ``*_at`` fields are
    unix seconds, 0 when nothing is pending. Deposit fields are 0 without a gateway."""

    address: str
    eth_wei: int
    tokens: int
    bonded: int
    unbonding: int
    stake_unlock_at: int
    gateway: str | None = None
    deposit: int = 0
    custodial_cap: int = 0
    custodial_left: int = 0
    withdraw_unlock_at: int = 0

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


def balance_of(client: ChainClient, address: str, gateway: str | None = None) -> WalletBalance:
    """What ``address`` holds (and has deposited at ``gateway``, if given)."""
    me = _addr(address)
    held = WalletBalance(
        address=me,
        eth_wei=client.eth_balance(me),
        tokens=client.token_balance(me),
        bonded=client.bonded(me),
        unbonding=client.unbonding(me),
        stake_unlock_at=client.stake_unlock_at(me),
    )
    if gateway is None:
        return held
    gateway = _addr(gateway)
    return dataclasses.replace(
        held,
        gateway=gateway,
        deposit=client.deposits(me, gateway),
        custodial_cap=client.custodial_cap(me, gateway),
        custodial_left=client.custodial_left(me, gateway),
        withdraw_unlock_at=client.unlock_at(me, gateway),
    )


class Wallet:
    """One key's writes against one deployment (see the module docstring)."""

    def __init__(
        self,
        client: ChainClient,
        key: EthKey,
        *,
        state_path: Path | None = None,
        sender: TxSender | None = None,
    ) -> None:
        self.client = client
        self.key = key
        self.sender = sender or TxSender(client.w3, key, state_path=state_path)
        self.address = self.sender.address

    def close(self) -> None:
        self.sender.close()

    def __enter__(self) -> Wallet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reads

    def balance(self, gateway: str | None = None) -> WalletBalance:
        return balance_of(self.client, self.address, gateway)

    # ------------------------------------------------------------------ consumer

    def deposit(
        self,
        gateway: str,
        amount: int,
        custodial_cap: int | None = None,
        *,
        use_permit: bool = True,
    ) -> TxReceipt:
        """Deposit ``amount`` at ``gateway`` and set the custodial cap (None keeps the
        current one). One transaction with an EIP-2612 permit; an allowance that already
        covers ``amount`` needs no permit; if the permit path is refused, approve then
        deposit (two transactions)."""
        gateway = _nonzero(gateway, "gateway")
        _positive(amount, "deposit")
        self._require_tokens(amount, "deposit")
        if custodial_cap is None:
            custodial_cap = self.client.custodial_cap(self.address, gateway)
        _non_negative(custodial_cap, "custodial cap")
        vault = self.client.vault
        if self.client.allowance(self.address, vault.address) >= amount:
            return self.sender.transact(vault.functions.deposit(gateway, amount, custodial_cap))
        if use_permit:
            deadline = self.client.block_timestamp() + PERMIT_DEADLINE_S
            v, r, s = self.sign_permit(vault.address, amount, deadline)
            call = vault.functions.deposit_with_permit(
                gateway, amount, custodial_cap, deadline, v, r, s
            )
            try:
                return self.sender.transact(call)
            except TransactionReverted:
                pass  # refused at estimate (no nonce used): try the two-transaction way
        self.sender.transact(self.client.token.functions.approve(vault.address, amount))
        return self.sender.transact(vault.functions.deposit(gateway, amount, custodial_cap))

    def sign_permit(self, spender: str, amount: int, deadline: int) -> tuple[int, bytes, bytes]:
        """``(v, r, s)`` of an EIP-2612 permit letting ``spender`` take ``amount``."""
        token = self.client.token
        message = encode_typed_data(
            full_message={
                "types": {
                    "EIP712Domain": [
                        {"name": "name", "type": "string"},
                        {"name": "version", "type": "string"},
                        {"name": "chainId", "type": "uint256"},
                        {"name": "verifyingContract", "type": "address"},
                    ],
                    "Permit": [
                        {"name": "owner", "type": "address"},
                        {"name": "spender", "type": "address"},
                        {"name": "value", "type": "uint256"},
                        {"name": "nonce", "type": "uint256"},
                        {"name": "deadline", "type": "uint256"},
                    ],
                },
                "primaryType": "Permit",
                "domain": {
                    "name": "Tessera Token",  # contracts/SPEC.md: the token's EIP-712 name
                    "version": "1",
                    "chainId": self.client.chain_id,
                    "verifyingContract": token.address,
                },
                "message": {
                    "owner": self.address,
                    "spender": _addr(spender),
                    "value": amount,
                    "nonce": self.client.permit_nonce(self.address),
                    "deadline": deadline,
                },
            }
        )
        signed = Account.sign_message(message, self.key.private_key)
        return signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")

    def set_custodial_cap(self, gateway: str, cap: int) -> TxReceipt:
        """What ``gateway``'s signer may collect per vault epoch without your signature."""
        _non_negative(cap, "custodial cap")
        gateway = _nonzero(gateway, "gateway")
        return self.sender.transact(self.client.vault.functions.set_custodial_cap(gateway, cap))

    def request_withdraw(self, gateway: str) -> TxReceipt:
        """Start the unlock of your deposit at ``gateway`` (the gateway may still collect
        what you spent until it unlocks)."""
        gateway = _nonzero(gateway, "gateway")
        if self.client.deposits(self.address, gateway) == 0:
            raise InvalidRequest(f"{self.address} has nothing deposited at {gateway}")
        return self.sender.transact(self.client.vault.functions.request_withdraw(gateway))

    def withdraw(self, gateway: str) -> TxReceipt:
        """Take your whole deposit at ``gateway`` back, once the requested unlock passed."""
        gateway = _nonzero(gateway, "gateway")
        unlock = self.client.unlock_at(self.address, gateway)
        if unlock == 0:
            raise InvalidRequest(
                f"no withdrawal requested at {gateway}: run `tessera wallet withdraw-request "
                f"{gateway}` and wait for the unlock"
            )
        now = self.client.block_timestamp()
        if now < unlock:
            raise InvalidRequest(
                f"the deposit at {gateway} unlocks in {unlock - now} s (at unix {unlock}); "
                "try again then"
            )
        if self.client.deposits(self.address, gateway) == 0:
            raise InvalidRequest(f"{self.address} has nothing deposited at {gateway}")
        return self.sender.transact(self.client.vault.functions.withdraw(gateway))

    # ------------------------------------------------------------------ provider

    def binding(
        self, signing_key: Any, *, valid_for_s: int = BINDING_VALID_S, nonce: int | None = None
    ) -> Binding:
        """A binding of ``signing_key`` (the provider's PyNaCl ``SigningKey``) to this
        account, signed by that key, with the next nonce unless given."""
        if nonce is None:
            current = self.client.bindings(self.address)
            nonce = 1 if current is None else current.nonce + 1
        valid_until = min(U64_MAX, self.client.block_timestamp() + valid_for_s)
        return sign_binding(
            signing_key,
            self.client.chain_id,
            self.client.registry.address,
            self.address,
            valid_until,
            nonce,
        )

    def bind(self, binding: Binding) -> TxReceipt:
        """Register ``binding`` (from :meth:`binding`). Refused here, before any gas is
        spent, unless it names this account and its Ed25519 signature verifies: the
        Registry stores what it is sent, and every reader would ignore a bad one."""
        if _addr(binding.account) != self.address:
            raise InvalidRequest(
                f"the binding is for {binding.account}, but this wallet is {self.address}"
            )
        if not self.client.verify_binding(binding, binding.key):
            raise InvalidRequest(
                "the binding's Ed25519 signature does not verify for this registry and chain: "
                "sign it again with the provider's key file"
            )
        current = self.client.bindings(self.address)
        if current is not None and binding.nonce <= current.nonce:
            raise InvalidRequest(
                f"binding nonce {binding.nonce} is not above the current one ({current.nonce})"
            )
        return self.sender.transact(
            self.client.registry.functions.bind(
                binding.key, binding.valid_until, binding.nonce, binding.signature
            )
        )

    def bond(self, amount: int) -> TxReceipt:
        """Bond ``amount`` as stake (approving the stake manager first if needed)."""
        _positive(amount, "bond")
        self._require_tokens(amount, "bond")
        stake = self.client.stake
        if self.client.allowance(self.address, stake.address) < amount:
            self.sender.transact(self.client.token.functions.approve(stake.address, amount))
        return self.sender.transact(stake.functions.bond(amount))

    def unbond(self, amount: int) -> TxReceipt:
        """Start unbonding ``amount``: withdrawable after the unbonding period, and
        slashable until then. A new unbond restarts the delay for all that is unbonding."""
        _positive(amount, "unbond")
        bonded = self.client.bonded(self.address)
        if amount > bonded:
            raise InvalidRequest(
                f"{self.address} has {format_tokens(bonded)} tokens bonded; cannot unbond "
                f"{format_tokens(amount)}"
            )
        return self.sender.transact(self.client.stake.functions.unbond(amount))

    def withdraw_stake(self) -> TxReceipt:
        """Take all unbonded stake back once its unbonding period has passed."""
        unbonding = self.client.unbonding(self.address)
        if unbonding == 0:
            raise InvalidRequest(
                "nothing is unbonding: `tessera wallet unbond TOKENS` first, then wait out "
                "the unbonding period"
            )
        unlock, now = self.client.stake_unlock_at(self.address), self.client.block_timestamp()
        if now < unlock:
            raise InvalidRequest(
                f"the stake unlocks in {unlock - now} s (at unix {unlock}); try again then"
            )
        return self.sender.transact(self.client.stake.functions.withdraw())

    def cash(self, cheque: SignedCheque) -> TxReceipt | None:
        """Submit ``cheque``; None (no transaction) when it adds nothing to what was paid.
        Anyone may submit a cheque: the vault pays its provider, whoever sends it."""
        if cheque.cumulative <= self.client.paid(cheque.gateway, cheque.provider):
            return None
        return self.client.cash(self.sender, cheque)

    # ------------------------------------------------------------------ internals

    def _require_tokens(self, amount: int, what: str) -> None:
        held = self.client.token_balance(self.address)
        if held < amount:
            raise InvalidRequest(
                f"{self.address} holds {format_tokens(held)} tokens, too few to {what} "
                f"{format_tokens(amount)}"
                + (
                    f": on a dev chain, `tessera chain mint {self.address} TOKENS`"
                    if self.client.chain_id == ANVIL_CHAIN_ID
                    else ""
                )
            )


# ---------------------------------------------------------------------- dev helpers


def dev_sender(client: ChainClient) -> TxSender:
    """A sender from anvil's public dev key: ConfigError off a local chain 31337."""
    if client.chain_id != ANVIL_CHAIN_ID:
        raise ConfigError(
            f"chain {client.chain_id} is not a local dev chain ({ANVIL_CHAIN_ID}): fund and "
            "mint with your own keys there"
        )
    return TxSender(client.w3, EthKey.from_hex(DEV_PRIVATE_KEY))


def fund_eth(client: ChainClient, address: str, amount_wei: int) -> TxReceipt:
    """Send ``amount_wei`` of ETH for gas from the dev key (local chain only)."""
    _positive(amount_wei, "fund")
    sender = dev_sender(client)
    try:
        return sender.transact({"to": _addr(address), "data": "0x"}, value_wei=amount_wei)
    finally:
        sender.close()


def mint(client: ChainClient, address: str, amount: int) -> TxReceipt:
    """Mint ``amount`` tokens to ``address`` with the dev key (local chain only, and
    only when the dev key deployed this token)."""
    _positive(amount, "mint")
    sender = dev_sender(client)
    try:
        if not client.is_minter(DEV_ADDRESS):
            raise ConfigError(
                f"the dev key is not a minter of token {client.token.address}: this "
                "deployment was made with another key; mint with that key"
            )
        return sender.transact(client.token.functions.mint(_addr(address), amount))
    finally:
        sender.close()


def _positive(amount: int, what: str) -> None:
    if type(amount) is not int or amount <= 0:
        raise InvalidRequest(f"the amount to {what} must be a positive int of base units")


def _non_negative(amount: int, what: str) -> None:
    if type(amount) is not int or amount < 0:
        raise InvalidRequest(f"the {what} must be a non-negative int of base units")


def _nonzero(address: str, what: str) -> str:
    checked = _addr(address)
    if int(checked, 16) == 0:
        raise InvalidRequest(f"the {what} address must not be 0x0")
    return checked
