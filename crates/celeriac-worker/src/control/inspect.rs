//! The inspect commands (§6.4, §6.5): what the worker holds and how it is
//! set up, in Celery's reply shapes.

use std::sync::Arc;

use celeriac::protocol::control::{ControlOutcome, PoolStats, QueueDoc, WorkerStats};
use serde_json::{Map, Value, json};

use super::mingle;
use crate::context::Context;

/// Runs inspect command `method`; `None` if it is not one.
pub(super) async fn run(
    ctx: &Arc<Context>,
    method: &str,
    args: &Map<String, Value>,
) -> Option<Option<Value>> {
    let hostname = ctx.config.hostname.as_str();
    let safe = args.get("safe").and_then(Value::as_bool).unwrap_or(false);
    let reply = match method {
        "ping" => ControlOutcome::ok("pong").to_json(),
        "stats" => json!(stats(ctx)),
        "active" => json!(ctx.tracker.active(hostname, safe)),
        "reserved" => json!(ctx.tracker.reserved(hostname, safe)),
        "scheduled" | "dump_schedule" => json!(ctx.tracker.scheduled(hostname, safe)),
        "registered" | "dump_tasks" => json!(registered(ctx, args)),
        "active_queues" => json!(active_queues(ctx)),
        "revoked" | "dump_revoked" => json!(ctx.revoked.ids()),
        "conf" | "dump_conf" => Value::Object(conf(ctx)),
        "query_task" => {
            let ids = strings(args.get("ids"));
            Value::Object(ctx.tracker.query(&ids, hostname))
        }
        "clock" => json!({"clock": ctx.app.clock().value()}),
        "report" => ControlOutcome::ok(report(ctx)).to_json(),
        "hello" => return Some(mingle::hello(ctx, args)),
        "memsample" | "memdump" | "objgraph" => ControlOutcome::error(format!(
            "{method} inspects a Python process's memory; a Celeriac worker's is in `stats` (rusage.maxrss)"
        ))
        .to_json(),
        _ => return None,
    };
    Some(Some(reply))
}

/// A string or a list of strings, as Celery's `maybe_list` reads it.
pub(super) fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

fn stats(ctx: &Context) -> WorkerStats {
    let size = ctx.pool.size();
    let limits = |d: Option<std::time::Duration>| d.map_or(Value::Null, |d| json!(d.as_secs_f64()));
    let defaults = ctx.app.task_defaults();
    WorkerStats {
        total: ctx.tracker.totals(),
        pid: std::process::id(),
        clock: ctx.app.clock().value().to_string(),
        uptime: ctx.started.elapsed().as_secs(),
        pool: PoolStats {
            implementation: "celeriac:TokioPool".into(),
            max_concurrency: size,
            processes: vec![std::process::id()],
            max_tasks_per_child: json!("N/A"),
            put_guarded_by_semaphore: true,
            timeouts: vec![
                limits(defaults.soft_time_limit),
                limits(defaults.time_limit),
            ],
        },
        broker: broker_info(ctx),
        prefetch_count: u64::from(ctx.config.prefetch()),
        rusage: rusage(),
    }
}

/// Celery's `Connection.info()` of the broker in use (no password).
fn broker_info(ctx: &Context) -> Map<String, Value> {
    let config = ctx.app.broker().config();
    let mut urls = config.urls.iter();
    let mut info = Map::new();
    if let Some(url) = urls.next() {
        info.insert("hostname".into(), json!(url.host));
        info.insert("userid".into(), json!(url.user));
        info.insert("virtual_host".into(), json!(url.vhost));
        info.insert("port".into(), json!(url.port));
        info.insert("insist".into(), json!(false));
        info.insert("ssl".into(), json!(url.tls));
        info.insert("transport".into(), json!("amqp"));
        info.insert(
            "connect_timeout".into(),
            json!(config.connect_timeout.as_secs_f64()),
        );
        info.insert("transport_options".into(), json!({}));
        info.insert("login_method".into(), Value::Null);
        info.insert("uri_prefix".into(), Value::Null);
        info.insert("heartbeat".into(), json!(config.heartbeat.as_secs_f64()));
        info.insert("failover_strategy".into(), json!("round-robin"));
        info.insert(
            "alternates".into(),
            json!(urls.map(ToString::to_string).collect::<Vec<_>>()),
        );
    }
    info
}

