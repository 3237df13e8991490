"""The tiny model directory is an ordinary Hugging Face model that says words."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from tessera.models.corpus import corpus_files
from tessera.provider.model_hash import weights_sha256

pytestmark = pytest.mark.integration


def test_directory_layout(tiny_model_dir: Path) -> None:
    for name in (
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "tessera-model.json",
        ".complete",
    ):
        assert (tiny_model_dir / name).is_file(), name


def test_manifest_hash_matches_the_weights(tiny_model_dir: Path) -> None:
    manifest = json.loads((tiny_model_dir / "tessera-model.json").read_text())
    assert manifest["name"] == "tessera-tiny"
    assert manifest["weights_sha256"] == weights_sha256(tiny_model_dir)
    assert manifest["trained_steps"] > 0
    assert manifest["corpus"] == [p.name for p in corpus_files()]
    assert manifest["final_loss"] < 5.0


def test_loads_with_auto_classes_and_renders_chat(tiny_model_dir: Path) -> None:
    config = AutoConfig.from_pretrained(tiny_model_dir, local_files_only=True)
    assert config.max_position_embeddings == 1024
    tok = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    assert tok.eos_token == "<|im_end|>"
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tell me a story."},
    ]
    rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nTell me a story.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = tok(rendered, add_special_tokens=False)["input_ids"]
    specials = {tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>")}
    assert sum(i in specials for i in ids) == 5  # each special token is one id
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True)
    n_params = sum(p.numel() for p in model.parameters())
    assert 1_000_000 < n_params < 6_000_000


def test_chat_answer_is_words_from_the_corpus(tiny_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True)
    known = {w.lower() for f in corpus_files() for w in re.findall(r"[A-Za-z]+", f.read_text())}
    words: list[str] = []
    for question in ("Tell me a story about a fox.", "What did the ant say?"):
        inputs = tok.apply_chat_template(
            [{"role": "user", "content": question}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        torch.manual_seed(0)
        out = model.generate(**inputs, max_new_tokens=80, do_sample=True, temperature=0.7)
        answer = tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        words += re.findall(r"[A-Za-z]+", answer)
    assert len(words) >= 5, words
    assert sum(w.lower() in known for w in words) / len(words) > 0.7, words
