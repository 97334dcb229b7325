//! Which image protocol the terminal speaks, asked of the terminal itself.
//!
//! ratatui-image (10 and 11) asks from a thread blocked in a read of stdin,
//! and when the terminal never answers (a detached tmux session, an outer
//! terminal that ignores the question tmux passes on) that thread stays
//! parked after the timeout and swallows the user's first key
//! (ratatui-image#202, fixed for 12). [`release_parked_reader`] frees it.

use std::io::Write;
use std::sync::mpsc;
use std::time::Duration;

use ratatui_image::picker::cap_parser::QueryStdioOptions;
use ratatui_image::picker::{Picker, ProtocolType};

/// Terminals that answer do so at once; tmux and some SSH paths never
/// answer some queries, so do not wait long for them.
const QUERY_TIMEOUT: Duration = Duration::from_millis(400);

/// How long a terminal may take to answer a plain status report.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// The image protocol: forced by the config, else asked of the terminal
/// (which works over SSH and inside tmux), else half-blocks. With
/// `compress`, also whether kitty images may go deflated.
pub fn picker(forced: Option<&str>, compress: bool) -> Picker {
    let forced = forced.unwrap_or("auto");
    if forced == "halfblocks" {
        return Picker::halfblocks();
    }
    let options = QueryStdioOptions {
        timeout: QUERY_TIMEOUT,
        kitty_compression: compress,
        ..QueryStdioOptions::default()
    };
    let picker = Picker::from_query_stdio_with_options(options);
    // A timeout comes back as Ok, with half-blocks: the thread may be
    // parked either way.
    release_parked_reader();
    let mut picker = picker.unwrap_or_else(|error| {
        tracing::info!("could not ask the terminal which images it shows ({error}); half-blocks");
        Picker::halfblocks()
    });
    match forced {
        "kitty" => picker.set_protocol_type(ProtocolType::Kitty),
        "sixel" => picker.set_protocol_type(ProtocolType::Sixel),
        "iterm2" => picker.set_protocol_type(ProtocolType::Iterm2),
        _ => {}
    }
    picker
}

/// Gets a query thread still parked in a read of stdin to read something
/// other than the user's first key, and waits until it has.
///
/// That thread holds std's stdin lock while it reads, so taking the lock
/// says it is gone. If it is there, a plain status report (`CSI 5 n`, not
/// wrapped for tmux, so tmux itself answers it) gives it bytes to read; it
/// then finds nobody waiting for its answer and ends. crossterm reads the
/// terminal on its own file descriptor, not through std's lock, and ignores
/// the report's answer if that reaches it instead.
fn release_parked_reader() {
    let (taken, parked) = mpsc::channel();
    std::thread::spawn(move || {
        drop(std::io::stdin().lock());
        let _ = taken.send(());
    });
    if parked.recv_timeout(Duration::from_millis(20)).is_ok() {
        return;
    }
    let mut out = std::io::stdout();
    if out
        .write_all(b"\x1b[5n")
        .and_then(|()| out.flush())
        .is_err()
    {
        return;
    }
    if parked.recv_timeout(RELEASE_TIMEOUT).is_err() {
        tracing::warn!("the terminal answers no status report: its first key may be lost");
    }
}

/// Whether the terminal is at the far end of an SSH connection, where the
/// link, not the CPU, is what images wait for.
pub fn over_ssh() -> bool {
    ["SSH_CONNECTION", "SSH_TTY"]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
}

/// Whether kitty images go deflated with this picker.
pub fn compresses(picker: &Picker) -> bool {
    picker.protocol_type() == ProtocolType::Kitty
        && picker
            .capabilities()
            .contains(&ratatui_image::picker::Capability::KittyCompression)
}
