//! The work between Winograd's input and output transforms, which F(4x4),
//! F(2x2) in f32 and the sub-pixel up-convolution share: per band, the
//! transformed input `V` in parallel over input channels; then per task
//! of output channels the kernel's transform `U` and the products `M[ξ] =
//! U[ξ] x V[ξ]`, one per position ξ of the input block, handed to the
//! task's output transform.
//!
//! The products run on [`f32_products`] where it is enabled (`V[ξ]` is
//! written as its panels, `U[ξ]` is the broadcast operand, as transformed,
//! and each chunk of input channels adds to `M` as it stores), else on
//! the gemm crate, which packs both operands at every call: on Zen 5 its
//! packing was 38% of F(2x2)'s time.

use std::cell::RefCell;

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::super::super::cache_lines::CACHE_LINE;
use super::super::super::f32_products::{self, Addends, Panels, PANEL};
use super::super::super::{product, SharedMut};
use super::super::ConvShape;
use super::{transform_input, Band, KernelTransform, Tiles};

/// Input channels transformed and multiplied at a time, so that a task's
/// transformed kernel (`36 * OUTPUT_CHUNK * INPUT_CHUNK` floats, 1.2 MB at most)
/// stays in cache between its transform and its products.
const INPUT_CHUNK: usize = 128;

thread_local! {
    /// Per-thread `U` and `M`, kept between calls.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// The products of one convolution: `chunk` output channels per task,
/// the kernel transformed by each of `transforms` (a slot per output
/// channel and transform; the sub-pixel up-convolution has one per
/// phase).
pub(super) struct Products<'a> {
    pub(super) kernel: &'a [f32],
    pub(super) transforms: &'a [KernelTransform],
    pub(super) chunk: usize,
}

impl Products<'_> {
    pub(super) fn run<T: Tiles>(
        &self,
        s: &ConvShape,
        input: &[f32],
        bands: impl Iterator<Item = Band>,
        output: impl Fn(&Band, std::ops::Range<usize>, &[f32]) + Sync,
    ) {
        let (c, k) = (s.in_channels, s.out_channels);
        let positions = T::IN * T::IN;
        let chunks: Vec<usize> = (0..k).step_by(self.chunk).collect();
        let ts = Transforms::new(self.transforms);
        let mut v = Vec::new();
        for band in bands {
            let layout = Layout::new(positions, c, &band);
            v.resize(layout.len(), 0.0);
            let v_at = SharedMut(v.as_mut_ptr());
            (0..c)
                .into_par_iter()
                .for_each(|ci| transform_input::<T>(s, input, ci, &band, (layout, v_at)));

            chunks.par_iter().for_each(|&k0| {
                let ks = k0..(k0 + self.chunk).min(k);
                let slots = ks.len() * self.transforms.len();
                SCRATCH.with(|scratch| {
                    let (u, m) = &mut *scratch.borrow_mut();
                    m.resize(positions * slots * band.stride, 0.0);
                    for c0 in (0..c).step_by(INPUT_CHUNK) {
                        let cs = c0..(c0 + INPUT_CHUNK).min(c);
                        u.resize(positions * u_position_step(slots, cs.len()), 0.0);
                        let kernel = self.kernel;
                        transform_kernel(&ts, positions, kernel, c, ks.clone(), cs.clone(), u);
                        multiply(&band, layout, slots, cs, u, &v, m);
                    }
                    output(&band, ks, m);
                });
            });
        }
    }
}

/// Where the transformed input `V[ξ][c][t]` lies, for the product that
/// reads it: `V[ξ][c][t..t + LANES]` is at `start(c, t) + ξ ·
/// position_step()`.
#[derive(Clone, Copy)]
pub(super) struct Layout {
    form: Form,
    channels: usize,
    positions: usize,
    /// Tiles in `V`'s rows: [`Band::stride`] or [`Band::padded`].
    tiles: usize,
}

#[derive(Clone, Copy)]
enum Form {
    /// `[C][P][stride]`: each `V[ξ]` a strided `[C, tiles]` matrix, for the
    /// gemm crate.
    Rows,
    /// `[P][channel block][panel][channels of the block][PANEL]`: `V[ξ]`
    /// of each [`INPUT_CHUNK`] input channels as [`f32_products`]' panels.
    Panels,
}

impl Layout {
    fn new(positions: usize, channels: usize, band: &Band) -> Self {
        let (form, tiles) = match f32_products::enabled() {
            true => (Form::Panels, band.padded),
            false => (Form::Rows, band.stride),
        };
        Self {
            form,
            channels,
            positions,
            tiles,
        }
    }

