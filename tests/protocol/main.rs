//! Celery's message protocol, against the pinned Python Celery: the
//! captured fixtures decoded and re-encoded byte for byte, and messages
//! built by Celeriac checked by Python itself. No broker needed.

mod fixtures;
mod python;
