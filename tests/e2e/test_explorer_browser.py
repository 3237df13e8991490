"""The explorer in a real browser: Debian's Chromium, headless, driven by Playwright (which
downloads no browser of its own), against a live gateway with a provider answering.

The page loads with no console error and no request leaving 127.0.0.1; its numbers are
its JSON twin's; a request sent with the official `openai` client appears on the live
tape without a reload; the tape's CSV download is the JSON; with JavaScript off every
number is still there. Screenshots at desktop and phone widths are saved for a human
look (``TESSERA_SCREENSHOTS``, default .cache/screenshots).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from openai import AsyncOpenAI
from playwright.async_api import Page, async_playwright, expect

from support.debian import ensure_program
from support.scripted_peers import MODEL, Peer, answer, live_gateway, priced
from support.tiny_model import REPO_ROOT

pytestmark = pytest.mark.e2e

SCREENSHOTS = Path(os.environ.get("TESSERA_SCREENSHOTS", REPO_ROOT / ".cache" / "screenshots"))
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def chromium() -> str:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return ensure_program("chromium", "chromium")


async def serve_jobs(peer: Peer) -> None:
    """Answer every job the gateway sends, as an honest agent would."""
    with contextlib.suppress(Exception):
        while True:
            frame = await peer.recv(timeout_s=60)
            if frame.get("type") == "job":
                await answer(peer, frame, text="a fable")


async def ask(client: AsyncOpenAI) -> str:
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me a fable."}], max_tokens=4
    )
    return raw.headers["x-request-id"]


def watch(page: Page, problems: list[str]) -> None:
    page.on(
        "console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None
    )
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))


async def test_the_explorer_in_chromium(tmp_path: Path, chromium: str) -> None:
    async with live_gateway(tmp_path, explorer_interval_s=0.2) as gw:
        peer, beat = await priced(gw)
        answering = asyncio.create_task(serve_jobs(peer))
        openai = AsyncOpenAI(base_url=f"{gw.base}/v1", api_key=gw.api_key, max_retries=0)
        public = httpx.AsyncClient(base_url=gw.base, timeout=30)
        first = await ask(openai)
        problems: list[str] = []
        outside: list[str] = []

        async def local_only(route: Any) -> None:
            if urlsplit(route.request.url).hostname == "127.0.0.1":
                await route.continue_()
            else:
                outside.append(route.request.url)
                await route.abort()

        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=chromium, args=FLAGS)
            try:
                context = await browser.new_context(viewport=DESKTOP, accept_downloads=True)
                await context.route("**/*", local_only)
                page = await context.new_page()
                watch(page, problems)
                await page.goto(f"{gw.base}/explorer?window=1h")
                await expect(page.locator(f'tr[data-request="{first}"]')).to_be_visible()
                # Live: the page's stream has delivered a snapshot; a new request shows up
                # on the tape without a reload.
                await expect(page.locator("body[data-version]")).to_have_count(1, timeout=10_000)
                second = await ask(openai)
                await expect(page.locator(f'tr[data-request="{second}"]')).to_be_visible(
                    timeout=10_000
                )
                # The numbers are the JSON twin's (the page updates live: wait for the count).
                summary = (await public.get("/explorer/api/v1/network/summary?window=1h")).json()
                await expect(page.locator('[data-k="kpis.requests"]')).to_have_text(
                    str(summary["kpis"]["requests"]), timeout=10_000
                )
                await expect(page.locator('[data-k="network.providers_online"]')).to_have_text(
                    str(summary["network"]["providers_online"])
                )
                await expect(page.locator('[data-k="ledger.holds"]')).to_have_text("holds")
                await page.screenshot(
                    path=SCREENSHOTS / "explorer-overview-desktop.png", full_page=True
                )
                # The tape's CSV, downloaded as a person would, is the JSON.
                async with page.expect_download() as info:
                    await page.click("text=tape CSV")
                download = await info.value
                text = await asyncio.to_thread((await download.path()).read_text)
                rows = list(csv.DictReader(io.StringIO(text)))
                tape = (await public.get("/explorer/api/v1/requests/recent")).json()["data"]
                assert [r["request_id"] for r in rows] == [r["request_id"] for r in tape]
                assert {first, second} <= {r["request_id"] for r in rows}

                # The providers list: its row, as the JSON has it.
                await page.goto(f"{gw.base}/explorer/providers")
                row = page.locator(f'tr[data-provider="{peer.provider_id}"]')
                await expect(row.locator('[data-k="status"]')).to_have_text("routable")
                listed = (await public.get("/explorer/api/v1/providers")).json()["data"]
                await expect(row.locator('[data-k="requests"]')).to_have_text(
                    str(listed[0]["measured"]["requests"])
                )
                await page.screenshot(
                    path=SCREENSHOTS / "explorer-providers-desktop.png", full_page=True
                )

                phone = await browser.new_context(viewport=PHONE, is_mobile=True)
                await phone.route("**/*", local_only)
                small = await phone.new_page()
                watch(small, problems)
                await small.goto(f"{gw.base}/explorer?window=24h")
                await expect(small.locator(f'tr[data-request="{second}"]')).to_be_attached()
                await small.screenshot(
                    path=SCREENSHOTS / "explorer-overview-phone.png", full_page=True
                )
                await small.goto(f"{gw.base}/explorer/providers")
                await expect(
                    small.locator(f'tr[data-provider="{peer.provider_id}"]')
                ).to_be_attached()
                await small.screenshot(
                    path=SCREENSHOTS / "explorer-providers-phone.png", full_page=True
                )

                # JavaScript off: the same numbers, from the HTML alone.
                static = await browser.new_context(viewport=DESKTOP, java_script_enabled=False)
                await static.route("**/*", local_only)
                plain = await static.new_page()
                await plain.goto(f"{gw.base}/explorer?window=1h")
                summary = (await public.get("/explorer/api/v1/network/summary?window=1h")).json()
                await expect(plain.locator('[data-k="kpis.requests"]')).to_have_text(
                    str(summary["kpis"]["requests"])
                )
                await expect(plain.locator(f'tr[data-request="{second}"]')).to_be_attached()
            finally:
                await browser.close()
        assert problems == []
        assert outside == []
        answering.cancel()
        beat.cancel()
        await openai.close()
        await public.aclose()
