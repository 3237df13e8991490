"""Wire and API types, canonical encoding and signatures. Imports nothing else of Tessera."""
