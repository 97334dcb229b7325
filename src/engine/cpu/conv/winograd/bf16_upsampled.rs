//! A 3x3 convolution (stride 1, padding 1) of a nearest-2x-upsampled map
//! with bf16 products, computed from the map before upsampling: the
//! up-convolutions for `--dtype bf16`, without the upsampled copy and with
//! 44% fewer multiplications than F(2x2, 3x3) on the upsampled map.
//!
//! As in the f32 path ([`super::upsampled`]), each of the four output
//! phases (the row and column parity of an upsampled pixel) is a 2x2
//! convolution of the low-resolution map, its taps sums of the 3x3
//! kernel's ([`FOLD`]). Here each phase runs as Winograd's F(2x2, 2x2) on
//! the points 0, 1 and ∞, whose transforms hold only 0 and ±1, so bf16's
//! rounding is not amplified: 9 multiplications give a phase's 2x2
//! outputs, 36 a 4x4 block of the upsampled output, where F(2x2, 3x3) on
//! the upsampled map takes 64 (16 per 2x2 block). The transformed kernel
//! is 36 values per channel pair where F(2x2, 3x3)'s is 16.
//!
//! The tiles are F(2x2, 3x3)'s: tile `(y, x)` (every 2 low-resolution rows
//! and columns) reads the 4x4 input block from `(y - 1, x - 1)`. Phase
//! `(a, b)` takes the 3x3 block inside it from `(a, b)` and gives the
//! upsampled pixels `(2(y + i) + a, 2(x + j) + b)` for `i, j` in 0 and 1.
//! Everything else (bands, V packed as it is made, the products, `M`) is
//! the F(2x2) path's ([`run_bands`]).

#[cfg(target_arch = "x86_64")]
use super::super::super::bf16::round8;
use super::super::super::bf16::{self, ColumnPair, PackedRhs};
#[cfg(target_arch = "x86_64")]
use super::super::super::f32_products::transpose8;
use super::super::super::{product, vectorized, SharedMut};
use super::bf16_products::run_bands;
#[cfg(target_arch = "x86_64")]
use super::bf16_products::{for_each_tile_group, pixel_masks, store_pixel_rows};
use super::upsampled::FOLD;
use super::{bands, gather_blocks, lanes, Band, KernelTransform, Lane, F2, LANES};
#[cfg(target_arch = "x86_64")]
use super::{dealt_row_x86, same_tile_row};
use crate::engine::cpu::conv::ConvShape;

/// Output phases: (row parity, column parity) of the upsampled pixel.
const PHASES: usize = 4;

/// Positions of one phase's 3x3 block.
const POSITIONS: usize = 9;

/// Tiles per band: 36 positions' rows of `V` and `M` per tile, where
/// F(2x2, 3x3) has 16 and bands of 256 tiles, so that a band's `M` is
/// about as large (128 tiles of 1280 channels: 23.6 MB).
const BAND_TILES: usize = 128;

/// G of F(2, 2) on the points 0, 1, ∞ (the transforms' 1-D factors are
/// [`input_1d`], this and [`output_1d`]).
const G: [[f32; 2]; 3] = [[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]];

/// The kernel transform of phase `(a, b)`: `(G Fₐ) g (G F_b)ᵀ`.
fn phase_transform(a: usize, b: usize) -> KernelTransform {
    let fold = |a: usize| -> [[f32; 3]; 6] {
        std::array::from_fn(|i| match i {
            0..3 => {
                std::array::from_fn(|tap| G[i][0] * FOLD[a][0][tap] + G[i][1] * FOLD[a][1][tap])
            }
            _ => [0.0; 3],
        })
    };
    KernelTransform {
        side: 3,
        rows: fold(a),
        cols: fold(b),
    }
}

/// A 3x3 kernel transformed for [`conv2d`]: `U[phase][ξ]` as the `[C, K]`
/// right operand of that position's product (index `phase * 9 + ξ`).
pub struct SubPixelKernel {
    positions: Vec<PackedRhs>,
}

