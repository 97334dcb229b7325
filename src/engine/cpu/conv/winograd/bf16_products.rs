//! Winograd's F(2x2, 3x3) with bf16 products (f32 sums), for `--dtype
//! bf16` on the CPU.
//!
//! F(4x4) does not survive bf16: its transforms' coefficients (up to 8
//! and 1/24) amplify the operands' rounding to about 2.5% relative error
//! per layer, where im2col in bf16 has 0.23%. F(2x2)'s are 0, ±1/2 and ±1,
//! and its error is 0.4% (both measured in f64 on random 640- and
//! 1280-channel layers). It needs 4 multiplications per output where im2col
//! needs 9, at the same bf16 rate.
//!
//! The kernel's transform `U = G g Gᵀ` (16 values per channel pair) is made
//! once, when the model loads, and kept packed for the products: 32 bytes
//! per channel pair, where the im2col kernel and the f32 Winograd's bf16
//! taps took 36. Per band of tiles, the input's transform `V` is computed
//! as the f32 variant computes it and packed as it is made into one left
//! operand whose rows are (position, tile); each position's rows are
//! multiplied by that position's `U` into `M` `[position][tile][K]`, whose
//! contiguous channels the products store as whole vectors and the output
//! transform reads [`LANES`] at a time.

use std::cell::Cell;

use rayon::prelude::*;

use super::super::super::bf16::{self, PackedLhs, PackedRhs, RHS_PANEL};
use super::super::super::f32_products::Addends;
use super::super::super::{product, vectorized, SharedMut};
use super::LANES;
use super::{bands, kernel_matrix, output_block, transformed_block, Band, Lane, Tiles, F2};
use crate::engine::cpu::conv::ConvShape;

/// Positions of F(2x2, 3x3)'s 4x4 blocks.
const POSITIONS: usize = 16;

/// Tiles per task of the output transform.
const OUTPUT_TILES: usize = 16;

/// Panels of output channels per product task.
const PANELS_PER_TASK: usize = 2;

