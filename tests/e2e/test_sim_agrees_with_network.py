"""A small network run twice: as real processes (a gateway and two providers serving the
tiny model, priced one twice the other, the official ``openai`` client) and through the
simulator with the same two providers, prices and request sizes.

Both route with the gateway's router and charge with its ledger, so they must agree:
each provider's share of the requests within 0.15, and the mean cost per request within
10 % (the cost follows the share: one run of 150 saw 0.66 real against 0.58 simulated,
919 against 964 base units). The real gateway's pick is random and unseeded, so its share
is a sample: over 150 requests its standard deviation was about 0.04, and chance alone
moved it by 0.15 in about 1 run in 5,000 (more once the speeds the real router measures,
which the simulator models as equal, shift it a little). Over 400 it is about 0.025:
0.15 is six of them.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections import Counter
from pathlib import Path

import pytest

from tessera.key_file import load_or_create_key
from tessera.protocol.signing import public_key_hex
from tessera.sim.engine import run
from tessera.sim.scenario import Churn, GpuClass, Region, load

from support.live_network import provider_key_file, start_network

pytestmark = pytest.mark.integration

REQUESTS = 400  # enough that chance alone never moves the share by 0.15 (above)
# Base units per 1M tokens (input, output): the simulator's input price is a third of
# its output price, so the real providers' are too.
PRICES = ((20_000_000, 60_000_000), (40_000_000, 120_000_000))


def test_the_simulator_routes_and_charges_as_the_real_network(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    live = start_network(tmp_path, tiny_model_dir, providers=2, embeddings=False,
                         prices=PRICES, regions=("US-east",))  # fmt: skip
    ids = [public_key_hex(load_or_create_key(provider_key_file(live.network, i))) for i in (1, 2)]
    served: Counter[str] = Counter()
    costs, prompts, completions = [], [], []
    try:
        client = live.client(timeout=60)
        for i in range(REQUESTS):
            raw = client.chat.completions.with_raw_response.create(
                model="tessera-tiny",
                messages=[{"role": "user", "content": f"Tell me about fox number {i}."}],
                max_tokens=4,
            )
            answer = raw.parse()
            served[raw.headers["x-tessera-provider"]] += 1
            costs.append(int(raw.headers["x-tessera-cost"]))
            assert answer.usage is not None
            prompts.append(answer.usage.prompt_tokens)
            completions.append(answer.usage.completion_tokens)
    finally:
        live.network.stop()
    real_share = served[ids[0]] / REQUESTS
    real_cost = statistics.fmean(costs)

    base_scenario = load("baseline")
    cards = tuple(
        GpuClass(name=f"tiny on a CPU, {price_out} per 1M", share=0.5, single_stream_tps=40.0,
                 saturated_tps=80.0, max_streams=2, prefill_tps=2_000.0,
                 price_output_usd_per_mtok=price_out / 1e9, watts=65.0)
        for _, price_out in PRICES
    )  # fmt: skip
    scenario = dataclasses.replace(
        base_scenario,
        providers=2,
        gpus=cards,
        regions=(Region("US-east", 1.0, 1.0, 1.0, 39.0, -77.5),),
        churn=Churn(10**9, 1.0, 1.0, 2.5),
        cheaters=(),
        audits=dataclasses.replace(base_scenario.audits, initial_clean_audits=0),
        demand=dataclasses.replace(
            base_scenario.demand,
            requests_per_s=2.0,  # one request at a time, as the client sent them
            prompt_tokens_median=statistics.fmean(prompts),
            prompt_tokens_sigma=1e-9,
            output_tokens_median=statistics.fmean(completions),
            output_tokens_sigma=1e-9,
            sampled_requests_per_s=20.0,
        ),
    )
    simulated = run(scenario, seed=1, hours=0.05)
    ok = simulated.samples["ok"].astype(bool)
    cheap = simulated.world.gpu[simulated.samples["provider"][ok]] == 0
    sim_share = float(cheap.mean())
    sim_cost = simulated.totals.paid / simulated.totals.requests
    assert abs(sim_share - real_share) <= 0.15, (sim_share, real_share)
    assert abs(sim_cost - real_cost) / real_cost <= 0.10, (sim_cost, real_cost)
