//! The URLs of Celery's `database` backend, as SQLAlchemy spells them:
//! `db+postgresql://user:password@host:5432/dbname`, optionally naming the
//! Python driver (`db+postgresql+psycopg2://`, `+psycopg`, `+pg8000`, ...),
//! which this backend ignores: it speaks PostgreSQL's protocol itself. The
//! same behind `django-db+` names the database of django-celery-results
//! (Python's `django-db` takes it from Django's settings).

use std::str::FromStr;

use tokio_postgres::config::SslMode;

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
pub(crate) fn parse(url: &str) -> Result<tokio_postgres::Config, String> {
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
    let config = tokio_postgres::Config::from_str(&format!("postgresql://{tail}"))
        .map_err(|e| format!("{redacted:?} is not a valid PostgreSQL URL: {e}"))?;
    if config.get_ssl_mode() == SslMode::Require {
        return Err(format!(
            "{redacted:?} asks for sslmode=require, but the PostgreSQL backend connects without \
             TLS; use sslmode=disable (or prefer) on a trusted network or a local socket"
        ));
    }
    if config.get_dbname().is_none() {
        return Err(format!(
            "{redacted:?} names no database; add it to the path: db+postgresql://user@host/dbname"
        ));
    }
    Ok(config)
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
            let config = parse(url).unwrap();
            assert_eq!(config.get_dbname(), Some("test"), "{url}");
            assert_eq!(config.get_user(), Some("postgres"), "{url}");
        }
        let django = parse("django-db+postgresql://app@db.internal/shop").unwrap();
        assert_eq!(django.get_dbname(), Some("shop"));
        let config = parse("db+postgresql://u:p%40ss@h:5433/d").unwrap();
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
        let tls = parse("db+postgresql://u@h/d?sslmode=require").unwrap_err();
        assert!(tls.contains("sslmode=require"), "{tls}");
    }
}
