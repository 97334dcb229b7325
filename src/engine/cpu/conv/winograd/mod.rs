//! Winograd's F(4x4, 3x3) for 3x3 convolutions with stride 1 and padding 1
//! (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks";
//! interpolation points 0, ±1, ±2, ∞), F(2x2, 3x3) for bf16 products
//! ([`bf16_products`]), and F(5x5, 2x2) per output phase for a convolution
//! of a nearest-2x-upsampled map ([`upsampled`]; with bf16 products F(2x2,
//! 2x2), [`bf16_upsampled`]).
//!
//! Each m x m block of output comes from an (m+2) x (m+2) block of input:
//! `Y = Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A`. Summed over input channels, the
//! elementwise product becomes (m+2)² independent matrix products of `[K,
//! C] x [C, tiles]`: F(4x4) does 36 multiply-adds per tile and channel pair
//! where the direct convolution does 144. (In f32, F(4x4) or im2col beat
//! F(2x2) on every shape the UNet and VAE have, once the kernel transform
//! became a matrix product.)
//!
//! The f32 path, below: the transformed input `V` exists for a band of
//! tiles at a time, filled in parallel over input channels and laid out
//! for the products ([`products`]); the transformed kernel `U` and the
//! products `M` (`[P][chunk][tiles]`, P = (m+2)² positions) exist only for
//! a chunk of output channels at a time, per thread, so the kernel's
//! transform — up to four times its size — never goes through main memory.
//! The input and output transforms work on [`LANES`] tiles at once so that
//! they compile to vector instructions (reading and writing 8 tiles of one
//! row with permutes, [`deal`] and [`store_tile_row`]); the kernel's is a
//! matrix product.

use super::super::{vectorized, SharedMut};
use super::ConvShape;
use products::{Layout, Products};

pub(super) mod bf16_products;
pub(super) mod bf16_upsampled;
mod products;
pub(super) mod upsampled;

const LANES: usize = 8;
type Lane = [f32; LANES];

/// How the input is cut into tiles and transformed: the tile side, the
/// block read under each tile (from one row and column before it) and
/// the 1-D input transform.
pub(super) trait Tiles {
    /// Tile side m: tiles start every m rows and columns.
    const OUT: usize;
    /// Input block side (m + 2 for a 3x3 kernel).
    const IN: usize;
    /// Bᵀ applied to a column of `IN` lanes.
    fn input_1d(d: [Lane; 6]) -> [Lane; 6];
}

/// One member of the family F(m x m, 3x3): its kernel and output
/// transforms beside its [`Tiles`], apart from the machinery that applies
/// them.
pub(super) trait Variant: Tiles {
    /// G, the kernel transform's `IN x 3` matrix (rows past `IN` unused).
    const G: [[f32; 3]; 6];
    /// Aᵀ applied to a column of `IN` lanes.
    fn output_1d(m: [Lane; 6]) -> [Lane; 4];
}

/// F(4x4, 3x3): 4x fewer multiplications, transforms of a 6x6 block.
pub(super) struct F4;

/// Output channels per task: wide enough for an efficient product (`cargo
/// bench --bench cpu_kernels`), unless that shares the tasks out unevenly
/// (see [`output_chunk`]).
const OUTPUT_CHUNK: usize = 64;

/// [`OUTPUT_CHUNK`], halved (down to 16) while the tasks it makes for `k`
/// output channels are few and do not divide evenly among the threads: 320
/// channels in 64s are 5 tasks, 3 on one of two threads and 2 on the
/// other, and in 32s the UNet's 32x32 convolutions took 7.2 ms instead of
/// 11.3.
fn output_chunk(k: usize, threads: usize) -> usize {
    let mut chunk = OUTPUT_CHUNK;
    while chunk > 16 {
        let tasks = k.div_ceil(chunk);
        if tasks.is_multiple_of(threads) || tasks >= 4 * threads {
            break;
        }
        chunk /= 2;
    }
    chunk
}

