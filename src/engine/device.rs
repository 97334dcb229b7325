//! `--device cpu | cuda[:N] | metal`, and the precision each runs in.

use anyhow::{bail, Result};
use candle_core::{DType, Device};

/// Opens the named device. f32 on the CPU (its half-precision matmuls are
/// slow or missing); f16 on GPUs.
pub fn open_device(name: &str) -> Result<(Device, DType)> {
    let name = name.trim().to_ascii_lowercase();
    if name == "cpu" {
        return Ok((Device::Cpu, DType::F32));
    }
    if let Some(rest) = name.strip_prefix("cuda") {
        let ordinal = match rest.strip_prefix(':') {
            None if rest.is_empty() => 0,
            Some(n) => n
                .parse()
                .map_err(|_| anyhow::anyhow!("bad CUDA device {name:?}: use cuda or cuda:N"))?,
            None => bail!("bad device {name:?}: use cpu, cuda, cuda:N or metal"),
        };
        if !candle_core::utils::cuda_is_available() {
            bail!("this atelier was built without CUDA; rebuild with `cargo build --release --features cuda`");
        }
        let device = Device::new_cuda(ordinal)
            .map_err(|e| anyhow::anyhow!("cannot open CUDA device {ordinal}: {e}"))?;
        untrack_cuda_events(&device);
        return Ok((device, DType::F16));
    }
    if name == "metal" {
        if !candle_core::utils::metal_is_available() {
            bail!("this atelier was built without Metal; rebuild with `cargo build --release --features metal`");
        }
        let device = Device::new_metal(0)
            .map_err(|e| anyhow::anyhow!("cannot open the Metal device: {e}"))?;
        return Ok((device, DType::F16));
    }
    bail!("unknown device {name:?}: use cpu, cuda, cuda:N or metal")
}

/// Turns off cudarc's per-tensor CUDA events, for the tensors made from now
/// on (the weights, and everything after). They order work between streams
/// (an event recorded and waited on per kernel argument); atelier runs each
/// device on its one stream, where launch order already orders the work.
/// Measured on an H200: the same step time, 0.5 GiB less peak memory (SD 1.5
/// at 512 px). `ATELIER_CUDA_EVENTS=on` keeps them (an A/B baseline).
fn untrack_cuda_events(device: &Device) {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        if std::env::var("ATELIER_CUDA_EVENTS").as_deref() != Ok("on") {
            // SAFETY: one stream per device (candle's), so no tensor is used
            // on another stream than the one it was made and freed on.
            unsafe { cuda.disable_event_tracking() }
        }
    }
    #[cfg(not(feature = "cuda"))]
    let _ = device;
}

/// `--device` and `--dtype` as given (None: the best device, its default
/// precision), refusing combinations that cannot run.
pub fn resolve(device: Option<&str>, dtype: Option<&str>) -> Result<(Device, DType)> {
    let (device, default_dtype) = open_device(device.unwrap_or(default_device_name()))?;
    let dtype = match dtype {
        Some(d) => parse_dtype(d)?,
        None => default_dtype,
    };
    // Checked here too, before a project records a run that cannot start.
    if device.is_cpu() && dtype == DType::BF16 && !super::cpu::bf16::available() {
        bail!(super::cpu::bf16::UNAVAILABLE);
    }
    Ok((device, dtype))
}

/// The best device this build and machine have.
pub fn default_device_name() -> &'static str {
    if candle_core::utils::cuda_is_available() {
        "cuda"
    } else if candle_core::utils::metal_is_available() {
        "metal"
    } else {
        "cpu"
    }
}

/// A device and the precision it runs in, as run records name them (`cpu
/// bf16`): both move the pixels.
pub fn label(device_name: &str, dtype: DType) -> String {
    format!("{device_name} {}", dtype_name(dtype))
}

/// The name `--dtype` takes for `dtype`.
pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "other",
    }
}

/// `--dtype f32 | f16 | bf16`: overrides the device's default precision.
pub fn parse_dtype(name: &str) -> Result<DType> {
    Ok(match name.trim().to_ascii_lowercase().as_str() {
        "f32" | "float32" => DType::F32,
        "f16" | "float16" | "fp16" => DType::F16,
        "bf16" | "bfloat16" => DType::BF16,
        other => bail!("unknown dtype {other:?}: use f32, f16 or bf16"),
    })
}
