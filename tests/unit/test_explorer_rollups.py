"""The explorer's rollups: windows sum what happened in them, compare with the window
before, say "insufficient data" rather than 0, and stay bounded in memory."""

from __future__ import annotations

import random

import pytest

from tessera.explorer.rollups import (
    DAY,
    EARNING_DAYS,
    HOUR,
    MAX_POINTS,
    RECENT,
    AuditRow,
    Presence,
    Rollups,
    SlashRow,
    TapeRow,
    percentile,
    percentiles,
)

T0 = 1_780_000_000.0  # a fixed time: the rollups take time as an argument


def row(at: float, status: str = "ok", ttft: float | None = 100.0, n: int = 0) -> TapeRow:
    return TapeRow(f"req-{at}-{n}", at, "tessera-tiny", "ab" * 32, status, 3, 5, 1000, 250.0, ttft)


def test_a_window_sums_its_requests_and_compares_with_the_one_before() -> None:
    rollups = Rollups()
    for i in range(4):
        rollups.request(row(T0 - 2 * HOUR + 120 + i * 60, n=i))  # the previous hour
    for i in range(6):
        rollups.request(row(T0 - 30 * 60 + i * 60, n=i))
    rollups.request(row(T0 - 10 * 60, status="error", ttft=None))
    summary = rollups.summary(T0, "1h")
    kpis, before = summary["kpis"], summary["previous"]
    assert (kpis["requests"], kpis["ok"], kpis["errors"]) == (7, 6, 1)
    assert kpis["tokens"] == 7 * 8 and kpis["cost"] == 7000
    assert kpis["success_rate"] == round(6 / 7, 4)
    assert before is not None and before["requests"] == 4
    assert rollups.summary(T0, "24h")["kpis"]["requests"] == 11
    assert rollups.summary(T0, "all")["previous"] is None


def test_percentiles_need_samples_and_say_so() -> None:
    rollups = Rollups()
    for i in range(4):
        rollups.request(row(T0 - i, ttft=50.0, n=i))
    kpis = rollups.summary(T0, "1h")["kpis"]
    assert kpis["ttft_p50_ms"] is None and kpis["ttft_samples"] == 4  # not 0: unknown
    rollups.request(row(T0, ttft=2000.0, n=9))
    kpis = rollups.summary(T0, "1h")["kpis"]
    assert kpis["ttft_samples"] == 5
    assert 50.0 <= kpis["ttft_p50_ms"] < 50.0 * 1.25  # the bucket's upper edge
    assert 2000.0 <= kpis["ttft_p95_ms"] < 2000.0 * 1.25
    assert percentile([0] * 64, 0.5, 1.0) == (None, 0)


def test_a_series_has_bounded_points_and_no_data_is_not_zero() -> None:
    rollups = Rollups()
    for day in range(40):
        rollups.request(row(T0 - day * DAY, n=day))
    for window in ("1h", "24h", "7d", "30d", "all"):
        series = rollups.series(T0, window, "requests")
        assert 1 <= len(series["points"]) <= MAX_POINTS + 1
        assert (
            sum(p["value"] for p in series["points"])
            == rollups.summary(T0, window)["kpis"]["requests"]
        )
    empty = rollups.series(T0, "1h", "ttft_p50_ms")["points"]
    assert {p["value"] for p in empty} == {None}
    with pytest.raises(ValueError, match="unknown metric"):
        rollups.series(T0, "1h", "prompts")
    with pytest.raises(ValueError, match="unknown window"):
        rollups.summary(T0, "2h")


def test_memory_is_bounded_by_the_buckets_kept() -> None:
    rollups = Rollups(tape_size=3)
    for minute in range(0, 40 * 24 * 60, 7):
        rollups.request(row(T0 - minute * 60, n=minute))
    rollups.forget_before(T0)
    assert len(rollups.network.minutes) <= 2 * 24 * 60
    assert len(rollups.network.hours) <= 32 * 24 + 1
    assert len(rollups.tape) == 3
    assert rollups.summary(T0, "all")["kpis"]["requests"] == len(range(0, 40 * 24 * 60, 7))


def test_audits_and_slashes_count_in_their_window() -> None:
    rollups = Rollups()
    rollups.audit(AuditRow(T0 - 100, "req-1", "m", "passed", 0, 0, "p"))
    rollups.audit(AuditRow(T0 - 100, "req-2", "m", "upheld", 0, 0, "p"))
    rollups.slash(SlashRow(T0 - 100, "m", "tampered_output", 500, 200, "audit:req-2", "p"))
    rollups.audit(AuditRow(T0 - 3 * DAY, "req-3", "m", "cleared", 0, 0, "p"))
    kpis = rollups.summary(T0, "24h")["kpis"]
    assert (kpis["audits_passed"], kpis["audits_failed"], kpis["slashes"]) == (1, 1, 1)
    assert (kpis["slashed_units"], kpis["refunded_units"]) == (500, 200)
    assert rollups.summary(T0, "7d")["kpis"]["audits_passed"] == 2


