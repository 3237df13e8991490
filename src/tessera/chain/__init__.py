"""Tessera's chain client: compile and deploy the contracts, sign EIP-712 messages, send
transactions that survive restarts, read balances and events.

Layers, from the bottom: :mod:`artifacts` (compile ``contracts/*.vy``), :mod:`anvil` (a
local node for development and tests), :mod:`deployment` / :mod:`deploy` (where the
contracts live), :mod:`typed_data` (the signed messages), :mod:`keys` (Ethereum key
files), :mod:`sender` (nonces, fees, re-broadcast), :mod:`client` (typed reads, events,
writes) and :mod:`wallet` (what a person does: deposit, bind, bond, cash).

Nothing here is imported by the request path at start-up unless the gateway is given a
deployment; web3 is imported lazily by the modules that need it.
"""
