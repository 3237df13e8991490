"""Verification policy: receipts, audit sampling and scoring, challenges, disputes, reputation.

Pure logic, no sockets or databases: the gateway feeds it what it saw and acts on the answer.
"""
