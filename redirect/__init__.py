"""Signal-channel redirect: server-side redirect policy and client-side rules for following a 5.03 redirect (not yet implemented)."""