/// Tiles per band in f32: large maps are done a band of tile rows at a
/// time, which bounds the transformed input and each task's products and
/// keeps them in cache between the transforms and the products, at the
/// price of a kernel transform per band. With calls at 512 and 128
/// alternated in one process (Zen 4): 320 -> 320 at 64x64 (the UNet at 512
/// px) 47.8 -> 40.2 and 47.9 -> 33.9 ms, 512 at 64x64 (the VAE) 49.8 ->
/// 44.9, 128 at 256x256 74.5 -> 71.0 and 79.1 -> 77.5; maps of 128 tiles
/// or fewer are one band either way.
const BAND_TILES: usize = 128;

/// Where the tiles of one band are: tile `t` of the band is tile row
/// `first_row + t / tiles_wide` (rows counted over all images), column
/// `t % tiles_wide`.
struct Band {
    /// Output tile side.
    side: usize,
    first_row: usize,
    tiles_high: usize,
    tiles_wide: usize,
    /// Real tiles in the band.
    tiles: usize,
    /// Tiles rounded up to whole lanes (the tail is zeros).
    padded: usize,
    /// Floats from one position's row of tiles to the next in the f32
    /// path's `M` (and `V`, for the gemm crate): `padded` and two lanes
    /// more. With `padded` a power of two (512 on the VAE's maps when
    /// bands were 512 tiles) the 36 rows that a block writes or reads fell
    /// into the same few cache sets: the input transform of a 128-channel
    /// convolution at 256x256 took 36 ms instead of 29.
    stride: usize,
}

impl Band {
    /// (image, output row, output column) of tile `t`'s top-left corner.
    #[inline(always)]
    fn origin(&self, t: usize) -> (usize, usize, usize) {
        let row = self.first_row + t / self.tiles_wide;
        (
            row / self.tiles_high,
            self.side * (row % self.tiles_high),
            self.side * (t % self.tiles_wide),
        )
    }
}

/// The bands that cover the output of `s` in `V`'s tiles, `band_tiles`
/// (or one row of tiles, if that is more) at a time.
fn bands<V: Tiles>(s: &ConvShape, band_tiles: usize) -> impl Iterator<Item = Band> {
    let tiles_high = s.height.div_ceil(V::OUT);
    let tiles_wide = s.width.div_ceil(V::OUT);
    bands_over(V::OUT, s.batch, tiles_high, tiles_wide, band_tiles)
}

/// [`bands`] over a grid of `tiles_high x tiles_wide` tiles of `side` per
/// image.
fn bands_over(
    side: usize,
    batch: usize,
    tiles_high: usize,
    tiles_wide: usize,
    band_tiles: usize,
) -> impl Iterator<Item = Band> {
    let rows = batch * tiles_high;
    let band_rows = (band_tiles / tiles_wide).clamp(1, rows);
    (0..rows).step_by(band_rows).map(move |first_row| {
        let tiles = band_rows.min(rows - first_row) * tiles_wide;
        Band {
            side,
            first_row,
            tiles_high,
            tiles_wide,
            tiles,
            padded: tiles.next_multiple_of(LANES),
            stride: tiles.next_multiple_of(LANES) + 2 * LANES,
        }
    })
}

pub(super) fn conv2d<V: Variant>(
    s: &ConvShape,
    input: &[f32],
    kernel: &[f32],
    bias: &[f32],
) -> Vec<f32> {
    assert!(s.kernel == 3 && s.stride == 1 && s.padding == 1);
    let mut out = vec![0f32; s.output_len()];
    let out_ptr = SharedMut(out.as_mut_ptr());
    let chunk = output_chunk(s.out_channels, rayon::current_num_threads());
    let products = Products {
        kernel,
        transforms: &[KernelTransform::of::<V>()],
        chunk,
    };
    products.run::<V>(s, input, bands::<V>(s, BAND_TILES), |band, ks, m| {
        transform_output::<V>(s, band, ks, bias, m, out_ptr)
    });
    out
}

/// `V[ξ][ci][t] = (Bᵀ d B)[ξ]` for every tile `t` of the band, `d` the
/// input block (zero outside the image) under tile `t`, widened by one on
/// each side; written where `layout` puts it in `v`.
fn transform_input<V: Tiles>(
    s: &ConvShape,
    input: &[f32],
    ci: usize,
    band: &Band,
    (layout, v): (Layout, SharedMut),
) {
    vectorized(
        #[inline(always)]
        || transform_input_lanes::<V>(s, input, ci, band, (layout, v)),
    )
}

