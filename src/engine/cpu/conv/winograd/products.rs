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

use super::super::super::f32_products::{self, Addends, Panels, PANEL};
use super::super::super::{product, SharedMut};
use super::super::ConvShape;
use super::{transform_input, Band, Tiles};

/// Input channels transformed and multiplied at a time, so that a task's
/// transformed kernel (`36 * OUTPUT_CHUNK * INPUT_CHUNK` floats, 1.2 MB at most)
/// stays in cache between its transform and its products.
const INPUT_CHUNK: usize = 128;

thread_local! {
    /// Per-thread `U` and `M`, kept between calls.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// The products of one convolution: `chunk` output channels per task,
/// the kernel transformed by each of `matrices` (a slot per output
/// channel and matrix; the sub-pixel up-convolution has one per phase).
pub(super) struct Products<'a> {
    pub(super) kernel: &'a [f32],
    pub(super) matrices: &'a [&'a [f32]],
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
                let slots = ks.len() * self.matrices.len();
                SCRATCH.with(|scratch| {
                    let (u, m) = &mut *scratch.borrow_mut();
                    m.resize(positions * slots * band.stride, 0.0);
                    for c0 in (0..c).step_by(INPUT_CHUNK) {
                        let cs = c0..(c0 + INPUT_CHUNK).min(c);
                        u.resize(positions * slots * cs.len(), 0.0);
                        let (matrices, kernel) = (self.matrices, self.kernel);
                        transform_kernel(matrices, positions, kernel, c, ks.clone(), cs.clone(), u);
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
        let u_at = u[xi * slots * width..].as_ptr();
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

/// `U[ξ][o][c - cs.start] = (T g)[ξ]` for the 3x3 kernel `g` of every
/// output channel `k` in `ks` and input channel `c` in `cs`, once per
/// matrix `T` of `ts` (`[IN², 9]`, [`super::kernel_matrix`]; the sub-pixel
/// up-convolution has one per output phase), in slot `o = (k - ks.start) ·
/// ts.len() + the matrix's index`. One `[IN², 9] x [9, cs]` product each
/// (the taps of consecutive input channels are 9 floats apart, which the
/// product reads in place; gathering them into lanes by hand took as long
/// as the convolution's own products on 16x16 maps).
fn transform_kernel(
    ts: &[&[f32]],
    positions: usize,
    kernel: &[f32],
    c: usize,
    ks: std::ops::Range<usize>,
    cs: std::ops::Range<usize>,
    u: &mut [f32],
) {
    let (slots, width) = (ks.len() * ts.len(), cs.len());
    assert!(u.len() >= positions * slots * width);
    assert!(ts.iter().all(|t| t.len() == positions * 9));
    for (kk, k) in ks.enumerate() {
        let taps = &kernel[(k * c + cs.start) * 9..(k * c + cs.end) * 9];
        for (phase, t) in ts.iter().enumerate() {
            let slot = kk * ts.len() + phase;
            // SAFETY: t is [positions, 9] row-major (checked above); taps
            // is [width, 9] row-major, read as its [9, width] transpose;
            // U[ξ][slot][..width] is at row stride slots * width from slot *
            // width, inside u (checked above).
            unsafe {
                product(
                    [positions, width, 9],
                    (u.as_mut_ptr().add(slot * width), slots * width, 1),
                    false,
                    (t.as_ptr(), 9, 1),
                    (taps.as_ptr(), 1, 9),
                    1.0,
                    gemm::Parallelism::None,
                );
            }
        }
    }
}
