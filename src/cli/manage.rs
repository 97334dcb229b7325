//! Project housekeeping: init, stars, tags, notes, deleting to the trash.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::gen::open_project;
use super::Global;
use crate::project::{parse_run_id, Access, Project};

#[derive(Args, Debug, Clone)]
pub struct InitArgs {
    /// The folder [default: the current one].
    pub dir: Option<PathBuf>,
    /// The project's default model.
    #[arg(long)]
    pub model: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct MarkArgs {
    /// Runs (42 or #42).
    #[arg(required = true)]
    pub ids: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct TagArgs {
    pub id: String,
    /// +tag adds, -tag removes; a bare tag adds.
    #[arg(required = true, allow_hyphen_values = true)]
    pub tags: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct NoteArgs {
    pub id: String,
    /// The note (empty clears it).
    pub text: String,
}

#[derive(Subcommand, Debug, Clone)]
pub enum TrashCommand {
    /// List the runs in the trash.
    List,
    /// Put runs back.
    Restore(MarkArgs),
    /// Delete the trash for good.
    Empty,
}

pub fn init(args: InitArgs) -> Result<()> {
    let dir = args.dir.unwrap_or(std::env::current_dir()?);
    // A default model that can name nothing would fail every run later.
    if let Some(model) = &args.model {
        crate::models::check_name(model)?;
    }
    let mut project = Project::init(&dir)?;
    if let Some(model) = args.model {
        project.settings.model = Some(model);
        crate::atomic::write_atomic(
            &dir.join(crate::project::SETTINGS_FILE),
            toml::to_string(&project.settings)?.as_bytes(),
        )?;
    }
    println!("made an atelier project in {}", dir.display());
    Ok(())
}

fn update(
    global: &Global,
    ids: &[String],
    mut change: impl FnMut(&mut crate::project::RunRecord),
) -> Result<()> {
    let project = open_project(global, false, Access::Write)?.expect("required");
    // Every record is read before any is changed: a bad id among several
    // changes none.
    let records = ids
        .iter()
        .map(|id| project.record(parse_run_id(id)?))
        .collect::<Result<Vec<_>>>()?;
    for mut record in records {
        change(&mut record);
        project.write_record(&record)?;
    }
    Ok(())
}

pub fn star(args: MarkArgs, global: &Global, starred: bool) -> Result<()> {
    update(global, &args.ids, |r| r.starred = starred)
}

pub fn tag(args: TagArgs, global: &Global) -> Result<()> {
    update(global, std::slice::from_ref(&args.id), |r| {
        for t in &args.tags {
            if let Some(t) = t.strip_prefix('-') {
                r.tags.retain(|x| x != t);
            } else {
                let t = t.strip_prefix('+').unwrap_or(t).to_string();
                if !t.is_empty() && !r.tags.contains(&t) {
                    r.tags.push(t);
                }
            }
        }
    })
}

pub fn note(args: NoteArgs, global: &Global) -> Result<()> {
    update(global, std::slice::from_ref(&args.id), |r| {
        r.note = args.text.clone()
    })
}

/// The ids, each parsed and passed by `check` before any is acted on, so
/// that a mistyped one among several changes nothing.
fn checked_ids(ids: &[String], check: impl Fn(u64) -> Result<()>) -> Result<Vec<u64>> {
    ids.iter()
        .map(|id| {
            let id = parse_run_id(id)?;
            check(id)?;
            Ok(id)
        })
        .collect()
}

pub fn rm(args: MarkArgs, global: &Global) -> Result<()> {
    let project = open_project(global, false, Access::Write)?.expect("required");
    for id in checked_ids(&args.ids, |id| project.check_trashable(id))? {
        project.trash(id)?;
        println!("#{id} moved to the trash (`atelier trash restore {id}` brings it back)");
    }
    Ok(())
}

pub fn trash(command: TrashCommand, global: &Global) -> Result<()> {
    // Listing reads only, so it works while another process writes.
    let access = match command {
        TrashCommand::List => Access::Read,
        _ => Access::Write,
    };
    let project = open_project(global, false, access)?.expect("required");
    match command {
        TrashCommand::List => {
            let trashed = project.trashed()?;
            super::history::warn_unreadable(&trashed);
            if trashed.runs.is_empty() && trashed.unreadable.is_empty() {
                println!("the trash is empty");
            } else {
                let runs: Vec<_> = trashed.runs.iter().collect();
                print!("{}", super::history::table(&runs));
            }
        }
        TrashCommand::Restore(args) => {
            for id in checked_ids(&args.ids, |id| project.check_restorable(id))? {
                project.restore(id)?;
                println!("#{id} restored");
            }
        }
        TrashCommand::Empty => {
            let n = project.empty_trash()?;
            println!("deleted {n} runs for good");
        }
    }
    Ok(())
}
