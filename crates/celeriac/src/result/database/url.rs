//! The URLs of Celery's `database` backend, as SQLAlchemy spells them:
//! `db+postgresql://user:password@host:5432/dbname`, optionally naming the
//! Python driver (`db+postgresql+psycopg2://`, `+psycopg`, `+pg8000`, ...),
//! which this backend ignores: it speaks PostgreSQL's protocol itself.
//! libpq's TLS parameters (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`)
//! are read here (see [`super::tls`]); the rest go to tokio-postgres. The
//! same behind `django-db+` names the database of django-celery-results
//! (Python's `django-db` takes it from Django's settings).

use std::str::FromStr;

use percent_encoding::percent_decode_str;

use super::tls::TlsSettings;

/// What a URL says about connecting: tokio-postgres's settings and the
/// TLS ones it leaves to us.
#[derive(Debug)]
pub(crate) struct Connection {
    /// Host, port, user, password, database and the like.
    pub(crate) config: tokio_postgres::Config,
    /// `sslmode`, `sslrootcert`, `sslcert`, `sslkey`.
    pub(crate) tls: TlsSettings,
}

/// Whether `url` names Celery's database backend (any database; only
/// PostgreSQL is supported, see [`parse`]).
pub(crate) fn is_database_url(url: &str) -> bool {
    url.starts_with("db+")
}

/// Whether `url` names django-celery-results' tables
/// (`django-db+postgresql://`).
pub(crate) fn is_django_url(url: &str) -> bool {
    url.starts_with("django-db+")
}

/// The connection settings of a `db+postgresql://` or
/// `django-db+postgresql://` URL.
pub(crate) fn parse(url: &str) -> Result<Connection, String> {
    let redacted = celeriac_broker::url::redact(url);
    let rest = url
        .strip_prefix("db+")
        .or_else(|| url.strip_prefix("django-db+"))
        .unwrap_or(url);
    let (scheme, tail) = rest.split_once("://").ok_or_else(|| {
        format!("{redacted:?} is not a URL; use db+postgresql://user@host/dbname")
    })?;
    let dialect = scheme.split('+').next().unwrap_or(scheme);
    if dialect != "postgresql" {
        return Err(format!(
            "{redacted:?} names the {dialect:?} database; Celeriac's database result backend \
             supports PostgreSQL only (db+postgresql://user@host/dbname)"
        ));
    }
    let (location, query) = tail.split_once('?').unwrap_or((tail, ""));
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode_str(value).decode_utf8_lossy().into_owned();
            (key.to_owned(), value)
        })
        .collect();
    let tls = TlsSettings::take_from(&mut pairs);
    let rest: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let plain = match rest.is_empty() {
        true => format!("postgresql://{location}"),
        false => format!("postgresql://{location}?{}", rest.join("&")),
    };
    let mut config = tokio_postgres::Config::from_str(&plain)
        .map_err(|e| format!("{redacted:?} is not a valid PostgreSQL URL: {e}"))?;
    config.ssl_mode(tls.ssl_mode().map_err(|e| format!("{redacted:?}: {e}"))?);
    if config.get_dbname().is_none() {
        return Err(format!(
            "{redacted:?} names no database; add it to the path: db+postgresql://user@host/dbname"
        ));
    }
    Ok(Connection { config, tls })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlalchemy_spellings_are_read() {
        for url in [
            "db+postgresql://postgres@127.0.0.1/test",
            "db+postgresql+psycopg2://postgres:secret@127.0.0.1:5433/test",
            "db+postgresql+psycopg://postgres@localhost/test?connect_timeout=5",
        ] {
            let config = parse(url).unwrap().config;
            assert_eq!(config.get_dbname(), Some("test"), "{url}");
            assert_eq!(config.get_user(), Some("postgres"), "{url}");
        }
        let django = parse("django-db+postgresql://app@db.internal/shop").unwrap();
        assert_eq!(django.config.get_dbname(), Some("shop"));
        let config = parse("db+postgresql://u:p%40ss@h:5433/d").unwrap().config;
        assert_eq!(config.get_password(), Some(&b"p@ss"[..]));
        assert_eq!(config.get_ports(), [5433]);
    }

    #[test]
    fn other_databases_and_gaps_are_named() {
        let sqlite = parse("db+sqlite:///results.db").unwrap_err();
        assert!(sqlite.contains("PostgreSQL only"), "{sqlite}");
        let no_db = parse("db+postgresql://u:secret@h").unwrap_err();
        assert!(no_db.contains("names no database"), "{no_db}");
        assert!(!no_db.contains("secret"), "password redacted: {no_db}");
        let mode = parse("db+postgresql://u@h/d?sslmode=verify-everything").unwrap_err();
        assert!(mode.contains("sslmode=verify-everything"), "{mode}");
    }

    #[test]
    fn tls_settings_are_taken_from_the_query() {
        let parsed = parse(
            "db+postgresql://u@h/d?connect_timeout=5&sslmode=verify-full&sslrootcert=%2Fetc%2Froot.crt",
        )
        .unwrap();
        assert_eq!(parsed.tls.mode, "verify-full");
        assert_eq!(parsed.tls.root_cert.as_deref(), Some("/etc/root.crt"));
        assert_eq!(
            parsed.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        assert_eq!(
            parsed.config.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(5))
        );
        let default = parse("db+postgresql://u@h/d").unwrap();
        assert_eq!(default.tls.mode, "prefer", "libpq's default");
    }
}
