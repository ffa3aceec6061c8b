"""The sans-I/O DOTS signal-channel core (RFC 9132).

Owns the CBOR key table, the typed message model, JSON<->CBOR conversion, URI paths,
request validation with exact response codes, and the server/client state machines.
It must not import asyncio, socket, time, selectors, sqlite3 or any transport library:
time arrives as ``now`` arguments and randomness is injected.

May import: the standard library, ``cbor2`` and ``redirect`` (pure redirect rules); nothing
else of this project. Everything else builds on it (``tests/unit/test_layers.py``).
"""
