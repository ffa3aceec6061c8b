"""Interop tests against peers this project did not write (libcoap, aiocoap/tinydtls)."""
