"""`tessera chain`: start a local chain and deploy the contracts, look at a deployment, and
(on a local dev chain only) hand out gas and test tokens.

``chain up`` without ``--chain-url`` runs anvil in the foreground until Ctrl-C (or
SIGTERM), so the chain lives exactly as long as the command; with ``--chain-url`` it
deploys to that node and returns. Either way it writes the deployment file other commands
read (default ``~/.tessera/deployment.json``; ``--out``). Running it again against a chain
that still has those contracts reuses them (``--redeploy`` deploys afresh).

web3 is imported inside the commands, so ``tessera --help`` stays fast. Data goes to
stdout, status and errors to stderr; any error exits 2 with what to do next.
"""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from tessera.config import default_data_dir
from tessera.errors import TesseraError
from tessera.money_cli import amount_text, data, fail, positive_tokens_param, status

if TYPE_CHECKING:
    from tessera.chain.client import ChainClient
    from tessera.chain.deployment import Deployment

chain_app = typer.Typer(
    help="The chain under deposits, stake and payouts: start a dev chain, deploy, inspect, fund.",
    no_args_is_help=True,
)

DEFAULT_CHAIN_URL = "http://127.0.0.1:8545"
DEFAULT_ANVIL_PORT = 8545
WEI_PER_ETH = 10**18


def default_deployment_path() -> Path:
    return default_data_dir() / "deployment.json"


