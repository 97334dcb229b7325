//! PNDM in its PLMS form (`skip_prk_steps`), as diffusers' `PNDMScheduler`:
//! the default of Stable Diffusion 1.x.

use anyhow::{bail, Result};
use candle_core::Tensor;

use super::config::{Params, PredictionType, Spacing};
use super::ddim::ddpm_add_noise;
use super::schedule::{alphas_cumprod, arange_down, linspace, round};
use super::{NoiseFn, Scheduler};

pub struct Pndm {
    timesteps: Vec<f64>,
    acp: Vec<f64>,
    final_acp: f64,
    step_ratio: i64,
    prediction: PredictionType,
    /// The last model outputs, newest last (at most four are used).
    ets: Vec<Tensor>,
    counter: usize,
    cur_sample: Option<Tensor>,
}

impl Pndm {
    pub fn new(p: &Params, steps: usize) -> Result<Self> {
        if p.prediction_type == PredictionType::Sample {
            bail!("the PNDM scheduler supports epsilon and v_prediction models only");
        }
        let t = p.num_train_timesteps;
        let ratio = t / steps;
        // Ascending, as PNDM builds them.
        let base: Vec<f64> = match p.timestep_spacing {
            Spacing::Leading => (0..steps)
                .map(|i| round((i * ratio) as f64) + p.steps_offset as f64)
                .collect(),
            Spacing::Linspace => linspace(0.0, (t - 1) as f64, steps)
                .into_iter()
                .map(round)
                .collect(),
            Spacing::Trailing => arange_down(t as f64, 0.0, -(t as f64 / steps as f64))
                .into_iter()
                .rev()
                .map(|x| round(x) - 1.0)
                .collect(),
        };
        // PLMS repeats the second step: [.., t[-2], t[-2], t[-1]] reversed.
        let n = base.len();
        let mut plms: Vec<f64> = base[..n - 1].to_vec();
        plms.extend_from_slice(&base[n.saturating_sub(2)..n - 1]);
        plms.push(base[n - 1]);
        plms.reverse();
        let acp = alphas_cumprod(p)?;
        Ok(Self {
            timesteps: plms,
            final_acp: if p.set_alpha_to_one { 1.0 } else { acp[0] },
            acp,
            step_ratio: ratio as i64,
            prediction: p.prediction_type,
            ets: Vec::new(),
            counter: 0,
            cur_sample: None,
        })
    }

    fn acp_at(&self, t: i64) -> Result<f64> {
        if t < 0 {
            return Ok(self.final_acp);
        }
        match self.acp.get(t as usize) {
            Some(a) => Ok(*a),
            None => bail!("PNDM stepped to timestep {t}, past the training schedule"),
        }
    }

    /// Formula (9) of the PNDM paper.
    fn prev_sample(&self, sample: &Tensor, t: i64, prev: i64, out: &Tensor) -> Result<Tensor> {
        let a_t = self.acp_at(t)?;
        let a_prev = self.acp_at(prev)?;
        let (b_t, b_prev) = (1.0 - a_t, 1.0 - a_prev);
        let eps = match self.prediction {
            PredictionType::VPrediction => ((out * a_t.sqrt())? + (sample * b_t.sqrt())?)?,
            _ => out.clone(),
        };
        let sample_coeff = (a_prev / a_t).sqrt();
        let denom = a_t * b_prev.sqrt() + (a_t * b_t * a_prev).sqrt();
        Ok(((sample * sample_coeff)? - (eps * ((a_prev - a_t) / denom))?)?)
    }
}

impl Scheduler for Pndm {
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
        let mut t = self.timesteps[index] as i64;
        let mut prev = t - self.step_ratio;
        if self.counter != 1 {
            self.ets.push(out.clone());
            if self.ets.len() > 4 {
                self.ets.remove(0);
            }
        } else {
            prev = t;
            t += self.step_ratio;
        }
        let e = |k: usize| &self.ets[self.ets.len() - k];
        let mut sample = sample.clone();
        let combined = match (self.ets.len(), self.counter) {
            (1, 0) => {
                self.cur_sample = Some(sample.clone());
                out.clone()
            }
            (1, 1) => {
                if let Some(cur) = self.cur_sample.take() {
                    sample = cur;
                }
                ((out + e(1))? / 2.0)?
            }
            (2, _) => (((e(1) * 3.0)? - e(2))? / 2.0)?,
            (3, _) => ((((e(1) * 23.0)? - (e(2) * 16.0)?)? + (e(3) * 5.0)?)? / 12.0)?,
            _ => {
                ((((((e(1) * 55.0)? - (e(2) * 59.0)?)? + (e(3) * 37.0)?)? - (e(4) * 9.0)?)?)
                    / 24.0)?
            }
        };
        let prev_sample = self.prev_sample(&sample, t, prev, &combined)?;
        self.counter += 1;
        Ok(prev_sample)
    }
}
