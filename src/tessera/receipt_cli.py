"""``tessera receipt``: fetch a request's receipt and check its signatures offline.

``verify`` needs nothing but the file: the provider's key is the receipt's provider id and
the gateway's key travels with the countersignature. ``--gateway-key`` pins the gateway
(see ``GET /v1/gateway``) so a receipt countersigned by some other key is refused.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import httpx
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from tessera.protocol.receipts import CountersignedReceipt, verify_countersigned
from tessera.protocol.signing import SignatureInvalid
from tessera.units import format_tokens

receipt_app = typer.Typer(help="Fetch and verify signed receipts.", no_args_is_help=True)
console = Console()


def load_receipt(text: str) -> CountersignedReceipt:
    """Parse a receipt as GET /v1/receipts/{id} returns it (the ``object`` key is optional)."""
    data = json.loads(text)
    if isinstance(data, dict):
        data.pop("object", None)
    return CountersignedReceipt.model_validate(data)


@receipt_app.command("verify")
def verify(
    file: Annotated[Path, typer.Argument(help="Receipt JSON ('-' reads standard input).")],
    gateway_key: Annotated[
        str | None, typer.Option(help="Expected gateway public key (hex, from GET /v1/gateway).")
    ] = None,
) -> None:
    """Check the provider's signature and the gateway's countersignature of a receipt."""
    try:
        text = sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8")
        signed = load_receipt(text)
    except OSError as exc:
        console.print(f"[red]cannot read {file}: {exc}[/red]")
        raise typer.Exit(2) from None
    except (ValueError, ValidationError) as exc:
        console.print(f"[red]{file} is not a Tessera receipt: {str(exc)[:300]}[/red]")
        console.print("Save the body of GET /v1/receipts/REQUEST_ID and try again.")
        raise typer.Exit(2) from None
    try:
        verify_countersigned(signed, gateway_key)
    except SignatureInvalid as exc:
        console.print(f"[red]INVALID: {exc}[/red]")
        raise typer.Exit(1) from None
    receipt = signed.receipt
    table = Table(title="receipt verified: both signatures are good", show_header=False)
    for name, value in (
        ("request", receipt.request_id),
        ("model", receipt.model),
        ("weights sha256", receipt.weights_sha256),
        ("provider", receipt.provider_id),
        ("gateway", f"{signed.gateway_id} ({signed.gateway_public_key})"),
        ("prompt sha256", receipt.prompt_sha256),
        ("output sha256", receipt.output_sha256),
        ("tokens", f"{receipt.prompt_tokens} prompt + {receipt.completion_tokens} completion"),
        (
            "price per M tokens",
            f"{format_tokens(receipt.price_input_per_mtok)} in / "
            f"{format_tokens(receipt.price_output_per_mtok)} out",
        ),
        ("took", f"{receipt.finished_at_ms - receipt.started_at_ms} ms"),
    ):
        table.add_row(name, value)
    console.print(table)


@receipt_app.command("get")
def get(
    request_id: Annotated[str, typer.Argument(help="The request id (x-request-id header).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to save it.")] = Path(
        "receipt.json"
    ),
    gateway: Annotated[str, typer.Option(help="Gateway URL.")] = "http://127.0.0.1:8000",
    api_key: Annotated[
        str, typer.Option(envvar="TESSERA_API_KEY", help="Your API key (or TESSERA_API_KEY).")
    ] = "",
) -> None:
    """Download one of your receipts to a file, ready for ``tessera receipt verify``."""
    if not api_key:
        console.print("[red]give --api-key or set TESSERA_API_KEY[/red]")
        raise typer.Exit(2)
    try:
        response = httpx.get(
            f"{gateway.rstrip('/')}/v1/receipts/{request_id}",
            headers={"authorization": f"Bearer {api_key}"},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        console.print(f"[red]cannot reach {gateway}: {exc}[/red]")
        raise typer.Exit(2) from None
    if response.status_code != 200:
        message = response.json().get("error", {}).get("message", response.text)
        console.print(f"[red]{response.status_code}: {message}[/red]")
        raise typer.Exit(1)
    out.write_text(json.dumps(response.json(), indent=2) + "\n", encoding="utf-8")
    console.print(f"saved to {out}; check it with `tessera receipt verify {out}`")
