"""Test certificates and SuperNode authentication keys for Flower deployments.

Everything is generated in Python with the ``cryptography`` package (no ``openssl`` shell-outs):

* a self-signed test certificate authority (``ca.crt`` / ``ca.key``),
* a SuperLink server certificate signed by it (``server.pem`` / ``server.key``) whose
  subjectAltName lists ``localhost``, ``127.0.0.1`` and any extra host names / IP addresses
  (add the SuperLink machine's address when SuperNodes run on other machines),
* one ECDSA P-384 key pair per SuperNode in OpenSSH format
  (``supernode-keys/supernode-<i>`` private, ``supernode-<i>.pub`` public): the format that
  ``flower-supernode --auth-supernode-private-key`` reads and that
  ``flwr supernode register`` accepts.

These are for tests and for trying a deployment out. For production use certificates issued by
your organisation's CA.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1")
KEYS_SUBDIR = "supernode-keys"


@dataclass(frozen=True)
class CertificateSet:
    """Paths of the files written by :func:`generate_certificates`."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    supernode_private_keys: list[Path] = field(default_factory=list)
    supernode_public_keys: list[Path] = field(default_factory=list)

    @classmethod
    def from_directory(cls, directory: str | Path) -> CertificateSet:
        """Describe an existing certificate directory (as written by the generator).

        Raises ``FileNotFoundError`` if the CA or server files are missing.
        """
        d = Path(directory)
        certs = cls(
            directory=d,
            ca_cert=d / "ca.crt",
            ca_key=d / "ca.key",
            server_cert=d / "server.pem",
            server_key=d / "server.key",
            supernode_private_keys=sorted(
                (p for p in (d / KEYS_SUBDIR).glob("supernode-*") if p.suffix != ".pub"),
                key=_key_index,
            ),
            supernode_public_keys=sorted((d / KEYS_SUBDIR).glob("supernode-*.pub"), key=_key_index),
        )
        for p in (certs.ca_cert, certs.server_cert, certs.server_key):
            if not p.is_file():
                raise FileNotFoundError(f"certificate file missing: {p}")
        return certs


def _key_index(path: Path) -> int:
    stem = path.name.split(".")[0]
    try:
        return int(stem.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 1 << 30


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _san_entries(hosts: Sequence[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in hosts:
        host = host.strip()
        if not host or host in seen:
            continue
        seen.add(host)
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    if not entries:
        raise ValueError("at least one host name or IP address is needed for the certificate")
    return entries


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def generate_supernode_keys(
    directory: str | Path, num_supernodes: int, *, overwrite: bool = False
) -> tuple[list[Path], list[Path]]:
    """Write ``num_supernodes`` ECDSA P-384 key pairs in OpenSSH format.

    Files: ``<directory>/supernode-<i>`` (private, mode 0600) and ``supernode-<i>.pub`` for
    i = 0..num_supernodes-1. Existing pairs are kept unless ``overwrite``.
    Returns (private key paths, public key paths).
    """
    if num_supernodes < 0:
        raise ValueError(f"num_supernodes must be >= 0, got {num_supernodes}")
    d = Path(directory)
    privs: list[Path] = []
    pubs: list[Path] = []
    for i in range(num_supernodes):
        priv = d / f"supernode-{i}"
        pub = d / f"supernode-{i}.pub"
        if overwrite or not (priv.is_file() and pub.is_file()):
            key = ec.generate_private_key(ec.SECP384R1())
            _write(
                priv,
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.OpenSSH,
                    serialization.NoEncryption(),
                ),
                private=True,
            )
            ssh_pub = key.public_key().public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            )
            _write(pub, ssh_pub + f" fedstrat-supernode-{i}\n".encode())
        privs.append(priv)
        pubs.append(pub)
    return privs, pubs


def generate_certificates(
    directory: str | Path,
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    num_supernodes: int = 0,
    days: int = 365,
    overwrite: bool = False,
) -> CertificateSet:
    """Create a test CA, a SuperLink server certificate and SuperNode auth keys in ``directory``.

    ``hosts`` go into the server certificate's subjectAltName (IP addresses as IP entries,
    anything else as DNS names); ``localhost`` and ``127.0.0.1`` are always included.
    Refuses to replace an existing CA unless ``overwrite`` (a new CA invalidates every
    SuperNode's copy of ``ca.crt``).
    """
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    d = Path(directory)
    ca_cert_path, ca_key_path = d / "ca.crt", d / "ca.key"
    server_cert_path, server_key_path = d / "server.pem", d / "server.key"
    if ca_cert_path.exists() and not overwrite:
        raise FileExistsError(
            f"{ca_cert_path} exists; pass overwrite=True (CLI: --overwrite) to replace it"
        )
    all_hosts = list(DEFAULT_HOSTS) + [h for h in hosts if h not in DEFAULT_HOSTS]
    san = _san_entries(all_hosts)

    now = _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(minutes=5)
    until = now + _dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedstrat test CA"),
            x509.NameAttribute(NameOID.COMMON_NAME, "fedstrat test root CA"),
        ]
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA384())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedstrat"),
                    x509.NameAttribute(NameOID.COMMON_NAME, all_hosts[0]),
                ]
            )
        )
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )

    _write(ca_key_path, _pem_key(ca_key), private=True)
    _write(ca_cert_path, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(server_key_path, _pem_key(server_key), private=True)
    _write(server_cert_path, server_cert.public_bytes(serialization.Encoding.PEM))
    privs, pubs = generate_supernode_keys(d / KEYS_SUBDIR, num_supernodes, overwrite=overwrite)
    return CertificateSet(
        directory=d,
        ca_cert=ca_cert_path,
        ca_key=ca_key_path,
        server_cert=server_cert_path,
        server_key=server_key_path,
        supernode_private_keys=privs,
        supernode_public_keys=pubs,
    )


def certificate_hosts(cert_path: str | Path) -> list[str]:
    """Host names and IP addresses in a certificate's subjectAltName (for checks and docs)."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    out: list[str] = [str(v) for v in ext.get_values_for_type(x509.DNSName)]
    out += [str(v) for v in ext.get_values_for_type(x509.IPAddress)]
    return out