    fn len(&self) -> usize {
        match self.form {
            Form::Rows => self.channels * self.positions * self.tiles,
            Form::Panels => self.positions * self.position_step(),
        }
    }

    /// Floats from `V[ξ]` to `V[ξ + 1]`.
    pub(super) fn position_step(&self) -> usize {
        match self.form {
            Form::Rows => self.tiles,
            Form::Panels => self.channels.div_ceil(INPUT_CHUNK) * self.block_step(),
        }
    }

    /// Floats from one channel block's panels to the next: a cache line
    /// more than the panels (a power of two apart, the rows a tile's
    /// transform writes fell into one cache set).
    fn block_step(&self) -> usize {
        f32_products::packed_len(INPUT_CHUNK.min(self.channels), self.tiles) + 16
    }

    /// Where `V[0][c][t..t + LANES]` is, `t` a multiple of [`super::LANES`].
    pub(super) fn start(&self, c: usize, t: usize) -> usize {
        match self.form {
            Form::Rows => c * self.positions * self.tiles + t,
            Form::Panels => {
                let (block, c) = (c / INPUT_CHUNK, c % INPUT_CHUNK);
                let width = INPUT_CHUNK.min(self.channels - block * INPUT_CHUNK);
                block * self.block_step() + (t / PANEL * width + c) * PANEL + t % PANEL
            }
        }
    }
}

/// `M[ξ] += U[ξ] x V[ξ][cs]` for the positions ξ of the input block, over
/// the input channels `cs` (the first chunk of them overwrites `M`).
fn multiply(
    band: &Band,
    layout: Layout,
    slots: usize,
    cs: std::ops::Range<usize>,
    u: &[f32],
    v: &[f32],
    m: &mut [f32],
) {
    let (padded, stride, width) = (band.padded, band.stride, cs.len());
    for xi in 0..layout.positions {
        let m_at = m[xi * slots * stride..].as_mut_ptr();
        let u_at = u[xi * u_position_step(slots, width)..].as_ptr();
        let v_at = xi * layout.position_step() + layout.start(cs.start, 0);
        match layout.form {
            Form::Panels => {
                let panels = &v[v_at..][..f32_products::packed_len(width, padded)];
                let panels = Panels::packed(width, padded, panels);
                let accumulate = Addends {
                    bias: None,
                    residual: (cs.start > 0).then_some(m_at.cast_const()),
                };
                // SAFETY: U[ξ] is [slots, width] row-major and M[ξ] [slots,
                // padded] at row stride `stride` (>= padded), inside their
                // buffers; only this thread has them; the products are
                // enabled (the layout's form says so).
                unsafe {
                    f32_products::product_on_this_thread(
                        slots,
                        (m_at, stride, 1),
                        (u_at, width, 1),
                        &panels,
                        accumulate,
                    )
                };
            }
            // Computed as Mᵀ = Vᵀ Uᵀ (tiles as rows), which the gemm crate
            // runs faster for these shapes. SAFETY: Vᵀ[ξ] is [padded, cs]
            // at column stride P * stride from channel cs.start, Uᵀ[ξ] is
            // [cs, slots] at column stride cs.len(), Mᵀ[ξ] is [padded,
            // slots] at column stride `stride` (>= padded); all inside
            // their buffers.
            Form::Rows => unsafe {
                product(
                    [padded, slots, width],
                    (m_at, 1, stride),
                    cs.start > 0,
                    (v[v_at..].as_ptr(), 1, layout.positions * stride),
                    (u_at, 1, width),
                    1.0,
                    gemm::Parallelism::None,
                );
            },
        }
    }
}

/// The kernel transforms of one convolution, as factors (for
/// [`transform_taps_x86`]) and as matrices (for the gemm crate).
struct Transforms<'a> {
    factors: &'a [KernelTransform],
    /// [`KernelTransform::matrix`] of each factor.
    matrices: Vec<Vec<f32>>,
}

impl<'a> Transforms<'a> {
    fn new(factors: &'a [KernelTransform]) -> Self {
        let matrices = factors.iter().map(KernelTransform::matrix).collect();
        Self { factors, matrices }
    }
}

