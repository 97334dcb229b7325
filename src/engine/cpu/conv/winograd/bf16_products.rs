//! Winograd's F(2x2, 3x3) with bf16 products (f32 sums), for `--dtype
//! bf16` on the CPU.
//!
//! F(4x4) does not survive bf16: its transforms' coefficients (up to 8
//! and 1/24) amplify the operands' rounding to about 2.5% relative error
//! per layer, where im2col in bf16 has 0.23%. F(2x2)'s are 0, ±1/2 and ±1,
//! and its error is 0.4%; F(3x3)'s, between them, 1.4% on either choice of
//! its fourth point (2 or 1/2), too much for 30% fewer products (all
//! measured in f64 on random 640- and 1280-channel layers:
//! `benches/winograd_bf16_error.py`). F(2x2) needs 4 multiplications per
//! output where im2col needs 9, at the same bf16 rate.
//!
//! The kernel's transform `U = G g Gᵀ` (16 values per channel pair) is made
//! once, when the model loads, and kept packed for the products: 32 bytes
//! per channel pair, where the im2col kernel and the f32 Winograd's bf16
//! taps took 36. Per band of tiles, the input's transform `V` is computed
//! (in AVX-512 registers for 8 tiles side by side, else as the f32
//! variant computes it) and packed as it is made into one left operand
//! whose rows are (position, tile); each position's rows are multiplied by
//! that position's `U` into `M` `[position][tile][K]`, whose contiguous
//! channels the products store as whole vectors and the output transform
//! reads 8 at a time, transposing each output row to pixels before it
//! stores it.

use std::cell::Cell;

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::super::super::bf16::round8;
use super::super::super::bf16::{self, ColumnPair, PackedLhs, PackedRhs, RHS_PANEL};
#[cfg(target_arch = "x86_64")]
use super::super::super::f32_products::transpose8;
use super::super::super::f32_products::Addends;
#[cfg(not(target_arch = "x86_64"))]
use super::super::super::vectorized;
use super::super::super::{product, SharedMut};
#[cfg(target_arch = "x86_64")]
use super::dealt_row_x86;
use super::LANES;
use super::{bands, output_block, transformed_block, Band, KernelTransform, Lane, Tiles, F2};
#[cfg(target_arch = "x86_64")]
use super::{permute_index, row_window_x86, same_tile_row, side_by_side};
use crate::engine::cpu::conv::ConvShape;

/// Positions of F(2x2, 3x3)'s 4x4 blocks.
const POSITIONS: usize = 16;

/// Tiles per band: `V` and `M` of a band stay in cache between the
/// transforms and the products (`M` of 512 tiles of 320 channels is 10.5
/// MB). With calls at 512 and 256 alternated in one process (Zen 4): 320
/// -> 320 at 32x32 (batch 2) 8.25 -> 7.11 ms, 960 -> 320 21.5 -> 17.9, 640
/// -> 640 at 32x32 27.6 -> 24.7, 512 at 64x64 38.5 -> 35.1, 256 at
/// 128x128 36.0 -> 32.4, 128 at 256x256 level; 128 tiles as good on the
/// UNet's maps but 14% slower on the VAE's 256x256 one.
const BAND_TILES: usize = 256;

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
        let t = KernelTransform::of::<F2>().matrix();
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
    assert_eq!(
        kernel.out_channels(),
        s.out_channels,
        "kernel's output channels"
    );
    assert_eq!(
        kernel.positions[0].k(),
        s.in_channels,
        "kernel's input channels"
    );

    let output = |band: &Band, ts, m: &[f32], out_ptr| {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX512-BF16 (asserted above); only this task
        // writes tiles `ts`.
        unsafe {
            transform_output_x86(s, band, ts, bias, m, out_ptr)
        };
        #[cfg(not(target_arch = "x86_64"))]
        vectorized(
            #[inline(always)]
            || transform_output(s, band, ts, bias, m, out_ptr),
        )
    };
    let input_pair =
        |band: &Band, p, pair: &mut ColumnPair| transform_input_pair(s, input, p, band, pair);
    // SAFETY: `transform_input_pair` puts every row of its pair (the
    // band's padded tiles too); the bands' tiles cover the output, and the
    // output transform writes each of their pixels inside it.
    unsafe {
        run_bands(
            s.output_len(),
            bands::<F2>(s, BAND_TILES),
            &kernel.positions,
            input_pair,
            output,
        )
    }
}

