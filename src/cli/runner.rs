//! Running recipes: loads the model once, runs each recipe with a progress
//! bar, and writes the output, into the project (queued, running, then
//! done, failed or cancelled) or to a plain file.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::engine::device::{default_device_name, open_device, parse_dtype};
use crate::engine::{Cancelled, Engine, Event, Generation, Request, SourceInput};
use crate::project::{ModelRef, Project, RunRecord, Status};
use crate::recipe::Recipe;

/// What one run starts from.
#[derive(Clone)]
pub struct SourceRef {
    /// Content hash (the project's `sources/<hash>.*`).
    pub hash: String,
    pub file: PathBuf,
    /// The run whose output this is, in an img2img chain.
    pub run: Option<u64>,
}

/// One run to make.
#[derive(Clone)]
pub struct PlannedRun {
    pub recipe: Recipe,
    pub source: SourceRef,
    pub parent: Option<u64>,
    pub noise_file: Option<PathBuf>,
    /// Where to write the PNG outside a project (or a copy, inside one).
    pub out: Option<PathBuf>,
}

/// A finished run.
pub struct Outcome {
    pub id: Option<u64>,
    pub path: PathBuf,
    pub recipe: Recipe,
    pub steps_run: usize,
}

pub struct Runner {
    engine: Engine,
    device_name: String,
    cancel: Arc<AtomicBool>,
    pub quiet: bool,
}

impl Runner {
    /// `dtype` overrides the device's default precision (f32 on the CPU,
    /// f16 on GPUs).
    pub fn new(device: Option<&str>, dtype: Option<&str>, quiet: bool) -> Result<Self> {
        let device_name = device
            .map(String::from)
            .unwrap_or_else(|| default_device_name().to_string());
        let (device, default_dtype) = open_device(&device_name)?;
        let dtype = match dtype {
            Some(d) => parse_dtype(d)?,
            None => default_dtype,
        };
        if device.is_cpu() && dtype == candle_core::DType::BF16 {
            anyhow::bail!("bf16 does not run on the CPU (candle has no CPU bf16 matmul); use f32");
        }
        let cancel = Arc::new(AtomicBool::new(false));
        {
            let cancel = cancel.clone();
            // A second Ctrl-C while stopping exits at once.
            let _ = ctrlc::set_handler(move || {
                if cancel.swap(true, Ordering::SeqCst) {
                    std::process::exit(130);
                }
                eprintln!("\ncancelling after the current step...");
            });
        }
        Ok(Self {
            engine: Engine::new(device, dtype),
            device_name,
            cancel,
            quiet,
        })
    }

    fn model_ref(&mut self, name: &str) -> Result<ModelRef> {
        let dir = crate::models::resolve_model(name)?;
        if !self.quiet && self.engine.model().is_none_or(|m| m.dir != dir) {
            eprintln!("loading {} on {}...", dir.display(), self.device_name);
        }
        let model = self.engine.load(&dir)?;
        Ok(ModelRef {
            name: name.to_string(),
            path: dir.display().to_string(),
            fingerprint: model.fingerprint.clone(),
        })
    }

    fn generate(&mut self, plan: &PlannedRun, label: &str) -> Result<Generation> {
        let r = &plan.recipe;
        let req = Request {
            source: SourceInput::load(&plan.source.file)?,
            prompt: r.prompt.clone(),
            negative: r.negative.clone(),
            strength: r.strength,
            steps: r.steps,
            guidance: r.guidance,
            seed: r.seed,
            // Empty: the model's own scheduler (recorded once known).
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
        };
        let bar = ProgressBar::with_draw_target(
            None,
            if self.quiet {
                ProgressDrawTarget::hidden()
            } else {
                ProgressDrawTarget::stderr()
            },
        );
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} steps {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        let quiet = self.quiet;
        let seed = r.seed;
        let total = r.steps;
        let mut on_event = |event: Event| match event {
            Event::Planned {
                steps_run,
                width,
                height,
                scheduler,
                ..
            } => {
                bar.set_length(steps_run as u64);
                if !quiet {
                    bar.suspend(|| {
                        eprintln!("{label}: seed {seed}, {steps_run} of {total} steps will run ({scheduler}, {width}x{height})")
                    });
                }
            }
            Event::Step { index, seconds, .. } => {
                bar.set_position(index as u64);
                bar.set_message(format!("{seconds:.2} s/step"));
            }
            Event::Decoding => bar.set_message("decoding"),
        };
        let result = self.engine.generate(&req, &mut on_event, &self.cancel);
        bar.finish_and_clear();
        result
    }

