//! Connections to the Redis server: one multiplexed connection for commands
//! (redis-rs's `ConnectionManager`, which reconnects by itself after a loss),
//! made lazily so a worker starts while Redis is down; pub/sub connections
//! come from the same [`Store::client`]. Behind Sentinels, the master is
//! looked up again whenever the store becomes unreachable.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{
    Client, ClientTlsConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo,
    RedisConnectionInfo, RedisError, TlsCertificates, TlsMode,
};
use tokio::sync::Mutex;

use super::url::{RedisUrl, Target, TlsSettings};
use crate::result::BackendError;

/// How long one connection attempt may take (Celery's
/// `redis_socket_connect_timeout` is unset; 4 s is its broker's).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);
/// How long one command may wait for its answer.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The Redis server of a backend URL.
pub(crate) struct Store {
    url: RedisUrl,
    manager: Mutex<Option<ConnectionManager>>,
}

impl Store {
    /// A store for `url`; nothing is connected yet.
    pub(crate) fn new(url: RedisUrl) -> Store {
        Store {
            url,
            manager: Mutex::new(None),
        }
    }

    /// The URL, password redacted.
    pub(crate) fn url(&self) -> String {
        self.url.to_string()
    }

    /// A client for the server (the current master, behind Sentinels).
    pub(crate) async fn client(&self) -> Result<Client, BackendError> {
        let redis_info = self.redis_info();
        match &self.url.target {
            Target::Tcp { host, port, tls } => {
                let addr = match tls {
                    None => ConnectionAddr::Tcp(host.clone(), *port),
                    Some(tls) => ConnectionAddr::TcpTls {
                        host: host.clone(),
                        port: *port,
                        insecure: !tls.verify,
                        tls_params: None,
                    },
                };
                self.build(addr, redis_info, tls.as_ref())
            }
            Target::Socket(path) => {
                self.build(ConnectionAddr::Unix(path.clone()), redis_info, None)
            }
            Target::Sentinel {
                sentinels,
                master,
                tls,
            } => {
                let addrs: Vec<ConnectionAddr> = sentinels
                    .iter()
                    .map(|(host, port)| ConnectionAddr::Tcp(host.clone(), *port))
                    .collect();
                let mut sentinel =
                    Sentinel::build(addrs).map_err(|e| self.error("finding the sentinels", &e))?;
                let mut node =
                    SentinelNodeConnectionInfo::default().set_redis_connection_info(redis_info);
                if let Some(tls) = tls {
                    node = node.set_tls_mode(if tls.verify {
                        TlsMode::Secure
                    } else {
                        TlsMode::Insecure
                    });
                }
                sentinel
                    .async_master_for(master, Some(&node))
                    .await
                    .map_err(|e| self.error("asking the sentinels for the master", &e))
            }
        }
    }

    fn redis_info(&self) -> RedisConnectionInfo {
        let mut info = RedisConnectionInfo::default().set_db(self.url.db);
        if let Some(user) = &self.url.username {
            info = info.set_username(user);
        }
        if let Some(password) = &self.url.password {
            info = info.set_password(password);
        }
        info
    }

    fn build(
        &self,
        addr: ConnectionAddr,
        redis_info: RedisConnectionInfo,
        tls: Option<&TlsSettings>,
    ) -> Result<Client, BackendError> {
        let info: ConnectionInfo = addr
            .into_connection_info()
            .map_err(|e| self.error("reading the address", &e))?
            .set_redis_settings(redis_info);
        let Some(tls) = tls.filter(|t| t.ca_file.is_some() || t.client.is_some()) else {
            return Client::open(info).map_err(|e| self.error("opening a client", &e));
        };
        let read = |path: &std::path::Path, what: &str| {
            std::fs::read(path).map_err(|e| {
                BackendError::Config(format!("cannot read the {what} {}: {e}", path.display()))
            })
        };
        let certificates = TlsCertificates {
            client_tls: match &tls.client {
                Some((cert, key)) => Some(ClientTlsConfig {
                    client_cert: read(cert, "client certificate (ssl_certfile)")?,
                    client_key: read(key, "client key (ssl_keyfile)")?,
                }),
                None => None,
            },
            root_cert: tls
                .ca_file
                .as_deref()
                .map(|path| read(path, "CA bundle (ssl_ca_certs)"))
                .transpose()?,
        };
        Client::build_with_tls(info, certificates).map_err(|e| self.error("setting up TLS", &e))
    }

    /// The command connection, created on first use.
    pub(crate) async fn connection(&self) -> Result<ConnectionManager, BackendError> {
        let mut manager = self.manager.lock().await;
        if let Some(manager) = &*manager {
            return Ok(manager.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let created = ConnectionManager::new_lazy_with_config(self.client().await?, config)
            .map_err(|e| self.error("connecting", &e))?;
        *manager = Some(created.clone());
        Ok(created)
    }

    /// After an unreachable store: behind Sentinels, forget the connection so
    /// the next command asks for the (maybe new) master.
    pub(crate) async fn lost(&self) {
        if matches!(self.url.target, Target::Sentinel { .. }) {
            *self.manager.lock().await = None;
        }
    }

    /// Our error for a client error during `operation`.
    pub(crate) fn error(&self, operation: &'static str, error: &RedisError) -> BackendError {
        let unreachable = error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_io_error()
            || error.is_timeout();
        if unreachable {
            BackendError::Unavailable {
                url: self.url(),
                detail: format!("{operation}: {error}"),
            }
        } else {
            BackendError::Refused {
                url: self.url(),
                operation,
                detail: error.to_string(),
            }
        }
    }
}
