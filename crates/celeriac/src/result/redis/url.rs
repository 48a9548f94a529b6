//! Redis result backend URLs, as Celery spells them:
//!
//! - `redis://[[user]:password@]host[:port][/db]`
//! - `rediss://...?ssl_cert_reqs=CERT_REQUIRED` (TLS; `ssl_cert_reqs` is
//!   required, as in Celery: `CERT_REQUIRED`, `CERT_OPTIONAL` or `CERT_NONE`,
//!   also `required`/`optional`/`none`; `ssl_ca_certs`, `ssl_certfile` and
//!   `ssl_keyfile` name PEM files)
//! - `redis+socket:///path/to/redis.sock?virtual_host=<db>`
//! - `sentinel://[:password@]host:26379/db;sentinel://host2:26379/db?master_name=mymaster`
//!   (Celery reads the master's name from `result_backend_transport_options`;
//!   Celeriac takes it as the `master_name` query parameter)
//!
//! Passwords never appear in [`RedisUrl`]'s `Display` or in errors.

use std::fmt;
use std::path::PathBuf;

use percent_encoding::percent_decode_str;

/// Where the Redis server is.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// A TCP address, maybe with TLS.
    Tcp {
        host: String,
        port: u16,
        tls: Option<TlsSettings>,
    },
    /// A Unix socket.
    Socket(PathBuf),
    /// The master a set of Sentinels names.
    Sentinel {
        sentinels: Vec<(String, u16)>,
        master: String,
        tls: Option<TlsSettings>,
    },
}

/// TLS settings of a `rediss://` URL.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct TlsSettings {
    /// Verify the server's certificate (and host name): `CERT_REQUIRED`.
    pub(crate) verify: bool,
    /// A CA bundle (PEM) instead of the system roots.
    pub(crate) ca_file: Option<PathBuf>,
    /// A client certificate and key (PEM), for mutual TLS.
    pub(crate) client: Option<(PathBuf, PathBuf)>,
}

/// A parsed Redis backend URL.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct RedisUrl {
    pub(crate) target: Target,
    pub(crate) db: i64,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    /// The URL as given, password redacted.
    redacted: String,
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// Whether `url` names a Redis backend.
pub(crate) fn is_redis_url(url: &str) -> bool {
    ["redis://", "rediss://", "redis+socket://", "sentinel://"]
        .iter()
        .any(|scheme| url.starts_with(scheme))
}

impl RedisUrl {
    /// Parses a backend URL; errors say what is wrong and never contain the
    /// password.
    pub(crate) fn parse(text: &str) -> Result<RedisUrl, String> {
        let redacted = celeriac_broker::url::redact(text);
        let fail = |problem: &str| format!("{redacted}: {problem}");
        if text.starts_with("sentinel://") {
            return parse_sentinel(text, &redacted).map_err(|p| fail(&p));
        }
        let (scheme, rest) = text.split_once("://").ok_or_else(|| fail("no scheme"))?;
        let (rest, query) = split_query(rest);
        let params = query_pairs(query);
        let (userinfo, location) = match rest.rsplit_once('@') {
            Some((userinfo, location)) => (Some(userinfo), location),
            None => (None, rest),
        };
        let (username, password) = credentials(userinfo);
        match scheme {
            "redis+socket" => {
                let db = param(&params, "virtual_host")
                    .map(|v| parse_db(v).map_err(|p| fail(&p)))
                    .transpose()?
                    .unwrap_or(0);
                if location.is_empty() {
                    return Err(fail("the socket path is missing"));
                }
                Ok(RedisUrl {
                    target: Target::Socket(PathBuf::from(location)),
                    db,
                    username,
                    password,
                    redacted,
                })
            }
            "redis" | "rediss" => {
                let tls_keys = [
                    "ssl_cert_reqs",
                    "ssl_ca_certs",
                    "ssl_certfile",
                    "ssl_keyfile",
                ];
                let tls = if scheme == "rediss" {
                    Some(tls_settings(&params).map_err(|p| fail(&p))?)
                } else if tls_keys.iter().any(|k| param(&params, k).is_some()) {
                    return Err(fail(
                        "ssl_* parameters need the rediss:// scheme (TLS); redis:// is plain TCP",
                    ));
                } else {
                    None
                };
                let (host, port, db) = host_port_db(location, 6379).map_err(|p| fail(&p))?;
                Ok(RedisUrl {
                    target: Target::Tcp { host, port, tls },
                    db,
                    username,
                    password,
                    redacted,
                })
            }
            other => Err(fail(&format!(
                "unknown scheme {other}://; use redis://, rediss://, redis+socket:// or sentinel://"
            ))),
        }
    }
}

fn parse_sentinel(text: &str, redacted: &str) -> Result<RedisUrl, String> {
    let mut sentinels = Vec::new();
    let mut first = None;
    let mut master = None;
    let mut tls = None;
    for chunk in text.split(';').filter(|c| !c.trim().is_empty()) {
        let rest = chunk.trim().strip_prefix("sentinel://").ok_or_else(|| {
            format!(
                "every address must be sentinel://, got {:?}",
                celeriac_broker::url::redact(chunk)
            )
        })?;
        let (rest, query) = split_query(rest);
        let params = query_pairs(query);
        if let Some(name) = param(&params, "master_name") {
            master = Some(name.to_owned());
        }
        if param(&params, "ssl_cert_reqs").is_some() {
            tls = Some(tls_settings(&params)?);
        }
        let (userinfo, location) = match rest.rsplit_once('@') {
            Some((userinfo, location)) => (Some(userinfo), location),
            None => (None, rest),
        };
        let (host, port, db) = host_port_db(location, 26379)?;
        sentinels.push((host, port));
        first.get_or_insert((credentials(userinfo), db));
    }
    let ((username, password), db) = first.ok_or("no sentinel address")?;
    let master = master.ok_or(
        "name the master: add ?master_name=<name> (Celery's transport option master_name)",
    )?;
    Ok(RedisUrl {
        target: Target::Sentinel {
            sentinels,
            master,
            tls,
        },
        db,
        username,
        password,
        redacted: redacted.to_owned(),
    })
}

