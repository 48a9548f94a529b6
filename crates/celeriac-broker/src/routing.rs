//! Task name → destination, the way Celery's `task_routes` and
//! `send_task` work it out (§1.1, §2.4).
//!
//! 1. Explicit options on the call win over a route.
//! 2. Routes are tried in order; a route matches a task name exactly or by a
//!    glob (`images.*`, `*.resize`, `report.??`), like `task_routes` keys.
//! 3. Without a queue, the default queue (`celery`) is used. A queue name
//!    that is not configured is created with Celery's default shape (as
//!    `task_create_missing_queues = True` does), or refused with
//!    [`RouteError::QueueNotFound`] when missing queues are not created.
//!    [`QueueDefaults`] (`task_default_queue_type`,
//!    `task_queue_max_priority`) apply to every queue that does not set its
//!    own.
//! 4. **The default-exchange shortcut:** when the queue's exchange is direct
//!    and the call did not give both an exchange and a routing key, the
//!    message goes to the default exchange `""` with the queue name as routing
//!    key, exactly as Python publishes it. Otherwise it goes to the named
//!    exchange with the explicit key, else the queue's binding key.

use std::collections::BTreeMap;

use crate::topology::{ExchangeKind, Queue, QueueType};

/// Where one message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Exchange to publish to (`""` is the default exchange).
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// AMQP priority, if the route or call set one.
    pub priority: Option<u8>,
    /// The queue this resolves to, so a producer can declare it first (as
    /// Python's `maybe_declare` does); `None` for an explicit exchange with no
    /// known queue.
    pub queue: Option<Queue>,
}

/// Routing options given on a call or in a route. All optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteOptions {
    /// Queue name.
    pub queue: Option<String>,
    /// Exchange name.
    pub exchange: Option<String>,
    /// Routing key.
    pub routing_key: Option<String>,
    /// Priority.
    pub priority: Option<u8>,
}

/// How a route matches task names.
#[derive(Debug, Clone)]
enum Matcher {
    Exact(String),
    Glob(glob::Pattern),
}

impl Matcher {
    fn matches(&self, task: &str) -> bool {
        match self {
            Matcher::Exact(name) => name == task,
            Matcher::Glob(pattern) => pattern.matches(task),
        }
    }
}

/// A route that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// A route's pattern is not a valid glob.
    #[error("invalid task route pattern {pattern:?}: {problem}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// What is wrong.
        problem: String,
    },
    /// A queue was named that is not configured, and missing queues are
    /// not created.
    #[error(
        "queue {queue:?} is not configured (known: {known}) and missing queues are not \
         created; add it to task_queues, fix the route or call, or allow \
         create_missing_queues (Celery's task_create_missing_queues)"
    )]
    QueueNotFound {
        /// The queue named.
        queue: String,
        /// The configured queues, comma-separated.
        known: String,
    },
}

/// Queue arguments applied to every queue that does not set its own, like
/// Celery's `task_default_queue_type` and `task_queue_max_priority`. Both
/// change queue arguments, so Python must be configured the same.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct QueueDefaults {
    /// `x-queue-type` for queues without one (Celery's
    /// `task_default_queue_type`; unset means classic, declared without the
    /// argument as Python does).
    pub queue_type: Option<QueueType>,
    /// `x-max-priority` for queues without one (Celery's
    /// `task_queue_max_priority`).
    pub max_priority: Option<u8>,
}

impl QueueDefaults {
    /// `queue` with these defaults filled in where it sets nothing.
    pub fn apply(&self, mut queue: Queue) -> Queue {
        if queue.auto_delete || queue.exclusive {
            // Quorum queues cannot be auto-delete or exclusive.
            return queue;
        }
        let arguments = &mut queue.arguments;
        if arguments.queue_type.is_none() {
            arguments.queue_type = self.queue_type.filter(|t| *t != QueueType::Classic);
        }
        if arguments.max_priority.is_none() {
            arguments.max_priority = self.max_priority;
        }
        queue
    }
}

/// Task routes plus the known queues (`task_routes` + `task_queues`).
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<(Matcher, RouteOptions)>,
    queues: BTreeMap<String, Queue>,
    default_queue: String,
    defaults: QueueDefaults,
    create_missing: bool,
}

impl Default for Router {
    fn default() -> Self {
        Router::new(Queue::celery_default("celery"))
    }
}

impl Router {
    /// A router whose default queue is `default_queue` (Celery: `celery`).
    pub fn new(default_queue: Queue) -> Router {
        let default_name = default_queue.name.clone();
        let mut queues = BTreeMap::new();
        queues.insert(default_name.clone(), default_queue);
        Router {
            routes: Vec::new(),
            queues,
            default_queue: default_name,
            defaults: QueueDefaults::default(),
            create_missing: true,
        }
    }

