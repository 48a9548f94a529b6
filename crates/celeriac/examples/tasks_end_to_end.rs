//! Tasks end to end through RabbitMQ, with results: define tasks with
//! `#[task]`, send them typed and by name, run them from the queue with the
//! registry (a minimal stand-in for `celeriac-worker`), and read the results
//! through `rpc://`, including a failure and a bad argument.
//!
//! Uses Celery's default broker URL, or `CELERIAC_BROKER_URL` /
//! `CELERY_BROKER_URL`.
//!
//! Run: `cargo run -p celeriac --example tasks_end_to_end`

use std::error::Error;
use std::time::Duration;

use celeriac::{
    App, Arguments, DeliveryInfo, Request, ResultError, ResultMeta, State, TaskResult, task,
};
use celeriac_broker::ConsumeOptions;
use celeriac_protocol::DecodeOptions;

/// Adds two numbers.
#[task(name = "demo.add")]
async fn add(x: i64, y: i64) -> i64 {
    x + y
}

/// Resizes an image (pretends to), failing on a bad width.
#[task(name = "demo.resize", max_retries = 3, retry_backoff = true)]
async fn resize(url: String, width: u32) -> TaskResult<String> {
    if width == 0 {
        return Err(celeriac::TaskError::python(
            "builtins",
            "ValueError",
            "width must be positive",
        ));
    }
    Ok(format!("{url}?w={width}"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let queue = format!("celeriac-demo.tasks.{}", std::process::id());
    let app = App::builder()
        .result_backend("rpc://")
        .default_queue(queue.clone())
        .task(add)
        .task(resize)
        .build()
        .await?;
    println!(
        "registered tasks: {:?}",
        app.registry().names().collect::<Vec<_>>()
    );

    // Send: typed calls return typed results; by name works for any task.
    let sum = add::new(2, 3).apply_async(&app).await?;
    let thumb = resize::new("https://example.com/a.png".into(), 800)
        .apply_async(&app)
        .await?;
    let bad = resize::new("https://example.com/b.png".into(), 0)
        .apply_async(&app)
        .await?;
    let by_name = app.send_task("demo.add").args(("2", 3)).apply().await?;

    // Run: what the worker does, in miniature.
    let mut consumer = app
        .broker()
        .consume(ConsumeOptions {
            queues: vec![app.router().default_queue().clone()],
            prefetch: 8,
        })
        .await?;
    for _ in 0..4 {
        let delivery = consumer.next().await.ok_or("consumer ended")?;
        let message = delivery.task(&DecodeOptions::default())?;
        let task = app
            .registry()
            .get(&message.headers.task)
            .ok_or("unknown task")?
            .clone();
        let request = Request::from_message(&message, DeliveryInfo::default(), "demo@localhost");
        let args = Arguments::new(
            &message.headers.task,
            message.body.args.to_vec(),
            message.body.kwargs.values().clone(),
        );
        let meta = match task.call(request.clone(), args).await {
            Ok(value) => ResultMeta::new(&request.id, State::Success, value),
            Err(error) => ResultMeta::new(
                &request.id,
                State::Failure,
                error.exception_info().to_json(),
            ),
        };
        if let Some(backend) = app.result_backend() {
            backend.store(&meta, &request).await?;
        }
        delivery.ack().await?;
    }

    let wait = Duration::from_secs(10);
    println!("demo.add(2, 3)          = {}", sum.get(wait).await?);
    println!("demo.resize(a.png, 800) = {}", thumb.get(wait).await?);
    match bad.get(wait).await {
        Err(ResultError::Failed(failure)) => println!("demo.resize(b.png, 0)   failed: {failure}"),
        other => println!("demo.resize(b.png, 0)   unexpected: {other:?}"),
    }
    match by_name.get(wait).await {
        Err(ResultError::Failed(failure)) => {
            println!("demo.add(\"2\", 3)        failed: {failure}");
        }
        other => println!("demo.add(\"2\", 3)        unexpected: {other:?}"),
    }

    consumer.stop();
    app.broker().delete_queue(&queue).await?;
    app.broker().delete_exchange(&queue).await?;
    app.close().await;
    Ok(())
}
