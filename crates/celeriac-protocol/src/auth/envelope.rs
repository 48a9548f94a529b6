//! The signed envelope of Celery's `auth` serializer, without the crypto:
//! five fields joined by the bytes `\x00\x01`, the whole base64-encoded.
//!
//! The fields are the signer's certificate id, the signature, the inner
//! content type, the inner content encoding and the inner body, which is
//! what was signed. Celery 5.5 changed how the first two are written
//! ([`Layout`]); a reader tells the layouts apart by the signer field: a
//! certificate id always holds a space, base64 never does.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::AuthError;

/// Separates the fields.
const SEPARATOR: &[u8] = b"\x00\x01";

/// How the signer and the signature are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Layout {
    /// Celery 5.5 and later: each base64-encoded, so neither can hold the
    /// separator.
    #[default]
    Celery55,
    /// Celery 5.4 and earlier: the signer id as text and the signature as
    /// raw bytes, which a reader finds by the signer's key size. Celery 5.5
    /// and later cannot read it, nor can these versions read the newer one.
    Celery54,
}

/// Whether `packed` is base64 text holding the field separator.
pub(super) fn looks_packed(packed: &[u8]) -> bool {
    STANDARD
        .decode(packed.trim_ascii())
        .is_ok_and(|raw| raw.windows(SEPARATOR.len()).any(|w| w == SEPARATOR))
}

/// One signed body, unpacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The signer's certificate id: its issuer's attribute values and its
    /// serial number, space-separated (Celery's `Certificate.get_id`).
    pub signer: String,
    /// The RSA-PSS signature of `body`.
    pub signature: Vec<u8>,
    /// The inner body's content type (`application/json`).
    pub content_type: String,
    /// The inner body's content encoding (`utf-8`).
    pub content_encoding: String,
    /// The inner body, exactly as signed.
    pub body: Vec<u8>,
}

impl Envelope {
    /// The envelope as it goes on the wire (base64 text), in `layout`.
    pub fn pack(&self, layout: Layout) -> Vec<u8> {
        let (signer, signature) = match layout {
            Layout::Celery55 => (
                STANDARD.encode(&self.signer).into_bytes(),
                STANDARD.encode(&self.signature).into_bytes(),
            ),
            Layout::Celery54 => (self.signer.clone().into_bytes(), self.signature.clone()),
        };
        let fields: [&[u8]; 5] = [
            &signer,
            &signature,
            self.content_type.as_bytes(),
            self.content_encoding.as_bytes(),
            &self.body,
        ];
        STANDARD.encode(fields.join(SEPARATOR)).into_bytes()
    }

    /// Reads an envelope in either layout. `signature_len` gives the
    /// signature's length for a signer id (its key size in bytes), which
    /// the older layout needs to find where the signature ends.
    pub fn unpack(
        packed: &[u8],
        signature_len: impl Fn(&str) -> Option<usize>,
    ) -> Result<(Envelope, Layout), AuthError> {
        let malformed = |what: String| AuthError::Malformed(what);
        let raw = STANDARD
            .decode(packed.trim_ascii())
            .map_err(|e| malformed(format!("the signed body is not base64: {e}")))?;
        let (first, rest) =
            split(&raw).ok_or_else(|| malformed("the signed body has 1 of its 5 fields".into()))?;
        let (signer, signature, rest, layout) = if first.contains(&b' ') {
            let signer = text(first, "signer")?;
            let length =
                signature_len(&signer).ok_or_else(|| AuthError::UnknownSigner(signer.clone()))?;
            let signature = rest
                .get(..length)
                .ok_or_else(|| malformed("its signature is cut short".into()))?;
            let rest = rest[length..]
                .strip_prefix(SEPARATOR)
                .ok_or_else(|| malformed("its signature is not as long as the key".into()))?;
            (signer, signature.to_vec(), rest, Layout::Celery54)
        } else {
            let (signature, rest) = split(rest)
                .ok_or_else(|| malformed("the signed body has 2 of its 5 fields".into()))?;
            let signer = text(&base64(first, "signer")?, "signer")?;
            (
                signer,
                base64(signature, "signature")?,
                rest,
                Layout::Celery55,
            )
        };
        let (content_type, rest) =
            split(rest).ok_or_else(|| malformed("the signed body has 3 of its 5 fields".into()))?;
        let (content_encoding, body) =
            split(rest).ok_or_else(|| malformed("the signed body has 4 of its 5 fields".into()))?;
        let envelope = Envelope {
            signer,
            signature,
            content_type: text(content_type, "content type")?,
            content_encoding: text(content_encoding, "content encoding")?,
            body: body.to_vec(),
        };
        Ok((envelope, layout))
    }
}

/// `bytes` split at its first separator.
fn split(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = bytes
        .windows(SEPARATOR.len())
        .position(|w| w == SEPARATOR)?;
    Some((&bytes[..at], &bytes[at + SEPARATOR.len()..]))
}

fn text(field: &[u8], name: &str) -> Result<String, AuthError> {
    String::from_utf8(field.to_vec())
        .map_err(|_| AuthError::Malformed(format!("its {name} is not UTF-8")))
}

fn base64(field: &[u8], name: &str) -> Result<Vec<u8>, AuthError> {
    STANDARD
        .decode(field)
        .map_err(|e| AuthError::Malformed(format!("its {name} is not base64: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(body: &[u8]) -> Envelope {
        Envelope {
            signer: "Test CA 1234".into(),
            signature: vec![0, 1, 2, 255],
            content_type: "application/json".into(),
            content_encoding: "utf-8".into(),
            body: body.to_vec(),
        }
    }

    /// Every signer's signature is 4 bytes long here.
    fn four(_: &str) -> Option<usize> {
        Some(4)
    }

    #[test]
    fn packs_and_unpacks_whatever_the_body_holds_in_both_layouts() {
        for layout in [Layout::Celery55, Layout::Celery54] {
            for body in [&b"[[2, 3], {}, {}]"[..], b"", b"a\x00\x01b\x00\x01c"] {
                let sealed = envelope(body);
                assert_eq!(
                    Envelope::unpack(&sealed.pack(layout), four),
                    Ok((sealed, layout))
                );
            }
        }
    }

    #[test]
    fn matches_celerys_layouts() {
        let raw = STANDARD
            .decode(envelope(b"{}").pack(Layout::Celery55))
            .unwrap();
        assert_eq!(
            raw,
            b"VGVzdCBDQSAxMjM0\x00\x01AAEC/w==\x00\x01application/json\x00\x01utf-8\x00\x01{}"
        );
        let raw = STANDARD
            .decode(envelope(b"{}").pack(Layout::Celery54))
            .unwrap();
        assert_eq!(
            raw,
            b"Test CA 1234\x00\x01\x00\x01\x02\xff\x00\x01application/json\x00\x01utf-8\x00\x01{}"
        );
    }

    #[test]
    fn malformed_envelopes_say_what_is_wrong() {
        let err = |packed: &[u8]| Envelope::unpack(packed, four).unwrap_err().to_string();
        assert!(err(b"not base64!").contains("base64"));
        let short = STANDARD.encode(b"a\x00\x01b");
        assert!(err(short.as_bytes()).contains("2 of its 5 fields"));
        let unknown = Envelope::unpack(&envelope(b"{}").pack(Layout::Celery54), |_| None);
        assert_eq!(
            unknown,
            Err(AuthError::UnknownSigner("Test CA 1234".into()))
        );
    }
}
