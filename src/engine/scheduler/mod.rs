//! Schedulers as diffusers computes them, read from `scheduler_config.json`.
//! A config can be run with another scheduler class, as diffusers'
//! `from_config` does: the shared parameters (betas, prediction type,
//! spacing, offset) carry over and each class fills in its own defaults.

mod config;
mod ddim;
mod dpm;
mod euler;
mod pndm;
mod schedule;

pub use config::{PredictionType, SchedulerConfig, SchedulerKind, Spacing};
pub use schedule::{alphas_cumprod, interp};

use anyhow::Result;
use candle_core::Tensor;

/// Draws fresh standard-normal noise of a shape (ancestral samplers need it
/// every step).
pub type NoiseFn<'a> = dyn FnMut(&[usize]) -> Result<Tensor> + 'a;

/// One scheduler, set up for a number of inference steps. Indices are
/// positions in `timesteps()`; img2img starts part-way through.
pub trait Scheduler: Send {
    /// The whole schedule, first (noisiest) to last.
    fn timesteps(&self) -> &[f64];
    /// The noise levels of sigma-based schedulers (one more than the
    /// timesteps); None for the alpha-based ones.
    fn sigmas(&self) -> Option<&[f64]> {
        None
    }
    /// Noise `x0` to the level of schedule position `index`.
    fn add_noise(&self, x0: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor>;
    /// What the UNet sees at position `index`.
    fn scale_model_input(&self, sample: &Tensor, index: usize) -> Result<Tensor>;
    /// One denoising step from position `index`.
    fn step(
        &mut self,
        model_output: &Tensor,
        index: usize,
        sample: &Tensor,
        noise: &mut NoiseFn,
    ) -> Result<Tensor>;
}

/// Builds the scheduler of `kind` (or the config's own) for `steps` steps.
pub fn build(
    config: &SchedulerConfig,
    kind: SchedulerKind,
    steps: usize,
) -> Result<Box<dyn Scheduler>> {
    let params = config.resolve(kind)?;
    if steps == 0 || steps > params.num_train_timesteps {
        anyhow::bail!(
            "{steps} steps: the schedule has {} training timesteps; use 1 to {}",
            params.num_train_timesteps,
            params.num_train_timesteps
        );
    }
    let scheduler: Box<dyn Scheduler> = match kind {
        SchedulerKind::Ddim => Box::new(ddim::Ddim::new(&params, steps)?),
        SchedulerKind::Euler => Box::new(euler::Euler::new(&params, steps, false)?),
        SchedulerKind::EulerAncestral => Box::new(euler::Euler::new(&params, steps, true)?),
        SchedulerKind::DpmPp2m | SchedulerKind::DpmPp2mKarras => {
            Box::new(dpm::DpmMultistep::new(&params, steps)?)
        }
        SchedulerKind::Pndm => Box::new(pndm::Pndm::new(&params, steps)?),
    };
    // diffusers would index past its tables here; say why instead.
    let last = params.num_train_timesteps as f64 - 1.0;
    if let Some(t) = scheduler
        .timesteps()
        .iter()
        .find(|t| !(0.0..=last).contains(*t))
    {
        anyhow::bail!(
            "{kind} with {steps} steps reaches timestep {t}, outside the {} training timesteps \
             (`steps_offset` {} shifts the schedule); use fewer steps",
            params.num_train_timesteps,
            params.steps_offset
        );
    }
    Ok(scheduler)
}

/// diffusers' img2img `get_timesteps`: how many of the schedule's steps run
/// for a strength, and where they start. None when no step would run.
pub fn img2img_start(total_positions: usize, steps: usize, strength: f64) -> Option<usize> {
    let init = ((steps as f64 * strength) as usize).min(steps);
    if init == 0 {
        return None;
    }
    // Schedules with extra positions (PNDM's repeated step) keep them.
    let t_start = steps - init;
    (t_start < total_positions).then_some(t_start)
}
