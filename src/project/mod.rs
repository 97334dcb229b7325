//! A project on disk: a folder a user can copy, back up or put in git.
//!
//! ```text
//! atelier.toml            settings: model, device, default recipe values
//! atelier.lock            the writer's lock (pid inside)
//! sources/<sha256>.<ext>  source images, bytes as given
//! runs/<id>/run.toml      the record
//! runs/<id>/image.png     the output, with parameters and record embedded
//! sheets/                 contact sheets (sweep, compare)
//! trash/<id>/             deleted runs, until the trash is emptied
//! ```

mod lock;
pub mod record;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub use lock::{ProjectBusy, ProjectLock, LOCK_FILE};
pub use record::{ModelRef, RunRecord, Status};

use crate::atomic::write_atomic;

pub const SETTINGS_FILE: &str = "atelier.toml";

/// `atelier.toml`: what commands use when a flag is not given. A name it
/// does not know (a misspelt `strenght`) is an error, not silently unused.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// f32, f16 or bf16 (see `--dtype`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strength: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<String>,
}

/// Whether this process may change the project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// A record that could not be read: reported, skipped, never fatal.
#[derive(Debug, Clone)]
pub struct Unreadable {
    pub path: PathBuf,
    pub reason: String,
}

/// All runs, oldest first, and the records that could not be read.
#[derive(Debug, Default)]
pub struct History {
    pub runs: Vec<RunRecord>,
    pub unreadable: Vec<Unreadable>,
}

impl History {
    pub fn get(&self, id: u64) -> Option<&RunRecord> {
        self.runs
            .binary_search_by_key(&id, |r| r.id)
            .ok()
            .map(|i| &self.runs[i])
    }
}

#[derive(Debug)]
pub struct Project {
    root: PathBuf,
    pub settings: Settings,
    /// Held by a writer; set once, when the project is opened for writing
    /// or a reader takes it over ([`Project::try_take_write`]).
    lock: std::sync::OnceLock<ProjectLock>,
}

/// The run folder name: zero-padded so listings sort by id.
fn run_dir_name(id: u64) -> String {
    format!("{id:06}")
}

