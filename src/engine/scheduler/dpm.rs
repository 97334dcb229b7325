//! DPM-Solver++ 2M (and DPM-Solver 2M), multistep, midpoint, as diffusers'
//! `DPMSolverMultistepScheduler`; with Karras sigmas for "DPM++ 2M Karras".

use anyhow::Result;
use candle_core::Tensor;

use super::config::{Params, PredictionType, Spacing};
use super::schedule::{alphas_cumprod, interp, karras, linspace, round, sigma_to_t, train_sigmas};
use super::{NoiseFn, Scheduler};

pub struct DpmMultistep {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    p: Params,
    /// Converted outputs of the previous and current step (oldest first).
    outputs: Vec<Tensor>,
    lower_order_nums: usize,
}

fn alpha_sigma(sigma: f64) -> (f64, f64) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

fn lambda(sigma: f64) -> f64 {
    let (a, s) = alpha_sigma(sigma);
    a.ln() - s.ln()
}

impl DpmMultistep {
    pub fn new(p: &Params, steps: usize) -> Result<Self> {
        let acp = alphas_cumprod(p)?;
        let train = train_sigmas(&acp);
        let t = p.num_train_timesteps;
        let mut timesteps: Vec<f64> = match p.timestep_spacing {
            Spacing::Linspace => {
                let mut v: Vec<f64> = linspace(0.0, (t - 1) as f64, steps + 1)
                    .into_iter()
                    .map(round)
                    .rev()
                    .collect();
                v.pop();
                v
            }
            Spacing::Leading => {
                let ratio = (t / (steps + 1)) as f64;
                (1..=steps)
                    .rev()
                    .map(|i| round(i as f64 * ratio) + p.steps_offset as f64)
                    .collect()
            }
            Spacing::Trailing => {
                let ratio = t as f64 / steps as f64;
                super::schedule::arange_down(t as f64, 0.0, -ratio)
                    .into_iter()
                    .map(|x| round(x) - 1.0)
                    .collect()
            }
        };
        let mut sigmas: Vec<f64>;
        if p.use_karras_sigmas {
            sigmas = karras(train[train.len() - 1], train[0], steps);
            let log: Vec<f64> = train.iter().map(|s| s.ln()).collect();
            timesteps = sigmas.iter().map(|&s| round(sigma_to_t(s, &log))).collect();
        } else {
            sigmas = timesteps.iter().map(|&t| interp(t, &train)).collect();
        }
        sigmas.push(if p.final_sigma_zero { 0.0 } else { train[0] });
        Ok(Self {
            timesteps,
            sigmas: sigmas.into_iter().map(|x| x as f32 as f64).collect(),
            p: p.clone(),
            outputs: Vec::new(),
            lower_order_nums: 0,
        })
    }

    /// The model output as the solver integrates it: the predicted clean
    /// sample (DPM-Solver++) or the predicted noise (DPM-Solver).
    fn convert(&self, out: &Tensor, sample: &Tensor, sigma: f64) -> Result<Tensor> {
        let (alpha, s) = alpha_sigma(sigma);
        Ok(match (self.p.dpm_data_prediction, self.p.prediction_type) {
            (true, PredictionType::Epsilon) => ((sample - (out * s)?)? / alpha)?,
            (true, PredictionType::Sample) => out.clone(),
            (true, PredictionType::VPrediction) => ((sample * alpha)? - (out * s)?)?,
            (false, PredictionType::Epsilon) => out.clone(),
            (false, PredictionType::Sample) => ((sample - (out * alpha)?)? / s)?,
            (false, PredictionType::VPrediction) => ((out * alpha)? + (sample * s)?)?,
        })
    }
}

impl Scheduler for DpmMultistep {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f64]> {
        Some(&self.sigmas)
    }

    fn add_noise(&self, x0: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        let (alpha, sigma) = alpha_sigma(self.sigmas[index]);
        Ok(((x0 * alpha)? + (noise * sigma)?)?)
    }

    fn scale_model_input(&self, sample: &Tensor, _index: usize) -> Result<Tensor> {
        Ok(sample.clone())
    }

    fn step(&mut self, out: &Tensor, i: usize, sample: &Tensor, _: &mut NoiseFn) -> Result<Tensor> {
        let n = self.timesteps.len();
        let p = &self.p;
        let lower_order_final = i == n - 1
            && (p.euler_at_final || (p.lower_order_final && n < 15) || p.final_sigma_zero);
        let m0 = self.convert(out, sample, self.sigmas[i])?;
        self.outputs.push(m0.clone());
        if self.outputs.len() > 2 {
            self.outputs.remove(0);
        }

        let (sigma_t, sigma_s0) = (self.sigmas[i + 1], self.sigmas[i]);
        let (alpha_t, st) = alpha_sigma(sigma_t);
        let (alpha_s0, ss0) = alpha_sigma(sigma_s0);
        let h = lambda(sigma_t) - lambda(sigma_s0);
        let first_order = p.solver_order == 1 || self.lower_order_nums < 1 || lower_order_final;
        // D1 is the first difference of the model outputs (zero for first order).
        let d1 = if first_order {
            None
        } else {
            let h0 = lambda(sigma_s0) - lambda(self.sigmas[i - 1]);
            let m1 = &self.outputs[0];
            Some(((&m0 - m1)? * (h / h0))?)
        };
        let x = if p.dpm_data_prediction {
            let c = alpha_t * ((-h).exp() - 1.0);
            let mut x = ((sample * (st / ss0))? - (&m0 * c)?)?;
            if let Some(d1) = d1 {
                x = (x - (d1 * (0.5 * c))?)?;
            }
            x
        } else {
            let c = st * (h.exp() - 1.0);
            let mut x = ((sample * (alpha_t / alpha_s0))? - (&m0 * c)?)?;
            if let Some(d1) = d1 {
                x = (x - (d1 * (0.5 * c))?)?;
            }
            x
        };
        if self.lower_order_nums < p.solver_order {
            self.lower_order_nums += 1;
        }
        Ok(x)
    }
}
