//! The img2img loop, with the model kept loaded and the text embeddings and
//! source latents cached between runs, so changing only the prompt or only
//! the strength re-encodes only what changed.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use image::{DynamicImage, GenericImageView, RgbImage};

use super::model::{Model, TextConditioning};
use super::noise::{load_init_noise, NoiseSource};
use super::preview::latent_preview;
use super::scheduler::{self, img2img_start, SchedulerKind};
use super::source::{self, CropRect, Fit};
use super::unet::AddedConditioning;

/// A decoded source image and a key naming its content (e.g. its hash), so
/// its latents can be cached.
#[derive(Clone)]
pub struct SourceInput {
    pub image: Arc<DynamicImage>,
    pub key: String,
}

impl SourceInput {
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read the source image {}: {e}", path.display()))?;
        let image = source::decode_source(&bytes, path)?;
        Ok(Self {
            image: Arc::new(image),
            key: crate::hash::hex_digest(&bytes),
        })
    }
}

/// One img2img run.
#[derive(Clone)]
pub struct Request {
    pub source: SourceInput,
    pub prompt: String,
    pub negative: String,
    pub strength: f64,
    pub steps: usize,
    pub guidance: f64,
    pub seed: u64,
    /// None: the model's own scheduler.
    pub scheduler: Option<SchedulerKind>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub crop: Option<CropRect>,
    pub fit: Fit,
    /// Initial noise from a file instead of the seed.
    pub noise_file: Option<PathBuf>,
}

/// What the engine reports while it works.
#[derive(Debug, Clone)]
pub enum Event {
    /// Before the first step: the steps that will run.
    Planned {
        steps_run: usize,
        timesteps: Vec<f64>,
        width: u32,
        height: u32,
        scheduler: SchedulerKind,
    },
    Step {
        /// 1-based.
        index: usize,
        of: usize,
        seconds: f64,
        preview: RgbImage,
    },
    Decoding,
}

/// Raised when the cancel flag stops a run between steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cancelled")
    }
}

impl std::error::Error for Cancelled {}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Timings {
    pub load_s: f64,
    pub encode_text_s: f64,
    pub encode_source_s: f64,
    pub steps_s: Vec<f64>,
    pub decode_s: f64,
}

pub struct Generation {
    pub image: RgbImage,
    /// The decoded image before 8-bit rounding: f32 [3, h, w] in [0, 1].
    pub pixels: Tensor,
    pub seed: u64,
    pub steps_run: usize,
    pub timesteps_run: Vec<f64>,
    pub scheduler: SchedulerKind,
    pub width: u32,
    pub height: u32,
    pub timings: Timings,
}

/// A small least-recently-used cache.
struct Lru<K, V> {
    entries: VecDeque<(K, V)>,
    capacity: usize,
}

impl<K: PartialEq, V: Clone> Lru<K, V> {
    fn new(capacity: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            capacity,
        }
    }

    fn get(&mut self, key: &K) -> Option<V> {
        let pos = self.entries.iter().position(|(k, _)| k == key)?;
        let entry = self.entries.remove(pos)?;
        let value = entry.1.clone();
        self.entries.push_front(entry);
        Some(value)
    }

    fn put(&mut self, key: K, value: V) {
        self.entries.retain(|(k, _)| k != &key);
        self.entries.push_front((key, value));
        self.entries.truncate(self.capacity);
    }

    fn clear(&mut self) {
        self.entries.clear();
    }
}

#[derive(PartialEq, Clone)]
struct LatentKey {
    source: String,
    crop: Option<CropRect>,
    size: (u32, u32),
    fit: Fit,
}

/// Owns the loaded model and the caches. One per process (or worker thread).
pub struct Engine {
    device: Device,
    dtype: DType,
    model: Option<Model>,
    text_cache: Lru<String, TextConditioning>,
    latent_cache: Lru<LatentKey, Tensor>,
    /// How often each cache missed (tests and the UI read these).
    pub text_encodes: usize,
    pub source_encodes: usize,
}

impl Engine {
    pub fn new(device: Device, dtype: DType) -> Self {
        Self {
            device,
            dtype,
            model: None,
            text_cache: Lru::new(64),
            latent_cache: Lru::new(8),
            text_encodes: 0,
            source_encodes: 0,
        }
    }

