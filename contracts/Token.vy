# pragma version ~=0.4.3
"""
@title TesseraToken
@notice The unit of account of the Tessera network: every deposit, stake, cheque and
        refund is counted in it. Nine decimals, the base unit of the off-chain ledger,
        so a chain balance and a journal balance compare to the unit.
        EIP-2612 `permit` lets a consumer approve and deposit in one transaction.
        The deployer is the owner and first minter (governance or treasury); supply only
        changes through `mint` by a minter or `burn` by a holder.
"""

from snekmate.auth import ownable
from snekmate.tokens import erc20

initializes: ownable
initializes: erc20[ownable := ownable]

exports: erc20.__interface__


@deploy
def __init__():
    ownable.__init__()
    erc20.__init__("Tessera", "TSR", 9, "Tessera Token", "1")
