"""`tessera wallet`: what a person does on chain with one Ethereum key file.

The key lives at ``~/.tessera/wallet.key`` unless ``--key-file`` says otherwise: a plain
hex file (0600) by default, an encrypted keystore when a password is given (``--password``
or ``$TESSERA_WALLET_PASSWORD``). Transactions are recorded beside it
(``<key>.txs.sqlite``) so a command interrupted mid-way never reuses a nonce.

Amounts are tokens as people type them (up to 9 decimals), converted to base units
exactly; GATEWAY is the gateway's Ethereum address (``GET /v1/chain`` names it).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from tessera.chain_cli import (
    DEFAULT_CHAIN_URL,
    AsJson,
    ChainUrl,
    DeploymentFile,
    WalletKeyFile,
    chain_errors,
    default_deployment_path,
    key_address,
    open_client,
)
from tessera.config import default_data_dir
from tessera.money_cli import amount_text, data, positive_tokens_param, status, tokens_param

if TYPE_CHECKING:
    from web3.types import TxReceipt

    from tessera.chain.wallet import Wallet

wallet_app = typer.Typer(
    help="One Ethereum key: deposit at a gateway, withdraw, bind a provider, bond, cash.",
    no_args_is_help=True,
)

Password = Annotated[
    str | None,
    typer.Option(
        envvar="TESSERA_WALLET_PASSWORD",
        help="Encrypt (or decrypt) the key file as a keystore with this password.",
        show_default=False,
    ),
]
Gateway = Annotated[str, typer.Argument(help="The gateway's Ethereum address.")]
Amount = Annotated[
    int, typer.Argument(parser=positive_tokens_param, metavar="TOKENS", help="e.g. 2.5")
]


def _key_path(key_file: Path | None) -> Path:
    from tessera.chain.keys import default_key_path

    return (key_file or default_key_path()).expanduser()


@contextlib.contextmanager
def _wallet(
    key_file: Path | None, password: str | None, chain_url: str, deployment: Path
) -> Iterator[Wallet]:
    from tessera.chain.keys import load_key_file
    from tessera.chain.sender import state_path_for
    from tessera.chain.wallet import Wallet

    path = _key_path(key_file)
    key = load_key_file(path, password)
    wallet = Wallet(open_client(chain_url, deployment), key, state_path=state_path_for(path))
    try:
        yield wallet
    finally:
        wallet.close()


def _done(receipt: TxReceipt | None, what: str) -> None:
    if receipt is None:
        status.print(f"{what}: nothing to do")
        return
    status.print(
        f"[green]{what}[/] in block {receipt['blockNumber']} "
        f"(tx {receipt['transactionHash'].to_0x_hex()})"
    )


# ---------------------------------------------------------------------- keys


@wallet_app.command()
def create(key_file: WalletKeyFile = None, password: Password = None) -> None:
    """Create a new key file (never over an existing one) and print its address."""
    from tessera.chain.keys import create_key_file

    path = _key_path(key_file)
    with chain_errors():
        key = create_key_file(path, password)
    status.print(f"created {path}{' (encrypted keystore)' if password else ''}")
    data.print(key.address)


@wallet_app.command("import")
def import_key(
    key_file: WalletKeyFile = None,
    password: Password = None,
    private_key: Annotated[
        str | None,
        typer.Option(
            envvar="TESSERA_WALLET_PRIVATE_KEY",
            help="The key as 64 hex digits (prompted for, hidden, when absent).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Save an existing private key as a key file and print its address."""
    from tessera.chain.keys import import_key_file

    if private_key is None:
        private_key = typer.prompt("private key (hex)", hide_input=True)
    path = _key_path(key_file)
    with chain_errors():
        key = import_key_file(path, private_key, password)
    status.print(f"saved {path}")
    data.print(key.address)


@wallet_app.command()
def address(key_file: WalletKeyFile = None) -> None:
    """Print the key file's address (a keystore's without its password)."""
    with chain_errors():
        data.print(key_address(key_file))


