//! `celeriac inspect` and `celeriac control`: Celery's remote-control
//! commands from the terminal, answered by Python and Rust workers alike,
//! printed as `celery inspect` prints them.

use std::process::ExitCode;
use std::time::Duration;

use celeriac::{App, Reply};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

/// Exit status when no worker replied (Celery's `EX_UNAVAILABLE`).
const NO_REPLIES: u8 = 69;

/// Who to ask and how long to wait.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Only these workers (node names, comma-separated) [default: all]
    #[arg(short = 'd', long, value_delimiter = ',', global = true)]
    pub destination: Vec<String>,
    /// Seconds to wait for the next reply
    #[arg(short = 't', long, default_value_t = 1.0, global = true)]
    pub timeout: f64,
    /// Print the replies as one JSON object instead
    #[arg(long, global = true)]
    pub json: bool,
}

/// The inspect commands, named as Celery names them.
#[derive(Debug, Clone, Subcommand)]
#[command(rename_all = "snake_case")]
pub enum Inspect {
    /// Are the workers up?
    Ping,
    /// Pool, totals per task, uptime, prefetch, resource usage
    Stats,
    /// Tasks running now
    Active,
    /// Tasks received and waiting for a slot
    Reserved,
    /// Tasks held until their ETA
    Scheduled,
    /// Registered task names
    Registered,
    /// Queues consumed
    ActiveQueues,
    /// Revoked task ids remembered
    Revoked,
    /// Configuration
    Conf,
    /// What the workers know of these task ids
    QueryTask {
        /// Task ids
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Versions and connections
    Report,
    /// Lamport clocks
    Clock,
}

/// The control commands, named as Celery names them.
#[derive(Debug, Clone, Subcommand)]
#[command(rename_all = "snake_case")]
pub enum Control {
    /// Revoke tasks: they never run (with --terminate, running async tasks stop)
    Revoke {
        /// Task ids
        #[arg(required = true)]
        ids: Vec<String>,
        /// Also stop them if they are running
        #[arg(long)]
        terminate: bool,
    },
    /// Shut the workers down gracefully (no reply)
    Shutdown,
    /// Set a task's rate limit per worker (`10/s`, `100/m`, `1000/h`; 0 removes it)
    RateLimit {
        /// Task name
        task: String,
        /// The rate
        rate: String,
    },
    /// Set a task's time limits, in seconds
    TimeLimit {
        /// Task name
        task: String,
        /// Soft limit
        #[arg(long)]
        soft: Option<f64>,
        /// Hard limit
        #[arg(long)]
        hard: Option<f64>,
    },
    /// Start consuming a queue
    AddConsumer {
        /// Queue name
        queue: String,
    },
    /// Stop consuming a queue
    CancelConsumer {
        /// Queue name
        queue: String,
    },
    /// Run N more tasks at once
    PoolGrow {
        /// How many more
        #[arg(default_value_t = 1)]
        n: usize,
    },
    /// Run N fewer tasks at once
    PoolShrink {
        /// How many fewer
        #[arg(default_value_t = 1)]
        n: usize,
    },
    /// Set the concurrency range
    Autoscale {
        /// Most tasks at once
        max: usize,
        /// Fewest
        #[arg(default_value_t = 0)]
        min: usize,
    },
    /// Turn task events on
    EnableEvents,
    /// Turn task events off
    DisableEvents,
    /// Ask for a heartbeat event now
    Heartbeat,
}

impl Inspect {
    fn request(&self) -> (&'static str, Value) {
        match self {
            Inspect::Ping => ("ping", json!({})),
            Inspect::Stats => ("stats", json!({})),
            Inspect::Active => ("active", json!({"safe": true})),
            Inspect::Reserved => ("reserved", json!({"safe": true})),
            Inspect::Scheduled => ("scheduled", json!({"safe": true})),
            Inspect::Registered => ("registered", json!({})),
            Inspect::ActiveQueues => ("active_queues", json!({})),
            Inspect::Revoked => ("revoked", json!({})),
            Inspect::Conf => ("conf", json!({"with_defaults": false})),
            Inspect::QueryTask { ids } => ("query_task", json!({"ids": ids})),
            Inspect::Report => ("report", json!({})),
            Inspect::Clock => ("clock", json!({})),
        }
    }
}

impl Control {
    fn request(&self) -> (&'static str, Value) {
        match self {
            Control::Revoke { ids, terminate } => (
                "revoke",
                json!({"task_id": ids, "terminate": terminate, "signal": "SIGTERM"}),
            ),
            Control::Shutdown => ("shutdown", json!({})),
            Control::RateLimit { task, rate } => {
                ("rate_limit", json!({"task_name": task, "rate_limit": rate}))
            }
            Control::TimeLimit { task, soft, hard } => (
                "time_limit",
                json!({"task_name": task, "soft": soft, "hard": hard}),
            ),
            Control::AddConsumer { queue } => ("add_consumer", json!({"queue": queue})),
            Control::CancelConsumer { queue } => ("cancel_consumer", json!({"queue": queue})),
            Control::PoolGrow { n } => ("pool_grow", json!({"n": n})),
            Control::PoolShrink { n } => ("pool_shrink", json!({"n": n})),
            Control::Autoscale { max, min } => ("autoscale", json!({"max": max, "min": min})),
            Control::EnableEvents => ("enable_events", json!({})),
            Control::DisableEvents => ("disable_events", json!({})),
            Control::Heartbeat => ("heartbeat", json!({})),
        }
    }
}

/// Runs an inspect command and prints the replies.
pub async fn inspect(
    app: &App,
    command: &Inspect,
    target: &Target,
) -> Result<ExitCode, celeriac::Error> {
    let (method, arguments) = command.request();
    call(app, method, arguments, target).await
}

/// Runs a control command and prints the replies (`shutdown` has none).
pub async fn control(
    app: &App,
    command: &Control,
    target: &Target,
) -> Result<ExitCode, celeriac::Error> {
    let (method, arguments) = command.request();
    if matches!(command, Control::Shutdown) {
        remote(app, target).cast(method, arguments).await?;
        println!("shutdown sent (workers do not reply to it)");
        return Ok(ExitCode::SUCCESS);
    }
    call(app, method, arguments, target).await
}

fn remote(app: &App, target: &Target) -> celeriac::Control {
    let mut control = app
        .control()
        .timeout(Duration::from_secs_f64(target.timeout.max(0.0)));
    if !target.destination.is_empty() {
        control = control.to(target.destination.clone());
    }
    control
}

async fn call(
    app: &App,
    method: &str,
    arguments: Value,
    target: &Target,
) -> Result<ExitCode, celeriac::Error> {
    let replies = remote(app, target).call(method, arguments).await?;
    if replies.is_empty() {
        eprintln!("Error: No nodes replied within time constraint");
        return Ok(ExitCode::from(NO_REPLIES));
    }
    if target.json {
        let all: serde_json::Map<String, Value> = replies
            .into_iter()
            .map(|r| (r.node, r.value.unwrap_or(Value::Null)))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&Value::Object(all)).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let count = replies.len();
    for reply in replies {
        print_reply(&reply);
    }
    println!(
        "\n{count} node{} online.",
        if count == 1 { "" } else { "s" }
    );
    Ok(ExitCode::SUCCESS)
}

/// One reply as `celery inspect` prints it: `->  node: OK` and the value,
/// or `->  node: ERROR` and why.
fn print_reply(reply: &Reply<Value>) {
    let value = reply.value.as_ref().ok().cloned().unwrap_or(Value::Null);
    let error = value
        .as_object()
        .and_then(|o| o.get("error"))
        .and_then(Value::as_str);
    match error {
        Some(error) => println!("->  {}: ERROR\n        {error}", reply.node),
        None => {
            println!("->  {}: OK", reply.node);
            let body = match &value {
                Value::Object(o) if o.len() == 1 && o.contains_key("ok") => {
                    o["ok"].as_str().unwrap_or_default().to_owned()
                }
                Value::Array(items) if items.is_empty() => "- empty -".to_owned(),
                Value::Array(items) => items
                    .iter()
                    .map(|item| match item {
                        Value::String(s) => format!("* {s}"),
                        other => format!("* {other}"),
                    })
                    .collect::<Vec<_>>()
                    .join("\n"),
                other => serde_json::to_string_pretty(other).unwrap_or_default(),
            };
            for line in body.lines() {
                println!("        {line}");
            }
        }
    }
}
