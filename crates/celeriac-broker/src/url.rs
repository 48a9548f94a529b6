//! Broker URLs, parsed the way Celery (kombu) parses them (§2.1), with the
//! password kept out of every `Debug`, `Display`, log line and error.
//!
//! - Schemes `amqp://` and `pyamqp://` (port 5672) and `amqps://` (TLS, 5671).
//! - A missing user or password is `guest`; a missing host is `localhost`.
//! - The virtual host is the path with exactly one leading `/` removed, then
//!   percent-decoded: `//` and `/%2F` are `/`, an empty path is `/`,
//!   `/prod` is `prod`, `//prod` is `/prod`.
//! - Several URLs separated by `;` are failover alternatives, tried in turn.
//! - Query parameters: `heartbeat` (seconds), `connect_timeout` (seconds,
//!   fractional allowed), and for `amqps://` the kombu names `ssl_ca_certs`
//!   (PEM file with the CA certificates to trust), `ssl_certfile` and
//!   `ssl_keyfile` (PEM client certificate and PKCS#8 key, for mutual TLS);
//!   `login_method` (kombu's name: `PLAIN`, the default, `AMQPLAIN`, or
//!   `EXTERNAL`, which logs in as the client certificate's subject).
//!   Unknown parameters are an error, so a typo never silently does nothing.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use thiserror::Error;

/// Celery's default broker URL.
pub const DEFAULT_URL: &str = "amqp://guest:guest@localhost:5672//";

/// A broker URL that could not be parsed. The URL in the message is redacted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid broker URL {url}: {problem}")]
pub struct UrlError {
    /// The URL with its password replaced by `***`.
    pub url: String,
    /// What is wrong and how to fix it.
    pub problem: String,
}

/// How the client logs in (SASL mechanism), kombu's `login_method`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LoginMethod {
    /// User name and password (`PLAIN`), the default.
    #[default]
    Plain,
    /// User name and password in RabbitMQ's legacy `AMQPLAIN` form.
    AmqPlain,
    /// The TLS client certificate (`EXTERNAL`): RabbitMQ's
    /// `rabbitmq_auth_mechanism_ssl` plugin logs in as its subject.
    External,
}

/// TLS settings for an `amqps://` URL. Without a CA file the system's
/// trusted certificates are used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file with the CA certificates to trust (`ssl_ca_certs`).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for mutual TLS (`ssl_certfile`).
    pub cert_file: Option<PathBuf>,
    /// PEM (PKCS#8) private key of the client certificate (`ssl_keyfile`).
    pub key_file: Option<PathBuf>,
}

/// One parsed broker URL.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// `true` for `amqps://`.
    pub tls: bool,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (5672, or 5671 for TLS, unless given).
    pub port: u16,
    /// User name (default `guest`).
    pub user: String,
    password: String,
    /// Virtual host (default `/`).
    pub vhost: String,
    /// `heartbeat` query parameter, if given.
    pub heartbeat: Option<Duration>,
    /// `connect_timeout` query parameter, if given.
    pub connect_timeout: Option<Duration>,
    /// TLS options from the query string.
    pub tls_options: TlsOptions,
    /// `login_method` query parameter.
    pub login_method: LoginMethod,
}

