"""Signal-channel redirect (RFC 9132 §4.6, seed §10): the server-side policy (who is sent
where, for how long) and the client-side rules for following a redirect, as pure logic."""
