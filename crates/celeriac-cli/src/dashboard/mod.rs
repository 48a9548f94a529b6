//! `celeriac dashboard`: one web page for the engineer on call. Dead
//! letters with their reasons, filtered and paged, requeued or purged with
//! a confirmation (with the same at-least-once rules as `celeriac dlq`);
//! queue depths updated live with their last ten minutes; the online
//! workers and what they run. Guide: `docs/dashboard.md`.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use celeriac_cli::dashboard::{Dashboard, DashboardConfig};
//!
//! let app = celeriac::App::builder().build().await?;
//! let dashboard = Dashboard::start(app, DashboardConfig::default()).await?;
//! println!("open http://{}", dashboard.addr());
//! tokio::signal::ctrl_c().await?;
//! dashboard.stop().await;
//! # Ok(())
//! # }
//! ```

mod access;
mod form;
mod live;
mod pages;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use celeriac::App;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use access::Access;

/// How the dashboard serves.
#[derive(Debug, Clone)]
pub struct DashboardConfig {
    /// Where it listens [default: `127.0.0.1:8080`]. Anything but loopback
    /// needs [`Access::Basic`] or [`Access::Token`].
    pub listen: SocketAddr,
    /// Task queues watched from the start (their dead letters, depth and
    /// history); the queues the workers consume are added as they answer.
    pub queues: Vec<String>,
    /// What a request must carry.
    pub access: Access,
    /// Show everything, change nothing: no requeue or purge.
    pub read_only: bool,
    /// Flower's address, linked for task history.
    pub flower_url: Option<String>,
    /// The broker URL shown in the header (its password is redacted).
    pub broker_label: String,
    /// How often the queues are sampled [default: 2 s].
    pub sample_every: Duration,
}

impl Default for DashboardConfig {
    fn default() -> DashboardConfig {
        DashboardConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            queues: vec!["celery".to_owned()],
            access: Access::Open,
            read_only: false,
            flower_url: None,
            broker_label: "amqp://guest:***@localhost:5672//".to_owned(),
            sample_every: Duration::from_secs(2),
        }
    }
}

/// Why the dashboard cannot start.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    /// It would serve dead letters to the network without a password.
    #[error(
        "listening on {0} would show dead letters (arguments and tracebacks) to anyone who can \
         reach it: set --basic-auth USER:PASSWORD or --token TOKEN, or listen on 127.0.0.1"
    )]
    Exposed(SocketAddr),
    /// `--basic-auth` is not `user:password`.
    #[error("--basic-auth takes USER:PASSWORD, both non-empty")]
    BadBasicAuth,
    /// The listen address cannot be bound.
    #[error(
        "cannot listen on {addr}: {source} (is another dashboard running there? pick another with --listen)"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running dashboard.
#[derive(Debug)]
pub struct Dashboard {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    sampler: JoinHandle<()>,
    server: JoinHandle<std::io::Result<()>>,
}

impl Dashboard {
    /// Binds `config.listen` and serves until [`stop`](Self::stop).
    pub async fn start(app: App, config: DashboardConfig) -> Result<Dashboard, DashboardError> {
        access::check_exposure(config.listen, &config.access)?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| DashboardError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener
            .local_addr()
            .map_err(|source| DashboardError::Bind {
                addr: config.listen,
                source,
            })?;
        let (publish, live_view) = watch::channel(Arc::new(live::Snapshot::default()));
        let (stop, stopped) = watch::channel(false);
        let watched = live::Watched::new(&config.queues);
        let sampler = tokio::spawn(live::run(
            app.clone(),
            watched.clone(),
            config.sample_every,
            publish,
            stopped.clone(),
        ));
        let shared = routes::Shared::new(routes::Inner {
            app,
            access: config.access,
            csrf: access::new_csrf_token(),
            read_only: config.read_only,
            flower: config.flower_url,
            broker_label: celeriac::broker::url::redact(&config.broker_label),
            watched,
            live: live_view,
        });
        let mut until_stopped = stopped;
        let server = tokio::spawn(async move {
            axum::serve(listener, routes::router(shared))
                .with_graceful_shutdown(async move {
                    let _ = until_stopped.changed().await;
                })
                .await
        });
        Ok(Dashboard {
            addr,
            stop,
            sampler,
            server,
        })
    }

    /// The address it listens on (the port chosen, if `listen` asked for
    /// port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving: open pages' live streams end, requests in progress
    /// finish (an action half-way loses nothing either way).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.sampler.await;
        let _ = self.server.await;
    }
}
