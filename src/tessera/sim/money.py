"""The simulated network's money, moved by the gateway's own ledger (``ledger.book.Book``).

Consumers are one account (their deposits minted at the start); each (GPU class, region)
group of providers is one provider account whose stake is the sum of its members'. Every
settlement, each group's requests are one hold of the worst case (the batch's prompts and
twice its expected output at the group's prices) and one capture of the real cost: the
escrow splits it into the providers' earnings, the protocol fee and the verification
pool, and returns the rest, exactly as for a live request. A caught cheater's stake is
slashed through the same code, the harmed consumers refunded first. Members' earnings are
the group's capture shared by requests served (largest remainder, so they sum exactly).

The book's own invariant check (``Book.check``) runs at the end of every run.
"""

from __future__ import annotations

import numpy as np

from tessera.ledger.accounts import FEES, INSURANCE_POOL, VERIFICATION_POOL, earnings_of
from tessera.ledger.book import Book, BookPolicy
from tessera.ledger.pricing import Price
from tessera.ledger.spend_caps import SpendCaps
from tessera.sim.routing import GroupRouter
from tessera.sim.world import BASE_UNITS, Ints, Laws, World

CONSUMERS = "consumers"
KEY = "sim"  # the consumers' API key, as the spend caps see it
WORST_CASE = 2  # a hold covers this many times the expected output


class Money:
    def __init__(
        self,
        groups: GroupRouter,
        law: Laws,
        world: World,
        group: Ints,
        by_group: Ints,
        bounds: Ints,
    ) -> None:
        """``by_group``: the providers ordered by group, group i at bounds[i]:bounds[i+1]."""
        self.book = Book(BookPolicy(), retain_entries=False)
        self.groups = groups
        self.group = group
        self.members = [by_group[bounds[i] : bounds[i + 1]] for i in range(groups.size)]
        self.prices = [
            Price(int(law.price_in[g.gpu]), int(law.price_out[g.gpu])) for g in groups.groups
        ]
        self.caps = SpendCaps()
        self.paid = 0
        self.slashed = 0
        self.refunded = 0
        # Deposits: enough for a week of the largest demand at the dearest price.
        self.book.mint(CONSUMERS, 10**9 * BASE_UNITS, "deposit", 0.0)
        stakes = np.zeros(groups.size, dtype=np.int64)
        np.add.at(stakes, group, world.stake)  # exact integers, once
        for i, g in enumerate(groups.groups):
            stake = int(stakes[i])
            if stake > 0:
                self.book.mint(g.provider_id, stake, f"stake:{g.provider_id}", 0.0)
                self.book.bond(g.provider_id, stake, f"bond:{g.provider_id}", 0.0)

    def settle(
        self, settlement: int, served: Ints, world: World, prompt: int, output: int, at: float
    ) -> None:
        """Charge every group for the requests its members served since the last
        settlement, and credit each member its share of the group's earnings."""
        per_group = np.bincount(self.group, weights=served.astype(np.float64),
                                minlength=self.groups.size)  # fmt: skip
        for i, g in enumerate(self.groups.groups):
            n = int(per_group[i] + 0.5)  # a count: exact in a float below 2**53
            if n == 0:
                continue
            price = self.prices[i]
            request_id = f"settle:{settlement}:{i}"
            worst = price.cost(n * prompt, n * output * WORST_CASE)
            self.book.hold(CONSUMERS, KEY, self.caps, request_id, worst, at)
            before = self.book.ledger.balance(earnings_of(g.provider_id))
            _, cost = self.book.capture(request_id, price, n * prompt, n * output,
                                        g.provider_id, at)  # fmt: skip
            self.paid += cost
            earned = self.book.ledger.balance(earnings_of(g.provider_id)) - before
            members = self.members[i][served[self.members[i]] > 0]
            world.earned[members] += _shares(earned, served[members])

    def slash(
        self, provider: int, amount: int, refund: int, reference: str, at: float
    ) -> tuple[int, int]:
        """Slash a caught member through its group's stake; (taken, refunded)."""
        g = self.groups.groups[int(self.group[provider])]
        outcome = self.book.slash(
            g.provider_id, "wrong_model", reference, [(CONSUMERS, refund)], reference, at,
            amount=amount,
        )  # fmt: skip
        refunded = sum(pay for _, pay in outcome.to_consumers)
        self.slashed += outcome.taken
        self.refunded += refunded
        return outcome.taken, refunded

    def problems(self, world: World) -> list[str]:
        """The book's own invariant check, and the members' earnings against their groups'."""
        problems = self.book.check()
        for i, g in enumerate(self.groups.groups):
            mine = int(world.earned[self.members[i]].sum())
            ledger = self.book.ledger.balance(earnings_of(g.provider_id))
            if mine != ledger:
                problems.append(f"group {i}: members earned {mine}, the ledger says {ledger}")
        return problems

    def totals(self) -> dict[str, int]:
        ledger = self.book.ledger
        earned = sum(ledger.balance(earnings_of(g.provider_id)) for g in self.groups.groups)
        return {
            "paid": self.paid,
            "earned": earned,
            "fees": ledger.balance(FEES),
            "verification_pool": ledger.balance(VERIFICATION_POOL),
            "insurance_pool": ledger.balance(INSURANCE_POOL),
            "slashed": self.slashed,
            "refunded": self.refunded,
        }


def _shares(total: int, weights: Ints) -> Ints:
    """``total`` split in proportion to ``weights``, in integers that sum to it exactly
    (largest remainder)."""
    if weights.size == 0:
        return weights
    if total * int(weights.max()) < 2**62:  # within int64: the fast path
        w64 = weights.astype(np.int64)
        scale64 = int(w64.sum())
        quotient = total * w64 // scale64
        short = total - int(quotient.sum())
        if short:
            remainder = total * w64 - quotient * scale64
            quotient[np.argsort(-remainder, kind="stable")[:short]] += 1
        return quotient
    w = [int(x) for x in weights]  # Python ints: total * weight passes 2**63
    scale = sum(w)
    whole = [total * x // scale for x in w]
    left = total - sum(whole)
    if left:
        remainders = [total * x - q * scale for x, q in zip(w, whole, strict=True)]
        for i in sorted(range(len(w)), key=lambda j: -remainders[j])[:left]:
            whole[i] += 1
    return np.array(whole, dtype=np.int64)