#[inline(always)]
fn transform_input_lanes<V: Tiles>(
    s: &ConvShape,
    input: &[f32],
    ci: usize,
    band: &Band,
    (layout, v): (Layout, SharedMut),
) {
    let mut arrays = BlockArrays::ZERO;
    let step = layout.position_step();
    for t0 in (0..band.padded).step_by(LANES) {
        let start = layout.start(ci, t0);
        transformed_rows::<V>(s, input, ci, band, t0, &mut arrays, |i, row| {
            for (j, value) in row.iter().enumerate().take(V::IN) {
                // SAFETY: V[ξ][ci][t0..t0 + LANES] is inside V (of
                // layout.len() floats), and only this task writes channel
                // ci.
                unsafe {
                    let at = v.ptr().add(start + (i * V::IN + j) * step);
                    at.cast::<Lane>().write_unaligned(*value);
                }
            }
        });
    }
}

/// `(Bᵀ d B)[i][j]` of input channel `ci` for the [`LANES`] tiles of the
/// band from `t0` (zeros past its last tile).
#[inline(always)]
fn transformed_block<V: Tiles>(
    s: &ConvShape,
    input: &[f32],
    ci: usize,
    band: &Band,
    t0: usize,
) -> [[Lane; 6]; 6] {
    let mut block = [[[0f32; LANES]; 6]; 6];
    let mut arrays = BlockArrays::ZERO;
    transformed_rows::<V>(s, input, ci, band, t0, &mut arrays, |i, row| {
        block[i] = *row
    });
    block
}

/// The input transform's working arrays, kept across a channel's blocks:
/// made afresh for each block, each was zeroed by a call to memset (1152
/// bytes), 9% of a 128-channel convolution's profile at 256x256; kept,
/// that convolution takes 3-4% less time.
struct BlockArrays {
    /// The input block, one lane per tile.
    d: [[Lane; 6]; 6],
    /// Bᵀ d.
    columns: [[Lane; 6]; 6],
}

impl BlockArrays {
    const ZERO: Self = Self {
        d: [[[0.0; LANES]; 6]; 6],
        columns: [[[0.0; LANES]; 6]; 6],
    };
}

/// [`transformed_block`], handed to `put` a row `i` at a time as it is
/// made: a block returned whole was copied (1152 bytes) on its way to the
/// f32 path's `V`.
#[inline(always)]
fn transformed_rows<V: Tiles>(
    s: &ConvShape,
    input: &[f32],
    ci: usize,
    band: &Band,
    t0: usize,
    arrays: &mut BlockArrays,
    mut put: impl FnMut(usize, &[Lane; 6]),
) {
    let BlockArrays { d, columns } = arrays;
    gather_blocks::<V>(s, input, ci, band, t0, d);
    // Bᵀ down each column, then along each row.
    for j in 0..V::IN {
        let col = V::input_1d(std::array::from_fn(|i| d[i][j]));
        for (row, value) in columns.iter_mut().zip(col).take(V::IN) {
            row[j] = value;
        }
    }
    // A loop, not `std::array::from_fn`, whose closure would be compiled
    // outside the vectorised caller.
    for (i, column) in columns.iter().enumerate().take(V::IN) {
        put(i, &V::input_1d(*column));
    }
}

/// The input blocks (`IN x IN`, from one row and column before each tile)
/// of input channel `ci` under the [`LANES`] tiles of the band from `t0`,
/// one lane per tile (zeros outside the image and past the band's last
/// tile).
#[inline(always)]
fn gather_blocks<V: Tiles>(
    s: &ConvShape,
    input: &[f32],
    ci: usize,
    band: &Band,
    t0: usize,
    d: &mut [[Lane; 6]; 6],
) {
    if row_gather_fits::<V>() && same_tile_row(band, t0) {
        gather_tile_row::<V>(s, input, ci, band, t0, d);
    } else {
        gather_tiles::<V>(s, input, ci, band, t0, d);
    }
}

/// Whether the [`LANES`] tiles from `t0` are all real and side by side in
/// one row of tiles.
#[inline(always)]
fn same_tile_row(band: &Band, t0: usize) -> bool {
    side_by_side(band, t0, LANES)
}

