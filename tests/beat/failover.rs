//! Two `celeriac-beat` processes against the same broker: each tick is sent
//! once, and when the active one is killed with SIGKILL the standby takes
//! over within seconds, sending every due time that follows (none skipped)
//! without re-sending the ticks already sent. The one
//! documented exception (docs/beat.md, docs/reliability.md): a kill between
//! a tick's confirm and its state's confirm lets the standby send that one
//! tick again, with the same task id so it can be recognised.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use celeriac::App;
use celeriac_broker::{ConsumeOptions, Queue};
use celeriac_tests::broker_url;
use celeriac_tests::ticks::Ticks;
use celeriac_tests::worker::binary;

fn start_beat(schedule: &std::path::Path, cluster: &str) -> Child {
    Command::new(binary("celeriac-beat").expect("the celeriac-beat binary is built"))
        .args([
            "--broker",
            &broker_url(),
            "--name",
            cluster,
            "--loglevel",
            "warn",
            "--schedule",
        ])
        .arg(schedule)
        .stdin(Stdio::null())
        .spawn()
        .expect("the celeriac-beat binary starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tick_is_sent_once_across_a_killed_leader() {
    let id = format!(
        "{:x}",
        std::process::id() as u64 * 2_654_435_761 % 0xffff_ffff
    );
    let queue = Queue::celery_default(format!("celeriac-test.beat.{id}"));
    let cluster = format!("test-{id}");
    let dir = std::env::temp_dir().join(format!("celeriac-beat-failover-{id}"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let schedule = dir.join("beat.toml");
    std::fs::write(
        &schedule,
        format!(
            "[entries.tick]\ntask = \"beat.tick\"\nevery = 0.5\noptions = {{ queue = \"{}\" }}\n",
            queue.name
        ),
    )
    .expect("schedule written");

    let app = App::builder()
        .broker_url(broker_url())
        .build()
        .await
        .expect("RabbitMQ is reachable (set CELERIAC_TEST_BROKER or run scripts/ensure-rabbitmq)");
    app.broker().declare(&queue).await.expect("queue declared");
    let mut consumer = app
        .broker()
        .consume(ConsumeOptions {
            queues: vec![queue.clone()],
            prefetch: 100,
        })
        .await
        .expect("consuming");
    let mut ticks = Ticks::default();
    let mut receive = async |ticks: &mut Ticks, count: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        for _ in 0..count {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let delivery = tokio::time::timeout(remaining, consumer.next())
                .await
                .expect("ticks keep coming")
                .expect("consumer open");
            ticks.add(&delivery.message);
            delivery.ack().await.expect("ack");
        }
    };

    let mut leader = start_beat(&schedule, &cluster);
    receive(&mut ticks, 4).await;
    let mut standby = start_beat(&schedule, &cluster);
    receive(&mut ticks, 4).await;
    leader.kill().expect("SIGKILL the active beat");
    let _ = leader.wait();
    let before_kill = ticks.due_times();
    receive(&mut ticks, 6).await;
    let standby_pid = standby.id();
    let _ = Command::new("kill")
        .args(["-TERM", &standby_pid.to_string()])
        .status();
    let _ = standby.wait();

    println!(
        "{} ticks: {before_kill} before the leader was killed, {} after",
        ticks.due_times(),
        ticks.due_times() - before_kill
    );
    // At most the tick in flight at the kill comes again, and as the same
    // task; no due time skipped: the ticks lie on the schedule's 0.5 s grid
    // with no hole, across the takeover (which takes about a second, inside
    // the 2 s in which a due time still counts as on time).
    ticks
        .ensure_each_once_without_a_hole(chrono::Duration::milliseconds(500))
        .unwrap();
    // The standby sent ticks of its own after the kill.
    let standby_origin = format!("gen{standby_pid}@");
    assert!(
        ticks
            .origins()
            .iter()
            .any(|origin| origin.starts_with(&standby_origin)),
        "no tick came from the standby (pid {standby_pid}): origins {:?}",
        ticks.origins()
    );

    consumer.stop();
    let _ = app.broker().delete_queue(&queue.name).await;
    let _ = app.broker().delete_exchange(&queue.name).await;
    let _ = app
        .broker()
        .delete_queue(&format!("celeriac.beat.{cluster}.state"))
        .await;
    app.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
