//! The dashboard's routes: pages are GETs, actions are POSTs that ask for a
//! confirmation first and then redirect to the list with a report.

use std::convert::Infallible;
use std::ops::Deref;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use celeriac::App;
use futures_lite::Stream;
use maud::Markup;
use serde::Deserialize;
use tokio::sync::watch;

use super::access::{self, Access};
use super::form::{ActionForm, Scope};
use super::live::{Snapshot, Watched};
use super::pages::{self, Frame, Nav};
use crate::dlq::{self, Filter, Shelf};

/// Dead letters on one page.
pub(super) const PAGE_SIZE: usize = 50;

/// What every handler shares.
#[derive(Clone)]
pub(super) struct Shared(Arc<Inner>);

impl Deref for Shared {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

pub(super) struct Inner {
    pub(super) app: App,
    pub(super) access: Access,
    /// This process's form token.
    pub(super) csrf: String,
    pub(super) read_only: bool,
    pub(super) flower: Option<String>,
    /// The broker URL with its password redacted.
    pub(super) broker_label: String,
    pub(super) watched: Watched,
    pub(super) live: watch::Receiver<Arc<Snapshot>>,
}

impl Shared {
    pub(super) fn new(inner: Inner) -> Shared {
        Shared(Arc::new(inner))
    }

    fn frame(&self) -> Frame<'_> {
        Frame {
            broker: &self.broker_label,
            read_only: self.read_only,
            flower: self.flower.as_deref(),
        }
    }

    fn page(&self, title: &str, nav: Nav, notice: Option<&str>, body: &Markup) -> Html<String> {
        Html(pages::layout(&self.frame(), title, nav, notice, body).into_string())
    }

    fn failure(&self, status: StatusCode, title: &str, what: &str, detail: &str) -> Response {
        let body = pages::error(what, detail);
        (status, self.page(title, Nav::DeadLetters, None, &body)).into_response()
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.live.borrow().clone()
    }
}

/// Every route, behind the access guard.
pub(super) fn router(shared: Shared) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/dead-letters") }))
        .route("/dead-letters", get(dead_letters))
        .route("/dead-letters/letter", get(letter))
        .route("/dead-letters/requeue", post(requeue))
        .route("/dead-letters/purge", post(purge))
        .route("/queues", get(queues))
        .route("/workers", get(workers))
        .route("/live/queues", get(live_queues))
        .route("/live/workers", get(live_workers))
        .route("/static/dashboard.css", get(stylesheet))
        .route("/static/dashboard.js", get(script))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            access::guard,
        ))
        .with_state(shared)
}

/// `?shelf=queue:<name>` or `?shelf=orphans`.
pub(super) fn parse_shelf(text: Option<&str>, watched: &Watched) -> Shelf {
    match text {
        Some("orphans") => Shelf::Orphans,
        Some(text) => match text.strip_prefix("queue:") {
            Some(queue) if !queue.is_empty() => Shelf::Queue(queue.to_owned()),
            _ => default_shelf(watched),
        },
        None => default_shelf(watched),
    }
}

fn default_shelf(watched: &Watched) -> Shelf {
    let names = watched.names();
    let first = names.first().map_or("celery", String::as_str);
    Shelf::Queue(first.to_owned())
}

#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    shelf: Option<String>,
    #[serde(default)]
    task: String,
    #[serde(default)]
    reason: String,
    page: Option<usize>,
    notice: Option<String>,
}

async fn dead_letters(State(shared): State<Shared>, Query(query): Query<ListQuery>) -> Response {
    let shelf = parse_shelf(query.shelf.as_deref(), &shared.watched);
    let filter = Filter::all()
        .and_task(Some(query.task.clone()))
        .and_reason(Some(query.reason.clone()));
    let number = query.page.unwrap_or(1).max(1);
    let offset = (number - 1).saturating_mul(PAGE_SIZE);
    let broker = shared.app.broker();
    let page = match dlq::page(broker, &shelf, &filter, offset, PAGE_SIZE).await {
        Ok(page) => page,
        Err(e) => {
            let what = format!("Could not read {}", pages::shelf_label(&shelf));
            return shared.failure(
                StatusCode::BAD_GATEWAY,
                "Dead letters",
                &what,
                &e.to_string(),
            );
        }
    };
    let shelves = shelves(&shared, &shelf);
    let body = pages::dead_letters(&pages::DeadLetters {
        shelves: &shelves,
        shelf: &shelf,
        task: &query.task,
        reason: &query.reason,
        page: &page,
        number,
        csrf: &shared.csrf,
        read_only: shared.read_only,
    });
    shared
        .page(
            "Dead letters",
            Nav::DeadLetters,
            query.notice.as_deref(),
            &body,
        )
        .into_response()
}