impl SubPixelKernel {
    /// From `kernel` `[K, C, 3, 3]`.
    pub fn new(kernel: &[f32], out_channels: usize, in_channels: usize) -> Self {
        let pairs = out_channels * in_channels;
        assert_eq!(kernel.len(), pairs * 9, "kernel size");
        // A phase at a time: all 36 positions in f32 at once would be 236
        // MB for 1280 channels.
        let mut u = vec![0f32; POSITIONS * pairs];
        let mut positions = Vec::with_capacity(PHASES * POSITIONS);
        for phase in 0..PHASES {
            let t = phase_transform(phase / 2, phase % 2).matrix();
            // SAFETY: t is [9, 9] row-major; the kernel is [K * C, 9]
            // row-major, read as its [9, K * C] transpose; u is [9, K * C]
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
            positions.extend(u.chunks_exact(pairs).map(|u| {
                PackedRhs::from_columns(in_channels, out_channels, |k| {
                    &u[k * in_channels..][..in_channels]
                })
            }));
        }
        Self { positions }
    }

    pub fn in_channels(&self) -> usize {
        self.positions[0].k()
    }

    pub fn out_channels(&self) -> usize {
        self.positions[0].n()
    }
}

/// `conv(upsample2x(input), kernel) + bias` (nearest neighbour; 3x3,
/// stride 1, padding 1 on the upsampled map), NCHW: `s` is the
/// convolution's shape on the map before upsampling, and the output is
/// `[batch, K, 2h, 2w]`.
pub fn conv2d(s: &ConvShape, input: &[f32], kernel: &SubPixelKernel, bias: &[f32]) -> Vec<f32> {
    assert!(s.kernel == 3 && s.stride == 1 && s.padding == 1);
    assert!(bf16::available(), "{}", bf16::UNAVAILABLE);
    assert_eq!(input.len(), s.input_len(), "input size");
    assert_eq!(
        (kernel.in_channels(), kernel.out_channels()),
        (s.in_channels, s.out_channels),
        "kernel's channels"
    );
    assert_eq!(bias.len(), s.out_channels, "bias size");
    let input_pair = |band: &Band, p, pair: &mut ColumnPair| {
        vectorized(
            #[inline(always)]
            || transform_input_pair(s, input, p, band, pair),
        )
    };
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
    // SAFETY: `transform_input_pair` puts all 36 positions' rows of its
    // pair for every lane group of the band's padded tiles; the tiles
    // cover the low-resolution map, and the output transform writes all
    // four phases' pixels of each tile's rows and columns inside the
    // output: every pixel of the upsampled output.
    unsafe {
        run_bands(
            s.batch * s.out_channels * 4 * s.height * s.width,
            bands::<F2>(s, BAND_TILES),
            &kernel.positions,
            input_pair,
            output,
        )
    }
}

/// `V` of input channels `2p` and `2p + 1` for every tile of the band, put
/// into rows `(phase · 9 + ξ, tile)` of the pair: in registers for each
/// group of [`LANES`] tiles side by side in a row of tiles
/// ([`transformed_x86`]), the others through [`transform_lanes`]. On 640
/// channels at 16x16 the generic path alone was 15% of the convolution.
#[inline(always)]
fn transform_input_pair(
    s: &ConvShape,
    input: &[f32],
    p: usize,
    band: &Band,
    pair: &mut ColumnPair,
) {
    let mut scratch = Scratch::default();
    for t0 in (0..band.padded).step_by(LANES) {
        #[cfg(target_arch = "x86_64")]
        if same_tile_row(band, t0) {
            // SAFETY: the CPU has AVX512-BF16 (conv2d asserts it).
            unsafe { put_transformed_x86(s, input, p, band, t0, pair) };
            continue;
        }
        transform_lanes(s, input, p, band, t0, pair, &mut scratch);
    }
}