impl BrokerUrl {
    /// Parses a single URL (no `;`).
    ///
    /// ```
    /// use celeriac_broker::BrokerUrl;
    /// let url: BrokerUrl = "amqp://app:s3cret@rabbit:5673/%2F".parse().unwrap();
    /// assert_eq!((url.host.as_str(), url.port, url.vhost.as_str()), ("rabbit", 5673, "/"));
    /// assert_eq!(url.to_string(), "amqp://app:***@rabbit:5673/%2F");
    /// ```
    pub fn parse(text: &str) -> Result<BrokerUrl, UrlError> {
        let fail = |problem: &str| UrlError {
            url: redact(text),
            problem: problem.to_owned(),
        };
        let text = text.trim();
        let (scheme, rest) = text.split_once("://").ok_or_else(|| {
            fail("expected scheme://host, e.g. amqp://guest:guest@localhost:5672//")
        })?;
        let tls = match scheme {
            "amqp" | "pyamqp" => false,
            "amqps" => true,
            other => {
                return Err(fail(&format!(
                    "scheme {other:?} is not supported; use amqp://, pyamqp:// or amqps://"
                )));
            }
        };
        let (before_query, query) = match rest.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match before_query.find('/') {
            Some(i) => (&before_query[..i], &before_query[i..]),
            None => (before_query, ""),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let decode = |s: &str| {
            percent_decode_str(s)
                .decode_utf8()
                .map(std::borrow::Cow::into_owned)
                .map_err(|_| fail("percent-encoded text is not UTF-8"))
        };
        let (user, password) = match userinfo {
            None => ("guest".to_owned(), "guest".to_owned()),
            Some(info) => match info.split_once(':') {
                Some((u, p)) => (decode(u)?, decode(p)?),
                None => (decode(info)?, "guest".to_owned()),
            },
        };
        let user = if user.is_empty() {
            "guest".to_owned()
        } else {
            user
        };
        let (host, port) = split_host_port(hostport).map_err(|p| fail(&p))?;
        let host = if host.is_empty() {
            "localhost".to_owned()
        } else {
            host
        };
        let port = port.unwrap_or(if tls { 5671 } else { 5672 });
        let vhost_raw = path.strip_prefix('/').unwrap_or(path);
        let vhost = if vhost_raw.is_empty() {
            "/".to_owned()
        } else {
            decode(vhost_raw)?
        };

        let mut url = BrokerUrl {
            tls,
            host,
            port,
            user,
            password,
            vhost,
            heartbeat: None,
            connect_timeout: None,
            tls_options: TlsOptions::default(),
            login_method: LoginMethod::default(),
        };
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode(value)?;
            url.apply_query(key, &value).map_err(|p| fail(&p))?;
        }
        if url.login_method == LoginMethod::External && url.tls_options.cert_file.is_none() {
            return Err(fail(
                "login_method=EXTERNAL logs in with a TLS client certificate: give \
                 ssl_certfile and ssl_keyfile",
            ));
        }
        Ok(url)
    }

    fn apply_query(&mut self, key: &str, value: &str) -> Result<(), String> {
        let seconds = |v: &str| {
            v.parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| format!("{key}={v:?} is not a number of seconds"))
        };
        match key {
            "heartbeat" => self.heartbeat = Some(seconds(value)?),
            "connect_timeout" | "connection_timeout" => {
                self.connect_timeout = Some(seconds(value)?);
            }
            "ssl_ca_certs" | "cacertfile" => self.tls_options.ca_file = Some(value.into()),
            "ssl_certfile" | "certfile" => self.tls_options.cert_file = Some(value.into()),
            "ssl_keyfile" | "keyfile" => self.tls_options.key_file = Some(value.into()),
            "login_method" => {
                self.login_method = match value.to_ascii_uppercase().as_str() {
                    "PLAIN" => LoginMethod::Plain,
                    "AMQPLAIN" => LoginMethod::AmqPlain,
                    "EXTERNAL" => LoginMethod::External,
                    _ => {
                        return Err(format!(
                            "login_method={value:?} is not supported; use PLAIN, AMQPLAIN or \
                             EXTERNAL"
                        ));
                    }
                };
            }
            other => {
                return Err(format!(
                    "unknown query parameter {other:?}; supported: heartbeat, connect_timeout, \
                     ssl_ca_certs, ssl_certfile, ssl_keyfile, login_method"
                ));
            }
        }
        if !self.tls && (key.starts_with("ssl_") || key.ends_with("file")) {
            return Err(format!("{key} only applies to amqps:// URLs"));
        }
        Ok(())
    }

    /// The password. Kept private so it cannot end up in a log by accident.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// `host:port`, for messages.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for BrokerUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BrokerUrl::parse(s)
    }
}