/// `U[ξ][o][c - cs.start] = (R g Cᵀ)[ξ]` for the 3x3 kernel `g` of every
/// output channel `k` in `ks` and input channel `c` in `cs`, once per
/// transform of `ts` (the sub-pixel up-convolution has one per output
/// phase), in slot `o = (k - ks.start) · transforms + the transform's
/// index`. On AVX-512, 16 input channels at a time
/// ([`transform_taps_x86`]); the rest as one `[IN², 9] x [9, cs]` product
/// with the transform's matrix (the taps of consecutive input channels are
/// 9 floats apart, which the product reads in place).
fn transform_kernel(
    ts: &Transforms,
    positions: usize,
    kernel: &[f32],
    c: usize,
    ks: std::ops::Range<usize>,
    cs: std::ops::Range<usize>,
    u: &mut [f32],
) {
    let (slots, width) = (ks.len() * ts.factors.len(), cs.len());
    let step = u_position_step(slots, width);
    assert!(u.len() >= positions * step);
    assert!(ts.factors.iter().all(|t| t.side * t.side == positions));
    assert!(ts.matrices.iter().all(|t| t.len() == positions * 9));
    let done = if avx512f() { width - width % 16 } else { 0 };
    let taps_of = |k: usize| &kernel[(k * c + cs.start) * 9..(k * c + cs.end) * 9];
    for (kk, k) in ks.clone().enumerate() {
        let taps = taps_of(k);
        let first_slot = kk * ts.factors.len();
        #[cfg(target_arch = "x86_64")]
        if done > 0 {
            let next = (k + 1 < ks.end).then(|| &taps_of(k + 1)[..done * 9]);
            // SAFETY: the CPU has AVX-512F (avx512f); U[ξ][first_slot +
            // phase][..done] is inside u (checked above).
            unsafe {
                let at = u.as_mut_ptr().add(first_slot * width);
                transform_taps_x86(
                    ts.factors,
                    [&taps[..done * 9], next.unwrap_or(&[])],
                    at,
                    [width, step],
                );
            }
        }
        if done == width {
            continue;
        }
        for (phase, t) in ts.matrices.iter().enumerate() {
            let slot = first_slot + phase;
            // SAFETY: t is [positions, 9] row-major (checked above); taps
            // from channel `done` is [width - done, 9] row-major, read as
            // its [9, width - done] transpose; U[ξ][slot][done..width] is
            // at row stride `step` from slot * width + done, inside
            // u (checked above).
            unsafe {
                product(
                    [positions, width - done, 9],
                    (u.as_mut_ptr().add(slot * width + done), step, 1),
                    false,
                    (t.as_ptr(), 9, 1),
                    (taps[done * 9..].as_ptr(), 1, 9),
                    1.0,
                    gemm::Parallelism::None,
                );
            }
        }
    }
}

/// Floats from `U[ξ]` (`[slots, width]`) to `U[ξ + 1]`: a cache line
/// more, so that the 36 stores the transform makes per 16 channels do not
/// all fall into one cache set (`slots · width` is a power of two).
fn u_position_step(slots: usize, width: usize) -> usize {
    slots * width + 16
}

