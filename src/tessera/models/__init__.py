"""Models Tessera makes itself: the tiny chat model used by tests and ``tessera demo``.

``make_tiny`` is imported lazily so that importing this package does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tessera.models.make_tiny import make_tiny

__all__ = ["make_tiny"]


def __getattr__(name: str) -> Any:
    if name == "make_tiny":
        from tessera.models.make_tiny import make_tiny

        return make_tiny
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
