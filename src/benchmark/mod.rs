//! `atelier bench`: the engine's speed on real architectures at real sizes,
//! with random weights made on the device. Measures one UNet call with
//! classifier-free guidance (batch 2), the VAE encode and decode, a whole
//! img2img from prompts and pixels to pixels, and how soon a rerun that
//! changes one setting reaches its first step.

pub mod archs;
mod memory;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use image::{DynamicImage, Rgb, RgbImage};
use serde::Serialize;

pub use archs::Arch;

use crate::engine::unet::AddedConditioning;
use crate::engine::{
    Engine, Event, Fit, Model, Request, SourceInput, TextConditioning, WeightSource,
};

#[derive(Debug, Clone)]
pub struct BenchSettings {
    pub width: u32,
    pub height: u32,
    pub steps: usize,
    pub strength: f64,
    pub guidance: f64,
    pub repeats: usize,
    /// The negative prompt of the UNet call and the img2img.
    pub negative: String,
    /// Also time the UNet's parts (synchronising after each: slower overall).
    pub profile: bool,
}

/// How long a rerun takes before its first UNet step starts, with the model
/// loaded and the previous run's encodings cached: only what changed is
/// recomputed (a new prompt is encoded; a new seed or strength encodes nothing).
#[derive(Debug, Clone, Serialize)]
pub struct RerunTimes {
    pub seed_ms: f64,
    pub prompt_ms: f64,
    pub strength_ms: f64,
}

/// One kind of work in a `--profile` breakdown, per UNet call or VAE decode.
#[derive(Debug, Clone, Serialize)]
pub struct ProfilePart {
    pub part: String,
    pub ms: f64,
    /// The layers' nominal arithmetic (a Winograd convolution counts as a
    /// direct one), in 10^9 floating-point operations.
    pub gflop: f64,
}

