//! `atelier gen`: img2img from the command line. Inside a project the run is
//! recorded (the output lives in its run folder; `--out` is optional and
//! gets a copy); outside one, `--out` names the PNG.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use super::runner::{PlannedRun, RunnerArgs, SourceRef};
use super::Global;
use crate::engine::{CropRect, Fit, SchedulerKind};
use crate::project::{parse_run_id, Access, Project};
use crate::recipe::Recipe;

pub const DEFAULT_STRENGTH: f64 = 0.6;
pub const DEFAULT_STEPS: usize = 30;
pub const DEFAULT_GUIDANCE: f64 = 7.5;

#[derive(Args, Debug, Clone)]
pub struct GenArgs {
    /// Model: a diffusers folder, a Hugging Face repo (org/name) or an alias
    /// [default: the project's model, else sd-turbo].
    #[arg(long)]
    pub model: Option<String>,
    /// The source image; inside a project also a run id (#12), whose output
    /// becomes the source.
    #[arg(long)]
    pub source: String,
    /// What the output should show.
    #[arg(long)]
    pub prompt: String,
    /// What it should not show (the guidance steers away from it).
    #[arg(long, default_value = "")]
    pub negative: String,
    /// How far the output may move from the source: 0 keeps it, 1 ignores it [default: 0.6].
    #[arg(long)]
    pub strength: Option<f64>,
    /// Length of the whole schedule [default: 30; 4 for turbo models].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale; 1 or less turns it off [default: 7.5; 0 for turbo models].
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Seed of the first image; random (and recorded) when absent.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Variations: image i uses seed + i (at most 100).
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    /// ddim, euler, euler_a, dpmpp_2m, dpmpp_2m_karras or pndm [default: the model's own].
    #[arg(long)]
    pub scheduler: Option<SchedulerKind>,
    /// Output width in pixels, rounded down to a multiple of 8 [default:
    /// the source's; with only --height, the source's aspect].
    #[arg(long)]
    pub width: Option<u32>,
    /// Output height, as --width.
    #[arg(long)]
    pub height: Option<u32>,
    /// A rectangle of the source to use: X,Y,W,H in pixels.
    #[arg(long)]
    pub crop: Option<CropRect>,
    /// How the source is fitted to the size: crop, pad or stretch.
    #[arg(long, default_value = "crop")]
    pub fit: Fit,
    /// Initial noise from a safetensors file (`init_noise`, f32 [1, 4, h/8, w/8]).
    #[arg(long)]
    pub noise: Option<PathBuf>,
    /// The output PNG; with --count N, FILE-1.png ... FILE-N.png. A
    /// `.safetensors` name writes the f32 image (`image`, [3, h, w] in [0, 1]).
    /// Required outside a project.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub run: RunnerArgs,
}

/// `FILE.png` for one image, `FILE-i.png` (1-based) for several.
pub fn output_path(out: &Path, index: usize, count: usize) -> PathBuf {
    if count <= 1 {
        return out.to_path_buf();
    }
    let stem = out.file_stem().unwrap_or_default().to_string_lossy();
    let ext = out
        .extension()
        .map(|e| e.to_string_lossy().to_string())
        .unwrap_or_else(|| "png".into());
    out.with_file_name(format!("{stem}-{}.{ext}", index + 1))
}