impl Project {
    /// Makes a project in `dir` (created if missing).
    pub fn init(dir: &Path) -> Result<Self> {
        if dir.join(SETTINGS_FILE).is_file() {
            bail!("{} is already an atelier project", dir.display());
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for sub in ["sources", "runs", "sheets", "trash"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
        }
        let settings = Settings::default();
        write_atomic(
            &dir.join(SETTINGS_FILE),
            toml::to_string(&settings)?.as_bytes(),
        )?;
        std::fs::write(dir.join(".gitignore"), format!("{LOCK_FILE}\ntrash/\n"))?;
        Self::open(dir, Access::Write)
    }

    /// The project containing `start` (it or a folder above it).
    pub fn find(start: &Path) -> Result<PathBuf> {
        let start = start
            .canonicalize()
            .with_context(|| format!("cannot read the folder {}", start.display()))?;
        for dir in start.ancestors() {
            if dir.join(SETTINGS_FILE).is_file() {
                return Ok(dir.to_path_buf());
            }
        }
        bail!(
            "no atelier project here: neither {} nor a folder above it has {SETTINGS_FILE}; \
             run `atelier init` or pass --project DIR",
            start.display()
        )
    }

    /// `--project DIR`, or the project found from the current folder up.
    pub fn locate(explicit: Option<&Path>) -> Result<PathBuf> {
        match explicit {
            Some(dir) if dir.join(SETTINGS_FILE).is_file() => Ok(dir.to_path_buf()),
            Some(dir) => bail!(
                "{} is not an atelier project (no {SETTINGS_FILE}); run `atelier init {}`",
                dir.display(),
                dir.display()
            ),
            None => Self::find(&std::env::current_dir()?),
        }
    }

    /// Opens a project. Writers take the lock and mark runs that a dead
    /// process left `running` as failed.
    pub fn open(root: &Path, access: Access) -> Result<Self> {
        let settings_path = root.join(SETTINGS_FILE);
        let text = std::fs::read_to_string(&settings_path).with_context(|| {
            format!(
                "{} is not an atelier project (no readable {SETTINGS_FILE})",
                root.display()
            )
        })?;
        let settings: Settings = toml::from_str(&text).with_context(|| {
            format!(
                "{} is not valid: fix or delete the bad line",
                settings_path.display()
            )
        })?;
        let project = Self {
            root: root.to_path_buf(),
            settings,
            lock: std::sync::OnceLock::new(),
        };
        if access == Access::Write {
            project.take_write(ProjectLock::acquire(root)?)?;
        }
        Ok(project)
    }

    /// For a project opened to read: takes the write lock if no other
    /// process holds it now (true), as opening it to write would have.
    pub fn try_take_write(&self) -> Result<bool> {
        if self.is_writable() {
            return Ok(true);
        }
        match ProjectLock::acquire(&self.root) {
            Ok(lock) => self.take_write(lock).map(|_| true),
            Err(e) if e.is::<ProjectBusy>() => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn take_write(&self, lock: ProjectLock) -> Result<()> {
        let _ = self.lock.set(lock);
        self.recover_interrupted()
    }

    /// Whether this process holds the write lock.
    pub fn is_writable(&self) -> bool {
        self.lock.get().is_some()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn require_write(&self) -> Result<()> {
        if !self.is_writable() {
            bail!("the project was opened read-only");
        }
        Ok(())
    }

    pub fn run_dir(&self, id: u64) -> PathBuf {
        self.root.join("runs").join(run_dir_name(id))
    }

    pub fn image_path(&self, id: u64) -> PathBuf {
        self.run_dir(id).join("image.png")
    }

    pub fn sheets_dir(&self) -> PathBuf {
        self.root.join("sheets")
    }

    /// Stores a source by content; the same bytes are stored once.
    pub fn add_source(&self, file: &Path) -> Result<String> {
        self.require_write()?;
        let bytes = std::fs::read(file)
            .with_context(|| format!("cannot read the source {}", file.display()))?;
        // Refuse what is not an image before it enters the project.
        crate::engine::source::load_source(file)?;
        let ext = file
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_else(|| "img".into());
        self.add_source_bytes(&bytes, &ext)
    }

    pub fn add_source_bytes(&self, bytes: &[u8], ext: &str) -> Result<String> {
        self.require_write()?;
        let hash = crate::hash::hex_digest(bytes);
        if self.source_path(&hash).is_none() {
            let dir = self.root.join("sources");
            std::fs::create_dir_all(&dir)?;
            write_atomic(&dir.join(format!("{hash}.{ext}")), bytes)?;
        }
        Ok(hash)
    }

    /// The stored file of a source hash (any extension).
    pub fn source_path(&self, hash: &str) -> Option<PathBuf> {
        let dir = self.root.join("sources");
        std::fs::read_dir(&dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_stem().is_some_and(|s| s.to_string_lossy() == hash))
    }

    /// Every run record, oldest first; unreadable ones are listed, not fatal.
    pub fn history(&self) -> Result<History> {
        self.records_in("runs")
    }

    /// The runs in the trash, as [`Project::history`] lists the others.
    pub fn trashed(&self) -> Result<History> {
        self.records_in("trash")
    }

    /// The records of the runs whose ids `wanted` picks, as
    /// [`Project::history`] lists them: for a reader following a writer.
    pub fn history_of(&self, wanted: impl Fn(u64) -> bool) -> Result<History> {
        self.records_where("runs", wanted)
    }

    /// The records in one of the project's folders of runs.
    fn records_in(&self, folder: &str) -> Result<History> {
        self.records_where(folder, |_| true)
    }

    fn records_where(&self, folder: &str, wanted: impl Fn(u64) -> bool) -> Result<History> {
        let runs_dir = self.root.join(folder);
        let mut history = History::default();
        let entries = match std::fs::read_dir(&runs_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(history),
            Err(e) => return Err(e).with_context(|| format!("cannot list {}", runs_dir.display())),
        };
        for entry in entries.flatten() {
            let Ok(id) = entry.file_name().to_string_lossy().parse::<u64>() else {
                continue;
            };
            if !wanted(id) {
                continue;
            }
            let path = entry.path().join("run.toml");
            if !path.exists() {
                // A writer stopped between making the folder and renaming
                // the record into it: there is no run to show.
                continue;
            }
            let parsed = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|t| RunRecord::from_toml(&t).map_err(|e| format!("{e:#}")));
            match parsed {
                Ok(record) if record.id == id => history.runs.push(record),
                Ok(record) => history.unreadable.push(Unreadable {
                    path,
                    reason: format!("the record says id {} in the folder of run {id}", record.id),
                }),
                Err(reason) => history.unreadable.push(Unreadable { path, reason }),
            }
        }
        history.runs.sort_by_key(|r| r.id);
        Ok(history)
    }

    /// One record by id.
    pub fn record(&self, id: u64) -> Result<RunRecord> {
        let path = self.run_dir(id).join("run.toml");
        if !path.is_file() {
            bail!(
                "there is no run #{id} in {}; `atelier history` lists the runs",
                self.root.display()
            );
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        RunRecord::from_toml(&text)
            .with_context(|| format!("the record {} is damaged", path.display()))
    }

    /// The id the next run gets: one past the highest ever used (the trash
    /// included, so a deleted id is never reused).
    pub fn next_id(&self) -> Result<u64> {
        let mut max = 0;
        for sub in ["runs", "trash"] {
            if let Ok(entries) = std::fs::read_dir(self.root.join(sub)) {
                for e in entries.flatten() {
                    if let Ok(id) = e.file_name().to_string_lossy().parse::<u64>() {
                        max = max.max(id);
                    }
                }
            }
        }
        Ok(max + 1)
    }

    /// Writes (or replaces) a record, atomically.
    pub fn write_record(&self, record: &RunRecord) -> Result<()> {
        self.require_write()?;
        let dir = self.run_dir(record.id);
        let new = !dir.exists();
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let written = write_atomic(&dir.join("run.toml"), record.to_toml()?.as_bytes());
        if written.is_err() && new {
            // A run's folder without its record would hold its number.
            let _ = std::fs::remove_dir(&dir);
        }
        written
    }

    /// Runs a dead writer left `running` are marked failed.
    fn recover_interrupted(&self) -> Result<()> {
        let history = self.history()?;
        for mut run in history
            .runs
            .into_iter()
            .filter(|r| r.status == Status::Running)
        {
            run.status = Status::Failed;
            run.error =
                Some("interrupted: the process running it stopped before it finished".into());
            self.write_record(&run)?;
        }
        Ok(())
    }

    /// Moves a run to the trash (recoverable until the trash is emptied).
    pub fn trash(&self, id: u64) -> Result<()> {
        self.require_write()?;
        self.check_trashable(id)?;
        let from = self.run_dir(id);
        let to = self.root.join("trash").join(run_dir_name(id));
        std::fs::create_dir_all(self.root.join("trash"))?;
        std::fs::rename(&from, &to)
            .with_context(|| format!("cannot move {} to the trash", from.display()))
    }

    /// Puts a trashed run back.
    /// Fails unless run `id` can go to the trash: its folder, not its
    /// record, so that an unreadable record can go too.
    pub fn check_trashable(&self, id: u64) -> Result<()> {
        if !self.run_dir(id).is_dir() {
            bail!("there is no run #{id} to delete");
        }
        Ok(())
    }

    /// Fails unless run `id` is in the trash.
    pub fn check_restorable(&self, id: u64) -> Result<()> {
        if !self.root.join("trash").join(run_dir_name(id)).is_dir() {
            bail!("run #{id} is not in the trash");
        }
        Ok(())
    }

    pub fn restore(&self, id: u64) -> Result<()> {
        self.require_write()?;
        self.check_restorable(id)?;
        let from = self.root.join("trash").join(run_dir_name(id));
        std::fs::rename(&from, self.run_dir(id))?;
        Ok(())
    }

    /// Deletes the trash for good; returns how many runs went.
    pub fn empty_trash(&self) -> Result<usize> {
        self.require_write()?;
        let dir = self.root.join("trash");
        let mut n = 0;
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                std::fs::remove_dir_all(e.path())
                    .with_context(|| format!("cannot delete {}", e.path().display()))?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Children of each run (runs that name it as parent or source run).
    pub fn lineage(history: &History) -> HashMap<u64, Vec<u64>> {
        let mut children: HashMap<u64, Vec<u64>> = HashMap::new();
        for run in &history.runs {
            if let Some(p) = run.parent.or(run.source_run) {
                children.entry(p).or_default().push(run.id);
            }
        }
        children
    }
}

/// Parses `#42` or `42`.
pub fn parse_run_id(text: &str) -> Result<u64> {
    text.trim()
        .trim_start_matches('#')
        .parse()
        .map_err(|_| anyhow::anyhow!("{text:?} is not a run id (a number, like 42 or #42)"))
}
