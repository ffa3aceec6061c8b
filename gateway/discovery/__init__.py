"""The embedded DOTS server discovery engine (seed draft §5-10, RFC 8973).

Pure parts (no sockets, no clock, no asyncio; a test enforces it): ``candidates`` (the
result model and the trust allow-list), ``errors``, ``dhcp_options`` (option codecs),
``dhcp_packets`` (DHCPINFORM / Information-request build and parse), ``dnsname`` (DNS
wire-format names), ``lookups`` (lookup requests, results and the generator-driven
request plan), ``snaptr`` and ``dnssd`` (lookup plans), ``retry`` (retry waits by failure
kind), ``mechanisms`` (each mechanism's step of a run: lookups, trust, validity, retry
waits), ``procedure`` (the per interface x family procedure: mechanism order, slot states
and timers), ``settings`` (configuration -> procedure).

Thin I/O adapters: ``interfaces`` (what the kernel has), ``dhcp_client`` (UDP sockets bound
to one interface), ``resolver`` (dnspython), ``mdns`` (zeroconf browser and advertiser),
``engine`` (the asyncio driver) and ``cli`` (``dots-gateway discover`` / ``dhcp-option``).
"""
