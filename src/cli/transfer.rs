//! `atelier export` and `atelier import`: PNGs with their settings, in and out.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use super::gen::open_project;
use super::Global;
use crate::infotext::Infotext;
use crate::project::{parse_run_id, Access, ModelRef, Project, RunRecord, Status};
use crate::recipe::Recipe;

#[derive(Args, Debug, Clone)]
pub struct ExportArgs {
    /// Runs to export (42 or #42).
    #[arg(required = true)]
    pub ids: Vec<String>,
    /// The folder to write `atelier-<id>.png` into (created if missing), or,
    /// for one run, a file name ending in .png.
    #[arg(long)]
    pub to: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct ImportArgs {
    /// PNGs from atelier, A1111, Fooocus or sd.cpp.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

pub fn export(args: ExportArgs, global: &Global) -> Result<()> {
    let root = Project::locate(global.project.as_deref())?;
    let project = Project::open(&root, Access::Read)?;
    // Every run is checked before anything is written.
    let mut ids = Vec::new();
    for id in &args.ids {
        let id = parse_run_id(id)?;
        let record = project.record(id)?;
        if !record.status.has_image() {
            bail!(
                "run #{id} has no image to export (it is {})",
                record.status.name()
            );
        }
        ids.push(id);
    }
    let to_file = !args.to.is_dir()
        && args
            .to
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if to_file && ids.len() > 1 {
        bail!(
            "--to {} names one file, for {} runs; give a folder instead",
            args.to.display(),
            ids.len()
        );
    }
    let folder = if to_file {
        args.to.parent().unwrap_or(Path::new("")).to_path_buf()
    } else {
        args.to.clone()
    };
    if !folder.as_os_str().is_empty() {
        std::fs::create_dir_all(&folder)
            .with_context(|| format!("cannot create {}", folder.display()))?;
    }
    for id in ids {
        let to = if to_file {
            args.to.clone()
        } else {
            folder.join(format!("atelier-{id}.png"))
        };
        // The PNG already carries the parameters text and the record.
        let bytes = std::fs::read(project.image_path(id))?;
        crate::atomic::write_atomic(&to, &bytes)?;
        println!("{}", to.display());
    }
    Ok(())
}

/// The recipe a PNG carries: atelier's own record first, else the
/// `parameters` text of A1111, Fooocus or sd.cpp.
pub fn recipe_of_png(file: &Path, defaults: &Recipe) -> Result<(Recipe, Option<RunRecord>)> {
    let texts = crate::png_meta::read_png_texts(file)?;
    let text = |key: &str| {
        texts
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    if let Some(json) = text("atelier") {
        let value: serde_json::Value = serde_json::from_str(json)
            .with_context(|| format!("{}: the atelier record is damaged", file.display()))?;
        if let Ok(record) = serde_json::from_value::<RunRecord>(value.clone()) {
            return Ok((record.recipe.clone(), Some(record)));
        }
        if let Some(recipe) = value
            .get("recipe")
            .and_then(|r| serde_json::from_value::<Recipe>(r.clone()).ok())
        {
            return Ok((recipe, None));
        }
    }
    let Some(params) = text("parameters").or(text("Comment")) else {
        bail!(
            "{} has no generation parameters (no `parameters` or `atelier` text in the PNG); \
             it can still be used as a source with `atelier gen --source`",
            file.display()
        );
    };
    let info = Infotext::parse(params)
        .with_context(|| format!("{}: cannot read the parameters", file.display()))?;
    Ok((Recipe::from_infotext(&info, defaults), None))
}

fn import_one(project: &Project, file: &Path) -> Result<u64> {
    let img = crate::engine::source::load_source(file)?;
    let defaults = Recipe {
        prompt: String::new(),
        negative: String::new(),
        strength: super::gen::DEFAULT_STRENGTH,
        steps: super::gen::DEFAULT_STEPS,
        guidance: super::gen::DEFAULT_GUIDANCE,
        seed: 0,
        scheduler: String::new(),
        width: img.width() - img.width() % 8,
        height: img.height() - img.height() % 8,
        crop: None,
        fit: Default::default(),
        model: project
            .settings
            .model
            .clone()
            .unwrap_or_else(|| crate::models::DEFAULT_MODEL.to_string()),
    };
    let (recipe, original) = recipe_of_png(file, &defaults)?;
    // The image itself becomes the run's output and its source: a rerun
    // transforms it with the recipe it came with.
    let bytes = std::fs::read(file)?;
    let hash = project.add_source_bytes(&bytes, "png")?;
    let id = project.next_id()?;
    let record = RunRecord {
        id,
        created: crate::project::record::now_rfc3339(),
        status: Status::Imported,
        error: None,
        parent: None,
        source: hash,
        source_run: None,
        steps_run: original.as_ref().and_then(|r| r.steps_run),
        device: String::new(),
        starred: false,
        tags: vec![],
        note: format!("imported from {}", file.display()),
        model: original.map(|r| r.model).unwrap_or(ModelRef {
            name: recipe.model.clone(),
            ..Default::default()
        }),
        recipe,
        timings: None,
    };
    std::fs::create_dir_all(project.run_dir(id))?;
    crate::atomic::write_atomic(&project.image_path(id), &bytes)?;
    project.write_record(&record)?;
    Ok(id)
}

pub fn import(args: ImportArgs, global: &Global) -> Result<()> {
    let project = open_project(global, false, Access::Write)?.expect("required");
    let mut failed = 0;
    for file in &args.files {
        match import_one(&project, file) {
            Ok(id) => println!("#{id}  imported {}", file.display()),
            Err(e) => {
                eprintln!("error: {e:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!(
            "{failed} of {} files could not be imported",
            args.files.len()
        );
    }
    Ok(())
}
