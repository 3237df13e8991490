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
import json
import os
import signal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from openai import AsyncOpenAI
from playwright.async_api import Page, async_playwright, expect

from tessera.units import format_tokens

from support.audit_peers import gateway_with_a_cheat
from support.debian import ensure_program
from support.live_network import TEXT_MODEL, LiveNetwork
from support.scripted_peers import MODEL, Peer, answer, chat_body, live_gateway, priced
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


async def ask(client: AsyncOpenAI, model: str = MODEL) -> str:
    raw = await client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "Tell me a fable."}], max_tokens=4
    )
    return raw.headers["x-request-id"]


def watch(page: Page, problems: list[str]) -> None:
    page.on(
        "console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None
    )
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on(
        "response",
        lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None,
    )


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

                # Every other page, at both widths: loads clean, shows its JSON's numbers.
                economics = (await public.get("/explorer/api/v1/economics")).json()
                models = (await public.get("/explorer/api/v1/models")).json()["data"]
                checks = {
                    "models": (
                        f'[data-k="models.{MODEL}.providers_online"]',
                        str(models[0]["providers_online"]),
                    ),
                    "economics": ('[data-k="ledger.holds"]', "holds"),
                    "claims": ('[data-k="claims.0.shown"]', None),
                    "audits": ('[data-k="audits.failed"]', "0"),
                    "slashes": ('[data-k="slashes.count"]', "0"),
                    "epochs": ("#epochs, main p.na", None),
                    "receipts": ("#receipt-form", None),
                    f"models/{MODEL}": (
                        '[data-k="model.providers_online"]',
                        str(models[0]["providers_online"]),
                    ),
                }
                assert economics["ledger"]["holds"] is True
                for name, (selector, text) in checks.items():
                    for width, viewing in (("desktop", page), ("phone", small)):
                        await viewing.goto(f"{gw.base}/explorer/{name}")
                        shown = viewing.locator(selector).first
                        await expect(shown).to_be_attached()
                        if text is not None:
                            await expect(shown).to_have_text(text)
                        await viewing.screenshot(
                            path=SCREENSHOTS / f"explorer-{name.replace('/', '-')}-{width}.png",
                            full_page=True,
                        )
                # A live list: the models page counts a new request without a reload.
                await page.goto(f"{gw.base}/explorer/models")
                await expect(page.locator("body[data-version]")).to_have_count(1, timeout=10_000)
                count = page.locator(f'tr[data-provider="{peer.provider_id}"] [data-k="requests"]')
                before = int(await count.inner_text())
                await ask(openai)
                await expect(count).to_have_text(str(before + 1), timeout=10_000)
                # A model's page is live too: its request count follows without a reload.
                await page.goto(f"{gw.base}/explorer/models/{MODEL}?window=1h")
                await expect(page.locator("body[data-version]")).to_have_count(1, timeout=10_000)
                shown = page.locator('[data-k="kpis.requests"]')
                before = int(await shown.inner_text())
                await ask(openai)
                await expect(shown).to_have_text(str(before + 1), timeout=10_000)
                twin = (await public.get(f"/explorer/api/v1/models/{MODEL}?window=1h")).json()
                assert twin["summary"]["kpis"]["requests"] == before + 1
                claims = (await public.get("/explorer/api/v1/claims")).json()["data"]
                await page.goto(f"{gw.base}/explorer/claims")
                await expect(page.locator('[data-k="claims.0.shown"]')).to_have_text(
                    claims[0]["shown"]
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


async def test_receipts_verify_in_chromium_and_a_killed_provider_turns_offline(
    network: LiveNetwork, chromium: str
) -> None:
    """On a real network (gateway and provider processes): a receipt pasted on its request
    page verifies in the browser, and each tampering is refused with the check that failed;
    a provider's page turns offline, live, when its process is killed with SIGKILL."""
    openai = AsyncOpenAI(base_url=f"{network.base}/v1", api_key=network.api_key, max_retries=0)
    consumer = httpx.AsyncClient(
        base_url=network.base, timeout=60, headers={"Authorization": f"Bearer {network.api_key}"}
    )
    first, second = await ask(openai, TEXT_MODEL), await ask(openai, TEXT_MODEL)
    receipt = (await consumer.get(f"/v1/receipts/{first}")).json()
    other = (await consumer.get(f"/v1/receipts/{second}")).json()
    problems: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=FLAGS)
        try:
            context = await browser.new_context(viewport=DESKTOP)
            page = await context.new_page()
            watch(page, problems)
            await page.goto(f"{network.base}/explorer/requests/{first}")
            await expect(page.locator('[data-k="request.status"]')).to_have_text("ok")

            async def check(pasted: dict[str, Any]) -> list[str]:
                await page.fill("#receipt", json.dumps(pasted, indent=2))
                await page.click("text=Verify in this browser")
                await expect(page.locator("#receipt-result[data-verdict]")).to_have_count(1)
                verdict = await page.locator("#receipt-result").get_attribute("data-verdict")
                lines = await page.locator("#receipt-result p").all_inner_texts()
                await page.evaluate("document.getElementById('receipt-result')"
                                    ".removeAttribute('data-verdict')")  # fmt: skip
                return [verdict or "", *lines]

            good = await check(receipt)
            assert good[0] == "pass", good
            assert sum(line.startswith("✓") for line in good) == 4, good
            await page.screenshot(path=SCREENSHOTS / "explorer-request-desktop.png", full_page=True)
            more = json.loads(json.dumps(receipt))
            more["receipt"]["completion_tokens"] += 1  # a bigger bill than was signed
            refused = await check(more)
            assert refused[0] == "fail"
            assert any("provider's signature does not verify" in x for x in refused), refused
            forged = json.loads(json.dumps(receipt))
            sig = forged["gateway_signature"]
            forged["gateway_signature"] = ("0" if sig[0] != "0" else "1") + sig[1:]
            refused = await check(forged)
            assert any("countersignature does not verify" in x for x in refused), refused
            assert any(x.startswith("✓ the provider's signature") for x in refused), refused
            elsewhere = await check(other)  # genuine, but another request's
            assert elsewhere[0] == "fail" and any("another request" in x for x in elsewhere)
            garbage = await check({"receipt": "no"})
            assert garbage[0] == "fail" and "not a Tessera receipt" in garbage[1]

            # A provider's page, live; its process is killed and the page says offline.
            listed = (await consumer.get("/explorer/api/v1/providers")).json()["data"]
            victim = next(r for r in listed if r["label"] == "e2e-1")
            await page.goto(f"{network.base}/explorer/providers/{victim['provider_id']}")
            status = page.locator('[data-k="provider.status"]')
            await expect(status).to_have_text("routable")
            await expect(page.locator("body[data-version]")).to_have_count(1, timeout=10_000)
            await page.screenshot(
                path=SCREENSHOTS / "explorer-provider-desktop.png", full_page=True
            )
            proc = next(p for name, p in network.network.processes if name == "provider-1")
            os.kill(proc.pid, signal.SIGKILL)
            await expect(status).to_have_text("offline", timeout=30_000)  # no reload

            phone = await browser.new_context(viewport=PHONE, is_mobile=True)
            small = await phone.new_page()
            watch(small, problems)
            await small.goto(f"{network.base}/explorer/requests/{first}")
            await small.screenshot(path=SCREENSHOTS / "explorer-request-phone.png", full_page=True)
            await small.goto(f"{network.base}/explorer/providers/{victim['provider_id']}")
            await expect(small.locator('[data-k="provider.status"]')).to_have_text("offline")
            await small.screenshot(path=SCREENSHOTS / "explorer-provider-phone.png", full_page=True)
        finally:
            await browser.close()
    assert problems == []
    await openai.close()
    await consumer.aclose()


