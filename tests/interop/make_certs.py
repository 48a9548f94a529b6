"""Generates the keys and certificates the signed-message tests use.

    python make_certs.py DIR

writes, for each signer, ``<name>.key`` and a self-signed ``<name>.pem``:

- ``python``: the Python side's (PKCS#8 key, no password);
- ``rust``: the Rust side's (PKCS#8 key encrypted with the password
  ``rust-secret``, to exercise ``security_key_password``);
- ``stranger``: a signer nobody trusts (PKCS#1 key);
- ``expired``: a signer whose certificate expired yesterday.

and ``store/``, the certificate store both sides trust (python and rust),
and ``expired-store/``, which also holds the expired certificate (Celery
refuses to load such a store). Nothing here is committed: each test run
makes its own.
"""

import datetime
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


def make(directory, name, key_format, password=None, expired=False, serial=None):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, 'NL'),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, 'Celeriac tests'),
        x509.NameAttribute(NameOID.COMMON_NAME, f'{name} signer'),
    ])
    now = datetime.datetime.now(datetime.timezone.utc)
    not_after = now - datetime.timedelta(days=1) if expired else now + datetime.timedelta(days=2)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=3))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    encryption = (
        serialization.BestAvailableEncryption(password.encode())
        if password else serialization.NoEncryption()
    )
    with open(os.path.join(directory, f'{name}.key'), 'wb') as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, key_format, encryption))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    with open(os.path.join(directory, f'{name}.pem'), 'wb') as f:
        f.write(pem)
    return pem


def main(directory):
    os.makedirs(directory, exist_ok=True)
    pkcs8 = serialization.PrivateFormat.PKCS8
    trusted = {
        'python': make(directory, 'python', pkcs8),
        'rust': make(directory, 'rust', pkcs8, password='rust-secret'),
    }
    expired = make(directory, 'expired', pkcs8, expired=True)
    make(directory, 'stranger', serialization.PrivateFormat.TraditionalOpenSSL)
    stores = {'store': trusted, 'expired-store': {**trusted, 'expired': expired}}
    for store, certificates in stores.items():
        os.makedirs(os.path.join(directory, store), exist_ok=True)
        for name, pem in certificates.items():
            with open(os.path.join(directory, store, f'{name}.pem'), 'wb') as f:
                f.write(pem)


if __name__ == '__main__':
    main(sys.argv[1])