/// [`transform_lanes`]' arrays, kept across a pair's lane groups.
struct Scratch {
    d: [[Lane; 6]; 6],
    even: [Lane; PHASES * POSITIONS],
    odd: [Lane; PHASES * POSITIONS],
}

impl Default for Scratch {
    fn default() -> Self {
        Self {
            d: [[[0.0; LANES]; 6]; 6],
            even: [[0.0; LANES]; PHASES * POSITIONS],
            odd: [[0.0; LANES]; PHASES * POSITIONS],
        }
    }
}

/// `V` of input channels `2p` and `2p + 1` for the [`LANES`] tiles from
/// `t0`, any tiles.
#[inline(always)]
fn transform_lanes(
    s: &ConvShape,
    input: &[f32],
    p: usize,
    band: &Band,
    t0: usize,
    pair: &mut ColumnPair,
    Scratch { d, even, odd }: &mut Scratch,
) {
    transform_block(s, input, 2 * p, band, t0, d, even);
    match 2 * p + 1 < s.in_channels {
        true => transform_block(s, input, 2 * p + 1, band, t0, d, odd),
        false => *odd = [[0.0; LANES]; PHASES * POSITIONS],
    }
    for (xi, (even, odd)) in even.iter().zip(odd.iter()).enumerate() {
        pair.put(xi * band.padded + t0, even, odd);
    }
}

/// [`transform_lanes`] for [`LANES`] tiles side by side in one row of
/// tiles, in registers.
///
/// # Safety
/// The CPU has AVX512-BF16 ([`bf16::available`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
unsafe fn put_transformed_x86(
    s: &ConvShape,
    input: &[f32],
    p: usize,
    band: &Band,
    t0: usize,
    pair: &mut ColumnPair,
) {
    use std::arch::x86_64::*;
    let even = transformed_x86(s, input, 2 * p, band, t0);
    let odd = match 2 * p + 1 < s.in_channels {
        true => transformed_x86(s, input, 2 * p + 1, band, t0),
        false => [_mm_setzero_si128(); PHASES * POSITIONS],
    };
    for (xi, (even, odd)) in even.into_iter().zip(odd).enumerate() {
        // SAFETY: the CPU has the instructions (the caller's promise).
        unsafe { pair.put_bf16(xi * band.padded + t0, even, odd) };
    }
}

/// [`transform_block`] of channel `ci` for [`LANES`] tiles side by side in
/// one row of tiles, each input row dealt out to them straight from the
/// input (`dealt_row_x86`), rounded to bf16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
#[inline]
fn transformed_x86(
    s: &ConvShape,
    input: &[f32],
    ci: usize,
    band: &Band,
    t0: usize,
) -> [std::arch::x86_64::__m128i; PHASES * POSITIONS] {
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
    let mut v = [_mm_setzero_si128(); PHASES * POSITIONS];
    // Plain loops, as in `transformed_bf16_x86`: closures were compiled
    // without the vector instructions.
    for a in 0..2 {
        let mut columns = [[_mm256_setzero_ps(); 4]; 3];
        for j in 0..4 {
            let column = input_1d_x86([d[a][j], d[a + 1][j], d[a + 2][j]]);
            for (row, value) in columns.iter_mut().zip(column) {
                row[j] = value;
            }
        }
        for b in 0..2 {
            for (i, row) in columns.iter().enumerate() {
                let values = input_1d_x86([row[b], row[b + 1], row[b + 2]]);
                for (j, value) in values.into_iter().enumerate() {
                    v[(2 * a + b) * POSITIONS + 3 * i + j] = round8(value);
                }
            }
        }
    }
    v
}

/// [`input_1d`] on registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
fn input_1d_x86(d: [std::arch::x86_64::__m256; 3]) -> [std::arch::x86_64::__m256; 3] {
    use std::arch::x86_64::*;
    [_mm256_sub_ps(d[0], d[1]), d[1], _mm256_sub_ps(d[2], d[1])]
}

