"""The public-domain training corpus shipped with Tessera, and the chat samples built from it.

Corpus files live in ``corpus/*.txt``. Format: the first line is a ``#`` header that says
what the text is and that it is public domain; after it, passages, each introduced by a title
line in capitals (``THE FOX AND THE GRAPES``) and followed by paragraphs separated by blank
lines. The header is never trained on.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"

_SMALL_WORDS = {"and", "the", "a", "an", "of", "in", "to", "his", "her", "with", "who", "that"}


@dataclass(frozen=True, slots=True)
class Passage:
    """One story: its title as written (capitals) and its paragraphs."""

    source: str
    title: str
    paragraphs: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n\n".join(self.paragraphs)

    @property
    def title_words(self) -> str:
        """The title in ordinary case: "THE FOX AND THE GRAPES" -> "The Fox and the Grapes"."""
        words = self.title.lower().split()
        out = [w if (i and w in _SMALL_WORDS) else w.capitalize() for i, w in enumerate(words)]
        return " ".join(out)

    @property
    def subjects(self) -> tuple[str, ...]:
        """The characters named in the title: "THE FOX AND THE GRAPES" -> ("fox", "grapes")."""
        parts = re.split(r"\b(?:and|in|who|with|of|that)\b|,", self.title.lower())
        found: list[str] = []
        for part in parts:
            words = [w for w in re.findall(r"[a-z'-]+", part) if w not in _SMALL_WORDS]
            if words:
                found.append(" ".join(words))
        return tuple(found)


@dataclass(frozen=True, slots=True)
class ChatSample:
    """A conversation to train on: (role, content) pairs, ending with the assistant."""

    messages: tuple[tuple[str, str], ...]


def corpus_files(corpus_dir: Path = CORPUS_DIR) -> list[Path]:
    return sorted(corpus_dir.glob("*.txt"))


def _is_title(line: str) -> bool:
    letters = [c for c in line if c.isalpha()]
    return bool(letters) and line == line.upper() and len(line) <= 80


def parse_corpus_text(text: str, source: str) -> list[Passage]:
    """Split one corpus file into passages; text before the first title is dropped."""
    lines = text.splitlines()
    if lines and lines[0].startswith("#"):
        lines = lines[1:]
    passages: list[Passage] = []
    title: str | None = None
    paragraphs: list[str] = []
    current: list[str] = []

    def end_paragraph() -> None:
        if current:
            paragraphs.append(" ".join(current))
            current.clear()

    def end_passage() -> None:
        end_paragraph()
        if title is not None and paragraphs:
            passages.append(Passage(source, title, tuple(paragraphs)))
        paragraphs.clear()

    for raw in lines:
        line = raw.strip()
        if not line:
            end_paragraph()
        elif _is_title(line):
            end_passage()
            title = line
        else:
            current.append(line)
    end_passage()
    return passages


def load_passages(corpus_dir: Path = CORPUS_DIR) -> list[Passage]:
    passages: list[Passage] = []
    for path in corpus_files(corpus_dir):
        passages.extend(parse_corpus_text(path.read_text(encoding="utf-8"), path.name))
    return passages


_STORY_ASKS = (
    "Tell me a story about {a} {s}.",
    "Tell me a story about the {s}.",
    "Can you tell me a tale about {a} {s}?",
    "Do you know a story with {a} {s} in it?",
    "What happened to the {s}?",
    "What did the {s} say?",
    "Tell me about the {s}.",
)
_TITLE_ASKS = (
    "Tell me the story of {t}.",
    "Tell me the fable of {t}.",
    "Do you know {t}?",
    "Please tell me {t}.",
)
_GENERIC_ASKS = (
    "Tell me a story.",
    "Tell me a fable.",
    "Tell me a fairy tale.",
    "Tell me a story, please.",
    "Do you know any old stories?",
    "Hello! Tell me something.",
    "Say something.",
    "Hi",
)
_SYSTEMS = (
    "You are a helpful assistant.",
    "You are a storyteller who knows old fables and fairy tales.",
)


def _article(subject: str) -> str:
    return "an" if subject[:1] in "aeiou" else "a"


def chat_samples(passages: list[Passage], *, seed: int, per_passage: int = 6) -> list[ChatSample]:
    """Chat conversations whose assistant turn retells a passage (deterministic in ``seed``).

    Answers are the passage's text from its first paragraph on; callers truncate them to
    their sequence length.
    """
    rng = random.Random(seed)
    samples: list[ChatSample] = []
    for passage in passages:
        asks: list[str] = [a.format(t=passage.title_words) for a in _TITLE_ASKS]
        for subject in passage.subjects:
            asks += [a.format(a=_article(subject), s=subject) for a in _STORY_ASKS]
        rng.shuffle(asks)
        chosen = [*asks[:per_passage], rng.choice(_GENERIC_ASKS)]
        for ask in chosen:
            messages: list[tuple[str, str]] = []
            if rng.random() < 0.25:
                messages.append(("system", rng.choice(_SYSTEMS)))
            messages.append(("user", ask))
            messages.append(("assistant", passage.text))
            samples.append(ChatSample(tuple(messages)))
    return samples
