"""The money commands: offline ones on a real database, HTTP ones up to the wire.

`account create` and `ledger check` run against SQLite and PostgreSQL. The commands that
call a gateway are tested here for parsing, formatting and the no-gateway error; their
paths through a real gateway are covered by the gateway's own end-to-end tests.
"""

from __future__ import annotations

import asyncio
import io
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from rich.console import Console
from sqlalchemy import text
from typer.testing import CliRunner

from tessera.ledger.accounts import TOKEN, balance_of
from tessera.ledger.book import Book, BookPolicy
from tessera.ledger.journal import Entry
from tessera.ledger.pricing import Price
from tessera.ledger.spend_caps import SpendCaps
from tessera.money_cli import (
    account_app,
    amount_text,
    cap_text,
    earnings_app,
    error_message,
    ledger_app,
    render_account,
    render_provider,
    render_usage,
    stake_app,
    time_text,
)
from tessera.provider.identity import load_or_create_key
from tessera.store.api_keys import ApiKeyStore, hash_api_key
from tessera.store.engine import create_engine
from tessera.store.ledger import LedgerStore

T0 = 1_700_000_000.0
PROVIDER = "ab" * 32

runner = CliRunner()


def cli() -> typer.Typer:
    """The four sub-apps mounted the way cli.py mounts them."""
    app = typer.Typer()
    app.add_typer(account_app, name="account")
    app.add_typer(stake_app, name="stake")
    app.add_typer(earnings_app, name="earnings")
    app.add_typer(ledger_app, name="ledger")
    return app


def invoke(*args: str) -> Any:
    return runner.invoke(cli(), list(args), env={"TESSERA_API_KEY": None})


