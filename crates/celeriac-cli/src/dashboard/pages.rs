//! The dashboard's HTML, rendered on the server (maud escapes every value).
//! Pages work without JavaScript; the little there is only swaps in the
//! live fragments the event streams send.

use std::time::{SystemTime, UNIX_EPOCH};

use celeriac::protocol::time::parse_time;
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::live::{QueueRow, Snapshot};
use crate::dlq::{DeadLetterView, Page, SCAN_DEPTH, Shelf};

/// Which view the navigation marks as current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Nav {
    DeadLetters,
    Queues,
    Workers,
}

/// What every page shows around its content.
#[derive(Debug, Clone)]
pub(super) struct Frame<'a> {
    /// The broker URL, password redacted.
    pub(super) broker: &'a str,
    /// Whether actions are disabled.
    pub(super) read_only: bool,
    /// Flower's address, for task history.
    pub(super) flower: Option<&'a str>,
}

/// A whole page: header, navigation, an optional notice, `body`.
pub(super) fn layout(
    frame: &Frame<'_>,
    title: &str,
    nav: Nav,
    notice: Option<&str>,
    body: &Markup,
) -> Markup {
    let link = |target: Nav, href: &str, label: &str| {
        html! {
            a href=(href) aria-current=[(nav == target).then_some("page")] { (label) }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Celeriac" }
                link rel="stylesheet" href="/static/dashboard.css";
                script src="/static/dashboard.js" defer {}
            }
            body {
                header {
                    strong.brand { "Celeriac" }
                    nav {
                        (link(Nav::DeadLetters, "/dead-letters", "Dead letters"))
                        (link(Nav::Queues, "/queues", "Queues"))
                        (link(Nav::Workers, "/workers", "Workers"))
                        @if let Some(flower) = frame.flower {
                            a href=(flower) rel="noopener" { "Flower ↗" }
                        }
                    }
                    span.broker title="broker" { (frame.broker) }
                    @if frame.read_only { span.badge { "read-only" } }
                }
                main {
                    h1 { (title) }
                    @if let Some(notice) = notice {
                        p.notice role="status" { (notice) }
                    }
                    (body)
                }
            }
        }
    }
}

/// The dead-letter view: shelves, filter, one page of dead letters, and the
/// actions on them.
#[derive(Debug)]
pub(super) struct DeadLetters<'a> {
    /// Every shelf with its count.
    pub(super) shelves: &'a [(Shelf, usize)],
    /// The shelf shown.
    pub(super) shelf: &'a Shelf,
    /// The task name filter, if any.
    pub(super) task: &'a str,
    /// The reason filter, if any.
    pub(super) reason: &'a str,
    /// The page read.
    pub(super) page: &'a Page,
    /// The page's number (from 1).
    pub(super) number: usize,
    /// The form token.
    pub(super) csrf: &'a str,
    /// Whether actions are disabled.
    pub(super) read_only: bool,
}

/// `?shelf=...` for `shelf`.
pub(super) fn shelf_param(shelf: &Shelf) -> String {
    match shelf {
        Shelf::Queue(queue) => format!("queue:{queue}"),
        Shelf::Orphans => "orphans".to_owned(),
    }
}

/// A shelf's name as people read it.
pub(super) fn shelf_label(shelf: &Shelf) -> String {
    match shelf {
        Shelf::Queue(queue) => format!("{queue}.dead"),
        Shelf::Orphans => "orphaned delayed messages".to_owned(),
    }
}

/// A link to the dead-letter list, keeping the filter.
pub(super) fn list_href(shelf: &Shelf, task: &str, reason: &str, page: usize) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("shelf", &shelf_param(shelf));
    if !task.is_empty() {
        query.append_pair("task", task);
    }
    if !reason.is_empty() {
        query.append_pair("reason", reason);
    }
    if page > 1 {
        query.append_pair("page", &page.to_string());
    }
    format!("/dead-letters?{}", query.finish())
}

fn letter_href(shelf: &Shelf, id: &str) -> String {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("shelf", &shelf_param(shelf))
        .append_pair("id", id)
        .finish();
    format!("/dead-letters/letter?{query}")
}

