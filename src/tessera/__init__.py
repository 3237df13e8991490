"""Tessera: an open, decentralized GPU network for AI inference."""

__version__ = "0.1.0"