/// Whether the `n` tiles from `t0` are all real and side by side in one
/// row of tiles.
#[inline(always)]
fn side_by_side(band: &Band, t0: usize, n: usize) -> bool {
    t0 + n <= band.tiles && t0 % band.tiles_wide + n <= band.tiles_wide
}

/// Whether [`deal`]'s permutes reach every lane's columns: the [`LANES`]
/// tiles' columns from one tile's start must lie within 32 floats.
#[inline(always)]
fn row_gather_fits<V: Tiles>() -> bool {
    V::OUT * LANES <= 32
}

/// Floats of one input row that [`deal`] reads for [`LANES`] adjacent
/// tiles: they lie under `OUT · LANES + 2` of them (F(4x4): 34), and the
/// permutes read 32 from column 0 and, for F(4x4)'s last two columns, 32
/// from column 4.
const ROW_SPAN: usize = 4 + 32;

/// The input blocks of [`LANES`] adjacent tiles of one tile row: each input
/// row under them is read once (at the image's edges, through a copy with
/// zeros outside it) and dealt out to the lanes, tile `l` taking columns
/// `OUT·l ..` of it. Reading tile by tile (as [`gather_tiles`] does) costs
/// a scalar load and store per value and tile; on the VAE's 128-channel
/// maps the input transform took about a third of the convolution.
#[inline(always)]
fn gather_tile_row<V: Tiles>(
    s: &ConvShape,
    input: &[f32],
    ci: usize,
    band: &Band,
    t0: usize,
    d: &mut [[Lane; 6]; 6],
) {
    let (h, w) = (s.height, s.width);
    let (n, y, x) = band.origin(t0);
    let plane = &input[(n * s.in_channels + ci) * h * w..][..h * w];
    let span = V::OUT * LANES + 2;
    // The block starts one row and column before the tile.
    let inside = x >= 1 && x - 1 + ROW_SPAN <= w;
    for (i, row) in d.iter_mut().enumerate().take(V::IN) {
        let iy = y + i;
        if iy == 0 || iy > h {
            *row = [[0.0; LANES]; 6];
            continue;
        }
        let source = &plane[(iy - 1) * w..][..w];
        if inside {
            deal::<V>(source[x - 1..][..ROW_SPAN].try_into().expect("span"), row);
            continue;
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            unsafe { deal_masked_x86::<V>(source, x, row) };
            continue;
        }
        let mut stretch = [0f32; ROW_SPAN];
        for (j, value) in stretch.iter_mut().enumerate().take(span) {
            if (1..=w).contains(&(x + j)) {
                *value = source[x + j - 1];
            }
        }
        deal::<V>(&stretch, row);
    }
}

/// `row[j][l] = stretch[OUT·l + j]`: one input row's values dealt out to
/// the tiles' lanes.
#[inline(always)]
fn deal<V: Tiles>(stretch: &[f32; ROW_SPAN], row: &mut [Lane; 6]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked just above).
        unsafe { deal_x86::<V>(stretch, row) };
        return;
    }
    deal_portable::<V>(stretch, row)
}

/// [`deal`] for any CPU; compilers turn it into gathers, a scalar load per
/// lane.
#[inline(always)]
fn deal_portable<V: Tiles>(stretch: &[f32; ROW_SPAN], row: &mut [Lane; 6]) {
    for (j, cell) in row.iter_mut().enumerate().take(V::IN) {
        *cell = lanes(|l| stretch[V::OUT * l + j]);
    }
}

/// [`deal`] with one two-register permute per column `j`, from the
/// stretch's 32 values at `j - j % OUT` (within [`ROW_SPAN`]: at most 4 +
/// 32).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn deal_x86<V: Tiles>(stretch: &[f32; ROW_SPAN], row: &mut [Lane; 6]) {
    use std::arch::x86_64::*;
    for (j, cell) in row.iter_mut().enumerate().take(V::IN) {
        let base = j - j % V::OUT;
        // Lane l takes column OUT·l + j of the row, at OUT·l + j % OUT
        // from `base` (lanes 8-15 repeat 0-7 and are not stored).
        let index = permute_index(|l| V::OUT * (l % LANES) + j % V::OUT);
        let from = stretch[base..base + 32].as_ptr();
        let picked =
            _mm512_permutex2var_ps(_mm512_loadu_ps(from), index, _mm512_loadu_ps(from.add(16)));
        _mm256_storeu_ps(cell.as_mut_ptr(), _mm512_castps512_ps256(picked));
    }
}

