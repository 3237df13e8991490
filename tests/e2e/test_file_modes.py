"""What a gateway or a demo keeps on disk (keys, the database and its WAL, logs, the demo's
plaintext API key) is readable by its owner only: the data directory 0700, every file in
it 0600. Real `tessera gateway` and `tessera demo` processes; every path under the data
directory is checked."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tessera.dev_money import fund_account

from support.gateway_process import gateway_process
from support.live_network import create_key

pytestmark = pytest.mark.e2e


def loose_paths(root: Path) -> list[str]:
    """Every path under ``root`` (itself included) that others may read, write or enter."""
    loose = []
    for path in [root, *sorted(root.rglob("*"))]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & 0o077:
            loose.append(f"{oct(mode)} {path.relative_to(root.parent)}")
    return loose


def test_a_gateway_keeps_its_data_dir_to_its_owner(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    with gateway_process(tmp_path / "harness", data_dir=data_dir) as gw:
        key = create_key(data_dir)
        fund_account(gw.base, key)  # the ledger writes, so the WAL holds pages
        assert httpx.get(f"{gw.base}/v1/account", headers={"Authorization": f"Bearer {key}"})
        names = {p.name for p in data_dir.iterdir()}
        assert {"gateway.key", "tessera.db", "tessera.db-wal", "tessera.db-shm"} <= names
        assert loose_paths(data_dir) == []
    assert loose_paths(data_dir) == []


def test_a_gateway_tightens_a_data_dir_left_open(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    (data_dir / "logs").mkdir(parents=True)
    (data_dir / "logs" / "old.log").write_text("an old log\n")
    (data_dir / "notes.txt").write_text("left by hand\n")
    for path, mode in [
        (data_dir, 0o755),
        (data_dir / "logs", 0o755),
        (data_dir / "logs" / "old.log", 0o644),
        (data_dir / "notes.txt", 0o666),
    ]:
        path.chmod(mode)
    with gateway_process(tmp_path / "harness", data_dir=data_dir) as gw:
        assert loose_paths(data_dir) == []
        logged = "".join(gw.log().split())  # the log wraps long lines
        assert f"tightened{data_dir / 'logs' / 'old.log'}from644to600" in logged


def test_a_gateway_refuses_a_key_others_could_read(tmp_path: Path) -> None:
    """A readable key may already have been copied: not tightened quietly, refused."""
    data_dir = tmp_path / "state"
    data_dir.mkdir()
    key = data_dir / "gateway.key"
    key.write_text("ab" * 32 + "\n")
    key.chmod(0o644)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tessera.cli",
            "gateway",
            "--port",
            "0",
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "chmod 600" in done.stdout + done.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o644


def test_a_demo_keeps_its_data_dir_to_its_owner(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "tessera.cli", "demo", "--providers", "0", "--once",
         "--port", "0", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    demo = json.loads((data_dir / "demo.json").read_text())
    assert demo["api_key"].startswith("tsk_")
    names = {p.relative_to(data_dir).as_posix() for p in data_dir.rglob("*")}
    assert {"demo.json", "tessera.db", "gateway.key", "logs/gateway.log"} <= names
    assert loose_paths(data_dir) == []


def test_a_key_made_before_any_gateway_ran_is_private_too(tmp_path: Path) -> None:
    """`tessera keys create` on a fresh data dir makes the database, under a lax umask."""
    data_dir = tmp_path / "state"
    subprocess.run(
        [sys.executable, "-m", "tessera.cli", "keys", "create", "--data-dir", str(data_dir)],
        check=True,
        capture_output=True,
        timeout=60,
        preexec_fn=lambda: os.umask(0o022),
    )
    assert (data_dir / "tessera.db").exists()
    assert loose_paths(data_dir) == []
