//! A 3x3 convolution (stride 1, padding 1) of a nearest-2x-upsampled map,
//! computed from the map before upsampling: the decoder's up-convolution
//! without the upsampled copy and with 36% fewer multiplications than
//! F(4x4, 3x3) on the upsampled map.
//!
//! Output pixel `(2i + a, 2j + b)` of the upsampled convolution reads only
//! low-resolution rows `i - 1, i` (phase `a = 0`) or `i, i + 1` (`a = 1`),
//! and the same for columns: each of the four phases is a 2x2
//! convolution of the low-resolution map, its taps sums of the 3x3
//! kernel's ([`FOLD`]). Each phase runs as Winograd's F(5x5, 2x2) on the
//! same 6x6 input blocks that F(4x4, 3x3) transforms (the same points,
//! so the same Bᵀ): 36 multiplications give 25 outputs of each phase, a
//! 10x10 block of the upsampled output, where F(4x4, 3x3) on the upsampled
//! map needs 2.25 per output (1.44 here).
//!
//! A block whose input starts at low-resolution row `r` (tiles start every
//! 5 rows, `r = 5t - 1`) gives phase 0's rows `5t ..= 5t + 4` and phase
//! 1's rows `5t - 1 ..= 5t + 3`: upsampled rows `10t - 1 ..= 10t + 8`.
//! Everything else (bands of tiles, `V`, the products, the kernel
//! transform as a product) is the F(4x4) path's.

use super::super::super::{vectorized, SharedMut};
use super::super::ConvShape;
use super::products::Products;
use super::{
    bands_over, lanes, output_chunk, same_tile_row, Band, KernelTransform, Lane, Tiles, BAND_TILES,
    F4, LANES,
};

/// The tiling: a 6x6 input block every 5 low-resolution rows and columns,
/// transformed by F(4x4)'s Bᵀ.
struct Phases;

impl Tiles for Phases {
    const OUT: usize = 5;
    const IN: usize = 6;

    #[inline(always)]
    fn input_1d(d: [Lane; 6]) -> [Lane; 6] {
        F4::input_1d(d)
    }
}

/// Output phases: (row parity, column parity) of the upsampled pixel.
const PHASES: usize = 4;

/// G of F(5, 2) on F(4x4)'s points 0, 1, -1, 2, -2, ∞ and in its scaling
/// (row `i` is `sᵢ · [1, pᵢ]` where [`F4::G`]'s is `sᵢ · [1, pᵢ, pᵢ²]`).
const G2: [[f32; 2]; 6] = {
    const SIXTH: f32 = 1.0 / 6.0;
    const TWELFTH: f32 = 1.0 / 12.0;
    const TWENTY_FOURTH: f32 = 1.0 / 24.0;
    [
        [0.25, 0.0],
        [-SIXTH, -SIXTH],
        [-SIXTH, SIXTH],
        [TWENTY_FOURTH, TWELFTH],
        [TWENTY_FOURTH, -TWELFTH],
        [0.0, 1.0],
    ]
};

