"""What settling on a chain costs per request: the gas of each contract operation, measured
from receipts on a fresh anvil, turned into base units per request at stated volumes.

Requests stay off chain; the chain sees, per vault epoch, one ``collect`` per consumer who
spent, one ``settle`` entry per provider paid (or a ``cash`` when a provider pulls its
cheque instead) and one ``post_epoch`` per gateway; deposits come now and then, binding
and bonding once. So the cost per request is each operation's gas divided by the requests
it settles::

    gas/request = collect / R  +  settle entry / P  +  post_epoch / (C * R)  +  deposit / (D * R)

with R requests per consumer per epoch, P requests per provider per epoch, C consumers at
the gateway and D epochs between a consumer's deposits. Gas becomes base units at a gas
price (gwei), an ETH price and a token price; the share of an average request's price is
compared with the target of at most 1 %.

Measured (gas from each receipt, EVM of anvil's default hardfork): deposit with permit (one
transaction) and approve + deposit; collect by the consumer's own signature and by the
gateway's signer (custodial), for a consumer never collected from ("new": storage written
from zero) and again ("known"); ``collect_many`` of N spends (the vault has no batch entry,
so N transactions) per spend; ``settle`` of N entries per entry, to providers never paid and
again to the same providers; ``post_epoch``; ``cash`` new and known; ``bind``; ``bond``.
Not counted: an L2's L1 data fee (calldata or blobs posted to L1), which depends on the L2
and the L1's own gas price, and is reported by the L2 separately.

Run::

    .venv/bin/python bench/chain_gas.py [--n 100] [--l2-gwei 0.05] [--l1-gwei 20]
        [--eth-usd 3000] [--token-usd 1] [--requests-per-consumer 1000] [--consumers 100]
        [--requests-per-provider 1000] [--deposit-every-epochs 24]
        [--input-tokens 1000] [--output-tokens 300] [--price-in 1] [--price-out 3]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src")]

from nacl.signing import SigningKey  # noqa: E402

from tessera.chain.anvil import rpc, start_anvil  # noqa: E402
from tessera.chain.client import ChainClient, Spend  # noqa: E402
from tessera.chain.deploy import DeployParams, deploy_to, dev_key_for  # noqa: E402
from tessera.chain.keys import EthKey  # noqa: E402
from tessera.chain.sender import TxSender  # noqa: E402
from tessera.chain.wallet import Wallet  # noqa: E402
from tessera.ledger.accounts import TOKEN  # noqa: E402
from tessera.units import format_tokens  # noqa: E402

TARGET_SHARE = Decimal("0.01")  # chain cost at most 1 % of what a request pays
GWEI = 10**9
WEI_PER_ETH = 10**18


@dataclass(frozen=True)
class Op:
    name: str
    gas: int  # per operation (per spend / per entry for the batched rows)
    note: str


class Bench:
    """A fresh chain, a gateway with a hot signer, and helpers that return gas used."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.deployment = deploy_to(url, params=DeployParams.for_tests())
        self.client = ChainClient(url, self.deployment)
        self.minter = TxSender(self.client.w3, dev_key_for(self.client.w3))
        self.gateway = self.key()
        self.gw = TxSender(self.client.w3, self.gateway)

    def key(self, tokens: int = 0) -> EthKey:
        key = EthKey.generate()
        rpc(self.url, "anvil_setBalance", [key.address, hex(10**20)])
        if tokens:
            self.minter.transact(self.client.token.functions.mint(key.address, tokens))
        return key

    def consumer(self, amount: int, *, cap: int = 0, permit: bool = True) -> tuple[EthKey, int]:
        """A consumer with ``amount`` deposited at the gateway; gas of the deposit."""
        key = self.key(amount)
        with Wallet(self.client, key) as wallet:
            if permit:
                return key, int(wallet.deposit(self.gateway.address, amount, cap)["gasUsed"])
            approve = wallet.sender.transact(
                self.client.token.functions.approve(self.client.vault.address, amount)
            )
            deposit = wallet.deposit(self.gateway.address, amount, cap)
            return key, int(approve["gasUsed"]) + int(deposit["gasUsed"])

    def spend(self, consumer: EthKey, cumulative: int, *, custodial: bool = False) -> Spend:
        signer = self.gateway if custodial else consumer
        return self.client.sign_spend(
            signer.private_key, consumer.address, self.gateway.address, cumulative
        )

    def collect(self, spend: Spend) -> int:
        return int(self.client.collect(self.gw, spend)["gasUsed"])

    def next_epoch(self) -> None:
        """Move the chain into the next vault epoch, as a steady state's collects are."""
        rpc(self.url, "evm_increaseTime", [DeployParams.for_tests().epoch_length_s])
        rpc(self.url, "anvil_mine", ["0x1"])


