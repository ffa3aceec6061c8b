"""The development PKI: a private CA, one server and one client certificate, and a PSK.

This module owns generating that material into a directory, loading it back, and the file
names in it, which are an interface (``dots-gateway certs init DIR``, the daemon's state
directory, and outside peers such as ``coap-client -c client.pem -j client.key -C ca.pem`` or
``coap-client -u IDENTITY -k KEY`` rely on them). Everything is ECDSA P-256: handshakes are
cheap and certificates small, which matters when a DTLS flight must fit in datagrams.

It touches the file system and nothing else; cuids come from ``certs.identity``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import json
import os
import secrets
import string
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.identity import cuid_from_certificate, cuid_from_psk_identity

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
CLIENT_CERT = "client.pem"
CLIENT_KEY = "client.key"
PSK_FILE = "psk.json"
ALL_FILES = (CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY, CLIENT_CERT, CLIENT_KEY, PSK_FILE)
_SECRET_FILES = frozenset({CA_KEY, SERVER_KEY, CLIENT_KEY, PSK_FILE})
_FIELD_NAMES = ("ca_cert", "ca_key", "server_cert", "server_key", "client_cert", "client_key")
_PATH_FIELDS = dict(zip((*_FIELD_NAMES, "psk_file"), ALL_FILES, strict=True))
_PAIRS = ((CA_CERT, CA_KEY), (SERVER_CERT, SERVER_KEY), (CLIENT_CERT, CLIENT_KEY))

SERVER_CN = "dots-dev-server"
CLIENT_CN = "dots-dev-client"
# Printable ASCII only, so the file's strings are the exact bytes `coap-client -u/-k` sends.
_PSK_ALPHABET = string.ascii_letters + string.digits
_ORGANIZATION = "dots-gateway dev PKI"
_PEM = serialization.Encoding.PEM
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_T = TypeVar("_T")
_KEY_USAGES = (
    "digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
    "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only",
)  # fmt: skip
_SPKI_FORMAT = serialization.PublicFormat.SubjectPublicKeyInfo


class DevPkiError(Exception):
    """The directory cannot hold, or does not hold, a usable dev PKI; the message says why."""


@dataclass(frozen=True, slots=True)
class DevPki:
    """A complete dev PKI on disk, as found or written by ``init_dev_pki``.

    The paths are derived from ``directory`` and the file-name constants of this module.
    """

    directory: Path
    client_cuid: str
    psk_identity: str
    psk_key: str = field(repr=False)
    ca_cert: Path = field(init=False, repr=False)
    ca_key: Path = field(init=False, repr=False)
    server_cert: Path = field(init=False, repr=False)
    server_key: Path = field(init=False, repr=False)
    client_cert: Path = field(init=False, repr=False)
    client_key: Path = field(init=False, repr=False)
    psk_file: Path = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for attribute, file_name in _PATH_FIELDS.items():
            object.__setattr__(self, attribute, self.directory / file_name)

    @property
    def psk_cuid(self) -> str:
        """The cuid of a client that authenticates with the dev PSK."""
        return cuid_from_psk_identity(self.psk_identity)


def init_dev_pki(
    directory: Path,
    *,
    hostnames: Iterable[str] = ("localhost",),
    addresses: Iterable[str] = ("127.0.0.1", "::1"),
    days: int = 825,
    overwrite: bool = False,
    now: dt.datetime | None = None,
) -> DevPki:
    """Return the dev PKI in ``directory``, generating it there first if it holds none.

    A complete existing PKI is loaded, not regenerated (the daemon calls this on every start),
    and must still cover ``hostnames`` and ``addresses``; ``days`` then does not apply.
    A partial one raises ``DevPkiError`` naming the missing files rather than mixing old and
    new material. ``overwrite=True`` replaces all of it. ``now`` (aware) is for tests.
    """
    directory = Path(directory)
    dns_names, ips = _subject_alt_names(hostnames, addresses)
    if days < 1:
        raise DevPkiError(f"days must be at least 1, not {days}")
    now = now or dt.datetime.now(dt.UTC)
    _make_directory(directory)
    try:
        with _locked(directory) as directory_fd:
            if not overwrite:
                missing = _missing_files(directory)
                if not missing:
                    pki, server_cert = _load(directory, now)
                    _check_covers(server_cert, dns_names, ips)
                    return pki
                if len(missing) < len(ALL_FILES):
                    raise DevPkiError(
                        f"{directory} holds an incomplete dev PKI, missing {', '.join(missing)}"
                        f"; regenerate all of it (dots-gateway certs init --force {directory})"
                        " or remove the directory"
                    )
            _generate(directory, dns_names, ips, days, now)
            # The renames must be on disk before anyone relies on the files.
            os.fsync(directory_fd)
            return _load(directory, now)[0]
    except OSError as exc:
        raise DevPkiError(f"cannot write the dev PKI in {directory}: {exc}") from exc


def load_dev_pki(directory: Path, *, now: dt.datetime | None = None) -> DevPki:
    """Load and check an existing dev PKI without ever writing to ``directory``.

    Raises ``DevPkiError`` if a file is missing or unreadable, a key does not match its
    certificate, a leaf was not issued by ``ca.pem`` (material from two generations), or a
    certificate is outside its validity period at ``now``.
    """
    return _load(Path(directory), now or dt.datetime.now(dt.UTC))[0]


def _load(directory: Path, now: dt.datetime) -> tuple[DevPki, x509.Certificate]:
    """The PKI in ``directory`` and its server certificate, after the checks."""
    missing = _missing_files(directory)
    if missing:
        raise DevPkiError(f"{directory} has no complete dev PKI, missing {', '.join(missing)}")
    certs = {
        name: _read(directory / name, x509.load_pem_x509_certificate, "a PEM certificate")
        for name, _ in _PAIRS
    }
    for cert_name, key_name in _PAIRS:
        key = _read(directory / key_name, _read_private_key, "an unencrypted PEM private key")
        if _spki(key.public_key()) != _spki(certs[cert_name].public_key()):
            raise DevPkiError(f"{directory / key_name} is not the key of {cert_name}")
        cert = certs[cert_name]
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise DevPkiError(
                f"{directory / cert_name} is not valid on {now:%Y-%m-%d} (only from"
                f" {cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d});"
                f" regenerate the dev PKI (dots-gateway certs init --force {directory})"
            )
    for leaf_name in (SERVER_CERT, CLIENT_CERT):
        try:
            certs[leaf_name].verify_directly_issued_by(certs[CA_CERT])
        except (ValueError, TypeError, InvalidSignature):
            raise DevPkiError(f"{directory / leaf_name} was not issued by {CA_CERT}") from None
    psk_identity, psk_key = _read_psk(directory / PSK_FILE)
    client_cuid = cuid_from_certificate(certs[CLIENT_CERT])
    return DevPki(directory, client_cuid, psk_identity, psk_key), certs[SERVER_CERT]


def _subject_alt_names(
    hostnames: Iterable[str], addresses: Iterable[str]
) -> tuple[list[str], list[_Address]]:
    # A bare string is one name, not a sequence of one-letter names.
    dns_names = [hostnames] if isinstance(hostnames, str) else list(hostnames)
    raw_ips = [addresses] if isinstance(addresses, str) else list(addresses)
    for name in dns_names:
        if not isinstance(name, str) or not name or not name.isascii() or " " in name:
            raise DevPkiError(f"hostname {name!r} is not an ASCII DNS name (use xn-- for IDNs)")
    ips = []
    for address in raw_ips:
        try:
            ips.append(ipaddress.ip_address(address))
        except ValueError:
            raise DevPkiError(f"address {address!r} is not an IPv4 or IPv6 address") from None
    if not dns_names and not ips:
        raise DevPkiError("the certificates need at least one hostname or address")
    return dns_names, ips


def _generate(
    directory: Path,
    dns_names: list[str],
    ips: list[_Address],
    days: int,
    now: dt.datetime,
) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    # A random suffix keeps two dev CAs from sharing a subject; trust stores look issuers up by
    # name, and a clash shows up as a baffling signature failure instead of "unknown CA".
    ca_name = _name(f"dots-gateway dev CA {secrets.token_hex(4)}")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key(), days, now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage("key_cert_sign", "crl_sign"), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    san = x509.SubjectAlternativeName(
        [x509.DNSName(name) for name in dns_names] + [x509.IPAddress(ip) for ip in ips]
    )
    files: dict[str, bytes] = {CA_CERT: ca.public_bytes(_PEM), CA_KEY: _pem_key(ca_key)}
    for cert_name, key_name, cn, usage in (
        (SERVER_CERT, SERVER_KEY, SERVER_CN, ExtendedKeyUsageOID.SERVER_AUTH),
        (CLIENT_CERT, CLIENT_KEY, CLIENT_CN, ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            _builder(_name(cn), ca_name, key.public_key(), days, now)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage("digital_signature"), critical=True)
            # One purpose per leaf: a server certificate offered as a client one is refused.
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(san, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(ca_key, hashes.SHA256())
        )
        files[cert_name], files[key_name] = cert.public_bytes(_PEM), _pem_key(key)
    psk = {
        "identity": f"{CLIENT_CN}-{secrets.token_hex(4)}",
        "key": "".join(secrets.choice(_PSK_ALPHABET) for _ in range(32)),
    }
    files[PSK_FILE] = (json.dumps(psk, indent=2) + "\n").encode("ascii")
    for name in ALL_FILES:
        _write_atomic(directory / name, files[name], 0o600 if name in _SECRET_FILES else 0o644)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePublicKey,
    days: int,
    now: dt.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        # An hour of slack so that a peer whose clock is a little behind accepts a fresh PKI.
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=days))
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(*granted: str) -> x509.KeyUsage:
    return x509.KeyUsage(**{usage: usage in granted for usage in _KEY_USAGES})


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    pkcs8 = serialization.PrivateFormat.PKCS8
    return key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption())


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, _SPKI_FORMAT)


def _missing_files(directory: Path) -> list[str]:
    return [name for name in ALL_FILES if not (directory / name).exists()]


def _check_covers(cert: x509.Certificate, dns_names: list[str], ips: list[_Address]) -> None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        present = [*san.get_values_for_type(x509.DNSName), *san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        present = []
    lacking = [str(name) for name in (*dns_names, *ips) if name not in present]
    if lacking:
        raise DevPkiError(
            f"{SERVER_CERT} does not cover {', '.join(lacking)};"
            " regenerate the dev PKI (dots-gateway certs init --force DIR) to add them"
        )


def _read(path: Path, parse: Callable[[bytes], _T], what: str) -> _T:
    try:
        return parse(path.read_bytes())
    except OSError as exc:
        raise DevPkiError(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # TypeError: an encrypted key; the daemon has nobody to ask for a passphrase.
        raise DevPkiError(f"{path} is not {what}: {exc}") from None


def _read_private_key(data: bytes) -> PrivateKeyTypes:
    return serialization.load_pem_private_key(data, password=None)


def _read_psk(path: Path) -> tuple[str, str]:
    document = _read(path, json.loads, "JSON")
    values = document if isinstance(document, dict) else {}
    for member in ("identity", "key"):
        value = values.get(member)
        if not isinstance(value, str) or not value or not (value.isascii() and value.isprintable()):
            raise DevPkiError(f'{path}: "{member}" must be a non-empty printable ASCII string')
    return values["identity"], values["key"]


def _make_directory(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        if not directory.is_dir():
            raise DevPkiError(f"{directory} exists and is not a directory") from None
        return  # an existing directory keeps the mode its owner chose
    except OSError as exc:
        raise DevPkiError(f"cannot create {directory}: {exc.strerror}") from None
    # mkdir's mode passes through the umask, and one that strips owner bits (0o277) would
    # leave a directory we cannot write the files into.
    os.chmod(directory, 0o700)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[int]:
    # Two processes initialising the same state directory at once would interleave files
    # from two generations; flock on the directory itself needs no lock file in it.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as stream:
            # Set the mode before the secret is written, not after it is already readable.
            os.fchmod(stream.fileno(), mode)
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
