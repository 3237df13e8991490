"""Status badges (SVG) a provider can put in its README or a dashboard: what the network
sees of it now, drawn on the server from the last snapshot.

Pure string building; every shown text is escaped, and the width follows the text."""

from __future__ import annotations

from html import escape

COLOURS = {"ok": "#1a7f37", "bad": "#cf222e", "na": "#6e7781"}
_CHAR_PX = 6.6  # average advance of the 11 px sans-serif used, wide enough for digits
_PAD = 10


def badge(label: str, value: str, tone: str) -> str:
    """A two-part badge: ``label`` on grey, ``value`` on the tone's colour."""
    left = round(len(label) * _CHAR_PX) + _PAD
    right = round(len(value) * _CHAR_PX) + _PAD
    width = left + right
    colour = COLOURS.get(tone, COLOURS["na"])
    shown_label, shown_value = escape(label), escape(value)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="20" role="img" '
        f'aria-label="{shown_label}: {shown_value}"><title>{shown_label}: {shown_value}</title>'
        f'<rect width="{left}" height="20" rx="3" fill="#3c4650"/>'
        f'<rect x="{left}" width="{right}" height="20" rx="3" fill="{colour}"/>'
        f'<rect x="{left - 4}" width="8" height="20" fill="{colour}"/>'
        f'<rect x="{left - 4}" width="4" height="20" fill="#3c4650"/>'
        '<g fill="#fff" font-family="DejaVu Sans,Verdana,Geneva,sans-serif" font-size="11">'
        f'<text x="{left / 2:g}" y="14" text-anchor="middle">{shown_label}</text>'
        f'<text x="{left + right / 2:g}" y="14" text-anchor="middle">{shown_value}</text>'
        "</g></svg>"
    )


def provider_badge(status: str, uptime: float | None, checks: int) -> str:
    """``status`` now and the share of the last day's checks that found it connected."""
    tone = {"routable": "ok", "offline": "bad"}.get(status, "na")
    seen = "no checks yet" if uptime is None else f"{uptime * 100:.1f}% up 24h (n={checks})"
    return badge("tessera provider", f"{status} · {seen}", tone)


def network_badge(online: int, success_rate: float | None) -> str:
    """Providers online and the last day's success rate."""
    rate = "no requests 24h" if success_rate is None else f"{success_rate * 100:.1f}% ok 24h"
    tone = "na" if success_rate is None else "ok" if success_rate >= 0.95 else "bad"
    return badge("tessera", f"{online} providers · {rate}", tone if online else "bad")