/// [`deal`] straight from an input row ([`dealt_row_x86`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn deal_masked_x86<V: Tiles>(source: &[f32], x: usize, row: &mut [Lane; 6]) {
    let dealt = dealt_row_x86::<V>(source, x);
    for (cell, lanes) in row.iter_mut().zip(dealt).take(V::IN) {
        // SAFETY: a lane is LANES (8) floats.
        unsafe { std::arch::x86_64::_mm256_storeu_ps(cell.as_mut_ptr(), lanes) };
    }
}

/// Columns `j < IN` of the blocks of the [`LANES`] tiles whose blocks
/// start at column `x - 1` of an input row: lane `l` of register `j` is
/// column `x - 1 + OUT·l + j`, zero outside the row. Each column's two
/// registers are loaded with a mask that leaves out what lies outside the
/// row, where [`deal`] needs the row's edges copied first, value by value.
/// By [`gather_tile_row`]'s test (sized for F(4x4)'s span) three of the
/// four lane groups of a 64-pixel row are at an edge in F(2x2), and every
/// group of narrower rows; their copies were most of bf16's input
/// transform.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn dealt_row_x86<V: Tiles>(source: &[f32], x: usize) -> [std::arch::x86_64::__m256; 6] {
    use std::arch::x86_64::*;
    let mut dealt = [_mm256_setzero_ps(); 6];
    for (j, lanes) in dealt.iter_mut().enumerate().take(V::IN) {
        let base = j - j % V::OUT;
        let (low, high) = row_window_x86(source, x as isize - 1 + base as isize);
        // Lanes 8-15 repeat 0-7 and are dropped.
        let index = permute_index(|l| V::OUT * (l % LANES) + j % V::OUT);
        *lanes = _mm512_castps512_ps256(_mm512_permutex2var_ps(low, index, high));
    }
    dealt
}

/// Columns `start..start + 32` of an input row as two registers, zero
/// where they lie outside it: masked loads read only the columns inside.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn row_window_x86(
    source: &[f32],
    start: isize,
) -> (std::arch::x86_64::__m512, std::arch::x86_64::__m512) {
    use std::arch::x86_64::*;
    let w = source.len() as isize;
    let first = (-start).clamp(0, 32);
    let end = (w - start).clamp(0, 32);
    let inside: u64 = ((1u64 << end) - 1) & !((1u64 << first) - 1);
    let from = source.as_ptr().wrapping_offset(start);
    // SAFETY: a masked load reads only its mask's lanes, and those are
    // columns 0..w of `source`.
    unsafe {
        (
            _mm512_maskz_loadu_ps(inside as u16, from),
            _mm512_maskz_loadu_ps((inside >> 16) as u16, from.wrapping_add(16)),
        )
    }
}

/// The index vector of `_mm512_permutex2var_ps`: output lane `q` (of 16)
/// takes element `pick(q)` of the two registers' 32.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn permute_index(pick: impl Fn(usize) -> usize) -> std::arch::x86_64::__m512i {
    let index: [i32; 16] = std::array::from_fn(|q| pick(q) as i32);
    // SAFETY: 16 i32 are one 512-bit load.
    unsafe { std::arch::x86_64::_mm512_loadu_si512(index.as_ptr().cast()) }
}

/// The input blocks of the [`LANES`] tiles from `t0`, tile by tile.
#[inline(always)]
fn gather_tiles<V: Tiles>(
    s: &ConvShape,
    input: &[f32],
    ci: usize,
    band: &Band,
    t0: usize,
    d: &mut [[Lane; 6]; 6],
) {
    let (h, w, side) = (s.height, s.width, V::IN);
    // Zeros where no tile or no image is.
    *d = [[[0.0; LANES]; 6]; 6];
    for l in 0..LANES {
        let t = t0 + l;
        if t >= band.tiles {
            break;
        }
        let (n, y, x) = band.origin(t);
        let plane = &input[(n * s.in_channels + ci) * h * w..][..h * w];
        // The block starts one row and column before the tile.
        if y >= 1 && y + side - 1 <= h && x >= 1 && x + side - 1 <= w {
            for (i, row) in d.iter_mut().enumerate().take(side) {
                let src = &plane[(y + i - 1) * w + x - 1..][..side];
                for (j, &value) in src.iter().enumerate() {
                    row[j][l] = value;
                }
            }
        } else {
            for (i, row) in d.iter_mut().enumerate().take(side) {
                let iy = y + i;
                if iy == 0 || iy > h {
                    continue;
                }
                for (j, cell) in row.iter_mut().enumerate().take(side) {
                    let ix = x + j;
                    if ix >= 1 && ix <= w {
                        cell[l] = plane[(iy - 1) * w + ix - 1];
                    }
                }
            }
        }
    }
}