pub(super) fn dead_letters(view: &DeadLetters<'_>) -> Markup {
    let page = view.page;
    let filtered = !view.task.is_empty() || !view.reason.is_empty();
    let first = page.offset + 1;
    let last = page.offset + page.letters.len();
    html! {
        div.columns {
            aside.shelves {
                h2 { "Dead-letter queues" }
                ul {
                    @for (shelf, count) in view.shelves {
                        li {
                            a href=(list_href(shelf, "", "", 1))
                                aria-current=[(shelf == view.shelf).then_some("page")] {
                                (shelf_label(shelf))
                            }
                            " "
                            span.count data-count=(count) { (thousands(*count)) }
                        }
                    }
                }
            }
            section.letters {
                form.filter method="get" action="/dead-letters" {
                    input type="hidden" name="shelf" value=(shelf_param(view.shelf));
                    label { "Task " input name="task" value=(view.task) placeholder="proj.tasks.name"; }
                    label { "Reason " input name="reason" value=(view.reason) placeholder="failed"; }
                    button type="submit" { "Filter" }
                    @if filtered {
                        a href=(list_href(view.shelf, "", "", 1)) { "Clear" }
                    }
                }
                p.summary id="summary" {
                    @match page.matched {
                        Some(matched) => {
                            (thousands(matched)) " of " (thousands(page.total.min(SCAN_DEPTH)))
                            " dead letters read match"
                            @if page.beyond > 0 {
                                " (" (thousands(page.beyond)) " more past the first "
                                (thousands(SCAN_DEPTH)) " were not read)"
                            }
                        }
                        None => { (thousands(page.total)) " dead letters in " (shelf_label(view.shelf)) }
                    }
                    @if !page.letters.is_empty() {
                        "; showing " (thousands(first)) "–" (thousands(last))
                    }
                }
                @if page.letters.is_empty() {
                    p.empty { "Nothing here." }
                } @else {
                    form id="letters" method="post" action="/dead-letters/requeue" {
                        input type="hidden" name="csrf" value=(view.csrf);
                        input type="hidden" name="shelf" value=(shelf_param(view.shelf));
                        input type="hidden" name="task" value=(view.task);
                        input type="hidden" name="reason" value=(view.reason);
                        (letters_table(view))
                        @if !view.read_only {
                            div.bulk {
                                button type="submit" name="scope" value="selected" { "Requeue selected" }
                                button.danger type="submit" name="scope" value="selected"
                                    formaction="/dead-letters/purge" { "Purge selected" }
                                button type="submit" name="scope" value="matching" {
                                    @if filtered { "Requeue all matching" } @else { "Requeue all" }
                                }
                                button.danger type="submit" name="scope" value="matching"
                                    formaction="/dead-letters/purge" {
                                    @if filtered { "Purge all matching" } @else { "Purge all" }
                                }
                            }
                        }
                    }
                }
                nav.pager {
                    @if view.number > 1 {
                        a rel="prev" href=(list_href(view.shelf, view.task, view.reason, view.number - 1)) { "← Newer" }
                    }
                    @if page.has_more {
                        a rel="next" href=(list_href(view.shelf, view.task, view.reason, view.number + 1)) { "Older →" }
                    } @else if !filtered && last >= SCAN_DEPTH {
                        span.note { "Pages reach the first " (thousands(SCAN_DEPTH))
                            " dead letters; filter, requeue or purge to see further." }
                    }
                }
            }
        }
    }
}