impl fmt::Display for BrokerUrl {
    /// The URL with the password replaced by `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "amqps" } else { "amqp" };
        let vhost = if self.vhost == "/" {
            "%2F".to_owned()
        } else {
            percent_encoding::utf8_percent_encode(&self.vhost, percent_encoding::NON_ALPHANUMERIC)
                .to_string()
        };
        write!(f, "{scheme}://{}:***@{}/{vhost}", self.user, self.address())
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BrokerUrl({self})")
    }
}

/// One or more broker URLs: the first is preferred, the others are failover
/// alternatives tried in turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerUrls(Vec<BrokerUrl>);

impl BrokerUrls {
    /// Parses `;`-separated URLs.
    ///
    /// ```
    /// use celeriac_broker::BrokerUrls;
    /// let urls: BrokerUrls = "amqp://a//;amqp://b//".parse().unwrap();
    /// assert_eq!(urls.iter().map(|u| u.host.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    /// ```
    pub fn parse(text: &str) -> Result<BrokerUrls, UrlError> {
        let urls = text
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(BrokerUrl::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if urls.is_empty() {
            return Err(UrlError {
                url: String::new(),
                problem: format!("no URL given; Celery's default is {DEFAULT_URL}"),
            });
        }
        Ok(BrokerUrls(urls))
    }

    /// The URLs, in failover order.
    pub fn iter(&self) -> impl Iterator<Item = &BrokerUrl> {
        self.0.iter()
    }

    /// The URL at `index` modulo the count (for round-robin failover).
    pub fn nth_cyclic(&self, index: usize) -> &BrokerUrl {
        &self.0[index % self.0.len()]
    }

    /// How many URLs there are (at least one).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: there is at least one URL.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Default for BrokerUrls {
    fn default() -> Self {
        BrokerUrls::parse(DEFAULT_URL).unwrap_or_else(|_| BrokerUrls(Vec::new()))
    }
}

impl FromStr for BrokerUrls {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BrokerUrls::parse(s)
    }
}

impl fmt::Display for BrokerUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, url) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            write!(f, "{url}")?;
        }
        Ok(())
    }
}

fn split_host_port(hostport: &str) -> Result<(String, Option<u16>), String> {
    let port_of = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("port {p:?} is not a number between 0 and 65535"))
    };
    if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or("an IPv6 address must be closed with ']'")?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(port_of(p)?),
            None if after.is_empty() => None,
            None => return Err(format!("unexpected {after:?} after the IPv6 address")),
        };
        return Ok((host.to_owned(), port));
    }
    match hostport.rsplit_once(':') {
        Some((host, port)) => Ok((host.to_owned(), Some(port_of(port)?))),
        None => Ok((hostport.to_owned(), None)),
    }
}

