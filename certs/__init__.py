"""Identity: cuid/cdid derivation (RFC 9132 App. B), peer identity objects, the dev PKI."""
