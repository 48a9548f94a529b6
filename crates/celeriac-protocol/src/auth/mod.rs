//! Signed messages: Celery's `auth` serializer (`app.setup_security()`).
//!
//! A producer with security set up serializes the body as usual (JSON),
//! signs those bytes with its private key, and sends an [`Envelope`] of
//! signer, signature and body with the content type [`CONTENT_TYPE`]. A
//! receiver looks the signer's certificate up among those it trusts,
//! verifies the signature over the bytes *before* parsing them, and only
//! then decodes the inner body. Results are signed the same way.
//!
//! [`Signer`] signs, [`Verifier`] verifies; [`seal`] and [`open`] wrap and
//! unwrap a body. Reading key and certificate files is the caller's job:
//! this crate does no I/O.

mod envelope;
mod keys;

use std::time::SystemTime;

pub use envelope::{Envelope, Layout};
pub use keys::{AuthError, Digest, Signer, Verifier};

/// The content type of a signed body, as kombu registers the `auth`
/// serializer.
pub const CONTENT_TYPE: &str = "application/data";
/// The content encoding sent with [`CONTENT_TYPE`].
pub const CONTENT_ENCODING: &str = "utf-8";

/// Whether `content_type` marks a signed body.
pub fn is_signed(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|t| t.trim().eq_ignore_ascii_case(CONTENT_TYPE))
}

/// Whether a stored value is a sealed envelope rather than plain JSON or
/// a pickle: base64 text whose decoding holds the field separator. A JSON
/// value is never that (`"…"`, `{`, `[` and `-` are not base64, and a bare
/// number or `true` decodes to bytes without the separator).
///
/// ```
/// use celeriac_protocol::auth::looks_sealed;
/// assert!(looks_sealed(b"VGVzdCBDQSAxMjM0AAE="));
/// assert!(!looks_sealed(b"1234"));
/// assert!(!looks_sealed(br#"{"status": "SUCCESS"}"#));
/// ```
pub fn looks_sealed(stored: &[u8]) -> bool {
    envelope::looks_packed(stored)
}

/// Signs `body` (of `content_type` and `content_encoding`) and packs it as
/// Celery's `auth` serializer does, in the signer's [`Layout`].
pub fn seal(signer: &Signer, content_type: &str, content_encoding: &str, body: &[u8]) -> Vec<u8> {
    Envelope {
        signer: signer.id().to_owned(),
        signature: signer.sign(body),
        content_type: content_type.to_owned(),
        content_encoding: content_encoding.to_owned(),
        body: body.to_vec(),
    }
    .pack(signer.layout())
}

/// Signs an encoded, uncompressed JSON message in place (a control
/// request or reply, which kombu serializes with the task serializer):
/// its body becomes the envelope and its content type [`CONTENT_TYPE`].
pub fn seal_message(raw: &mut crate::RawMessage, signer: &Signer) {
    let content_type = raw
        .properties
        .content_type
        .take()
        .unwrap_or_else(|| crate::content::JSON.into());
    let content_encoding = raw
        .properties
        .content_encoding
        .take()
        .unwrap_or_else(|| crate::content::UTF8.into());
    raw.body = seal(signer, &content_type, &content_encoding, &raw.body).into();
    raw.properties.content_type = Some(CONTENT_TYPE.into());
    raw.properties.content_encoding = Some(CONTENT_ENCODING.into());
}

/// Unpacks a signed body (either layout) and verifies it at `now`; the
/// envelope returned holds the inner body, which may then be decoded.
pub fn open(verifier: &Verifier, sealed: &[u8], now: SystemTime) -> Result<Envelope, AuthError> {
    let (envelope, _) = Envelope::unpack(sealed, |signer| verifier.signature_len(signer))?;
    verifier.verify(&envelope.signer, &envelope.signature, &envelope.body, now)?;
    Ok(envelope)
}
