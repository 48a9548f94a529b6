//! `#[task]` generates a working `Task`: names, options, argument binding
//! (positional, keyword, optional, defaults), typed calls, results and errors.

use std::time::Duration;

use celeriac::{Arguments, Request, Task, TaskError, TaskErrorKind, TaskResult, task};
use serde_json::{Value, json};

#[task(
    name = "images.resize",
    max_retries = 5,
    retry_backoff = true,
    time_limit = 30,
    soft_time_limit = 1.5
)]
async fn resize(url: String, width: u32) -> TaskResult<String> {
    Ok(format!("{url}@{width}"))
}

/// Adds numbers on the blocking pool.
#[task(
    name = "proj.tasks.add",
    queue = "math",
    priority = 3,
    ignore_result = false,
    acks_late = true,
    rate_limit = "10/m"
)]
fn add(x: i64, y: i64) -> i64 {
    x + y
}

#[task]
async fn unnamed() {}

#[task(name = "opt")]
async fn optional(a: String, b: Option<u32>, #[default(7)] c: u32) -> (String, Option<u32>, u32) {
    (a, b, c)
}

#[task(name = "bound", bind = true)]
async fn bound(request: Request, n: u32) -> TaskResult<String> {
    if request.retries < n {
        return Err(request.retry().countdown(Duration::from_secs(1)).into());
    }
    Ok(format!("{} after {} retries", request.id, request.retries))
}

#[task(name = "bound.ref", bind = true)]
fn bound_ref(request: &Request) -> String {
    request.task.clone()
}

#[task(name = "io", autoretry_for = [std::io::Error])]
async fn flaky() -> Result<(), std::io::Error> {
    Err(std::io::Error::other("connection reset"))
}

#[task(name = "panics")]
fn panics() -> u32 {
    panic!("boom")
}

#[task(name = "panics.async")]
async fn panics_async() -> u32 {
    panic!("async boom")
}

async fn run(task: &dyn Task, args: Value, kwargs: Value) -> Result<Value, TaskError> {
    let args = Arguments::new(
        task.name(),
        args.as_array().cloned().unwrap_or_default(),
        kwargs.as_object().cloned().unwrap_or_default(),
    );
    task.call(Request::detached(task.name(), "id-1"), args)
        .await
}

#[tokio::test]
async fn names_and_options_come_from_the_attribute() {
    assert_eq!(resize.name(), "images.resize");
    let options = resize.options();
    assert_eq!(options.max_retries, Some(5));
    assert_eq!(options.retry_backoff, Some(1));
    assert_eq!(options.time_limit, Some(Duration::from_secs(30)));
    assert_eq!(options.soft_time_limit, Some(Duration::from_millis(1500)));
    assert_eq!(resize.parameters(), ["url", "width"]);
    let add_options = add.options();
    assert_eq!(
        (
            add_options.queue.as_deref(),
            add_options.priority,
            add_options.rate_limit.as_deref()
        ),
        (Some("math"), Some(3), Some("10/m"))
    );
    // Without a name, the Rust path with dots, like Celery's module.function.
    assert_eq!(unnamed.name(), "task_macro.unnamed");
}

#[tokio::test]
async fn arguments_bind_by_position_or_keyword() {
    assert_eq!(
        run(&resize, json!(["a.png", 800]), json!({}))
            .await
            .unwrap(),
        json!("a.png@800")
    );
    assert_eq!(
        run(&resize, json!(["a.png"]), json!({"width": 10}))
            .await
            .unwrap(),
        json!("a.png@10")
    );
    assert_eq!(
        run(&resize, json!([]), json!({"url": "u", "width": 1}))
            .await
            .unwrap(),
        json!("u@1")
    );
    assert_eq!(run(&add, json!([2, 3]), json!({})).await.unwrap(), json!(5));
    assert_eq!(
        run(&optional, json!(["x"]), json!({})).await.unwrap(),
        json!(["x", null, 7])
    );
    assert_eq!(
        run(&optional, json!(["x", 1, 2]), json!({})).await.unwrap(),
        json!(["x", 1, 2])
    );
}

#[tokio::test]
async fn bad_arguments_are_type_errors_naming_the_parameter() {
    let cases = [
        (
            json!(["a.png"]),
            json!({}),
            "resize() missing required argument: 'width' (expected u32)",
        ),
        (
            json!(["a.png", "wide"]),
            json!({}),
            "argument 'width' must be u32",
        ),
        (
            json!(["a.png", 1, 2]),
            json!({}),
            "takes 2 positional arguments but 3 were given",
        ),
        (
            json!(["a.png", 1]),
            json!({"height": 2}),
            "unexpected keyword argument 'height'",
        ),
        (json!([-1, 1]), json!({}), "argument 'url' must be String"),
    ];
    for (args, kwargs, expected) in cases {
        let err = run(&resize, args.clone(), kwargs).await.unwrap_err();
        let info = err.exception_info();
        assert_eq!(
            (info.exc_module.as_deref(), info.exc_type.as_str()),
            (Some("builtins"), "TypeError")
        );
        assert!(
            info.message().contains(expected),
            "{args}: {}",
            info.message()
        );
    }
}

#[tokio::test]
async fn typed_calls_carry_serialized_arguments() {
    let call = resize::new("a.png".into(), 800).countdown(Duration::from_secs(10));
    assert_eq!(call.name(), "images.resize");
    let sig = call.signature();
    assert_eq!(sig.args, vec![json!("a.png"), json!(800)]);
}

#[tokio::test]
async fn bound_tasks_see_their_request_and_can_retry() {
    let err = run(&bound, json!([1]), json!({})).await.unwrap_err();
    let TaskErrorKind::Retry(retry) = err.kind() else {
        panic!("not a retry: {err:?}")
    };
    assert_eq!(retry.countdown, Some(Duration::from_secs(1)));
    assert_eq!(
        run(&bound, json!([0]), json!({})).await.unwrap(),
        json!("id-1 after 0 retries")
    );
    assert_eq!(
        run(&bound_ref, json!([]), json!({})).await.unwrap(),
        json!("bound.ref")
    );
}

#[tokio::test]
async fn errors_keep_their_type_and_autoretry_matches_them() {
    let err = run(&flaky, json!([]), json!({})).await.unwrap_err();
    // An io::Error reaches Python as the OSError a Python caller expects,
    // and stays an io::Error for retry policies.
    assert_eq!(err.exception_info().exc_type, "OSError");
    assert!(err.is::<std::io::Error>());
    assert!(flaky.options().should_autoretry(&err));
    assert!(!resize.options().should_autoretry(&err));
}

#[tokio::test]
async fn a_panicking_task_is_a_failure() {
    let err = run(&panics, json!([]), json!({})).await.unwrap_err();
    let info = err.exception_info();
    assert_eq!(info.exc_type, "TaskPanicked");
    assert_eq!(info.message(), "the task panicked: boom");
    let err = run(&panics_async, json!([]), json!({})).await.unwrap_err();
    assert_eq!(
        err.exception_info().message(),
        "the task panicked: async boom"
    );
}

#[tokio::test]
async fn the_body_stays_callable_directly() {
    assert_eq!(resize::run("u".into(), 3).await.unwrap(), "u@3");
    assert_eq!(add::run(1, 2), 3);
}

#[test]
fn misuse_is_a_compile_error_with_a_fix() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