/// The bf16 Winograd pass that F(2x2, 3x3) and the sub-pixel
/// up-convolution (`super::bf16_upsampled`) share, band by band: `V`
/// packed as `input_pair(band, p, pair)` makes each pair `p` of input
/// channels (rows (ξ, tile) for the `positions.len()` positions ξ), each
/// position's rows times its `U` (`positions[ξ]`, `[C, K]`) into `M`
/// `[ξ][tile][K]`, then `output(band, tiles, M, out)` for groups of
/// [`OUTPUT_TILES`] of the band's tiles, in parallel, into the returned
/// `output_len` floats (not zeroed first).
///
/// # Safety
/// `input_pair` puts every row of its pair: `positions.len()` times the
/// band's `padded` tiles. `output` writes only inside `out` and only its
/// tiles' pixels, and over all the bands' tiles every one of the
/// `output_len` floats.
pub(super) unsafe fn run_bands(
    output_len: usize,
    bands: impl Iterator<Item = Band>,
    positions: &[PackedRhs],
    input_pair: impl Fn(&Band, usize, &mut ColumnPair) + Sync,
    output: impl Fn(&Band, std::ops::Range<usize>, &[f32], SharedMut) + Sync,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(output_len);
    let out_ptr = SharedMut(out.as_mut_ptr());
    let (c, k) = (positions[0].k(), positions[0].n());
    // Every element of M is written before it is read, so the buffer is
    // kept between calls rather than zeroed at each.
    let mut m = BUFFERS.take();
    // V's memory, reused across the bands (each fills all of it) but not
    // kept between calls: kept, it raised the peak at 512 px by 105 MiB
    // (the VAE's large maps no longer fit where it sat).
    let mut v = Vec::new();
    for band in bands {
        // Each position's rows start where AMX products can start a part
        // (with AMX, a band of 8 tiles gains 8 rows of zeros).
        let band = Band {
            padded: band.padded.next_multiple_of(bf16::row_padding()),
            ..band
        };
        let padded = band.padded;
        // V, packed as it is made: rows (ξ, tile), columns C, a pair of
        // input channels per task.
        // SAFETY: `input_pair` puts every row of its pair (the caller's
        // promise).
        let lhs = unsafe {
            PackedLhs::from_column_pairs_in(v, positions.len() * padded, c, |p, pair| {
                input_pair(&band, p, pair)
            })
        };

        // M: [ξ][tile][K], each tile's channels contiguous, so that the
        // products store whole vectors.
        m.resize(positions.len() * padded * k, 0.0);
        let m_ptr = SharedMut(m.as_mut_ptr());
        let kernel_lhs = bf16::KernelLhs::new(&lhs);
        let panel_tasks = k.div_ceil(RHS_PANEL).div_ceil(PANELS_PER_TASK);
        (0..positions.len() * panel_tasks)
            .into_par_iter()
            .for_each(|task| {
                let (xi, pt) = (task / panel_tasks, task % panel_tasks);
                let first = pt * PANELS_PER_TASK;
                let panels = first..(first + PANELS_PER_TASK).min(k.div_ceil(RHS_PANEL));
                // SAFETY: M[ξ]'s rows (every tile of the band), from channel
                // `first * RHS_PANEL` on, at row stride k, are inside m; only
                // this task writes these rows and channels.
                unsafe {
                    let at = m_ptr.ptr().add(xi * padded * k + first * RHS_PANEL);
                    bf16::product_part(
                        (at, k, 1),
                        &kernel_lhs,
                        xi * padded..(xi + 1) * padded,
                        &positions[xi],
                        panels,
                        Addends::default(),
                    );
                }
            });
        drop(kernel_lhs);
        v = lhs.into_buffer();

        (0..band.tiles)
            .step_by(OUTPUT_TILES)
            .collect::<Vec<_>>()
            .into_par_iter()
            .for_each(|t0| output(&band, t0..(t0 + OUTPUT_TILES).min(band.tiles), &m, out_ptr));
    }
    BUFFERS.set(m);
    // SAFETY: `output` wrote every float of it (the caller's promise).
    unsafe { out.set_len(output_len) };
    out
}

