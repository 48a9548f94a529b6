//! Where the scheduling state lives: a local file, written atomically on
//! every send, and (for failover) a copy in a broker queue that the next
//! active beat reads.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::BeatError;
use crate::scheduler::State;

/// The state file: JSON, replaced atomically (write to a temporary file in
/// the same directory, flush to disk, rename over the old one), so a crash
/// leaves either the old or the new state, never a torn one.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// The state file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> StateFile {
        StateFile { path: path.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the state; a missing file is an empty state.
    pub fn load(&self) -> Result<State, BeatError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| BeatError::CorruptState {
                path: self.path.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(source) => Err(BeatError::ReadState {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Writes the state atomically.
    pub fn save(&self, state: &State) -> Result<(), BeatError> {
        let fail = |source: std::io::Error| BeatError::WriteState {
            path: self.path.clone(),
            source,
        };
        let json = serde_json::to_vec_pretty(state).map_err(BeatError::EncodeState)?;
        let tmp = self.path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp).map_err(fail)?;
        file.write_all(&json).map_err(fail)?;
        file.sync_all().map_err(fail)?;
        std::fs::rename(&tmp, &self.path).map_err(fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_a_missing_file_is_empty() {
        let dir = std::env::temp_dir().join(format!("celeriac-beat-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = StateFile::new(dir.join("state.json"));
        assert_eq!(file.load().unwrap(), State::default());
        let mut state = State::default();
        state.last_due.insert("e".into(), chrono::Utc::now());
        file.save(&state).unwrap();
        assert_eq!(file.load().unwrap(), state);
        std::fs::write(file.path(), b"{not json").unwrap();
        assert!(file.load().unwrap_err().to_string().contains("corrupt"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
