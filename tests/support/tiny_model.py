"""The tiny chat model for tests: built once per checkout, shared by parallel test processes.

``ensure_tiny_model()`` returns ``$TESSERA_TINY_MODEL_DIR`` when that holds a finished model,
else ``.cache/models/tessera-tiny`` under the repository root, training it there first if it
is missing. An ``fcntl`` lock keeps two processes from training at the same time; the one
that waited finds the finished model and reuses it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DIR = REPO_ROOT / ".cache" / "models" / "tessera-tiny"
ENV_VAR = "TESSERA_TINY_MODEL_DIR"
COMPLETE_STAMP = ".complete"  # tessera.models.make_tiny.COMPLETE_STAMP, without importing torch


def is_complete(model_dir: Path) -> bool:
    return (model_dir / COMPLETE_STAMP).is_file()


def ensure_tiny_model() -> Path:
    """A directory holding the finished tiny model (trains it on first use, a few minutes)."""
    configured = os.environ.get(ENV_VAR)
    if configured and is_complete(Path(configured)):
        return Path(configured)
    if is_complete(DEFAULT_DIR):
        return DEFAULT_DIR
    DEFAULT_DIR.parent.mkdir(parents=True, exist_ok=True)
    lock_path = DEFAULT_DIR.parent / f"{DEFAULT_DIR.name}.lock"
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not is_complete(DEFAULT_DIR):
                from tessera.models.make_tiny import make_tiny

                make_tiny(DEFAULT_DIR, show_progress=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return DEFAULT_DIR


def catalog_path(model_dir: Path) -> Path:
    """Where the model's calibrated catalog is kept: beside it, as `tessera demo` keeps it."""
    return model_dir.parent / f"{model_dir.name}.catalog.json"


def catalog_is_current(model_dir: Path, path: Path) -> bool:
    """True when ``path`` pins exactly the weights now in ``model_dir``."""
    from tessera.provider.model_hash import weights_sha256
    from tessera.verify.catalog import Catalog

    if not path.is_file():
        return False
    try:
        pinned = {m.weights_sha256 for m in Catalog.load(path).models()}
    except ValueError:
        return False
    return weights_sha256(model_dir) in pinned


def ensure_tiny_catalog(model_dir: Path) -> Path:
    """The tiny model's catalog, calibrated with the operator's command on first use."""
    import subprocess
    import sys

    path = catalog_path(model_dir)
    if catalog_is_current(model_dir, path):
        return path
    lock_path = path.parent / f"{path.name}.lock"
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not catalog_is_current(model_dir, path):
                path.unlink(missing_ok=True)
                done = subprocess.run(
                    [sys.executable, "-m", "tessera.cli", "catalog", "calibrate",
                     str(model_dir), "--catalog", str(path)],
                    capture_output=True,
                    text=True,
                    timeout=900,
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, "HF_HUB_OFFLINE": "1"},
                )  # fmt: skip
                if done.returncode != 0:
                    raise RuntimeError(f"catalog calibrate failed:\n{done.stdout}{done.stderr}")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path