/// A kernel transform `g -> R g Cᵀ` of a 3x3 kernel `g` to a `side x
/// side` block: `G g Gᵀ` for the variants, and one per output phase for
/// the sub-pixel up-convolution. Applied as its two factors it takes 162
/// multiply-adds per F(4x4) block where the `[36, 9]` matrix takes 324.
#[derive(Clone, Copy)]
pub(super) struct KernelTransform {
    pub(super) side: usize,
    /// R, `side x 3` (rows past `side` unused).
    pub(super) rows: [[f32; 3]; 6],
    /// C, `side x 3` (rows past `side` unused).
    pub(super) cols: [[f32; 3]; 6],
}

impl KernelTransform {
    /// `G g Gᵀ` for variant `V`.
    pub(super) fn of<V: Variant>() -> Self {
        Self {
            side: V::IN,
            rows: V::G,
            cols: V::G,
        }
    }

    /// `R ⊗ C` as a `[side², 9]` row-major matrix: `(R g Cᵀ)[ξ] = Σₜ
    /// T[ξ][t] · g[t]` for `g` read as 9 taps.
    pub(super) fn matrix(&self) -> Vec<f32> {
        let side = self.side;
        let mut t = vec![0f32; side * side * 9];
        for i in 0..side {
            for j in 0..side {
                for a in 0..3 {
                    for b in 0..3 {
                        t[(i * side + j) * 9 + a * 3 + b] = self.rows[i][a] * self.cols[j][b];
                    }
                }
            }
        }
        t
    }
}

/// `Aᵀ M A` for one block of products: `at(ξ)` is position ξ's lanes (tiles
/// or channels, as the caller lays them out); the result's first `OUT` rows
/// and columns are the output block's.
#[inline(always)]
fn output_block<V: Variant>(at: impl Fn(usize) -> Lane) -> [[Lane; 4]; 4] {
    // Aᵀ down each column of the block, then along each row.
    let mut rows = [[[0f32; LANES]; 6]; 4];
    for j in 0..V::IN {
        let col = V::output_1d(std::array::from_fn(|i| {
            if i < V::IN {
                at(i * V::IN + j)
            } else {
                [0.0; LANES]
            }
        }));
        for (row, value) in rows.iter_mut().zip(col).take(V::OUT) {
            row[j] = value;
        }
    }
    std::array::from_fn(|i| V::output_1d(rows[i]))
}

/// `Y = Aᵀ M A + bias` for every tile of the band and output channel of the
/// chunk, written into the NCHW output (cut at the right and bottom edges).
fn transform_output<V: Variant>(
    s: &ConvShape,
    band: &Band,
    ks: std::ops::Range<usize>,
    bias: &[f32],
    m: &[f32],
    out: SharedMut,
) {
    vectorized(
        #[inline(always)]
        || transform_output_lanes::<V>(s, band, ks, bias, m, out),
    )
}