thread_local! {
    /// The products `M` of the last call on this thread.
    static BUFFERS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// A 3x3 kernel transformed for [`conv2d`]: `U[ξ]` as the `[C, K]` right
/// operand of position ξ's product.
pub struct TransformedKernel {
    positions: Vec<PackedRhs>,
}

impl TransformedKernel {
    /// From `kernel` `[K, C, 3, 3]`.
    pub fn new(kernel: &[f32], out_channels: usize, in_channels: usize) -> Self {
        let pairs = out_channels * in_channels;
        assert_eq!(kernel.len(), pairs * 9, "kernel size");
        let t = kernel_matrix::<F2>();
        let mut u = vec![0f32; POSITIONS * pairs];
        // SAFETY: t is [16, 9] row-major; the kernel is [K * C, 9]
        // row-major, read as its [9, K * C] transpose; u is [16, K * C]
        // row-major, so that U[ξ] is [K, C].
        unsafe {
            product(
                [POSITIONS, pairs, 9],
                (u.as_mut_ptr(), pairs, 1),
                false,
                (t.as_ptr(), 9, 1),
                (kernel.as_ptr(), 1, 9),
                1.0,
                gemm::Parallelism::Rayon(0),
            );
        }
        let positions = (0..POSITIONS)
            .map(|xi| {
                let u = &u[xi * pairs..][..pairs];
                PackedRhs::from_columns(in_channels, out_channels, |k| {
                    &u[k * in_channels..][..in_channels]
                })
            })
            .collect();
        Self { positions }
    }

    fn out_channels(&self) -> usize {
        self.positions[0].n()
    }
}

/// `output = conv(input, kernel) + bias` for a 3x3 convolution with stride 1
/// and padding 1, NCHW.
pub fn conv2d(s: &ConvShape, input: &[f32], kernel: &TransformedKernel, bias: &[f32]) -> Vec<f32> {
    assert!(s.kernel == 3 && s.stride == 1 && s.padding == 1);
    assert!(bf16::available(), "{}", bf16::UNAVAILABLE);
    let (c, k) = (s.in_channels, s.out_channels);
    assert_eq!(kernel.out_channels(), k, "kernel's output channels");
    assert_eq!(kernel.positions[0].k(), c, "kernel's input channels");

    let mut out = vec![0f32; s.output_len()];
    let out_ptr = SharedMut(out.as_mut_ptr());
    // Every element of M is written before it is read, so the buffer is
    // kept between calls rather than zeroed at each.
    let mut m = BUFFERS.take();
    for band in bands::<F2>(s) {
        let padded = band.padded;
        // V, packed as it is made: rows (ξ, tile), columns C, a pair of
        // input channels per task.
        let lhs = PackedLhs::from_column_pairs(POSITIONS * padded, c, |p, pair| {
            vectorized(
                #[inline(always)]
                || {
                    for t0 in (0..padded).step_by(LANES) {
                        let even = transformed_block::<F2>(s, input, 2 * p, &band, t0);
                        let odd = if 2 * p + 1 < c {
                            transformed_block::<F2>(s, input, 2 * p + 1, &band, t0)
                        } else {
                            [[[0.0; LANES]; 6]; 6]
                        };
                        for i in 0..F2::IN {
                            for j in 0..F2::IN {
                                let row = (i * F2::IN + j) * padded + t0;
                                pair.put(row, &even[i][j], &odd[i][j]);
                            }
                        }
                    }
                },
            )
        });

        // M: [ξ][tile][K], each tile's channels contiguous, so that the
        // products store whole vectors.
        m.resize(POSITIONS * padded * k, 0.0);
        let m_ptr = SharedMut(m.as_mut_ptr());
        let panel_tasks = k.div_ceil(RHS_PANEL).div_ceil(PANELS_PER_TASK);
        (0..POSITIONS * panel_tasks)
            .into_par_iter()
            .for_each(|task| {
                let (xi, pt) = (task / panel_tasks, task % panel_tasks);
                let rhs = &kernel.positions[xi];
                let first = pt * PANELS_PER_TASK;
                let panels = first..(first + PANELS_PER_TASK).min(k.div_ceil(RHS_PANEL));
                // SAFETY: M[ξ]'s rows (every tile of the band), from channel
                // `first * RHS_PANEL` on, at row stride k, are inside m; only
                // this task writes these rows and channels.
                unsafe {
                    let at = m_ptr.ptr().add(xi * padded * k + first * RHS_PANEL);
                    bf16::product_part(
                        (at, k, 1),
                        &lhs,
                        xi * padded..(xi + 1) * padded,
                        rhs,
                        panels,
                        Addends::default(),
                    );
                }
            });

        (0..band.tiles)
            .step_by(OUTPUT_TILES)
            .collect::<Vec<_>>()
            .into_par_iter()
            .for_each(|t0| {
                let ts = t0..(t0 + OUTPUT_TILES).min(band.tiles);
                vectorized(
                    #[inline(always)]
                    || transform_output(s, &band, ts, bias, &m, out_ptr),
                )
            });
    }
    BUFFERS.set(m);
    out
}

/// `Y = Aᵀ M A + bias` for the band's tiles `ts`, from `m` `[ξ][tile][K]`
/// (a tile's channels [`LANES`] at a time), written into the NCHW output
/// (cut at the right and bottom edges).
#[inline(always)]
fn transform_output(
    s: &ConvShape,
    band: &Band,
    ts: std::ops::Range<usize>,
    bias: &[f32],
    m: &[f32],
    out: SharedMut,
) {
    let (h, w, k) = (s.height, s.width, s.out_channels);
    let stride = band.padded * k;
    for t in ts {
        let (n, y, x) = band.origin(t);
        for k0 in (0..k).step_by(LANES) {
            let lanes = LANES.min(k - k0);
            let at = |xi: usize| -> Lane {
                let from = &m[xi * stride + t * k + k0..];
                if lanes == LANES {
                    from[..LANES].try_into().expect("one lane")
                } else {
                    std::array::from_fn(|l| if l < lanes { from[l] } else { 0.0 })
                }
            };
            let block = output_block::<F2>(at);
            for (l, kk) in (k0..k0 + lanes).enumerate() {
                let plane = (n * k + kk) * h * w;
                for (i, row) in block.iter().enumerate().take(F2::OUT.min(h - y)) {
                    for (j, value) in row.iter().enumerate().take(F2::OUT.min(w - x)) {
                        // SAFETY: inside the output (the loop bounds stop at
                        // its edges); each tile's pixels are written by the
                        // one task that owns the tile.
                        unsafe {
                            *out.ptr().add(plane + (y + i) * w + x + j) = value[l] + bias[kk];
                        }
                    }
                }
            }
        }
    }
}
