"""``tessera models make-tiny``: train the small chat model that tests and the demo serve.

The result is an ordinary Hugging Face model directory (Llama architecture, byte-level BPE
tokenizer with a ChatML template) that ``AutoModelForCausalLM`` / ``AutoTokenizer`` load
unchanged. Training runs on the CPU in a few minutes and is deterministic for a seed on a
given machine. The directory appears atomically; ``.complete`` inside it means it is whole.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from tessera.models.corpus import ChatSample, Passage, chat_samples, corpus_files, load_passages
from tessera.provider.model_hash import weights_sha256

MODEL_NAME = "tessera-tiny"
DEFAULT_STEPS = 360
COMPLETE_STAMP = ".complete"
MANIFEST = "tessera-model.json"

BOS, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True, slots=True)
class TinyRecipe:
    """Shape and training schedule of the tiny model."""

    vocab_size: int = 3072
    hidden_size: int = 192
    intermediate_size: int = 512
    layers: int = 4
    heads: int = 6
    context_length: int = 1024
    seq_len: int = 256
    batch_size: int = 12
    peak_lr: float = 3e-3
    warmup_steps: int = 20
    chat_fraction: float = 0.5


def train_tokenizer(
    passages: list[Passage], vocab_size: int, context_length: int
) -> PreTrainedTokenizerFast:
    """Byte-level BPE over the corpus text, with ChatML special tokens and template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[BOS, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [p.title_words + "\n\n" + p.text for p in passages]
    texts += ["user", "assistant", "system", "Tell me a story about a fox."]
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=IM_END,
        pad_token=BOS,
        chat_template=CHAT_TEMPLATE,
        model_max_length=context_length,
        clean_up_tokenization_spaces=False,
    )


def _encode_chat(tok: PreTrainedTokenizerFast, sample: ChatSample, seq_len: int) -> list[int]:
    """Token ids of a rendered chat; an over-long answer is cut at a sentence end."""
    messages = [{"role": r, "content": c} for r, c in sample.messages]
    while True:
        text = tok.apply_chat_template(messages, tokenize=False)
        ids: list[int] = tok(str(text), add_special_tokens=False, verbose=False)["input_ids"]
        answer = messages[-1]["content"]
        if len(ids) <= seq_len + 1:
            return ids
        cut = max(answer.rfind(". ", 0, len(answer) - 2), answer.rfind('." ', 0, len(answer) - 2))
        if cut <= 0:
            return ids[: seq_len + 1]
        messages[-1] = {"role": "assistant", "content": answer[: cut + 1]}


class _Batches:
    """Deterministic batches of plain-text windows and padded chat conversations."""

    def __init__(
        self, tok: PreTrainedTokenizerFast, passages: list[Passage], recipe: TinyRecipe, seed: int
    ) -> None:
        self.recipe = recipe
        self.rng = random.Random(seed)
        stream: list[int] = []
        for p in passages:
            text = p.title_words + "\n\n" + p.text
            stream += tok(text, add_special_tokens=False, verbose=False)["input_ids"]
            stream.append(tok.convert_tokens_to_ids(BOS))
        self.stream = stream
        self.chats = [
            _encode_chat(tok, s, recipe.seq_len) for s in chat_samples(passages, seed=seed)
        ]
        self.pad_id = int(tok.pad_token_id or 0)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        r = self.recipe
        width = r.seq_len + 1
        while True:
            rows: list[list[int]] = []
            labels: list[list[int]] = []
            for _ in range(r.batch_size):
                if self.rng.random() < r.chat_fraction:
                    ids = self.rng.choice(self.chats)[:width]
                    pad = width - len(ids)
                    rows.append(ids + [self.pad_id] * pad)
                    labels.append(ids + [-100] * pad)
                else:
                    start = self.rng.randrange(0, len(self.stream) - width)
                    ids = self.stream[start : start + width]
                    rows.append(ids)
                    labels.append(ids)
            yield torch.tensor(rows)[:, :-1], torch.tensor(labels)[:, :-1]


def build_model(tok: PreTrainedTokenizerFast, recipe: TinyRecipe) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.heads,
        num_key_value_heads=recipe.heads,
        max_position_embeddings=recipe.context_length,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return LlamaForCausalLM(config)