fn letters_table(view: &DeadLetters<'_>) -> Markup {
    html! {
        table.letters {
            thead {
                tr {
                    th { span.visually-hidden { "Select" } }
                    th { "Task" }
                    th { "Arguments" }
                    th { "Reason" }
                    th { "Exception" }
                    th { "Queue" }
                    th { "Retries" }
                    th { "Failed (UTC)" }
                    @if !view.read_only { th { "Actions" } }
                }
            }
            tbody {
                @for letter in &view.page.letters {
                    tr.letter id={ "letter-" (letter.id) } data-id=(letter.id) {
                        td { input type="checkbox" name="ids" value=(letter.id) aria-label={ "select " (letter.id) }; }
                        td {
                            a href=(letter_href(view.shelf, &letter.id)) { (letter.task) }
                            br; code.id { (letter.id) }
                        }
                        td.args { code { (truncate(&letter.args, 120)) } }
                        td { span.reason { (letter.reason) } }
                        td.exception { (exception(letter)) }
                        td.queue { (letter.origin_queue) }
                        td.num { (letter.retries) }
                        td.time {
                            (when(&letter.time))
                            @if letter.first_time != letter.time {
                                br; span.note { "first " (when(&letter.first_time)) }
                            }
                            @if !letter.hostname.is_empty() {
                                br; span.note { "on " (letter.hostname) }
                            }
                        }
                        @if !view.read_only {
                            td.actions {
                                button type="submit" name="one" value=(letter.id) { "Requeue" }
                                button.danger type="submit" name="one" value=(letter.id)
                                    formaction="/dead-letters/purge" { "Purge" }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn exception(letter: &DeadLetterView) -> Markup {
    html! {
        @if !letter.exception_type.is_empty() {
            strong { (letter.exception_type) } ": "
        }
        (truncate(&letter.error, 200))
        @if !letter.traceback.is_empty() {
            details {
                summary { "Traceback" }
                pre { (letter.traceback) }
            }
        }
    }
}

/// One dead letter in full: what the list shows, every header, the body.
pub(super) fn letter(
    shelf: &Shelf,
    view: &DeadLetterView,
    headers: &[(String, String)],
    body: &str,
    csrf: &str,
    read_only: bool,
) -> Markup {
    html! {
        p { a href=(list_href(shelf, "", "", 1)) { "← " (shelf_label(shelf)) } }
        dl.letter {
            dt { "Task" } dd { (view.task) }
            dt { "Id" } dd { code { (view.id) } }
            dt { "Reason" } dd { span.reason { (view.reason) } }
            dt { "Exception" } dd { (exception(view)) }
            dt { "Arguments" } dd { code { (view.args) } }
            dt { "Queue" } dd { (view.origin_queue) }
            dt { "Retries" } dd { (view.retries) }
            dt { "First failed (UTC)" } dd { (when(&view.first_time)) }
            dt { "Last failed (UTC)" } dd { (when(&view.time)) }
            dt { "Worker" } dd { (view.hostname) }
        }
        @if !read_only {
            form method="post" action="/dead-letters/requeue" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="shelf" value=(shelf_param(shelf));
                button type="submit" name="one" value=(view.id) { "Requeue" }
                button.danger type="submit" name="one" value=(view.id)
                    formaction="/dead-letters/purge" { "Purge" }
            }
        }
        h2 { "Headers" }
        table.headers {
            @for (name, value) in headers {
                tr { th { (name) } td { code { (value) } } }
            }
        }
        h2 { "Body" }
        pre.body { (body) }
    }
}

/// What a confirmation asks before an action runs.
#[derive(Debug)]
pub(super) struct Confirm<'a> {
    /// `requeue` or `purge`.
    pub(super) action: &'a str,
    /// What will happen, in words.
    pub(super) question: &'a str,
    /// The form fields to post again, with `confirmed=yes`.
    pub(super) fields: &'a [(String, String)],
    /// Where "Cancel" goes.
    pub(super) back: &'a str,
}

pub(super) fn confirm(view: &Confirm<'_>) -> Markup {
    html! {
        form.confirm method="post" action={ "/dead-letters/" (view.action) } {
            p.question { (view.question) }
            @for (name, value) in view.fields {
                input type="hidden" name=(name) value=(value);
            }
            input type="hidden" name="confirmed" value="yes";
            button.danger[view.action == "purge"] type="submit" id="confirm" {
                "Yes, " (view.action)
            }
            " "
            a href=(view.back) { "Cancel" }
        }
    }
}

/// The queues view around its live fragment.
pub(super) fn queues(snapshot: &Snapshot) -> Markup {
    html! {
        div id="live" data-stream="/live/queues" { (queues_fragment(snapshot)) }
    }
}

/// The queues table, as the event stream sends it.
pub(super) fn queues_fragment(snapshot: &Snapshot) -> Markup {
    html! {
        @if let Some(error) = &snapshot.error {
            p.error role="alert" { "Could not read the queues: " (error) }
        }
        @if snapshot.taken.is_none() {
            p.empty { "Reading the queues…" }
        } @else {
            table.queues {
                thead {
                    tr {
                        th { "Queue" } th { "Ready" } th { "Consumers" }
                        th title="net change of ready messages per second" { "Change/s" }
                        th { "Dead letters" } th { "Ready, last 10 min" }
                    }
                }
                tbody {
                    @for row in &snapshot.queues { (queue_row(row)) }
                }
            }
            @if snapshot.orphans > 0 {
                p.warning {
                    a href=(list_href(&Shelf::Orphans, "", "", 1)) {
                        (thousands(snapshot.orphans)) " delayed message(s)"
                    }
                    " lost their queue while they waited."
                }
            }
            p.updated { "Updated " (clock(snapshot.taken)) }
        }
    }
}

fn queue_row(row: &QueueRow) -> Markup {
    let shelf = Shelf::Queue(row.name.clone());
    html! {
        tr data-queue=(row.name) {
            td { (row.name) }
            @match row.ready {
                Some(ready) => td.num.ready { (thousands(ready)) },
                None => td.num { "absent" },
            }
            td.num { (row.consumers) }
            td.num { @if let Some(change) = row.change_per_second { (format!("{change:+.1}")) } }
            td.num {
                @if row.dead > 0 {
                    a href=(list_href(&shelf, "", "", 1)) { (thousands(row.dead)) }
                } @else { "0" }
            }
            td { (chart(&row.history)) }
        }
    }
}

/// A small line chart of `points` (oldest first), scaled to their maximum.
fn chart(points: &[usize]) -> Markup {
    const WIDTH: f64 = 240.0;
    const HEIGHT: f64 = 36.0;
    let peak = points.iter().copied().max().unwrap_or(0).max(1) as f64;
    let step = WIDTH / (points.len().max(2) - 1) as f64;
    let line: Vec<String> = points
        .iter()
        .enumerate()
        .map(|(i, &y)| {
            let x = i as f64 * step;
            let y = HEIGHT - 2.0 - (y as f64 / peak) * (HEIGHT - 4.0);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    html! {
        svg.chart width=(WIDTH) height=(HEIGHT) viewBox={ "0 0 " (WIDTH) " " (HEIGHT) }
            role="img" aria-label={ "peak " (peak) } {
            polyline points=(line.join(" ")) {}
        }
    }
}

/// The workers view around its live fragment.
pub(super) fn workers(snapshot: &Snapshot, flower: Option<&str>) -> Markup {
    html! {
        div id="live" data-stream="/live/workers" { (workers_fragment(snapshot, flower)) }
    }
}

/// The workers table, as the event stream sends it.
pub(super) fn workers_fragment(snapshot: &Snapshot, flower: Option<&str>) -> Markup {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    html! {
        @if !snapshot.workers_asked {
            p.empty { "Asking the workers…" }
        } @else if snapshot.workers.is_empty() {
            p.empty {
                "No worker answered. Python and Rust workers answer remote control by default: \
                 is any running against this broker?"
            }
        } @else {
            table.workers {
                thead { tr { th { "Worker" } th { "Queues" } th { "Active tasks" } } }
                tbody {
                    @for worker in &snapshot.workers {
                        tr data-worker=(worker.node) {
                            td { (worker.node) }
                            td { (worker.queues.join(", ")) }
                            td {
                                @if worker.active.is_empty() { span.note { "idle" } }
                                ul.active {
                                    @for task in &worker.active {
                                        li {
                                            (task.name) " "
                                            @match flower {
                                                Some(flower) => a href={ (flower.trim_end_matches('/')) "/task/" (task.id) } rel="noopener" { code { (task.id) } },
                                                None => code { (task.id) },
                                            }
                                            @if let Some(started) = task.started {
                                                " for " (format!("{:.0}", (now - started).max(0.0))) " s"
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        p.updated { "Updated " (clock(snapshot.taken)) }
    }
}

/// A page for an error, saying what failed.
pub(super) fn error(what: &str, detail: &str) -> Markup {
    html! {
        p.error role="alert" { (what) ": " (detail) }
    }
}

/// `1234567` as `1,234,567`.
pub(super) fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// At most `limit` characters of `text`, with an ellipsis if cut.
fn truncate(text: &str, limit: usize) -> String {
    match text.char_indices().nth(limit) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// A header time as people read it, in UTC.
fn when(text: &str) -> String {
    parse_time(text).map_or_else(
        || text.to_owned(),
        |time| time.naive_utc().format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

/// The time of day of `time` (UTC).
fn clock(time: Option<SystemTime>) -> PreEscaped<String> {
    let seconds = time
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let day = seconds % 86_400;
    PreEscaped(format!(
        "{:02}:{:02}:{:02} UTC",
        day / 3600,
        day / 60 % 60,
        day % 60
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dead-letter view of `page` in queue `q`, as HTML.
    fn render(page: &Page, read_only: bool) -> String {
        let shelf = Shelf::Queue("q".into());
        dead_letters(&DeadLetters {
            shelves: &[(shelf.clone(), page.total)],
            shelf: &shelf,
            task: "",
            reason: "",
            page,
            number: 1,
            csrf: "t",
            read_only,
        })
        .into_string()
    }

    #[test]
    fn counts_read_with_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(100_000), "100,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        assert_eq!(truncate("héllo", 2), "hé…");
        assert_eq!(truncate("hi", 5), "hi");
    }

    #[test]
    fn values_from_messages_are_escaped() {
        let mut letter =
            DeadLetterView::example("x\"><img>", "<script>alert(1)</script>", "failed");
        letter.error = "<b>".into();
        let page = Page {
            letters: vec![letter],
            total: 1,
            ..Page::default()
        };
        let html = render(&page, false);
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(!html.contains("<img>"), "{html}");
        assert!(html.contains("&lt;script&gt;"));
    }

    #[test]
    fn a_read_only_page_has_no_action_buttons() {
        let page = Page {
            letters: vec![DeadLetterView::example("1", "t", "failed")],
            total: 1,
            ..Page::default()
        };
        let html = render(&page, true);
        assert!(!html.contains("Requeue"), "{html}");
        assert!(!html.contains("Purge"), "{html}");
    }
}
