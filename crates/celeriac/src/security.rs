//! Signed messages, as Celery's `app.setup_security()` sets them up: task
//! messages, remote-control requests and replies, and results (`rpc://`
//! and Redis) are signed with this process's key, and only those signed by
//! a trusted certificate are accepted, as Celery's `accept_content =
//! ['auth']` accepts them (so Python workers must set `result_serializer =
//! 'auth'` too, as Python clients would otherwise refuse their results).
//!
//! ```no_run
//! # async fn demo() -> Result<(), celeriac::Error> {
//! use celeriac::Security;
//!
//! let security = Security::from_files(
//!     "/etc/celeriac/worker.key",   // Celery's security_key
//!     None,                         // security_key_password
//!     "/etc/celeriac/worker.pem",   // security_certificate
//!     "/etc/celeriac/trusted/*.pem", // security_cert_store
//!     "sha256",                     // security_digest
//! )?;
//! let app = celeriac::App::builder().security(security).build().await?;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use celeriac_protocol::auth::{Digest, Layout, Signer, Verifier};
use celeriac_protocol::{DecodeOptions, Signatures};

use crate::Error;

/// This process's signing key and the certificates it trusts.
#[derive(Debug, Clone)]
pub struct Security {
    signer: Arc<Signer>,
    verifier: Arc<Verifier>,
    require_signed: bool,
}

impl Security {
    /// Signs with `signer` and accepts messages signed by a certificate
    /// `verifier` trusts, and only those.
    pub fn new(signer: Signer, verifier: Verifier) -> Security {
        Security {
            signer: Arc::new(signer),
            verifier: Arc::new(verifier),
            require_signed: true,
        }
    }

    /// Reads the key, its certificate and the trusted certificates from
    /// files, with Celery's settings' meanings: `cert_store` is a file, a
    /// directory (every file in it) or a glob pattern; `digest` is a name
    /// such as `sha256`.
    pub fn from_files(
        key: impl AsRef<Path>,
        key_password: Option<&str>,
        certificate: impl AsRef<Path>,
        cert_store: impl AsRef<Path>,
        digest: &str,
    ) -> Result<Security, Error> {
        let digest = Digest::from_name(digest).map_err(config)?;
        let key_pem = read(key.as_ref(), "security key")?;
        let certificate_pem = read(certificate.as_ref(), "security certificate")?;
        let signer =
            Signer::new(&key_pem, key_password, &certificate_pem, digest).map_err(config)?;
        let store = store_files(cert_store.as_ref())?;
        let pems = store
            .iter()
            .map(|path| read(path, "trusted certificate"))
            .collect::<Result<Vec<_>, _>>()?;
        let verifier = Verifier::new(pems.iter().map(String::as_str), digest).map_err(config)?;
        Ok(Security::new(signer, verifier))
    }

    /// Also accepts unsigned messages and results (a signed one is still
    /// verified): for moving a fleet to signing one producer at a time.
    /// Celery has no such mode; a Python worker with security accepts
    /// signed ones only.
    pub fn accept_unsigned(mut self) -> Security {
        self.require_signed = false;
        self
    }

    /// Writes signed envelopes as Celery `version` does: `"5.5"` (the
    /// default: Celery 5.5 and later) or `"5.4"` (Celery 5.4 and earlier,
    /// which lay the signer and signature out differently and cannot read
    /// the newer layout). Envelopes of either layout are read.
    pub fn envelope_for(mut self, version: &str) -> Result<Security, Error> {
        let layout = match version {
            "5.5" | "5.6" | "5.7" => Layout::Celery55,
            "5.3" | "5.4" => Layout::Celery54,
            other => {
                return Err(config(format!(
                    "unknown signed-envelope layout {other:?}: give 5.5 for Celery 5.5 and \
                     later, 5.4 for Celery 5.3 and 5.4"
                )));
            }
        };
        self.signer = Arc::new((*self.signer).clone().with_layout(layout));
        Ok(self)
    }

    /// The key messages are signed with.
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// The certificates whose signatures are trusted.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// How incoming messages are checked.
    pub fn signatures(&self) -> Signatures {
        if self.require_signed {
            Signatures::Required(self.verifier.clone())
        } else {
            Signatures::Optional(self.verifier.clone())
        }
    }

    /// Decode options that check task messages' signatures this way.
    pub fn decode_options(&self) -> DecodeOptions {
        DecodeOptions {
            signatures: self.signatures(),
            ..DecodeOptions::default()
        }
    }

    /// Whether unsigned messages and results are refused (the default).
    pub fn requires_signed(&self) -> bool {
        self.require_signed
    }
}

fn config(error: impl std::fmt::Display) -> Error {
    Error::Config(error.to_string())
}

fn read(path: &Path, what: &str) -> Result<String, Error> {
    std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("cannot read the {what} {}: {e}", path.display())))
}

/// The files a certificate store names: the file itself, every file in a
/// directory, or every file a glob pattern matches.
fn store_files(store: &Path) -> Result<Vec<PathBuf>, Error> {
    if store.is_dir() {
        let mut files = std::fs::read_dir(store)
            .map_err(|e| config(format!("cannot list {}: {e}", store.display())))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.is_file())
            .collect::<Vec<_>>();
        files.sort();
        return non_empty(files, store);
    }
    let pattern = store.to_string_lossy();
    let files = glob::glob(&pattern)
        .map_err(|e| config(format!("bad certificate store pattern {pattern:?}: {e}")))?
        .filter_map(Result::ok)
        .filter(|path| path.is_file())
        .collect();
    non_empty(files, store)
}

fn non_empty(files: Vec<PathBuf>, store: &Path) -> Result<Vec<PathBuf>, Error> {
    if files.is_empty() {
        return Err(config(format!(
            "the certificate store {} holds no certificate; put the PEM certificates of \
             every trusted signer there",
            store.display()
        )));
    }
    Ok(files)
}
