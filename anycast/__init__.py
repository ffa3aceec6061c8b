"""Anycast service addresses: netlink holder, health state machine, announcement and drain.

Not yet implemented. DOTS has no IANA anycast address; addresses are operator configuration.
"""
