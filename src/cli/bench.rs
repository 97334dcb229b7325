//! `atelier bench`: speed of the engine on real architectures with random
//! weights (or on a model folder), as a table and as JSON lines.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use crate::benchmark::{self, Arch, BenchResult, BenchSettings, ProfilePart};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Architectures to run with random weights: sd15, sd21, sdxl (repeatable).
    #[arg(long = "arch", default_value = "sd15")]
    pub archs: Vec<String>,
    /// Measure this model folder (its own weights) instead of --arch.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Square size in pixels [default: each architecture's native size].
    #[arg(long)]
    pub size: Option<u32>,
    /// Width in pixels [default: --size].
    #[arg(long)]
    pub width: Option<u32>,
    /// Height in pixels [default: --size].
    #[arg(long)]
    pub height: Option<u32>,
    /// cpu, cuda, cuda:N or metal [default: the best available].
    #[arg(long)]
    pub device: Option<String>,
    /// f32, f16 or bf16 [default: f32 on the CPU, f16 on GPUs].
    #[arg(long)]
    pub dtype: Option<String>,
    /// The img2img's schedule length; it runs steps x strength UNet calls.
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    /// The img2img's strength.
    #[arg(long, default_value_t = 0.6)]
    pub strength: f64,
    /// The img2img's guidance scale (1 or less: one image per UNet call
    /// instead of two); the UNet step is timed at batch 2 either way.
    #[arg(long, default_value_t = 7.5)]
    pub guidance: f64,
    /// The negative prompt of the UNet call and the img2img ("" on SDXL:
    /// the zeros an empty negative conditions on).
    #[arg(long, default_value = "blurry")]
    pub negative: String,
    /// Timed repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Also break one UNet call down by kind of work (norms, convolutions,
    /// attention, ...), synchronising the device around each part.
    #[arg(long)]
    pub profile: bool,
    /// Print one JSON object per line instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write the architecture's configs (no weights) to this folder and stop:
    /// benches/pytorch_bench.py builds its networks from them.
    #[arg(long)]
    pub write_configs: Option<PathBuf>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let archs = args
        .archs
        .iter()
        .map(|a| Arch::parse(a))
        .collect::<Result<Vec<_>>>()?;
    if let Some(dir) = &args.write_configs {
        let [arch] = archs.as_slice() else {
            bail!("--write-configs takes exactly one --arch");
        };
        arch.write_configs(dir)?;
        println!("{}", dir.display());
        return Ok(());
    }
    let (device, dtype) =
        crate::engine::device::resolve(args.device.as_deref(), args.dtype.as_deref())?;
    let settings = |native: u32| -> Result<BenchSettings> {
        let width = args.width.or(args.size).unwrap_or(native);
        let height = args.height.or(args.size).unwrap_or(native);
        if !width.is_multiple_of(8) || !height.is_multiple_of(8) || width == 0 || height == 0 {
            bail!("bench sizes must be positive multiples of 8 (got {width}x{height})");
        }
        crate::engine::pipeline::validate_settings(args.strength, args.steps, args.guidance)?;
        Ok(BenchSettings {
            width,
            height,
            steps: args.steps,
            strength: args.strength,
            guidance: args.guidance,
            repeats: args.repeats,
            negative: args.negative.clone(),
            profile: args.profile,
        })
    };
    if !args.json {
        println!("{}", header());
    }
    let report = |r: BenchResult| -> Result<()> {
        if args.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!("{}", row(&r));
            if !r.device.starts_with("cpu") {
                println!(
                    "    the host queues a UNet call in {:.1} ms of its {:.1}",
                    r.unet_queue_ms, r.unet_step_ms
                );
            }
            for (parts, per) in [
                (&r.unet_profile, "UNet call"),
                (&r.vae_decode_profile, "VAE decode"),
            ] {
                for p in parts {
                    println!("{}", profile_line(p, per));
                }
            }
        }
        Ok(())
    };
    match &args.model {
        Some(dir) => report(benchmark::run_folder(dir, &device, dtype, &settings(512)?)?)?,
        None => {
            for arch in archs {
                report(benchmark::run(
                    arch,
                    &device,
                    dtype,
                    &settings(arch.native_size())?,
                )?)?;
            }
        }
    }
    Ok(())
}

fn header() -> String {
    format!(
        "{:<6} {:<16} {:<5} {:>9} {:>12} {:>10} {:>10} {:>10} {:>6} {:>24} {:>10}",
        "model",
        "device",
        "dtype",
        "size",
        "unet ms/step",
        "vae enc ms",
        "vae dec ms",
        "img2img s",
        "calls",
        "rerun 1st step ms s/p/str",
        "peak MiB"
    )
}

fn row(r: &BenchResult) -> String {
    let rerun = &r.rerun_first_step_ms;
    format!(
        "{:<6} {:<16} {:<5} {:>9} {:>12.1} {:>10.1} {:>10.1} {:>10.2} {:>6} {:>24} {:>10.0}",
        r.arch,
        r.device,
        r.dtype,
        format!("{}x{}", r.width, r.height),
        r.unet_step_ms,
        r.vae_encode_ms,
        r.vae_decode_ms,
        r.img2img_s,
        r.unet_calls,
        format!(
            "{:.0}/{:.0}/{:.0}",
            rerun.seed_ms, rerun.prompt_ms, rerun.strength_ms
        ),
        r.peak_memory_mib
    )
}

/// One line of the `--profile` breakdown: time, and where the layers count
/// their arithmetic, how much and at what rate.
fn profile_line(p: &ProfilePart, per: &str) -> String {
    let work = match p.rate() {
        // Three decimals below one GFLOP, so that small models' parts
        // do not all read 0.0.
        Some(rate) => {
            let decimals = if p.gflop < 1.0 { 3 } else { 1 };
            format!("{:>9.*} GFLOP {:>8.0} GFLOP/s", decimals, p.gflop, rate)
        }
        None => String::new(),
    };
    format!("    {:<28} {:>10.2} ms per {per:<10} {work}", p.part, p.ms)
        .trim_end()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_lines_give_a_rate_where_the_layers_counted_their_arithmetic() {
        let part = |part: &str, ms, gflop| ProfilePart {
            part: part.into(),
            ms,
            gflop,
        };
        let conv = profile_line(&part("conv 3x3", 200.0, 160.0), "UNet call");
        assert!(conv.ends_with("160.0 GFLOP      800 GFLOP/s"), "{conv}");
        let small = profile_line(&part("conv 3x3", 2.0, 0.049), "UNet call");
        assert!(small.contains(" 0.049 GFLOP "), "{small}");
        let norm = profile_line(&part("group norm + silu", 6.25, 0.0), "VAE decode");
        assert!(norm.ends_with("6.25 ms per VAE decode"), "{norm}");
    }
}
