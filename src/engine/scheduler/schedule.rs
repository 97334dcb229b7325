//! The noise schedule shared by every scheduler: betas, cumulative alphas,
//! timestep spacings, sigma interpolation, numpy's rounding.

use anyhow::{bail, Result};

use super::config::{BetaSchedule, Params, Spacing};

/// The cumulative product of alphas over the training timesteps.
pub fn alphas_cumprod(p: &Params) -> Result<Vec<f64>> {
    let t = p.num_train_timesteps;
    let betas: Vec<f64> = match &p.beta_schedule {
        BetaSchedule::Trained(b) => {
            if b.len() != t {
                bail!(
                    "scheduler: `trained_betas` has {} values for {t} training timesteps",
                    b.len()
                );
            }
            b.clone()
        }
        BetaSchedule::Linear => linspace(p.beta_start, p.beta_end, t),
        BetaSchedule::ScaledLinear => linspace(p.beta_start.sqrt(), p.beta_end.sqrt(), t)
            .into_iter()
            .map(|b| b * b)
            .collect(),
        BetaSchedule::SquaredCosCapV2 => {
            let alpha_bar = |x: f64| {
                ((x + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                    .cos()
                    .powi(2)
            };
            (0..t)
                .map(|i| {
                    let (t1, t2) = (i as f64 / t as f64, (i + 1) as f64 / t as f64);
                    (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999)
                })
                .collect()
        }
    };
    // diffusers computes the schedule in f32; doing the same keeps sigmas and
    // timesteps bit-close to the reference.
    let mut acp = Vec::with_capacity(t);
    let mut prod = 1f32;
    for b in &betas {
        prod *= 1.0 - *b as f32;
        acp.push(prod as f64);
    }
    if p.rescale_betas_zero_snr {
        acp = rescale_zero_terminal_snr(&acp);
    }
    Ok(acp)
}

/// Rescales the schedule so the last timestep has zero SNR (arXiv 2305.08891).
fn rescale_zero_terminal_snr(acp: &[f64]) -> Vec<f64> {
    let sqrt: Vec<f64> = acp.iter().map(|a| a.sqrt()).collect();
    let (first, last) = (sqrt[0], sqrt[sqrt.len() - 1]);
    sqrt.iter()
        .map(|s| ((s - last) * first / (first - last)).powi(2))
        .collect()
}

/// numpy's `linspace(start, stop, n)`.
pub fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![start],
        _ => {
            let step = (stop - start) / (n - 1) as f64;
            let mut v: Vec<f64> = (0..n).map(|i| start + i as f64 * step).collect();
            v[n - 1] = stop;
            v
        }
    }
}

/// numpy's `arange(start, stop, step)` for a negative step.
pub fn arange_down(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let n = ((stop - start) / step).ceil().max(0.0) as usize;
    (0..n).map(|i| start + i as f64 * step).collect()
}

/// numpy rounds halves to even.
pub fn round(x: f64) -> f64 {
    x.round_ties_even()
}

/// numpy's `interp(x, arange(len(ys)), ys)`.
pub fn interp(x: f64, ys: &[f64]) -> f64 {
    if x <= 0.0 {
        return ys[0];
    }
    let last = ys.len() - 1;
    if x >= last as f64 {
        return ys[last];
    }
    let i = x.floor() as usize;
    let w = x - i as f64;
    ys[i] + w * (ys[i + 1] - ys[i])
}

/// Descending timesteps for DDIM, Euler and friends (`leading`, `trailing`,
/// `linspace` as in their `set_timesteps`). `round_linspace`: DDIM rounds
/// linspace timesteps to integers, Euler keeps them fractional.
pub fn spaced_timesteps(p: &Params, n: usize, round_linspace: bool) -> Vec<f64> {
    let t = p.num_train_timesteps;
    match p.timestep_spacing {
        Spacing::Leading => {
            let ratio = (t / n) as f64;
            (0..n)
                .rev()
                .map(|i| round(i as f64 * ratio) + p.steps_offset as f64)
                .collect()
        }
        Spacing::Trailing => {
            let ratio = t as f64 / n as f64;
            arange_down(t as f64, 0.0, -ratio)
                .into_iter()
                .map(|x| round(x) - 1.0)
                .collect()
        }
        Spacing::Linspace => linspace(0.0, (t - 1) as f64, n)
            .into_iter()
            .rev()
            .map(|x| if round_linspace { round(x) } else { x })
            .collect(),
    }
}

/// Sigmas of the training schedule: sqrt((1 - acp) / acp).
pub fn train_sigmas(acp: &[f64]) -> Vec<f64> {
    acp.iter().map(|a| ((1.0 - a) / a).sqrt()).collect()
}

/// Karras et al. (2022) sigmas between `max` and `min`, rho = 7.
pub fn karras(max: f64, min: f64, n: usize) -> Vec<f64> {
    let rho = 7.0;
    let (min_inv, max_inv) = (min.powf(1.0 / rho), max.powf(1.0 / rho));
    linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// The (fractional) training timestep of a sigma, by interpolating log sigmas.
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let count = log_sigmas
        .iter()
        .filter(|&&ls| log_sigma - ls >= 0.0)
        .count();
    // diffusers: cumsum(dists >= 0).argmax() is the last index where the
    // count grows, i.e. count - 1 (0 when none), clipped.
    let low = count.saturating_sub(1).min(log_sigmas.len() - 2);
    let (lo, hi) = (log_sigmas[low], log_sigmas[low + 1]);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}
