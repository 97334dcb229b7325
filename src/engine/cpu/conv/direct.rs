//! 3x3 convolutions (stride 1, padding 1) straight on AMX tiles: bf16
//! products with f32 sums, no Winograd transform and no unfolded copy.
//!
//! The input is laid out once per call as bf16 in blocks of 32 channels,
//! each `[position][16 pairs]` over the zero-padded maps of the batch, one
//! after another ([`Input`], [`Geometry`]). Output pixel (y, x) is
//! computed at position `o = y·(W+1) + x` (one padding column per row,
//! shared by its two sides), and tap (dy, dx) reads the input at `o +
//! dy·(W+1) + dx`: for 16 consecutive positions that is one left tile, 1
//! KiB in a row, for every tap, so the 9 taps are 9 offsets into the same
//! buffer. The cost is the padding column of each row and the padding row
//! of each image, computed and dropped: 6% more products at 32x32, 27% at
//! 8x8, where Winograd F(2x2) multiplies 16 values for every 4 outputs it
//! keeps (9 for direct).
//!
//! The kernel is packed once, at load, as the right operand `[9·C, K]`
//! with k tap-major, so that the 32 channels of one k tile belong to one
//! tap (hence C a multiple of 32, as every 3x3 convolution after the
//! first in SD's UNet and VAE has).

use std::arch::x86_64::*;
use std::mem::MaybeUninit;
use std::ops::Range;

use rayon::prelude::*;

use super::super::amx::{self, Tiles};
use super::super::bf16::{PackedRhs, RHS_PANEL};
use super::super::pairs::{self, transpose16, PAIRS};
use super::super::SharedMut;
use super::ConvShape;

/// Channels per block of the laid-out input (16 pairs: one tile's row).
const CHANNEL_BLOCK: usize = 2 * PAIRS;
/// Positions per kernel pass: two left tiles of 16.
const BLOCK: usize = 32;
/// Blocks of positions and panels of output channels per task, and
/// channel blocks per pass over them: a pass's part of the panel's kernel
/// (147 KiB) and of the task's input rows (about 16·32 positions and two
/// map rows of halo) stay in L2 while the task's blocks go by. All the
/// channels at once (1920 -> 640 at 16x16: 2.2 MiB of kernel and input
/// per task) or 8 blocks by 2 panels ran up to 10% slower in a throwaway
/// probe, within this machine's spread on most shapes.
const BLOCKS_PER_TASK: usize = 16;
const PANELS_PER_TASK: usize = 1;
const CHANNEL_BLOCKS_PER_PASS: usize = 8;

/// Whether [`conv2d`] computes a convolution of `in_channels` inputs with
/// a `kernel x kernel` kernel at `stride` and `padding`, on this CPU.
pub fn fits(in_channels: usize, kernel: usize, stride: usize, padding: usize) -> bool {
    (kernel, stride, padding) == (3, 1, 1)
        && in_channels.is_multiple_of(CHANNEL_BLOCK)
        && amx::available()
}

/// A `[K, C, 3, 3]` kernel rounded to bf16 as the right operand `[(tap,
/// C), K]`.
pub struct DirectKernel {
    packed: PackedRhs,
    in_channels: usize,
}

impl DirectKernel {
    pub fn new(kernel: &[f32], out_channels: usize, in_channels: usize) -> Self {
        assert!(
            in_channels.is_multiple_of(CHANNEL_BLOCK),
            "{in_channels} channels"
        );
        assert_eq!(kernel.len(), out_channels * in_channels * 9, "kernel size");
        // Each output channel's taps reordered from [C][9] to [C / 32][9][32].
        let mut reordered = vec![0f32; kernel.len()];
        for (dst, src) in reordered
            .chunks_exact_mut(9 * in_channels)
            .zip(kernel.chunks_exact(9 * in_channels))
        {
            for c in 0..in_channels {
                let (block, lane) = (c / CHANNEL_BLOCK, c % CHANNEL_BLOCK);
                for t in 0..9 {
                    dst[(block * 9 + t) * CHANNEL_BLOCK + lane] = src[c * 9 + t];
                }
            }
        }
        let packed = PackedRhs::from_transposed(&reordered, 9 * in_channels, out_channels);
        Self {
            packed,
            in_channels,
        }
    }
}

