//! Keys, certificates and the RSA-PSS signatures of Celery's `auth`
//! serializer: what `celery.security` signs with and verifies against.
//!
//! - A signature is RSA-PSS over the inner body, MGF1 with the same digest,
//!   and the *largest* salt the key allows (`PSS.MAX_LENGTH`), which is
//!   what Python's `cryptography` writes. Verifying, OpenSSL takes any salt
//!   length; this side takes the largest and the digest's length.
//! - A signer is named by its certificate's id: the issuer's attribute
//!   values in order, space-separated, then the serial number in decimal.
//!   The verifier looks the id up among the certificates it trusts and
//!   refuses a certificate past its `notAfter`; like Celery, it checks no
//!   chain: trusting a certificate means putting it in the store.

use std::collections::HashMap;
use std::time::SystemTime;

use der::asn1::{Any, BmpString};
use der::{DecodePem, Encode, Tag, Tagged};
use rand_core::OsRng;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::pss::{BlindedSigningKey, Signature, VerifyingKey};
use rsa::signature::{RandomizedSigner, SignatureEncoding, Verifier as _};
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPrivateKey, RsaPublicKey};
use thiserror::Error;

use super::Layout;

/// Why a key, a certificate or a signed body was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The private key could not be read.
    #[error("the signing key cannot be read: {0}")]
    Key(String),
    /// A certificate could not be read.
    #[error("a certificate cannot be read: {0}")]
    Certificate(String),
    /// Two certificates in the store have the same id.
    #[error("two certificates in the store have the id {0:?}; keep one")]
    DuplicateCertificate(String),
    /// The digest name is not one Celeriac signs with.
    #[error(
        "digest {0:?} is not supported; use sha256 (Celery's default), sha224, sha384 or sha512"
    )]
    Digest(String),
    /// The signed body is not shaped as Celery writes it.
    #[error("malformed signed body: {0}")]
    Malformed(String),
    /// The signer's certificate is not in the store.
    #[error(
        "signed by {0:?}, whose certificate is not among the trusted ones; add it to the \
         certificate store (Celery's security_cert_store) if that signer is trusted"
    )]
    UnknownSigner(String),
    /// The signer's certificate has expired.
    #[error("the certificate {0:?} has expired; renew it, or take it out of the store")]
    Expired(String),
    /// The signature does not match the body.
    #[error(
        "the signature by {0:?} does not match the body: tampered with, or signed with another key"
    )]
    BadSignature(String),
}

/// The digest a signature is made with (Celery's `security_digest`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Digest {
    /// SHA-224.
    Sha224,
    /// SHA-256, Celery's default.
    #[default]
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl Digest {
    /// The digest Celery names `name` (`sha256`, any case).
    ///
    /// ```
    /// use celeriac_protocol::auth::Digest;
    /// assert_eq!(Digest::from_name("SHA256"), Ok(Digest::Sha256));
    /// assert!(Digest::from_name("md5").is_err());
    /// ```
    pub fn from_name(name: &str) -> Result<Digest, AuthError> {
        match name.to_ascii_lowercase().replace('-', "").as_str() {
            "sha224" => Ok(Digest::Sha224),
            "sha256" => Ok(Digest::Sha256),
            "sha384" => Ok(Digest::Sha384),
            "sha512" => Ok(Digest::Sha512),
            _ => Err(AuthError::Digest(name.to_owned())),
        }
    }

    fn output_size(self) -> usize {
        match self {
            Digest::Sha224 => 28,
            Digest::Sha256 => 32,
            Digest::Sha384 => 48,
            Digest::Sha512 => 64,
        }
    }

    /// `PSS.MAX_LENGTH` for a key of `modulus_bits`: the encoded message's
    /// length less the digest and two bytes (0 for a key too small for the
    /// digest, which [`check_key_size`] refuses first).
    fn max_salt(self, modulus_bits: usize) -> usize {
        modulus_bits
            .saturating_sub(1)
            .div_ceil(8)
            .saturating_sub(self.output_size() + 2)
    }
}

/// The smallest RSA key Celeriac signs with or trusts.
const MIN_KEY_BITS: usize = 2048;

/// Refuses a key under [`MIN_KEY_BITS`] (which also leaves room for any
/// digest's salt), naming `what` holds it.
fn check_key_size(key: &RsaPublicKey, what: &str) -> Result<(), String> {
    let bits = key.n().bits();
    if bits < MIN_KEY_BITS {
        return Err(format!(
            "{what} has a {bits}-bit RSA key; use at least {MIN_KEY_BITS} bits"
        ));
    }
    Ok(())
}