def free_port() -> int:
    """A port nothing listens on: bound to learn a free number, then closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def render(table: Any) -> str:
    out = io.StringIO()
    Console(file=out, width=240).print(table)
    return out.getvalue()


def db_args(database_url: str, tmp_path: Path) -> list[str]:
    return ["--data-dir", str(tmp_path / "data"), "--database-url", database_url]


async def _execute(url: str, sql: str, **params: Any) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(sql), params)
    finally:
        await engine.dispose()


async def _append(url: str, entries: tuple[Entry, ...]) -> None:
    engine = create_engine(url)
    try:
        await LedgerStore(engine).append(entries)
    finally:
        await engine.dispose()


def a_history(account: str) -> Book:
    """A mint, a settled request and one still open, posted by the real book."""
    book = Book(BookPolicy())
    book.mint(account, 10 * TOKEN, "dep-1", T0)
    caps = SpendCaps()
    book.hold(account, "key_1", caps, "req-1", 2 * TOKEN, T0 + 1)
    book.capture(
        "req-1", Price(input_per_mtok=TOKEN, output_per_mtok=TOKEN), 100, 50, PROVIDER, T0 + 2
    )
    book.hold(account, "key_1", caps, "req-2", TOKEN, T0 + 3)
    return book


# ------------------------------------------------------------------ offline commands


@pytest.mark.integration
def test_account_create_prints_the_key_alone_and_stores_exact_caps(
    database_url: str, tmp_path: Path
) -> None:
    result = invoke(
        "account",
        "create",
        "research lab",
        "--cap-total",
        "2.5",
        "--cap-daily",
        "0.000000001",
        *db_args(database_url, tmp_path),
    )
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tsk_")
    assert "created account acct_" in result.stderr

    async def stored() -> Any:
        engine = create_engine(database_url)
        try:
            return await ApiKeyStore(engine).find_by_hash(hash_api_key(lines[0]))
        finally:
            await engine.dispose()

    record = asyncio.run(stored())
    assert record is not None
    assert record.account_id in result.stderr and record.id in result.stderr
    assert (record.spend_cap_total, record.spend_cap_daily) == (2_500_000_000, 1)


@pytest.mark.integration
def test_account_create_refuses_a_bad_cap_before_touching_the_database(tmp_path: Path) -> None:
    result = invoke("account", "create", "x", "--cap-total", "1.5e3", "--data-dir", str(tmp_path))
    assert result.exit_code == 2
    assert "not an amount of tokens" in result.stderr
    assert not (tmp_path / "tessera.db").exists()


@pytest.mark.integration
def test_account_create_reports_a_store_error(tmp_path: Path) -> None:
    result = invoke("account", "create", "x" * 201, "--data-dir", str(tmp_path))
    assert result.exit_code == 2
    assert "1 to 200 characters" in result.stderr


@pytest.mark.integration
def test_ledger_check_on_a_fresh_database_is_sound(database_url: str, tmp_path: Path) -> None:
    invoke("account", "create", "alice", *db_args(database_url, tmp_path))
    result = invoke("ledger", "check", *db_args(database_url, tmp_path))
    assert result.exit_code == 0, result.stderr
    assert "journal sound" in result.stderr
    assert "entries" in result.stdout


@pytest.mark.integration
def test_ledger_check_totals_a_real_history_then_finds_a_tampered_posting(
    database_url: str, tmp_path: Path
) -> None:
    account = "acct_00000000000000a1"
    assert invoke("ledger", "check", *db_args(database_url, tmp_path)).exit_code == 0
    book = a_history(account)
    asyncio.run(_append(database_url, book.ledger.entries))

    sound = invoke("ledger", "check", *db_args(database_url, tmp_path))
    assert sound.exit_code == 0, sound.stderr
    assert "journal sound" in sound.stderr
    assert "10 (10000000000 units)" in sound.stdout  # minted
    assert f"1 holding {amount_text(TOKEN)}" in sound.stdout  # req-2 is still open

    asyncio.run(
        _execute(
            database_url,
            "UPDATE ledger_postings SET amount = amount + 7 WHERE entry_id = 1 AND account = :a",
            a=str(balance_of(account)),
        )
    )
    broken = invoke("ledger", "check", *db_args(database_url, tmp_path))
    assert broken.exit_code == 1
    assert "entry 1: postings sum to 7, not 0" in broken.stderr
    assert "cannot load the journal" in broken.stderr
    assert "journal unsound" in broken.stderr
    assert "journal sound" not in broken.stderr


@pytest.mark.integration
def test_ledger_check_finds_a_tampered_balance_row_while_the_book_still_replays(
    database_url: str, tmp_path: Path
) -> None:
    account = "acct_00000000000000a1"
    invoke("ledger", "check", *db_args(database_url, tmp_path))
    asyncio.run(_append(database_url, a_history(account).ledger.entries))
    asyncio.run(
        _execute(
            database_url, "UPDATE ledger_balances SET balance = balance - 3 WHERE account = 'fees'"
        )
    )
    result = invoke("ledger", "check", *db_args(database_url, tmp_path))
    assert result.exit_code == 1
    assert "the ledger_balances rows sum to -3, not 0" in result.stderr
    assert "ledger totals" in result.stdout  # the journal itself still replays


# ------------------------------------------------------------------ gateway commands, offline parts


@pytest.mark.parametrize(
    "args",
    [
        ("account", "balance", "--api-key", "tsk_test"),
        ("account", "usage", "--api-key", "tsk_test", "--limit", "5"),
        ("account", "fund", "1.5", "--api-key", "tsk_test"),
        ("stake", "status", "--provider", PROVIDER),
    ],
)
def test_no_gateway_listening_says_how_to_start_one(args: tuple[str, ...]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = invoke(*args, "--gateway", url)
    assert result.exit_code == 2
    assert f"no gateway at {url}; start one with `tessera gateway`" in " ".join(
        result.stderr.split()
    )
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args",
    [
        ("stake", "bond", "2"),
        ("stake", "unbond", "0.5"),
        ("stake", "withdraw"),
        ("stake", "fund", "100"),
        ("earnings", "withdraw", "1"),
        ("stake", "status"),
    ],
)
def test_signed_commands_load_the_key_file_then_meet_no_gateway(
    args: tuple[str, ...], tmp_path: Path
) -> None:
    key_file = tmp_path / "provider.key"
    load_or_create_key(key_file)
    url = f"http://127.0.0.1:{free_port()}"
    result = invoke(*args, "--key-file", str(key_file), "--gateway", url)
    assert result.exit_code == 2
    assert "no gateway at" in result.stderr


@pytest.mark.parametrize("args", [("stake", "bond", "2"), ("stake", "status")])
def test_a_missing_key_file_is_never_created(args: tuple[str, ...], tmp_path: Path) -> None:
    key_file = tmp_path / "provider.key"
    result = invoke(*args, "--key-file", str(key_file))
    assert result.exit_code == 2
    assert "run `tessera provider` once or pass --key-file" in " ".join(result.stderr.split())
    assert not key_file.exists()


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "provider.key"
    load_or_create_key(key_file)
    key_file.chmod(0o644)
    result = invoke("stake", "bond", "1", "--key-file", str(key_file))
    assert result.exit_code == 2
    assert "chmod 600" in result.stderr


def test_consumer_commands_need_an_api_key() -> None:
    result = invoke("account", "balance", "--gateway", f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == 2
    assert "TESSERA_API_KEY" in result.stderr


@pytest.mark.parametrize(
    ("amount", "says"),
    [("0", "more than 0"), ("1.0000000001", "9 decimal places"), ("lots", "not an amount")],
)
def test_bad_amounts_are_usage_errors(amount: str, says: str) -> None:
    result = invoke("account", "fund", amount, "--api-key", "tsk_test")
    assert result.exit_code == 2
    assert says in result.stderr


def test_stake_status_refuses_a_malformed_provider_id() -> None:
    result = invoke("stake", "status", "--provider", "../account")
    assert result.exit_code == 2
    assert "is not a provider id" in result.stderr


# ------------------------------------------------------------------ formatting


def test_error_message_reads_the_openai_error_body() -> None:
    body = {
        "error": {
            "message": "Minting is only allowed in dev mode.",
            "type": "permission_error",
            "param": None,
            "code": "forbidden",
        }
    }
    assert error_message(httpx.Response(403, json=body)) == "Minting is only allowed in dev mode."
    assert error_message(httpx.Response(502, text="upstream broke")) == (
        "the gateway answered 502 Bad Gateway: upstream broke"
    )
    assert error_message(httpx.Response(404, json={"detail": "Not Found"})) == (
        'the gateway answered 404 Not Found: {"detail":"Not Found"}'
    )
    assert error_message(httpx.Response(500)) == "the gateway answered 500 Internal Server Error"


def test_amounts_show_tokens_and_exact_units() -> None:
    assert amount_text(1_500_000_000) == "1.5 (1500000000 units)"
    assert amount_text(0) == "0 (0 units)"
    assert amount_text(None) == "-"
    assert cap_text(None) == "no cap"
    assert cap_text(TOKEN) == "1 (1000000000 units)"
    assert time_text(0) == "1970-01-01T00:00:00+00:00"
    assert time_text("2025-01-02T03:04:05+00:00") == "2025-01-02T03:04:05+00:00"


def test_render_account_shows_balances_and_caps() -> None:
    shown = render(
        render_account(
            {
                "object": "account",
                "id": "acct_1",
                "name": "lab",
                "balance": 3 * TOKEN,
                "held": TOKEN // 4,
                "available": 2 * TOKEN,
                "key": {
                    "id": "key_1",
                    "spend_cap_total": None,
                    "spend_cap_daily": TOKEN,
                    "spent_total": 5,
                    "spent_today": 0,
                    "held": TOKEN // 4,
                },
            }
        )
    )
    assert "acct_1 (lab)" in shown
    assert "3 (3000000000 units)" in shown
    assert "0.25 (250000000 units)" in shown
    assert "no cap" in shown
    assert "0.000000005 (5 units)" in shown


def test_render_provider_lists_unbonding_tranches() -> None:
    shown = render(
        render_provider(
            {
                "object": "provider",
                "id": PROVIDER,
                "connected": True,
                "routable": False,
                "min_stake": 10 * TOKEN,
                "earnings": 7,
                "balance": 0,
                "bonded": TOKEN,
                "unbonding": [{"amount": 2 * TOKEN, "release_at": 86_400.0}],
                "entry_id": 4,
                "replayed": False,
            }
        )
    )
    assert PROVIDER in shown
    assert "no (bonded stake below the minimum of 10)" in shown
    assert "10 (10000000000 units)" in shown
    assert "2 (2000000000 units), withdrawable from 1970-01-02T00:00:00+00:00" in shown


@pytest.mark.parametrize(
    ("connected", "bonded", "routable", "says"),
    [
        (True, 10 * TOKEN, True, "routable yes"),
        (False, 10 * TOKEN, False, "routable no (not connected)"),
        (False, 0, False, "no (not connected, bonded stake below the minimum of 10)"),
    ],
)
def test_render_provider_says_why_it_gets_no_work(
    connected: bool, bonded: int, routable: bool, says: str
) -> None:
    view = {"id": PROVIDER, "connected": connected, "routable": routable, "bonded": bonded}
    shown = render(render_provider({**view, "min_stake": 10 * TOKEN}))
    assert says in " ".join(shown.split())


def test_render_usage_shows_costs_in_tokens() -> None:
    shown = render(
        render_usage(
            {
                "object": "list",
                "has_more": False,
                "data": [
                    {
                        "request_id": "req_1",
                        "created_at": "2025-01-02T03:04:05+00:00",
                        "endpoint": "chat",
                        "model": "tiny",
                        "provider_id": PROVIDER,
                        "status": "ok",
                        "prompt_tokens": 12,
                        "completion_tokens": 3,
                        "cost": 1_250_000,
                    }
                ],
            }
        )
    )
    assert "req_1" in shown and "0.00125" in shown and PROVIDER[:12] + "…" in shown
