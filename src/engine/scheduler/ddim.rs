//! DDIM (deterministic, eta = 0), as diffusers' `DDIMScheduler`.

use anyhow::Result;
use candle_core::Tensor;

use super::config::{Params, PredictionType};
use super::schedule::{alphas_cumprod, spaced_timesteps};
use super::{NoiseFn, Scheduler};

pub struct Ddim {
    timesteps: Vec<f64>,
    acp: Vec<f64>,
    final_acp: f64,
    step_ratio: i64,
    prediction: PredictionType,
    clip_sample: Option<f64>,
}

impl Ddim {
    pub fn new(p: &Params, steps: usize) -> Result<Self> {
        let acp = alphas_cumprod(p)?;
        Ok(Self {
            timesteps: spaced_timesteps(p, steps, true),
            final_acp: if p.set_alpha_to_one { 1.0 } else { acp[0] },
            acp,
            step_ratio: (p.num_train_timesteps / steps) as i64,
            prediction: p.prediction_type,
            clip_sample: p.clip_sample,
        })
    }
}

/// `sqrt(acp[t]) * x0 + sqrt(1 - acp[t]) * noise`: the forward process.
pub fn ddpm_add_noise(acp: &[f64], t: f64, x0: &Tensor, noise: &Tensor) -> Result<Tensor> {
    let a = acp[t as usize];
    Ok(((x0 * a.sqrt())? + (noise * (1.0 - a).sqrt())?)?)
}

impl Scheduler for Ddim {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn add_noise(&self, x0: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        ddpm_add_noise(&self.acp, self.timesteps[index], x0, noise)
    }

    fn scale_model_input(&self, sample: &Tensor, _index: usize) -> Result<Tensor> {
        Ok(sample.clone())
    }

    fn step(
        &mut self,
        out: &Tensor,
        index: usize,
        sample: &Tensor,
        _: &mut NoiseFn,
    ) -> Result<Tensor> {
        let t = self.timesteps[index] as i64;
        let prev = t - self.step_ratio;
        let a_t = self.acp[t as usize];
        let a_prev = if prev >= 0 {
            self.acp[prev as usize]
        } else {
            self.final_acp
        };
        let b_t = 1.0 - a_t;
        let (mut x0, mut eps) = match self.prediction {
            PredictionType::Epsilon => {
                (((sample - (out * b_t.sqrt())?)? / a_t.sqrt())?, out.clone())
            }
            PredictionType::Sample => {
                (out.clone(), ((sample - (out * a_t.sqrt())?)? / b_t.sqrt())?)
            }
            PredictionType::VPrediction => (
                ((sample * a_t.sqrt())? - (out * b_t.sqrt())?)?,
                ((out * a_t.sqrt())? + (sample * b_t.sqrt())?)?,
            ),
        };
        if let Some(range) = self.clip_sample {
            x0 = x0.clamp(-range, range)?;
            // diffusers re-derives the noise from the clipped sample.
            eps = ((sample - (&x0 * a_t.sqrt())?)? / b_t.sqrt())?;
        }
        Ok(((x0 * a_prev.sqrt())? + (eps * (1.0 - a_prev).sqrt())?)?)
    }
}
