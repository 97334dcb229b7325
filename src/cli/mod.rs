//! The headless commands.

pub mod bench;
pub mod compare;
pub mod gen;
pub mod history;
pub mod manage;
pub mod models;
pub mod rerun;
pub mod runner;
pub mod show;
pub mod sweep;
pub mod transfer;

use std::path::PathBuf;

/// Options every command takes.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Global {
    /// The project folder [default: the one containing the current folder].
    #[arg(long, global = true)]
    pub project: Option<PathBuf>,
}