/// [`transform_input_lanes`] for every lane group of the band, in
/// registers where it can be ([`transform_input_pair_x86`]).
fn transform_input_pair(
    s: &ConvShape,
    input: &[f32],
    p: usize,
    band: &Band,
    pair: &mut ColumnPair,
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has AVX512-BF16 (conv2d asserts it).
    unsafe {
        transform_input_pair_x86(s, input, p, band, pair)
    };
    #[cfg(not(target_arch = "x86_64"))]
    vectorized(
        #[inline(always)]
        || {
            for t0 in (0..band.padded).step_by(LANES) {
                transform_input_lanes(s, input, p, band, t0, pair);
            }
        },
    )
}

/// `V = Bᵀ d B` of input channels `2p` and `2p + 1` for the [`LANES`]
/// tiles of the band from `t0`, put into rows `(ξ, t0..)` of the pair.
#[inline(always)]
fn transform_input_lanes(
    s: &ConvShape,
    input: &[f32],
    p: usize,
    band: &Band,
    t0: usize,
    pair: &mut ColumnPair,
) {
    let even = transformed_block::<F2>(s, input, 2 * p, band, t0);
    let odd = if 2 * p + 1 < s.in_channels {
        transformed_block::<F2>(s, input, 2 * p + 1, band, t0)
    } else {
        [[[0.0; LANES]; 6]; 6]
    };
    for i in 0..F2::IN {
        for j in 0..F2::IN {
            pair.put((i * F2::IN + j) * band.padded + t0, &even[i][j], &odd[i][j]);
        }
    }
}

/// [`transform_input_lanes`] over the whole band, in registers wherever
/// 16 or [`LANES`] tiles lie side by side in one row of tiles (every lane
/// group of maps 16 pixels wide or more): each block row is dealt out
/// straight from the input ([`dealt16_row_x86`], [`dealt_row_x86`]),
/// transformed and rounded to bf16 without going through memory. The
/// generic transform built each block in arrays on the stack, zeroed at
/// every call, and took 40% of a 320-channel convolution at 64x64. 16
/// tiles at a time where they fit took 1-3% off the UNet's convolutions
/// at 32x32 (the transform waits on memory more than on instructions).
///
/// # Safety
/// The CPU has AVX512-BF16 ([`bf16::available`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
unsafe fn transform_input_pair_x86(
    s: &ConvShape,
    input: &[f32],
    p: usize,
    band: &Band,
    pair: &mut ColumnPair,
) {
    use std::arch::x86_64::*;
    let zeros = [[_mm_setzero_si128(); 4]; 4];
    let zeros16 = [[_mm256_setzero_si256(); 4]; 4];
    let odd_channel = 2 * p + 1 < s.in_channels;
    let mut t0 = 0;
    while t0 < band.padded {
        if side_by_side(band, t0, 2 * LANES) {
            let even = transformed16_bf16_x86(s, input, 2 * p, band, t0);
            let odd = match odd_channel {
                true => transformed16_bf16_x86(s, input, 2 * p + 1, band, t0),
                false => zeros16,
            };
            for i in 0..F2::IN {
                for j in 0..F2::IN {
                    let row = (i * F2::IN + j) * band.padded + t0;
                    // SAFETY: the CPU has the instructions (the caller's
                    // promise).
                    unsafe { pair.put16_bf16(row, even[i][j], odd[i][j]) };
                }
            }
            t0 += 2 * LANES;
            continue;
        }
        if !same_tile_row(band, t0) {
            transform_input_lanes(s, input, p, band, t0, pair);
            t0 += LANES;
            continue;
        }
        let even = transformed_bf16_x86(s, input, 2 * p, band, t0);
        let odd = match odd_channel {
            true => transformed_bf16_x86(s, input, 2 * p + 1, band, t0),
            false => zeros,
        };
        for i in 0..F2::IN {
            for j in 0..F2::IN {
                // SAFETY: the CPU has the instructions (the caller's
                // promise).
                unsafe {
                    pair.put_bf16((i * F2::IN + j) * band.padded + t0, even[i][j], odd[i][j])
                };
            }
        }
        t0 += LANES;
    }
}

