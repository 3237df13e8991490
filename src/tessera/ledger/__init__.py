"""Pure ledger policy: accounts, a double-entry journal, escrow holds and prices.

No sockets, no database driver, no clock: callers pass times in and persist entries.
"""