    /// Runs every plan. In a project, all are first recorded as queued (so
    /// a sweep is visible, and survives, before it runs).
    pub fn run_all(
        &mut self,
        project: Option<&Project>,
        plans: Vec<PlannedRun>,
    ) -> Result<Vec<Outcome>> {
        let mut queued: Vec<(Option<RunRecord>, PlannedRun)> = Vec::new();
        if let Some(project) = project {
            for (next, plan) in (project.next_id()?..).zip(plans) {
                let record = RunRecord {
                    id: next,
                    created: crate::project::record::now_rfc3339(),
                    status: Status::Queued,
                    error: None,
                    parent: plan.parent,
                    source: plan.source.hash.clone(),
                    source_run: plan.source.run,
                    steps_run: None,
                    device: self.device_name.clone(),
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
                queued.push((Some(record), plan));
            }
        } else {
            queued = plans.into_iter().map(|p| (None, p)).collect();
        }

        let count = queued.len();
        let mut outcomes = Vec::new();
        for (i, (record, plan)) in queued.into_iter().enumerate() {
            let label = match &record {
                Some(r) => format!("{} ({}/{count})", r.label(), i + 1),
                None => format!("image {}/{count}", i + 1),
            };
            let outcome = self.run_one(project, record, plan, &label);
            match outcome {
                Ok(o) => outcomes.push(o),
                Err(e) if e.is::<Cancelled>() => {
                    eprintln!("cancelled");
                    // What was still queued stays queued, in the project.
                    std::process::exit(130);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(outcomes)
    }

    fn run_one(
        &mut self,
        project: Option<&Project>,
        record: Option<RunRecord>,
        plan: PlannedRun,
        label: &str,
    ) -> Result<Outcome> {
        let model = self.model_ref(&plan.recipe.model);
        let (Some(project), Some(mut record)) = (project, record) else {
            model?;
            let generation = self.generate(&plan, label)?;
            let out = plan
                .out
                .clone()
                .context("an output path is needed outside a project (--out)")?;
            let recipe = finished_recipe(&plan, &generation);
            write_output(
                &out,
                &generation,
                &recipe,
                &serde_json::json!({
                    "recipe": recipe,
                    "steps_run": generation.steps_run,
                    "timesteps_run": generation.timesteps_run,
                    "device": self.device_name,
                    "noise_file": plan.noise_file.as_ref().map(|p| p.display().to_string()),
                    "timings": generation.timings,
                }),
            )?;
            return Ok(Outcome {
                id: None,
                path: out,
                recipe,
                steps_run: generation.steps_run,
            });
        };

        record.status = Status::Running;
        let fail = |record: &mut RunRecord, status: Status, error: Option<String>| -> Result<()> {
            record.status = status;
            record.error = error;
            project.write_record(record)
        };
        match model {
            Ok(m) => record.model = m,
            Err(e) => {
                fail(&mut record, Status::Failed, Some(format!("{e:#}")))?;
                return Err(e);
            }
        }
        project.write_record(&record)?;
        let generation = match self.generate(&plan, label) {
            Ok(g) => g,
            Err(e) if e.is::<Cancelled>() => {
                fail(&mut record, Status::Cancelled, None)?;
                return Err(e);
            }
            Err(e) => {
                fail(&mut record, Status::Failed, Some(format!("{e:#}")))?;
                return Err(e);
            }
        };
        record.recipe = finished_recipe(&plan, &generation);
        record.steps_run = Some(generation.steps_run);
        record.timings = Some(generation.timings.clone());
        record.status = Status::Done;
        let image = project.image_path(record.id);
        let embedded = serde_json::to_value(&record)?;
        write_output(&image, &generation, &record.recipe, &embedded)?;
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
}

/// The recipe as run: the scheduler and size the engine actually used.
fn finished_recipe(plan: &PlannedRun, g: &Generation) -> Recipe {
    Recipe {
        scheduler: g.scheduler.name().to_string(),
        width: g.width,
        height: g.height,
        ..plan.recipe.clone()
    }
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
    crate::png_meta::write_png(
        path,
        &g.image,
        &[
            ("parameters", &recipe.to_infotext(g.scheduler.a1111_name())),
            ("atelier", &serde_json::to_string(record)?),
        ],
    )
    .with_context(|| format!("cannot write {}", path.display()))
}
