//! An opt-in profile of the UNet by kind of work (group norms, convolutions,
//! self- and cross-attention, ...): each section synchronises the device
//! before and after, so the times are real but the whole call gets slower.
//! Sections also count the arithmetic their layers did ([`count_flops`]),
//! so that a time can be read against the chip's rate.
//!
//! Off unless `enable(true)`; `atelier bench --profile` prints it. The
//! profile belongs to the thread that enables it: the model's layers run
//! on the thread that calls the model (their kernels' workers time and
//! count nothing), and a profile on one thread leaves others' work out.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{Device, Result};

thread_local! {
    static ENABLED: Cell<bool> = const { Cell::new(false) };
    static FLOPS: Cell<u64> = const { Cell::new(0) };
    static TOTALS: RefCell<BTreeMap<&'static str, Totals>> = const { RefCell::new(BTreeMap::new()) };
}

/// One section's totals so far.
#[derive(Clone, Copy, Default)]
struct Totals {
    ms: f64,
    calls: usize,
    flops: u64,
}

/// One section of the profile, as [`take`] returns it.
#[derive(Clone, Debug, PartialEq)]
pub struct Part {
    pub name: &'static str,
    pub ms: f64,
    pub calls: usize,
    /// The floating-point operations its layers counted.
    pub flops: u64,
}

/// Profiles this thread's sections from now on (or stops).
pub fn enable(on: bool) {
    ENABLED.with(|e| e.set(on));
}

pub fn enabled() -> bool {
    ENABLED.with(Cell::get)
}

/// Charges `flops` to the sections running now, when profiling is on.
/// Layers call it with their nominal arithmetic (a multiply-add counts
/// two), not what their algorithm saves: a Winograd convolution counts
/// what a direct one would do.
pub fn count_flops(flops: usize) {
    if enabled() {
        FLOPS.with(|f| f.set(f.get() + flops as u64));
    }
}

/// Runs `f`, charging its time and counted arithmetic to `name` when
/// profiling is on.
pub fn section<T>(name: &'static str, device: &Device, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if !enabled() {
        return f();
    }
    device.synchronize()?;
    let flops_before = FLOPS.with(Cell::get);
    let started = Instant::now();
    let out = f()?;
    device.synchronize()?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let flops = FLOPS.with(Cell::get) - flops_before;
    TOTALS.with(|totals| {
        let mut totals = totals.borrow_mut();
        let entry = totals.entry(name).or_default();
        entry.ms += ms;
        entry.calls += 1;
        entry.flops += flops;
    });
    Ok(out)
}

/// The totals so far, largest time first; resets them.
pub fn take() -> Vec<Part> {
    let totals = TOTALS.with(|totals| std::mem::take(&mut *totals.borrow_mut()));
    let mut out: Vec<Part> = totals
        .into_iter()
        .map(|(name, t)| Part {
            name,
            ms: t.ms,
            calls: t.calls,
            flops: t.flops,
        })
        .collect();
    out.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    out
}

/// The arithmetic `f` counts, run profiled on this thread (for tests).
#[cfg(test)]
pub fn flops_of<T>(f: impl FnOnce() -> Result<T>) -> Result<u64> {
    enable(true);
    let out = section("flops_of", &Device::Cpu, f);
    enable(false);
    let parts = take();
    out?;
    Ok(parts
        .iter()
        .find(|p| p.name == "flops_of")
        .map_or(0, |p| p.flops))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sections keep their own arithmetic, counted only while profiling.
    #[test]
    fn sections_charge_their_time_and_arithmetic() {
        let dev = Device::Cpu;
        count_flops(1000);
        enable(true);
        section("outer", &dev, || {
            count_flops(10);
            section("inner", &dev, || {
                count_flops(5);
                Ok(())
            })
        })
        .unwrap();
        section("inner", &dev, || {
            count_flops(7);
            Ok(())
        })
        .unwrap();
        enable(false);
        count_flops(1000);
        section("unprofiled", &dev, || Ok(())).unwrap();
        let parts = take();
        let part = |name| parts.iter().find(|p| p.name == name);
        let outer = part("outer").unwrap();
        let inner = part("inner").unwrap();
        assert_eq!((outer.flops, outer.calls), (15, 1));
        assert_eq!((inner.flops, inner.calls), (12, 2));
        assert!(part("unprofiled").is_none());
        assert!(take().is_empty(), "take resets the totals");
    }
}
