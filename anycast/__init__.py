"""Anycast service addresses: netlink holder, health state machine, announcement and drain.

``netlink`` (the only pyroute2 user) holds the addresses; ``health`` (pure) decides when to
announce; ``announce`` carries that out (kernel table for BIRD, or ExaBGP); ``checks`` are the
health checks; ``manager`` ties them to the daemon; ``control`` is how ``dots-gateway drain``
and ``status`` reach it; ``addresses`` answers ``is_anycast(local)``. DOTS has no IANA anycast
address; addresses are operator configuration.
"""
