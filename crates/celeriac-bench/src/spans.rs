//! A process-wide `tracing` subscriber that records spans (formatted as a
//! log subscriber formats them, written nowhere) only while switched on, so
//! one run measures the worker's drain with and without its per-task span.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::Metadata;
use tracing::subscriber::Interest;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::{Context, Filter, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;

/// Turns span recording on and off for the whole process.
#[derive(Clone, Debug)]
pub(crate) struct SpanSwitch(Arc<AtomicBool>);

/// Spans only, while the switch is on; never events (log lines).
struct SpansOnly(Arc<AtomicBool>);

impl<S> Filter<S> for SpansOnly {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        meta.is_span() && self.0.load(Ordering::Relaxed)
    }

    /// Events (Celeriac's and lapin's log lines) are off for good, so the
    /// other rows, the raw baselines among them, pay nothing for this.
    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if meta.is_span() {
            Interest::sometimes()
        } else {
            Interest::never()
        }
    }
}

impl SpanSwitch {
    /// Installs the subscriber (off) as the process's global default.
    /// With `RUST_LOG` set, the in-process workers' and lapin's log lines
    /// at that filter also go to stderr (to diagnose a slow round; the
    /// numbers of such a run are not comparable with a quiet one).
    pub(crate) fn install() -> SpanSwitch {
        let on = Arc::new(AtomicBool::new(false));
        let spans = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(std::io::sink)
            .with_filter(SpansOnly(on.clone()));
        let logs = std::env::var_os("RUST_LOG").is_some().then(|| {
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(std::io::stderr)
                .with_filter(tracing_subscriber::EnvFilter::from_default_env())
        });
        let _ = tracing_subscriber::registry()
            .with(spans)
            .with(logs)
            .try_init();
        SpanSwitch(on)
    }

    /// Records spans from now on (`true`) or stops (`false`).
    pub(crate) fn record(&self, on: bool) {
        self.0.store(on, Ordering::Relaxed);
    }
}