impl ProfilePart {
    /// GFLOP per second, or None for work the layers do not count.
    pub fn rate(&self) -> Option<f64> {
        (self.gflop > 0.0 && self.ms > 0.0).then(|| self.gflop / self.ms * 1e3)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    #[serde(rename = "impl")]
    pub implementation: &'static str,
    pub arch: String,
    pub device: String,
    pub dtype: String,
    pub width: u32,
    pub height: u32,
    /// Time to build the networks (random weights made on the device).
    pub build_s: f64,
    pub unet_step_ms: f64,
    /// How long the host takes to queue one UNet call (synchronised only
    /// after): on a GPU, near `unet_step_ms` means the host's launches,
    /// not the device, set the pace. The same as the step on the CPU.
    pub unet_queue_ms: f64,
    pub vae_encode_ms: f64,
    pub vae_decode_ms: f64,
    pub img2img_s: f64,
    pub unet_calls: usize,
    pub rerun_first_step_ms: RerunTimes,
    /// Peak resident memory (CPU) or peak device memory in use (CUDA, sampled).
    pub peak_memory_mib: f64,
    /// With --profile: one UNet call by kind of work, largest time first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unet_profile: Vec<ProfilePart>,
    /// With --profile: the same for one VAE decode.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vae_decode_profile: Vec<ProfilePart>,
}

/// The median of `repeats` timings, after one untimed warm-up, each until
/// the device is done.
fn median_ms(device: &Device, repeats: usize, f: impl FnMut() -> Result<()>) -> Result<f64> {
    median_until(device, repeats, Until::Done, f)
}

/// Where a timing stops: once the device has done the work, or once `f`
/// has returned (the work queued; the device is synchronised after).
#[derive(Clone, Copy, PartialEq)]
enum Until {
    Done,
    Queued,
}

fn median_until(
    device: &Device,
    repeats: usize,
    until: Until,
    mut f: impl FnMut() -> Result<()>,
) -> Result<f64> {
    f()?;
    device.synchronize()?;
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        f()?;
        if until == Until::Done {
            device.synchronize()?;
        }
        times.push(t.elapsed().as_secs_f64() * 1e3);
        device.synchronize()?;
        memory::sample(device);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Each profile section's time and arithmetic per run of `f`, over `runs`
/// profiled runs, largest time first.
fn profile(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<ProfilePart>> {
    crate::engine::profile::enable(true);
    let ran = (0..runs).try_for_each(|_| f());
    crate::engine::profile::enable(false);
    let totals = crate::engine::profile::take();
    ran?;
    let runs = runs as f64;
    Ok(totals
        .into_iter()
        .map(|p| ProfilePart {
            part: p.name.to_string(),
            ms: p.ms / runs,
            gflop: p.flops as f64 / 1e9 / runs,
        })
        .collect())
}

/// A smooth gradient source image.
fn source_image(width: u32, height: u32) -> SourceInput {
    let img = RgbImage::from_fn(width, height, |x, y| {
        Rgb([(x * 255 / width) as u8, (y * 255 / height) as u8, 128])
    });
    SourceInput {
        image: Arc::new(DynamicImage::ImageRgb8(img)),
        key: "bench-source".into(),
    }
}

/// Builds `arch` with random weights on `device` and measures it.
pub fn run(arch: Arch, device: &Device, dtype: DType, s: &BenchSettings) -> Result<BenchResult> {
    let configs = tempfile::tempdir()?;
    arch.write_configs(configs.path())?;
    memory::reset();
    let started = Instant::now();
    let model = Model::load_with(configs.path(), device, dtype, WeightSource::Random)?;
    device.synchronize()?;
    let build_s = started.elapsed().as_secs_f64();
    memory::sample(device);
    measure(arch.name(), model, device, s, build_s)
}

/// Measures a real model folder (its own weights).
pub fn run_folder(
    dir: &Path,
    device: &Device,
    dtype: DType,
    s: &BenchSettings,
) -> Result<BenchResult> {
    memory::reset();
    let started = Instant::now();
    let model = Model::load(dir, device, dtype)?;
    let build_s = started.elapsed().as_secs_f64();
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    measure(&name, model, device, s, build_s)
}

fn measure(
    name: &str,
    model: Model,
    device: &Device,
    s: &BenchSettings,
    build_s: f64,
) -> Result<BenchResult> {
    let dtype = model.dtype;
    // bf16 on the CPU is an f32 network with bf16 products: report what was asked.
    let precision = model.precision;
    let (h, w) = (s.height as usize / 8, s.width as usize / 8);
    let latent_channels = model.vae_spec.latent_channels;

    // One UNet call as the guided loop makes it: one latent, both prompts.
    let latents = Tensor::randn(0f32, 1., (1, latent_channels, h, w), device)?.to_dtype(dtype)?;
    let cond = model.encode_prompt("a red fox in the snow")?;
    let uncond = if model.negative_is_zeros(&s.negative) {
        cond.zeros_like()?
    } else {
        model.encode_prompt(&s.negative)?
    };
    let (context, pooled) = TextConditioning::guided(uncond, cond)?;
    let added = pooled
        .map(|p| AddedConditioning::for_size(p, s.width, s.height))
        .transpose()?;
    let unet_call = || -> Result<()> {
        model
            .unet
            .forward(&latents, 500.0, &context, added.as_ref())?;
        Ok(())
    };
    let unet_step_ms = median_ms(device, s.repeats, unet_call)?;
    // The CPU computes while it queues: there the queue time is the step's,
    // and timing it again would only rerun the UNet.
    let unet_queue_ms = if device.is_cpu() {
        unet_step_ms
    } else {
        median_until(device, s.repeats, Until::Queued, unet_call)?
    };
    let unet_profile = if s.profile {
        profile(s.repeats.max(1), unet_call)?
    } else {
        Vec::new()
    };

    let pixels = Tensor::rand(
        -1f32,
        1.,
        (1, 3, s.height as usize, s.width as usize),
        device,
    )?;
    let vae_encode_ms = median_ms(device, s.repeats, || {
        model.encode_source(&pixels)?;
        Ok(())
    })?;
    let one_latent = latents.to_dtype(DType::F32)?;
    let vae_decode = || -> Result<()> {
        model.decode(&one_latent)?;
        Ok(())
    };
    let vae_decode_ms = median_ms(device, s.repeats, vae_decode)?;
    let vae_decode_profile = if s.profile {
        profile(1, vae_decode)?
    } else {
        Vec::new()
    };

    let mut engine = Engine::with_model(device.clone(), model);
    let req = Request {
        source: source_image(s.width, s.height),
        prompt: "a red fox in the snow, oil painting".into(),
        negative: s.negative.clone(),
        strength: s.strength,
        steps: s.steps,
        guidance: s.guidance,
        seed: 0,
        scheduler: None,
        width: Some(s.width),
        height: Some(s.height),
        crop: None,
        fit: Fit::Crop,
        noise_file: None,
    };
    let cancel = AtomicBool::new(false);
    let mut unet_calls = 0;
    // A whole img2img as a fresh pipeline call: no cached encodings.
    let img2img_ms = median_ms(device, s.repeats, || {
        engine.clear_caches();
        let out = engine.generate(&req, &mut |_| {}, &cancel)?;
        unet_calls = out.steps_run;
        Ok(())
    })?;

    // A rerun is stopped once its first step is done: only the time before
    // that step is measured.
    let mut first_step = |req: &Request| -> Result<f64> {
        let stop = AtomicBool::new(false);
        let t = Instant::now();
        let mut first = None;
        let result = engine.generate(
            req,
            &mut |e| {
                // When the first UNet step began: what the rerun paid before it.
                if let Event::Step {
                    index: 1, seconds, ..
                } = e
                {
                    first.get_or_insert((t.elapsed().as_secs_f64() - seconds) * 1e3);
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            },
            &stop,
        );
        match result {
            Ok(_) => {}
            Err(e) if e.is::<crate::engine::Cancelled>() => {}
            Err(e) => return Err(e),
        }
        Ok(first.unwrap_or(f64::NAN))
    };
    first_step(&req)?; // caches warm, as after a first run
    let rerun_first_step_ms = RerunTimes {
        seed_ms: first_step(&Request {
            seed: 1,
            ..req.clone()
        })?,
        prompt_ms: first_step(&Request {
            prompt: "a red fox in the snow, watercolor".into(),
            ..req.clone()
        })?,
        strength_ms: first_step(&Request {
            strength: other_strength(s.strength, s.steps),
            ..req.clone()
        })?,
    };
    memory::sample(device);

    Ok(BenchResult {
        implementation: "atelier",
        arch: name.to_string(),
        device: device_name(device),
        dtype: format!("{precision:?}").to_lowercase(),
        width: s.width,
        height: s.height,
        build_s,
        unet_step_ms,
        unet_queue_ms,
        vae_encode_ms,
        vae_decode_ms,
        img2img_s: img2img_ms / 1e3,
        unet_calls,
        rerun_first_step_ms,
        peak_memory_mib: memory::peak_mib(device),
        unet_profile,
        vae_decode_profile,
    })
}

/// A strength 0.1 away that still runs at least one step.
fn other_strength(strength: f64, steps: usize) -> f64 {
    let lower = strength - 0.1;
    if lower > 0.0 && (steps as f64 * lower) as usize >= 1 {
        lower
    } else {
        (strength + 0.1).min(1.0)
    }
}

fn device_name(device: &Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", candle_core::utils::get_num_threads()),
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}
