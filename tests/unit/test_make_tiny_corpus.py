"""The shipped public-domain corpus and the chat samples built from it."""

from __future__ import annotations

from tessera.models.corpus import chat_samples, corpus_files, load_passages, parse_corpus_text


def test_every_corpus_file_says_what_it_is_and_that_it_is_public_domain() -> None:
    files = corpus_files()
    assert len(files) >= 2
    for path in files:
        header = path.read_text(encoding="utf-8").splitlines()[0]
        assert header.startswith("# ")
        assert "public domain" in header.lower(), path.name


def test_corpus_size_is_in_the_intended_range() -> None:
    total = sum(p.stat().st_size for p in corpus_files())
    assert 60_000 <= total <= 150_000


def test_parse_splits_titles_and_paragraphs_and_drops_the_header() -> None:
    text = (
        "# A HEADER LINE. Public domain.\n\nTHE FOX AND THE GRAPES\n\nA Fox saw\ngrapes.\n\n"
        "It is easy.\nTHE DOG IN THE MANGER\n\nA Dog lay down.\n"
    )
    first, second = parse_corpus_text(text, "x.txt")
    assert first.title == "THE FOX AND THE GRAPES"
    assert first.paragraphs == ("A Fox saw grapes.", "It is easy.")
    assert first.title_words == "The Fox and the Grapes"
    assert first.subjects == ("fox", "grapes")
    assert second.subjects == ("dog", "manger")
    assert second.text == "A Dog lay down."


def test_passages_have_titles_and_text() -> None:
    passages = load_passages()
    assert len(passages) >= 40
    assert len({p.title for p in passages}) == len(passages)
    assert all(p.text and p.subjects for p in passages)


def test_chat_samples_are_deterministic_and_answer_with_passages() -> None:
    passages = load_passages()
    a = chat_samples(passages, seed=3)
    assert a == chat_samples(passages, seed=3)
    assert a != chat_samples(passages, seed=4)
    texts = {p.text for p in passages}
    for sample in a:
        roles = [role for role, _ in sample.messages]
        assert roles[-2:] == ["user", "assistant"]
        assert sample.messages[-1][1] in texts