/// Every dead-letter shelf with its count from the last sample, the one
/// shown among them.
fn shelves(shared: &Shared, current: &Shelf) -> Vec<(Shelf, usize)> {
    let snapshot = shared.snapshot();
    let mut shelves: Vec<(Shelf, usize)> = shared
        .watched
        .names()
        .into_iter()
        .map(|name| {
            let dead = snapshot
                .queues
                .iter()
                .find(|row| row.name == name)
                .map_or(0, |row| row.dead);
            (Shelf::Queue(name), dead)
        })
        .collect();
    if let Shelf::Queue(name) = current
        && !shared.watched.contains(name)
    {
        shelves.push((current.clone(), 0));
    }
    shelves.push((Shelf::Orphans, snapshot.orphans));
    shelves
}

#[derive(Debug, Deserialize)]
struct LetterQuery {
    shelf: Option<String>,
    id: String,
}

async fn letter(State(shared): State<Shared>, Query(query): Query<LetterQuery>) -> Response {
    let shelf = parse_shelf(query.shelf.as_deref(), &shared.watched);
    let found = match dlq::show(shared.app.broker(), &shelf, &query.id).await {
        Ok(found) => found,
        Err(e) => {
            let what = format!("Could not read {}", pages::shelf_label(&shelf));
            return shared.failure(
                StatusCode::BAD_GATEWAY,
                "Dead letter",
                &what,
                &e.to_string(),
            );
        }
    };
    let Some((view, raw)) = found else {
        let what = format!(
            "No dead letter {} in {}",
            query.id,
            pages::shelf_label(&shelf)
        );
        let detail = "it may have been requeued or purged meanwhile";
        return shared.failure(StatusCode::NOT_FOUND, "Dead letter", &what, detail);
    };
    let mut headers: Vec<(String, String)> = raw
        .headers
        .iter()
        .map(|(name, value)| (name.clone(), value.to_json().to_string()))
        .collect();
    headers.sort();
    let body = match serde_json::from_slice::<serde_json::Value>(&raw.body) {
        Ok(json) => serde_json::to_string_pretty(&json).unwrap_or_default(),
        Err(_) => format!(
            "({} bytes of {})",
            raw.body.len(),
            raw.properties
                .content_type
                .as_deref()
                .unwrap_or("unknown content")
        ),
    };
    let content = pages::letter(
        &shelf,
        &view,
        &headers,
        &body,
        &shared.csrf,
        shared.read_only,
    );
    shared
        .page(
            &format!("Dead letter {}", view.id),
            Nav::DeadLetters,
            None,
            &content,
        )
        .into_response()
}

async fn requeue(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    act(&shared, &headers, &body, Action::Requeue).await
}

async fn purge(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    act(&shared, &headers, &body, Action::Purge).await
}

/// What an action does to the dead letters it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Requeue,
    Purge,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Requeue => "requeue",
            Action::Purge => "purge",
        }
    }
}

