//! An opt-in profile of the UNet by kind of work (group norms, convolutions,
//! self- and cross-attention, ...): each section synchronises the device
//! before and after, so the times are real but the whole call gets slower.
//! Off unless `enable(true)`; `atelier bench --profile` prints it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use candle_core::{Device, Result};

static ENABLED: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<BTreeMap<&'static str, (f64, usize)>> = Mutex::new(BTreeMap::new());

pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Runs `f`, charging its time to `name` when profiling is on.
pub fn section<T>(name: &'static str, device: &Device, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if !ENABLED.load(Ordering::Relaxed) {
        return f();
    }
    device.synchronize()?;
    let started = Instant::now();
    let out = f()?;
    device.synchronize()?;
    let mut totals = TOTALS.lock().expect("profile lock");
    let entry = totals.entry(name).or_default();
    entry.0 += started.elapsed().as_secs_f64() * 1e3;
    entry.1 += 1;
    Ok(out)
}

/// The totals so far, largest first: (section, milliseconds, calls); resets them.
pub fn take() -> Vec<(&'static str, f64, usize)> {
    let mut totals = TOTALS.lock().expect("profile lock");
    let mut out: Vec<_> = totals.iter().map(|(k, (ms, n))| (*k, *ms, *n)).collect();
    totals.clear();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}
