"""The simulated network's money, moved by the gateway's own ledger (``ledger.book.Book``).

Consumers are one account (their deposits minted at the start); each (GPU class, region)
group of providers is one provider account whose stake is the sum of its members'. Every
settlement, each group's requests are one hold of the worst case as the gateway bounds
it (each prompt's bound from its bytes, and every token ``max_tokens`` allows, at the
group's prices) and one capture of the real cost: the
escrow splits it into the providers' earnings, the protocol fee and the verification
pool, and returns the rest, exactly as for a live request. An upheld case against a
member moves money as the gateway's does (``verify.penalties``): the consumer's refund
clawed back from the member's earnings, then its stake slashed through the group's, the
slash paying what the clawback did not. Auditors are paid from the verification pool. Members' earnings are
the group's capture shared by requests served (largest remainder, so they sum exactly).

The book's own invariant check (``Book.check``) runs at the end of every run.
"""

from __future__ import annotations

import numpy as np

from tessera.ledger.accounts import FEES, INSURANCE_POOL, VERIFICATION_POOL, earnings_of
from tessera.ledger.book import Book, BookPolicy
from tessera.ledger.pricing import Price
from tessera.ledger.spend_caps import SpendCaps
from tessera.market.quotes import chat_prompt_bound
from tessera.sim.routing import GroupRouter
from tessera.sim.world import BASE_UNITS, Ints, Laws, World
from tessera.verify.penalties import Penalty

CONSUMERS = "consumers"
KEY = "sim"  # the consumers' API key, as the spend caps see it
# A prompt's UTF-8 bytes per token (English text runs about four): the gateway bounds a
# prompt by its bytes, not its tokens.
BYTES_PER_TOKEN = 4


class Money:
    def __init__(
        self,
        groups: GroupRouter,
        law: Laws,
        world: World,
        group: Ints,
        by_group: Ints,
        bounds: Ints,
        max_tokens: int,
    ) -> None:
        """``by_group``: the providers ordered by group, group i at bounds[i]:bounds[i+1];
        ``max_tokens``: each request's, as the gateway bounds its output."""
        self.book = Book(BookPolicy(), retain_entries=False)
        self.groups = groups
        self.group = group
        self.members = [by_group[bounds[i] : bounds[i + 1]] for i in range(groups.size)]
        self.prices = [
            Price(int(law.price_in[g.gpu]), int(law.price_out[g.gpu])) for g in groups.groups
        ]
        self.caps = SpendCaps()
        self.max_tokens = max_tokens
        self.paid = 0
        self.slashed = 0
        self.refunded = 0  # by slashes
        self.clawed_back = 0  # refunds out of the cheats' earnings
        self.auditors_paid = 0
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
        self,
        settlement: int,
        served: Ints,
        world: World,
        prompt: int,
        output: int,
        at: float,
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
            # The gateway's hold: the prompt's bound and every token max_tokens allows.
            bound = chat_prompt_bound(prompt * BYTES_PER_TOKEN)
            worst = price.worst_case(n * bound, n * self.max_tokens)
            self.book.hold(CONSUMERS, KEY, self.caps, request_id, worst, at)
            before = self.book.ledger.balance(earnings_of(g.provider_id))
            _, cost = self.book.capture(request_id, price, n * prompt, n * output,
                                        g.provider_id, at)  # fmt: skip
            self.paid += cost
            earned = self.book.ledger.balance(earnings_of(g.provider_id)) - before
            members = self.members[i][served[self.members[i]] > 0]
            world.earned[members] += exact_shares(earned, served[members])

    def penalise(
        self, world: World, provider: int, penalty: Penalty, slash: int, reference: str, at: float
    ) -> int:
        """An upheld case against a member, in the gateway's order (``verify.penalties``):
        the consumer's refund clawed back from what the member earned, then ``slash``
        (the table's share of the member's stake) taken through its group's stake, which
        pays the consumer what the clawback did not. Returns the stake taken."""
        g = self.groups.groups[int(self.group[provider])]
        clawed = 0
        claw = min(penalty.clawback, int(world.earned[provider]))  # its own earnings only
        if claw > 0:
            entry = self.book.clawback(g.provider_id, CONSUMERS, claw, f"clawback:{reference}", at)
            if entry is not None:
                clawed = sum(p.amount for p in entry.postings if p.amount > 0)
                world.earned[provider] -= clawed
        self.clawed_back += clawed
        if slash <= 0:
            return 0
        outcome = self.book.slash(
            g.provider_id, penalty.reason, reference, penalty.owed_after(clawed),
            f"slash:{reference}", at, amount=slash,
        )  # fmt: skip
        self.slashed += outcome.taken
        self.refunded += sum(pay for _, pay in outcome.to_consumers)
        return outcome.taken

    def pay_auditor(
        self, world: World, auditor: int, amount: int, reference: str, at: float
    ) -> int:
        """Pay a member for its audits from the verification pool (what is left of it)."""
        g = self.groups.groups[int(self.group[auditor])]
        entry = self.book.pay_auditor(g.provider_id, amount, reference, at) if amount > 0 else None
        paid = 0 if entry is None else sum(p.amount for p in entry.postings if p.amount > 0)
        world.earned[auditor] += paid
        self.auditors_paid += paid
        return paid

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
            "clawed_back": self.clawed_back,
            "auditors_paid": self.auditors_paid,
        }


def exact_shares(total: int, weights: Ints) -> Ints:
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
