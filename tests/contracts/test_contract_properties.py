"""Random histories over all four contracts, checked against a Python model.

After every step: the vault holds exactly Σ deposits + Σ gateway balances + insurance,
the stake manager exactly Σ (bonded + unbonding), no token is minted or lost, the
cumulative counters never decrease, and every party holds what the model says.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from itertools import product
from typing import Any, ClassVar

import boa
from contract_kit import (
    CHALLENGE_S,
    EPOCH_S,
    MIN_MEMBER_STAKE,
    SIGNER_GRACE_S,
    TOKEN,
    UNBONDING_S,
    UNLOCK_S,
    Blueprints,
    actor,
    deploy,
    fund,
    sign_cheque,
    sign_permit,
    sign_spend,
)
from contract_model import Model, Refused
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

# Few parties, so random steps often meet on the same deposit, balance or stake.
CONSUMERS = tuple(actor(f"consumer{i}").address for i in range(2))
GATEWAYS = tuple(actor(f"gateway{i}").address for i in range(2))
PROVIDERS = tuple(actor(f"provider{i}").address for i in range(2))
# Each gateway's two hot keys, which it may name as its signer.
HOT = {g: (actor(f"hot{i}-0").address, actor(f"hot{i}-1").address) for i, g in enumerate(GATEWAYS)}
MALLORY = actor("mallory").address
# Every signing party by address, so a rule can sign as any of them.
_NAMES = [f"{role}{i}" for role in ("consumer", "gateway", "provider") for i in range(2)]
KEYS = {
    a.address: a for a in map(actor, [*_NAMES, "hot0-0", "hot0-1", "hot1-0", "hot1-1", "mallory"])
}

STAKERS = GATEWAYS + PROVIDERS
START_BALANCE = {**dict.fromkeys(CONSUMERS, 1_000 * TOKEN), **dict.fromkeys(STAKERS, 200 * TOKEN)}
EVIDENCE = (b"\x01" * 32, b"\x02" * 32)

# Small amounts find the rounding edges, large ones the balance edges.
_tokens = st.integers(1, 120).map(lambda n: n * TOKEN // 2)
positive = st.one_of(st.integers(1, 5), _tokens, _tokens)
amounts = st.one_of(positive, positive, positive, st.just(0))
# Who signs a spend or cheque: mostly someone entitled to, sometimes a retired or foreign key.
spend_signers = st.sampled_from(
    ["consumer", "consumer", "current", "current", "gateway", "hot1", "hot2", "mallory"]
)
cheque_signers = st.sampled_from(["current", "current", "gateway", "hot1", "hot2", "mallory"])
stale = st.sampled_from([False, False, False, True])
waits = st.sampled_from(
    [1, SIGNER_GRACE_S, UNLOCK_S, CHALLENGE_S, CHALLENGE_S, UNBONDING_S, EPOCH_S]
)


NO_SHRINK = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target]


@contextmanager
def expect(refusal: Refused | None) -> Iterator[None]:
    if refusal is None:
        yield
    elif refusal.reason is None:
        with boa.reverts():
            yield
    else:
        with boa.reverts(refusal.reason):
            yield


def predict(call: Any, *args: Any) -> tuple[Any, Refused | None]:
    """Runs the model's call: (its result, None) or (None, the refusal)."""
    try:
        return call(*args), None
    except Refused as refused:
        return None, refused


