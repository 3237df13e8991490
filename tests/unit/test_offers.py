"""Offers of one model name that disagree (issue 11, finding 9).

The first provider to announce an unpinned name used to decide its kind, context and
dimensions for everyone: one provider announcing MiniLM as text made every embeddings
request fail while three honest providers were up. Offers are now kept per provider and
the model follows the majority of its providers; a request goes only to those.
"""

from __future__ import annotations

import random

from tessera.market.registry import ProviderRegistry
from tessera.market.routing import Decision, Router, RouteRequest

from factories import capabilities, offer

MODEL = "minilm"


def pid(n: int) -> str:
    return f"{n:02x}" * 32


def join(registry: ProviderRegistry, n: int, **kw: object) -> None:
    made = offer(MODEL, kind=str(kw.pop("kind", "text")))
    made = made.model_validate({**made.model_dump(), **kw})
    caps = capabilities(models=[made]).model_copy(update={"public_key": pid(n)})
    registry.add(pid(n), caps, now=0.0)


def embedding(dims: int = 384, **kw: object) -> dict[str, object]:
    return {"kind": "embedding", "embedding_dimensions": dims, **kw}


def chosen(registry: ProviderRegistry, n: int = 40) -> set[str]:
    router = Router(random.Random(2))
    out = set()
    for _ in range(n):
        decision = router.choose(registry.pool(MODEL), RouteRequest(MODEL), now=0.0)
        assert isinstance(decision, Decision), decision
        out.add(decision.provider.provider_id)
    return out


def test_a_first_provider_announcing_the_wrong_kind_does_not_decide_the_model() -> None:
    registry = ProviderRegistry()
    join(registry, 0, kind="text")  # first, and wrong
    for n in (1, 2, 3):
        join(registry, n, **embedding())
    public = registry.offer(MODEL)
    assert public is not None
    assert (public.kind, public.embedding_dimensions) == ("embedding", 384)
    assert chosen(registry) == {pid(1), pid(2), pid(3)}
    [summary] = registry.summaries()
    assert (summary.kind, summary.embedding_dimensions) == ("embedding", 384)
    assert (summary.providers, summary.disagreeing) == (3, 1)
    assert not registry.fits(pid(0), MODEL)
    assert registry.fits(pid(1), MODEL)


def test_dimensions_that_disagree_are_another_shape() -> None:
    registry = ProviderRegistry()
    join(registry, 0, **embedding(768))
    join(registry, 1, **embedding(384))
    join(registry, 2, **embedding(384))
    public = registry.offer(MODEL)
    assert public is not None and public.embedding_dimensions == 384
    assert chosen(registry) == {pid(1), pid(2)}


def test_a_tie_keeps_the_shape_that_was_there_first_and_the_majority_can_change() -> None:
    registry = ProviderRegistry()
    join(registry, 0, **embedding())
    join(registry, 1, kind="text")
    assert registry.offer(MODEL).kind == "embedding"  # type: ignore[union-attr]
    assert chosen(registry) == {pid(0)}
    join(registry, 2, kind="text")
    assert registry.offer(MODEL).kind == "text"  # type: ignore[union-attr]
    assert chosen(registry) == {pid(1), pid(2)}
    registry.remove(pid(1))
    registry.remove(pid(2))
    assert registry.offer(MODEL).kind == "embedding"  # type: ignore[union-attr]
    registry.remove(pid(0))
    assert registry.offer(MODEL) is None
    assert registry.summaries() == []


def test_one_provider_cannot_shrink_or_stretch_the_public_context() -> None:
    registry = ProviderRegistry()
    join(registry, 0, context_length=1)  # first: used to be the model's context
    join(registry, 1, context_length=2048)
    join(registry, 2, context_length=2048)
    join(registry, 3, context_length=10_000_000)
    public = registry.offer(MODEL)
    assert public is not None and public.context_length == 2048
    [summary] = registry.summaries()
    assert summary.context_length == 2048


def test_the_public_vocabulary_is_the_one_most_providers_announce() -> None:
    registry = ProviderRegistry()
    join(registry, 0, vocab_size=10)
    join(registry, 1, vocab_size=9440)
    join(registry, 2, vocab_size=9440)
    join(registry, 3)  # a backend that cannot tell
    public = registry.offer(MODEL)
    assert public is not None and public.vocab_size == 9440
    registry.remove(pid(1))
    registry.remove(pid(2))
    assert registry.offer(MODEL).vocab_size == 10  # type: ignore[union-attr]
