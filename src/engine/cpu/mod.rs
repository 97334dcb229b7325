//! f32 kernels for the CPU where candle's generic ones leave most of the
//! machine idle: convolutions, linear layers, attention, GEGLU, group and
//! layer norms, sums in place.
//! Each works on plain slices; the layers in `engine` call them through
//! candle custom ops when a tensor is f32 on the CPU and use candle's own
//! ops everywhere else.

pub mod add;
#[cfg(target_arch = "x86_64")]
pub mod amx;
pub mod attention;
mod attention_bf16;
pub mod bf16;
pub(crate) mod cache_lines;
pub mod conv;
pub mod f32_products;
pub mod geglu;
pub mod group_norm;
pub mod layer_norm;
pub mod linear;
mod math;
pub mod ops;
#[cfg(target_arch = "x86_64")]
mod pairs;
pub mod upsample;

/// Shares a mutable pointer between the threads that write disjoint parts
/// of one buffer.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(pub(crate) *mut f32);
// SAFETY: only used where each thread writes a part no other thread reads
// or writes.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer (a method, so that closures capture the whole wrapper
    /// rather than its raw field).
    pub(crate) fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// `dst = scale · lhs · rhs`, or `dst += scale · lhs · rhs` when
/// `accumulate`, for `dst` `[m, n]`, `lhs` `[m, k]` and `rhs` `[k, n]`, each
/// given as (pointer, row stride, column stride) in floats: the one place
/// that spells out the gemm crate's call, whose strides go column first.
///
/// # Safety
/// Every element of each matrix at its strides lies inside its buffer, and
/// no other thread reads or writes `dst`'s elements meanwhile.
pub(crate) unsafe fn product(
    [m, n, k]: [usize; 3],
    dst: (*mut f32, usize, usize),
    accumulate: bool,
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize, usize),
    scale: f32,
    parallelism: gemm::Parallelism,
) {
    // SAFETY: as the caller promises.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            dst.2 as isize,
            dst.1 as isize,
            accumulate,
            lhs.0,
            lhs.2 as isize,
            lhs.1 as isize,
            rhs.0,
            rhs.2 as isize,
            rhs.1 as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Runs `f` compiled for the widest vector instructions this CPU has
/// (AVX-512, or AVX2 with FMA, on x86-64), chosen at run time: the crate
/// itself is built for baseline x86-64, whose loops are 4 floats wide.
/// `f` and what it calls must be inlined into it (`#[inline(always)]`) to
/// take the wider instructions; work handed to other threads inside `f`
/// does not.
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// Each UNet step allocates and frees the same large buffers (tens of MiB,
/// tens of times). glibc's defaults hand buffers that size back to the
/// kernel on free and fault them in again, page by page, on the next step:
/// on the CPU that was a fifth of an img2img's time (SD 1.5 at 256 px: 7.1M
/// page faults, 19 s of system time; with these settings 1.2M and 6 s).
/// Keep freed memory in the process instead; the peak stays the same.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 512 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
