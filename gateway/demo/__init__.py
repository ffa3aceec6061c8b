"""``dots-gateway demo``: the whole story in network namespaces, narrated, with a picture.

A BGP router (BIRD), three anycast edges (``dots-gateway run`` in gateway mode, each with
its BIRD), the provider's DOTS server upstream, and an enterprise client that finds the
service by DHCP (dnsmasq, RFC 8973), lands on anycast, is redirected to unicast, creates a
mitigation, survives the death of its edge and a drain of the next one. Three edges, not
two: RFC 9132 §4.6 makes a client ignore a redirect to a server it contacted in the last
5 minutes, so the drain needs an edge the client has not used yet.

Modules: ``netns`` (namespaces and processes, shared with the lab tests), ``topology``
(addresses, BIRD, dnsmasq, the daemons' configuration), ``client`` (the client process),
``timeline`` (narration and samples), ``picture`` (the PNG), ``story`` (the steps and the
clean-up). Needs root, iproute2, bird2, dnsmasq and matplotlib (the ``demo`` extra).
"""

from gateway.demo.story import run

__all__ = ["run"]
