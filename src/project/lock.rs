//! One writer per project: an OS file lock on `atelier.lock`, released by
//! the OS when the process dies (even by `kill -9`), with the holder's pid
//! and command written inside so a second process can say who holds it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

use anyhow::{Context, Result};

pub const LOCK_FILE: &str = "atelier.lock";

#[derive(Debug)]
pub struct ProjectLock {
    _file: File,
}

/// Another process holds the project's lock.
#[derive(Debug, thiserror::Error)]
#[error(
    "the project {root} is being written by another process ({holder}); wait for it to \
     finish or stop it. Reading commands (history, show, compare, export) still work"
)]
pub struct ProjectBusy {
    pub root: String,
    /// "pid N (command)", as the holder wrote it.
    pub holder: String,
}

impl ProjectLock {
    /// Takes the lock, or says who holds it ([`ProjectBusy`]).
    pub fn acquire(root: &Path) -> Result<Self> {
        let path = root.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the project lock {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(ProjectBusy {
                    root: root.display().to_string(),
                    holder: if holder.is_empty() { "unknown" } else { holder }.to_string(),
                }
                .into());
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "pid {} ({})", std::process::id(), own_command())?;
        file.flush()?;
        Ok(Self { _file: file })
    }
}

/// "atelier gen": the program's file name and subcommand. The full path of
/// the executable says nothing more to whoever reads it and, in a status
/// line, pushes out what to do.
fn own_command() -> String {
    let mut args = std::env::args_os();
    let program = args
        .next()
        .map(|a| {
            Path::new(&a)
                .file_name()
                .unwrap_or(a.as_os_str())
                .to_string_lossy()
                .into_owned()
        })
        .unwrap_or_else(|| "atelier".to_string());
    match args.next() {
        Some(sub) => format!("{program} {}", sub.to_string_lossy()),
        None => program,
    }
}
