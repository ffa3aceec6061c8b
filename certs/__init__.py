"""Identity: cuid/cdid derivation from X.509 SPKI, raw public keys and PSK identities, peer identity objects, and the dev PKI."""
