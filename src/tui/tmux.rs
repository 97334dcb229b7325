//! tmux's `allow-passthrough` for atelier's pane, put back when the
//! workstation ends.
//!
//! ratatui-image turns it on for the pane whenever a picker is made inside
//! tmux (images reach the outer terminal only through it), and leaves it on.
//! Left on, whatever runs in that pane later can send escape sequences past
//! tmux to the outer terminal, so the pane's own value is read first and
//! restored on drop, and while atelier is stopped by Ctrl-Z.

use std::process::{Command, Stdio};

const OPTION: &str = "allow-passthrough";

/// The pane's own `allow-passthrough` as it was (`None`: not set on the
/// pane, so it inherits the window's).
pub struct PassthroughRestore {
    pane: String,
    value: Option<String>,
}

impl PassthroughRestore {
    /// Reads the setting, where ratatui-image will change it: when TERM or
    /// TERM_PROGRAM says tmux (its test). Without `TMUX_PANE` (a tmux TERM
    /// carried over SSH) there is no telling which pane it changes, and
    /// nothing is saved.
    pub fn save() -> Option<Self> {
        let var = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
        let in_tmux = var("TERM").is_some_and(|t| t.starts_with("tmux"))
            || var("TERM_PROGRAM").is_some_and(|p| p == "tmux");
        let pane = var("TMUX_PANE").filter(|_| in_tmux && var("TMUX").is_some())?;
        let value = read(&pane)?;
        Some(PassthroughRestore { pane, value })
    }

    /// Runs `stopped` (atelier stopped by Ctrl-Z) with the pane's own
    /// setting back, for the shell that gets the pane, and atelier's after.
    pub fn while_stopped<T>(&self, stopped: impl FnOnce() -> T) -> T {
        let ours = read(&self.pane);
        self.put_back();
        let result = stopped();
        if let Some(ours) = ours {
            write(&self.pane, &ours);
        }
        result
    }

    fn put_back(&self) {
        write(&self.pane, &self.value);
    }
}

impl Drop for PassthroughRestore {
    fn drop(&mut self) {
        self.put_back();
    }
}

/// The pane's own value (`Some(None)`: not set on the pane), or `None`
/// when tmux does not answer.
fn read(pane: &str) -> Option<Option<String>> {
    let out = tmux(&["show-options", "-p", "-v", "-t", pane, OPTION])
        .stdout(Stdio::piped())
        .output()
        .ok()
        .filter(|out| out.status.success())?;
    let value = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Some((!value.is_empty()).then_some(value))
}

/// Sets the pane's value, or unsets it for `None`.
fn write(pane: &str, value: &Option<String>) {
    let mut set = vec!["set-option", "-p", "-t", pane];
    match value {
        Some(value) => set.extend([OPTION, value]),
        None => set.extend(["-u", OPTION]),
    }
    if !tmux(&set).status().is_ok_and(|s| s.success()) {
        tracing::warn!("could not set tmux's {OPTION} for pane {pane}");
    }
}

/// `tmux ARGS`, its input and errors to nowhere.
fn tmux(args: &[&str]) -> Command {
    let mut command = Command::new("tmux");
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}