/// Replaces the password in any URL-looking text with `***`.
///
/// ```
/// assert_eq!(
///     celeriac_broker::url::redact("amqp://u:p@h//;amqp://v:q@i//"),
///     "amqp://u:***@h//;amqp://v:***@i//"
/// );
/// ```
pub fn redact(text: &str) -> String {
    text.split(';')
        .map(|one| {
            let Some((scheme, rest)) = one.split_once("://") else {
                return one.to_owned();
            };
            let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
            let (authority, tail) = rest.split_at(authority_end);
            match authority.rsplit_once('@') {
                Some((info, host)) => match info.split_once(':') {
                    Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
                    None => one.to_owned(),
                },
                None => one.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// The same `;`-separated URL list, starting at the URL `first` (modulo
/// the count), so that several processes given one list prefer different
/// nodes of a cluster. The text is kept as written, password included.
///
/// ```
/// assert_eq!(
///     celeriac_broker::url::rotated("amqp://a//;amqp://b//;amqp://c//", 4),
///     "amqp://b//;amqp://c//;amqp://a//"
/// );
/// ```
pub fn rotated(text: &str, first: usize) -> String {
    let urls: Vec<&str> = text
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if urls.is_empty() {
        return String::new();
    }
    let turn = first % urls.len();
    [&urls[turn..], &urls[..turn]].concat().join(";")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> BrokerUrl {
        BrokerUrl::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn celery_default_url() {
        let u = url(DEFAULT_URL);
        assert_eq!(
            (u.user.as_str(), u.password(), u.host.as_str(), u.port),
            ("guest", "guest", "localhost", 5672)
        );
        assert_eq!(u.vhost, "/");
        assert!(!u.tls);
    }

    #[test]
    fn vhost_rules_match_kombu() {
        let cases = [
            ("amqp://h//", "/"),
            ("amqp://h/", "/"),
            ("amqp://h", "/"),
            ("amqp://h/%2F", "/"),
            ("amqp://h/%2f", "/"),
            ("amqp://h/prod", "prod"),
            ("amqp://h//prod", "/prod"),
            ("amqp://h/a%20b", "a b"),
        ];
        for (text, vhost) in cases {
            assert_eq!(url(text).vhost, vhost, "{text}");
        }
    }

    #[test]
    fn schemes_ports_and_defaults() {
        assert_eq!(url("pyamqp://h").port, 5672);
        let tls = url("amqps://h");
        assert!(tls.tls);
        assert_eq!(tls.port, 5671);
        assert_eq!(url("amqp://").host, "localhost");
        assert_eq!(url("amqp://bob@h").password(), "guest");
        assert_eq!(url("amqp://[::1]:5673//").host, "::1");
        assert_eq!(url("amqp://u:p%40ss@h//").password(), "p@ss");
        assert!(BrokerUrl::parse("redis://h").is_err());
        assert!(BrokerUrl::parse("amqp://h:99999").is_err());
    }

    #[test]
    fn query_parameters() {
        let u = url("amqps://h//?heartbeat=30&connect_timeout=2.5&ssl_ca_certs=/etc/ca.pem");
        assert_eq!(u.heartbeat, Some(Duration::from_secs(30)));
        assert_eq!(u.connect_timeout, Some(Duration::from_millis(2500)));
        assert_eq!(u.tls_options.ca_file, Some("/etc/ca.pem".into()));
        let err = BrokerUrl::parse("amqp://h//?hearbeat=3").unwrap_err();
        assert!(err.problem.contains("unknown query parameter"), "{err}");
        assert!(
            BrokerUrl::parse("amqp://h//?ssl_ca_certs=x").is_err(),
            "ssl on amqp://"
        );
        let mutual = url("amqps://h//?ssl_certfile=c.pem&ssl_keyfile=k.pem");
        assert_eq!(mutual.tls_options.key_file, Some("k.pem".into()));
        let external =
            url("amqps://h//?ssl_certfile=c.pem&ssl_keyfile=k.pem&login_method=external");
        assert_eq!(external.login_method, LoginMethod::External);
        let no_certificate = BrokerUrl::parse("amqps://h//?login_method=EXTERNAL").unwrap_err();
        assert!(
            no_certificate.problem.contains("ssl_certfile"),
            "{no_certificate}"
        );
        assert!(BrokerUrl::parse("amqp://h//?login_method=GSSAPI").is_err());
    }

    #[test]
    fn passwords_never_show() {
        let u = url("amqp://user:hunter2@h//?heartbeat=5");
        for shown in [
            u.to_string(),
            format!("{u:?}"),
            format!(
                "{:?}",
                BrokerUrls::parse("amqp://user:hunter2@h//").unwrap()
            ),
        ] {
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        let err = BrokerUrl::parse("amqp://user:hunter2@h:notaport//").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn failover_lists() {
        let urls = BrokerUrls::parse("amqp://a// ; amqp://b//;").unwrap();
        assert_eq!(urls.len(), 2);
        assert_eq!(urls.nth_cyclic(3).host, "b");
        assert!(BrokerUrls::parse(" ; ").is_err());
    }
}
