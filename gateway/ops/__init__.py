"""Operations: what an operator talks to besides DOTS.

Owns the control socket (``control``: status, reload, drain), the Prometheus endpoint and
registry (``metrics``), log formats (``logsetup``), the bounded set of stream clients
both sockets share (``stream_clients``) and the process's garbage-collection policy
(``gc_policy``, pure decisions; ``gc_runtime``, the adapter on ``gc`` and the loop).

May import: the standard library, ``gateway.eventlog`` and ``gateway.transport.udp`` (its
port-in-use error).
Roles register their own status sections and metric families here; this package imports
no role.
"""