def measure(n: int) -> list[Op]:
    node = start_anvil()
    try:
        b = Bench(node.url)
        client = b.client
        ops: list[Op] = []
        # Deposits.
        b.consumer(TOKEN)  # warm the vault's and token's first writes for the gateway
        alice, gas = b.consumer(100 * TOKEN, cap=10 * TOKEN)
        ops.append(Op("deposit with permit", gas, "1 tx: permit + transferFrom + deposit"))
        _, gas = b.consumer(100 * TOKEN, cap=10 * TOKEN, permit=False)
        ops.append(Op("approve + deposit", gas, "2 txs, without permit"))
        # Collect: consumer-signed and custodial, new and known.
        ops.append(Op("collect, new consumer", b.collect(b.spend(alice, TOKEN)), "own signature"))
        ops.append(
            Op("collect, known consumer", b.collect(b.spend(alice, 2 * TOKEN)), "own signature")
        )
        bob, _ = b.consumer(100 * TOKEN, cap=10 * TOKEN)
        gas = b.collect(b.spend(bob, TOKEN, custodial=True))
        ops.append(Op("collect custodial, new", gas, "gateway's signer, within the cap"))
        b.next_epoch()
        gas = b.collect(b.spend(bob, 2 * TOKEN, custodial=True))
        ops.append(Op("collect custodial, known", gas, "the next epoch, within the cap"))
        # collect_many of n new consumers, custodial (the gateway's usual case).
        crowd = [b.consumer(10 * TOKEN, cap=10 * TOKEN)[0] for _ in range(n)]
        receipts = client.collect_many(b.gw, [b.spend(c, 5 * TOKEN, custodial=True) for c in crowd])
        total = sum(int(r["gasUsed"]) for r in receipts)
        ops.append(Op(f"collect_many, per spend (N={n})", total // n, f"{n} txs, custodial, new"))
        b.next_epoch()
        receipts = client.collect_many(b.gw, [b.spend(c, 6 * TOKEN, custodial=True) for c in crowd])
        total = sum(int(r["gasUsed"]) for r in receipts)
        ops.append(
            Op(
                f"collect_many, per spend, known (N={n})",
                total // n,
                f"{n} txs, custodial, next epoch",
            )
        )
        # settle: n providers never paid, then the same n again.
        providers = [EthKey.generate().address for _ in range(n)]
        epoch = client.current_epoch()
        receipt = client.settle(b.gw, epoch, [(p, 1_000_000) for p in providers])
        ops.append(
            Op(
                f"settle, per entry, new (N={n})",
                int(receipt["gasUsed"]) // n,
                "providers never paid",
            )
        )
        receipt = client.settle(b.gw, epoch + 1, [(p, 2_000_000) for p in providers])
        ops.append(
            Op(f"settle, per entry, known (N={n})", int(receipt["gasUsed"]) // n, "paid before")
        )
        receipt = client.settle(b.gw, epoch + 2, [(providers[0], 3_000_000)])
        ops.append(Op("settle, 1 entry, known", int(receipt["gasUsed"]), "a whole tx for one"))
        receipt = client.post_epoch(b.gw, epoch, bytes(range(32)), 10**12, 10**9)
        ops.append(Op("post_epoch", int(receipt["gasUsed"]), "ledger root, once per epoch"))
        # cash: a provider's cheque, first time and again, submitted by the provider.
        provider = b.key()
        with Wallet(client, provider) as wallet:
            cheque = client.sign_cheque(
                b.gateway.private_key, b.gateway.address, provider.address, TOKEN
            )
            ops.append(
                Op("cash, new provider", int(wallet.cash(cheque)["gasUsed"]), "pull a cheque")
            )  # type: ignore[index]
            cheque = client.sign_cheque(
                b.gateway.private_key, b.gateway.address, provider.address, 2 * TOKEN
            )
            ops.append(
                Op("cash, known provider", int(wallet.cash(cheque)["gasUsed"]), "pull a cheque")
            )  # type: ignore[index]
            binding = wallet.binding(SigningKey.generate())
            ops.append(Op("bind", int(wallet.bind(binding)["gasUsed"]), "once per provider key"))
        staker = b.key(10 * TOKEN)
        with Wallet(client, staker) as wallet:
            wallet.sender.transact(client.token.functions.approve(client.stake.address, 10 * TOKEN))
            ops.append(Op("bond", int(wallet.bond(10 * TOKEN)["gasUsed"]), "after approve; once"))
        b.gw.close()
        b.minter.close()
        return ops
    finally:
        node.stop()


def units_per_gas(gwei: Decimal, eth_usd: Decimal, token_usd: Decimal) -> Decimal:
    """Base units of the token that one gas costs."""
    return gwei * GWEI / WEI_PER_ETH * eth_usd / token_usd * TOKEN


def report(ops: list[Op], args: argparse.Namespace, console: Console) -> None:
    gas = {op.name: op.gas for op in ops}
    l2 = units_per_gas(args.l2_gwei, args.eth_usd, args.token_usd)
    l1 = units_per_gas(args.l1_gwei, args.eth_usd, args.token_usd)
    table = Table(title="gas per operation, measured on anvil (fresh chain, receipts' gasUsed)")
    for column in (
        "operation",
        "gas",
        f"L2 @ {args.l2_gwei} gwei",
        f"L1 @ {args.l1_gwei} gwei",
        "note",
    ):
        table.add_column(column, justify="left" if column in ("operation", "note") else "right")
    for op in ops:
        table.add_row(op.name, f"{op.gas:,}", units(op.gas * l2), units(op.gas * l1), op.note)
    console.print(table)

    price = (args.price_in * args.input_tokens + args.price_out * args.output_tokens) / Decimal(
        10**6
    )
    price_units = price * TOKEN
    r, c, p, d = (
        args.requests_per_consumer,
        args.consumers,
        args.requests_per_provider,
        args.deposit_every_epochs,
    )
    n = args.n
    parts = [
        (
            "collect (custodial, known)",
            gas[f"collect_many, per spend, known (N={n})"],
            r,
            f"1 per consumer per epoch = {r:,} requests",
        ),
        (
            "settle entry (known)",
            gas[f"settle, per entry, known (N={n})"],
            p,
            f"1 per provider per epoch = {p:,} requests",
        ),
        (
            "post_epoch",
            gas["post_epoch"],
            c * r,
            f"1 per gateway per epoch = {c:,} consumers x {r:,}",
        ),
        (
            "deposit with permit",
            gas["deposit with permit"],
            d * r,
            f"1 per consumer per {d} epochs = {d * r:,} requests",
        ),
    ]
    per_request = Table(title="chain cost per request (steady state)")
    for column in (
        "component",
        "gas/op",
        "amortized over",
        "gas/request",
        "L2 units/request",
        "L1 units/request",
    ):
        per_request.add_column(
            column, justify="left" if column in ("component", "amortized over") else "right"
        )
    total_gas = Decimal(0)
    for name, op_gas, over, text in parts:
        share = Decimal(op_gas) / over
        total_gas += share
        per_request.add_row(
            name, f"{op_gas:,}", text, f"{share:,.2f}", units(share * l2), units(share * l1)
        )
    per_request.add_row(
        "total",
        "",
        "",
        f"{total_gas:,.2f}",
        units(total_gas * l2),
        units(total_gas * l1),
        style="bold",
    )
    console.print(per_request)

    verdict = Table(
        title=f"against the target: chain cost <= {TARGET_SHARE:.0%} of a request's price"
    )
    for column in ("chain", "gas price", "units/request", "share of price", "x target", "verdict"):
        verdict.add_column(column, justify="left" if column == "chain" else "right")
    for label, gwei, per_gas in (("L2", args.l2_gwei, l2), ("L1", args.l1_gwei, l1)):
        cost = total_gas * per_gas
        share = cost / price_units
        verdict.add_row(
            label, f"{gwei} gwei", units(cost), f"{share:.4%}", f"{share / TARGET_SHARE:.3f}",
            "MET" if share <= TARGET_SHARE else "MISSED",
        )  # fmt: skip
    console.print(verdict)
    console.print(
        "assumptions: "
        f"ETH = ${args.eth_usd}, token = ${args.token_usd} (1 token = {TOKEN:,} base units); "
        f"an average request is {args.input_tokens:,} input + {args.output_tokens:,} output tokens "
        f"at {args.price_in} / {args.price_out} tokens per million = {format_tokens(int(price_units))} "
        f"tokens ({int(price_units):,} units, ${price * args.token_usd:.6f}); "
        f"{r:,} requests per consumer per epoch, {c:,} consumers per gateway, {p:,} requests per "
        f"provider per epoch, 1 epoch per hour, a deposit every {d} epochs per consumer; "
        "bind, bond and withdrawals are one-off and not amortized; L2 cost excludes the L1 "
        "data fee; gas from anvil's EVM (mainnet gas schedule)."
    )


def units(value: Decimal) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="batch size for collect_many and settle")
    parser.add_argument("--l2-gwei", type=Decimal, default=Decimal("0.05"))
    parser.add_argument("--l1-gwei", type=Decimal, default=Decimal("20"))
    parser.add_argument("--eth-usd", type=Decimal, default=Decimal("3000"))
    parser.add_argument("--token-usd", type=Decimal, default=Decimal("1"))
    parser.add_argument("--requests-per-consumer", type=int, default=1000, help="per epoch")
    parser.add_argument("--consumers", type=int, default=100, help="per gateway")
    parser.add_argument("--requests-per-provider", type=int, default=1000, help="per epoch")
    parser.add_argument("--deposit-every-epochs", type=int, default=24)
    parser.add_argument("--input-tokens", type=int, default=1000)
    parser.add_argument("--output-tokens", type=int, default=300)
    parser.add_argument("--price-in", type=Decimal, default=Decimal(1), help="tokens per million")
    parser.add_argument("--price-out", type=Decimal, default=Decimal(3), help="tokens per million")
    args = parser.parse_args()
    if not 1 <= args.n <= 256:
        parser.error("--n must be 1..256 (settle takes at most 256 entries)")
    logging.getLogger("tessera.chain").setLevel(logging.ERROR)  # the dev key's warning
    console = Console()
    if console.width < 140:  # piped: keep the tables' columns readable
        console = Console(width=140)
    started = time.monotonic()
    with console.status("measuring on a fresh anvil…"):
        ops = measure(args.n)
    report(ops, args, console)
    console.print(f"measured in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