/// [`transformed_bf16_x86`] of the 16 side-by-side tiles from `t0`, each
/// position's values in one 512-bit register: half the instructions per
/// tile of two groups of 8 (maps 32 pixels wide or more).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
#[inline]
fn transformed16_bf16_x86(
    s: &ConvShape,
    input: &[f32],
    ci: usize,
    band: &Band,
    t0: usize,
) -> [[std::arch::x86_64::__m256i; 4]; 4] {
    use std::arch::x86_64::*;
    let (h, w) = (s.height, s.width);
    let (n, y, x) = band.origin(t0);
    let plane = &input[(n * s.in_channels + ci) * h * w..][..h * w];
    // d[i][j]: block row i (image row y + i - 1), zero outside the image.
    let mut d = [[_mm512_setzero_ps(); 4]; 4];
    for (i, row) in d.iter_mut().enumerate() {
        let iy = y + i;
        if iy >= 1 && iy <= h {
            *row = dealt16_row_x86(&plane[(iy - 1) * w..][..w], x);
        }
    }
    let mut columns = [[_mm512_setzero_ps(); 4]; 4];
    for j in 0..4 {
        let column = input_1d16_x86([d[0][j], d[1][j], d[2][j], d[3][j]]);
        for (row, value) in columns.iter_mut().zip(column) {
            row[j] = value;
        }
    }
    let mut v = [[_mm256_setzero_si256(); 4]; 4];
    for (out, row) in v.iter_mut().zip(columns) {
        let row = input_1d16_x86(row);
        for (value, x) in out.iter_mut().zip(row) {
            // SAFETY: both are 32 bytes of plain data.
            *value = unsafe { std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(x)) };
        }
    }
    v
}

/// Columns `j < 4` of the blocks of the 16 tiles whose blocks start at
/// column `x - 1` of an input row: lane `l` of register `j` is column
/// `x - 1 + 2l + j`, zero outside the row. Columns 0 and 1 come from the
/// same 32 floats (from `x - 1`), 2 and 3 from the 32 from `x + 1`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn dealt16_row_x86(source: &[f32], x: usize) -> [std::arch::x86_64::__m512; 4] {
    use std::arch::x86_64::*;
    let mut dealt = [_mm512_setzero_ps(); 4];
    for base in [0, 2] {
        let (low, high) = row_window_x86(source, x as isize - 1 + base as isize);
        for (j, lanes) in dealt.iter_mut().enumerate().skip(base).take(2) {
            let index = permute_index(|l| 2 * l + j - base);
            *lanes = _mm512_permutex2var_ps(low, index, high);
        }
    }
    dealt
}

/// [`F2::input_1d`] on 512-bit registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn input_1d16_x86(a: [std::arch::x86_64::__m512; 4]) -> [std::arch::x86_64::__m512; 4] {
    use std::arch::x86_64::*;
    [
        _mm512_sub_ps(a[0], a[2]),
        _mm512_add_ps(a[1], a[2]),
        _mm512_sub_ps(a[2], a[1]),
        _mm512_sub_ps(a[1], a[3]),
    ]
}

