//! TLS on real listeners: a RabbitMQ node and a Redis of the test's own,
//! with a CA and certificates made for the test. The worker, a producer,
//! beat and the admin CLI connect with the server's certificate verified,
//! the worker also with a client certificate (logging in through RabbitMQ's
//! EXTERNAL mechanism); a wrong CA or a wrong host name is refused with an
//! error saying which. Results travel through `rediss://` the same way.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Result, ensure};
use celeriac::{App, Queue};
use celeriac_demo::tasks as demo;
use celeriac_tests::tls::{CLIENT_USER, TlsCerts, TlsRabbit, TlsRedis};
use celeriac_tests::unique;
use celeriac_tests::worker::{RunningWorker, binary};
use celeriac_worker::WorkerConfig;

/// How long a refused connection may take to say so.
const REFUSAL: Duration = Duration::from_secs(30);

/// The error building an app on `broker_url` (and `result_backend`) ends
/// with, or `"connected"`.
async fn refusal(broker_url: &str, result_backend: Option<&str>) -> String {
    let mut builder = App::builder().broker_url(broker_url);
    if let Some(backend) = result_backend {
        builder = builder.result_backend(backend);
    }
    let attempt = async {
        let app = builder.build().await?;
        if result_backend.is_some() {
            // The store connects on first use.
            app.async_result::<i64>("tls-probe").state().await?;
        }
        app.close().await;
        anyhow::Ok(())
    };
    match tokio::time::timeout(REFUSAL, attempt).await {
        Ok(Ok(())) => "connected".into(),
        Ok(Err(e)) => format!("{e:#}"),
        Err(_) => format!("no answer within {REFUSAL:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_component_connects_over_tls_and_bad_certificates_are_named() -> Result<()> {
    let certs = TlsCerts::make()?;
    // Starting a node takes seconds of blocking waits.
    let rabbit = tokio::task::block_in_place(|| TlsRabbit::start(&certs))?;
    let redis = TlsRedis::start(&certs)?;
    let ca = format!("ssl_ca_certs={}", certs.path("ca.pem"));
    let verified = rabbit.url("localhost", &ca);
    let mutual = rabbit.url(
        "localhost",
        &format!(
            "{ca}&ssl_certfile={}&ssl_keyfile={}&login_method=EXTERNAL",
            certs.path("client.pem"),
            certs.path("client.key")
        ),
    );
    let results = redis.url(
        "localhost",
        &format!(
            "ssl_cert_reqs=required&ssl_ca_certs={}",
            certs.path("ca.pem")
        ),
    );

    // A worker logged in by its client certificate, a producer verifying
    // the server's, results through rediss://.
    let queue = Queue::celery_default(unique("tls"));
    let worker_app = demo::register(App::builder())
        .broker_url(&mutual)
        .result_backend(&results)
        .queue(queue.clone())
        .build()
        .await?;
    let worker = RunningWorker::run(
        worker_app,
        WorkerConfig {
            queues: vec![queue.name.clone()],
            concurrency: 2,
            mingle: false,
            ..WorkerConfig::default()
        },
    );
    let producer = App::builder()
        .broker_url(&verified)
        .result_backend(&results)
        .build()
        .await?;
    let sum: i64 = producer
        .send_task("demo.add")
        .args(serde_json::json!([2, 3]))
        .queue(&queue.name)
        .apply()
        .await?
        .get_as(Duration::from_secs(30))
        .await?;
    ensure!(sum == 5, "demo.add(2, 3) returned {sum}");
    let connections = rabbit.ctl(&[
        "list_connections",
        "-q",
        "--no-table-headers",
        "user",
        "auth_mechanism",
        "ssl",
    ])?;
    ensure!(
        connections.contains(&format!("{CLIENT_USER}\tEXTERNAL\ttrue")),
        "the worker did not log in as {CLIENT_USER} through EXTERNAL over TLS: {connections}"
    );
    ensure!(
        connections.contains("guest\tPLAIN\ttrue"),
        "the producer did not connect over TLS: {connections}"
    );
    worker.stop().await?;

    // The admin CLI.
    let listed = tokio::process::Command::new(binary("celeriac")?)
        .args(["--broker", &verified, "queues", "-Q", &queue.name])
        .output()
        .await?;
    ensure!(
        listed.status.success() && String::from_utf8_lossy(&listed.stdout).contains(&queue.name),
        "celeriac queues over TLS failed: {}",
        String::from_utf8_lossy(&listed.stderr)
    );

    // Beat sends its first tick to a queue of its own.
    let beat_queue = unique("tls-beat");
    let schedule = std::env::temp_dir().join(format!("{beat_queue}.toml"));
    std::fs::write(
        &schedule,
        format!(
            "[entries.tick]\ntask = \"demo.add\"\nevery = 1\nargs = [1, 2]\n\
             options = {{ queue = \"{beat_queue}\" }}\n"
        ),
    )?;
    let mut beat = tokio::process::Command::new(binary("celeriac-beat")?)
        .args(["--broker", &verified, "--name", &beat_queue])
        .arg("--schedule")
        .arg(&schedule)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let waiting = producer.broker().queue_counts(&beat_queue).await?;
        if waiting.is_some_and(|(ready, _)| ready > 0) {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "beat sent nothing over TLS within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    beat.kill().await?;
    let _ = std::fs::remove_file(&schedule);
    producer.close().await;

    // Refusals, each naming its cause.
    let cases = [
        (
            rabbit.url(
                "localhost",
                &format!("ssl_ca_certs={}", certs.path("other-ca.pem")),
            ),
            None,
            "not signed by a CA this client trusts",
        ),
        (rabbit.url("127.0.0.1", &ca), None, "does not name the host"),
        (
            verified.clone(),
            Some(redis.url(
                "localhost",
                &format!(
                    "ssl_cert_reqs=required&ssl_ca_certs={}",
                    certs.path("other-ca.pem")
                ),
            )),
            "UnknownIssuer",
        ),
    ];
    for (broker_url, backend, says) in cases {
        let refused = refusal(&broker_url, backend.as_deref()).await;
        ensure!(
            refused.contains(says),
            "{broker_url} {backend:?}: expected an error saying {says:?}, got {refused:?}"
        );
    }
    Ok(())
}
