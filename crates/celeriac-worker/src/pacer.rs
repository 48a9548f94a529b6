//! What a delivery's limits depend on (its task, the task's options, the
//! message and the delivery), and its rate-limit turn: the task's global
//! rate limit if it has one ([`crate::global_rates`]), else its per-worker
//! one ([`crate::rate_limits`]).

use celeriac::broker::Delivery;
use celeriac::protocol::TaskMessage;
use celeriac::{Task, TaskOptions};

use std::sync::OnceLock;

use crate::context::Context;
use crate::global_limits::limit_key;
use crate::global_rates::{self, GLOBAL_SLOT_HEADER};
use crate::rate_limits::{Pace, RATE_SLOT_HEADER};

/// One delivery, as its rate and concurrency limits see it.
pub(crate) struct Pacer<'a> {
    pub(crate) task: &'a dyn Task,
    pub(crate) options: &'a TaskOptions,
    pub(crate) message: &'a TaskMessage,
    pub(crate) delivery: &'a Delivery,
    /// Its global limits' key, made when first asked for.
    key: OnceLock<String>,
}

impl<'a> Pacer<'a> {
    /// The limits' view of one delivery of `task`.
    pub(crate) fn new(
        task: &'a dyn Task,
        options: &'a TaskOptions,
        message: &'a TaskMessage,
        delivery: &'a Delivery,
    ) -> Pacer<'a> {
        Pacer {
            task,
            options,
            message,
            delivery,
            key: OnceLock::new(),
        }
    }

    /// The key its global limits are kept by ([`limit_key`]), made once:
    /// a delivery waiting its turn asks for it on each try.
    pub(crate) fn limit_key(&self) -> &str {
        self.key
            .get_or_init(|| limit_key(self.task, self.options, self.message))
    }
    /// The delivery's rate-limit turn, and the header a deferred copy
    /// carries its slot in.
    pub(crate) async fn pace<'c>(&self, ctx: &'c Context) -> (Pace<'c>, &'static str) {
        if self.options.global_rate_limit.is_some() {
            (
                Box::pin(global_rates::pace(ctx, self)).await,
                GLOBAL_SLOT_HEADER,
            )
        } else {
            let task = &self.message.headers.task;
            let paced = ctx.rates.pace(&ctx.eta_holds, task, self.delivery);
            (paced, RATE_SLOT_HEADER)
        }
    }

    /// Whether the run may start now that it has its concurrency slot
    /// ([`crate::starts`]): by its global rate limit's key if it has one
    /// ([`global_rates::start`]), else by its per-worker rate limit
    /// ([`RateLimits::start`](crate::rate_limits::RateLimits::start)); and
    /// the header a deferred copy carries its slot in.
    pub(crate) fn start(&self, ctx: &Context) -> (Pace<'static>, &'static str) {
        if self.options.global_rate_limit.is_some() {
            (global_rates::start(ctx, self), GLOBAL_SLOT_HEADER)
        } else {
            (
                ctx.rates.start(&self.message.headers.task),
                RATE_SLOT_HEADER,
            )
        }
    }
}