/// The project for a writing command: `--project`, or found from here; None
/// outside any project when `optional`.
pub fn open_project(global: &Global, optional: bool, access: Access) -> Result<Option<Project>> {
    let root = match Project::locate(global.project.as_deref()) {
        Ok(root) => root,
        Err(_) if optional && global.project.is_none() => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(Some(Project::open(&root, access)?))
}

/// A source given as a file (added to the project) or as a run id.
pub fn resolve_source(project: Option<&Project>, source: &str) -> Result<SourceRef> {
    let path = Path::new(source);
    if !path.exists() {
        if let (Some(project), Ok(id)) = (project, parse_run_id(source)) {
            return crate::jobs::source_from_run(project, id);
        }
    }
    match project {
        Some(project) => {
            let hash = project.add_source(path)?;
            let file = project.source_path(&hash).expect("just stored");
            Ok(SourceRef {
                hash,
                file,
                run: None,
            })
        }
        None => {
            // Checked here so a bad source fails before the model loads.
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot open the source image {}", path.display()))?;
            crate::engine::source::decode_source(&bytes, path)?;
            Ok(SourceRef {
                hash: crate::hash::hex_digest(&bytes),
                file: path.to_path_buf(),
                run: None,
            })
        }
    }
}

/// The most variations one `gen` makes.
const MAX_COUNT: usize = 100;

pub fn run(args: GenArgs, global: &Global) -> Result<()> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    // Every variation is recorded as queued before the first runs: a typo
    // of a few zeros would fill the project with runs the workstation then
    // resumes.
    if args.count > MAX_COUNT {
        bail!(
            "--count {} is more than {MAX_COUNT} variations at once",
            args.count
        );
    }
    let project = open_project(global, true, Access::Write)?;
    if project.is_none() && args.out.is_none() {
        bail!("--out is required outside a project (or run `atelier init` to keep every run)");
    }
    if let Some(parent) = args
        .out
        .as_deref()
        .and_then(Path::parent)
        .filter(|p| !p.as_os_str().is_empty())
    {
        if !parent.is_dir() {
            bail!("the output folder {} does not exist", parent.display());
        }
    }
    let settings = project
        .as_ref()
        .map(|p| p.settings.clone())
        .unwrap_or_default();
    let source = resolve_source(project.as_ref(), &args.source)?;
    let model = args
        .model
        .clone()
        .or(settings.model.clone())
        .unwrap_or_else(|| crate::models::DEFAULT_MODEL.to_string());
    let (model_steps, model_guidance) = crate::models::recommended_steps_guidance(&model);
    let recipe = Recipe {
        prompt: args.prompt.clone(),
        negative: args.negative.clone(),
        strength: args
            .strength
            .or(settings.strength)
            .unwrap_or(DEFAULT_STRENGTH),
        steps: args.steps.or(settings.steps).unwrap_or(model_steps),
        guidance: args
            .guidance
            .or(settings.guidance)
            .unwrap_or(model_guidance),
        seed: args.seed.unwrap_or_else(|| rand::random::<u32>() as u64),
        scheduler: args
            .scheduler
            .map(|k| k.name().to_string())
            .or(settings.scheduler.clone())
            .unwrap_or_default(),
        width: args.width.unwrap_or(0),
        height: args.height.unwrap_or(0),
        crop: args.crop,
        fit: args.fit,
        model,
    };
    crate::engine::pipeline::validate_settings(recipe.strength, recipe.steps, recipe.guidance)?;
    let plans = (0..args.count)
        .map(|i| PlannedRun {
            recipe: Recipe {
                seed: recipe.seed.wrapping_add(i as u64),
                ..recipe.clone()
            },
            source: source.clone(),
            parent: source.run,
            noise_file: args.noise.clone(),
            out: args.out.as_deref().map(|o| output_path(o, i, args.count)),
        })
        .collect();
    let mut runner = args.run.runner(project.as_ref())?;
    for o in runner.run_all(project.as_ref(), plans)? {
        let id = o.id.map(|id| format!("#{id}  ")).unwrap_or_default();
        println!(
            "{id}{}  seed {}  {} steps",
            o.path.display(),
            o.recipe.seed,
            o.steps_run
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_names_outputs_with_a_suffix() {
        assert_eq!(
            output_path(Path::new("a/night.png"), 0, 1),
            PathBuf::from("a/night.png")
        );
        assert_eq!(
            output_path(Path::new("a/night.png"), 0, 3),
            PathBuf::from("a/night-1.png")
        );
        assert_eq!(
            output_path(Path::new("night.png"), 2, 3),
            PathBuf::from("night-3.png")
        );
    }
}
