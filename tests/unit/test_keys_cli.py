"""`tessera keys`: limits given at creation, changed later field by field, listed; every
change stamps the key so running gateways pick it up (the change signal)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from typer.testing import CliRunner

from tessera.cli import app
from tessera.store.api_keys import ApiKeyRecord, ApiKeyStore, KeyLimits
from tessera.store.engine import create_engine, database_url_for

runner = CliRunner()


def stored(data_dir: Path, key_id: str) -> ApiKeyRecord:
    async def get() -> ApiKeyRecord | None:
        engine = create_engine(database_url_for(data_dir))
        try:
            return await ApiKeyStore(engine).get(key_id)
        finally:
            await engine.dispose()

    record = asyncio.run(get())
    assert record is not None
    return record


def keys(*args: str) -> str:
    result = runner.invoke(app, ["keys", *args])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())  # rich wraps long lines


def test_limits_at_creation_then_changed_one_by_one(tmp_path: Path) -> None:
    where = ["--data-dir", str(tmp_path)]
    created = json.loads(
        keys("create", "--name", "bot", "--max-concurrency", "2", "--rpm", "30", "--json", *where)
    )
    key_id = created["id"]
    first = stored(tmp_path, key_id)
    assert first.limits == KeyLimits(2, 30, None)

    out = keys("limits", key_id, "--tpm", "5000", *where)
    assert "tokens per minute 5000" in out
    second = stored(tmp_path, key_id)
    assert second.limits == KeyLimits(2, 30, 5000)  # the others kept
    assert second.changed_at is not None and first.changed_at is not None
    assert second.changed_at > first.changed_at

    keys("limits", key_id, "--max-concurrency", "0", *where)
    assert stored(tmp_path, key_id).limits == KeyLimits(0, 30, 5000)

    listed = keys("list", *where)
    assert "0/30/5000" in listed

    out = keys("limits", key_id, "--default", *where)
    assert "gateway defaults" in out
    assert stored(tmp_path, key_id).limits == KeyLimits()


def test_limits_refuses_bad_input(tmp_path: Path) -> None:
    where = ["--data-dir", str(tmp_path)]
    key_id = json.loads(keys("create", "--json", *where))["id"]
    nothing = runner.invoke(app, ["keys", "limits", key_id, *where])
    assert nothing.exit_code == 2
    both = runner.invoke(app, ["keys", "limits", key_id, "--rpm", "3", "--default", *where])
    assert both.exit_code == 2
    negative = runner.invoke(app, ["keys", "limits", key_id, "--rpm", "-1", *where])
    assert negative.exit_code != 0
    missing = runner.invoke(app, ["keys", "limits", "key_0000000000000000", "--rpm", "3", *where])
    assert missing.exit_code == 1
    assert stored(tmp_path, key_id).limits == KeyLimits()


def test_a_policy_the_router_would_refuse_is_a_clear_error_and_changes_nothing(
    tmp_path: Path,
) -> None:
    where = ["--data-dir", str(tmp_path)]
    key_id = json.loads(keys("create", "--json", *where))["id"]
    for command in (
        ["policy", key_id, '{"regions_allow": ["nowhere"]}'],
        ["create", "--policy", "[1]"],
    ):
        result = runner.invoke(app, ["keys", *command, *where])
        assert result.exit_code == 2, result.output  # fail(): a usage error, no traceback
        assert "Traceback" not in result.output
        assert "a key policy is a JSON object" in " ".join(result.output.split())
    assert stored(tmp_path, key_id).policy_json is None
    assert keys("list", *where).count("key_") == 1  # the refused create stored nothing
