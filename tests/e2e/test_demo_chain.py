"""`tessera demo` as `make demo` runs it: on a local chain by default. Every tour step must
pass, the last being a provider cashing its cheque on chain; demo.json names the chain
and the contracts; and a second run starts a new chain without tripping over the first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def run_demo(data_dir: Path, model_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tessera.cli", "demo", "--providers", "2", "--once",
         "--port", "0", "--data-dir", str(data_dir), "--model-dir", str(model_dir), *extra],
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"},
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_the_demo_settles_on_a_chain_run_after_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    data_dir = tmp_path / "demo"
    first = run_demo(data_dir, tiny_model_dir)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    assert "settled on chain │ yes" in first.stdout
    assert "journal vs vault: agree" in first.stdout
    demo = json.loads((data_dir / "demo.json").read_text())
    assert set(demo["contracts"]) == {"token", "registry", "stake", "vault"}
    assert demo["chain_url"].startswith("http://127.0.0.1:")
    second = run_demo(data_dir, tiny_model_dir)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    assert (data_dir / "tessera.db.previous").exists()  # the first chain's ledger, kept
