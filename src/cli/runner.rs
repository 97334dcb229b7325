//! Running recipes from the command line: the model loaded once, a progress
//! bar per run, Ctrl-C to cancel after the current step.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Result;
use candle_core::{DType, Device};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::engine::device::default_device_name;
use crate::engine::{Cancelled, Engine, Event};
pub use crate::jobs::{Outcome, PlannedRun, SourceRef};

/// A run that failed, where the runner went on past it.
#[derive(Debug)]
pub struct Failed {
    /// Its record, in a project.
    pub id: Option<u64>,
    pub error: anyhow::Error,
}
use crate::project::{Project, RunRecord, Settings};

/// Where generation runs and in what precision: the flags of the
/// workstation and of the commands that generate.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DeviceArgs {
    /// cpu, cuda, cuda:N or metal [default: the project's, else the best available].
    #[arg(long)]
    pub device: Option<String>,
    /// f32, f16 or bf16 [default: the project's, else f32 on the CPU and f16 on GPUs].
    #[arg(long)]
    pub dtype: Option<String>,
}

impl DeviceArgs {
    /// The flags first, then the project's settings, then the best device
    /// and its default precision: (the device's name, the device, the
    /// dtype).
    pub fn open(&self, settings: Option<&Settings>) -> Result<(String, Device, DType)> {
        let device_name = (self.device.as_deref())
            .or(settings.and_then(|s| s.device.as_deref()))
            .unwrap_or_else(|| default_device_name())
            .to_string();
        let dtype = (self.dtype.as_deref()).or(settings.and_then(|s| s.dtype.as_deref()));
        let (device, dtype) = crate::engine::device::resolve(Some(&device_name), dtype)?;
        Ok((device_name, device, dtype))
    }
}

/// The flags of the commands that generate (`gen`, `rerun`, `sweep`):
/// where runs go and how much they print.
#[derive(clap::Args, Debug, Clone)]
pub struct RunnerArgs {
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Print no progress.
    #[arg(long)]
    pub quiet: bool,
}

impl RunnerArgs {
    /// A runner for these flags (see [`DeviceArgs::open`]).
    pub fn runner(&self, project: Option<&Project>) -> Result<Runner> {
        let (device_name, device, dtype) = self.device.open(project.map(|p| &p.settings))?;
        Ok(Runner::new(device_name, device, dtype, self.quiet))
    }
}

pub struct Runner {
    engine: Engine,
    device_name: String,
    cancel: Arc<AtomicBool>,
    pub quiet: bool,
}

impl Runner {
    fn new(device_name: String, device: Device, dtype: DType, quiet: bool) -> Self {
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
        Self {
            engine: Engine::new(device, dtype),
            device_name,
            cancel,
            quiet,
        }
    }

    /// Runs every plan, stopping at the first that fails. In a project, all
    /// are first recorded as queued (so a sweep is visible, and survives,
    /// before it runs). A cancel ends the process; what was still queued
    /// stays queued in the project.
    pub fn run_all(
        &mut self,
        project: Option<&Project>,
        plans: Vec<PlannedRun>,
    ) -> Result<Vec<Outcome>> {
        self.run_plans(project, plans, false)?
            .into_iter()
            .map(|ended| ended.map_err(|failed| failed.error))
            .collect()
    }

    /// As [`Runner::run_all`], going on past a run that fails (its record
    /// says why), unless its model could not be loaded, which every run
    /// after it would repeat: a sweep's other cells still come.
    pub fn run_each(
        &mut self,
        project: Option<&Project>,
        plans: Vec<PlannedRun>,
    ) -> Result<Vec<std::result::Result<Outcome, Failed>>> {
        self.run_plans(project, plans, true)
    }

    fn run_plans(
        &mut self,
        project: Option<&Project>,
        plans: Vec<PlannedRun>,
        keep_going: bool,
    ) -> Result<Vec<std::result::Result<Outcome, Failed>>> {
        let queued: Vec<(Option<RunRecord>, PlannedRun)> = match project {
            Some(project) => crate::jobs::queue(project, plans, &self.device_name)?
                .into_iter()
                .map(|(r, p)| (Some(r), p))
                .collect(),
            None => plans.into_iter().map(|p| (None, p)).collect(),
        };
        let count = queued.len();
        let mut outcomes = Vec::new();
        for (i, (record, plan)) in queued.into_iter().enumerate() {
            let record_id = record.as_ref().map(|r| r.id);
            let label = match &record {
                Some(r) => format!("{} ({}/{count})", r.label(), i + 1),
                None => format!("image {}/{count}", i + 1),
            };
            let bar = self.progress_bar(&label);
            let (quiet, seed, total) = (self.quiet, plan.recipe.seed, plan.recipe.steps);
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
            if !self.quiet && self.engine.model().is_none() {
                bar.suspend(|| {
                    eprintln!("loading {} on {}...", plan.recipe.model, self.device_name)
                });
            }
            let result = crate::jobs::execute(
                project,
                &mut self.engine,
                &self.device_name,
                record,
                &plan,
                &mut on_event,
                &self.cancel,
            );
            bar.finish_and_clear();
            match result {
                Ok(o) => outcomes.push(Ok(o)),
                Err(e) if e.is::<Cancelled>() => {
                    eprintln!("cancelled: nothing written for {label}");
                    std::process::exit(130);
                }
                Err(e) if keep_going && !e.is::<crate::jobs::ModelUnavailable>() => {
                    eprintln!("{label} failed: {e:#}");
                    outcomes.push(Err(Failed {
                        id: record_id,
                        error: e,
                    }));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(outcomes)
    }

    fn progress_bar(&self, label: &str) -> ProgressBar {
        let target = if self.quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} steps {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        bar
    }
}
