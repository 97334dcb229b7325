//! `atelier gen`: one img2img run (or `--count` variations) from the
//! command line, with a progress bar, written as PNGs that carry their recipe.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::engine::device::{default_device_name, open_device};
use crate::engine::{Cancelled, CropRect, Engine, Event, Fit, Request, SchedulerKind, SourceInput};
use crate::recipe::Recipe;

#[derive(Args, Debug, Clone)]
pub struct GenArgs {
    /// Model: a diffusers folder, a Hugging Face repo (org/name) or an alias.
    #[arg(long, default_value = crate::models::DEFAULT_MODEL)]
    pub model: String,
    /// The source image.
    #[arg(long)]
    pub source: PathBuf,
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value = "")]
    pub negative: String,
    /// How far the output may move from the source: 0 keeps it, 1 ignores it.
    #[arg(long, default_value_t = 0.6)]
    pub strength: f64,
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    /// Classifier-free guidance scale; 1 or less turns it off (turbo models).
    #[arg(long, default_value_t = 7.5)]
    pub guidance: f64,
    /// Seed of the first image; random (and recorded) when absent.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Variations: image i uses seed + i.
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    /// ddim, euler, euler_a, dpmpp_2m, dpmpp_2m_karras or pndm; the model's own by default.
    #[arg(long)]
    pub scheduler: Option<SchedulerKind>,
    #[arg(long)]
    pub width: Option<u32>,
    #[arg(long)]
    pub height: Option<u32>,
    /// A rectangle of the source to use: X,Y,W,H in pixels.
    #[arg(long)]
    pub crop: Option<CropRect>,
    /// How the source is fitted to the size: crop, pad or stretch.
    #[arg(long, default_value = "crop")]
    pub fit: Fit,
    /// Initial noise from a safetensors file (`init_noise`, f32 [1, 4, h/8, w/8]).
    #[arg(long)]
    pub noise: Option<PathBuf>,
    /// cpu, cuda, cuda:N or metal; the best available by default.
    #[arg(long)]
    pub device: Option<String>,
    /// The output PNG; with --count N, FILE-1.png ... FILE-N.png. A
    /// `.safetensors` name writes the f32 image (`image`, [3, h, w] in [0, 1]).
    #[arg(long)]
    pub out: PathBuf,
    /// Print no progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// `FILE.png` for one image, `FILE-i.png` (1-based) for several.
pub fn output_path(out: &Path, index: usize, count: usize) -> PathBuf {
    if count <= 1 {
        return out.to_path_buf();
    }
    let stem = out.file_stem().unwrap_or_default().to_string_lossy();
    let ext = out
        .extension()
        .map(|e| e.to_string_lossy().to_string())
        .unwrap_or_else(|| "png".into());
    out.with_file_name(format!("{stem}-{}.{ext}", index + 1))
}

pub fn run(args: GenArgs) -> Result<()> {
    if args.count == 0 {
        anyhow::bail!("--count must be at least 1");
    }
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            anyhow::bail!("the output folder {} does not exist", parent.display());
        }
    }
    let model_dir = crate::models::resolve_model(&args.model)?;
    let source = SourceInput::load(&args.source)?;
    let device_name = args
        .device
        .clone()
        .unwrap_or_else(|| default_device_name().to_string());
    let (device, dtype) = open_device(&device_name)?;

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

    let mut engine = Engine::new(device, dtype);
    if !args.quiet {
        eprintln!("loading {} on {device_name}...", model_dir.display());
    }
    engine.load(&model_dir)?;

    let base_seed = args.seed.unwrap_or_else(|| rand::random::<u32>() as u64);
    for i in 0..args.count {
        let seed = base_seed.wrapping_add(i as u64);
        let req = Request {
            source: source.clone(),
            prompt: args.prompt.clone(),
            negative: args.negative.clone(),
            strength: args.strength,
            steps: args.steps,
            guidance: args.guidance,
            seed,
            scheduler: args.scheduler,
            width: args.width,
            height: args.height,
            crop: args.crop,
            fit: args.fit,
            noise_file: args.noise.clone(),
        };
        let bar = ProgressBar::hidden();
        if !args.quiet {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} steps {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("image {}/{}", i + 1, args.count));
        let mut on_event = |event: Event| match event {
            Event::Planned {
                steps_run,
                width,
                height,
                scheduler,
                ..
            } => {
                bar.set_length(steps_run as u64);
                bar.suspend(|| {
                    eprintln!(
                        "seed {seed}: {steps_run} of {} steps will run ({scheduler}, {width}x{height})",
                        args.steps
                    )
                });
            }
            Event::Step { index, seconds, .. } => {
                bar.set_position(index as u64);
                bar.set_message(format!("{seconds:.2} s/step"));
            }
            Event::Decoding => bar.set_message("decoding"),
        };
        let generation = match engine.generate(&req, &mut on_event, &cancel) {
            Err(e) if e.is::<Cancelled>() => {
                bar.abandon_with_message("cancelled");
                eprintln!("cancelled: no image written for seed {seed}");
                std::process::exit(130);
            }
            other => other?,
        };
        bar.finish_and_clear();

        let scheduler = generation.scheduler;
        let recipe = Recipe {
            prompt: args.prompt.clone(),
            negative: args.negative.clone(),
            strength: args.strength,
            steps: args.steps,
            guidance: args.guidance,
            seed,
            scheduler: scheduler.name().to_string(),
            width: generation.width,
            height: generation.height,
            crop: args.crop,
            fit: args.fit,
            model: args.model.clone(),
        };
        let record = serde_json::json!({
            "recipe": recipe,
            "steps_run": generation.steps_run,
            "timesteps_run": generation.timesteps_run,
            "device": device_name,
            "noise_file": args.noise.as_ref().map(|p| p.display().to_string()),
            "timings": generation.timings,
        });
        let path = output_path(&args.out, i, args.count);
        if path.extension().is_some_and(|e| e == "safetensors") {
            // The exact decoded image, for comparing with other implementations.
            candle_core::safetensors::save(
                &std::collections::HashMap::from([(
                    "image".to_string(),
                    generation.pixels.clone(),
                )]),
                &path,
            )
            .with_context(|| format!("cannot write {}", path.display()))?;
        } else {
            crate::png_meta::write_png(
                &path,
                &generation.image,
                &[
                    ("parameters", &recipe.to_infotext(scheduler.a1111_name())),
                    ("atelier", &serde_json::to_string(&record)?),
                ],
            )
            .with_context(|| format!("cannot write {}", path.display()))?;
        }
        let total: f64 = generation.timings.steps_s.iter().sum();
        println!(
            "{}  seed {seed}  {} steps  {:.2} s",
            path.display(),
            generation.steps_run,
            total
                + generation.timings.encode_text_s
                + generation.timings.encode_source_s
                + generation.timings.decode_s
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_names_outputs_with_a_suffix() {
        assert_eq!(
            output_path(Path::new("a/night.png"), 0, 1),
            PathBuf::from("a/night.png")
        );
        assert_eq!(
            output_path(Path::new("a/night.png"), 0, 3),
            PathBuf::from("a/night-1.png")
        );
        assert_eq!(
            output_path(Path::new("night.png"), 2, 3),
            PathBuf::from("night-3.png")
        );
    }
}
