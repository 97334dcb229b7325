//! `atelier compare A B [C ...]`: the source and the runs side by side, each
//! labelled with the settings in which it differs from the others.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use super::Global;
use crate::project::{parse_run_id, Access, Project, RunRecord};
use crate::recipe::Recipe;

#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// Two or more runs (42 or #42).
    #[arg(required = true, num_args = 2..)]
    pub ids: Vec<String>,
    /// The sheet [default: the project's sheets/ folder].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Each recipe's settings as `name value` strings.
fn fields(r: &Recipe) -> Vec<(&'static str, String)> {
    vec![
        ("prompt", r.prompt.replace('\n', " ")),
        ("negative", r.negative.replace('\n', " ")),
        ("strength", r.strength.to_string()),
        ("steps", r.steps.to_string()),
        ("guidance", r.guidance.to_string()),
        ("seed", r.seed.to_string()),
        ("scheduler", r.scheduler_label().to_string()),
        ("size", r.size_label()),
        ("fit", r.fit.to_string()),
        (
            "crop",
            r.crop
                .map(|c| c.to_string())
                .unwrap_or_else(|| "none".into()),
        ),
        ("model", r.model.clone()),
    ]
}

/// For each record, the settings whose value is not the same in all of them.
pub fn differing(records: &[RunRecord]) -> Vec<Vec<String>> {
    let all: Vec<Vec<(&str, String)>> = records.iter().map(|r| fields(&r.recipe)).collect();
    let varies = |i: usize| all.iter().any(|f| f[i].1 != all[0][i].1);
    all.iter()
        .map(|f| {
            f.iter()
                .enumerate()
                .filter(|(i, _)| varies(*i))
                .map(|(_, (k, v))| format!("{k} {v}"))
                .collect()
        })
        .collect()
}

pub fn run(args: CompareArgs, global: &Global) -> Result<()> {
    let root = Project::locate(global.project.as_deref())?;
    let project = Project::open(&root, Access::Read)?;
    let ids: Vec<u64> = args
        .ids
        .iter()
        .map(|s| parse_run_id(s))
        .collect::<Result<_>>()?;
    let records: Vec<RunRecord> = ids
        .iter()
        .map(|&id| project.record(id))
        .collect::<Result<_>>()?;
    let diffs = differing(&records);
    let mut cells = Vec::new();
    let first = &records[0];
    if let Some(src) = project.source_path(&first.source) {
        cells.push(crate::sheet::Cell {
            image: crate::engine::source::load_source(&src)
                .ok()
                .map(|i| crate::engine::source::flatten_to_rgb(&i)),
            labels: vec![format!("source {}", &first.source[..8])],
            highlight: vec![],
        });
    }
    for (r, diff) in records.iter().zip(&diffs) {
        let path = project.image_path(r.id);
        if !r.status.has_image() {
            bail!(
                "run #{} has no image to compare (it is {})",
                r.id,
                r.status.name()
            );
        }
        cells.push(crate::sheet::Cell {
            image: image::open(&path).ok().map(|i| i.to_rgb8()),
            labels: vec![r.label()],
            highlight: if diff.is_empty() {
                vec!["(same recipe)".into()]
            } else {
                diff.clone()
            },
        });
    }
    let title = format!(
        "compare {}",
        ids.iter()
            .map(|i| format!("#{i}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let columns = cells.len();
    let sheet = crate::sheet::grid(&title, &[], &[], &cells, columns, 256);
    let name = ids
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join("-");
    let out = args
        .out
        .unwrap_or_else(|| project.sheets_dir().join(format!("compare-{name}.png")));
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    crate::png_meta::write_png(&out, &sheet, &[("parameters", &title)])?;
    for (r, diff) in records.iter().zip(&diffs) {
        println!(
            "{}: {}",
            r.label(),
            if diff.is_empty() {
                "(same recipe)".to_string()
            } else {
                diff.join(", ")
            }
        );
    }
    println!("sheet: {}", out.display());
    Ok(())
}
