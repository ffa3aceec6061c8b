"""bench_anycast finds the route's withdrawal in the daemon's structured log (make bench
stopped at the drain while it looked for the message texts of before the structured logs)."""

from __future__ import annotations

from tests.bench.bench_anycast import ROUTE_WITHDRAWN, log_times

LOG = "\n".join([
    'ts=2026-12-07T22:42:28.100Z level=info logger=gateway.daemon msg="drain requested: '
    'withdrawing the anycast route, then stopping"',
    'ts=2026-12-07T22:42:28.250Z level=info logger=anycast.manager event=anycast.route '
    'msg="anycast route changed" action=withdrawn reason=drain',
    'ts=2026-12-07T22:40:00.000Z level=info logger=anycast.manager event=anycast.route '
    'msg="anycast route changed" action=announced reason=rise',
    'ts=2026-12-07T22:41:00.500Z level=info logger=anycast.manager event=anycast.route '
    'msg="anycast route changed" action=withdrawn reason=fall',
])


def test_the_withdrawals_are_found_by_their_event_and_the_drain_by_its_reason() -> None:
    withdrawn = log_times(LOG, *ROUTE_WITHDRAWN)
    drained = log_times(LOG, *ROUTE_WITHDRAWN, "reason=drain")
    requested = log_times(LOG, "drain requested: withdrawing the anycast route")
    assert len(withdrawn) == 2 and len(drained) == 1 and len(requested) == 1
    assert round(drained[0] - requested[0], 3) == 0.15
    assert round(withdrawn[0] - withdrawn[1], 3) == 87.75
