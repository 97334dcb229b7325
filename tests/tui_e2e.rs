//! The workstation driven as a person drives it: the real binary in tmux
//! against a small random-weight model. Open a project, recall a run, edit
//! the prompt, set the strength, generate, see it in history, recall it,
//! change the strength, generate again, compare, open help, quit while a
//! job runs.
//! And, with images asked of a terminal that never answers, the first key
//! after start and tmux's passthrough setting after the end.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use atelier::project::{Access, Project, Status};

struct Tmux {
    session: String,
}

/// Runs the workstation in `dir`, then says how it exited.
fn command_line(dir: &Path, config: &Path) -> String {
    workstation(dir, config) + "; echo ATELIER-EXITED $?; sleep 60"
}

/// The workstation in `dir`, with its own configuration and data folder,
/// as if over SSH (the image query then also asks about compression).
fn workstation(dir: &Path, config: &Path) -> String {
    format!(
        "cd '{}' && SSH_CONNECTION='192.0.2.1 50000 192.0.2.2 22' ATELIER_CONFIG_DIR='{}' ATELIER_DATA_DIR='{}' '{}'",
        dir.display(),
        config.display(),
        config.display(),
        env!("CARGO_BIN_EXE_atelier")
    )
}

impl Tmux {
    /// `name` tells apart the sessions of tests that run at once.
    fn start(name: &str, dir: &Path, config: &Path, width: u16, height: u16) -> Self {
        Self::new_session(name, width, height, &command_line(dir, config))
    }

    /// The workstation typed into an interactive shell, for job control
    /// (Ctrl-Z, `fg`); [`Tmux::wait_for_exit`] asks the shell how it ended.
    fn start_in_shell(name: &str, dir: &Path, config: &Path, width: u16, height: u16) -> Self {
        let tmux = Self::new_session(name, width, height, "bash --norc --noprofile -i");
        tmux.keys(&[&workstation(dir, config), "Enter"]);
        tmux
    }

    /// After [`Tmux::start_in_shell`]'s workstation ended: has the shell
    /// print its exit status, and waits for it.
    fn wait_for_exit(&self, status: i32) {
        self.keys(&["echo ATELIER-EXITED $?", "Enter"]);
        self.wait_for(&format!("ATELIER-EXITED {status}"), 5);
    }

    fn new_session(name: &str, width: u16, height: u16, command: &str) -> Self {
        let session = format!("atelier-e2e-{name}-{}", std::process::id());
        let status = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                &session,
                "-x",
                &width.to_string(),
                "-y",
                &height.to_string(),
                command,
            ])
            .status()
            .expect("tmux must be installed for this test (.ci/run installs it)");
        assert!(status.success());
        Tmux { session }
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.session])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// The pane's own value of a tmux option ("" when not set on the pane).
    fn pane_option(&self, option: &str) -> String {
        let out = Command::new("tmux")
            .args(["show-options", "-p", "-v", "-t", &self.session, option])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn keys(&self, keys: &[&str]) {
        for k in keys {
            assert!(Command::new("tmux")
                .args(["send-keys", "-t", &self.session, k])
                .status()
                .unwrap()
                .success());
            std::thread::sleep(Duration::from_millis(60));
        }
    }

    fn repeat(&self, key: &str, times: usize) {
        let n = times.to_string();
        assert!(Command::new("tmux")
            .args(["send-keys", "-t", &self.session, "-N", &n, key])
            .status()
            .unwrap()
            .success());
        std::thread::sleep(Duration::from_millis(200));
    }

    fn type_text(&self, text: &str) {
        assert!(Command::new("tmux")
            .args(["send-keys", "-t", &self.session, "-l", text])
            .status()
            .unwrap()
            .success());
        std::thread::sleep(Duration::from_millis(100));
    }

    fn wait_for(&self, what: &str, seconds: u64) -> String {
        let started = Instant::now();
        loop {
            let screen = self.screen();
            if screen.contains(what) {
                return screen;
            }
            assert!(
                started.elapsed().as_secs() < seconds,
                "waited {seconds} s for {what:?}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.session])
            .status();
    }
}

/// A configuration folder whose config.toml asks for half-block images.
fn halfblocks_config() -> tempfile::TempDir {
    let config = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("config.toml"),
        "image_protocol = \"halfblocks\"\n",
    )
    .unwrap();
    config
}

/// A project in `dir` on the small SD 1.x parity model, with one run of
/// "a red fox" made by `gen` with `settings`.
fn project_with_a_run(dir: &Path, settings: &[&str]) {
    let case = common::sd15_case();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_atelier"))
            .current_dir(dir)
            .args(args)
            .output()
            .unwrap();
        common::ok(&out);
    };
    run(&["init", ".", "--model", case.join("model").to_str().unwrap()]);
    let source = case.join("source.png");
    let mut gen = vec![
        "gen",
        "--source",
        source.to_str().unwrap(),
        "--prompt",
        "a red fox",
        "--quiet",
    ];
    gen.extend_from_slice(settings);
    run(&gen);
}