/// `Bᵀ d B` of input channel `ci` for the [`LANES`] side-by-side tiles from
/// `t0`, rounded to bf16: [`F2::input_1d`] down the block's columns, then
/// along its rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
#[inline]
fn transformed_bf16_x86(
    s: &ConvShape,
    input: &[f32],
    ci: usize,
    band: &Band,
    t0: usize,
) -> [[std::arch::x86_64::__m128i; 4]; 4] {
    use std::arch::x86_64::*;
    let (h, w) = (s.height, s.width);
    let (n, y, x) = band.origin(t0);
    let plane = &input[(n * s.in_channels + ci) * h * w..][..h * w];
    // d[i][j]: block row i (image row y + i - 1), zero outside the image.
    let mut d = [[_mm256_setzero_ps(); 4]; 4];
    for (i, row) in d.iter_mut().enumerate() {
        let iy = y + i;
        if iy >= 1 && iy <= h {
            let dealt = dealt_row_x86::<F2>(&plane[(iy - 1) * w..][..w], x);
            row.copy_from_slice(&dealt[..4]);
        }
    }
    // Plain loops and calls: closures and `map` here were compiled as
    // functions of their own, without the vector instructions.
    let mut columns = [[_mm256_setzero_ps(); 4]; 4];
    for j in 0..4 {
        let column = input_1d_x86([d[0][j], d[1][j], d[2][j], d[3][j]]);
        for (row, value) in columns.iter_mut().zip(column) {
            row[j] = value;
        }
    }
    let mut v = [[_mm_setzero_si128(); 4]; 4];
    for (out, row) in v.iter_mut().zip(columns) {
        let row = input_1d_x86(row);
        for (value, x) in out.iter_mut().zip(row) {
            *value = round8(x);
        }
    }
    v
}

/// [`F2::input_1d`] on registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
fn input_1d_x86(a: [std::arch::x86_64::__m256; 4]) -> [std::arch::x86_64::__m256; 4] {
    use std::arch::x86_64::*;
    [
        _mm256_sub_ps(a[0], a[2]),
        _mm256_add_ps(a[1], a[2]),
        _mm256_sub_ps(a[2], a[1]),
        _mm256_sub_ps(a[1], a[3]),
    ]
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

/// [`transform_output`] in registers for each group of [`LANES`] tiles
/// side by side in one row of tiles (the others through
/// [`transform_output`]): per 8 output channels, each tile's `Aᵀ M A`,
/// then each output row's 16 pixels (8 tiles of 2) transposed from
/// channels-in-lanes to pixels-in-lanes ([`transpose8`]) and stored a
/// channel at a time as two vectors. [`transform_output`] stored each
/// value on its own, across as many cache lines as channels.
///
/// # Safety
/// The CPU has AVX512-BF16 ([`bf16::available`]); `out` is the NCHW
/// output of `s`, whose tiles `ts` only this task writes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
// The loops' indices are the block's rows and columns, in the formulas.
#[allow(clippy::needless_range_loop)]
unsafe fn transform_output_x86(
    s: &ConvShape,
    band: &Band,
    ts: std::ops::Range<usize>,
    bias: &[f32],
    m: &[f32],
    out: SharedMut,
) {
    use std::arch::x86_64::*;
    let (h, w, k) = (s.height, s.width, s.out_channels);
    let stride = band.padded * k;
    assert!(m.len() >= POSITIONS * stride, "M of the band");
    assert_eq!(bias.len(), k, "bias");
    let fallback = |group| transform_output(s, band, group, bias, m, out);
    for_each_tile_group(band, ts, fallback, |t0| {
        let (n, y, x) = band.origin(t0);
        let rows = F2::OUT.min(h - y);
        // Pixels x.. of an output row that lie inside it: 16 or fewer.
        let masks = pixel_masks::<2>(w - x);
        for k0 in (0..k).step_by(LANES) {
            let lanes = LANES.min(k - k0);
            let channels = ((1u32 << lanes) - 1) as u8;
            // y_[l][i][j]: tile l's output (i, j), channels k0.. in lanes.
            let mut tiles = [[[_mm256_setzero_ps(); 2]; 2]; LANES];
            for (l, tile) in tiles.iter_mut().enumerate() {
                // SAFETY: M[ξ][t0 + l][k0..k0 + lanes] lies inside m (the
                // band's tiles, checked above), and the mask keeps the
                // load within the channels.
                let at = |xi: usize| unsafe {
                    _mm256_maskz_loadu_ps(channels, m.as_ptr().add(xi * stride + (t0 + l) * k + k0))
                };
                // Aᵀ down each column j of the 4x4 block, then along rows.
                let mut columns = [[_mm256_setzero_ps(); 4]; 2];
                for j in 0..4 {
                    let (m0, m1, m2, m3) = (at(j), at(4 + j), at(8 + j), at(12 + j));
                    columns[0][j] = _mm256_add_ps(_mm256_add_ps(m0, m1), m2);
                    columns[1][j] = _mm256_sub_ps(_mm256_sub_ps(m1, m2), m3);
                }
                for (i, c) in columns.iter().enumerate() {
                    tile[i][0] = _mm256_add_ps(_mm256_add_ps(c[0], c[1]), c[2]);
                    tile[i][1] = _mm256_sub_ps(_mm256_sub_ps(c[1], c[2]), c[3]);
                }
            }
            for i in 0..rows {
                // Pixel 2l + j of the row, channels in lanes, as two 8x8
                // transposes: halves of 4 tiles each.
                let halves: [[__m256; 8]; 2] = std::array::from_fn(|half| {
                    let pixels = std::array::from_fn(|q| tiles[4 * half + q / 2][i][q % 2]);
                    transpose8(pixels)
                });
                // SAFETY: pixels x.. of output row y + i within the masks
                // lie inside the output, in tiles only this task writes.
                unsafe {
                    store_pixel_rows(out, &halves, masks, bias, k0..k0 + lanes, |kk| {
                        (n * k + kk) * h * w + (y + i) * w + x
                    })
                };
            }
        }
    });
}

/// The frame of both register output transforms (F(2x2, 3x3)'s and the
/// sub-pixel up-convolution's): each group of [`LANES`] of the band's
/// tiles `ts` that lie side by side in one row of tiles goes to
/// `group(first tile)`, each other group to `fallback` (the portable
/// transform).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn for_each_tile_group(
    band: &Band,
    ts: std::ops::Range<usize>,
    mut fallback: impl FnMut(std::ops::Range<usize>),
    mut group: impl FnMut(usize),
) {
    for t0 in ts.clone().step_by(LANES) {
        let tiles = t0..(t0 + LANES).min(ts.end);
        if tiles.len() == LANES && same_tile_row(band, t0) {
            group(t0);
        } else {
            fallback(tiles);
        }
    }
}

