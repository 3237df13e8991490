"""The impostor model for cheating tests: the tiny model's recipe, another seed, far fewer
training steps. Same architecture, tokenizer and name, other weights: what a cheater
would serve under the real model's name and hash.

``ensure_impostor_model()`` builds it once per checkout with the real CLI
(``tessera models make-tiny DIR --steps 60 --seed 7``) under ``.cache/models`` and reuses
it while ``.complete`` is there; an ``fcntl`` lock keeps parallel test processes from
building it twice.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

from support.tiny_model import REPO_ROOT, is_complete

IMPOSTOR_DIR = REPO_ROOT / ".cache" / "models" / "tessera-impostor"
IMPOSTOR_STEPS = 60
IMPOSTOR_SEED = 7


def ensure_impostor_model(timeout_s: float = 1800) -> Path:
    """A directory holding the finished impostor model (built on first use)."""
    if is_complete(IMPOSTOR_DIR):
        return IMPOSTOR_DIR
    IMPOSTOR_DIR.parent.mkdir(parents=True, exist_ok=True)
    lock_path = IMPOSTOR_DIR.parent / f"{IMPOSTOR_DIR.name}.lock"
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not is_complete(IMPOSTOR_DIR):
                done = subprocess.run(
                    [sys.executable, "-m", "tessera.cli", "models", "make-tiny",
                     str(IMPOSTOR_DIR), "--steps", str(IMPOSTOR_STEPS),
                     "--seed", str(IMPOSTOR_SEED)],
                    capture_output=True,
                    text=True,
                    timeout=timeout_s,
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, "HF_HUB_OFFLINE": "1"},
                )  # fmt: skip
                if done.returncode != 0 or not is_complete(IMPOSTOR_DIR):
                    raise RuntimeError(
                        f"building the impostor model failed:\n{done.stdout}\n{done.stderr}"
                    )
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return IMPOSTOR_DIR
