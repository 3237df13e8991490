"""make_tiny with a few training steps: the directory it writes and its determinism."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tessera.models.make_tiny import COMPLETE_STAMP, MANIFEST, TinyRecipe, make_tiny
from tessera.provider.model_hash import weights_sha256

SMALL = TinyRecipe(
    vocab_size=600,
    hidden_size=32,
    intermediate_size=64,
    layers=1,
    heads=2,
    seq_len=32,
    batch_size=2,
    warmup_steps=1,
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "model"
    return make_tiny(out, steps=2, seed=0, show_progress=False, recipe=SMALL)


def test_writes_a_complete_directory(built: Path) -> None:
    names = {p.name for p in built.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        MANIFEST,
        COMPLETE_STAMP,
    } <= names
    config = json.loads((built / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in config["chat_template"]
    assert config["eos_token"] == "<|im_end|>"
    assert json.loads((built / "config.json").read_text())["max_position_embeddings"] == 1024
    assert not [p for p in built.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_manifest_records_the_weights_hash(built: Path) -> None:
    manifest = json.loads((built / MANIFEST).read_text())
    assert manifest["name"] == "tessera-tiny"
    assert manifest["weights_sha256"] == weights_sha256(built)
    assert manifest["trained_steps"] == 2
    assert manifest["corpus"]
    assert (built / COMPLETE_STAMP).read_text().strip() == manifest["weights_sha256"]


def test_same_seed_same_weights_other_seed_other_weights(built: Path, tmp_path: Path) -> None:
    again = make_tiny(tmp_path / "again", steps=2, seed=0, show_progress=False, recipe=SMALL)
    other = make_tiny(tmp_path / "other", steps=2, seed=1, show_progress=False, recipe=SMALL)
    assert weights_sha256(again) == weights_sha256(built)
    assert weights_sha256(other) != weights_sha256(built)


def test_rebuilding_replaces_the_directory(tmp_path: Path) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    make_tiny(out, steps=1, seed=0, show_progress=False, recipe=SMALL)
    assert not (out / "stale.txt").exists()
    assert (out / COMPLETE_STAMP).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