/// The padded geometry. Each map row is followed by one zero, which is
/// both its right neighbour's padding and the next row's left one, and
/// each image by one zero row, the bottom padding of one image and the
/// top padding of the next; one zero row (and one zero) more before the
/// first. Output pixel (y, x) of image n is computed at position `o = (n·(H
/// + 1) + y)·(W + 1) + x`, and tap (dy, dx) reads input position `o + dy·(W
/// + 1) + dx`.
#[derive(Clone, Copy)]
struct Geometry {
    /// Positions per row.
    row: usize,
    /// Rows per image.
    rows: usize,
    taps: [usize; 9],
}

impl Geometry {
    fn new(shape: &ConvShape) -> Self {
        let row = shape.width + 1;
        Self {
            row,
            rows: shape.height + 1,
            taps: std::array::from_fn(|t| (t / 3) * row + t % 3),
        }
    }

    /// Output positions to compute: up to the last pixel of the last image.
    fn outputs(&self, shape: &ConvShape) -> usize {
        ((shape.batch - 1) * self.rows + shape.height - 1) * self.row + shape.width
    }

    /// Positions the laid-out input holds: every block's last tap in bounds.
    fn inputs(&self, shape: &ConvShape) -> usize {
        self.outputs(shape).next_multiple_of(BLOCK) + self.taps[8]
    }

    /// The input position of pixel (y, 0) of image n.
    fn row_start(&self, n: usize, y: usize) -> usize {
        self.row + 1 + (n * self.rows + y) * self.row
    }
}

/// `output = conv(input, kernel) + bias`, NCHW f32 in and out.
pub fn conv2d(shape: &ConvShape, input: &[f32], kernel: &DirectKernel, bias: &[f32]) -> Vec<f32> {
    assert_eq!(input.len(), shape.input_len(), "input size");
    assert_eq!(kernel.in_channels, shape.in_channels, "kernel's channels");
    assert_eq!(kernel.packed.n(), shape.out_channels, "kernel's outputs");
    assert!(fits(
        shape.in_channels,
        shape.kernel,
        shape.stride,
        shape.padding
    ));
    let geometry = Geometry::new(shape);
    let laid_out = Input::new(shape, &geometry, input);
    let mut output = vec![0f32; shape.output_len()];
    let out = SharedMut(output.as_mut_ptr());
    let blocks = geometry.outputs(shape).div_ceil(BLOCK);
    let panels = shape.out_channels.div_ceil(RHS_PANEL);
    let (block_tasks, panel_tasks) = (
        blocks.div_ceil(BLOCKS_PER_TASK),
        panels.div_ceil(PANELS_PER_TASK),
    );
    (0..block_tasks * panel_tasks)
        .into_par_iter()
        .for_each(|task| {
            let (bt, pt) = (task / panel_tasks, task % panel_tasks);
            let blocks = bt * BLOCKS_PER_TASK..((bt + 1) * BLOCKS_PER_TASK).min(blocks);
            let panels = pt * PANELS_PER_TASK..((pt + 1) * PANELS_PER_TASK).min(panels);
            let tiles = Tiles::configure();
            let mut sums = vec![BlockSums::ZERO; panels.len() * blocks.len()];
            let chunks = shape.in_channels / CHANNEL_BLOCK;
            for chunk in (0..chunks).step_by(CHANNEL_BLOCKS_PER_PASS) {
                let chunk = chunk..(chunk + CHANNEL_BLOCKS_PER_PASS).min(chunks);
                for (i, panel) in panels.clone().enumerate() {
                    for (j, block) in blocks.clone().enumerate() {
                        let sums = &mut sums[i * blocks.len() + j];
                        add_block_sums(
                            &tiles,
                            &laid_out,
                            &geometry,
                            kernel,
                            block,
                            panel,
                            chunk.clone(),
                            sums,
                            j == 0,
                        );
                    }
                }
            }
            for (i, panel) in panels.clone().enumerate() {
                for (j, block) in blocks.clone().enumerate() {
                    // SAFETY: this task alone writes the output channels of
                    // `panel` at the positions of `block`; AVX-512 (AMX).
                    unsafe {
                        sums[i * blocks.len() + j].store(shape, &geometry, block, panel, bias, out)
                    };
                }
            }
        });
    output
}

/// The input as the left tiles read it: `[C / 32][positions][16 pairs]`,
/// zero at the padding.
struct Input {
    data: Vec<u32>,
    positions: usize,
}