@wallet_app.command()
def balance(
    gateway: Annotated[
        str | None,
        typer.Option("--gateway", help="Also show your deposit at this gateway address."),
    ] = None,
    key_file: WalletKeyFile = None,
    chain_url: ChainUrl = DEFAULT_CHAIN_URL,
    deployment: DeploymentFile = default_deployment_path(),
    as_json: AsJson = False,
) -> None:
    """ETH for gas, tokens, stake, and (with --gateway) the deposit there."""
    from tessera.chain.wallet import balance_of

    with chain_errors():
        me = key_address(key_file)  # reads need no private key, nor its password
        held = balance_of(open_client(chain_url, deployment), me, gateway)
    if as_json:
        data.print_json(json.dumps(held.to_json()))
        return
    table = Table("", "", title=me, show_header=False)
    table.add_row("ETH (gas)", f"{held.eth_wei / 10**18:.6f} ({held.eth_wei} wei)")
    table.add_row("tokens", amount_text(held.tokens))
    table.add_row("bonded", amount_text(held.bonded))
    table.add_row("unbonding", f"{amount_text(held.unbonding)}{_unlock(held.stake_unlock_at)}")
    if held.gateway is not None:
        table.add_row("gateway", held.gateway)
        table.add_row("deposit there", amount_text(held.deposit))
        table.add_row("custodial cap / epoch", amount_text(held.custodial_cap))
        table.add_row("custodial left", amount_text(held.custodial_left))
        if held.withdraw_unlock_at:
            table.add_row("withdrawal", _unlock(held.withdraw_unlock_at).strip(" ,"))
    data.print(table)


# ---------------------------------------------------------------------- consumer


@wallet_app.command()
def deposit(
    gateway: Gateway,
    amount: Amount,
    cap: Annotated[
        str | None,
        typer.Option(
            help="Tokens the gateway may collect per vault epoch without your signature "
            "(custodial use with an API key); default: keep the current cap (0 at first).",
            show_default=False,
        ),
    ] = None,
    no_permit: Annotated[
        bool, typer.Option("--no-permit", help="approve, then deposit (two transactions).")
    ] = False,
    key_file: WalletKeyFile = None,
    password: Password = None,
    chain_url: ChainUrl = DEFAULT_CHAIN_URL,
    deployment: DeploymentFile = default_deployment_path(),
) -> None:
    """Deposit tokens at a gateway (one transaction, with an EIP-2612 permit)."""
    cap_units = None if cap is None else tokens_param(cap)
    with chain_errors(), _wallet(key_file, password, chain_url, deployment) as wallet:
        receipt = wallet.deposit(gateway, amount, cap_units, use_permit=not no_permit)
        _done(receipt, f"deposited {amount_text(amount)}")
        data.print(amount_text(wallet.client.deposits(wallet.address, gateway)))


@wallet_app.command("set-cap")
def set_cap(
    gateway: Gateway,
    cap: Annotated[int, typer.Argument(parser=tokens_param, metavar="TOKENS", help="0 for none")],
    key_file: WalletKeyFile = None,
    password: Password = None,
    chain_url: ChainUrl = DEFAULT_CHAIN_URL,
    deployment: DeploymentFile = default_deployment_path(),
) -> None:
    """Set what the gateway may collect per vault epoch without your own signature."""
    with chain_errors(), _wallet(key_file, password, chain_url, deployment) as wallet:
        _done(wallet.set_custodial_cap(gateway, cap), f"custodial cap {amount_text(cap)}")


@wallet_app.command("withdraw-request")
def withdraw_request(
    gateway: Gateway,
    key_file: WalletKeyFile = None,
    password: Password = None,
    chain_url: ChainUrl = DEFAULT_CHAIN_URL,
    deployment: DeploymentFile = default_deployment_path(),
) -> None:
    """Start the unlock of your deposit at a gateway (then `wallet withdraw`)."""
    with chain_errors(), _wallet(key_file, password, chain_url, deployment) as wallet:
        receipt = wallet.request_withdraw(gateway)
        unlock = wallet.client.unlock_at(wallet.address, gateway)
        _done(receipt, "withdrawal requested")
        status.print(f"withdraw with `tessera wallet withdraw {gateway}`{_unlock(unlock)}")


@wallet_app.command()
def withdraw(
    gateway: Gateway,
    key_file: WalletKeyFile = None,
    password: Password = None,
    chain_url: ChainUrl = DEFAULT_CHAIN_URL,
    deployment: DeploymentFile = default_deployment_path(),
) -> None:
    """Take your whole deposit at a gateway back, once the requested unlock passed."""
    with chain_errors(), _wallet(key_file, password, chain_url, deployment) as wallet:
        held = wallet.client.deposits(wallet.address, gateway)
        _done(wallet.withdraw(gateway), f"withdrew {amount_text(held)}")


# ---------------------------------------------------------------------- provider