/// `getrusage(RUSAGE_SELF)` as Python's `resource` module reports it,
/// read from `/proc/self/stat` and `/proc/self/status` (Linux).
fn rusage() -> Map<String, Value> {
    let mut usage = Map::new();
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |index: usize| {
        fields
            .get(index)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat (11 and 12 after the
    // name), in clock ticks of 1/100 s on Linux.
    let ticks = 100.0;
    usage.insert("utime".into(), json!(field(11) / ticks));
    usage.insert("stime".into(), json!(field(12) / ticks));
    usage.insert("minflt".into(), json!(field(7) as u64));
    usage.insert("majflt".into(), json!(field(9) as u64));
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    usage.insert("maxrss".into(), json!(kib("VmHWM:")));
    for zero in [
        "ixrss", "idrss", "isrss", "nswap", "inblock", "oublock", "msgsnd", "msgrcv", "nsignals",
    ] {
        usage.insert(zero.into(), json!(0));
    }
    usage.insert("nvcsw".into(), json!(kib("voluntary_ctxt_switches:")));
    usage.insert("nivcsw".into(), json!(kib("nonvoluntary_ctxt_switches:")));
    usage
}

/// Celery's `registered`: task names, each with the `taskinfoitems` it
/// has set (`name [rate_limit=10/m time_limit=30.0]`).
fn registered(ctx: &Context, args: &Map<String, Value>) -> Vec<String> {
    let mut items = strings(args.get("taskinfoitems"));
    if items.is_empty() {
        items = vec!["exchange".into(), "routing_key".into(), "rate_limit".into()];
    }
    let builtins = args
        .get("builtins")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut names: Vec<&str> = ctx
        .tasks
        .names()
        .filter(|name| builtins || !name.starts_with("celery."))
        .collect();
    names.sort_unstable();
    names
        .into_iter()
        .map(|name| {
            let options = ctx.options_of(name);
            let fields: Vec<String> = items
                .iter()
                .filter_map(|item| {
                    let value = match item.as_str() {
                        "rate_limit" => ctx.rates.rate(name),
                        "time_limit" => options.time_limit.map(|d| d.as_secs_f64().to_string()),
                        "soft_time_limit" => {
                            options.soft_time_limit.map(|d| d.as_secs_f64().to_string())
                        }
                        "max_retries" => options.max_retries.map(|n| n.to_string()),
                        "acks_late" => options.acks_late.map(python_bool),
                        "ignore_result" => options.ignore_result.map(python_bool),
                        "track_started" => options.track_started.map(python_bool),
                        "queue" => options.queue.clone(),
                        "priority" => options.priority.map(|p| p.to_string()),
                        _ => None,
                    }?;
                    Some(format!("{item}={value}"))
                })
                .collect();
            if fields.is_empty() {
                name.to_owned()
            } else {
                format!("{name} [{}]", fields.join(" "))
            }
        })
        .collect()
}

fn python_bool(value: bool) -> String {
    if value { "True" } else { "False" }.to_owned()
}

/// kombu's `Queue.as_dict(recurse=True)` of each queue consumed.
fn active_queues(ctx: &Context) -> Vec<QueueDoc> {
    ctx.consumer
        .queues()
        .iter()
        .map(|queue| {
            let arguments = queue.arguments.to_headers();
            let queue_arguments = if arguments.is_empty() {
                Value::Null
            } else {
                Value::Object(
                    arguments
                        .iter()
                        .map(|(k, v)| (k.clone(), v.to_json()))
                        .collect(),
                )
            };
            let mut other = Map::new();
            other.insert("queue_arguments".into(), queue_arguments);
            for key in [
                "binding_arguments",
                "consumer_arguments",
                "alias",
                "no_declare",
            ] {
                other.insert(key.into(), Value::Null);
            }
            other.insert("no_ack".into(), json!(false));
            other.insert("bindings".into(), json!([]));
            let seconds = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64());
            other.insert("expires".into(), json!(seconds(queue.arguments.expires)));
            other.insert(
                "message_ttl".into(),
                json!(seconds(queue.arguments.message_ttl)),
            );
            other.insert("max_length".into(), json!(queue.arguments.max_length));
            other.insert("max_length_bytes".into(), Value::Null);
            other.insert("max_priority".into(), json!(queue.arguments.max_priority));
            let mut exchange = Map::new();
            exchange.insert("name".into(), json!(queue.exchange.name));
            exchange.insert("type".into(), json!(queue.exchange.kind.as_str()));
            exchange.insert("arguments".into(), Value::Null);
            exchange.insert("durable".into(), json!(queue.exchange.durable));
            exchange.insert("passive".into(), json!(false));
            exchange.insert("auto_delete".into(), json!(queue.exchange.auto_delete));
            exchange.insert("delivery_mode".into(), Value::Null);
            exchange.insert("no_declare".into(), json!(false));
            QueueDoc {
                name: queue.name.clone(),
                exchange,
                routing_key: queue.routing_key.clone(),
                durable: queue.durable,
                exclusive: queue.exclusive,
                auto_delete: queue.auto_delete,
                other,
            }
        })
        .collect()
}

/// The worker's settings under Celery's names, for `inspect conf`.
fn conf(ctx: &Context) -> Map<String, Value> {
    let config = &ctx.config;
    let app = &ctx.app;
    let mut conf = Map::new();
    conf.insert(
        "broker_url".into(),
        json!(app.broker().config().urls.to_string()),
    );
    conf.insert(
        "result_backend".into(),
        json!(app.result_backend().map(|b| b.url())),
    );
    conf.insert(
        "result_expires".into(),
        json!(app.result_settings().expires.map(|d| d.as_secs())),
    );
    conf.insert(
        "result_extended".into(),
        json!(app.result_settings().extended),
    );
    conf.insert("worker_concurrency".into(), json!(ctx.pool.size()));
    conf.insert(
        "worker_prefetch_multiplier".into(),
        json!(config.prefetch_multiplier),
    );
    conf.insert(
        "worker_send_task_events".into(),
        json!(ctx.events.task_events()),
    );
    conf.insert("task_track_started".into(), json!(config.track_started));
    conf.insert("task_acks_late".into(), json!(true));
    conf.insert(
        "task_queues".into(),
        json!(
            ctx.consumer
                .queues()
                .iter()
                .map(|q| q.name.clone())
                .collect::<Vec<_>>()
        ),
    );
    conf.insert(
        "worker_state_db".into(),
        json!(config.statedb.as_ref().map(|p| p.display().to_string())),
    );
    conf.insert(
        "worker_heartbeat_interval".into(),
        json!(config.heartbeat.map(|d| d.as_secs_f64())),
    );
    conf
}

/// A short bug report: versions and the broker.
fn report(ctx: &Context) -> String {
    format!(
        "software -> celeriac:{} (Rust)\nplatform -> {} {}\nbroker -> {}\nresults -> {}\nhostname -> {}\n",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::env::consts::ARCH,
        ctx.app.broker().config().urls,
        ctx.app
            .result_backend()
            .map_or_else(|| "disabled".to_owned(), |b| b.url()),
        ctx.config.hostname,
    )
}
