//! `atelier show ID`: the record, and the image inline in a plain terminal.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::Global;
use crate::project::{parse_run_id, Access, Project, RunRecord};

#[derive(Args, Debug, Clone)]
pub struct ShowArgs {
    /// The run (42 or #42).
    pub id: String,
    /// Also write the image to this path.
    #[arg(long)]
    pub open: Option<PathBuf>,
    /// Print the record as JSON.
    #[arg(long)]
    pub json: bool,
    /// Do not print the image in the terminal.
    #[arg(long)]
    pub no_image: bool,
}

pub fn describe(project: &Project, r: &RunRecord) -> String {
    let rc = &r.recipe;
    let mut lines = vec![format!("{}  {}  {}", r.label(), r.status.name(), r.created)];
    if let Some(e) = &r.error {
        lines.push(format!("error:     {e}"));
    }
    lines.push(format!("prompt:    {}", rc.prompt));
    if !rc.negative.is_empty() {
        lines.push(format!("negative:  {}", rc.negative));
    }
    let steps = match r.steps_run {
        Some(n) => format!("{} ({n} run)", rc.steps),
        None => rc.steps.to_string(),
    };
    lines.push(format!(
        "settings:  strength {}  steps {steps}  guidance {}  seed {}  scheduler {}  size {}  fit {}{}",
        rc.strength,
        rc.guidance,
        rc.seed,
        rc.scheduler_label(),
        rc.size_label(),
        rc.fit,
        rc.crop.map(|c| format!("  crop {c}")).unwrap_or_default()
    ));
    lines.push(format!(
        "model:     {}{}",
        r.model.name,
        if r.model.fingerprint.is_empty() {
            String::new()
        } else {
            format!("  (weights {})", r.model.fingerprint)
        }
    ));
    let source_file = project
        .source_path(&r.source)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "missing".into());
    lines.push(format!(
        "source:    {}  {source_file}{}",
        &r.source[..r.source.len().min(12)],
        r.source_run
            .map(|s| format!("  (output of #{s})"))
            .unwrap_or_default()
    ));
    if let Some(p) = r.parent {
        lines.push(format!("parent:    #{p}"));
    }
    if let Some(t) = &r.timings {
        let steps: f64 = t.steps_s.iter().sum();
        lines.push(format!(
            "timings:   on {}: text {:.2} s, source {:.2} s, {} steps {:.2} s ({:.2} s/step), decode {:.2} s",
            r.device,
            t.encode_text_s,
            t.encode_source_s,
            t.steps_s.len(),
            steps,
            steps / t.steps_s.len().max(1) as f64,
            t.decode_s
        ));
    }
    if r.starred || !r.tags.is_empty() {
        lines.push(format!(
            "marks:     {}{}",
            if r.starred { "* " } else { "" },
            r.tags.join(", ")
        ));
    }
    if !r.note.is_empty() {
        lines.push(format!("note:      {}", r.note));
    }
    if r.status.has_image() {
        lines.push(format!("image:     {}", project.image_path(r.id).display()));
    }
    lines.join("\n")
}

pub fn run(args: ShowArgs, global: &Global) -> Result<()> {
    let root = Project::locate(global.project.as_deref())?;
    let project = Project::open(&root, Access::Read)?;
    let id = parse_run_id(&args.id)?;
    let record = project.record(id)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&super::history::run_json(&record))?
        );
    } else {
        println!("{}", describe(&project, &record));
    }
    let image = project.image_path(id);
    if let Some(to) = &args.open {
        std::fs::copy(&image, to)
            .with_context(|| format!("cannot write the image of #{id} to {}", to.display()))?;
        eprintln!("wrote {}", to.display());
    }
    if !args.no_image && !args.json && image.is_file() && std::io::stdout().is_terminal() {
        let config = viuer::Config {
            absolute_offset: false,
            width: Some(48),
            ..Default::default()
        };
        let img =
            image::open(&image).with_context(|| format!("cannot read {}", image.display()))?;
        // A terminal that cannot show images only loses the preview.
        if let Err(e) = viuer::print(&img, &config) {
            eprintln!("(cannot show the image here: {e})");
        }
    }
    Ok(())
}
