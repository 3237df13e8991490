"""Request ids begin with the time, so the indexes keyed by them grow at one edge, and end
with 80 bits nobody without this process's key can predict."""

from __future__ import annotations

import itertools
import re
import time

import pytest

from tessera.gateway import http_limits
from tessera.gateway.http_limits import new_request_id


def test_an_id_is_the_time_in_milliseconds_then_twenty_unpredictable_hex_digits() -> None:
    before = int(time.time() * 1000)
    request_id = new_request_id()
    after = int(time.time() * 1000)
    assert re.fullmatch(r"req_[0-9a-f]{32}", request_id), request_id
    assert before <= int(request_id[4:16], 16) <= after


def test_ids_sort_by_when_they_were_made_and_never_repeat(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    millisecond = [1_765_000_000_000]
    monkeypatch.setattr(http_limits.time, "time", lambda: (millisecond[0] + 0.5) / 1000)
    made = []
    for _ in range(50):
        made.extend(new_request_id() for _ in range(200))  # 200 in one millisecond
        millisecond[0] += 1
    assert len(set(made)) == len(made)
    by_millisecond = [made[i : i + 200] for i in range(0, len(made), 200)]
    for earlier, later in itertools.pairwise(by_millisecond):
        assert max(earlier) < min(later)  # a later millisecond sorts after every earlier id
    tails = {request_id[16:] for request_id in by_millisecond[0]}
    assert len(tails) == 200  # within one millisecond, the random part tells them apart
