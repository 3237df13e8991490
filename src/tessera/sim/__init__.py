"""The network simulator: the real market, ledger and verify policies driven over a
modelled world of up to a million providers (numpy arrays, seeded, virtual time)."""
