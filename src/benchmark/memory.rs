//! Peak memory for the benchmark: the process's peak resident set on the
//! CPU; on CUDA the device memory in use (total - free, as the driver
//! reports it), sampled after each timed call, which is how the PyTorch
//! script measures it too.

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::Device;

static DEVICE_PEAK: AtomicU64 = AtomicU64::new(0);

pub fn reset() {
    DEVICE_PEAK.store(0, Ordering::Relaxed);
}

pub fn sample(device: &Device) {
    if let Some(used) = device_used_bytes(device) {
        DEVICE_PEAK.fetch_max(used, Ordering::Relaxed);
    }
}

pub fn peak_mib(device: &Device) -> f64 {
    let bytes = match device {
        Device::Cpu => cpu_peak_rss_bytes(),
        _ => DEVICE_PEAK.load(Ordering::Relaxed),
    };
    bytes as f64 / (1024.0 * 1024.0)
}

fn cpu_peak_rss_bytes() -> u64 {
    // SAFETY: getrusage only writes the struct it is given.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) == 0 {
            return usage.ru_maxrss as u64 * 1024; // kilobytes on Linux
        }
    }
    0
}

#[cfg(feature = "cuda")]
fn device_used_bytes(device: &Device) -> Option<u64> {
    if !device.is_cuda() {
        return None;
    }
    let (free, total) = candle_core::cuda::cudarc::driver::result::mem_get_info().ok()?;
    Some((total - free) as u64)
}

#[cfg(not(feature = "cuda"))]
fn device_used_bytes(_device: &Device) -> Option<u64> {
    None
}
