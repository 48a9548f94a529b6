//! Who may use the dashboard: an optional password or token on every
//! request, a per-process CSRF token on every action, and the headers that
//! keep the pages out of other sites' frames.

use std::net::SocketAddr;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand_core::{OsRng, RngCore as _};

use super::DashboardError;
use super::routes::Shared;

/// What a request must carry to be let in.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Access {
    /// Nothing: only for a dashboard listening on a loopback address.
    #[default]
    Open,
    /// HTTP basic authentication with this user and password (what a
    /// browser asks for).
    Basic {
        /// The user name.
        user: String,
        /// The password.
        password: String,
    },
    /// `Authorization: Bearer <token>` (for a proxy or a script), or basic
    /// authentication with any user and the token as password (for a
    /// browser).
    Token(String),
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.write_str(match self {
            Access::Open => "Open",
            Access::Basic { .. } => "Basic { .. }",
            Access::Token(_) => "Token(..)",
        })
    }
}

impl Access {
    /// Basic authentication from `user:password`.
    pub fn basic(spec: &str) -> Result<Access, DashboardError> {
        match spec.split_once(':') {
            Some((user, password)) if !user.is_empty() && !password.is_empty() => {
                Ok(Access::Basic {
                    user: user.to_owned(),
                    password: password.to_owned(),
                })
            }
            _ => Err(DashboardError::BadBasicAuth),
        }
    }

    /// Whether `headers` carry what this access asks for.
    fn admits(&self, headers: &HeaderMap) -> bool {
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        let basic = || {
            let encoded = authorization.strip_prefix("Basic ")?;
            let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
            decoded
                .split_once(':')
                .map(|(user, password)| (user.to_owned(), password.to_owned()))
        };
        match self {
            Access::Open => true,
            Access::Basic { user, password } => basic().is_some_and(|(u, p)| {
                // Both compared in full, whichever differs.
                let user_ok = same(u.as_bytes(), user.as_bytes());
                let password_ok = same(p.as_bytes(), password.as_bytes());
                user_ok & password_ok
            }),
            Access::Token(token) => {
                let bearer = authorization.strip_prefix("Bearer ").map(str::trim);
                bearer.is_some_and(|given| same(given.as_bytes(), token.as_bytes()))
                    || basic().is_some_and(|(_, given)| same(given.as_bytes(), token.as_bytes()))
            }
        }
    }
}

/// Refuses to serve dead letters to the network without a password: a
/// listen address other than loopback needs [`Access::Basic`] or
/// [`Access::Token`].
pub(super) fn check_exposure(listen: SocketAddr, access: &Access) -> Result<(), DashboardError> {
    if listen.ip().is_loopback() || *access != Access::Open {
        Ok(())
    } else {
        Err(DashboardError::Exposed(listen))
    }
}