fn split_query(rest: &str) -> (&str, &str) {
    rest.split_once('?').unwrap_or((rest, ""))
}

fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn decode(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

fn credentials(userinfo: Option<&str>) -> (Option<String>, Option<String>) {
    let Some(userinfo) = userinfo else {
        return (None, None);
    };
    let (user, password) = match userinfo.split_once(':') {
        Some((user, password)) => (user, Some(password)),
        None => (userinfo, None),
    };
    let nonempty = |s: &str| (!s.is_empty()).then(|| decode(s));
    (nonempty(user), password.and_then(nonempty))
}

fn host_port_db(location: &str, default_port: u16) -> Result<(String, u16, i64), String> {
    let (address, path) = location.split_once('/').unwrap_or((location, ""));
    let (host, port) = match address.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || address.starts_with('[') => (
            host,
            port.parse::<u16>()
                .map_err(|_| format!("invalid port {port:?}"))?,
        ),
        _ => (address, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = if host.is_empty() { "localhost" } else { host };
    let db = if path.trim_matches('/').is_empty() {
        0
    } else {
        parse_db(path)?
    };
    Ok((host.to_owned(), port, db))
}

fn parse_db(text: &str) -> Result<i64, String> {
    text.trim_matches('/')
        .parse::<i64>()
        .map_err(|_| format!("the database must be a number, got {text:?}"))
}

fn tls_settings(params: &[(String, String)]) -> Result<TlsSettings, String> {
    let verify = match param(params, "ssl_cert_reqs") {
        Some("CERT_REQUIRED" | "required") => true,
        Some("CERT_NONE" | "none" | "CERT_OPTIONAL" | "optional") => false,
        _ => {
            return Err(
                "a rediss:// URL needs ssl_cert_reqs=CERT_REQUIRED (or CERT_OPTIONAL, \
                        CERT_NONE), as Celery requires"
                    .into(),
            );
        }
    };
    let client = match (param(params, "ssl_certfile"), param(params, "ssl_keyfile")) {
        (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
        (None, None) => None,
        _ => return Err("ssl_certfile and ssl_keyfile must be given together".into()),
    };
    Ok(TlsSettings {
        verify,
        ca_file: param(params, "ssl_ca_certs").map(PathBuf::from),
        client,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn celerys_spellings_parse() {
        let plain = RedisUrl::parse("redis://127.0.0.1:6379/2").unwrap();
        assert_eq!(plain.db, 2);
        assert!(
            matches!(&plain.target, Target::Tcp { host, port: 6379, tls: None } if host == "127.0.0.1")
        );
        let defaults = RedisUrl::parse("redis://").unwrap();
        assert!(
            matches!(&defaults.target, Target::Tcp { host, port: 6379, .. } if host == "localhost")
        );
        let secret = RedisUrl::parse("redis://:s3cret@host/0").unwrap();
        assert_eq!(secret.password.as_deref(), Some("s3cret"));
        assert!(!secret.to_string().contains("s3cret"), "{secret}");
        let tls = RedisUrl::parse(
            "rediss://host:6380/1?ssl_cert_reqs=CERT_REQUIRED&ssl_ca_certs=/ca.pem",
        )
        .unwrap();
        assert!(
            matches!(&tls.target, Target::Tcp { tls: Some(t), .. } if t.verify && t.ca_file.is_some())
        );
        let socket = RedisUrl::parse("redis+socket:///tmp/redis.sock?virtual_host=3").unwrap();
        assert_eq!(socket.db, 3);
        assert!(
            matches!(&socket.target, Target::Socket(p) if p == &PathBuf::from("/tmp/redis.sock"))
        );
        let sentinel =
            RedisUrl::parse("sentinel://:pw@s1:26379/4;sentinel://s2:26380/4?master_name=mymaster")
                .unwrap();
        assert_eq!(sentinel.db, 4);
        assert!(
            matches!(&sentinel.target, Target::Sentinel { sentinels, master, .. }
            if sentinels.len() == 2 && master == "mymaster")
        );
    }

    #[test]
    fn mistakes_are_explained_without_the_password() {
        let missing = RedisUrl::parse("rediss://:pw@host").unwrap_err();
        assert!(
            missing.contains("ssl_cert_reqs") && !missing.contains("pw@"),
            "{missing}"
        );
        let mixed = RedisUrl::parse("redis://host?ssl_cert_reqs=CERT_NONE").unwrap_err();
        assert!(mixed.contains("rediss://"), "{mixed}");
        let db = RedisUrl::parse("redis://host/zero").unwrap_err();
        assert!(db.contains("database"), "{db}");
        let master = RedisUrl::parse("sentinel://s1:26379").unwrap_err();
        assert!(master.contains("master_name"), "{master}");
    }
}