def _lr_at(step: int, steps: int, recipe: TinyRecipe) -> float:
    if step < recipe.warmup_steps:
        return recipe.peak_lr * (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, steps - recipe.warmup_steps)
    return recipe.peak_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _train(
    model: LlamaForCausalLM, batches: _Batches, steps: int, recipe: TinyRecipe, show: bool
) -> float:
    """Run ``steps`` AdamW steps; returns the mean loss of the last few steps."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    opt = torch.optim.AdamW(model.parameters(), lr=recipe.peak_lr, betas=(0.9, 0.95))
    model.train()
    recent: list[float] = []
    columns = (
        TextColumn("training tessera-tiny"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not show) as progress:
        task = progress.add_task("train", total=steps, loss=float("nan"))
        for step, (inputs, labels) in zip(range(steps), batches, strict=False):
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, steps, recipe)
            loss = model(input_ids=inputs, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            recent = [*recent[-19:], float(loss.item())]
            progress.update(task, advance=1, loss=sum(recent) / len(recent))
    model.eval()
    return sum(recent) / len(recent) if recent else float("nan")


def _write_dir(
    tmp: Path,
    tok: PreTrainedTokenizerFast,
    model: LlamaForCausalLM,
    steps: int,
    final_loss: float,
) -> None:
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp, save_jinja_files=False)
    # The generic class name, so older transformers and other runtimes load it too.
    tok_config_path = tmp / "tokenizer_config.json"
    tok_config = json.loads(tok_config_path.read_text(encoding="utf-8"))
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_config.pop("backend", None)
    tok_config_path.write_text(json.dumps(tok_config, indent=2) + "\n", encoding="utf-8")
    eos_ids = [tok.convert_tokens_to_ids(IM_END), tok.convert_tokens_to_ids(BOS)]
    GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=eos_ids, pad_token_id=tok.pad_token_id
    ).save_pretrained(tmp)
    digest = weights_sha256(tmp)
    manifest = {
        "name": MODEL_NAME,
        "weights_sha256": digest,
        "trained_steps": steps,
        "corpus": [p.name for p in corpus_files()],
        "final_loss": round(final_loss, 4),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    mode = 0o777 & ~_umask()
    tmp.chmod(mode)
    for path in tmp.iterdir():
        path.chmod(mode & 0o666)
    (tmp / COMPLETE_STAMP).write_text(digest + "\n", encoding="utf-8")


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move ``tmp`` to ``out_dir``; an old ``out_dir`` is swapped out, then removed."""
    old: Path | None = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        out_dir.rename(old / out_dir.name)
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def make_tiny(
    out_dir: Path,
    *,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    show_progress: bool = True,
    recipe: TinyRecipe | None = None,
) -> Path:
    """Train the tiny model and write it to ``out_dir`` (replacing what is there).

    Returns ``out_dir``. ``.complete`` is the last file written, so a directory that has it
    is whole. Same seed, steps and machine -> identical weights.
    """
    recipe = recipe or TinyRecipe()
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    random.seed(seed)
    torch.manual_seed(seed)
    passages = load_passages()
    tok = train_tokenizer(passages, recipe.vocab_size, recipe.context_length)
    model = build_model(tok, recipe)
    batches = _Batches(tok, passages, recipe, seed)
    final_loss = _train(model, batches, steps, recipe, show_progress)
    hf_logging.disable_progress_bar()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _write_dir(tmp, tok, model, steps, final_loss)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if show_progress:
        from rich.console import Console

        n_params = sum(p.numel() for p in model.parameters())
        Console(stderr=True).print(
            f"wrote {MODEL_NAME} to {out_dir} ({n_params / 1e6:.2f}M params, "
            f"{steps} steps, loss {final_loss:.3f}, {time.monotonic() - started:.0f}s)"
        )
    return out_dir


if __name__ == "__main__":  # pragma: no cover - manual use
    import sys

    make_tiny(Path(sys.argv[1] if len(sys.argv) > 1 else ".cache/models/tessera-tiny"))
    os._exit(0)
