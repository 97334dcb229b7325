//! The engine's speed on a real-size architecture: one UNet call with
//! classifier-free guidance (batch 2) and a whole img2img, timed the same
//! way as benches/pytorch_reference.py. Run through benches/compare.sh,
//! which prepares the random-weight model and runs both side by side.
//!
//! Env: ATELIER_BENCH_MODEL (model folder), ATELIER_BENCH_SIZE (256),
//! ATELIER_BENCH_STEPS (20), ATELIER_BENCH_STRENGTH (0.5),
//! ATELIER_BENCH_REPEATS (3), ATELIER_BENCH_DEVICE (cpu).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use atelier::engine::device::open_device;
use atelier::engine::{Engine, Fit, Request, SourceInput};
use candle_core::{DType, Tensor};
use image::{DynamicImage, Rgb, RgbImage};

fn env<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The median of `repeats` timings returned by `f`.
fn median(repeats: usize, mut f: impl FnMut() -> f64) -> f64 {
    let mut times: Vec<f64> = (0..repeats).map(|_| f()).collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes --bench; anything else is ignored too.
    let Ok(model) = std::env::var("ATELIER_BENCH_MODEL") else {
        eprintln!("set ATELIER_BENCH_MODEL (benches/compare.sh does) to run this benchmark");
        return Ok(());
    };
    let size: u32 = env("ATELIER_BENCH_SIZE", 256);
    let steps: usize = env("ATELIER_BENCH_STEPS", 20);
    let strength: f64 = env("ATELIER_BENCH_STRENGTH", 0.5);
    let repeats: usize = env("ATELIER_BENCH_REPEATS", 3);
    let (device, dtype) = open_device(&env("ATELIER_BENCH_DEVICE", "cpu".to_string()))?;

    let mut engine = Engine::new(device.clone(), dtype);
    let m = engine.load(std::path::Path::new(&model))?;
    let lat = Tensor::randn(
        0f32,
        1.,
        (2, 4, size as usize / 8, size as usize / 8),
        &device,
    )?
    .to_dtype(dtype)?;
    let ctx = Tensor::randn(0f32, 1., (2, 77, m.unet_spec.cross_attention_dim), &device)?
        .to_dtype(dtype)?;
    let sync = |t: Tensor| {
        // Reading one value waits for asynchronous devices.
        let _ = t
            .flatten_all()
            .and_then(|t| t.get(0))
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.to_scalar::<f32>());
    };
    sync(m.unet.forward(&lat, 500.0, &ctx, None)?); // warm-up
    let unet_s = median(repeats, || {
        let t = Instant::now();
        sync(m.unet.forward(&lat, 500.0, &ctx, None).unwrap());
        t.elapsed().as_secs_f64()
    });

    let src = RgbImage::from_fn(size, size, |x, y| {
        Rgb([(x * 255 / size) as u8, (y * 255 / size) as u8, 128])
    });
    let req = Request {
        source: SourceInput {
            image: Arc::new(DynamicImage::ImageRgb8(src)),
            key: "bench".into(),
        },
        prompt: "a red fox in the snow".into(),
        negative: "blurry".into(),
        strength,
        steps,
        guidance: 7.5,
        seed: 0,
        scheduler: None,
        width: None,
        height: None,
        crop: None,
        fit: Fit::Crop,
        noise_file: None,
    };
    let cancel = AtomicBool::new(false);
    // Each run starts cold, like a fresh pipeline call: no cached encodings.
    let img2img_s = median(repeats, || {
        let mut fresh = Engine::new(device.clone(), dtype);
        fresh.load(std::path::Path::new(&model)).unwrap();
        let t = Instant::now();
        fresh.generate(&req, &mut |_| {}, &cancel).unwrap();
        t.elapsed().as_secs_f64()
    });
    println!(
        "{}",
        serde_json::json!({"impl": "atelier", "device": format!("{device:?}"), "unet_step_s": unet_s, "img2img_s": img2img_s})
    );
    Ok(())
}