async def test_a_slash_shows_its_evidence_and_refund_in_chromium(
    tmp_path: Path, chromium: str
) -> None:
    """A provider caught answering with another model's text: in the browser, the slashes
    page shows the slash with the consumer's refund, and its evidence link opens the audit
    case; the request's page shows the audit upheld."""

    async with gateway_with_a_cheat(tmp_path, explorer_interval_s=0.2) as (gw, client, _, _):
        async with httpx.AsyncClient(base_url=gw.base) as public:
            response = await client.post("/v1/chat/completions", json=chat_body())
            assert response.status_code == 200, response.text
            request_id = response.headers["x-request-id"]
            async with asyncio.timeout(30):
                while not (await public.get("/explorer/api/v1/audits")).json()["data"]:
                    await asyncio.sleep(0.1)
            (slash,) = (await public.get("/explorer/api/v1/slashes")).json()["data"]
            problems: list[str] = []
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(executable_path=chromium, args=FLAGS)
                try:
                    page = await (await browser.new_context(viewport=DESKTOP)).new_page()
                    watch(page, problems)
                    await page.goto(f"{gw.base}/explorer/slashes")
                    row = page.locator("#slashes tbody tr").first
                    await expect(row).to_contain_text("tampered_output")
                    await expect(row).to_contain_text(format_tokens(slash["refunded_units"]))
                    await expect(page.locator('[data-k="slashes.count"]')).to_have_text("1")
                    await page.screenshot(
                        path=SCREENSHOTS / "explorer-slashes-caught-desktop.png", full_page=True
                    )
                    # Follow the evidence link (read, then opened: the live page may swap
                    # the row under a click).
                    link = row.locator(f"text=audit case {request_id}")
                    href = await link.get_attribute("href")
                    assert href == f"/explorer/audits/{request_id}"
                    await page.goto(f"{gw.base}{href}")
                    case = (await public.get(f"/explorer/api/v1/audits/{request_id}")).json()
                    assert case["case"]["status"] == "upheld" and case["case"]["refunded"] == 5_000
                    await expect(page.locator('[data-k="case.status"]')).to_contain_text("upheld")
                    await expect(page.locator('[data-k="case.refunded"]')).to_have_text(
                        f"{format_tokens(case['case']['refunded'])} tokens"
                    )
                    await expect(page.locator("section.audit").first).to_contain_text("failed")
                    await page.screenshot(
                        path=SCREENSHOTS / "explorer-audit-case-desktop.png", full_page=True
                    )
                    phone = await (await browser.new_context(viewport=PHONE)).new_page()
                    watch(phone, problems)
                    await phone.goto(f"{gw.base}/explorer/audits/{request_id}")
                    await expect(phone.locator('[data-k="case.status"]')).to_contain_text("upheld")
                    await phone.screenshot(
                        path=SCREENSHOTS / "explorer-audit-case-phone.png", full_page=True
                    )
                    await page.goto(f"{gw.base}/explorer/requests/{request_id}")
                    await expect(page.locator("#facts")).to_contain_text("upheld")
                finally:
                    await browser.close()
            assert problems == []