async fn act(shared: &Shared, headers: &HeaderMap, body: &[u8], action: Action) -> Response {
    let form = ActionForm::parse(body);
    if shared.read_only {
        let detail = "it was started with --read-only";
        return shared.failure(
            StatusCode::FORBIDDEN,
            "Read-only",
            "This dashboard only reads",
            detail,
        );
    }
    if !access::is_same_site_form(headers, &shared.csrf, form.csrf.as_deref()) {
        let detail = "reload the page and try again (the dashboard restarted, or the form came \
                      from another site)";
        return shared.failure(
            StatusCode::FORBIDDEN,
            "Refused",
            "This form is not one of this dashboard's",
            detail,
        );
    }
    let shelf = parse_shelf(form.shelf.as_deref(), &shared.watched);
    let back = pages::list_href(&shelf, &form.task, &form.reason, 1);
    let Some(scope) = form.scope() else {
        let notice = "Select at least one dead letter first.";
        return Redirect::to(&with_notice(&back, notice)).into_response();
    };
    if !form.confirmed {
        let question = question(action, &shelf, &scope);
        let fields = form.fields_to_confirm(&scope);
        let body = pages::confirm(&pages::Confirm {
            action: action.name(),
            question: &question,
            fields: &fields,
            back: &back,
        });
        return shared
            .page("Confirm", Nav::DeadLetters, None, &body)
            .into_response();
    }
    let filter = scope.filter();
    let broker = shared.app.broker();
    let done = match action {
        Action::Requeue => dlq::requeue(broker, &shelf, &filter).await.map(|report| {
            let mut text = format!(
                "Requeued {} dead letter(s) to their queue.",
                report.requeued
            );
            if report.no_queue > 0 {
                text += &format!(
                    " {} left in place: their queue does not exist (start its worker, then \
                     requeue again).",
                    report.no_queue
                );
            }
            if report.beyond > 0 {
                text += &format!(
                    " {} past the first {} were not read.",
                    report.beyond,
                    dlq::SCAN_DEPTH
                );
            }
            (report.requeued + report.no_queue, report.beyond, text)
        }),
        Action::Purge => dlq::purge_selected(broker, &shelf, &filter)
            .await
            .map(|report| {
                let mut text = format!("Purged {} dead letter(s).", report.purged);
                if report.beyond > 0 {
                    text += &format!(
                        " {} past the first {} were not read.",
                        report.beyond,
                        dlq::SCAN_DEPTH
                    );
                }
                (report.purged, report.beyond, text)
            }),
    };
    match done {
        Ok((found, unread, mut text)) => {
            // Selected letters that were read but not found were taken by
            // someone else meanwhile; unread ones are reported above.
            if let Scope::Ids(ids) = &scope
                && unread == 0
                && found < ids.len()
            {
                text += &format!(
                    " {} of those selected were no longer there (taken meanwhile?).",
                    ids.len() - found
                );
            }
            eprintln!(
                "dashboard: {} on {} ({}): {text}",
                action.name(),
                pages::shelf_label(&shelf),
                scope.describe()
            );
            Redirect::to(&with_notice(&back, &text)).into_response()
        }
        Err(e) => {
            let what = format!(
                "Could not {} from {}",
                action.name(),
                pages::shelf_label(&shelf)
            );
            let detail = format!(
                "{e}. Nothing was lost: a dead letter leaves its queue only once its copy is \
                 confirmed (requeue) or it is acked (purge)."
            );
            shared.failure(StatusCode::BAD_GATEWAY, "Action failed", &what, &detail)
        }
    }
}

/// What a confirmation asks.
fn question(action: Action, shelf: &Shelf, scope: &Scope) -> String {
    let verb = match action {
        Action::Requeue => "Send back to their queue",
        Action::Purge => "Delete for good",
    };
    let from = pages::shelf_label(shelf);
    match scope {
        Scope::Ids(ids) if ids.len() == 1 => {
            let id = ids.iter().next().map_or("", String::as_str);
            format!("{verb} the dead letter {id} of {from}?")
        }
        Scope::Ids(ids) => format!("{verb} the {} selected dead letters of {from}?", ids.len()),
        Scope::Matching { task, reason } => {
            let mut what = format!("{verb} every dead letter of {from}");
            if let Some(task) = task {
                what += &format!(" of task {task}");
            }
            if let Some(reason) = reason {
                what += &format!(" dead-lettered for {reason}");
            }
            what + "?"
        }
    }
}

fn with_notice(href: &str, notice: &str) -> String {
    let encoded: String = form_urlencoded::byte_serialize(notice.as_bytes()).collect();
    format!("{href}&notice={encoded}")
}

async fn queues(State(shared): State<Shared>) -> Html<String> {
    let body = pages::queues(&shared.snapshot());
    shared.page("Queues", Nav::Queues, None, &body)
}

async fn workers(State(shared): State<Shared>) -> Html<String> {
    let body = pages::workers(&shared.snapshot(), shared.flower.as_deref());
    shared.page("Workers", Nav::Workers, None, &body)
}

async fn live_queues(
    State(shared): State<Shared>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    stream(shared, |snapshot, _| pages::queues_fragment(snapshot))
}

async fn live_workers(
    State(shared): State<Shared>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    stream(shared, |snapshot, flower| {
        pages::workers_fragment(snapshot, flower)
    })
}

/// Sends `render` of each new snapshot as an `update` event, until the
/// dashboard stops.
fn stream(
    shared: Shared,
    render: fn(&Snapshot, Option<&str>) -> Markup,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let flower = shared.flower.clone();
    let updates = futures_lite::stream::unfold(shared.live.clone(), move |mut live| {
        let flower = flower.clone();
        async move {
            live.changed().await.ok()?;
            let snapshot = live.borrow_and_update().clone();
            let html = render(&snapshot, flower.as_deref()).into_string();
            Some((Ok(Event::default().event("update").data(html)), live))
        }
    });
    Sse::new(updates).keep_alive(KeepAlive::default())
}

async fn stylesheet() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/dashboard.css"),
    )
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/dashboard.js"),
    )
}
