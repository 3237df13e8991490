"""The simulator's audit votes come from the gateway's scoring code over modelled
evidence: honest answers pass, overbilling fails exactly, a substitute fails more often
the further it is from the claimed model."""

from __future__ import annotations

import tomllib
from importlib import resources

import numpy as np

from tessera.sim.evidence import Evidence, fails, modelled_audit, vote_chances
from tessera.sim.scenario import load, parse
from tessera.verify.scoring import TAMPERED_OUTPUT, WRONG_MODEL


def test_each_kind_of_modelled_audit_gets_the_scoring_codes_verdict() -> None:
    rng = np.random.default_rng(1)
    evidence = Evidence()
    honest = [modelled_audit("honest", evidence, 64, rng) for _ in range(50)]
    assert all(v.passed for v in honest)
    tampered = modelled_audit("tampered_output", evidence, 64, rng)
    assert fails(tampered) and tampered.reason == TAMPERED_OUTPUT
    assert any(f.check == "usage" for f in tampered.findings)
    substitute = modelled_audit("wrong_model", evidence, 64, rng)
    assert fails(substitute) and substitute.reason == WRONG_MODEL


def test_a_closer_substitute_is_caught_less_often() -> None:
    """A quantized copy (small log-prob error, rare token changes) slips past more votes
    than a smaller model; hardware noise alone fails none."""
    substitutes = [
        Evidence(substitute_agreement=agree, substitute_gap_mean=gap, substitute_logprob_sigma=sd)
        for agree, gap, sd in ((0.98, 0.3, 0.05), (0.95, 0.4, 0.08), (0.85, 0.8, 0.25))
    ]
    chances = [vote_chances(e, 150.0, 0.8) for e in substitutes]
    detection = [c["wrong_model"] for c in chances]
    assert detection[0] < detection[1] < detection[2] == 1.0
    assert 0.2 < detection[0] < 0.8
    assert all(c["honest"] == 0.0 and c["tampered_output"] == 1.0 for c in chances)
    noisy = vote_chances(Evidence(honest_logprob_sigma=0.2), 150.0, 0.8)
    assert noisy["honest"] > 0.5  # hardware this far off would be misjudged


def test_the_scenario_fills_in_what_it_leaves_to_the_scoring_code() -> None:
    cheaters = load("cheaters")
    d = {c.kind: c.detection for c in cheaters.cheaters}
    expected = vote_chances(cheaters.evidence, 150.0, 0.8)
    assert d["wrong_model"] == expected["wrong_model"] < 1.0
    assert d["tampered_output"] == 1.0 and d["forged_receipt"] == 1.0
    assert cheaters.audits.false_flag == 0.001  # given: kept
    raw = tomllib.loads(
        resources.files("tessera.sim").joinpath("scenarios/baseline.toml").read_text()
    )
    raw["cheaters"] = [{"kind": "wrong_model", "share": 0.01, "detection": 0.3}]
    given = parse(raw)
    assert given.cheaters[0].detection == 0.3  # a detection given is used as it is
    assert given.audits.false_flag == 0.0  # hardware noise alone fails no honest vote