/// Signs with one private key, as the holder of one certificate
/// (Celery's `security_key` and `security_certificate`).
#[derive(Clone)]
pub struct Signer {
    key: RsaPrivateKey,
    id: String,
    digest: Digest,
    layout: Layout,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("id", &self.id)
            .field("digest", &self.digest)
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer from a PEM private key (PKCS#8, encrypted PKCS#8 with
    /// `password`, or PKCS#1) and the PEM certificate of its public key.
    pub fn new(
        key_pem: &str,
        password: Option<&str>,
        certificate_pem: &str,
        digest: Digest,
    ) -> Result<Signer, AuthError> {
        let key = private_key(key_pem, password)?;
        let certificate = Certificate::from_pem(certificate_pem)?;
        if SystemTime::now() >= certificate.not_after {
            return Err(AuthError::Expired(certificate.id));
        }
        if RsaPublicKey::from(&key) != certificate.key {
            return Err(AuthError::Key(format!(
                "it is not the key of the certificate {:?}",
                certificate.id
            )));
        }
        Ok(Signer {
            key,
            id: certificate.id,
            digest,
            layout: Layout::default(),
        })
    }

    /// Writes envelopes in `layout`: [`Layout::Celery54`] for receivers on
    /// Celery 5.4 or earlier, which cannot read the default.
    pub fn with_layout(self, layout: Layout) -> Signer {
        Signer { layout, ..self }
    }

    /// The envelope layout this signer writes.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The id receivers look this signer up by.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The RSA-PSS signature of `body`.
    pub fn sign(&self, body: &[u8]) -> Vec<u8> {
        let salt = self.digest.max_salt(self.key.n().bits());
        let key = self.key.clone();
        match self.digest {
            Digest::Sha224 => sign::<sha2::Sha224>(key, salt, body),
            Digest::Sha256 => sign::<sha2::Sha256>(key, salt, body),
            Digest::Sha384 => sign::<sha2::Sha384>(key, salt, body),
            Digest::Sha512 => sign::<sha2::Sha512>(key, salt, body),
        }
    }
}

fn sign<D>(key: RsaPrivateKey, salt: usize, body: &[u8]) -> Vec<u8>
where
    D: sha2::Digest + sha2::digest::FixedOutputReset,
{
    // Blinded: the private-key operation's timing does not follow the input.
    BlindedSigningKey::<D>::new_with_salt_len(key, salt)
        .sign_with_rng(&mut OsRng, body)
        .to_vec()
}

/// The certificates whose holders' signatures are trusted (Celery's
/// `security_cert_store`), by id.
#[derive(Debug, Clone, Default)]
pub struct Verifier {
    certificates: HashMap<String, Certificate>,
    digest: Digest,
}

impl Verifier {
    /// A verifier trusting the PEM certificates given, for `digest`. As in
    /// Celery, an expired certificate in the store is an error.
    pub fn new<'a>(
        certificates: impl IntoIterator<Item = &'a str>,
        digest: Digest,
    ) -> Result<Verifier, AuthError> {
        let mut by_id = HashMap::new();
        let now = SystemTime::now();
        for pem in certificates {
            let certificate = Certificate::from_pem(pem)?;
            if now >= certificate.not_after {
                return Err(AuthError::Expired(certificate.id));
            }
            if by_id.contains_key(&certificate.id) {
                return Err(AuthError::DuplicateCertificate(certificate.id));
            }
            by_id.insert(certificate.id.clone(), certificate);
        }
        Ok(Verifier {
            certificates: by_id,
            digest,
        })
    }

    /// The length of `signer`'s signatures (its key's size in bytes), if
    /// its certificate is trusted.
    pub fn signature_len(&self, signer: &str) -> Option<usize> {
        self.certificates.get(signer).map(|c| c.key.size())
    }

    /// The ids of the trusted certificates.
    pub fn signers(&self) -> impl Iterator<Item = &str> {
        self.certificates.keys().map(String::as_str)
    }

    /// Checks that `signer` signed `body` with `signature` and that its
    /// certificate is trusted and unexpired at `now`.
    pub fn verify(
        &self,
        signer: &str,
        signature: &[u8],
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), AuthError> {
        let certificate = self
            .certificates
            .get(signer)
            .ok_or_else(|| AuthError::UnknownSigner(signer.to_owned()))?;
        if now >= certificate.not_after {
            return Err(AuthError::Expired(signer.to_owned()));
        }
        // Python writes the largest salt; other signers (ring, Go) a salt
        // as long as the digest. OpenSSL, under Python's verify, accepts
        // any length, so both are taken here.
        let max_salt = self.digest.max_salt(certificate.key.n().bits());
        let valid = [max_salt, self.digest.output_size()]
            .into_iter()
            .any(|salt| {
                let key = certificate.key.clone();
                match self.digest {
                    Digest::Sha224 => verify::<sha2::Sha224>(key, salt, signature, body),
                    Digest::Sha256 => verify::<sha2::Sha256>(key, salt, signature, body),
                    Digest::Sha384 => verify::<sha2::Sha384>(key, salt, signature, body),
                    Digest::Sha512 => verify::<sha2::Sha512>(key, salt, signature, body),
                }
            });
        if valid {
            Ok(())
        } else {
            Err(AuthError::BadSignature(signer.to_owned()))
        }
    }
}