ChainUrl = Annotated[
    str,
    typer.Option("--chain-url", envvar="TESSERA_CHAIN_URL", help="JSON-RPC URL of the chain."),
]
DeploymentFile = Annotated[
    Path,
    typer.Option(
        "--deployment",
        envvar="TESSERA_DEPLOYMENT",
        help="Deployment file (`tessera chain up` writes it).",
    ),
]
WalletKeyFile = Annotated[
    Path | None,
    typer.Option(
        "--key-file",
        "--key",
        envvar="TESSERA_WALLET_KEY",
        help="Ethereum key file (default: ~/.tessera/wallet.key).",
        show_default=False,
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@contextlib.contextmanager
def chain_errors() -> Iterator[None]:
    """Turn any of our errors into ``error: ...`` and exit 2."""
    try:
        yield
    except TesseraError as exc:
        fail(exc.message)


def open_client(chain_url: str, deployment_path: Path) -> ChainClient:
    """The client for ``deployment_path`` on ``chain_url``; ConfigError says what to run
    when the file is missing, and ChainUnavailable when the node is down."""
    from tessera.chain.client import ChainClient
    from tessera.chain.deployment import Deployment

    deployment = Deployment.load(deployment_path)
    return ChainClient(chain_url, deployment)


def key_address(key_file: Path | None) -> str:
    """The address of a wallet key file, without its password (a keystore names it)."""
    from eth_utils.address import to_checksum_address

    from tessera.chain.keys import default_key_path, is_keystore, load_key_file
    from tessera.errors import ConfigError

    path = (key_file or default_key_path()).expanduser()
    if is_keystore(path):
        try:
            return str(to_checksum_address(json.loads(path.read_text())["address"]))
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"{path} is a keystore without a readable address") from exc
    return load_key_file(path).address


def eth_param(text: str) -> int:
    """ETH typed by a person (up to 18 decimals) -> wei, exactly."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise typer.BadParameter(f"{text!r} is not an amount of ETH, e.g. 1 or 0.5") from None
    if not value.is_finite() or value <= 0:
        raise typer.BadParameter("the amount of ETH must be more than 0")
    wei = value * WEI_PER_ETH
    if wei != wei.to_integral_value():
        raise typer.BadParameter(f"{text!r} has more than 18 decimal places (1 wei)")
    return int(wei)


# ---------------------------------------------------------------------- commands


@chain_app.command()
def up(
    chain_url: Annotated[
        str | None,
        typer.Option(
            "--chain-url",
            envvar="TESSERA_CHAIN_URL",
            help="Deploy to this node instead of starting anvil.",
            show_default=False,
        ),
    ] = None,
    dev: Annotated[
        bool,
        typer.Option("--dev", help="Test periods (seconds, not days): for development only."),
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="Where to write the deployment file.", show_default=False)
    ] = None,
    host: Annotated[str, typer.Option(help="Address anvil listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port anvil listens on.")] = DEFAULT_ANVIL_PORT,
    state_file: Annotated[
        Path | None,
        typer.Option(help="anvil keeps the chain here across restarts.", show_default=False),
    ] = None,
    key_file: Annotated[
        Path | None,
        typer.Option(
            "--key-file",
            help="Deployer (and governance) key; default: anvil's dev key, chain 31337 only.",
            show_default=False,
        ),
    ] = None,
    password: Annotated[
        str | None,
        typer.Option(envvar="TESSERA_WALLET_PASSWORD", help="The key file's password."),
    ] = None,
    redeploy: Annotated[
        bool, typer.Option("--redeploy", help="Deploy afresh even if --out is still live.")
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Start a local chain (anvil) and deploy the contracts, or deploy to --chain-url."""
    out = out or default_deployment_path()
    node = None
    with chain_errors():
        if chain_url is None:
            from tessera.chain.anvil import start_anvil

            with status.status(f"starting anvil on {host}:{port}…"):
                node = start_anvil(host=host, port=port, state_file=state_file)
            chain_url = node.url
        try:
            deployment = _deploy(chain_url, out, dev, key_file, password, redeploy)
            _print_deployment(deployment, chain_url, out, as_json)
            if node is not None:
                status.print(
                    f"[bold green]chain running[/] at {chain_url} (pid {node.pid}); Ctrl-C stops it"
                )
                _wait_for_stop(node)
        finally:
            if node is not None:
                node.stop()


@chain_app.command("status")
def chain_status(
    chain_url: ChainUrl = DEFAULT_CHAIN_URL,
    deployment: DeploymentFile = default_deployment_path(),
    as_json: AsJson = False,
) -> None:
    """The chain's head, the contracts and what they hold."""
    with chain_errors():
        client = open_client(chain_url, deployment)
        head, head_hash = client.block("latest")
        final = client.block("finalized")[0]
        vault = client.vault.address
        report: dict[str, Any] = {
            "chain_url": chain_url,
            "chain_id": client.chain_id,
            "head_block": head,
            "head_hash": head_hash,
            "finalized_block": final,
            "contracts": dict(client.deployment.contracts),
            "deployer": client.deployment.deployer,
            "params": dict(client.deployment.params),
            "token_supply": client.total_supply(),
            "vault_holds": client.token_balance(vault),
            "stake_holds": client.token_balance(client.stake.address),
            "insurance_pool": client.insurance_pool(),
            "vault_epoch": client.current_epoch(),
            "gateways": _gateways(client),
        }
    if as_json:
        data.print_json(json.dumps(report))
        return
    table = Table(
        "", "", title=f"chain {client.chain_id} at {escape(chain_url)}", show_header=False
    )
    table.add_row("head", f"block {head} ({head_hash[:18]}…), finalized {final}")
    for key, address in client.deployment.contracts.items():
        table.add_row(key, address)
    table.add_row("token supply", amount_text(report["token_supply"]))
    table.add_row("vault holds", amount_text(report["vault_holds"]))
    table.add_row("stake holds", amount_text(report["stake_holds"]))
    table.add_row("insurance pool", amount_text(report["insurance_pool"]))
    table.add_row("vault epoch", str(report["vault_epoch"]))
    for gateway, seen in report["gateways"].items():
        table.add_row(
            f"gateway {gateway[:10]}…",  # the whole address: --json
            f"balance {amount_text(seen['balance'])}, last settled epoch "
            f"{seen['last_settled_epoch'] or 'none'}",
        )
    data.print(table)


def _gateways(client: ChainClient) -> dict[str, dict[str, int]]:
    """Every gateway the vault has seen (a deposit for it, or a settle): its balance in
    the vault and the last epoch it settled, from the events since the deployment."""
    seen = sorted(
        {
            str(event.args["gateway"])
            for event in client.events(client.deployment.start_block)
            if event.contract == "vault" and "gateway" in event.args
        }
    )
    return {
        gateway: {
            "balance": client.gateway_balance(gateway),
            "last_settled_epoch": client.last_settled_epoch(gateway),
        }
        for gateway in seen
    }


@chain_app.command()
def fund(
    address: Annotated[
        str | None,
        typer.Argument(
            help="Who gets the ETH (default: your wallet's address).", show_default=False
        ),
    ] = None,
    eth: Annotated[str, typer.Option(help="ETH to send, for gas.")] = "1",
    key_file: WalletKeyFile = None,
    chain_url: ChainUrl = DEFAULT_CHAIN_URL,
    deployment: DeploymentFile = default_deployment_path(),
) -> None:
    """Send ETH for gas from anvil's dev key (local chain 31337 only)."""
    wei = eth_param(eth)
    from tessera.chain.wallet import fund_eth

    with chain_errors():
        address = address or key_address(key_file)
        client = open_client(chain_url, deployment)
        receipt = fund_eth(client, address, wei)
        status.print(f"sent {eth} ETH to {address} (block {receipt['blockNumber']})")
        data.print(f"{client.eth_balance(address)} wei")


@chain_app.command("mint")
def mint_tokens(
    amount: Annotated[
        int, typer.Argument(parser=positive_tokens_param, metavar="TOKENS", help="e.g. 100")
    ],
    address: Annotated[
        str | None,
        typer.Argument(help="Who gets them (default: your wallet's address).", show_default=False),
    ] = None,
    key_file: WalletKeyFile = None,
    chain_url: ChainUrl = DEFAULT_CHAIN_URL,
    deployment: DeploymentFile = default_deployment_path(),
) -> None:
    """Mint test tokens with anvil's dev key (local chain 31337, deployed by that key)."""
    from tessera.chain.wallet import mint

    with chain_errors():
        address = address or key_address(key_file)
        client = open_client(chain_url, deployment)
        receipt = mint(client, address, amount)
        status.print(f"minted {amount_text(amount)} to {address} (block {receipt['blockNumber']})")
        data.print(amount_text(client.token_balance(address)))


# ---------------------------------------------------------------------- internals


def _deploy(
    chain_url: str,
    out: Path,
    dev: bool,
    key_file: Path | None,
    password: str | None,
    redeploy: bool,
) -> Deployment:
    from web3.exceptions import Web3Exception

    from tessera.chain.deploy import DeployParams, connect, deploy, dev_key_for
    from tessera.chain.deployment import Deployment
    from tessera.chain.errors import ChainUnavailable
    from tessera.chain.keys import load_key_file
    from tessera.chain.sender import TxSender, state_path_for

    w3 = connect(chain_url)
    try:
        w3.eth.chain_id  # noqa: B018 - fail here, with a plain message, if the node is down
    except (Web3Exception, OSError) as exc:
        raise ChainUnavailable(f"cannot reach {chain_url}: {exc}; is the node up?") from exc
    if out.exists() and not redeploy:
        live = _live_deployment(w3, Deployment.load(out))
        if live is not None:
            status.print(
                f"[yellow]{out} is live on this chain: reusing it[/] (--redeploy to replace)"
            )
            return live
    if key_file is not None:
        key = load_key_file(key_file, password)
        sender = TxSender(w3, key, state_path=state_path_for(key_file))
    else:
        sender = TxSender(w3, dev_key_for(w3))
    params = DeployParams.for_tests() if dev else DeployParams()
    try:
        with status.status("deploying the contracts…"):
            deployment = deploy(sender, params)
    finally:
        sender.close()
    deployment.save(out)
    return deployment


def _live_deployment(w3: Any, deployment: Deployment) -> Deployment | None:
    """``deployment`` if every one of its contracts has code on ``w3``'s chain."""
    if w3.eth.chain_id != deployment.chain_id:
        return None
    for address in deployment.contracts.values():
        if not w3.eth.get_code(address):
            return None
    return deployment


def _print_deployment(deployment: Deployment, chain_url: str, out: Path, as_json: bool) -> None:
    if as_json:
        data.print_json(json.dumps({**deployment.to_json(), "file": str(out)}))
    else:
        table = Table("contract", "address", title=f"deployed on chain {deployment.chain_id}")
        for key, address in deployment.contracts.items():
            table.add_row(key, address)
        data.print(table)
    status.print(f"wrote {out}")
    status.print(
        "next: `tessera wallet create`, then on a dev chain `tessera chain fund` and "
        f"`tessera chain mint 100` (--chain-url {chain_url} --deployment {out})"
    )


def _wait_for_stop(node: Any) -> None:
    """Block until anvil exits, Ctrl-C, or SIGTERM (which stops anvil cleanly too)."""

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        code = node.process.wait()
        fail(f"anvil exited with code {code}:\n{node.log_tail()}")
    except KeyboardInterrupt:
        status.print("stopping the chain")
    finally:
        signal.signal(signal.SIGTERM, previous)
