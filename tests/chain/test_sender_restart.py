"""TxSender across a restart: a transaction signed before the restart is re-sent from the
state file, even if the node lost it, and the new sender never reuses its nonce."""

from __future__ import annotations

from pathlib import Path

import pytest

from tessera.chain.anvil import rpc
from tessera.chain.keys import EthKey
from tessera.chain.sender import TxSender, state_path_for
from tessera.ledger.accounts import TOKEN

from support.chain import Chain

pytestmark = pytest.mark.integration


def test_a_new_sender_on_the_same_state_file_does_not_reuse_a_nonce(
    chain: Chain, tmp_path: Path
) -> None:
    key = chain.funded_key(tokens=2 * TOKEN)
    state = state_path_for(tmp_path / "wallet.key")
    token = chain.client.token.functions
    to = EthKey.generate().address
    rpc(chain.url, "evm_setAutomine", [False])
    try:
        first = TxSender(chain.client.w3, key, state_path=state)
        sent = first.send(token.transfer(to, TOKEN))
        first.close()  # the process dies with its transaction unmined...
        rpc(chain.url, "anvil_dropTransaction", [sent])  # ...and the node forgets it
        assert chain.client.w3.eth.get_transaction_count(key.address, "pending") == 0

        second = TxSender(chain.client.w3, key, state_path=state)
        assert [p.tx_hash for p in second.pending()] == [sent]
        assert second.next_nonce == 1  # not the chain's 0: nonce 0 is ours, re-sent
        again = second.send(token.transfer(to, TOKEN))
        rpc(chain.url, "evm_mine")
        receipts = [second.wait(sent, timeout_s=10), second.wait(again, timeout_s=10)]
    finally:
        rpc(chain.url, "evm_setAutomine", [True])
    transactions = [chain.client.w3.eth.get_transaction(r["transactionHash"]) for r in receipts]
    assert [t["nonce"] for t in transactions] == [0, 1]
    assert chain.client.token_balance(to) == 2 * TOKEN
    assert second.pending() == []
    second.close()
