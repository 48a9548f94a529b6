//! Signed stored values, in Redis and in the database. With message
//! signing set up, every value a backend writes (results, saved groups,
//! chord parts; in the database each JSON column) is sealed as a Celery
//! app with `result_serializer = 'auth'` seals it, and a sealed value it
//! reads is verified before it is parsed. An unsigned value is
//! refused, as Celery's `accept_content = ['auth']` refuses it, unless
//! unsigned ones are accepted too (`Security::accept_unsigned`): a forged
//! chord part would otherwise become a signed callback's argument.

use std::borrow::Cow;
use std::time::SystemTime;

use celeriac_protocol::{auth, content};

use super::BackendError;
use crate::Security;

/// Seals and opens the documents of one backend.
#[derive(Debug, Clone, Default)]
pub(crate) struct Documents {
    security: Option<Security>,
}

impl Documents {
    /// Sealing with `security`'s key and checking against its store, or
    /// plain JSON without it.
    pub(crate) fn new(security: Option<Security>) -> Documents {
        Documents { security }
    }

    /// The value to store for the JSON `document`.
    pub(crate) fn seal(&self, document: impl Into<Vec<u8>>) -> Vec<u8> {
        let document = document.into();
        match &self.security {
            Some(security) => {
                auth::seal(security.signer(), content::JSON, content::UTF8, &document)
            }
            None => document,
        }
    }

    /// Whether values that are not sealed are refused.
    pub(crate) fn requires_signed(&self) -> bool {
        self.security
            .as_ref()
            .is_some_and(Security::requires_signed)
    }

    /// The JSON inside a stored value, verified if it is sealed; an
    /// unsigned value is refused where signatures are required.
    pub(crate) fn open<'b>(&self, stored: &'b [u8]) -> Result<Cow<'b, [u8]>, BackendError> {
        if !auth::looks_sealed(stored) {
            if self.requires_signed() {
                return Err(BackendError::Document(
                    "the stored value is not signed, and this app accepts signed results only \
                     (set result_serializer = 'auth' on Python workers, or accept unsigned \
                     ones with --security-accept-unsigned)"
                        .into(),
                ));
            }
            return Ok(Cow::Borrowed(stored));
        }
        let Some(security) = &self.security else {
            return Err(BackendError::Document(
                "the stored value is signed (Celery's auth result serializer) and no \
                 certificates to verify it are set up; give this app the signers' \
                 certificates (App::builder().security, --security-cert-store)"
                    .into(),
            ));
        };
        let envelope = auth::open(security.verifier(), stored, SystemTime::now())
            .map_err(|e| BackendError::Document(format!("signature refused: {e}")))?;
        Ok(Cow::Owned(envelope.body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_read_as_it_is_and_sealed_values_need_certificates() {
        let plain = Documents::new(None);
        assert_eq!(
            plain.open(br#"{"status": "SUCCESS"}"#).unwrap().as_ref(),
            br#"{"status": "SUCCESS"}"#
        );
        assert_eq!(plain.seal("[1]"), b"[1]");
        let err = plain.open(b"VGVzdCBDQSAxMjM0AAE=").unwrap_err();
        assert!(err.to_string().contains("--security-cert-store"), "{err}");
    }
}