fn avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    return is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Where each tap of 16 channels lies among their 144 floats (9
/// registers), for [`transform_taps_x86`]'s transpose: tap i of channel j
/// is float 9j + i, lane `lanes[i][j]` = (9j + i) % 32 of the register
/// pair (9j + i) / 32, which `masks[i][pair]` marks; one permute per pair
/// and a blend. Constants: made on every call (once per output channel),
/// these took 3.7% of a 640 -> 640 convolution at 16x16.
#[cfg(target_arch = "x86_64")]
struct TapTranspose {
    lanes: [[i32; 16]; 9],
    masks: [[u16; 5]; 9],
}

#[cfg(target_arch = "x86_64")]
const TAP_TRANSPOSE: TapTranspose = {
    let mut t = TapTranspose {
        lanes: [[0; 16]; 9],
        masks: [[0; 5]; 9],
    };
    let mut n = 0;
    while n < 9 * 16 {
        let (i, j) = (n / 16, n % 16);
        let float = 9 * j + i;
        t.lanes[i][j] = (float % 32) as i32;
        t.masks[i][float / 32] |= 1 << j;
        n += 1;
    }
    t
};

/// Groups of 16 channels' taps (576 bytes) that [`transform_taps_x86`]
/// asks for ahead of the one it transforms: the transform waits on the
/// kernel's bytes from memory more than on its own instructions (probe,
/// f32 F(2x2) 1280 -> 1280 at 8x8, batch 2: the transform's arithmetic cut
/// by two thirds and its permutes left out, 14.3 -> 13.4 ms; with this
/// prefetch 14.1-14.5 -> 12.7-12.8, at 2, 8 or 16 groups 12.9-13.5).
/// Old and new alternated: F(2x2) at 8x8 13-16% faster, F(4x4) at 16x16
/// 6-8%, at 32x32 1-2%; the f32 SD 1.5 UNet at 256 px 2-3%.
const PREFETCH_GROUPS: usize = 4;

/// [`transform_kernel`] for one output channel's `taps` (`[channels, 9]`,
/// channels a multiple of 16), 16 input channels at a time: their 144
/// taps loaded as 9 registers and transposed with permutes into one
/// register per tap, then per transform and block row `i` the row `(R
/// g)ᵢ` (9 multiply-adds) and from it the row's `side` positions (3
/// each). `u` is `U[0][the first transform's slot]`; `[phase_step,
/// position_step]` are the floats to the next transform's slot and to the
/// next position. `following` are the taps transformed next (the next
/// output channel's; may be empty), which the last groups prefetch. As
/// one gemm-crate product per output channel, this
/// transform took 36% of a 640 -> 640 convolution at 16x16 (`perf`),
/// almost as much as its products; with the `[36, 9]` matrix, 9
/// multiply-adds per position, about 28% (with gathers instead of
/// permutes, 37%). The factors against the matrix, calls alternated in
/// one process on Zen 4: 640 -> 640 at 16x16 7.64 -> 7.16 ms, 1920 -> 640
/// 23.3 -> 21.9, the 32x32 maps and the up-convolutions 1-3% faster; the
/// rest of the transform's time is the kernel's bytes coming from memory.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transform_taps_x86(
    ts: &[KernelTransform],
    [taps, following]: [&[f32]; 2],
    u: *mut f32,
    [phase_step, position_step]: [usize; 2],
) {
    use std::arch::x86_64::*;
    assert!(taps.len().is_multiple_of(16 * 9));
    let TapTranspose { lanes, masks } = &TAP_TRANSPOSE;
    // SAFETY: 16 i32 are one 512-bit load.
    let index: [__m512i; 9] =
        std::array::from_fn(|i| unsafe { _mm512_loadu_si512(lanes[i].as_ptr().cast()) });
    let groups = taps.len() / (16 * 9);
    for (group, channels) in taps.chunks_exact(16 * 9).enumerate() {
        let ahead = group + PREFETCH_GROUPS;
        let upcoming = match ahead < groups {
            true => taps.get(ahead * 16 * 9..),
            false => following.get((ahead - groups) * 16 * 9..),
        };
        if let Some(upcoming) = upcoming.filter(|u| !u.is_empty()) {
            let at = upcoming.as_ptr().cast::<i8>();
            // 576 bytes: nine lines (ten where they start mid-line; the
            // next group's prefetch covers the tenth).
            for line in 0..9 {
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(CACHE_LINE * line));
            }
        }
        // SAFETY: 9 loads of 16 floats cover the group's 144.
        let r: [__m512; 9] =
            std::array::from_fn(|q| unsafe { _mm512_loadu_ps(channels.as_ptr().add(16 * q)) });
        let g: [__m512; 9] = std::array::from_fn(|i| {
            let mut tap = _mm512_permutex2var_ps(r[0], index[i], r[1]);
            for pair in 1..5 {
                let high = if pair < 4 { r[2 * pair + 1] } else { r[8] };
                let picked = _mm512_permutex2var_ps(r[2 * pair], index[i], high);
                tap = _mm512_mask_blend_ps(masks[i][pair], tap, picked);
            }
            tap
        });
        // Three terms `c[0] · x[0] + c[1] · x[1] + c[2] · x[2]`.
        let dot = |c: &[f32; 3], x: [__m512; 3]| {
            let sum = _mm512_mul_ps(_mm512_set1_ps(c[0]), x[0]);
            let sum = _mm512_fmadd_ps(_mm512_set1_ps(c[1]), x[1], sum);
            _mm512_fmadd_ps(_mm512_set1_ps(c[2]), x[2], sum)
        };
        for (phase, t) in ts.iter().enumerate() {
            for i in 0..t.side {
                // (R g)ᵢ, one register per kernel column b: Σₐ R[i][a] g[a][b].
                let rg: [__m512; 3] =
                    std::array::from_fn(|b| dot(&t.rows[i], [g[b], g[3 + b], g[6 + b]]));
                for j in 0..t.side {
                    let sum = dot(&t.cols[j], rg);
                    // SAFETY: U[ξ][slot][16 · group..][..16] is inside U (the
                    // caller's promise).
                    unsafe {
                        let at = phase * phase_step + (i * t.side + j) * position_step + 16 * group;
                        _mm512_storeu_ps(u.add(at), sum)
                    };
                }
            }
        }
    }
}
