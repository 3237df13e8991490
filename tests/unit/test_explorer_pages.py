"""The explorer's server-drawn HTML: charts break at missing data instead of drawing 0,
and whatever a provider announces is escaped."""

from __future__ import annotations

import re

from tessera.explorer.network_pages import model_provider_tr
from tessera.explorer.pages import sparkline


def test_a_chart_breaks_where_there_is_no_data() -> None:
    points = [{"t": i, "value": v} for i, v in enumerate([1, 2, None, None, 4, None, 2])]
    svg = sparkline(points)
    lines = re.findall(r'<polyline[^>]*points="([^"]+)"', svg)
    assert len(lines) == 1 and len(lines[0].split()) == 2  # 1, 2; then a gap
    assert svg.count("<circle") == 2  # 4 and 2 stand alone between gaps
    assert "3 without data" in svg and "peak 4" in svg
    assert "no data in these 3 points" in sparkline([{"t": i, "value": None} for i in range(3)])
    assert sparkline([]) == '<p class="na">no data</p>'
    rate = sparkline([{"t": 0, "value": 0.5}, {"t": 1, "value": 0.25}], fmt="{:.1%}")
    assert "peak 50.0%" in rate


def test_announced_text_is_escaped() -> None:
    row = {
        "provider_id": "ab" * 32,
        "label": "<script>alert(1)</script>",
        "region": '"><img src=x>',
        "status": "routable",
        "price_input_per_mtok": 1,
        "price_output_per_mtok": 2,
        "uptime": {w: {"uptime": None, "checks": 0} for w in ("5m", "30m", "24h")},
        "measured": None,
    }
    html = model_provider_tr(row)
    assert "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;" in html and "&quot;&gt;&lt;img" in html
