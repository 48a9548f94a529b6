//! `celeriac`: operator commands. Dead letters (`dlq list|show|requeue|purge`),
//! the on-call web page (`dashboard`), queue counts (`queues`), sending a task by name (`send`), and Celery's
//! remote control (`inspect`, `control`).

use std::io::{BufRead as _, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use celeriac::App;
use celeriac_cli::dashboard::{Access, Dashboard, DashboardConfig};
use celeriac_cli::dlq::{self, Filter, Shelf};
use celeriac_cli::remote;
use clap::{Parser, Subcommand};
use serde_json::Value;

/// Operate a Celeriac (or Celery) deployment on RabbitMQ: dead letters,
/// queue counts, sending tasks, inspecting and controlling workers.
#[derive(Debug, Parser)]
#[command(name = "celeriac", version, about, long_about = None)]
struct Args {
    /// Broker URL(s) [default: Celery's amqp://guest:guest@localhost:5672//]
    #[arg(short = 'b', long, global = true, env = "CELERIAC_BROKER_URL")]
    broker: Option<String>,

    /// Queue type of the delay queues, as the workers declare them: quorum
    /// or classic (for `dlq --orphans`) [default: quorum]
    #[arg(long, global = true, env = "CELERIAC_DELAY_QUEUE_TYPE")]
    delay_queue_type: Option<celeriac::QueueType>,

    /// Queue type the workers declare their queues with (quorum on a
    /// cluster); the dead-letter queues and the queues `send` declares
    /// follow it. A dead-letter queue of the other type is read as it is
    /// [default: classic]
    #[arg(long, global = true, env = "CELERIAC_DEFAULT_QUEUE_TYPE")]
    default_queue_type: Option<celeriac::QueueType>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Dead letters of a task queue (`<queue>.dead`)
    Dlq {
        #[command(subcommand)]
        action: Dlq,
    },
    /// A web page for the engineer on call: dead letters (requeue, purge),
    /// queues live, workers and their active tasks
    Dashboard(DashboardArgs),
    /// Ready messages and consumers of queues (and their dead-letter queues)
    Queues {
        /// Queues, comma-separated
        #[arg(short = 'Q', long, value_delimiter = ',', default_value = "celery")]
        queues: Vec<String>,
    },
    /// Send a task by name
    Send {
        /// Task name, e.g. proj.tasks.add
        task: String,
        /// Positional arguments as a JSON array
        #[arg(long, default_value = "[]")]
        args: String,
        /// Keyword arguments as a JSON object
        #[arg(long, default_value = "{}")]
        kwargs: String,
        /// Queue to send to [default: routed, i.e. celery]
        #[arg(short = 'Q', long)]
        queue: Option<String>,
        /// Seconds before it may run
        #[arg(long)]
        countdown: Option<f64>,
        /// Wait this many seconds for the result (uses rpc://)
        #[arg(long)]
        wait: Option<f64>,
    },
    /// Ask workers (Python or Rust) what they are doing, as `celery inspect`
    Inspect {
        #[command(subcommand)]
        command: remote::Inspect,
        #[command(flatten)]
        target: remote::Target,
    },
    /// Steer workers (Python or Rust), as `celery control`
    Control {
        #[command(subcommand)]
        command: remote::Control,
        #[command(flatten)]
        target: remote::Target,
    },
}

#[derive(Debug, clap::Args)]
struct DashboardArgs {
    /// Address to listen on; anything but loopback needs --basic-auth or --token
    #[arg(
        long,
        default_value = "127.0.0.1:8080",
        env = "CELERIAC_DASHBOARD_LISTEN"
    )]
    listen: std::net::SocketAddr,
    /// Task queues to watch from the start (those the workers consume are
    /// added as they answer), comma-separated
    #[arg(short = 'Q', long, value_delimiter = ',', default_value = "celery")]
    queues: Vec<String>,
    /// Ask for this user and password (USER:PASSWORD); prefer the
    /// environment variable, which other users cannot see in `ps`
    #[arg(long, env = "CELERIAC_DASHBOARD_BASIC_AUTH", hide_env_values = true)]
    basic_auth: Option<String>,
    /// Ask for this token (`Authorization: Bearer`, or as the basic-auth
    /// password)
    #[arg(
        long,
        env = "CELERIAC_DASHBOARD_TOKEN",
        hide_env_values = true,
        conflicts_with = "basic_auth"
    )]
    token: Option<String>,
    /// Show everything, change nothing
    #[arg(long)]
    read_only: bool,
    /// Flower's address, linked for task history (e.g. http://localhost:5555)
    #[arg(long, env = "CELERIAC_FLOWER_URL")]
    flower_url: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Dlq {
    /// List dead letters: task, id, reason, error, time
    List {
        /// The task queue whose dead letters to list
        #[arg(short = 'Q', long, default_value = "celery")]
        queue: String,
        /// Delayed messages whose queue was deleted while they waited,
        /// instead of a queue's dead letters
        #[arg(long, conflicts_with = "queue")]
        orphans: bool,
        /// At most this many
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one dead letter in full
    Show {
        /// Its task id
        id: String,
        #[arg(short = 'Q', long, default_value = "celery")]
        queue: String,
        /// Delayed messages whose queue was deleted while they waited,
        /// instead of a queue's dead letters
        #[arg(long, conflicts_with = "queue")]
        orphans: bool,
    },
    /// Send dead letters back to their queue, retries reset
    Requeue {
        #[arg(short = 'Q', long, default_value = "celery")]
        queue: String,
        /// Delayed messages whose queue was deleted while they waited,
        /// instead of a queue's dead letters
        #[arg(long, conflicts_with = "queue")]
        orphans: bool,
        /// Only the one with this task id
        #[arg(long, conflicts_with_all = ["task", "reason", "all"])]
        id: Option<String>,
        /// Only those of this task name (with --reason: both must match)
        #[arg(long, conflicts_with = "all")]
        task: Option<String>,
        /// Only those dead-lettered for this reason (e.g. failed)
        #[arg(long, conflicts_with = "all")]
        reason: Option<String>,
        /// All of them
        #[arg(long)]
        all: bool,
    },
    /// Delete every dead letter of a queue
    Purge {
        #[arg(short = 'Q', long, default_value = "celery")]
        queue: String,
        /// Delayed messages whose queue was deleted while they waited,
        /// instead of a queue's dead letters
        #[arg(long, conflicts_with = "queue")]
        orphans: bool,
        /// Do not ask for confirmation
        #[arg(long)]
        yes: bool,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    else {
        eprintln!("error: cannot start the async runtime");
        return ExitCode::FAILURE;
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let mut builder = App::builder();
    if let Some(url) = &args.broker {
        builder = builder.broker_url(url.clone());
    }
    if let Some(queue_type) = args.delay_queue_type {
        builder = builder.delay_queue_type(queue_type);
    }
    if let Some(queue_type) = args.default_queue_type {
        builder = builder.default_queue_type(queue_type);
    }
    if matches!(args.command, Command::Send { wait: Some(_), .. }) {
        builder = builder.result_backend("rpc://");
    }
    let app = builder.build().await?;
    let broker = app.broker();
    let code = match args.command {
        Command::Dashboard(options) => {
            let access = match (options.basic_auth, options.token) {
                (Some(spec), _) => Access::basic(&spec)?,
                (_, Some(token)) => Access::Token(token),
                _ => Access::Open,
            };
            let config = DashboardConfig {
                listen: options.listen,
                queues: options.queues,
                access,
                read_only: options.read_only,
                flower_url: options.flower_url,
                broker_label: args
                    .broker
                    .clone()
                    .unwrap_or_else(|| DashboardConfig::default().broker_label),
                ..DashboardConfig::default()
            };
            let dashboard = Dashboard::start(app.clone(), config).await?;
            println!(
                "celeriac dashboard on http://{} (Ctrl-C to stop)",
                dashboard.addr()
            );
            tokio::signal::ctrl_c().await?;
            dashboard.stop().await;
            ExitCode::SUCCESS
        }
        Command::Inspect { command, target } => remote::inspect(&app, &command, &target).await?,
        Command::Control { command, target } => remote::control(&app, &command, &target).await?,
        Command::Dlq {
            action:
                Dlq::List {
                    queue,
                    orphans,
                    limit,
                },
        } => {
            let shelf = shelf(queue, orphans);
            let letters = dlq::list(broker, &shelf, limit).await?;
            println!(
                "{} dead letter(s) in {}",
                letters.len(),
                shelf.queue(broker).name
            );
            for l in letters {
                println!(
                    "{}  {}  {}  queue={}  reason={}  {}: {}",
                    l.time, l.task, l.id, l.origin_queue, l.reason, l.exception_type, l.error
                );
            }
            ExitCode::SUCCESS
        }
        Command::Dlq {
            action: Dlq::Show { id, queue, orphans },
        } => match dlq::show(broker, &shelf(queue.clone(), orphans), &id).await? {
            Some((view, raw)) => {
                println!(
                    "task:    {}\nid:      {}\nreason:  {}\nerror:   {}: {}\norigin:  {}\ntime:    {}\nargs:    {}",
                    view.task,
                    view.id,
                    view.reason,
                    view.exception_type,
                    view.error,
                    view.origin_queue,
                    view.time,
                    view.args
                );
                println!("headers:");
                for (name, value) in &raw.headers {
                    println!("    {name} = {}", value.to_json());
                }
                ExitCode::SUCCESS
            }
            None => {
                eprintln!(
                    "no dead letter with task id {id} in {}",
                    shelf(queue, orphans).queue(broker).name
                );
                ExitCode::from(1)
            }
        },
        Command::Dlq {
            action:
                Dlq::Requeue {
                    queue,
                    orphans,
                    id,
                    task,
                    reason,
                    all,
                },
        } => {
            let filter = match (id, task, reason, all) {
                (Some(id), ..) => Filter::id(id),
                (_, task @ Some(_), reason, _) => Filter::all().and_task(task).and_reason(reason),
                (_, _, reason @ Some(_), _) => Filter::all().and_reason(reason),
                (.., true) => Filter::all(),
                _ => {
                    eprintln!("say which: --id, --task, --reason or --all");
                    return Ok(ExitCode::from(2));
                }
            };
            let report = dlq::requeue(broker, &shelf(queue, orphans), &filter).await?;
            println!(
                "requeued {} dead letter(s); {} left in place",
                report.requeued, report.kept
            );
            if report.no_queue > 0 {
                println!(
                    "{} more left in place: their queue does not exist (declare it, e.g. by \
                     starting its worker, then requeue again)",
                    report.no_queue
                );
            }
            if report.beyond > 0 {
                println!(
                    "{} not looked at: {} dead letters left in place came first (purge or \
                     requeue those, then requeue again)",
                    report.beyond,
                    dlq::SCAN_DEPTH
                );
            }
            ExitCode::SUCCESS
        }
        Command::Dlq {
            action:
                Dlq::Purge {
                    queue,
                    orphans,
                    yes,
                },
        } => {
            let shelf = shelf(queue, orphans);
            let dlq = shelf.queue(broker).name;
            if !yes {
                print!("delete every message in {dlq}? type yes: ");
                std::io::stdout().flush()?;
                let mut answer = String::new();
                std::io::stdin().lock().read_line(&mut answer)?;
                if answer.trim() != "yes" {
                    println!("nothing deleted");
                    return Ok(ExitCode::from(1));
                }
            }
            println!(
                "deleted {} dead letter(s) from {dlq}",
                dlq::purge(broker, &shelf).await?
            );
            ExitCode::SUCCESS
        }
        Command::Queues { queues } => {
            println!("{:<48} {:>10} {:>10}", "queue", "messages", "consumers");
            for queue in queues {
                for name in [queue.clone(), dlq::dead_letter_queue(broker, &queue).name] {
                    match broker.queue_counts(&name).await? {
                        Some((messages, consumers)) => {
                            println!("{name:<48} {messages:>10} {consumers:>10}");
                        }
                        None => println!("{name:<48} {:>10} {:>10}", "-", "(absent)"),
                    }
                }
            }
            let orphans = Shelf::Orphans.queue(broker).name;
            if let Some((waiting @ 1.., _)) = broker.queue_counts(&orphans).await? {
                println!("{orphans:<48} {waiting:>10}");
                println!(
                    "{waiting} delayed message(s) lost their queue while they waited: \
                     celeriac dlq list --orphans"
                );
            }
            ExitCode::SUCCESS
        }
        Command::Send {
            task,
            args,
            kwargs,
            queue,
            countdown,
            wait,
        } => {
            let args: Value =
                serde_json::from_str(&args).map_err(|e| format!("--args is not JSON: {e}"))?;
            let kwargs: Value =
                serde_json::from_str(&kwargs).map_err(|e| format!("--kwargs is not JSON: {e}"))?;
            let mut call = app.send_task(&task).args(args).kwargs(kwargs);
            if let Some(queue) = queue {
                call = call.queue(queue);
            }
            if let Some(seconds) = countdown.filter(|s| s.is_finite() && *s >= 0.0) {
                call = call.countdown(Duration::from_secs_f64(seconds));
            }
            let result = call.apply().await?;
            println!("sent {task} as {}", result.id());
            if let Some(seconds) = wait {
                match result.get(Duration::from_secs_f64(seconds.max(0.0))).await {
                    Ok(value) => println!("result: {value}"),
                    Err(e) => {
                        eprintln!("{e}");
                        return Ok(ExitCode::from(1));
                    }
                }
            }
            ExitCode::SUCCESS
        }
    };
    app.close().await;
    Ok(code)
}

/// The dead letters a `dlq` command works on: `queue`'s, or the orphans.
fn shelf(queue: String, orphans: bool) -> Shelf {
    if orphans {
        Shelf::Orphans
    } else {
        Shelf::Queue(queue)
    }
}
