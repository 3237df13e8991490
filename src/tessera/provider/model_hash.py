"""Model identity: the SHA-256 of a model directory's weight files.

Definition (stable, documented, so any party can recompute it):
for every weight file under the directory (suffixes in WEIGHT_SUFFIXES, found recursively,
sorted by POSIX relative path) take the line ``"<relative path>\\0<sha256 hex of file>\\n"``;
the model hash is the SHA-256 of those lines concatenated. Config and tokenizer files are
not part of it: they do not change what the weights compute.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tessera.errors import ConfigError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_CHUNK_BYTES = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def weight_files(model_dir: Path) -> list[Path]:
    """Weight files under ``model_dir``, sorted by relative path."""
    files = [p for p in model_dir.rglob("*") if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES]
    return sorted(files, key=lambda p: p.relative_to(model_dir).as_posix())


def weights_sha256(model_dir: Path) -> str:
    """The model hash of ``model_dir``; ConfigError if it holds no weight files."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ConfigError(f"model directory {model_dir} does not exist")
    files = weight_files(model_dir)
    if not files:
        raise ConfigError(
            f"no weight files ({', '.join(WEIGHT_SUFFIXES)}) under {model_dir}; "
            "point --model-dir at a Hugging Face model directory"
        )
    outer = hashlib.sha256()
    for path in files:
        rel = path.relative_to(model_dir).as_posix()
        outer.update(f"{rel}\0{file_sha256(path)}\n".encode())
    return outer.hexdigest()
