//! Runs as jobs: recorded in the project as `queued` before they run, then
//! `running`, then `done`, `failed` or `cancelled`, with the output PNG
//! written beside the record. Shared by the commands and the workstation's
//! worker; prints nothing.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Context, Result};

use crate::engine::device;
use crate::engine::{Cancelled, Engine, Event, Generation, Request, SourceInput};
use crate::project::{ModelRef, Project, RunRecord, Status};
use crate::recipe::Recipe;

/// What one run starts from.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRef {
    /// Content hash (the project's `sources/<hash>.*`).
    pub hash: String,
    pub file: PathBuf,
    /// The run whose output this is, in an img2img chain.
    pub run: Option<u64>,
}

/// One run to make.
#[derive(Debug, Clone)]
pub struct PlannedRun {
    /// An empty scheduler means the model's own; zero width/height the source's.
    pub recipe: Recipe,
    pub source: SourceRef,
    pub parent: Option<u64>,
    pub noise_file: Option<PathBuf>,
    /// Where to write the PNG outside a project (or a copy, inside one).
    pub out: Option<PathBuf>,
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub id: Option<u64>,
    pub path: PathBuf,
    pub recipe: Recipe,
    pub steps_run: usize,
}

/// Records the plans in the project as queued runs, with fresh ids.
pub fn queue(
    project: &Project,
    plans: Vec<PlannedRun>,
    device: &str,
) -> Result<Vec<(RunRecord, PlannedRun)>> {
    for plan in &plans {
        crate::models::check_name(&plan.recipe.model)?;
        check_size(plan)?;
    }
    let mut queued = Vec::new();
    for (id, plan) in (project.next_id()?..).zip(plans) {
        let record = RunRecord {
            id,
            created: crate::project::record::now_rfc3339(),
            status: Status::Queued,
            error: None,
            parent: plan.parent,
            source: plan.source.hash.clone(),
            source_run: plan.source.run,
            steps_run: None,
            device: device.to_string(),
            starred: false,
            tags: vec![],
            note: String::new(),
            recipe: plan.recipe.clone(),
            model: ModelRef {
                name: plan.recipe.model.clone(),
                ..Default::default()
            },
            timings: None,
        };
        project.write_record(&record)?;
        queued.push((record, plan));
    }
    Ok(queued)
}

/// Refuses, before anything is recorded, a size or crop the engine would
/// refuse (a phone photo at its own size, a crop past the source's edge):
/// that is a mistake in the request, not a failed run.
fn check_size(plan: &PlannedRun) -> Result<()> {
    let r = &plan.recipe;
    let Ok((sw, sh)) = crate::engine::source::oriented_dimensions(&plan.source.file) else {
        return Ok(()); // loading it will say what is wrong
    };
    let source = match r.crop {
        Some(c) if c.x as u64 + c.w as u64 > sw as u64 || c.y as u64 + c.h as u64 > sh as u64 => {
            bail!("crop {c} reaches outside the {sw}x{sh} source");
        }
        Some(c) => (c.w, c.h),
        None => (sw, sh),
    };
    let given = |side: u32| Some(side).filter(|s| *s > 0);
    crate::engine::source::output_size(source, given(r.width), given(r.height)).map(|_| ())
}

/// The plan of a queued record (to resume it after a restart).
pub fn plan_of(project: &Project, record: &RunRecord) -> Result<PlannedRun> {
    Ok(PlannedRun {
        recipe: record.recipe.clone(),
        source: source_of(project, record)?,
        parent: record.parent,
        noise_file: None,
        out: None,
    })
}

/// A run's output as a new source (the img2img chain): stored in the
/// project's sources, with the run recorded.
pub fn source_from_run(project: &Project, id: u64) -> Result<SourceRef> {
    let record = project.record(id)?;
    if !record.status.has_image() {
        bail!(
            "run #{id} has no output to use as a source (it is {})",
            record.status.name()
        );
    }
    let hash = project.add_source(&project.image_path(id))?;
    let file = project
        .source_path(&hash)
        .context("the source just stored is missing")?;
    Ok(SourceRef {
        hash,
        file,
        run: Some(id),
    })
}

/// The stored source a record refers to.
pub fn source_of(project: &Project, record: &RunRecord) -> Result<SourceRef> {
    let Some(file) = project.source_path(&record.source) else {
        bail!(
            "the source of #{} ({}) is missing from {}/sources",
            record.id,
            &record.source[..record.source.len().min(12)],
            project.root().display()
        );
    };
    Ok(SourceRef {
        hash: record.source.clone(),
        file,
        run: record.source_run,
    })
}

/// The engine request for a plan.
fn request(plan: &PlannedRun) -> Result<Request> {
    let r = &plan.recipe;
    Ok(Request {
        source: SourceInput::load(&plan.source.file)?,
        prompt: r.prompt.clone(),
        negative: r.negative.clone(),
        strength: r.strength,
        steps: r.steps,
        guidance: r.guidance,
        seed: r.seed,
        scheduler: if r.scheduler.is_empty() {
            None
        } else {
            Some(r.scheduler.parse()?)
        },
        width: Some(r.width).filter(|w| *w > 0),
        height: Some(r.height).filter(|h| *h > 0),
        crop: r.crop,
        fit: r.fit,
        noise_file: plan.noise_file.clone(),
    })
}

