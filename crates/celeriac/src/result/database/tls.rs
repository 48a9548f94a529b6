//! TLS to PostgreSQL, with libpq's settings and meanings, so a URL that
//! works for psycopg2 works here (rustls; no OpenSSL):
//!
//! | `sslmode` | encrypts | checks the certificate chain | checks the host name |
//! |---|---|---|---|
//! | `disable` | no | | |
//! | `allow`, `prefer` (default) | if the server offers it | only with `sslrootcert` | no |
//! | `require` | yes | only with `sslrootcert` | no |
//! | `verify-ca` | yes | yes | no |
//! | `verify-full` | yes | yes | yes |
//!
//! `sslrootcert` names a PEM file of trusted roots (or `system`: the
//! system's store, also the default for the verify modes); `sslcert` and
//! `sslkey` a client certificate and its key.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, ring};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The TLS settings read from a URL's query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct TlsSettings {
    /// `sslmode`, as libpq spells it (`prefer` when absent).
    pub(super) mode: String,
    /// `sslrootcert`: a PEM file, or `system`.
    pub(super) root_cert: Option<String>,
    /// `sslcert`: the client's certificate chain, PEM.
    pub(super) client_cert: Option<String>,
    /// `sslkey`: the client's private key, PEM.
    pub(super) client_key: Option<String>,
}

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Nothing: the connection is encrypted, not authenticated.
    Nothing,
    /// The chain up to a trusted root, not the host name.
    Chain,
    /// The chain and the host name.
    Full,
}

impl TlsSettings {
    /// Takes the TLS parameters out of a URL's query pairs, leaving the
    /// others (which tokio-postgres reads).
    pub(super) fn take_from(pairs: &mut Vec<(String, String)>) -> TlsSettings {
        let mut take = |name: &str| {
            let index = pairs.iter().position(|(k, _)| k == name)?;
            Some(pairs.remove(index).1)
        };
        TlsSettings {
            mode: take("sslmode").unwrap_or_else(|| "prefer".to_owned()),
            root_cert: take("sslrootcert"),
            client_cert: take("sslcert"),
            client_key: take("sslkey"),
        }
    }

    /// tokio-postgres's mode for this `sslmode`.
    pub(super) fn ssl_mode(&self) -> Result<SslMode, String> {
        match self.mode.as_str() {
            "disable" => Ok(SslMode::Disable),
            "allow" | "prefer" => Ok(SslMode::Prefer),
            "require" | "verify-ca" | "verify-full" => Ok(SslMode::Require),
            other => Err(format!(
                "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, \
                 verify-full"
            )),
        }
    }

    fn check(&self) -> Check {
        match self.mode.as_str() {
            "verify-full" => Check::Full,
            "verify-ca" => Check::Chain,
            // libpq: with a root certificate, `require` verifies the chain.
            _ if self.root_cert.is_some() => Check::Chain,
            _ => Check::Nothing,
        }
    }

    /// The connector for these settings; files are read now, so a wrong
    /// path is an error at start, not at the first connection.
    pub(super) fn connector(&self) -> Result<MakeRustlsConnect, String> {
        let provider = Arc::new(ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let verifier: Arc<dyn ServerCertVerifier> = match self.check() {
            Check::Nothing => Arc::new(Unverified(provider.signature_verification_algorithms)),
            check => {
                let roots = Arc::new(self.roots()?);
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| format!("TLS: the trusted roots: {e}"))?;
                if check == Check::Full {
                    webpki
                } else {
                    Arc::new(AnyName(webpki))
                }
            }
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert)?;
                let key =
                    PrivateKeyDer::from_pem_file(key).map_err(|e| format!("sslkey={key}: {e}"))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("sslcert/sslkey: {e}"))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("sslcert and sslkey go together: give both or neither".into()),
        };
        Ok(MakeRustlsConnect::new(config))
    }

    fn roots(&self) -> Result<RootCertStore, String> {
        let mut roots = RootCertStore::empty();
        match self.root_cert.as_deref() {
            Some(path) if path != "system" => {
                for cert in read_certs(path)? {
                    roots
                        .add(cert)
                        .map_err(|e| format!("sslrootcert={path}: {e}"))?;
                }
            }
            _ => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    // A system root rustls cannot parse is skipped, as
                    // every rustls user of the system store does.
                    let _ = roots.add(cert);
                }
            }
        }
        if roots.is_empty() {
            return Err(format!(
                "sslmode={} needs trusted roots, and none were found; name them with \
                 sslrootcert=/path/to/root.crt",
                self.mode
            ));
        }
        Ok(roots)
    }
}

fn read_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{path}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{path}: no PEM certificate in it"));
    }
    Ok(certs)
}

/// `require` and `prefer` without a root certificate: the handshake is
/// checked (the server holds the key it presents), the certificate is not,
/// as in libpq.
#[derive(Debug)]
struct Unverified(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// `verify-ca`: the chain is checked against the trusted roots, the name
/// in the certificate is not.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_modes_map_to_checks() {
        let settings = |mode: &str, root: Option<&str>| TlsSettings {
            mode: mode.into(),
            root_cert: root.map(str::to_owned),
            ..TlsSettings::default()
        };
        assert_eq!(settings("prefer", None).check(), Check::Nothing);
        assert_eq!(settings("require", None).check(), Check::Nothing);
        assert_eq!(settings("require", Some("/r.pem")).check(), Check::Chain);
        assert_eq!(settings("verify-ca", None).check(), Check::Chain);
        assert_eq!(settings("verify-full", None).check(), Check::Full);
        assert!(settings("verify-everything", None).ssl_mode().is_err());
        assert_eq!(settings("disable", None).ssl_mode(), Ok(SslMode::Disable));
    }

    #[test]
    fn a_missing_root_file_is_named() {
        let settings = TlsSettings {
            mode: "verify-full".into(),
            root_cert: Some("/no/such/root.crt".into()),
            ..TlsSettings::default()
        };
        let error = settings.connector().err().unwrap_or_default();
        assert!(error.contains("/no/such/root.crt"), "{error}");
    }
}