impl Input {
    fn new(shape: &ConvShape, geometry: &Geometry, input: &[f32]) -> Self {
        let positions = geometry.inputs(shape);
        let len = shape.in_channels / CHANNEL_BLOCK * positions * PAIRS;
        // Written once: the pixels' rows, and zeros between them (zeroing
        // it all first took 2.5 of 19.5 ms on 128 channels at 256 x 256).
        let mut data = Vec::<u32>::with_capacity(len);
        let plane = shape.height * shape.width;
        data.spare_capacity_mut()[..len]
            .par_chunks_mut(positions * PAIRS)
            .enumerate()
            .for_each(|(cb, dst)| {
                let zero = |dst: &mut [MaybeUninit<u32>], positions: Range<usize>| {
                    dst[positions.start * PAIRS..positions.end * PAIRS].fill(MaybeUninit::new(0))
                };
                let mut written = 0;
                for n in 0..shape.batch {
                    let channels = &input[(n * shape.in_channels + cb * CHANNEL_BLOCK) * plane..]
                        [..CHANNEL_BLOCK * plane];
                    for y in 0..shape.height {
                        let first = geometry.row_start(n, y);
                        zero(dst, written..first);
                        assert!((first + shape.width) * PAIRS <= dst.len());
                        // SAFETY: this CPU has AMX, so AVX-512 BF16 too; row
                        // y of the 32 channels and W positions from `first`
                        // (checked).
                        unsafe {
                            pairs::planes_to_rows(
                                channels[y * shape.width..].as_ptr(),
                                plane,
                                CHANNEL_BLOCK,
                                shape.width,
                                dst.as_mut_ptr().add(first * PAIRS) as *mut u32,
                            )
                        };
                        written = first + shape.width;
                    }
                }
                zero(dst, written..positions);
            });
        // SAFETY: each channel block's positions were written in order,
        // rows of pixels and the zeros from the end of one to the start of
        // the next and to the last position.
        unsafe { data.set_len(len) };
        Self { data, positions }
    }

    /// The left tile of 16 positions from `position` in channel block `cb`.
    fn tile(&self, cb: usize, position: usize) -> *const u32 {
        debug_assert!(position + 2 * 16 <= self.positions);
        self.data[(cb * self.positions + position) * PAIRS..].as_ptr()
    }
}

/// One block's sums: 32 positions (rows) by a panel's 32 output channels.
#[derive(Clone)]
struct BlockSums([f32; BLOCK * RHS_PANEL]);

impl BlockSums {
    const ZERO: Self = Self([0.0; BLOCK * RHS_PANEL]);
}

/// `sums` += the products of output positions `block·32..` and the output
/// channels of `panel`, over the channel blocks `channels`, all 9 taps;
/// `prefetch` for the first block of a task, which reads the kernel first.
#[allow(clippy::too_many_arguments)]
fn add_block_sums(
    _: &Tiles,
    input: &Input,
    geometry: &Geometry,
    kernel: &DirectKernel,
    block: usize,
    panel: usize,
    channels: Range<usize>,
    sums: &mut BlockSums,
    prefetch: bool,
) {
    let right = kernel.packed.panel(panel);
    assert!(channels.end * 9 * PAIRS * RHS_PANEL <= right.len());
    let first = block * BLOCK;
    assert!(first + BLOCK + geometry.taps[8] <= input.positions);
    // SAFETY: the tiles are configured; every left tile is 16 positions
    // below `input.positions` (checked), every right one 16 pairs of the
    // panel (checked), the sums 32 rows of 32 floats.
    unsafe {
        if channels.start == 0 {
            amx::zero_sums();
        } else {
            amx::load_sums(sums.0.as_ptr(), 4);
        }
        let mut k = right.as_ptr().add(channels.start * 9 * PAIRS * RHS_PANEL);
        let end = right.as_ptr().add(channels.end * 9 * PAIRS * RHS_PANEL);
        for cb in channels {
            for &tap in &geometry.taps {
                let left = input.tile(cb, first + tap);
                let ahead = k.wrapping_add(amx::PREFETCH_AHEAD * PAIRS * RHS_PANEL);
                if prefetch && ahead < end {
                    amx::prefetch_step(ahead);
                }
                amx::multiply_add([left, left.add(16 * PAIRS)], k);
                k = k.add(PAIRS * RHS_PANEL);
            }
        }
        amx::store_sums(sums.0.as_mut_ptr(), 4);
    }
}