#[inline(always)]
fn transform_output_lanes<V: Variant>(
    s: &ConvShape,
    band: &Band,
    ks: std::ops::Range<usize>,
    bias: &[f32],
    m: &[f32],
    out: SharedMut,
) {
    let (h, w) = (s.height, s.width);
    let chunk = ks.len();
    for (kk, k) in ks.enumerate() {
        for t0 in (0..band.padded).step_by(LANES) {
            let at = |xi: usize| -> Lane {
                m[(xi * chunk + kk) * band.stride + t0..][..LANES]
                    .try_into()
                    .expect("one lane")
            };
            let y4 = output_block::<V>(at);
            let (n, y, x) = band.origin(t0);
            if same_tile_row(band, t0) && x + V::OUT * LANES <= w {
                let plane = ((n * s.out_channels + k) * h + y) * w + x;
                for (i, row) in y4.iter().enumerate().take(V::OUT.min(h - y)) {
                    // SAFETY: the row's OUT · LANES columns from x are
                    // inside the output (checked above), and only this
                    // task writes channel k.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(out.0.add(plane + i * w), V::OUT * LANES)
                    };
                    store_tile_row::<V>(row, bias[k], dst);
                }
                continue;
            }
            for l in 0..LANES {
                let t = t0 + l;
                if t >= band.tiles {
                    break;
                }
                let (n, y, x) = band.origin(t);
                let plane = ((n * s.out_channels + k) * h) * w;
                for (i, row) in y4.iter().enumerate().take(V::OUT.min(h - y)) {
                    for (j, value) in row.iter().enumerate().take(V::OUT.min(w - x)) {
                        // SAFETY: inside the output (the loop bounds stop
                        // at its edges); each (image, channel) plane is
                        // written by the one task that owns channel k.
                        unsafe {
                            *out.0.add(plane + (y + i) * w + x + j) = value[l] + bias[k];
                        }
                    }
                }
            }
        }
    }
}

/// `dst[OUT·l + j] = row[j][l] + bias`: one output row of [`LANES`]
/// adjacent tiles, gathered back from the lanes ([`deal`] in reverse).
#[inline(always)]
fn store_tile_row<V: Variant>(row: &[Lane; 4], bias: f32, dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked just above).
        unsafe { store_tile_row_x86::<V>(row, bias, dst) };
        return;
    }
    store_tile_row_portable::<V>(row, bias, dst)
}

/// [`store_tile_row`] for any CPU.
#[inline(always)]
fn store_tile_row_portable<V: Variant>(row: &[Lane; 4], bias: f32, dst: &mut [f32]) {
    for (l, tile) in dst.chunks_exact_mut(V::OUT).enumerate() {
        for (j, value) in tile.iter_mut().enumerate() {
            *value = row[j][l] + bias;
        }
    }
}

/// [`store_tile_row`] with one two-register permute per 16 outputs, from
/// `[row[0] | row[1]]` and `[row[2] | row[3]]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn store_tile_row_x86<V: Variant>(row: &[Lane; 4], bias: f32, dst: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(V::OUT <= 4 && dst.len() == V::OUT * LANES);
    let low = _mm512_loadu_ps(row[0].as_ptr());
    let high = _mm512_loadu_ps(row[2].as_ptr());
    let bias = _mm512_set1_ps(bias);
    for (c, part) in dst.chunks_exact_mut(16).enumerate() {
        // Output 16c + q is lane l = (16c + q) / OUT of column j = (16c +
        // q) % OUT, which sits at 8j + l in [low | high].
        let index = permute_index(|q| {
            let p = 16 * c + q;
            (p % V::OUT) * LANES + p / V::OUT
        });
        let picked = _mm512_permutex2var_ps(low, index, high);
        _mm512_storeu_ps(part.as_mut_ptr(), _mm512_add_ps(picked, bias));
    }
}

impl Tiles for F4 {
    const OUT: usize = 4;
    const IN: usize = 6;

    #[inline(always)]
    fn input_1d(d: [Lane; 6]) -> [Lane; 6] {
        [
            lanes(|l| 4.0 * d[0][l] - 5.0 * d[2][l] + d[4][l]),
            lanes(|l| -4.0 * (d[1][l] + d[2][l]) + d[3][l] + d[4][l]),
            lanes(|l| 4.0 * (d[1][l] - d[2][l]) - d[3][l] + d[4][l]),
            lanes(|l| 2.0 * (d[3][l] - d[1][l]) - d[2][l] + d[4][l]),
            lanes(|l| 2.0 * (d[1][l] - d[3][l]) - d[2][l] + d[4][l]),
            lanes(|l| 4.0 * d[1][l] - 5.0 * d[3][l] + d[5][l]),
        ]
    }
}

