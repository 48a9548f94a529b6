//! Task name → destination, the way Celery's `task_routes` and
//! `send_task` work it out (§1.1, §2.4).
//!
//! 1. Explicit options on the call win over a route.
//! 2. Routes are tried in order; a route matches a task name exactly or by a
//!    glob (`images.*`, `*.resize`, `report.??`), like `task_routes` keys.
//! 3. Without a queue, the default queue (`celery`) is used.
//! 4. **The default-exchange shortcut:** when the queue's exchange is direct
//!    and the call did not give both an exchange and a routing key, the
//!    message goes to the default exchange `""` with the queue name as routing
//!    key, exactly as Python publishes it. Otherwise it goes to the named
//!    exchange with the explicit key, else the queue's binding key.

use std::collections::BTreeMap;

use crate::topology::{ExchangeKind, Queue};

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

/// An invalid route pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid task route pattern {pattern:?}: {problem}")]
pub struct RouteError {
    /// The pattern.
    pub pattern: String,
    /// What is wrong.
    pub problem: String,
}

/// Task routes plus the known queues (`task_routes` + `task_queues`).
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<(Matcher, RouteOptions)>,
    queues: BTreeMap<String, Queue>,
    default_queue: String,
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
        }
    }

    /// Registers a queue definition (like an entry of `task_queues`).
    pub fn queue(mut self, queue: Queue) -> Router {
        self.queues.insert(queue.name.clone(), queue);
        self
    }

    /// Adds a route for task names matching `pattern` (exact, or a glob with
    /// `*`, `?` or `[...]`). Routes are tried in the order added.
    ///
    /// ```
    /// use celeriac_broker::{Router, RouteOptions};
    /// let router = Router::default()
    ///     .route("images.*", RouteOptions { queue: Some("images".into()), ..Default::default() })
    ///     .unwrap();
    /// let dest = router.resolve("images.resize", &RouteOptions::default());
    /// assert_eq!((dest.exchange.as_str(), dest.routing_key.as_str()), ("", "images"));
    /// ```
    pub fn route(mut self, pattern: &str, options: RouteOptions) -> Result<Router, RouteError> {
        let matcher = if pattern.contains(['*', '?', '[']) {
            Matcher::Glob(glob::Pattern::new(pattern).map_err(|e| RouteError {
                pattern: pattern.to_owned(),
                problem: e.to_string(),
            })?)
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
    /// given on the call itself, which win over the route.
    pub fn resolve(&self, task: &str, call: &RouteOptions) -> Destination {
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
            Some(name) => Some(self.queues.get(&name).cloned().unwrap_or_else(|| {
                // Like task_create_missing_queues: an unknown queue gets
                // Celery's default shape.
                Queue::celery_default(name)
            })),
            None if exchange.is_some() => None,
            None => Some(self.default_queue().clone()),
        };

        match (&queue, exchange, routing_key) {
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
        }
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
        let d = Router::default().resolve("proj.tasks.add", &RouteOptions::default());
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
            router.resolve("a.b", &RouteOptions::default()).routing_key,
            "exact"
        );
        assert_eq!(
            router.resolve("a.c", &RouteOptions::default()).routing_key,
            "glob"
        );
        assert_eq!(
            router
                .resolve("a.c", &opts(Some("call"), None, None))
                .routing_key,
            "call"
        );
        assert_eq!(
            router.resolve("b", &RouteOptions::default()).routing_key,
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
        let d = router.resolve("images.resize", &RouteOptions::default());
        assert_eq!(
            (d.exchange.as_str(), d.routing_key.as_str()),
            ("tasks", "images.resize")
        );
    }

    #[test]
    fn explicit_exchange_and_key_skip_the_shortcut() {
        let d = Router::default().resolve("t", &opts(None, Some("celery"), Some("celery")));
        assert_eq!(
            (d.exchange.as_str(), d.routing_key.as_str()),
            ("celery", "celery")
        );
    }

    #[test]
    fn bad_globs_are_errors() {
        assert!(
            Router::default()
                .route("a.[", RouteOptions::default())
                .is_err()
        );
    }
}