/// Compares two secrets in time that depends on their lengths only.
fn same(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

/// A fresh random token for the forms of this process.
pub(super) fn new_csrf_token() -> String {
    let mut bytes = [0u8; 24];
    OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether an action's form came from one of this dashboard's pages: it
/// carries this process's token, and the browser's `Origin` (when it sends
/// one) is this dashboard's own host.
pub(super) fn is_same_site_form(headers: &HeaderMap, csrf: &str, given: Option<&str>) -> bool {
    let token_ok = given.is_some_and(|given| same(given.as_bytes(), csrf.as_bytes()));
    let origin_ok = match (headers.get(header::ORIGIN), headers.get(header::HOST)) {
        (None, _) => true,
        (Some(origin), Some(host)) => {
            let origin = origin.to_str().unwrap_or_default();
            let host = host.to_str().unwrap_or_default();
            origin
                .split_once("://")
                .is_some_and(|(_, origin_host)| origin_host == host)
        }
        (Some(_), None) => false,
    };
    token_ok && origin_ok
}

/// Whether the request names this machine by a loopback name or address
/// in its `Host`, not by a DNS name that merely resolves here (what a DNS
/// rebinding attack from another site's page would send).
fn addressed_locally(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Lets in the requests [`Access`] admits, asks the others for
/// credentials, and adds the headers every page carries.
pub(super) async fn guard(State(shared): State<Shared>, request: Request, next: Next) -> Response {
    if shared.access == Access::Open && !addressed_locally(request.headers()) {
        return (
            StatusCode::FORBIDDEN,
            "without a password this dashboard answers only requests addressed to localhost or \
             a loopback address; to serve it under another name, set --basic-auth or --token\n",
        )
            .into_response();
    }
    if !shared.access.admits(request.headers()) {
        let mut response = (
            StatusCode::UNAUTHORIZED,
            "this dashboard needs the user and password (or token) it was started with\n",
        )
            .into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"celeriac dashboard\""),
        );
        return response;
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        // Not `no-referrer`: browsers then send `Origin: null` on the
        // dashboard's own forms, which the CSRF check refuses.
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: header::HeaderName, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).unwrap());
        headers
    }

    fn basic(user: &str, password: &str) -> HeaderMap {
        let encoded = STANDARD.encode(format!("{user}:{password}"));
        with(header::AUTHORIZATION, &format!("Basic {encoded}"))
    }

    #[test]
    fn basic_access_admits_only_its_user_and_password() {
        let access = Access::basic("oncall:s3cret").unwrap();
        assert!(access.admits(&basic("oncall", "s3cret")));
        assert!(!access.admits(&basic("oncall", "s3cre")));
        assert!(!access.admits(&basic("root", "s3cret")));
        assert!(!access.admits(&HeaderMap::new()));
    }

    #[test]
    fn a_token_is_accepted_as_bearer_or_as_a_basic_password() {
        let access = Access::Token("t0ken".into());
        assert!(access.admits(&with(header::AUTHORIZATION, "Bearer t0ken")));
        assert!(access.admits(&basic("anyone", "t0ken")));
        assert!(!access.admits(&with(header::AUTHORIZATION, "Bearer t0ke")));
    }

    #[test]
    fn a_malformed_basic_spec_is_refused() {
        assert!(Access::basic("no-colon").is_err());
        assert!(Access::basic(":pw").is_err());
        assert!(Access::basic("user:").is_err());
    }

    #[test]
    fn only_loopback_may_listen_without_a_password() {
        let open = Access::Open;
        assert!(check_exposure("127.0.0.1:8080".parse().unwrap(), &open).is_ok());
        assert!(check_exposure("[::1]:8080".parse().unwrap(), &open).is_ok());
        assert!(check_exposure("0.0.0.0:8080".parse().unwrap(), &open).is_err());
        let token = Access::Token("t".into());
        assert!(check_exposure("0.0.0.0:8080".parse().unwrap(), &token).is_ok());
    }

    #[test]
    fn an_action_needs_the_token_and_no_foreign_origin() {
        let mut headers = with(header::HOST, "127.0.0.1:8080");
        assert!(is_same_site_form(&headers, "abc", Some("abc")));
        assert!(!is_same_site_form(&headers, "abc", Some("abd")));
        assert!(!is_same_site_form(&headers, "abc", None));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(is_same_site_form(&headers, "abc", Some("abc")));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!is_same_site_form(&headers, "abc", Some("abc")));
    }

    #[test]
    fn without_a_password_only_loopback_host_names_are_served() {
        for host in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:8080",
            "127.0.0.2",
        ] {
            assert!(addressed_locally(&with(header::HOST, host)), "{host}");
        }
        for host in [
            "evil.example:8080",
            "10.0.0.5:8080",
            "localhost.evil.example",
        ] {
            assert!(!addressed_locally(&with(header::HOST, host)), "{host}");
        }
        assert!(!addressed_locally(&HeaderMap::new()));
    }

    #[test]
    fn the_debug_form_hides_secrets() {
        let shown = format!("{:?}", Access::basic("u:hunter2").unwrap());
        assert!(!shown.contains("hunter2"));
    }
}
