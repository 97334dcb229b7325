//! Euler and Euler ancestral, as diffusers' `EulerDiscreteScheduler` and
//! `EulerAncestralDiscreteScheduler` (no churn).

use anyhow::Result;
use candle_core::Tensor;

use super::config::{Params, PredictionType};
use super::schedule::{alphas_cumprod, interp, karras, sigma_to_t, spaced_timesteps, train_sigmas};
use super::{NoiseFn, Scheduler};

pub struct Euler {
    timesteps: Vec<f64>,
    /// One more than the timesteps: the last is where the final step lands.
    sigmas: Vec<f64>,
    prediction: PredictionType,
    ancestral: bool,
}

impl Euler {
    pub fn new(p: &Params, steps: usize, ancestral: bool) -> Result<Self> {
        let mut acp = alphas_cumprod(p)?;
        if p.rescale_betas_zero_snr {
            // diffusers: avoid an infinite sigma at zero SNR.
            let last = acp.len() - 1;
            acp[last] = 2f64.powi(-24);
        }
        let train = train_sigmas(&acp);
        let mut timesteps = spaced_timesteps(p, steps, false);
        let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| interp(t, &train)).collect();
        if p.use_karras_sigmas {
            sigmas = karras(sigmas[0], sigmas[sigmas.len() - 1], steps);
            let log: Vec<f64> = train.iter().map(|s| s.ln()).collect();
            timesteps = sigmas.iter().map(|&s| sigma_to_t(s, &log)).collect();
        }
        sigmas.push(if p.final_sigma_zero { 0.0 } else { train[0] });
        // diffusers keeps sigmas and timesteps in f32.
        let f32_round = |x: f64| x as f32 as f64;
        Ok(Self {
            timesteps: timesteps.into_iter().map(f32_round).collect(),
            sigmas: sigmas.into_iter().map(f32_round).collect(),
            prediction: p.prediction_type,
            ancestral,
        })
    }
}

impl Scheduler for Euler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f64]> {
        Some(&self.sigmas)
    }

    fn add_noise(&self, x0: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        Ok((x0 + (noise * self.sigmas[index])?)?)
    }

    fn scale_model_input(&self, sample: &Tensor, index: usize) -> Result<Tensor> {
        let s = self.sigmas[index];
        Ok((sample / (s * s + 1.0).sqrt())?)
    }

    fn step(
        &mut self,
        out: &Tensor,
        index: usize,
        sample: &Tensor,
        noise: &mut NoiseFn,
    ) -> Result<Tensor> {
        let sigma = self.sigmas[index];
        let next = self.sigmas[index + 1];
        let x0 = match self.prediction {
            PredictionType::Epsilon => (sample - (out * sigma)?)?,
            PredictionType::Sample => out.clone(),
            PredictionType::VPrediction => {
                let s2 = sigma * sigma + 1.0;
                ((out * (-sigma / s2.sqrt()))? + (sample / s2)?)?
            }
        };
        let derivative = ((sample - x0)? / sigma)?;
        if !self.ancestral {
            return Ok((sample + (derivative * (next - sigma))?)?);
        }
        let up = (next * next * (sigma * sigma - next * next) / (sigma * sigma)).sqrt();
        let down = (next * next - up * up).sqrt();
        let prev = (sample + (derivative * (down - sigma))?)?;
        if up == 0.0 {
            return Ok(prev);
        }
        let fresh = noise(sample.dims())?.to_dtype(sample.dtype())?;
        Ok((prev + (fresh * up)?)?)
    }
}