@wallet_app.command()
def bind(
    provider_key: Annotated[
        Path,
        typer.Option(help="The provider's Ed25519 identity file (created by `tessera provider`)."),
    ] = default_data_dir() / "provider.key",
    valid_days: Annotated[int, typer.Option(min=1, help="How long the binding lasts.")] = 365,
    key_file: WalletKeyFile = None,
    password: Password = None,
    chain_url: ChainUrl = DEFAULT_CHAIN_URL,
    deployment: DeploymentFile = default_deployment_path(),
) -> None:
    """Bind a provider's Ed25519 key to this account, so its cheques pay this account."""
    from tessera.errors import ConfigError
    from tessera.key_file import load_or_create_key

    with chain_errors():
        path = provider_key.expanduser()
        if not path.exists():
            raise ConfigError(
                f"no provider key at {path}: run `tessera provider` once to create it, or "
                "pass --provider-key"
            )
        signing_key = load_or_create_key(path)
        with _wallet(key_file, password, chain_url, deployment) as wallet:
            binding = wallet.binding(signing_key, valid_for_s=valid_days * 86_400)
            _done(wallet.bind(binding), f"bound provider {binding.key.hex()}")
            status.print(
                f"to {wallet.address}, nonce {binding.nonce}{_unlock(binding.valid_until, 'valid until')}"
            )


@wallet_app.command()
def bond(
    amount: Amount,
    key_file: WalletKeyFile = None,
    password: Password = None,
    chain_url: ChainUrl = DEFAULT_CHAIN_URL,
    deployment: DeploymentFile = default_deployment_path(),
) -> None:
    """Bond tokens as stake."""
    with chain_errors(), _wallet(key_file, password, chain_url, deployment) as wallet:
        _done(wallet.bond(amount), f"bonded {amount_text(amount)}")
        data.print(amount_text(wallet.client.bonded(wallet.address)))


@wallet_app.command()
def unbond(
    amount: Amount,
    key_file: WalletKeyFile = None,
    password: Password = None,
    chain_url: ChainUrl = DEFAULT_CHAIN_URL,
    deployment: DeploymentFile = default_deployment_path(),
) -> None:
    """Start unbonding stake (slashable until withdrawn after the unbonding period)."""
    with chain_errors(), _wallet(key_file, password, chain_url, deployment) as wallet:
        _done(wallet.unbond(amount), f"unbonding {amount_text(amount)}")
        unlock = wallet.client.stake_unlock_at(wallet.address)
        status.print(f"then `tessera wallet withdraw-stake`{_unlock(unlock)}")


@wallet_app.command("withdraw-stake")
def withdraw_stake(
    key_file: WalletKeyFile = None,
    password: Password = None,
    chain_url: ChainUrl = DEFAULT_CHAIN_URL,
    deployment: DeploymentFile = default_deployment_path(),
) -> None:
    """Take back stake whose unbonding period has passed."""
    with chain_errors(), _wallet(key_file, password, chain_url, deployment) as wallet:
        held = wallet.client.unbonding(wallet.address)
        _done(wallet.withdraw_stake(), f"withdrew {amount_text(held)} of stake")


@wallet_app.command()
def cash(
    cheque_file: Annotated[
        str,
        typer.Argument(metavar="CHEQUE", help="Cheque JSON file (as the gateway serves it), or -"),
    ],
    key_file: WalletKeyFile = None,
    password: Password = None,
    chain_url: ChainUrl = DEFAULT_CHAIN_URL,
    deployment: DeploymentFile = default_deployment_path(),
) -> None:
    """Submit a gateway's cheque: the vault pays its provider what it adds."""
    from tessera.chain.typed_data import SignedCheque
    from tessera.errors import ConfigError

    with chain_errors():
        if cheque_file == "-":
            try:
                raw: Any = json.loads(sys.stdin.read())
            except ValueError as exc:
                raise ConfigError(f"stdin is not a cheque's JSON: {exc}") from exc
            cheque = SignedCheque.from_json(raw, source="stdin")
        else:
            cheque = SignedCheque.load(Path(cheque_file))
        with _wallet(key_file, password, chain_url, deployment) as wallet:
            before = wallet.client.paid(cheque.gateway, cheque.provider)
            receipt = wallet.cash(cheque)
            after = wallet.client.paid(cheque.gateway, cheque.provider)
            _done(receipt, f"cashed {amount_text(after - before)} to {cheque.provider}")
            if after < cheque.cumulative:
                status.print(
                    f"[yellow]{amount_text(cheque.cumulative - after)} is not covered yet[/]: "
                    "cash the same cheque again later"
                )


def _unlock(unix_s: int, word: str = "unlocks") -> str:
    if not unix_s:
        return ""
    return f", {word} {datetime.fromtimestamp(unix_s, UTC).isoformat(timespec='seconds')}"
