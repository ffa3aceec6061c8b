"""The lab tests' namespace helpers: they live in ``gateway.demo.netns``, shared with
``dots-gateway demo``; this name stays for the lab tests that import it."""

from gateway.demo.netns import (
    COMMAND_TIMEOUT,
    PREFIX,
    Lab,
    cleanup_stale,
    ip,
    namespaces,
    require_root,
)

__all__ = ["COMMAND_TIMEOUT", "PREFIX", "Lab", "cleanup_stale", "ip", "namespaces",
           "require_root"]
