//! Connection settings, with Celery's defaults where Celery has one.

use std::time::Duration;

use crate::topology::{DeadLetterTopology, QueueType};
use crate::url::{BrokerUrls, UrlError};

/// How to reach and use the broker.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// The broker URL(s); several are failover alternatives tried in turn.
    pub urls: BrokerUrls,
    /// AMQP heartbeat interval asked for (the broker may lower it; `0`
    /// disables). A URL's `heartbeat` query parameter wins. Default 60 s,
    /// RabbitMQ's own default.
    pub heartbeat: Duration,
    /// TCP + AMQP handshake timeout. Default 4 s, Celery's
    /// `broker_connection_timeout`. A URL's `connect_timeout` wins.
    pub connect_timeout: Duration,
    /// The name shown for the connection in the management UI and
    /// `rabbitmqctl list_connections client_properties`.
    pub connection_name: String,
    /// First reconnect delay; doubles per failed attempt, with full jitter.
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// How long a publish waits for a lost connection to come back before
    /// failing. Default 30 s.
    pub publish_wait: Duration,
    /// How long a publish waits for the broker's confirm. Default 30 s.
    pub confirm_timeout: Duration,
    /// Names of the dead-letter exchange and queues.
    pub dead_letter: DeadLetterTopology,
    /// `x-queue-type` of the delay queues (`celery_delayed_*`): quorum, as
    /// Celery's `broker_native_delayed_delivery_queue_type` defaults to.
    pub delay_queue_type: QueueType,
    /// `x-queue-type` of the durable latest-value slots (beat's shared
    /// state): classic by default; quorum on a cluster, so the state
    /// outlives the node that holds it (an app's `default_queue_type`
    /// sets it).
    pub state_queue_type: QueueType,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            urls: BrokerUrls::default(),
            heartbeat: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(4),
            connection_name: default_connection_name(),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            publish_wait: Duration::from_secs(30),
            confirm_timeout: Duration::from_secs(30),
            dead_letter: DeadLetterTopology::default(),
            delay_queue_type: QueueType::Quorum,
            state_queue_type: QueueType::Classic,
        }
    }
}

impl BrokerConfig {
    /// Defaults with the given URL(s) (`;`-separated for failover).
    ///
    /// ```
    /// let config = celeriac_broker::BrokerConfig::from_url("amqp://guest:guest@localhost:5672//").unwrap();
    /// assert_eq!(config.urls.len(), 1);
    /// ```
    pub fn from_url(urls: &str) -> Result<BrokerConfig, UrlError> {
        Ok(BrokerConfig {
            urls: BrokerUrls::parse(urls)?,
            ..BrokerConfig::default()
        })
    }

    /// The delay before reconnect attempt `attempt` (0-based): exponential
    /// from `reconnect_min` up to `reconnect_max`, with full jitter.
    pub fn reconnect_delay(&self, attempt: u32) -> Duration {
        let ceiling = self
            .reconnect_min
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.reconnect_max);
        ceiling
            .mul_f64(fastrand::f64())
            .max(Duration::from_millis(10))
    }
}

/// `celeriac <program> pid <pid> on <host>`.
fn default_connection_name() -> String {
    let program = std::env::args()
        .next()
        .and_then(|p| {
            std::path::Path::new(&p)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "process".into());
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    format!("celeriac {program} pid {} on {host}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays_are_bounded_and_jittered() {
        let config = BrokerConfig::default();
        for attempt in 0..40 {
            assert!(config.reconnect_delay(attempt) <= config.reconnect_max);
        }
        assert!(config.connection_name.starts_with("celeriac "));
    }
}