    /// Registers a queue definition (like an entry of `task_queues`), by
    /// its [alias](Queue::alias).
    pub fn queue(mut self, queue: Queue) -> Router {
        let queue = self.defaults.apply(queue);
        self.queues.insert(queue.alias().to_owned(), queue);
        self
    }

    /// Applies `defaults` to every queue known now or created later.
    pub fn queue_defaults(mut self, defaults: QueueDefaults) -> Router {
        self.defaults = defaults;
        for queue in self.queues.values_mut() {
            *queue = defaults.apply(queue.clone());
        }
        self
    }

    /// Whether a queue that is not configured is created on first use
    /// (default, as Celery's `task_create_missing_queues`) or refused.
    pub fn create_missing_queues(mut self, create: bool) -> Router {
        self.create_missing = create;
        self
    }

    /// The definition of queue `name`: the configured one, else Celery's
    /// default shape with the queue defaults, unless missing queues are
    /// refused.
    pub fn queue_named(&self, name: &str) -> Result<Queue, RouteError> {
        if let Some(queue) = self.queues.get(name) {
            return Ok(queue.clone());
        }
        if self.create_missing {
            return Ok(self.defaults.apply(Queue::celery_default(name)));
        }
        Err(RouteError::QueueNotFound {
            queue: name.to_owned(),
            known: self.queues.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    /// Adds a route for task names matching `pattern` (exact, or a glob with
    /// `*`, `?` or `[...]`). Routes are tried in the order added.
    ///
    /// ```
    /// use celeriac_broker::{Router, RouteOptions};
    /// let router = Router::default()
    ///     .route("images.*", RouteOptions { queue: Some("images".into()), ..Default::default() })
    ///     .unwrap();
    /// let dest = router.resolve("images.resize", &RouteOptions::default()).unwrap();
    /// assert_eq!((dest.exchange.as_str(), dest.routing_key.as_str()), ("", "images"));
    /// ```
    pub fn route(mut self, pattern: &str, options: RouteOptions) -> Result<Router, RouteError> {
        let matcher = if pattern.contains(['*', '?', '[']) {
            Matcher::Glob(
                glob::Pattern::new(pattern).map_err(|e| RouteError::Pattern {
                    pattern: pattern.to_owned(),
                    problem: e.to_string(),
                })?,
            )
        } else {
            Matcher::Exact(pattern.to_owned())
        };
        self.routes.push((matcher, options));
        Ok(self)
    }

    /// The queue definitions known to this router.
    pub fn queues(&self) -> impl Iterator<Item = &Queue> {
        self.queues.values()
    }

    /// The default queue's definition.
    pub fn default_queue(&self) -> &Queue {
        &self.queues[&self.default_queue]
    }

    /// Works out where a message for `task` goes; `call` holds the options
    /// given on the call itself, which win over the route. Fails only for a
    /// queue that is not configured while missing queues are refused.
    pub fn resolve(&self, task: &str, call: &RouteOptions) -> Result<Destination, RouteError> {
        let route = self
            .routes
            .iter()
            .find(|(m, _)| m.matches(task))
            .map(|(_, options)| options.clone())
            .unwrap_or_default();
        let pick = |c: &Option<String>, r: &Option<String>| c.clone().or_else(|| r.clone());
        let exchange = pick(&call.exchange, &route.exchange);
        let routing_key = pick(&call.routing_key, &route.routing_key);
        let priority = call.priority.or(route.priority);
        let explicit_exchange_and_key = exchange.is_some() && routing_key.is_some();

        let queue = match pick(&call.queue, &route.queue) {
            Some(name) => Some(self.queue_named(&name)?),
            None if exchange.is_some() => None,
            None => Some(self.default_queue().clone()),
        };

        Ok(match (&queue, exchange, routing_key) {
            (Some(q), _, _)
                if q.exchange.kind == ExchangeKind::Direct && !explicit_exchange_and_key =>
            {
                Destination {
                    exchange: String::new(),
                    routing_key: q.name.clone(),
                    priority,
                    queue,
                }
            }
            (Some(q), exchange, routing_key) => Destination {
                exchange: exchange.unwrap_or_else(|| q.exchange.name.clone()),
                routing_key: routing_key.unwrap_or_else(|| q.routing_key.clone()),
                priority,
                queue,
            },
            (None, exchange, routing_key) => Destination {
                exchange: exchange.unwrap_or_default(),
                routing_key: routing_key.unwrap_or_else(|| self.default_queue.clone()),
                priority,
                queue: None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Exchange;

    fn opts(queue: Option<&str>, exchange: Option<&str>, key: Option<&str>) -> RouteOptions {
        RouteOptions {
            queue: queue.map(Into::into),
            exchange: exchange.map(Into::into),
            routing_key: key.map(Into::into),
            priority: None,
        }
    }

    #[test]
    fn default_route_uses_the_default_exchange_shortcut() {
        let d = Router::default()
            .resolve("proj.tasks.add", &RouteOptions::default())
            .unwrap();
        assert_eq!(
            (d.exchange.as_str(), d.routing_key.as_str()),
            ("", "celery")
        );
        assert_eq!(d.queue.map(|q| q.name), Some("celery".into()));
    }

    #[test]
    fn exact_routes_win_in_order_and_calls_win_over_routes() {
        let router = Router::default()
            .route("a.b", opts(Some("exact"), None, None))
            .unwrap()
            .route("a.*", opts(Some("glob"), None, None))
            .unwrap();
        assert_eq!(
            router
                .resolve("a.b", &RouteOptions::default())
                .unwrap()
                .routing_key,
            "exact"
        );
        assert_eq!(
            router
                .resolve("a.c", &RouteOptions::default())
                .unwrap()
                .routing_key,
            "glob"
        );
        assert_eq!(
            router
                .resolve("a.c", &opts(Some("call"), None, None))
                .unwrap()
                .routing_key,
            "call"
        );
        assert_eq!(
            router
                .resolve("b", &RouteOptions::default())
                .unwrap()
                .routing_key,
            "celery"
        );
    }

    #[test]
    fn topic_queues_publish_to_their_exchange() {
        let images = Queue::celery_default("images").bound_to(Exchange::topic("tasks"), "images.#");
        let router = Router::default()
            .queue(images)
            .route(
                "images.*",
                opts(Some("images"), None, Some("images.resize")),
            )
            .unwrap();
        let d = router
            .resolve("images.resize", &RouteOptions::default())
            .unwrap();
        assert_eq!(
            (d.exchange.as_str(), d.routing_key.as_str()),
            ("tasks", "images.resize")
        );
    }

    #[test]
    fn explicit_exchange_and_key_skip_the_shortcut() {
        let d = Router::default()
            .resolve("t", &opts(None, Some("celery"), Some("celery")))
            .unwrap();
        assert_eq!(
            (d.exchange.as_str(), d.routing_key.as_str()),
            ("celery", "celery")
        );
    }

    #[test]
    fn missing_queues_are_created_with_the_defaults_or_refused() {
        let defaults = QueueDefaults {
            queue_type: Some(QueueType::Quorum),
            max_priority: Some(10),
        };
        let router = Router::default().queue_defaults(defaults);
        let created = router
            .resolve("t", &opts(Some("new"), None, None))
            .unwrap()
            .queue
            .unwrap();
        assert_eq!(created.arguments.queue_type, Some(QueueType::Quorum));
        assert_eq!(created.arguments.max_priority, Some(10));
        assert_eq!(
            router.default_queue().arguments.max_priority,
            Some(10),
            "defaults reach the default queue too"
        );
        let strict = router.create_missing_queues(false);
        let err = strict
            .resolve("t", &opts(Some("new"), None, None))
            .unwrap_err();
        assert!(
            matches!(&err, RouteError::QueueNotFound { queue, .. } if queue == "new"),
            "{err}"
        );
        assert!(err.to_string().contains("task_queues"), "{err}");
        assert!(strict.resolve("t", &RouteOptions::default()).is_ok());
    }

    #[test]
    fn classic_as_the_default_type_declares_no_argument() {
        let defaults = QueueDefaults {
            queue_type: Some(QueueType::Classic),
            max_priority: None,
        };
        let queue = defaults.apply(Queue::celery_default("q"));
        assert!(queue.arguments.to_headers().is_empty());
    }

    #[test]
    fn bad_globs_are_errors() {
        assert!(
            Router::default()
                .route("a.[", RouteOptions::default())
                .is_err()
        );
    }

    #[test]
    fn a_broadcast_queue_is_known_by_its_alias_and_stays_classic() {
        let router = Router::default()
            .queue_defaults(QueueDefaults {
                queue_type: Some(QueueType::Quorum),
                max_priority: None,
            })
            .queue(Queue::broadcast("reload"));
        let queue = router.queue_named("reload").unwrap();
        assert!(queue.is_broadcast() && queue.name.starts_with("bcast."));
        assert_eq!(
            queue.arguments.queue_type, None,
            "quorum queues cannot auto-delete"
        );
        let d = router
            .resolve("t", &opts(Some("reload"), None, None))
            .unwrap();
        assert_eq!(
            (d.exchange.as_str(), d.routing_key.as_str()),
            ("reload", "reload")
        );
    }
}
