//! The signed envelope of Celery's `auth` serializer, without the crypto:
//! five fields joined by the bytes `\x00\x01`, the whole base64-encoded.
//!
//! The fields are the signer's certificate id (base64), the signature
//! (base64), the inner content type, the inner content encoding and the
//! inner body, which is what was signed. The body comes last and may hold
//! anything, so a reader splits at the first four separators only.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Separates the fields; Celery guarantees it occurs in none of the first
/// four (two are base64, two are MIME names).
const SEPARATOR: &[u8] = b"\x00\x01";

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
    /// The envelope as it goes on the wire (base64 text).
    pub fn pack(&self) -> Vec<u8> {
        let signer = STANDARD.encode(&self.signer);
        let signature = STANDARD.encode(&self.signature);
        let fields: [&[u8]; 5] = [
            signer.as_bytes(),
            signature.as_bytes(),
            self.content_type.as_bytes(),
            self.content_encoding.as_bytes(),
            &self.body,
        ];
        STANDARD.encode(fields.join(SEPARATOR)).into_bytes()
    }

    /// Reads an envelope from the wire; the error says what is malformed.
    pub fn unpack(packed: &[u8]) -> Result<Envelope, String> {
        let text = packed.trim_ascii();
        let raw = STANDARD
            .decode(text)
            .map_err(|e| format!("the signed body is not base64: {e}"))?;
        let mut fields = Vec::with_capacity(5);
        let mut rest = raw.as_slice();
        while fields.len() < 4 {
            let Some(at) = rest.windows(2).position(|w| w == SEPARATOR) else {
                return Err(format!(
                    "the signed body has {} of its 5 fields",
                    fields.len() + 1
                ));
            };
            fields.push(&rest[..at]);
            rest = &rest[at + SEPARATOR.len()..];
        }
        let text = |field: &[u8], name: &str| {
            String::from_utf8(field.to_vec()).map_err(|_| format!("its {name} is not UTF-8"))
        };
        let base64 = |field: &[u8], name: &str| {
            STANDARD
                .decode(field)
                .map_err(|e| format!("its {name} is not base64: {e}"))
        };
        Ok(Envelope {
            signer: text(&base64(fields[0], "signer")?, "signer")?,
            signature: base64(fields[1], "signature")?,
            content_type: text(fields[2], "content type")?,
            content_encoding: text(fields[3], "content encoding")?,
            body: rest.to_vec(),
        })
    }
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

    #[test]
    fn packs_and_unpacks_whatever_the_body_holds() {
        for body in [&b"[[2, 2], {}, {}]"[..], b"", b"a\x00\x01b\x00\x01c"] {
            let sealed = envelope(body);
            assert_eq!(Envelope::unpack(&sealed.pack()), Ok(sealed));
        }
    }

    #[test]
    fn matches_celerys_layout() {
        // base64(b64(signer) \0\1 b64(signature) \0\1 type \0\1 encoding \0\1 body)
        let packed = envelope(b"{}").pack();
        let raw = STANDARD.decode(&packed).unwrap();
        assert_eq!(
            raw,
            b"VGVzdCBDQSAxMjM0\x00\x01AAEC/w==\x00\x01application/json\x00\x01utf-8\x00\x01{}"
        );
    }

    #[test]
    fn malformed_envelopes_say_what_is_wrong() {
        assert!(
            Envelope::unpack(b"not base64!")
                .unwrap_err()
                .contains("base64")
        );
        let short = STANDARD.encode(b"a\x00\x01b");
        assert!(
            Envelope::unpack(short.as_bytes())
                .unwrap_err()
                .contains("2 of its 5 fields")
        );
    }
}