impl BlockSums {
    /// The sums plus the bias into the NCHW output, each output channel's
    /// positions that are pixels (not padding) in runs of its rows.
    ///
    /// # Safety
    /// No other thread writes these output channels at these positions;
    /// the CPU has AVX-512.
    #[target_feature(enable = "avx512f")]
    unsafe fn store(
        &self,
        shape: &ConvShape,
        geometry: &Geometry,
        block: usize,
        panel: usize,
        bias: &[f32],
        out: SharedMut,
    ) {
        let plane = shape.height * shape.width;
        let channels = RHS_PANEL.min(shape.out_channels - panel * RHS_PANEL);
        for half in 0..2 {
            let first = block * BLOCK + half * 16;
            let runs = Runs::of(shape, geometry, first);
            if runs.len == 0 {
                continue;
            }
            for quarter in 0..2 {
                let k0 = panel * RHS_PANEL + quarter * 16;
                if quarter * 16 >= channels {
                    break;
                }
                // SAFETY: rows half·16.. of the sums, 16 floats from
                // column quarter·16; AVX-512 (this CPU has AMX).
                let by_channel = unsafe {
                    transpose16(std::array::from_fn(|r| {
                        _mm512_loadu_ps(
                            self.0[(half * 16 + r) * RHS_PANEL + quarter * 16..].as_ptr(),
                        )
                    }))
                };
                for (j, sums) in by_channel
                    .into_iter()
                    .take(channels - quarter * 16)
                    .enumerate()
                {
                    let k = k0 + j;
                    let values = _mm512_add_ps(sums, _mm512_set1_ps(bias[k]));
                    for run in &runs.runs[..runs.len] {
                        let start = (run.image * shape.out_channels + k) * plane + run.pixel;
                        debug_assert!(start + run.lanes <= shape.output_len());
                        // SAFETY: the run's pixels of channel k are inside
                        // the output; lanes outside the run are not stored.
                        unsafe {
                            let at = out.ptr().wrapping_add(start).wrapping_sub(run.first_lane);
                            _mm512_mask_storeu_ps(at, run.mask(), values);
                        }
                    }
                }
            }
        }
    }
}

/// A run of lanes (positions of one map row) and the pixel it starts at.
#[derive(Clone, Copy, Default)]
struct Run {
    first_lane: usize,
    lanes: usize,
    image: usize,
    pixel: usize,
}

impl Run {
    fn mask(&self) -> u16 {
        (((1u32 << self.lanes) - 1) << self.first_lane) as u16
    }
}

/// The runs of 16 positions: at most 8, every other lane for maps 1
/// wide.
struct Runs {
    runs: [Run; 8],
    len: usize,
}

impl Runs {
    fn of(shape: &ConvShape, geometry: &Geometry, first: usize) -> Self {
        let mut runs = Self {
            runs: Default::default(),
            len: 0,
        };
        let mut lane = 0;
        while lane < 16 {
            let position = first + lane;
            let (row, x) = (position / geometry.row, position % geometry.row);
            let (image, y) = (row / geometry.rows, row % geometry.rows);
            if image >= shape.batch {
                break;
            }
            if y >= shape.height || x >= shape.width {
                // Padding: on to the next row (or image).
                lane += geometry.row - x;
                continue;
            }
            let len = (shape.width - x).min(16 - lane);
            runs.runs[runs.len] = Run {
                first_lane: lane,
                lanes: len,
                image,
                pixel: y * shape.width + x,
            };
            runs.len += 1;
            lane += len;
        }
        runs
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{relative_error_of, shape};
    use super::*;

    /// Against the f64 reference, within bf16's rounding (as the other
    /// bf16 kernels are held): maps narrower than a tile, rows that cross
    /// tiles, several images, output channels that leave a panel partly
    /// empty.
    #[test]
    fn matches_the_reference_within_bf16_rounding() {
        if !amx::available() {
            eprintln!("skipped: this CPU has no AMX");
            return;
        }
        for s in [
            shape(1, 32, 1, 1, 16),
            shape(2, 64, 5, 7, 40),
            shape(2, 32, 4, 4, 32),
            shape(1, 96, 17, 33, 48),
            shape(3, 32, 9, 14, 8),
        ] {
            let err = relative_error_of(s, |input, kernel, bias| {
                let kernel = DirectKernel::new(kernel, s.out_channels, s.in_channels);
                conv2d(&s, input, &kernel, bias)
            });
            assert!(err < 5e-3, "{s:?}: {err}");
        }
    }
}
