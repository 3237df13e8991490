"""The README's slashing table is the one the gateway enforces: docs cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

from tessera.ledger.slashing_table import DEFAULT_RULES

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_publishes_the_default_slashing_table() -> None:
    rows = re.findall(
        r"^\| `(\w+)` \| (\d+) % \| (yes|no) \| (.+?) \|$", README.read_text(), re.MULTILINE
    )
    documented = {(r, int(pct) * 100, ban == "yes", what) for r, pct, ban, what in rows}
    enforced = {(r.reason, r.stake_bps, r.ban, r.description) for r in DEFAULT_RULES}
    assert documented == enforced
