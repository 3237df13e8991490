"""What every part of the front-door bench shares: where things are, what is measured,
and the results being gathered."""

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "bench"
LITELLM_VENV = CACHE / "litellm-venv"
LITELLM_SPEC = "litellm[proxy]"
MOCK_SCRIPT = REPO / "bench" / "mock_upstream.py"
RESULTS = REPO / "bench" / "RESULTS.md"
LOAD_CORE, SERVER_CORE = 0, 1
MODEL = "mock"
MESSAGES = [{"role": "user", "content": "Tell me a story about a fox."}]
MAX_TOKENS = 4
STALL_S = 0.100
CONCURRENCY = (1, 16, 64)
RATES = (100, 500, 1500)
STREAMS = (64, 128, 256)
ROWS = {
    "direct": "mock called directly",
    "litellm": "LiteLLM proxy, 1 worker on core 1",
    "tessera-shared": "Tessera: gateway and agent on core 1",
    "tessera-split": "Tessera: gateway on core 1, agent on core 0",
}
CONTENT_FIELD = re.compile(rb'"(?:content|text)"\s*:\s*"(?!")')


@dataclass
class Target:
    name: str
    port: int
    key: str | None
    pids: list[int]  # server processes to wait on after overload


@dataclass
class Results:
    closed: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    open: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    streams: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    memory: list[tuple[str, dict[str, float]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