fn verify<D>(key: RsaPublicKey, salt: usize, signature: &[u8], body: &[u8]) -> bool
where
    D: sha2::Digest + sha2::digest::FixedOutputReset,
{
    let Ok(signature) = Signature::try_from(signature) else {
        return false;
    };
    VerifyingKey::<D>::new_with_salt_len(key, salt)
        .verify(body, &signature)
        .is_ok()
}

/// What a certificate contributes: its id, RSA key and expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Certificate {
    id: String,
    key: RsaPublicKey,
    not_after: SystemTime,
}

impl Certificate {
    fn from_pem(pem: &str) -> Result<Certificate, AuthError> {
        let bad = |e: &dyn std::fmt::Display| AuthError::Certificate(e.to_string());
        let certificate = x509_cert::Certificate::from_pem(pem).map_err(|e| bad(&e))?;
        let tbs = &certificate.tbs_certificate;
        let spki = tbs.subject_public_key_info.to_der().map_err(|e| bad(&e))?;
        let key = RsaPublicKey::from_public_key_der(&spki).map_err(|e| {
            AuthError::Certificate(format!(
                "its public key is not an RSA key of 2048 to 4096 bits ({e}); Celery signs \
                 with RSA only, and larger keys are not supported here"
            ))
        })?;
        check_key_size(&key, "the certificate").map_err(AuthError::Certificate)?;
        let mut values = Vec::new();
        for rdn in &tbs.issuer.0 {
            for attribute in rdn.0.iter() {
                values.push(attribute_text(&attribute.value).map_err(|e| bad(&e))?);
            }
        }
        let serial = BigUint::from_bytes_be(tbs.serial_number.as_bytes());
        Ok(Certificate {
            id: format!("{} {serial}", values.join(" ")),
            key,
            not_after: SystemTime::UNIX_EPOCH + tbs.validity.not_after.to_unix_duration(),
        })
    }
}

/// An attribute value as Python's `NameAttribute.value` reads it.
fn attribute_text(value: &Any) -> Result<String, String> {
    let bytes = value.value();
    match value.tag() {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::VisibleString => {
            String::from_utf8(bytes.to_vec()).map_err(|_| "an issuer attribute is not text".into())
        }
        Tag::TeletexString => Ok(bytes.iter().map(|&b| char::from(b)).collect()),
        Tag::BmpString => BmpString::from_ucs2(bytes)
            .map(|s| s.to_string())
            .map_err(|e| e.to_string()),
        other => Err(format!("an issuer attribute has the type {other}")),
    }
}

fn private_key(pem: &str, password: Option<&str>) -> Result<RsaPrivateKey, AuthError> {
    let bad = |e: &dyn std::fmt::Display| AuthError::Key(e.to_string());
    if pem.contains("BEGIN ENCRYPTED PRIVATE KEY") {
        let password = password.ok_or_else(|| {
            AuthError::Key("it is encrypted; give its password (security_key_password)".into())
        })?;
        RsaPrivateKey::from_pkcs8_encrypted_pem(pem, password).map_err(|e| bad(&e))
    } else if pem.contains("BEGIN RSA PRIVATE KEY") {
        if pem.contains("ENCRYPTED") {
            return Err(AuthError::Key(
                "it is encrypted in OpenSSL's legacy PEM format; convert it to PKCS#8 \
                 (openssl pkcs8 -topk8)"
                    .into(),
            ));
        }
        RsaPrivateKey::from_pkcs1_pem(pem).map_err(|e| bad(&e))
    } else {
        RsaPrivateKey::from_pkcs8_pem(pem).map_err(|_| {
            AuthError::Key("it is not a PEM RSA private key (PKCS#8 or PKCS#1)".into())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_salt_is_the_largest_the_key_allows() {
        // A 2048-bit key encodes 256 bytes: 256 - 32 - 2 for SHA-256.
        assert_eq!(Digest::Sha256.max_salt(2048), 222);
        assert_eq!(Digest::Sha512.max_salt(4096), 512 - 64 - 2);
        // A modulus one bit past a byte boundary still encodes in 256.
        assert_eq!(Digest::Sha256.max_salt(2049), 222);
        // Too small for the digest: no salt rather than an underflow.
        assert_eq!(Digest::Sha512.max_salt(512), 0);
    }

    #[test]
    fn keys_that_are_not_rsa_pem_are_refused_with_the_reason() {
        let err = private_key("hello", None).unwrap_err();
        assert!(
            err.to_string().contains("not a PEM RSA private key"),
            "{err}"
        );
        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----";
        let err = private_key(encrypted, None).unwrap_err();
        assert!(err.to_string().contains("password"), "{err}");
        let err = Certificate::from_pem("nope").unwrap_err();
        assert!(matches!(err, AuthError::Certificate(_)), "{err}");
    }
}
