"""`tessera gateway` refuses half a chain configuration before it starts anything."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tessera.cli import app

runner = CliRunner()


@pytest.mark.parametrize(
    "given",
    [["--chain-url", "http://127.0.0.1:8545"], ["--deployment", "deployment.json"]],
)
def test_a_chain_needs_both_its_url_and_its_deployment(
    tmp_path: Path, given: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TESSERA_GATEWAY_CHAIN_URL", raising=False)
    monkeypatch.delenv("TESSERA_GATEWAY_CHAIN_DEPLOYMENT", raising=False)
    result = runner.invoke(app, ["gateway", "--data-dir", str(tmp_path), *given])
    assert result.exit_code == 2
    assert "--chain-url and --deployment go together" in " ".join(result.output.split())
    assert list(tmp_path.iterdir()) == []  # refused before the gateway made anything


def test_an_unknown_log_format_is_refused_before_anything_starts(tmp_path: Path) -> None:
    result = runner.invoke(app, ["gateway", "--data-dir", str(tmp_path), "--log-format", "xml"])
    assert result.exit_code == 2
    assert "--log-format must be text or json" in " ".join(result.output.split())
    assert list(tmp_path.iterdir()) == []
