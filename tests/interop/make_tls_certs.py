"""Generates a TLS setup for the tests that start a TLS listener.

    python make_tls_certs.py DIR

writes, as PEM (keys in PKCS#8, unencrypted):

- ``ca.pem``/``ca.key``: a test CA;
- ``server.pem``/``server.key``: the listener's certificate, signed by the
  CA, for the name ``localhost`` only (so ``127.0.0.1`` is a wrong name);
- ``client.pem``/``client.key``: a client certificate signed by the CA,
  common name ``celeriac-client`` (the user RabbitMQ's EXTERNAL mechanism
  logs it in as);
- ``other-ca.pem``: a CA that signed none of them.

Nothing here is committed: each test run makes its own.
"""

import datetime
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def write(directory, stem, cert, private_key=None):
    with open(os.path.join(directory, f'{stem}.pem'), 'wb') as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    if private_key is not None:
        with open(os.path.join(directory, f'{stem}.key'), 'wb') as f:
            f.write(private_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))


def ca(common_name):
    ca_key = key()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(common_name)).issuer_name(name(common_name))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True,
            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, ca_key


def leaf(ca_cert, ca_key, common_name, usage, dns_names=()):
    leaf_key = key()
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(common_name)).issuer_name(ca_cert.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if dns_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), leaf_key


def main(directory):
    os.makedirs(directory, exist_ok=True)
    ca_cert, ca_key = ca('Celeriac test CA')
    write(directory, 'ca', ca_cert, ca_key)
    server, server_key = leaf(ca_cert, ca_key, 'localhost', ExtendedKeyUsageOID.SERVER_AUTH,
                              ['localhost'])
    write(directory, 'server', server, server_key)
    client, client_key = leaf(ca_cert, ca_key, 'celeriac-client', ExtendedKeyUsageOID.CLIENT_AUTH)
    write(directory, 'client', client, client_key)
    other, _ = ca('Another CA')
    write(directory, 'other-ca', other)


if __name__ == '__main__':
    main(sys.argv[1])