/// Loads the plan's model into the engine (kept if already loaded).
pub fn load_model(engine: &mut Engine, name: &str) -> Result<ModelRef> {
    let location = crate::models::resolve(name, engine.dtype() != candle_core::DType::F32)?;
    let model = match &location {
        crate::models::ModelLocation::Folder(dir) => engine.load(dir)?,
        crate::models::ModelLocation::SingleFile { file, base } => {
            engine.load_single_file(file, base)?
        }
    };
    Ok(ModelRef {
        name: name.to_string(),
        path: location.path().display().to_string(),
        fingerprint: model.fingerprint.clone(),
    })
}

/// The run's model could not be loaded (missing, corrupt, unreachable):
/// the message is the cause's.
#[derive(Debug)]
pub struct ModelUnavailable(anyhow::Error);

impl std::fmt::Display for ModelUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for ModelUnavailable {}

/// The recipe as run: the scheduler and size the engine actually used.
fn finished_recipe(plan: &PlannedRun, g: &Generation) -> Recipe {
    Recipe {
        scheduler: g.scheduler.name().to_string(),
        width: g.width,
        height: g.height,
        ..plan.recipe.clone()
    }
}

/// Runs one plan. With a project and its queued record, the record follows
/// the run's status; without, the output goes to `plan.out`.
pub fn execute(
    project: Option<&Project>,
    engine: &mut Engine,
    device: &str,
    record: Option<RunRecord>,
    plan: &PlannedRun,
    on_event: &mut dyn FnMut(Event),
    cancel: &AtomicBool,
) -> Result<Outcome> {
    // Every plan of this model would fail the same way: say so to callers
    // that go on past a failed run (a sweep).
    let model =
        load_model(engine, &plan.recipe.model).map_err(|e| anyhow::Error::new(ModelUnavailable(e)));
    let device = &device::label(device, engine.dtype());
    let (Some(project), Some(mut record)) = (project, record) else {
        model?;
        let generation = engine.generate(&request(plan)?, on_event, cancel)?;
        let out = plan
            .out
            .clone()
            .context("an output path is needed outside a project (--out)")?;
        let recipe = finished_recipe(plan, &generation);
        let embedded = serde_json::json!({
            "recipe": recipe,
            "steps_run": generation.steps_run,
            "timesteps_run": generation.timesteps_run,
            "device": device,
            "noise_file": plan.noise_file.as_ref().map(|p| p.display().to_string()),
            "timings": generation.timings,
        });
        write_output(&out, &generation, &recipe, &embedded)?;
        return Ok(Outcome {
            id: None,
            path: out,
            recipe,
            steps_run: generation.steps_run,
        });
    };

    let finish = |record: &mut RunRecord, status: Status, error: Option<String>| -> Result<()> {
        record.status = status;
        record.error = error;
        project.write_record(record)
    };
    record.model = match model {
        Ok(m) => m,
        Err(e) => {
            finish(&mut record, Status::Failed, Some(format!("{e:#}")))?;
            return Err(e);
        }
    };
    record.status = Status::Running;
    record.device = device.to_string();
    project.write_record(&record)?;
    let generation = match request(plan).and_then(|req| engine.generate(&req, on_event, cancel)) {
        Ok(g) => g,
        Err(e) if e.is::<Cancelled>() => {
            finish(&mut record, Status::Cancelled, None)?;
            return Err(e);
        }
        Err(e) => {
            finish(&mut record, Status::Failed, Some(format!("{e:#}")))?;
            return Err(e);
        }
    };
    record.recipe = finished_recipe(plan, &generation);
    record.steps_run = Some(generation.steps_run);
    record.timings = Some(generation.timings.clone());
    record.status = Status::Done;
    let image = project.image_path(record.id);
    if let Err(e) = write_output(
        &image,
        &generation,
        &record.recipe,
        &serde_json::to_value(&record)?,
    ) {
        // The record keeps the recipe with its seed, so a rerun makes the
        // same image once there is room; if even the record cannot be
        // written, the next writer marks it interrupted.
        let id = record.id;
        let error = anyhow::anyhow!(
            "#{id} was not saved: {e:#}. Its recipe is kept: `atelier rerun {id}` makes it again"
        );
        let _ = finish(&mut record, Status::Failed, Some(format!("{error:#}")));
        return Err(error);
    }
    project.write_record(&record)?;
    if let Some(out) = &plan.out {
        std::fs::copy(&image, out)
            .with_context(|| format!("cannot copy the output to {}", out.display()))?;
    }
    Ok(Outcome {
        id: Some(record.id),
        path: image,
        recipe: record.recipe,
        steps_run: generation.steps_run,
    })
}

/// Writes the PNG with A1111 parameters and atelier's record, or the f32
/// image for a `.safetensors` name.
fn write_output(
    path: &Path,
    g: &Generation,
    recipe: &Recipe,
    record: &serde_json::Value,
) -> Result<()> {
    if path.extension().is_some_and(|e| e == "safetensors") {
        let tensors = std::collections::HashMap::from([("image".to_string(), g.pixels.clone())]);
        return candle_core::safetensors::save(&tensors, path)
            .with_context(|| format!("cannot write {}", path.display()));
    }
    // write_png's errors name the file.
    crate::png_meta::write_png(
        path,
        &g.image,
        &[
            ("parameters", &recipe.to_infotext(g.scheduler.a1111_name())),
            ("atelier", &serde_json::to_string(record)?),
        ],
    )
}