class ContractHistories(RuleBasedStateMachine):
    """One fresh deployment per example; each rule asks the model first, then the chain."""

    blueprints: ClassVar[Blueprints]
    proposals = Bundle("proposals")

    def __init__(self) -> None:
        super().__init__()
        self._exit = ExitStack()
        self._exit.enter_context(boa.env.anchor())
        self.s = deploy(self.blueprints, threshold=2, members=3)
        self.members = tuple(m.address for m in self.s.committee)
        self.model = Model(self.members, 2, self.s.governance.address)
        for who, amount in START_BALANCE.items():
            fund(self.s, who, amount)
            self.model.wallet[who] = amount
        for member in self.members:
            fund(self.s, member, MIN_MEMBER_STAKE, self.s.stake.address)
            self.s.stake.bond(MIN_MEMBER_STAKE, sender=member)
            self.model.bonded[member] = MIN_MEMBER_STAKE
        self.supply = self.s.token.totalSupply()
        # The largest cumulative signed so far, per (consumer, gateway) and (gateway, provider).
        self.spend_signed: dict[tuple[str, str], int] = {}
        self.cheque_signed: dict[tuple[str, str], int] = {}
        self.seen_collected: dict[tuple[str, str], int] = {}
        self.seen_paid: dict[tuple[str, str], int] = {}

    def teardown(self) -> None:
        self._exit.close()

    @property
    def now(self) -> int:
        return boa.env.evm.patch.timestamp

    def _key(self, role: str, gateway: str, party: str) -> str:
        """The address that signs as `role` (the model knows whether it may)."""
        return {
            "consumer": party,
            "current": self.model.current_signer(gateway),
            "gateway": gateway,
            "hot1": HOT[gateway][0],
            "hot2": HOT[gateway][1],
            "mallory": MALLORY,
        }[role]

    @initialize(
        target=proposals,
        deposits=st.lists(_tokens, min_size=4, max_size=4),
        caps=st.lists(amounts, min_size=4, max_size=4),
        spends=st.lists(amounts, min_size=4, max_size=4),
        bonds=st.lists(positive, min_size=4, max_size=4),
        unbonds=st.lists(st.integers(1, 3), min_size=4, max_size=4),
        offender=st.sampled_from(STAKERS),
        kind=st.sampled_from([1, 2, 3, 4]),
        refunds=st.lists(
            st.tuples(st.sampled_from(CONSUMERS), st.sampled_from(GATEWAYS), positive), max_size=3
        ),
    )
    def start(
        self,
        deposits: list[int],
        caps: list[int],
        spends: list[int],
        bonds: list[int],
        unbonds: list[int],
        offender: str,
        kind: int,
        refunds: list[tuple[str, str, int]],
    ) -> Any:
        """Deposits, collected balances, stakes partly unbonding and one approved slash, so
        that the first steps already move money."""
        pairs = list(product(CONSUMERS, GATEWAYS))
        for (consumer, gateway), amount, cap, spend in zip(
            pairs, deposits, caps, spends, strict=True
        ):
            self.deposit(consumer, gateway, amount, cap, with_permit=False)
            self.collect(consumer, gateway, spend, "consumer", stale=False)
        for account, amount, quarters in zip(STAKERS, bonds, unbonds, strict=True):
            self.bond(account, amount)
            self.unbond(account, quarters)
        proposal = self.propose_slash(0, offender, kind, EVIDENCE[0], refunds)
        self.approve_slash(1, proposal)
        return proposal

    # --- consumers -------------------------------------------------------------------------

    @rule(
        consumer=st.sampled_from(CONSUMERS),
        gateway=st.sampled_from(GATEWAYS),
        amount=amounts | st.just(2_000 * TOKEN),
        cap=amounts,
        with_permit=st.booleans(),
    )
    def deposit(
        self, consumer: str, gateway: str, amount: int, cap: int, with_permit: bool
    ) -> None:
        _, refused = predict(self.model.deposit, consumer, gateway, amount, cap)
        vault = self.s.vault
        if with_permit:
            deadline = self.now + 60
            v, r, s_ = sign_permit(KEYS[consumer], self.s.token, vault.address, amount, deadline)
            with expect(refused):
                vault.deposit_with_permit(gateway, amount, cap, deadline, v, r, s_, sender=consumer)
        else:
            self.s.token.approve(vault.address, amount, sender=consumer)
            with expect(refused):
                vault.deposit(gateway, amount, cap, sender=consumer)

    @rule(consumer=st.sampled_from(CONSUMERS), gateway=st.sampled_from(GATEWAYS), cap=amounts)
    def set_cap(self, consumer: str, gateway: str, cap: int) -> None:
        self.model.cap[consumer, gateway] = cap
        self.s.vault.set_custodial_cap(gateway, cap, sender=consumer)

    @rule(consumer=st.sampled_from(CONSUMERS), gateway=st.sampled_from(GATEWAYS))
    def request_withdraw(self, consumer: str, gateway: str) -> None:
        self.model.request_withdraw(consumer, gateway, self.now)
        self.s.vault.request_withdraw(gateway, sender=consumer)

    @rule(consumer=st.sampled_from(CONSUMERS), gateway=st.sampled_from(GATEWAYS))
    def withdraw(self, consumer: str, gateway: str) -> None:
        _, refused = predict(self.model.withdraw, consumer, gateway, self.now)
        with expect(refused):
            self.s.vault.withdraw(gateway, sender=consumer)

    # --- gateways --------------------------------------------------------------------------

    @rule(
        consumer=st.sampled_from(CONSUMERS),
        gateway=st.sampled_from(GATEWAYS),
        step=amounts,
        signer=spend_signers,
        stale=stale,
    )
    def collect(self, consumer: str, gateway: str, step: int, signer: str, stale: bool) -> None:
        pair = (consumer, gateway)
        signed = self.spend_signed.get(pair, 0)
        cumulative = signed - step if stale else signed + step
        cumulative = max(cumulative, 0)
        key = self._key(signer, gateway, consumer)
        expected, refused = predict(
            self.model.collect, consumer, gateway, cumulative, key, self.now
        )
        signature = sign_spend(KEYS[key], self.s.vault, consumer, gateway, cumulative)
        with expect(refused):
            got = self.s.vault.collect(consumer, gateway, cumulative, signature)
        if refused is None:
            assert got == expected
            self.spend_signed[pair] = max(signed, cumulative)

    @rule(
        gateway=st.sampled_from(GATEWAYS),
        provider=st.sampled_from(PROVIDERS),
        step=amounts,
        signer=cheque_signers,
        stale=stale,
    )
    def cash(self, gateway: str, provider: str, step: int, signer: str, stale: bool) -> None:
        pair = (gateway, provider)
        signed = self.cheque_signed.get(pair, 0)
        cumulative = max(signed - step, 0) if stale else signed + step
        key = self._key(signer, gateway, provider)
        expected, refused = predict(self.model.cash, gateway, provider, cumulative, key, self.now)
        signature = sign_cheque(KEYS[key], self.s.vault, gateway, provider, cumulative)
        with expect(refused):
            got = self.s.vault.cash(gateway, provider, cumulative, signature)
        if refused is None:
            assert got == expected
            self.cheque_signed[pair] = max(signed, cumulative)

    @rule(
        gateway=st.sampled_from(GATEWAYS),
        entries=st.lists(
            st.tuples(
                st.sampled_from(PROVIDERS), st.integers(-2, 20).map(lambda n: n * TOKEN // 4)
            ),
            max_size=4,
        ),
        epoch_step=st.integers(-1, 2),
        by_signer=st.booleans(),
    )
    def settle(
        self, gateway: str, entries: list[tuple[str, int]], epoch_step: int, by_signer: bool
    ) -> None:
        caller = self.model.current_signer(gateway) if by_signer else gateway
        acting = self.model.gateway_of.get(caller, caller)
        epoch = max(self.model.last_settled[acting] + epoch_step, 0)
        batch = [(p, max(self.model.paid[acting, p] + delta, 0)) for p, delta in entries]
        _, refused = predict(self.model.settle, caller, epoch, batch)
        with expect(refused):
            self.s.vault.settle(epoch, [p for p, _ in batch], [c for _, c in batch], sender=caller)

    @rule(gateway=st.sampled_from(GATEWAYS), amount=amounts)
    def gateway_withdraw(self, gateway: str, amount: int) -> None:
        _, refused = predict(self.model.gateway_withdraw, gateway, amount)
        with expect(refused):
            self.s.vault.gateway_withdraw(amount, gateway, sender=gateway)

    @rule(gateway=st.sampled_from(GATEWAYS), role=st.sampled_from(["gateway", "hot1", "hot2"]))
    def rotate_signer(self, gateway: str, role: str) -> None:
        key = self._key(role, gateway, gateway)
        _, refused = predict(self.model.set_gateway_signer, gateway, key, self.now)
        with expect(refused):
            self.s.registry.set_gateway_signer(key, sender=gateway)

    # --- stake -----------------------------------------------------------------------------

    @rule(account=st.sampled_from(STAKERS), amount=amounts)
    def bond(self, account: str, amount: int) -> None:
        _, refused = predict(self.model.bond, account, amount)
        self.s.token.approve(self.s.stake.address, amount, sender=account)
        with expect(refused):
            self.s.stake.bond(amount, sender=account)

    @rule(account=st.sampled_from(STAKERS), quarters=st.integers(0, 5))
    def unbond(self, account: str, quarters: int) -> None:
        # A share of what is bonded: none, part, all, or more than all.
        amount = self.model.bonded[account] * quarters // 4 + (quarters == 5)
        _, refused = predict(self.model.unbond, account, amount, self.now)
        with expect(refused):
            self.s.stake.unbond(amount, sender=account)

    @rule(account=st.sampled_from(STAKERS))
    def withdraw_stake(self, account: str) -> None:
        _, refused = predict(self.model.withdraw_stake, account, self.now)
        with expect(refused):
            self.s.stake.withdraw(sender=account)

    @rule(
        target=proposals,
        member=st.integers(0, 2),
        offender=st.sampled_from(STAKERS),
        kind=st.sampled_from([1, 2, 3, 4, 1, 2, 3, 4, 0, 9]),
        evidence=st.sampled_from(EVIDENCE),
        refunds=st.lists(
            st.tuples(st.sampled_from(CONSUMERS), st.sampled_from(GATEWAYS), amounts), max_size=3
        ),
    )
    def propose_slash(
        self,
        member: int,
        offender: str,
        kind: int,
        evidence: bytes,
        refunds: list[tuple[str, str, int]],
    ) -> Any:
        args = (self.members[member], offender, kind, evidence, refunds, self.now)
        expected, refused = predict(self.model.propose, *args)
        with expect(refused):
            got = self.s.stake.propose_slash(
                offender,
                kind,
                evidence,
                [c for c, _, _ in refunds],
                [g for _, g, _ in refunds],
                [a for _, _, a in refunds],
                sender=self.members[member],
            )
        if refused is not None:
            return multiple()
        assert got == expected
        return got

    @rule(member=st.integers(0, 2), id_=proposals)
    def approve_slash(self, member: int, id_: int) -> None:
        _, refused = predict(self.model.approve, self.members[member], id_)
        with expect(refused):
            self.s.stake.approve_slash(id_, sender=self.members[member])

    @rule(id_=proposals, by_governance=st.booleans())
    def veto_slash(self, id_: int, by_governance: bool) -> None:
        caller = self.s.governance.address if by_governance else self.members[0]
        _, refused = predict(self.model.veto, caller, id_, self.now)
        with expect(refused):
            self.s.stake.veto_slash(id_, sender=caller)

    @rule(id_=proposals)
    def execute_slash(self, id_: int) -> None:
        _, refused = predict(self.model.execute, id_, self.now)
        with expect(refused):
            self.s.stake.execute_slash(id_, sender=MALLORY)

    @rule(seconds=waits)
    def wait(self, seconds: int) -> None:
        boa.env.time_travel(seconds=seconds)

    # --- invariants ------------------------------------------------------------------------

    @invariant()
    def vault_holds_exactly_its_books(self) -> None:
        vault, model = self.s.vault, self.model
        deposits = {p: vault.deposits(*p) for p in product(CONSUMERS, GATEWAYS)}
        balances = {g: vault.gateway_balance(g) for g in GATEWAYS}
        insurance = vault.insurance_pool()
        held = self.s.token.balanceOf(vault.address)
        assert held == sum(deposits.values()) + sum(balances.values()) + insurance
        assert deposits == {p: model.deposits[p] for p in deposits}
        assert balances == {g: model.gateway_balance[g] for g in GATEWAYS}
        assert insurance == model.insurance

    @invariant()
    def stake_manager_holds_exactly_the_stakes(self) -> None:
        stake, model = self.s.stake, self.model
        accounts = STAKERS + self.members
        bonded = {a: stake.bonded(a) for a in accounts}
        unbonding = {a: stake.unbonding(a) for a in accounts}
        held = self.s.token.balanceOf(stake.address)
        assert held == sum(bonded.values()) + sum(unbonding.values())
        assert bonded == {a: model.bonded[a] for a in accounts}
        assert unbonding == {a: model.unbonding[a] for a in accounts}

    @invariant()
    def no_token_is_minted_or_lost(self) -> None:
        token = self.s.token
        holders = (*CONSUMERS, *STAKERS, *self.members)
        wallets = {h: token.balanceOf(h) for h in holders}
        assert wallets == {h: self.model.wallet[h] for h in holders}
        contracts = token.balanceOf(self.s.vault.address) + token.balanceOf(self.s.stake.address)
        assert token.totalSupply() == self.supply
        assert sum(wallets.values()) + contracts == self.supply

    @invariant()
    def cumulative_counters_never_decrease(self) -> None:
        vault = self.s.vault
        for pair in product(CONSUMERS, GATEWAYS):
            collected = vault.collected(*pair)
            assert collected >= self.seen_collected.get(pair, 0)
            assert collected == self.model.collected[pair]
            self.seen_collected[pair] = collected
        for pair in product(GATEWAYS, PROVIDERS):
            paid = vault.paid(*pair)
            assert paid >= self.seen_paid.get(pair, 0)
            assert paid == self.model.paid[pair]
            self.seen_paid[pair] = paid


def test_random_histories_keep_every_invariant(blueprints: Blueprints) -> None:
    ContractHistories.blueprints = blueprints
    # Shrinking a 50-step history through the EVM takes longer than the test timeout, so a
    # failure prints its whole history at once; set TESSERA_SHRINK=1 to shrink it locally.
    phases = list(Phase) if os.environ.get("TESSERA_SHRINK") else NO_SHRINK
    run_state_machine_as_test(
        ContractHistories,
        settings=settings(
            max_examples=25,
            stateful_step_count=50,
            deadline=None,
            phases=phases,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