/// The 36 values of `V` (phase by phase, each 3x3 row-major) of input
/// channel `ci` for the [`LANES`] tiles of the band from `t0`, from their
/// 4x4 input blocks (read into `d`).
#[inline(always)]
fn transform_block(
    s: &ConvShape,
    input: &[f32],
    ci: usize,
    band: &Band,
    t0: usize,
    d: &mut [[Lane; 6]; 6],
    v: &mut [Lane; PHASES * POSITIONS],
) {
    gather_blocks::<F2>(s, input, ci, band, t0, d);
    for a in 0..2 {
        // Bᵀ down each column of block rows a..a + 3.
        let mut columns = [[[0f32; LANES]; 4]; 3];
        for j in 0..4 {
            let column = input_1d([d[a][j], d[a + 1][j], d[a + 2][j]]);
            for (row, value) in columns.iter_mut().zip(column) {
                row[j] = value;
            }
        }
        // Then along block columns b..b + 3 of each row.
        for b in 0..2 {
            for (i, row) in columns.iter().enumerate() {
                let values = input_1d([row[b], row[b + 1], row[b + 2]]);
                let at = (2 * a + b) * POSITIONS + 3 * i;
                v[at..at + 3].copy_from_slice(&values);
            }
        }
    }
}

/// Bᵀ of F(2, 2) on the points 0, 1, ∞.
#[inline(always)]
fn input_1d(d: [Lane; 3]) -> [Lane; 3] {
    [
        lanes(|l| d[0][l] - d[1][l]),
        d[1],
        lanes(|l| d[2][l] - d[1][l]),
    ]
}

/// Aᵀ of F(2, 2) on the same points.
#[inline(always)]
fn output_1d(m: [Lane; 3]) -> [Lane; 2] {
    [lanes(|l| m[0][l] + m[1][l]), lanes(|l| m[1][l] + m[2][l])]
}

/// `Aᵀ M A` of one phase's 3x3 block: `at(ξ)` is position ξ's lanes.
#[inline(always)]
fn phase_block(at: impl Fn(usize) -> Lane) -> [[Lane; 2]; 2] {
    let mut rows = [[[0f32; LANES]; 3]; 2];
    for j in 0..3 {
        let column = output_1d([at(j), at(3 + j), at(6 + j)]);
        for (row, value) in rows.iter_mut().zip(column) {
            row[j] = value;
        }
    }
    rows.map(output_1d)
}

/// `Aᵀ M A + bias` of every phase for the band's tiles `ts`, from `m`
/// `[phase · 9 + ξ][tile][K]` (a tile's channels [`LANES`] at a time),
/// written into the upsampled NCHW output (cut at its right and bottom
/// edges).
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
    let (uh, uw) = (2 * h, 2 * w);
    let stride = band.padded * k;
    for t in ts {
        let (n, y, x) = band.origin(t);
        for k0 in (0..k).step_by(LANES) {
            let lanes = LANES.min(k - k0);
            for phase in 0..PHASES {
                let (a, b) = (phase / 2, phase % 2);
                let block = phase_block(|xi| {
                    let from = &m[(phase * POSITIONS + xi) * stride + t * k + k0..];
                    std::array::from_fn(|l| if l < lanes { from[l] } else { 0.0 })
                });
                for (l, kk) in (k0..k0 + lanes).enumerate() {
                    let plane = (n * k + kk) * uh * uw;
                    for (i, row) in block.iter().enumerate().take(2.min(h - y)) {
                        for (j, value) in row.iter().enumerate().take(2.min(w - x)) {
                            let at = plane + (2 * (y + i) + a) * uw + 2 * (x + j) + b;
                            // SAFETY: inside the output (the loop bounds
                            // stop at the low-resolution map's edges); each
                            // tile's pixels are written by the one task that
                            // owns the tile.
                            unsafe { *out.ptr().add(at) = value[l] + bias[kk] };
                        }
                    }
                }
            }
        }
    }
}