/// The store masks of `Q` vectors of 8 pixels from a row's first pixel
/// when `inside` of the row's pixels from there lie inside the output.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn pixel_masks<const Q: usize>(inside: usize) -> [u8; Q] {
    let inside = inside.min(8 * Q);
    std::array::from_fn(|q| {
        let from = (8 * q).min(inside);
        ((1u32 << (inside - from).min(8)) - 1) as u8
    })
}

/// For each output channel `kk` of `channels`: vector `q` of `values`
/// (pixels `8q..` in lanes, the channel's lane taken from each) plus the
/// channel's bias, stored from `row(kk) + 8q` through `masks[q]` (none
/// where the mask is empty).
///
/// # Safety
/// Every pixel the masks keep lies inside `out`, in tiles only this task
/// writes; `bias` holds every channel of `channels`, and `channels` has at
/// most 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
#[inline]
pub(super) unsafe fn store_pixel_rows<const Q: usize>(
    out: SharedMut,
    values: &[[std::arch::x86_64::__m256; 8]; Q],
    masks: [u8; Q],
    bias: &[f32],
    channels: std::ops::Range<usize>,
    row: impl Fn(usize) -> usize,
) {
    use std::arch::x86_64::*;
    let k0 = channels.start;
    for kk in channels {
        let b = _mm256_set1_ps(bias[kk]);
        let row = row(kk);
        for (q, vectors) in values.iter().enumerate().filter(|q| masks[q.0] != 0) {
            // SAFETY: the pixels the mask keeps lie inside the output (the
            // caller's promise).
            unsafe {
                _mm256_mask_storeu_ps(
                    out.ptr().add(row + 8 * q),
                    masks[q],
                    _mm256_add_ps(vectors[kk - k0], b),
                )
            };
        }
    }
}