/// `FOLD[a][r][tap]`: how the 3x3 kernel's rows (taps -1, 0, +1) fall on
/// the two low-resolution rows phase `a` reads. Phase 0 (even output rows)
/// reads rows `i - 1` (tap -1) and `i` (taps 0 and +1); phase 1 reads `i`
/// (taps -1 and 0) and `i + 1` (tap +1). The same holds for columns.
pub(super) const FOLD: [[[f32; 3]; 2]; 2] = [
    [[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]],
    [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
];

/// The kernel transform of phase `(a, b)`: `(G₂ Fₐ) g (G₂ F_b)ᵀ`.
fn phase_transform(a: usize, b: usize) -> KernelTransform {
    let fold = |a: usize| -> [[f32; 3]; 6] {
        std::array::from_fn(|i| {
            std::array::from_fn(|tap| G2[i][0] * FOLD[a][0][tap] + G2[i][1] * FOLD[a][1][tap])
        })
    };
    KernelTransform {
        side: 6,
        rows: fold(a),
        cols: fold(b),
    }
}

/// Aᵀ of F(5, 2) on the same points: row `j` is `pᵢʲ`, ∞ in the last.
#[inline(always)]
fn output_1d(m: [Lane; 6]) -> [Lane; 5] {
    [
        lanes(|l| m[0][l] + m[1][l] + m[2][l] + m[3][l] + m[4][l]),
        lanes(|l| m[1][l] - m[2][l] + 2.0 * (m[3][l] - m[4][l])),
        lanes(|l| m[1][l] + m[2][l] + 4.0 * (m[3][l] + m[4][l])),
        lanes(|l| m[1][l] - m[2][l] + 8.0 * (m[3][l] - m[4][l])),
        lanes(|l| m[1][l] + m[2][l] + 16.0 * (m[3][l] + m[4][l]) + m[5][l]),
    ]
}

/// Tiles per image side: the last must still give phase 1's row `h - 1`
/// (`5t + 3 >= h - 1`).
fn tiles_along(side: usize) -> usize {
    side / Phases::OUT + 1
}

/// Low-resolution tiles over all images, for choosing this path.
pub(in super::super) fn tiles(s: &ConvShape) -> usize {
    s.batch * tiles_along(s.height) * tiles_along(s.width)
}

/// `conv(upsample2x(input), kernel) + bias`, NCHW, for the low-resolution
/// input of shape `s` (3x3, stride 1, padding 1 on the upsampled map); the
/// output is `[batch, K, 2h, 2w]`.
pub(in super::super) fn conv2d(
    s: &ConvShape,
    input: &[f32],
    kernel: &[f32],
    bias: &[f32],
) -> Vec<f32> {
    assert!(s.kernel == 3 && s.stride == 1 && s.padding == 1);
    let k = s.out_channels;
    let mut out = vec![0f32; s.batch * k * 4 * s.height * s.width];
    let out_ptr = SharedMut(out.as_mut_ptr());
    // A task's products hold PHASES slots per output channel.
    let chunk = (output_chunk(k, rayon::current_num_threads()) / PHASES).max(1);
    let transforms: Vec<KernelTransform> =
        (0..PHASES).map(|p| phase_transform(p / 2, p % 2)).collect();
    let products = Products {
        kernel,
        transforms: &transforms,
        chunk,
    };
    let (tiles_high, tiles_wide) = (tiles_along(s.height), tiles_along(s.width));
    let bands = bands_over(Phases::OUT, s.batch, tiles_high, tiles_wide, BAND_TILES);
    products.run::<Phases>(s, input, bands, |band, ks, m| {
        transform_output(s, band, ks, bias, m, out_ptr)
    });
    out
}

/// `Aᵀ M A + bias` of every phase, for every tile of the band and output
/// channel of `ks`, written into the upsampled NCHW output (cut at its
/// edges).
fn transform_output(
    s: &ConvShape,
    band: &Band,
    ks: std::ops::Range<usize>,
    bias: &[f32],
    m: &[f32],
    out: SharedMut,
) {
    vectorized(
        #[inline(always)]
        || transform_output_lanes(s, band, ks, bias, m, out),
    )
}

#[inline(always)]
fn transform_output_lanes(
    s: &ConvShape,
    band: &Band,
    ks: std::ops::Range<usize>,
    bias: &[f32],
    m: &[f32],
    out: SharedMut,
) {
    let (h, w) = (2 * s.height, 2 * s.width);
    let slots = ks.len() * PHASES;
    for (kk, k) in ks.enumerate() {
        for t0 in (0..band.padded).step_by(LANES) {
            let blocks: [[[Lane; 5]; 5]; PHASES] = std::array::from_fn(|phase| {
                let slot = kk * PHASES + phase;
                phase_block(|xi| {
                    m[(xi * slots + slot) * band.stride + t0..][..LANES]
                        .try_into()
                        .expect("one lane")
                })
            });
            // Low-resolution origin (5 tr, 5 tc) of the first tile: its
            // upsampled rows are 10 tr - 1 ..= 10 tr + 8, and the same for
            // columns; the tiles after it follow 10 columns apart.
            let (n, y, x) = band.origin(t0);
            let plane = (n * s.out_channels + k) * h * w;
            let inside = y >= 1 && 2 * y + 9 <= h && x >= 1 && 2 * x + 10 * LANES - 1 <= w;
            if same_tile_row(band, t0) && inside {
                for (i, a) in (0..5).flat_map(|i| [(i, 0), (i, 1)]) {
                    let oy = 2 * (y + i) - a;
                    let row = interleaved_row(&blocks[2 * a][i], &blocks[2 * a + 1][i]);
                    // SAFETY: the 80 columns from 2x - 1 of row oy are
                    // inside the output (checked above), and only this
                    // task writes channel k.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(
                            out.0.add(plane + oy * w + 2 * x - 1),
                            10 * LANES,
                        )
                    };
                    for (d, value) in dst.iter_mut().zip(row) {
                        *d = value + bias[k];
                    }
                }
                continue;
            }
            store_tiles(s, band, k, t0, &blocks, bias[k], out);
        }
    }
}

