"""The explorer served by a real gateway: a request shows on the live tape (JSON, HTML,
CSV and the Server-Sent Events stream all agree), the page's numbers are its JSON twin's,
no prompt or answer text leaks, and bad parameters get OpenAI-style errors."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from html import escape as escaped
from pathlib import Path
from typing import Any

import httpx
import pytest

from tessera.units import format_tokens

from support.audit_peers import gateway_with_a_cheat
from support.scripted_peers import answer, chat_body, live_gateway, priced

pytestmark = pytest.mark.integration

SECRET_PROMPT = "the-prompt-nobody-may-see"
SECRET_ANSWER = "the-answer-nobody-may-see"


async def one_request(client: httpx.AsyncClient, peer: Any) -> str:
    body = chat_body()
    body["messages"] = [{"role": "user", "content": SECRET_PROMPT}]
    request = asyncio.create_task(client.post("/v1/chat/completions", json=body))
    await answer(peer, await peer.recv(), text=SECRET_ANSWER)
    response = await request
    assert response.status_code == 200, response.text
    return response.headers["x-request-id"]


async def until(client: httpx.AsyncClient, path: str, check: Any) -> Any:
    async with asyncio.timeout(10):
        while True:
            body = (await client.get(path)).json()
            if check(body):
                return body
            await asyncio.sleep(0.05)


async def test_a_request_shows_everywhere_alike_and_without_its_text(gateway_dir: Path) -> None:
    async with live_gateway(gateway_dir, explorer_interval_s=0.1) as gw, gw.client() as client:
        peer, beat = await priced(gw)
        public = httpx.AsyncClient(base_url=gw.base, timeout=30)  # no API key: it is public
        # A live page's stream, opened before the request.
        events: list[dict[str, Any]] = []

        async def listen() -> None:
            async with public.stream("GET", "/explorer/api/v1/stream?window=1h") as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                async for line in stream.aiter_lines():
                    if line.startswith("data: "):
                        events.append(json.loads(line[6:]))

        listener = asyncio.create_task(listen())
        request_id = await one_request(client, peer)
        tape = await until(
            public,
            "/explorer/api/v1/requests/recent",
            lambda body: any(r["request_id"] == request_id for r in body["data"]),
        )
        row = next(r for r in tape["data"] if r["request_id"] == request_id)
        assert row["provider_id"] == peer.provider_id and row["status"] == "ok"
        assert (row["prompt_tokens"], row["completion_tokens"], row["cost"]) == (3, 1, 5000)
        async with asyncio.timeout(10):
            while not any(request_id in e["html"]["tape"] for e in events):
                await asyncio.sleep(0.05)
        listener.cancel()

        summary = (await public.get("/explorer/api/v1/network/summary?window=1h")).json()
        assert summary["kpis"]["requests"] == 1 and summary["kpis"]["cost"] == 5000
        assert summary["kpis"]["earned"] == 5000 - 5000 * 500 // 10_000  # after the 5 % fee
        assert summary["network"]["providers_online"] == 1
        assert summary["ledger"]["holds"] is True and summary["ledger"]["problems"] == []
        page = await public.get("/explorer?window=1h")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        html = page.text
        assert request_id in html
        shown = dict(re.findall(r'data-k="([^"]+)">([^<]*)<', html))
        assert shown["kpis.requests"] == str(summary["kpis"]["requests"])
        charts = re.findall(r'<figure data-metric="([a-z_0-9]+)"><figcaption>([^<]+)<', html)
        assert [m for m, _ in charts] == ["requests", "success_rate", "ttft_p50_ms"]
        assert all("1 hour, per minute" in caption for _, caption in charts)
        weekly = (await public.get("/explorer?window=7d")).text
        assert "7 days, per hour" in weekly
        assert shown["network.providers_online"] == str(summary["network"]["providers_online"])
        assert shown["ledger.holds"] == "holds"
        # CSV is the JSON, row for row.
        text = (await public.get("/explorer/api/v1/requests/recent?format=csv")).text
        rows = list(csv.DictReader(io.StringIO(text)))
        assert [r["request_id"] for r in rows] == [r["request_id"] for r in tape["data"]]
        assert rows[0]["cost"] == str(tape["data"][0]["cost"])
        series = (
            await public.get("/explorer/api/v1/network/series?metric=requests&window=1h")
        ).json()
        assert sum(p["value"] for p in series["points"]) == 1
        # A model nobody serves is not written on the public tape as the consumer typed it.
        made_up = await client.post(
            "/v1/chat/completions", json=chat_body(model="buy-my-coin-at-example")
        )
        assert made_up.status_code == 404
        tape = await until(
            public,
            "/explorer/api/v1/requests/recent",
            lambda body: body["data"][0]["request_id"] == made_up.headers["x-request-id"],
        )
        assert tape["data"][0]["model"] == "(unknown model)"
        assert "buy-my-coin" not in (await public.get("/explorer")).text + json.dumps(tape)
        # Counts, ids and times only: never what was asked or answered.
        everything = html + text + json.dumps(summary) + json.dumps(events)
        assert SECRET_PROMPT not in everything and SECRET_ANSWER not in everything
        assert (await public.get("/explorer/static/explorer.js")).status_code == 200
        await public.aclose()
        beat.cancel()


async def test_bad_parameters_are_refused_and_streams_are_capped(gateway_dir: Path) -> None:
    async with live_gateway(gateway_dir, explorer_max_streams=0) as gw:
        async with httpx.AsyncClient(base_url=gw.base, timeout=30) as public:
            for path in (
                "/explorer/api/v1/network/summary?window=2h",
                "/explorer/api/v1/network/series?metric=prompts",
                "/explorer/api/v1/requests/recent?format=xml",
                "/explorer?window=forever",
            ):
                response = await public.get(path)
                assert response.status_code == 400, (path, response.text)
                assert response.json()["error"]["type"] == "invalid_request_error"
            full = await public.get("/explorer/api/v1/stream")
            assert full.status_code == 503 and full.json()["error"]["code"] == "explorer_full"
            assert (await public.get("/explorer")).status_code == 200  # the page still works
            # The index lists every JSON answer, each of which answers.
            index = (await public.get("/explorer/api")).json()["data"]
            assert (await public.get("/explorer/api/v1")).json()["data"] == index
            paths = {entry["path"]: entry for entry in index}
            assert paths["/explorer/api/v1/providers"]["csv"] is True
            assert "/explorer/api/v1/models/{model}" in paths
            for path in paths:
                if "{" not in path and not path.endswith("/stream"):
                    assert (await public.get(path)).status_code == 200, path


async def test_providers_are_listed_as_measured_and_stay_listed_offline(gateway_dir: Path) -> None:
    async with live_gateway(gateway_dir, explorer_interval_s=0.1) as gw, gw.client() as client:
        peer, beat = await priced(gw)
        public = httpx.AsyncClient(base_url=gw.base, timeout=30)
        await one_request(client, peer)
        listed = await until(
            public,
            "/explorer/api/v1/providers",
            lambda body: body["data"] and (body["data"][0]["measured"] or {}).get("requests") == 1,
        )
        (row,) = listed["data"]
        assert row["provider_id"] == peer.provider_id and row["status"] == "routable"
        assert row["measured"]["cost"] == 5000 and row["measured"]["success_rate"] == 1.0
        assert row["declared"]["models"][0]["model"] == "scripted-model"
        region = row["region"]
        # Filters and CSV answer from the same rows.
        assert (await public.get(f"/explorer/api/v1/providers?region={region}")).json()["data"]
        assert not (await public.get("/explorer/api/v1/providers?region=ZZ")).json()["data"]
        assert not (await public.get("/explorer/api/v1/providers?model=other")).json()["data"]
        prefix = peer.provider_id[:8]
        found = (await public.get(f"/explorer/api/v1/providers?q={prefix}")).json()
        assert found["total"] == 1 and found["data"][0]["uptime_24h"]["checks"] >= 1
        assert (await public.get("/explorer/api/v1/providers?q=zz")).json()["total"] == 0
        assert (await public.get("/explorer/api/v1/providers?gpu=H100")).json()["total"] == 0
        paged = (await public.get("/explorer/api/v1/providers?offset=1")).json()
        assert paged["total"] == 1 and paged["data"] == []
        form = (await public.get(f"/explorer/providers?q={prefix}&status=")).text
        assert 'data-k="providers.total">1<' in form and '<form method="get"' in form
        text = (await public.get("/explorer/api/v1/providers?format=csv")).text
        (line,) = list(csv.DictReader(io.StringIO(text)))
        assert line["provider_id"] == peer.provider_id and line["requests"] == "1"
        page = (await public.get("/explorer/providers")).text
        assert peer.provider_id in page and ">routable<" in page
        # Its badge says what the list says; the network's counts it.
        badge = await public.get(f"/explorer/providers/{peer.provider_id}/badge.svg")
        assert badge.headers["content-type"] == "image/svg+xml" and "<svg" in badge.text
        assert "routable · 100.0% up 24h" in badge.text and "#1a7f37" in badge.text
        network = (await public.get("/explorer/badge.svg")).text
        assert "1 providers · 100.0% ok 24h" in network
        unknown = await public.get(f"/explorer/providers/{'0' * 64}/badge.svg")
        assert unknown.status_code == 404
        # It leaves: listed offline, its measured record kept.
        beat.cancel()
        await peer.ws.close()
        gone = await until(
            public,
            "/explorer/api/v1/providers",
            lambda body: body["data"][0]["status"] == "offline",
        )
        assert gone["data"][0]["measured"]["requests"] == 1
        offline = await public.get("/explorer/api/v1/providers?status=offline")
        assert [r["provider_id"] for r in offline.json()["data"]] == [peer.provider_id]
        assert ">offline<" in (await public.get("/explorer/providers?status=offline")).text
        badge = await public.get(f"/explorer/providers/{peer.provider_id}/badge.svg")
        assert "offline · " in badge.text and "#cf222e" in badge.text
        bad = await public.get("/explorer/api/v1/providers?sort=cheapest")
        assert bad.status_code == 400
        await public.aclose()


async def test_a_providers_page_shows_its_record_and_why_and_updates_live(
    gateway_dir: Path,
) -> None:
    async with live_gateway(gateway_dir, explorer_interval_s=0.1) as gw, gw.client() as client:
        peer, beat = await priced(gw)
        public = httpx.AsyncClient(base_url=gw.base, timeout=30)
        pid = peer.provider_id
        path = f"/explorer/api/v1/providers/{pid}"
        events: list[dict[str, Any]] = []

        async def listen() -> None:
            async with public.stream("GET", f"/explorer/api/v1/stream?provider={pid}") as stream:
                async for line in stream.aiter_lines():
                    if line.startswith("data: "):
                        events.append(json.loads(line[6:]))

        await until(public, path, lambda body: "provider" in body)  # in a snapshot now
        listener = asyncio.create_task(listen())
        request_id = await one_request(client, peer)
        detail = await until(
            public, path, lambda body: (body.get("record") or {}).get("requests") == 1
        )
        assert detail["provider"]["provider_id"] == pid
        (offer,) = detail["offers"]
        assert offer["model"] == "scripted-model" and len(offer["weights_sha256"]) == 64
        assert offer["audited"] is False  # not pinned in this gateway's catalog
        stats = detail["record"]["models"]["scripted-model"]
        assert stats["requests"] == 1 and stats["ttft_ms"]["p50"] is None  # n=1: too few
        assert stats["ttft_ms"]["samples"] == 1
        assert detail["record"]["paid_by_day"][0]["cost"] == 5000
        assert detail["record"]["paid_by_day"][0]["earned"] == 4750
        assert detail["reputation"]["formula"][0].startswith("score = ")
        assert detail["routing"]["connected"] is True
        assert detail["routing"]["models"][0]["model"] == "scripted-model"
        assert detail["uptime"]["current"]["connected"] is True
        assert detail["ledger"]["bonded"] == detail["provider"]["bonded"]
        # The page shows the JSON's numbers, and no content.
        html = (await public.get(f"/explorer/providers/{pid}")).text
        shown = dict(re.findall(r'data-k="([^"]+)">([^<]*)<', html))
        assert shown["provider.measured.requests"] == "1"
        assert shown["provider.status"] == "routable"
        assert offer["weights_sha256"] in html and "insufficient data (n=1)" in html
        assert "score = 0.3 * completion" in html
        assert SECRET_PROMPT not in html and SECRET_ANSWER not in html
        # Live: the stream sends the page's body; the provider leaves and it says offline.
        beat.cancel()
        await peer.ws.close()
        async with asyncio.timeout(10):
            while not any(
                'data-k="provider.status">offline<' in e["html"].get("main", "") for e in events
            ):
                await asyncio.sleep(0.05)
        listener.cancel()
        # Bad and unknown ids.
        bad = await public.get("/explorer/api/v1/providers/not-a-key")
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "provider_id"
        unknown = await public.get(f"/explorer/providers/{'0' * 64}")
        assert unknown.status_code == 404
        assert (await public.get(f"/explorer/api/v1/stream?provider={'0' * 64}")).status_code == 404
        assert request_id in (await public.get("/explorer")).text
        await public.aclose()


async def test_a_requests_page_shows_its_money_without_its_consumer(gateway_dir: Path) -> None:
    async with live_gateway(gateway_dir, explorer_interval_s=0.1) as gw, gw.client() as client:
        peer, beat = await priced(gw)
        public = httpx.AsyncClient(base_url=gw.base, timeout=30)
        account = (await client.get("/v1/account")).json()
        request_id = await one_request(client, peer)
        path = f"/explorer/api/v1/requests/{request_id}"
        detail = await until(
            public,
            path,
            lambda body: (
                "request" in body and {e["kind"] for e in body["entries"]} >= {"hold", "capture"}
            ),
        )
        row = detail["request"]
        assert row["provider_id"] == peer.provider_id and row["cost"] == 5000
        assert row["price_input_per_mtok"] is not None
        assert f"provider={peer.provider_id[:16]}" in row["route"]
        assert "score=" in row["route"] and "considered=1/1" in row["route"]
        assert detail["audit"] is None
        gateway = (await public.get("/v1/gateway")).json()
        assert detail["gateway"]["public_key"] == gateway["public_key"]
        accounts = {p["account"] for e in detail["entries"] for p in e["postings"]}
        assert "hold:consumer" in accounts
        assert f"earnings:{peer.provider_id}" in accounts
        for entry in detail["entries"]:
            assert sum(p["amount"] for p in entry["postings"]) == 0  # balanced, as journaled
        everything = json.dumps(detail)
        html = (await public.get(f"/explorer/requests/{request_id}")).text
        for shown in (everything, html):
            assert account["id"] not in shown  # whose request it was stays private
            assert SECRET_PROMPT not in shown and SECRET_ANSWER not in shown
        facts = dict(re.findall(r'data-k="([^"]+)">([^<]*)<', html))
        assert facts["request.cost"] == "0.000005 tokens" and facts["request.status"] == "ok"
        assert gateway["public_key"] in html and 'src="/explorer/static/receipt.js"' in html
        assert "considered=1/1</code>" in html
        # The overview's tape links to it (once a snapshot has it); the checker also
        # stands alone.
        await until(
            public,
            "/explorer/api/v1/requests/recent",
            lambda body: any(r["request_id"] == request_id for r in body["data"]),
        )
        assert f'href="/explorer/requests/{request_id}"' in (await public.get("/explorer")).text
        alone = await public.get("/explorer/receipts")
        assert alone.status_code == 200 and gateway["public_key"] in alone.text
        script = await public.get("/explorer/static/receipt.js")
        assert script.status_code == 200 and "Ed25519" in script.text
        assert (await public.get("/explorer/static/other.js")).status_code == 404
        unknown = await public.get("/explorer/api/v1/requests/req_nothing")
        assert unknown.status_code == 404 and "/explorer/receipts" in unknown.text
        bad = await public.get("/explorer/requests/%3Cscript%3E")
        assert bad.status_code == 400
        await public.aclose()
        beat.cancel()


async def test_models_list_every_provider_with_uptime_and_percentiles(gateway_dir: Path) -> None:
    async with live_gateway(gateway_dir, explorer_interval_s=0.1) as gw, gw.client() as client:
        peer, beat = await priced(gw)
        public = httpx.AsyncClient(base_url=gw.base, timeout=30)
        for _ in range(5):  # five samples: enough for percentiles
            await one_request(client, peer)
        body = await until(
            public,
            "/explorer/api/v1/models",
            lambda b: (
                b["data"] and (b["data"][0]["providers"][0]["measured"] or {}).get("requests") == 5
            ),
        )
        (model,) = body["data"]
        assert model["model"] == "scripted-model" and model["providers_online"] == 1
        (row,) = model["providers"]
        assert row["provider_id"] == peer.provider_id and row["status"] == "routable"
        assert row["uptime"]["5m"]["uptime"] == 1.0 and row["uptime"]["5m"]["checks"] >= 1
        ttft = row["measured"]["ttft_ms"]
        assert ttft["samples"] == 5 and ttft["p50"] is not None
        assert ttft["p50"] <= ttft["p75"] <= ttft["p90"] <= ttft["p99"]
        text = (await public.get("/explorer/api/v1/models?format=csv")).text
        (line,) = list(csv.DictReader(io.StringIO(text)))
        assert line["provider_id"] == peer.provider_id and line["requests"] == "5"
        assert line["ttft_p50_ms"] == f"{ttft['p50']}" or float(line["ttft_p50_ms"]) == ttft["p50"]
        html = (await public.get("/explorer/models")).text
        assert (
            peer.provider_id in html
            and 'data-k="models.scripted-model.providers_online">1<' in html
        )
        page = (await public.get(f"/explorer/providers/{peer.provider_id}")).text
        assert "Seen connected by this gateway" in page
        # The model's own page: its providers and its requests over the window.
        assert 'href="/explorer/models/scripted-model"' in html
        detail = (await public.get("/explorer/api/v1/models/scripted-model?window=1h")).json()
        assert detail["window"] == "1h" and detail["model"]["model"] == "scripted-model"
        (served,) = detail["model"]["providers"]  # as in the list, a later snapshot
        assert served["provider_id"] == peer.provider_id and served["measured"] == row["measured"]
        kpis = detail["summary"]["kpis"]
        assert kpis["requests"] == 5 and kpis["ttft_samples"] == 5
        assert sum(p["value"] for p in detail["series"]["requests"]["points"]) == 5
        series = await public.get(
            "/explorer/api/v1/network/series?metric=requests&window=1h&model=scripted-model"
        )
        assert series.json()["points"] == detail["series"]["requests"]["points"]
        model_html = (await public.get("/explorer/models/scripted-model?window=1h")).text
        assert '<div class="v " data-k="kpis.requests">5</div>' in model_html
        assert peer.provider_id in model_html and 'data-metric="tokens_per_s_p50"' in model_html
        for unknown in ("/explorer/api/v1/models/no-such-model", "/explorer/models/a/b%3Cc"):
            gone = await public.get(unknown)
            assert gone.status_code == 404, unknown
            assert "no provider this gateway has seen" in gone.json()["error"]["message"]
        unserved = await public.get("/explorer/api/v1/network/series?model=no-such-model")
        assert unserved.status_code == 404
        # Live: the models page's stream sends its <main>, and a request changes it.
        events: list[dict[str, Any]] = []

        async def listen(path: str = "/explorer/api/v1/stream?page=models") -> None:
            async with public.stream("GET", path) as stream:
                async for line in stream.aiter_lines():
                    if line.startswith("data: "):
                        events.append(json.loads(line[6:]))

        listener = asyncio.create_task(listen())
        async with asyncio.timeout(10):
            while not events:
                await asyncio.sleep(0.05)
        assert '<td class="num" data-k="requests">5</td>' in events[-1]["html"]["main"]
        await one_request(client, peer)
        async with asyncio.timeout(10):
            while '<td class="num" data-k="requests">6</td>' not in events[-1]["html"]["main"]:
                await asyncio.sleep(0.05)
        listener.cancel()
        bad = await public.get("/explorer/api/v1/stream?page=ledger")
        assert bad.status_code == 400
        # The model page is live too: its stream sends its <main>.
        events.clear()
        listener = asyncio.create_task(listen("/explorer/api/v1/stream?model=scripted-model"))
        async with asyncio.timeout(10):
            while not events:
                await asyncio.sleep(0.05)
        assert '<div class="v " data-k="kpis.requests">6</div>' in events[-1]["html"]["main"]
        listener.cancel()
        gone = await public.get("/explorer/api/v1/stream?model=no-such-model")
        assert gone.status_code == 404
        await public.aclose()
        beat.cancel()


async def test_economics_and_claims_are_the_ledgers_and_the_windows(gateway_dir: Path) -> None:
    async with (
        live_gateway(gateway_dir, explorer_interval_s=0.1, explorer_token_usd="0.5") as gw,
        gw.client() as client,
    ):
        peer, beat = await priced(gw)
        public = httpx.AsyncClient(base_url=gw.base, timeout=30)
        await one_request(client, peer)
        eco = await until(
            public,
            "/explorer/api/v1/economics",
            lambda b: b["paid_by_consumers"]["24h"] == 5000 and b["price_index"]["data"],
        )
        ledger = (await client.get("/v1/ledger")).json()
        assert eco["ledger"]["holds"] is True and eco["ledger"]["minted"] > 0
        assert eco["policy"]["fee_bps"] == 500
        assert {r["reason"] for r in eco["policy"]["slashing"]} >= {"forged_receipt"}
        (row,) = eco["price_index"]["data"]
        assert row["model"] == "scripted-model" and row["usd_per_mtok_blended"] is not None
        assert eco["price_index"]["token_usd"] == "0.5"
        assert row["references"][0]["cheaper_by_percent"] is not None
        html = (await public.get("/explorer/economics")).text
        shown = dict(re.findall(r'data-k="([^"]+)">([^<]*)<', html))
        assert shown["ledger.holds"] == "holds" and "forged_receipt" in html
        for name in ("minted", "fees", "verification_pool", "insurance_pool"):
            assert eco["ledger"][name] == ledger[name], name  # the ledger's own totals
        claims = (await public.get("/explorer/api/v1/claims")).json()["data"]
        by_name = {c["claim"]: c for c in claims}
        assert by_name["Requests that succeed"]["samples"] == 1
        assert by_name["Requests that succeed"]["value"] is None  # n=1: not a claim yet
        assert by_name["Every token is accounted for"]["value"] is True
        assert by_name["scripted-model is cheaper than the hyperscalers"]["source"] == "declared"
        page = (await public.get("/explorer/claims")).text
        assert "insufficient data (n=1)" in page
        text = (await public.get("/explorer/api/v1/claims?format=csv")).text
        lines = list(csv.DictReader(io.StringIO(text)))
        assert len(lines) == len(claims)
        assert [line["simulation"] for line in lines] == [
            c["simulation"]["command"] for c in claims
        ]
        await public.aclose()
        beat.cancel()


async def test_a_caught_cheat_shows_its_slash_evidence_and_refund(gateway_dir: Path) -> None:
    async with gateway_with_a_cheat(gateway_dir, explorer_interval_s=0.1) as (gw, client, cheat, _):
        async with httpx.AsyncClient(base_url=gw.base) as public:
            response = await client.post("/v1/chat/completions", json=chat_body())
            assert response.status_code == 200, response.text
            request_id = response.headers["x-request-id"]
            slashes = await until(public, "/explorer/api/v1/slashes", lambda b: b["data"])
            (slash,) = slashes["data"]
            assert slash["provider_id"] == cheat.provider_id
            assert slash["reference"] == f"audit:{request_id}"
            assert slash["refunded_units"] == 5_000 and slash["slashed_units"] > 0
            audits = (await until(public, "/explorer/api/v1/audits", lambda b: b["data"]))["data"]
            assert [(a["request_id"], a["status"]) for a in audits] == [(request_id, "upheld")]
            tape = await until(
                public,
                "/explorer/api/v1/requests/recent",
                lambda b: any(r["audit"] == "upheld" for r in b["data"]),
            )
            row = next(r for r in tape["data"] if r["request_id"] == request_id)
            assert row["audit"] == "upheld" and row["region"] is not None
            page = (await public.get("/explorer/slashes")).text
            assert f'href="/explorer/audits/{request_id}"' in page
            # The evidence: the case as /v1/audit-cases has it, the slash citing it, and
            # an HTML page with the failed rules and the money.
            case = (await public.get(f"/v1/audit-cases/{request_id}")).json()
            evidence = (await public.get(f"/explorer/api/v1/audits/{request_id}")).json()
            assert evidence["case"] == case and case["status"] == "upheld"
            assert evidence["slashes"] == [slash]
            assert evidence["request"]["request_id"] == request_id
            failed = [a for a in case["audits"] if a["outcome"] == "failed"]
            assert len(failed) >= 2
            findings = failed[0]["evidence"]["verdict"]["findings"]
            html = (await public.get(f"/explorer/audits/{request_id}")).text
            assert 'data-k="case.status"' in html and "upheld" in html
            assert escaped(findings[0]["detail"]) in html
            # Public evidence never holds the answer: neither the cheat's nor the auditors'.
            answered = response.json()["choices"][0]["message"]["content"]
            audits_json = (await public.get(f"/v1/audits?request_id={request_id}")).text
            for shown in (json.dumps(case), json.dumps(evidence), html, audits_json):
                assert answered not in shown and '"text":' not in shown
            assert "text_sha256" in json.dumps(failed[0]["evidence"]["result"])
            assert f'data-k="case.refunded">{format_tokens(case["refunded"])} tokens' in html
            for missing in ("req_never_audited", "x" * 100):
                gone = await public.get(f"/explorer/api/v1/audits/{missing}")
                assert gone.status_code == 404 and "not audited" in gone.json()["error"]["message"]
            assert (await public.get("/explorer/audits/%3Cb%3E")).status_code == 400
            detail = (await public.get(f"/explorer/api/v1/requests/{request_id}")).json()
            assert detail["audit"]["status"] == "upheld"
            assert "capture" in {e["kind"] for e in detail["entries"]}
            provider = (await public.get(f"/explorer/api/v1/providers/{cheat.provider_id}")).json()
            record = provider["record"]
            assert record["slashes"]["count"] == 1 and record["audits"]["failed"] == 1
            assert provider["reputation"]["slashes"] == 1
            html = (await public.get(f"/explorer/providers/{cheat.provider_id}")).text
            assert "tampered_output" in html and f"audit case {request_id}" in html
            claims = (await public.get("/explorer/api/v1/claims")).json()["data"]
            caught = next(c for c in claims if c["claim"].startswith("Cheaters are caught"))
            assert caught["value"] == 1 and caught["samples"] == 1  # on its first request
            text = (await public.get("/explorer/api/v1/slashes?format=csv")).text
            (line,) = list(csv.DictReader(io.StringIO(text)))
            assert line["refunded_units"] == "5000"