fn wait_done(dir: &Path, id: u64) -> atelier::project::RunRecord {
    let started = Instant::now();
    loop {
        let project = Project::open(dir, Access::Read).unwrap();
        if let Ok(r) = project.record(id) {
            if matches!(r.status, Status::Done | Status::Failed | Status::Cancelled) {
                return r;
            }
        }
        assert!(
            started.elapsed().as_secs() < 120,
            "run #{id} did not finish"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A second workstation on a project another one writes opens read-only,
/// shows the writer's runs as they are made, refuses to change anything,
/// and takes the project over at the first change asked once the first
/// has quit.
#[test]
fn a_second_workstation_follows_the_writer_then_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let (writer_config, reader_config) = (halfblocks_config(), halfblocks_config());
    project_with_a_run(dir.path(), &["--steps", "4", "--seed", "3"]);

    let writer = Tmux::start("writer", dir.path(), writer_config.path(), 120, 30);
    writer.wait_for("ready", 30);
    let reader = Tmux::start("reader", dir.path(), reader_config.path(), 120, 30);
    reader.wait_for("recipe (read-only)", 30);
    // The holder is named by program, not by its path: the path (here
    // target/debug/atelier, deep in a checkout) pushed the advice off the line.
    reader.wait_for(
        "(atelier) writes the project; runs show as they are made, g takes over once it can be written",
        5,
    );
    reader.keys(&["s"]);
    reader.wait_for("writes the project; try again once it can be written", 5);
    assert!(
        !Project::open(dir.path(), Access::Read)
            .unwrap()
            .record(1)
            .unwrap()
            .starred
    );

    writer.keys(&["r", "g"]);
    assert_eq!(wait_done(dir.path(), 2).status, Status::Done);
    reader.wait_for("#2", 5);

    writer.keys(&["q"]);
    writer.wait_for("ATELIER-EXITED 0", 5);
    reader.keys(&["r", "g"]);
    reader.wait_for("recipe (g generates)", 5);
    assert_eq!(wait_done(dir.path(), 3).status, Status::Done);
    reader.wait_for("#3 done", 10);
    reader.keys(&["q"]);
    reader.wait_for("ATELIER-EXITED 0", 5);
}

/// On a read-only disk (a bind mount in a mount namespace of the test's
/// own) the workstation opens to browse, says why it cannot write, and a
/// change asked for says so too, instead of the workstation not starting.
#[test]
fn a_project_that_cannot_be_written_opens_to_browse() {
    if !common::can_unshare() {
        eprintln!("skipped: no `unshare -rm` here to mount the project read-only");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = halfblocks_config();
    project_with_a_run(dir.path(), &["--steps", "4"]);
    let d = dir.path().display();
    let command = format!(
        "unshare -rm sh -c \"mount --bind '{d}' '{d}' && mount -o remount,ro,bind '{d}' '{d}' && {}\"",
        command_line(dir.path(), config.path())
    );
    let tmux = Tmux::new_session("read-only-disk", 140, 30, &command);
    tmux.wait_for("recipe (read-only)", 30);
    tmux.wait_for("the project cannot be written", 5);
    tmux.wait_for("#1", 5);
    // A star is a change: refused, with the reason.
    tmux.keys(&["s"]);
    tmux.wait_for("cannot take the project over", 5);
    tmux.keys(&["q"]);
    tmux.wait_for("ATELIER-EXITED 0", 5);
}

#[test]
fn iterate_compare_and_quit_in_tmux() {
    let dir = tempfile::tempdir().unwrap();
    let config = halfblocks_config();
    project_with_a_run(
        dir.path(),
        &["--steps", "8", "--strength", "0.5", "--seed", "3"],
    );

    let tmux = Tmux::start("iterate", dir.path(), config.path(), 140, 40);
    tmux.wait_for("ready", 30);
    tmux.wait_for("#1", 5);

    // Recall #1, add to the prompt, raise the strength, generate.
    tmux.keys(&["r"]);
    tmux.wait_for("recalled #1", 5);
    tmux.keys(&["e"]);
    tmux.type_text(" at night");
    tmux.keys(&["Escape", "]"]);
    tmux.wait_for("0.55  (4 of 8 steps run)", 5);
    tmux.keys(&["g"]);
    let second = wait_done(dir.path(), 2);
    assert_eq!(second.status, Status::Done, "{:?}", second.error);
    assert_eq!(second.recipe.prompt, "a red fox at night");
    assert_eq!(second.recipe.strength, 0.55);
    assert_eq!(second.parent, Some(1));
    tmux.wait_for("#2 done", 20);

    // Recall the new run, lower the strength twice, generate again.
    tmux.keys(&["k", "r"]);
    tmux.wait_for("recalled #2", 5);
    tmux.keys(&["[", "["]);
    tmux.wait_for("0.45  (3 of 8 steps run)", 5);
    tmux.keys(&["g"]);
    let third = wait_done(dir.path(), 3);
    assert_eq!(third.status, Status::Done, "{:?}", third.error);
    assert_eq!((third.recipe.strength, third.parent), (0.45, Some(2)));
    tmux.wait_for("#3 done", 20);

    // Compare: mark #3, select #2, show B.
    tmux.keys(&["m", "j", "Tab"]);
    let screen = tmux.wait_for("B: #3 (marked)", 5);
    assert!(screen.contains("#2 vs #3: strength"), "{screen}");

    // A long job, cancelled while it runs: x stops it after the current step.
    tmux.keys(&["r"]);
    tmux.repeat("+", 991);
    tmux.repeat("]", 12);
    tmux.wait_for("1.00  (999 of 999 steps run)", 10);
    tmux.keys(&["g"]);
    tmux.wait_for("s/step", 30);
    tmux.keys(&["x"]);
    let cancelled = wait_done(dir.path(), 4);
    assert_eq!(cancelled.status, Status::Cancelled);
    tmux.wait_for("#4 cancelled", 10);

    // Help from the keymap, closed by any key.
    tmux.keys(&["?"]);
    tmux.wait_for("keys (any key closes)", 5);
    tmux.keys(&["j"]);
    let screen = tmux.wait_for("history", 5);
    assert!(!screen.contains("keys (any key closes)"));

    // Quit while a job runs: it goes back to queued in the project.
    tmux.keys(&["g"]);
    tmux.wait_for("s/step", 30);
    tmux.keys(&["q"]);
    tmux.wait_for("Press q again", 5);
    tmux.keys(&["q"]);
    tmux.wait_for("ATELIER-EXITED 0", 10);
    let left = Project::open(dir.path(), Access::Read)
        .unwrap()
        .record(5)
        .unwrap();
    assert_eq!(left.status, Status::Queued, "{:?}", left.error);
}

/// Images as the terminal says (the default `image_protocol`), in a tmux
/// that never answers the query: the first key still reaches the
/// workstation (ratatui-image's query thread, parked in a read of stdin
/// after its timeout, used to swallow it), and the pane's
/// `allow-passthrough`, which ratatui-image turns on, is unset again after.
#[test]
fn in_tmux_the_first_key_counts_and_passthrough_is_put_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = tempfile::tempdir().unwrap();
    let init = Command::new(env!("CARGO_BIN_EXE_atelier"))
        .current_dir(dir.path())
        .args(["init", "."])
        .output()
        .unwrap();
    common::ok(&init);

    let tmux = Tmux::start_in_shell("first-key", dir.path(), config.path(), 100, 30);
    tmux.wait_for("ready: images as halfblocks", 30);
    assert_eq!(tmux.pane_option("allow-passthrough"), "on");
    tmux.keys(&["?"]);
    tmux.wait_for("any other key closes", 5);
    tmux.keys(&["Escape"]);

    // Stopped by Ctrl-Z, the pane gets its own setting back for the
    // shell; atelier's returns with `fg`.
    tmux.keys(&["C-z"]);
    tmux.wait_for("Stopped", 5);
    assert_eq!(tmux.pane_option("allow-passthrough"), "");
    tmux.keys(&["fg", "Enter"]);
    wait_until(5, || tmux.pane_option("allow-passthrough") == "on");
    tmux.wait_for("recipe (g generates)", 5);

    tmux.keys(&["q"]);
    tmux.wait_for_exit(0);
    assert_eq!(tmux.pane_option("allow-passthrough"), "");
}

/// Waits up to `seconds` for `done`, failing the test after.
fn wait_until(seconds: u64, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(seconds);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(50));
    }
}
