//! The tasks every worker runs without being told, as Celery's workers do:
//! `celery.chord_unlock`, which joins a chord by polling its header's
//! results on backends that cannot count them, and
//! `celery.backend_cleanup`, which deletes expired results from stores
//! where they do not expire by themselves. A task the app registers under
//! one of these names runs instead.

mod backend_cleanup;
mod chord_unlock;

use std::sync::Arc;

use celeriac::{App, Registry};

/// The app's tasks, plus the built-in ones it does not define itself.
pub(crate) fn with_builtins(app: &App) -> Registry {
    let mut tasks = app.registry().clone();
    let builtins: [Arc<dyn celeriac::Task>; 2] = [
        Arc::new(chord_unlock::ChordUnlock::new(app.clone())),
        Arc::new(backend_cleanup::BackendCleanup::new(app.clone())),
    ];
    for task in builtins {
        if tasks.get(task.name()).is_none() {
            tasks.register(task);
        }
    }
    tasks
}
