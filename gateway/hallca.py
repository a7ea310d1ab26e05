"""A small certificate authority for one hall: the broker's TLS certificate, and the CA certificate every
device and the gateway trust. Made once by `hcp-gateway ca-init`; the CA key never leaves the gateway.

Files in the CA folder: ca.crt (PEM, goes to every device as ca.der, DER), ca.key (0600), broker.crt and
broker.key (0600, for Mosquitto's certfile and keyfile).
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_YEARS, BROKER_YEARS = 20, 5


class CaError(RuntimeError):
    """The CA folder is missing, incomplete, or would be overwritten."""


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "政务服务好差评 hall"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def init(folder: Path, hall: str, hosts: list[str]) -> dict:
    """Create the hall CA and the broker's certificate for `hosts` (names or IP addresses the devices and
    the gateway use to reach the broker). Refuses to overwrite an existing CA. Returns the file paths."""
    folder = Path(folder)
    if (folder / "ca.key").exists():
        raise CaError(f"{folder} already holds a CA; devices trust it, so it is not replaced")
    if not hosts:
        raise CaError("name at least one host the broker is reached at (e.g. 127.0.0.1, gw.hall.local)")
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"{hall} hall CA")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now)
          .not_valid_after(now + dt.timedelta(days=365 * CA_YEARS))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    broker_key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.IPAddress(ipaddress.ip_address(h)) if _is_ip(h) else x509.DNSName(h) for h in hosts]
    broker = (x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca_name)
              .public_key(broker_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now).not_valid_after(now + dt.timedelta(days=365 * BROKER_YEARS))
              .add_extension(x509.SubjectAlternativeName(names), critical=False)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .sign(ca_key, hashes.SHA256()))
    _write_key(folder / "ca.key", ca_key)
    _write_key(folder / "broker.key", broker_key)
    (folder / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "ca.der").write_bytes(ca.public_bytes(serialization.Encoding.DER))
    (folder / "broker.crt").write_bytes(broker.public_bytes(serialization.Encoding.PEM))
    return files(folder)


def files(folder: Path) -> dict:
    """The CA folder's files by role; CaError if one is missing."""
    folder = Path(folder)
    found = {role: folder / name for role, name in (("ca", "ca.crt"), ("ca_der", "ca.der"),
                                                     ("certfile", "broker.crt"), ("keyfile", "broker.key"))}
    missing = [str(path) for path in found.values() if not path.exists()]
    if missing:
        raise CaError(f"the hall CA is incomplete: {', '.join(missing)} missing (hcp-gateway ca-init)")
    return found


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False
