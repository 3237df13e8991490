"""An agent that only forwards to an upstream server never imports torch or transformers.

`tessera provider --upstream ...` runs in a subprocess, exactly as an operator starts it,
against a real in-process gateway and a scripted upstream (support/scripted_upstream.py).
It serves a request, leaves on SIGTERM, and reports the modules it had imported on exit.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from support.scripted_peers import live_gateway, wait_providers
from support.scripted_upstream import scripted_upstream

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "sentence_transformers")

# Runs the real command line, and writes the heavy modules it imported when it exits.
AGENT = """
import atexit, json, sys
def report():
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})
    with open({out!r}, "w") as handle:
        json.dump(sorted({{m.split(".")[0] for m in heavy}}), handle)
atexit.register(report)
from tessera.cli import app
sys.argv = ["tessera"] + {args!r}
app()
"""


async def test_the_upstream_only_agent_imports_no_torch(tmp_path: Path) -> None:
    out = tmp_path / "heavy.json"
    async with scripted_upstream() as upstream, live_gateway(tmp_path / "gw") as gw:
        args = [
            "provider",
            "--gateway", gw.base,
            "--upstream", upstream.base_url,
            "--upstream-model", "up-model",
            "--served-name", "served",
            "--weights-sha256", "a" * 64,
            "--key-file", str(tmp_path / "provider.key"),
        ]  # fmt: skip
        script = AGENT.format(heavy=set(HEAVY), out=str(out), args=args)
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        agent = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            script,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            await wait_providers(gw, 1, timeout_s=60)
            async with gw.client() as client:
                body = {
                    "model": "served",
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 4,
                }
                response = await client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            assert response.json()["choices"][0]["message"]["content"] == "The fox ran far"
            agent.send_signal(signal.SIGTERM)
            output, _ = await asyncio.wait_for(agent.communicate(), 60)
        finally:
            if agent.returncode is None:
                agent.kill()
                await agent.wait()
    assert agent.returncode == 0, output.decode(errors="replace")
    assert json.loads(out.read_text()) == [], "the upstream-only agent imported these"