/// [`transform_output`] in registers for each group of [`LANES`] tiles
/// side by side in one row of tiles (the others through
/// [`transform_output`]): per 8 output channels, each tile's four phase
/// blocks, then each upsampled row's 32 pixels (8 tiles of 4) transposed
/// from channels-in-lanes to pixels-in-lanes ([`transpose8`]) and stored
/// a channel at a time as four vectors.
///
/// # Safety
/// The CPU has AVX512-BF16 ([`bf16::available`]); `out` is the upsampled
/// NCHW output of `s`, whose tiles `ts` only this task writes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
// The loops' indices are the blocks' rows and columns, in the formulas.
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
    let (uh, uw) = (2 * h, 2 * w);
    let stride = band.padded * k;
    assert!(m.len() >= PHASES * POSITIONS * stride, "M of the band");
    assert_eq!(bias.len(), k, "bias");
    let fallback = |group| transform_output(s, band, group, bias, m, out);
    for_each_tile_group(band, ts, fallback, |t0| {
        let (n, y, x) = band.origin(t0);
        // Upsampled pixels 2x.. of a row that lie inside it: 32 or fewer.
        let masks = pixel_masks::<4>(uw - 2 * x);
        for k0 in (0..k).step_by(LANES) {
            let lanes = LANES.min(k - k0);
            let channels = ((1u32 << lanes) - 1) as u8;
            // blocks[l][phase][i][j]: tile l's output (i, j) of the phase,
            // channels k0.. in lanes.
            let mut blocks = [[[[_mm256_setzero_ps(); 2]; 2]; PHASES]; LANES];
            for (l, tile) in blocks.iter_mut().enumerate() {
                for (phase, block) in tile.iter_mut().enumerate() {
                    // SAFETY: M[phase · 9 + ξ][t0 + l][k0..k0 + lanes] lies
                    // inside m (the band's tiles, checked above), and the
                    // mask keeps the load within the channels.
                    let at = |xi: usize| unsafe {
                        let row = (phase * POSITIONS + xi) * stride + (t0 + l) * k + k0;
                        _mm256_maskz_loadu_ps(channels, m.as_ptr().add(row))
                    };
                    // Aᵀ down each column of the 3x3 block, then along rows.
                    let mut columns = [[_mm256_setzero_ps(); 3]; 2];
                    for j in 0..3 {
                        let middle = at(3 + j);
                        columns[0][j] = _mm256_add_ps(at(j), middle);
                        columns[1][j] = _mm256_add_ps(middle, at(6 + j));
                    }
                    for (row, c) in block.iter_mut().zip(&columns) {
                        row[0] = _mm256_add_ps(c[0], c[1]);
                        row[1] = _mm256_add_ps(c[1], c[2]);
                    }
                }
            }
            for i in 0..2.min(h - y) {
                for a in 0..2 {
                    // Pixel 4l + 2j + b of upsampled row 2(y + i) + a is
                    // tile l's (i, j) of phase (a, b): as four 8x8
                    // transposes, two tiles each.
                    let quarters: [[__m256; 8]; 4] = std::array::from_fn(|q| {
                        transpose8(std::array::from_fn(|e| {
                            let pixel = 8 * q + e;
                            blocks[pixel / 4][2 * a + pixel % 2][i][(pixel % 4) / 2]
                        }))
                    });
                    // SAFETY: pixels 2x.. of this upsampled row within the
                    // masks lie inside the output, in tiles only this task
                    // writes.
                    unsafe {
                        store_pixel_rows(out, &quarters, masks, bias, k0..k0 + lanes, |kk| {
                            (n * k + kk) * uh * uw + (2 * (y + i) + a) * uw + 2 * x
                        })
                    };
                }
            }
        }
    });
}