    /// An engine around a model built elsewhere (benchmarks' random weights).
    pub fn with_model(device: Device, model: Model) -> Self {
        let mut engine = Self::new(device, model.precision);
        engine.model = Some(model);
        engine
    }

    /// Forgets cached encodings, so the next run starts as a fresh pipeline call.
    pub fn clear_caches(&mut self) {
        self.text_cache.clear();
        self.latent_cache.clear();
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Loads the model at `dir` unless it is the one already loaded.
    pub fn load(&mut self, dir: &Path) -> Result<&Model> {
        let (device, dtype) = (self.device.clone(), self.dtype);
        self.load_once(dir, || Model::load(dir, &device, dtype))
    }

    /// Loads a single-file checkpoint (configs and tokenizers from `base`)
    /// unless it is the one already loaded.
    pub fn load_single_file(&mut self, file: &Path, base: &Path) -> Result<&Model> {
        let (device, dtype) = (self.device.clone(), self.dtype);
        self.load_once(file, || Model::load_single_file(file, base, &device, dtype))
    }

    /// Keeps the loaded model if it came from `path`; otherwise drops it and
    /// its cached encodings first (two models need not fit at once).
    fn load_once(&mut self, path: &Path, load: impl FnOnce() -> Result<Model>) -> Result<&Model> {
        if self.model.as_ref().is_none_or(|m| m.dir != path) {
            self.model = None;
            self.clear_caches();
            self.model = Some(load()?);
        }
        Ok(self.model.as_ref().expect("just loaded"))
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn model(&self) -> Option<&Model> {
        self.model.as_ref()
    }

    fn text_embedding(&mut self, prompt: &str) -> Result<TextConditioning> {
        if let Some(t) = self.text_cache.get(&prompt.to_string()) {
            return Ok(t);
        }
        let model = self.model.as_ref().expect("model loaded");
        let t = model.encode_prompt(prompt)?;
        self.text_encodes += 1;
        self.text_cache.put(prompt.to_string(), t.clone());
        Ok(t)
    }

    fn source_latent(&mut self, req: &Request, size: (u32, u32)) -> Result<Tensor> {
        let key = LatentKey {
            source: req.source.key.clone(),
            crop: req.crop,
            size,
            fit: req.fit,
        };
        if let Some(t) = self.latent_cache.get(&key) {
            return Ok(t);
        }
        let model = self.model.as_ref().expect("model loaded");
        let pixels = source::prepare(&req.source.image, req.crop, size, req.fit)?;
        let latent = model.encode_source(&source::to_tensor(&pixels, &self.device)?)?;
        self.source_encodes += 1;
        self.latent_cache.put(key, latent.clone());
        Ok(latent)
    }

    /// Runs img2img with the loaded model. `on_event` hears the plan, each
    /// step and the decode; `cancel` is checked before every step.
    pub fn generate(
        &mut self,
        req: &Request,
        on_event: &mut dyn FnMut(Event),
        cancel: &AtomicBool,
    ) -> Result<Generation> {
        let Some(model) = self.model.as_ref() else {
            bail!("no model is loaded")
        };
        validate(req)?;
        let zero_uncond = model.negative_is_zeros(&req.negative);
        let kind = match req.scheduler {
            Some(k) => k,
            None => model.scheduler.native_kind()?,
        };
        let mut sched = scheduler::build(&model.scheduler, kind, req.steps)?;
        let positions = sched.timesteps().len();
        let Some(start) = img2img_start(positions, req.steps, req.strength) else {
            bail!(
                "strength {} with {} steps runs no denoising step (int(steps x strength) = 0); \
                 raise --strength or --steps",
                req.strength,
                req.steps
            );
        };
        let timesteps_run = sched.timesteps()[start..].to_vec();

        let (src_w, src_h) = match req.crop {
            Some(c) => (c.w, c.h),
            None => req.source.image.dimensions(),
        };
        let (width, height) = source::output_size((src_w, src_h), req.width, req.height)?;
        on_event(Event::Planned {
            steps_run: timesteps_run.len(),
            timesteps: timesteps_run.clone(),
            width,
            height,
            scheduler: kind,
        });
        let mut timings = Timings {
            load_s: model.load_seconds,
            ..Default::default()
        };

        let started = Instant::now();
        let guided = req.guidance > 1.0;
        let cond = self.text_embedding(&req.prompt)?;
        let (context, pooled) = if guided {
            let uncond = if zero_uncond {
                cond.zeros_like()?
            } else {
                self.text_embedding(&req.negative)?
            };
            TextConditioning::guided(uncond, cond)?
        } else {
            (cond.context, cond.pooled)
        };
        timings.encode_text_s = started.elapsed().as_secs_f64();

        let started = Instant::now();
        let x0 = self.source_latent(req, (width, height))?;
        timings.encode_source_s = started.elapsed().as_secs_f64();

        let model = self.model.as_ref().expect("model loaded");
        let added = pooled
            .map(|text_embeds| AddedConditioning::for_size(text_embeds, width, height))
            .transpose()?;
        let latent_shape = [
            1,
            model.vae_spec.latent_channels,
            height as usize / 8,
            width as usize / 8,
        ];
        let mut noise_source = NoiseSource::new(req.seed);
        let init_noise = match &req.noise_file {
            Some(path) => load_init_noise(path, &latent_shape, &self.device)?,
            None => noise_source.sample(&latent_shape, &self.device)?,
        };
        let mut latents = sched.add_noise(&x0, &init_noise, start)?;
        let mut fresh_noise = |shape: &[usize]| noise_source.sample(shape, &Device::Cpu);

        let of = timesteps_run.len();
        for (n, index) in (start..positions).enumerate() {
            if cancel.load(Ordering::Relaxed) {
                return Err(Cancelled.into());
            }
            let step_started = Instant::now();
            let t = sched.timesteps()[index];
            // Guided, the context holds both prompts and the UNet runs the
            // one input for each (sharing what comes before they differ).
            let input = sched.scale_model_input(&latents, index)?;
            let out = model
                .unet
                .forward(&input.to_dtype(model.dtype)?, t, &context, added.as_ref())?
                .to_dtype(DType::F32)?;
            let out = if guided {
                let uncond = out.get(0)?.unsqueeze(0)?;
                let cond = out.get(1)?.unsqueeze(0)?;
                (&uncond + ((cond - &uncond)? * req.guidance)?)?
            } else {
                out
            };
            let mut noise_on_device = |shape: &[usize]| -> Result<Tensor> {
                Ok(fresh_noise(shape)?.to_device(latents.device())?)
            };
            latents = sched.step(&out, index, &latents, &mut noise_on_device)?;
            // On a GPU the step is only queued until now; its time is the
            // device's (the preview below would wait for it anyway), or the
            // step's time shows up as whatever the caller measures next.
            latents.device().synchronize()?;
            let seconds = step_started.elapsed().as_secs_f64();
            timings.steps_s.push(seconds);
            on_event(Event::Step {
                index: n + 1,
                of,
                seconds,
                preview: latent_preview(&latents)?,
            });
        }
        if cancel.load(Ordering::Relaxed) {
            return Err(Cancelled.into());
        }

        on_event(Event::Decoding);
        let started = Instant::now();
        let pixels = model.decode(&latents)?;
        let image = source::from_tensor(&pixels)?;
        timings.decode_s = started.elapsed().as_secs_f64();
        Ok(Generation {
            image,
            pixels,
            seed: req.seed,
            steps_run: of,
            timesteps_run,
            scheduler: kind,
            width,
            height,
            timings,
        })
    }
}

fn validate(req: &Request) -> Result<()> {
    validate_settings(req.strength, req.steps, req.guidance)
}

/// Checks the numeric settings before anything is loaded.
pub fn validate_settings(strength: f64, steps: usize, guidance: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&strength) {
        bail!("strength {strength} is outside [0, 1]: 0 keeps the source, 1 ignores it");
    }
    if steps == 0 {
        bail!("steps must be at least 1");
    }
    if steps > 1000 {
        bail!("steps {steps} is more than the 1000 training timesteps");
    }
    // diffusers' img2img runs int(steps x strength) of the schedule's steps.
    if (steps as f64 * strength) as usize == 0 {
        bail!(
            "strength {strength} with {steps} steps runs no denoising step \
             (int(steps x strength) = 0); raise --strength or --steps"
        );
    }
    if !guidance.is_finite() || guidance < 0.0 {
        bail!("guidance {guidance} must be a number >= 0 (1 or less turns guidance off)");
    }
    Ok(())
}
