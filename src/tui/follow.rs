//! A workstation opened while another process writes the project (a sweep
//! or a `gen` from a script): it shows that writer's runs as they are made,
//! and takes the project over, as if just opened, when asked to change
//! something once the writer has ended. Never on its own: between two
//! `atelier gen` of a script the lock is free for a moment, and a
//! workstation that took it then would make the script's next one fail.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::state::{update, Action, State};
use crate::project::{Project, Status};

/// How often the project is looked at: a step of a small model takes
/// about this long, a real one longer.
const EVERY: Duration = Duration::from_millis(500);

pub struct Follower {
    last: Instant,
}

impl Follower {
    pub fn new() -> Self {
        Follower {
            last: Instant::now(),
        }
    }

    /// While `state` is read-only and a look is due: brings in the records
    /// the writer made or changed since. Returns whether anything changed.
    pub fn poll(&mut self, project: &Project, state: &mut State) -> Result<bool> {
        if state.read_only.is_none() || self.last.elapsed() < EVERY {
            return Ok(false);
        }
        self.last = Instant::now();
        // New runs, and those the writer may still move on.
        let newest = state.runs.last().map_or(0, |r| r.id);
        let unsettled: std::collections::HashSet<u64> = state
            .runs
            .iter()
            .filter(|r| matches!(r.status, Status::Queued | Status::Running))
            .map(|r| r.id)
            .collect();
        let changed: Vec<_> = project
            .history_of(|id| id > newest || unsettled.contains(&id))?
            .runs
            .into_iter()
            .filter(|r| state.run(r.id) != Some(r))
            .collect();
        if changed.is_empty() {
            return Ok(false);
        }
        update(state, Action::RunsChanged(changed));
        Ok(true)
    }
}

/// Takes the project over for `state` if its writer has ended (true), as
/// opening it now would: the writer's unfinished runs (had it died) are
/// marked, its queued ones resume here.
pub fn take_over(project: &Project, state: &mut State) -> Result<bool> {
    // Marking the old writer's runs may fail after the lock is taken (a
    // full disk): this workstation is the writer then all the same.
    let taken = project.try_take_write();
    if project.is_writable() {
        state.read_only = None;
        update(state, Action::History(project.history()?.runs));
        state.resume_queued();
    }
    taken
}
