//! What Celeriac declares, checked against RabbitMQ 4.3's rules on the 3.10
//! broker here: 4.3 refuses queues that are neither durable nor exclusive
//! (the `transient_nonexcl_queues` deprecation) and `basic.qos` with
//! `global = true` (`global_qos`). This test needs the broker's queue list
//! to itself while it runs, hence its place among the serial fault tests.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, ensure};
use celeriac::broker::delay::{LEVELS, ORPHANS};
use celeriac::{App, Queue};
use celeriac_tests::worker::{RunningWorker, cleanup};
use celeriac_tests::{broker_url, disturbing, rabbitmqctl, unique};

/// Each queue on the broker: `(durable, exclusive)` by name.
fn queues() -> Result<BTreeMap<String, (bool, bool)>> {
    let listing = rabbitmqctl(&[
        "list_queues",
        "-q",
        "--no-table-headers",
        "name",
        "durable",
        "exclusive",
    ])?;
    Ok(listing
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let name = fields.next()?.to_owned();
            let durable = fields.next()? == "true";
            let exclusive = fields.next()? == "true";
            Some((name, (durable, exclusive)))
        })
        .collect())
}

/// The global prefetch of every channel on a connection named `celeriac…`
/// (the name every Celeriac connection gives itself), as
/// `(connection name, global prefetch)`.
fn celeriac_channels_global_prefetch() -> Result<Vec<(String, u32)>> {
    let connections = rabbitmqctl(&[
        "list_connections",
        "-q",
        "--no-table-headers",
        "pid",
        "client_properties",
    ])?;
    let ours: BTreeMap<String, String> = connections
        .lines()
        .filter_map(|line| {
            let (pid, properties) = line.split_once('\t')?;
            // `{"connection_name","celeriac celeriac-demo pid 1 on host"}`
            let at = properties.find("{\"connection_name\",\"celeriac")?;
            let name = properties[at..].split('"').nth(3)?.to_owned();
            Some((pid.to_owned(), name))
        })
        .collect();
    let channels = rabbitmqctl(&[
        "list_channels",
        "-q",
        "--no-table-headers",
        "connection",
        "global_prefetch_count",
    ])?;
    Ok(channels
        .lines()
        .filter_map(|line| {
            let (connection, global) = line.split_once('\t')?;
            let name = ours.get(connection)?;
            Some((name.clone(), global.trim().parse().ok()?))
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_queue_celeriac_declares_would_be_accepted_by_rabbitmq_4_3() -> Result<()> {
    let _alone = disturbing().await;
    let before = queues()?;

    // A worker (task and control queues; the delay topology; the
    // dead-letter queue, declared with its first dead letter), a client
    // reading rpc:// results, and a remote-control call (its reply queue).
    let queue = Queue::celery_default(unique("declared"));
    let worker = RunningWorker::start(App::builder(), &queue, |_| {}).await?;
    let client = App::builder()
        .broker_url(broker_url())
        .result_backend("rpc://")
        .build()
        .await?;
    let sum: i64 = client
        .send_task("demo.add")
        .args(serde_json::json!([2, 3]))
        .queue(&queue.name)
        .apply()
        .await?
        .get_as(Duration::from_secs(30))
        .await?;
    ensure!(sum == 5);
    client
        .send_task("no.such.task")
        .queue(&queue.name)
        .ignore_result(true)
        .apply()
        .await?;
    let dead = format!("{}.dead", queue.name);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while client.broker().queue_counts(&dead).await? != Some((1, 0)) {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the unknown task was not dead-lettered to {dead}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pongs = client.control().ping().await?;
    ensure!(!pongs.is_empty(), "no worker answered the ping");
    // Every connection is open now, its channels set up.
    let prefetch = celeriac_channels_global_prefetch()?;
    let after = queues()?;
    worker.stop().await?;

    let mut checked: Vec<String> = after
        .keys()
        .filter(|name| !before.contains_key(*name))
        .cloned()
        .collect();
    checked.extend((0..LEVELS).map(|level| format!("celery_delayed_{level}")));
    checked.push(ORPHANS.to_owned());
    let kinds = [
        queue.name.clone(),
        format!("{}.dead", queue.name),
        ".celery.pidbox".to_owned(),
        ".reply.celery.pidbox".to_owned(),
    ];
    for kind in &kinds {
        ensure!(
            checked.iter().any(|name| name.ends_with(kind.as_str())),
            "no queue ending {kind:?} was declared: {checked:?}"
        );
    }
    for name in &checked {
        let Some((durable, exclusive)) = after.get(name) else {
            anyhow::bail!("{name} is not on the broker");
        };
        ensure!(
            *durable || *exclusive,
            "{name} is neither durable nor exclusive: RabbitMQ 4.3 refuses such a queue"
        );
    }
    println!("{} queues checked: {checked:?}", checked.len());

    ensure!(
        !prefetch.is_empty(),
        "no Celeriac channel was found to check"
    );
    for (connection, global) in &prefetch {
        ensure!(
            *global == 0,
            "a channel of {connection:?} has a global prefetch of {global}: RabbitMQ 4.3 \
             refuses basic.qos with global = true"
        );
    }
    cleanup(&client, &queue.name).await;
    Ok(())
}