impl Variant for F4 {
    const G: [[f32; 3]; 6] = {
        const SIXTH: f32 = 1.0 / 6.0;
        const TWELFTH: f32 = 1.0 / 12.0;
        const TWENTY_FOURTH: f32 = 1.0 / 24.0;
        [
            [0.25, 0.0, 0.0],
            [-SIXTH, -SIXTH, -SIXTH],
            [-SIXTH, SIXTH, -SIXTH],
            [TWENTY_FOURTH, TWELFTH, SIXTH],
            [TWENTY_FOURTH, -TWELFTH, SIXTH],
            [0.0, 0.0, 1.0],
        ]
    };

    #[inline(always)]
    fn output_1d(m: [Lane; 6]) -> [Lane; 4] {
        [
            lanes(|l| m[0][l] + m[1][l] + m[2][l] + m[3][l] + m[4][l]),
            lanes(|l| m[1][l] - m[2][l] + 2.0 * (m[3][l] - m[4][l])),
            lanes(|l| m[1][l] + m[2][l] + 4.0 * (m[3][l] + m[4][l])),
            lanes(|l| m[1][l] - m[2][l] + 8.0 * (m[3][l] - m[4][l]) + m[5][l]),
        ]
    }
}

/// F(2x2, 3x3): 2.25x fewer multiplications, transforms of a 4x4 block
/// whose coefficients (0, ±1/2, ±1) keep bf16's rounding small (see
/// [`bf16`]).
pub(super) struct F2;

impl Tiles for F2 {
    const OUT: usize = 2;
    const IN: usize = 4;

    #[inline(always)]
    fn input_1d(d: [Lane; 6]) -> [Lane; 6] {
        [
            lanes(|l| d[0][l] - d[2][l]),
            lanes(|l| d[1][l] + d[2][l]),
            lanes(|l| d[2][l] - d[1][l]),
            lanes(|l| d[1][l] - d[3][l]),
            [0.0; LANES],
            [0.0; LANES],
        ]
    }
}

impl Variant for F2 {
    const G: [[f32; 3]; 6] = [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
        [0.0; 3],
        [0.0; 3],
    ];

    #[inline(always)]
    fn output_1d(m: [Lane; 6]) -> [Lane; 4] {
        [
            lanes(|l| m[0][l] + m[1][l] + m[2][l]),
            lanes(|l| m[1][l] - m[2][l] - m[3][l]),
            [0.0; LANES],
            [0.0; LANES],
        ]
    }
}

#[inline(always)]
fn lanes(f: impl Fn(usize) -> f32) -> Lane {
    std::array::from_fn(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX-512 permutes against the portable loops they replace, for
    /// both tile sizes (the convolution tests run whichever this CPU has).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn permutes_match_the_portable_loops() {
        if !is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: this CPU has no AVX-512F");
            return;
        }
        fn check<V: Variant>() {
            let stretch: [f32; ROW_SPAN] = std::array::from_fn(|i| i as f32 + 0.5);
            let (mut fast, mut portable) = ([[0f32; LANES]; 6], [[0f32; LANES]; 6]);
            // SAFETY: AVX-512F checked above.
            unsafe { deal_x86::<V>(&stretch, &mut fast) };
            deal_portable::<V>(&stretch, &mut portable);
            assert_eq!(fast, portable);

            let row: [Lane; 4] = std::array::from_fn(|j| lanes(|l| (10 * j + l) as f32));
            let (mut fast, mut portable) = (vec![0f32; V::OUT * LANES], vec![0f32; V::OUT * LANES]);
            // SAFETY: as above.
            unsafe { store_tile_row_x86::<V>(&row, 0.25, &mut fast) };
            store_tile_row_portable::<V>(&row, 0.25, &mut portable);
            assert_eq!(fast, portable);
        }
        check::<F4>();
        check::<F2>();
    }

    #[test]
    fn tasks_share_out_evenly_where_the_width_allows() {
        // 320 channels: 5 tasks of 64 would leave one of two threads idle
        // for a fifth of the time; 10 of 32 do not.
        assert_eq!(output_chunk(320, 2), 32);
        assert_eq!(output_chunk(640, 2), 64);
        assert_eq!(output_chunk(128, 2), 64);
        // Many tasks balance themselves.
        assert_eq!(output_chunk(1280, 3), 64);
        // Never below 16 channels.
        assert_eq!(output_chunk(4, 2), 16);
    }
}