def test_a_providers_record_keeps_models_audits_slashes_and_days_bounded() -> None:
    rollups = Rollups()
    provider = "ab" * 32
    for i in range(6):
        rollups.request(row(T0 - DAY - i, ttft=40.0 + i, n=i), tokens_per_s=20.0)
    rollups.request(row(T0, status="error", ttft=None, n=99))
    passed = AuditRow(T0, "req-1", "tessera-tiny", "passed", 0, 0, provider)
    upheld = AuditRow(T0 + 1, "req-2", "tessera-tiny", "upheld", 500, 200, provider)
    rollups.audit(passed)
    rollups.audit(upheld)
    rollups.audit(AuditRow(T0 + 2, "req-3", "tessera-tiny", "inconclusive", 0, 0, provider))
    rollups.slash(
        SlashRow(T0 + 1, "tessera-tiny", "wrong_output", 500, 200, "audit:req-2", provider)
    )
    detail = rollups.providers[provider].detail()
    model = detail["models"]["tessera-tiny"]
    assert (model["requests"], model["ok"], model["errors"]) == (7, 6, 1)
    assert model["ttft_ms"]["samples"] == 6 and model["ttft_ms"]["p50"] is not None
    assert model["ttft_ms"]["p50"] <= model["ttft_ms"]["p90"] <= model["ttft_ms"]["p99"]
    assert model["tokens_per_s"]["samples"] == 6
    assert detail["audits"]["passed"] == 1 and detail["audits"]["failed"] == 1
    assert [a["status"] for a in detail["audits"]["recent"]] == ["inconclusive", "upheld", "passed"]
    assert detail["slashes"]["count"] == 1 and detail["slashes"]["refunded_units"] == 200
    assert detail["slashes"]["recent"][0]["reference"] == "audit:req-2"
    # The window counts saw the audit and the slash once each.
    kpis = rollups.summary(T0 + 2, "1h")["kpis"]
    assert (kpis["audits_passed"], kpis["audits_failed"], kpis["slashes"]) == (1, 1, 1)
    # Paid per day: two days, and days past EARNING_DAYS are dropped.
    assert sum(d["cost"] for d in detail["paid_by_day"]) == 7000
    assert len(detail["paid_by_day"]) == 2
    later = T0 + (EARNING_DAYS + 2) * DAY
    assert rollups.providers[provider].detail(later)["paid_by_day"] == []
    # A request on a new day drops the days past EARNING_DAYS from what is kept.
    rollups.request(TapeRow("req-late", later, "tessera-tiny", provider, "ok", 1, 1, 90, 5.0, 1.0))
    assert list(rollups.providers[provider].by_day) == [later - later % DAY]
    for _ in range(RECENT + 5):
        rollups.audit(passed)
    assert len(rollups.providers[provider].detail()["audits"]["recent"]) == RECENT


def test_presence_counts_checks_per_minute_and_forgets_after_a_day() -> None:
    presence = Presence()
    pid = "cd" * 32
    assert presence.uptime(pid, T0, 5) == (None, 0)  # never checked: unknown, not 0
    start = T0 - T0 % 60
    for second in range(0, 10 * 60, 2):  # ten minutes, checked every 2 s
        presence.observe(pid, online=second < 8 * 60, now=start + second)  # down the last 2
    now = start + 10 * 60 - 1
    share, checks = presence.uptime(pid, now, 5)
    assert checks == 150 and share == round(90 / 150, 4)
    share, checks = presence.uptime(pid, now, 30)
    assert checks == 300 and share == 0.8
    windows = presence.windows(pid, now)
    assert windows["24h"] == {"uptime": 0.8, "checks": 300}
    # A gap: minutes nobody looked are unknown, then a day later all is forgotten.
    presence.observe(pid, True, now + 3600)
    assert presence.uptime(pid, now + 3600, 30) == (1.0, 1)
    later = now + DAY + 3600
    presence.observe(pid, True, later)
    assert presence.uptime(pid, later, 24 * 60) == (1.0, 1)


def test_presence_sums_equal_a_plain_count_of_every_check() -> None:
    rng = random.Random(3)
    presence = Presence()
    pid = "ef" * 32
    seen: list[tuple[int, bool]] = []
    t = T0
    for _ in range(3000):
        t += rng.choice([2, 2, 2, 60, 600, 5000])  # steady checks, gaps, long gaps
        online = rng.random() < 0.8
        presence.observe(pid, online, t)
        seen.append((int(t) // 60, online))
        last = int(t) // 60
        for minutes in (5, 30, 1440):
            now = t + rng.choice([0, 30, 120])
            low = max(int(now) // 60 - minutes, last - 1440)
            high = min(int(now) // 60, last)
            kept = [up for minute, up in seen if low < minute <= high]
            assert presence.counts(pid, now, minutes) == (sum(kept), len(kept))


def test_percentiles_read_the_same_bins_as_percentile() -> None:
    rng = random.Random(5)
    for _ in range(200):
        histogram = [rng.choice([0, 0, 1, 3, 20]) for _ in range(64)]
        quick = percentiles(histogram, 1.0)
        for name, q in (("p50", 0.5), ("p75", 0.75), ("p90", 0.9), ("p99", 0.99)):
            assert quick[name] == percentile(histogram, q, 1.0)[0]
        assert quick["samples"] == sum(histogram)