/// One upsampled output row across [`LANES`] adjacent tiles, from its
/// even columns (`even[j]`, phase b = 0: column 10l + 2j of tile l's
/// block, which starts one column early) and odd ones (`odd[j]`, b = 1:
/// 10l + 2j - 1); element 0 is the column before the first tile.
#[inline(always)]
fn interleaved_row(even: &[Lane; 5], odd: &[Lane; 5]) -> [f32; 10 * LANES] {
    let mut row = [0f32; 10 * LANES];
    for l in 0..LANES {
        for j in 0..5 {
            row[10 * l + 2 * j] = odd[j][l];
            row[10 * l + 2 * j + 1] = even[j][l];
        }
    }
    row
}

/// The blocks of the [`LANES`] tiles from `t0`, tile by tile and value by
/// value, cut at the output's edges (and past the band's last tile).
#[inline(always)]
fn store_tiles(
    s: &ConvShape,
    band: &Band,
    k: usize,
    t0: usize,
    blocks: &[[[Lane; 5]; 5]; PHASES],
    bias: f32,
    out: SharedMut,
) {
    let (h, w) = (2 * s.height, 2 * s.width);
    for l in 0..LANES {
        let t = t0 + l;
        if t >= band.tiles {
            break;
        }
        // Upsampled rows 10 tr + 2i - a, columns 10 tc + 2j - b.
        let (n, y, x) = band.origin(t);
        let plane = (n * s.out_channels + k) * h * w;
        for (phase, block) in blocks.iter().enumerate() {
            let (a, b) = (phase / 2, phase % 2);
            for (i, row) in block.iter().enumerate() {
                let Some(oy) = (2 * (y + i)).checked_sub(a).filter(|&oy| oy < h) else {
                    continue;
                };
                for (j, value) in row.iter().enumerate() {
                    let Some(ox) = (2 * (x + j)).checked_sub(b).filter(|&ox| ox < w) else {
                        continue;
                    };
                    // SAFETY: inside the output (checked above); each
                    // (image, channel) plane is written by the one task
                    // that owns channel k.
                    unsafe { *out.0.add(plane + oy * w + ox) = value[l] + bias };
                }
            }
        }
    }
}

/// `Aᵀ M A` of F(5, 2) for one phase: `at(ξ)` is position ξ's lanes.
#[inline(always)]
fn phase_block(at: impl Fn(usize) -> Lane) -> [[Lane; 5]; 5] {
    let mut rows = [[[0f32; LANES]; 6]; 5];
    for j in 0..6 {
        let col = output_1d(std::array::from_fn(|i| at(i * 6 + j)));
        for (row, value) in rows.iter_mut().zip(col) {
            row[j] = value;
        }
    }
    std::array::from_fn(|i| output_1d(rows[i]))
}
