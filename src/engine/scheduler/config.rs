//! `scheduler_config.json`: the class a model ships with, the parameters it
//! sets, and the per-class defaults diffusers applies to the rest.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use anyhow::{bail, Result};
use serde_json::Value;

/// The schedulers atelier implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    Ddim,
    Euler,
    EulerAncestral,
    DpmPp2m,
    DpmPp2mKarras,
    Pndm,
}

impl SchedulerKind {
    pub const ALL: [SchedulerKind; 6] = [
        SchedulerKind::Ddim,
        SchedulerKind::Euler,
        SchedulerKind::EulerAncestral,
        SchedulerKind::DpmPp2m,
        SchedulerKind::DpmPp2mKarras,
        SchedulerKind::Pndm,
    ];

    /// The name used on the command line and in records.
    pub fn name(self) -> &'static str {
        match self {
            SchedulerKind::Ddim => "ddim",
            SchedulerKind::Euler => "euler",
            SchedulerKind::EulerAncestral => "euler_a",
            SchedulerKind::DpmPp2m => "dpmpp_2m",
            SchedulerKind::DpmPp2mKarras => "dpmpp_2m_karras",
            SchedulerKind::Pndm => "pndm",
        }
    }

    /// The name A1111 writes in `Sampler:`.
    pub fn a1111_name(self) -> &'static str {
        match self {
            SchedulerKind::Ddim => "DDIM",
            SchedulerKind::Euler => "Euler",
            SchedulerKind::EulerAncestral => "Euler a",
            SchedulerKind::DpmPp2m => "DPM++ 2M",
            SchedulerKind::DpmPp2mKarras => "DPM++ 2M Karras",
            SchedulerKind::Pndm => "PLMS",
        }
    }

    fn from_class(class: &str) -> Option<Self> {
        Some(match class {
            "DDIMScheduler" => SchedulerKind::Ddim,
            "EulerDiscreteScheduler" => SchedulerKind::Euler,
            "EulerAncestralDiscreteScheduler" => SchedulerKind::EulerAncestral,
            "DPMSolverMultistepScheduler" => SchedulerKind::DpmPp2m,
            "PNDMScheduler" => SchedulerKind::Pndm,
            _ => return None,
        })
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SchedulerKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let key: String = s
            .to_ascii_lowercase()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '+')
            .collect();
        Ok(match key.as_str() {
            "ddim" => SchedulerKind::Ddim,
            "euler" => SchedulerKind::Euler,
            "eulera" | "eulerancestral" => SchedulerKind::EulerAncestral,
            "dpmpp2m" | "dpm++2m" => SchedulerKind::DpmPp2m,
            "dpmpp2mkarras" | "dpm++2mkarras" => SchedulerKind::DpmPp2mKarras,
            "pndm" | "plms" => SchedulerKind::Pndm,
            _ => {
                let names: Vec<&str> = Self::ALL.iter().map(|k| k.name()).collect();
                bail!(
                    "unknown scheduler {s:?}; choose one of {}",
                    names.join(", ")
                )
            }
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    Epsilon,
    VPrediction,
    Sample,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spacing {
    Leading,
    Trailing,
    Linspace,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
    SquaredCosCapV2,
    Trained(Vec<f64>),
}

/// A model's scheduler config as read, before a class is chosen.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// The class the model ships with, when atelier implements it.
    pub native: Option<SchedulerKind>,
    pub class_name: String,
    raw: Value,
    path: String,
}

/// The parameters one scheduler class runs with.
#[derive(Debug, Clone)]
pub struct Params {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub prediction_type: PredictionType,
    pub timestep_spacing: Spacing,
    pub steps_offset: usize,
    pub rescale_betas_zero_snr: bool,
    pub set_alpha_to_one: bool,
    pub clip_sample: Option<f64>,
    pub use_karras_sigmas: bool,
    pub final_sigma_zero: bool,
    pub solver_order: usize,
    /// DPM-Solver++ (data prediction) rather than DPM-Solver (noise).
    pub dpm_data_prediction: bool,
    pub lower_order_final: bool,
    pub euler_at_final: bool,
    pub skip_prk_steps: bool,
}

impl SchedulerConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let raw: Value = crate::engine::config::read_json(path)?;
        Ok(Self::from_json(raw, &path.display().to_string()))
    }

    /// A config already parsed; `label` names it in errors.
    pub fn from_json(raw: Value, label: &str) -> Self {
        let class_name = raw
            .get("_class_name")
            .and_then(|c| c.as_str())
            .unwrap_or("")
            .to_string();
        Self {
            native: SchedulerKind::from_class(&class_name).map(|k| {
                // "DPM++ 2M Karras" is the same class with Karras sigmas.
                if k == SchedulerKind::DpmPp2m
                    && raw.get("use_karras_sigmas").and_then(|v| v.as_bool()) == Some(true)
                {
                    SchedulerKind::DpmPp2mKarras
                } else {
                    k
                }
            }),
            class_name,
            raw,
            path: label.to_string(),
        }
    }

    /// The model's own scheduler, or a clear error when atelier lacks it.
    pub fn native_kind(&self) -> Result<SchedulerKind> {
        self.native.ok_or_else(|| {
            anyhow::anyhow!(
                "{}: the scheduler class {:?} is not implemented; pick one with --scheduler ({})",
                self.path,
                self.class_name,
                SchedulerKind::ALL.map(|k| k.name()).join(", ")
            )
        })
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &str, default: T) -> Result<T> {
        match self.raw.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|_| anyhow::anyhow!("{}: `{key}` = {v} has the wrong type", self.path)),
        }
    }

    fn unsupported(&self, key: &str, value: impl fmt::Display) -> anyhow::Error {
        anyhow::anyhow!("{}: `{key}` = {value} is not supported", self.path)
    }

    /// The parameters for running this config with `kind`.
    pub fn resolve(&self, kind: SchedulerKind) -> Result<Params> {
        use SchedulerKind::*;
        let beta_schedule = match self.get::<Option<Vec<f64>>>("trained_betas", None)? {
            Some(b) => BetaSchedule::Trained(b),
            None => match self.get("beta_schedule", "linear".to_string())?.as_str() {
                "linear" => BetaSchedule::Linear,
                "scaled_linear" => BetaSchedule::ScaledLinear,
                "squaredcos_cap_v2" => BetaSchedule::SquaredCosCapV2,
                other => return Err(self.unsupported("beta_schedule", other)),
            },
        };
        let prediction_type = match self.get("prediction_type", "epsilon".to_string())?.as_str() {
            "epsilon" => PredictionType::Epsilon,
            "v_prediction" => PredictionType::VPrediction,
            "sample" => PredictionType::Sample,
            other => return Err(self.unsupported("prediction_type", other)),
        };
        let default_spacing = match kind {
            Ddim | Pndm => "leading",
            Euler | EulerAncestral | DpmPp2m | DpmPp2mKarras => "linspace",
        };
        let timestep_spacing = match self
            .get("timestep_spacing", default_spacing.to_string())?
            .as_str()
        {
            "leading" => Spacing::Leading,
            "trailing" => Spacing::Trailing,
            "linspace" => Spacing::Linspace,
            other => return Err(self.unsupported("timestep_spacing", other)),
        };
        if self.get("thresholding", false)? {
            return Err(self.unsupported("thresholding", true));
        }
        let clip_default = kind == Ddim;
        let clip_sample = self
            .get("clip_sample", clip_default)?
            .then(|| self.get("clip_sample_range", 1.0))
            .transpose()?;
        for (key, want) in [
            ("interpolation_type", "linear"),
            ("timestep_type", "discrete"),
        ] {
            let v: String = self.get(key, want.to_string())?;
            if v != want && matches!(kind, Euler | EulerAncestral) {
                return Err(self.unsupported(key, v));
            }
        }
        for key in [
            "use_exponential_sigmas",
            "use_beta_sigmas",
            "use_lu_lambdas",
            "use_dynamic_shifting",
        ] {
            if self.get(key, false)? {
                return Err(self.unsupported(key, true));
            }
        }
        let final_sigma_zero = match self.get("final_sigmas_type", "zero".to_string())?.as_str() {
            "zero" => true,
            "sigma_min" => false,
            other => return Err(self.unsupported("final_sigmas_type", other)),
        };
        let dpm_data_prediction = match self
            .get("algorithm_type", "dpmsolver++".to_string())?
            .as_str()
        {
            "dpmsolver++" => true,
            "dpmsolver" => false,
            other if matches!(kind, DpmPp2m | DpmPp2mKarras) => {
                return Err(self.unsupported("algorithm_type", other))
            }
            _ => true,
        };
        if let Some(clip) = self.get::<Option<f64>>("lambda_min_clipped", None)? {
            if clip.is_finite() && matches!(kind, DpmPp2m | DpmPp2mKarras) {
                return Err(self.unsupported("lambda_min_clipped", clip));
            }
        }
        let solver_type: String = self.get("solver_type", "midpoint".to_string())?;
        if solver_type != "midpoint" && matches!(kind, DpmPp2m | DpmPp2mKarras) {
            return Err(self.unsupported("solver_type", solver_type));
        }
        let solver_order: usize = self.get("solver_order", 2)?;
        if !(1..=2).contains(&solver_order) && matches!(kind, DpmPp2m | DpmPp2mKarras) {
            return Err(self.unsupported("solver_order", solver_order));
        }
        let skip_prk_steps = self.get("skip_prk_steps", false)?;
        if kind == Pndm && !skip_prk_steps {
            return Err(anyhow::anyhow!(
                "{}: PNDM with Runge-Kutta warm-up steps (`skip_prk_steps` false) is not \
                 supported; Stable Diffusion configs set it to true",
                self.path
            ));
        }
        let use_karras_sigmas = match kind {
            DpmPp2mKarras => true,
            DpmPp2m => false,
            Euler | EulerAncestral => self.get("use_karras_sigmas", false)?,
            Ddim | Pndm => false,
        };
        let num_train_timesteps: usize = self.get("num_train_timesteps", 1000)?;
        if num_train_timesteps < 2 {
            return Err(self.unsupported("num_train_timesteps", num_train_timesteps));
        }
        Ok(Params {
            num_train_timesteps,
            beta_start: self.get("beta_start", 0.0001)?,
            beta_end: self.get("beta_end", 0.02)?,
            beta_schedule,
            prediction_type,
            timestep_spacing,
            steps_offset: self.get("steps_offset", 0)?,
            rescale_betas_zero_snr: self.get("rescale_betas_zero_snr", false)?,
            set_alpha_to_one: self.get("set_alpha_to_one", kind != Pndm)?,
            clip_sample,
            use_karras_sigmas,
            final_sigma_zero,
            solver_order,
            dpm_data_prediction,
            lower_order_final: self.get("lower_order_final", true)?,
            euler_at_final: self.get("euler_at_final", false)?,
            skip_prk_steps,
        })
    }
}
