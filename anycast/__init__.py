"""Anycast service addresses: holder interface via netlink, health state machine, route announcement and drain (not yet implemented)."""
