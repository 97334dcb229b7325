//! Convolution as unfold + one matrix product per band of output rows:
//! `out[K, band] = kernel[K, C*kh*kw] x columns[C*kh*kw, band]`. The kernel
//! is the left operand as stored, so it is never copied (or, for bf16
//! products, the same product transposed, with the kernel packed once). A band runs over
//! output rows of all images at once (rows counted image after image), so
//! small maps still make one wide product; the product lands in a scratch
//! `[K, band]` that is copied into the NCHW output with the bias added.

use std::cell::RefCell;

use rayon::prelude::*;

use super::super::bf16::{self, PackedLhs, PackedRhs};
use super::super::f32_products::{self, Addends, Panels, PANEL};
use super::ConvShape;

/// Unfolded input held at once, in floats (16 MiB): large maps are done a
/// band of output rows at a time.
const COLUMN_BUDGET: usize = 4 << 20;

thread_local! {
    /// The unfolded input and the band's product, kept between calls.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// The kernel as one of the two products takes it.
pub(super) enum Weights<'a> {
    /// `[K, C*kh*kw]` as stored, the product's left operand.
    F32(&'a [f32]),
    /// Its transpose, packed for bf16 products (the right operand).
    Bf16(&'a PackedRhs),
}

pub(super) fn conv2d(s: &ConvShape, input: &[f32], kernel: Weights, bias: &[f32]) -> Vec<f32> {
    let (ho, wo) = (s.out_height(), s.out_width());
    let depth = s.in_channels * s.kernel * s.kernel;
    let rows = s.batch * ho;
    let band_rows = (COLUMN_BUDGET / (depth * wo)).clamp(1, rows);
    let mut out = vec![0f32; s.output_len()];
    SCRATCH.with(|scratch| {
        let (columns, product) = &mut *scratch.borrow_mut();
        for first in (0..rows).step_by(band_rows) {
            let band = first..(first + band_rows).min(rows);
            let cols = band.len() * wo;
            product.resize(s.out_channels * cols, 0.0);
            match kernel {
                // product [K, cols] = kernel [K, depth] · columns, the
                // columns unfolded straight into panels.
                Weights::F32(kernel) if f32_products::enabled() => {
                    let len = f32_products::packed_len(depth, cols);
                    columns.resize(len, 0.0);
                    unfold_into_panels(s, input, band.clone(), &mut columns[..len]);
                    let panels = Panels::packed(depth, cols, &columns[..len]);
                    // SAFETY: kernel is [K, depth] and product [K, cols],
                    // row-major; the products are enabled.
                    unsafe {
                        f32_products::product(
                            s.out_channels,
                            (product.as_mut_ptr(), cols, 1),
                            (kernel.as_ptr(), depth, 1),
                            &panels,
                            Addends::default(),
                        )
                    };
                }
                Weights::F32(kernel) => {
                    columns.resize(depth * cols, 0.0);
                    unfold(s, input, band.clone(), columns);
                    // SAFETY: kernel is [K, depth], columns [depth, cols]
                    // and product [K, cols], each contiguous and as long as
                    // that.
                    unsafe {
                        super::super::product(
                            [s.out_channels, cols, depth],
                            (product.as_mut_ptr(), cols, 1),
                            false,
                            (kernel.as_ptr(), depth, 1),
                            (columns.as_ptr(), cols, 1),
                            1.0,
                            gemm::Parallelism::Rayon(rayon::current_num_threads()),
                        );
                    }
                }
                // productᵀ [cols, K] += columnsᵀ [cols, depth] · kernelᵀ: the
                // same buffers read transposed.
                Weights::Bf16(kernel_t) => {
                    let lhs = if s.stride == 1 && wo.is_multiple_of(bf16::LHS_BLOCK) {
                        pack_unfolded(s, input, band.clone())
                    } else {
                        columns.resize(depth * cols, 0.0);
                        unfold(s, input, band.clone(), columns);
                        // SAFETY: columns is [depth, cols], contiguous.
                        unsafe { PackedLhs::new(cols, depth, (columns.as_ptr(), 1, cols)) }
                    };
                    // SAFETY: product is [K, cols], contiguous.
                    unsafe {
                        let dst = (product.as_mut_ptr(), 1, cols);
                        bf16::product_packed(dst, &lhs, kernel_t, Addends::default())
                    };
                }
            }
            scatter(s, band, product, bias, &mut out);
        }
    });
    out
}

/// Writes `columns[(c, i, j), (g - band.start) * Wo + x] = input[n, c,
/// y*s + i - p, x*s + j - p]` for the band's global output rows `g = n * Ho
/// + y` (zero outside the image), a few input channels per thread task.
fn unfold(s: &ConvShape, input: &[f32], band: std::ops::Range<usize>, columns: &mut [f32]) {
    let (k, wo) = (s.kernel, s.out_width());
    let cols = band.len() * wo;
    columns
        .par_chunks_mut(k * k * cols)
        .with_min_len(8)
        .enumerate()
        .for_each(|(c, block)| {
            for (r, dst) in block.chunks_mut(cols).enumerate() {
                let (i, j) = (r / k, r % k);
                for (g, dst_row) in band.clone().zip(dst.chunks_mut(wo)) {
                    unfold_output_run(s, input, c, g, (i, j), 0, dst_row);
                }
            }
        });
}

/// [`unfold`] into panels of [`PANEL`] columns (`[cols / PANEL][depth][PANEL]`,
/// zeros past the band's columns), one input channel of one panel per
/// task: its `kh * kw` rows are contiguous there.
fn unfold_into_panels(
    s: &ConvShape,
    input: &[f32],
    band: std::ops::Range<usize>,
    panels: &mut [f32],
) {
    let (k, wo) = (s.kernel, s.out_width());
    let cols = band.len() * wo;
    panels
        .par_chunks_mut(k * k * PANEL)
        .with_min_len(8)
        .enumerate()
        .for_each(|(task, block)| {
            let (panel, c) = (task / s.in_channels, task % s.in_channels);
            let (first, end) = (panel * PANEL, ((panel + 1) * PANEL).min(cols));
            for (r, dst) in block.chunks_mut(PANEL).enumerate() {
                let (i, j) = (r / k, r % k);
                // Column x is output pixel x % Wo of global output row
                // band.start + x / Wo: runs of one output row at a time.
                let mut x = first;
                while x < end {
                    let (g, xo) = (band.start + x / wo, x % wo);
                    let run = &mut dst[x - first..][..(wo - xo).min(end - x)];
                    unfold_output_run(s, input, c, g, (i, j), xo, run);
                    x += run.len();
                }
                dst[end - first..].fill(0.0);
            }
        });
}

/// The band's `columnsᵀ`, as [`unfold`] would write them, packed for bf16
/// products straight from the input (no f32 copy in between). Needs stride
/// 1 and `Wo` a multiple of the packing's block: then each block of output
/// pixels lies in one output row, and each of its columns is that many
/// consecutive floats of one input row, cut at the image's edges.
fn pack_unfolded(s: &ConvShape, input: &[f32], band: std::ops::Range<usize>) -> PackedLhs {
    const BLOCK: usize = bf16::LHS_BLOCK;
    let (h, w, k) = (s.height, s.width, s.kernel);
    let (ho, wo) = (s.out_height(), s.out_width());
    debug_assert!(s.stride == 1 && wo.is_multiple_of(BLOCK));
    let pad = s.padding as isize;
    // Per column d = (c, i, j): the channel's plane and the tap's offsets,
    // so the packing loop does no divisions.
    let taps: Vec<(usize, isize, isize)> = (0..s.in_channels)
        .flat_map(|c| (0..k * k).map(move |t| (c, (t / k) as isize - pad, (t % k) as isize - pad)))
        .map(|(c, di, dj)| (c * h * w, di, dj))
        .collect();
    PackedLhs::from_blocks(band.len() * wo, taps.len(), |block, dst| {
        let first = block * BLOCK;
        let (g, x0) = (band.start + first / wo, (first % wo) as isize);
        let (n, y) = (g / ho, (g % ho) as isize);
        let image = &input[n * s.in_channels * h * w..][..s.in_channels * h * w];
        let column = |d: usize| {
            let (plane, di, dj) = taps[d];
            let iy = y + di;
            if iy < 0 || iy >= h as isize {
                return None;
            }
            // Lanes l read input column x0 + dj + l: those inside 0..w.
            let ix = x0 + dj;
            let lo = (-ix).clamp(0, BLOCK as isize);
            let hi = (w as isize - ix).clamp(0, BLOCK as isize);
            let mask = ((1u32 << hi) - 1) & !((1u32 << lo) - 1);
            let row = &image[plane + iy as usize * w..][..w];
            (mask != 0).then(|| (row.as_ptr().wrapping_offset(ix), mask as u8))
        };
        // SAFETY: each mask selects lanes ix + l in 0..w, inside `row`.
        unsafe { bf16::pack_block_from_columns(taps.len(), dst, column) };
    })
}

/// Input channel `c`'s tap `(i, j)` for the output pixels `x0..x0 +
/// dst.len()` of global output row `g = n * Ho + y`: zeros where the tap's
/// input row is outside the image.
fn unfold_output_run(
    s: &ConvShape,
    input: &[f32],
    c: usize,
    g: usize,
    (i, j): (usize, usize),
    x0: usize,
    dst: &mut [f32],
) {
    let (h, w, ho) = (s.height, s.width, s.out_height());
    let (n, y) = (g / ho, g % ho);
    let iy = (y * s.stride + i) as isize - s.padding as isize;
    if iy < 0 || iy >= h as isize {
        dst.fill(0.0);
    } else {
        let at = ((n * s.in_channels + c) * h + iy as usize) * w;
        unfold_run(s, &input[at..at + w], j, x0, dst);
    }
}

/// Kernel column `j` from input row `src` for the output pixels `x0..x0 +
/// dst.len()` of a row.
fn unfold_run(s: &ConvShape, src: &[f32], j: usize, x0: usize, dst: &mut [f32]) {
    let (w, wo) = (src.len(), dst.len());
    if s.stride == 1 {
        // Output x reads input x + j - p: a shifted copy with zeros where
        // it falls off either edge.
        let shift = (x0 + j) as isize - s.padding as isize;
        let first = (-shift).clamp(0, wo as isize) as usize;
        let last = (w as isize - shift).clamp(first as isize, wo as isize) as usize;
        dst[..first].fill(0.0);
        dst[first..last].copy_from_slice(
            &src[(first as isize + shift) as usize..(last as isize + shift) as usize],
        );
        dst[last..].fill(0.0);
    } else {
        for (x, d) in dst.iter_mut().enumerate() {
            let ix = ((x0 + x) * s.stride + j) as isize - s.padding as isize;
            *d = if ix < 0 || ix >= w as isize {
                0.0
            } else {
                src[ix as usize]
            };
        }
    }
}

/// Copies the band's product `[K, band rows * Wo]` into the NCHW output,
/// adding the bias.
fn scatter(
    s: &ConvShape,
    band: std::ops::Range<usize>,
    product: &[f32],
    bias: &[f32],
    out: &mut [f32],
) {
    let (ho, wo) = (s.out_height(), s.out_width());
    let cols = band.len() * wo;
    for (k, row) in product.chunks(cols).enumerate() {
        for (g, src) in band.clone().zip(row.chunks(wo)) {
            let (n, y) = (g / ho, g % ho);
            let at = ((n * s.out_channels + k) * ho + y) * wo;
            for (d, v) in out[at..at + wo].iter_mut().zip(src) {
                *d = v + bias[k];
            }
        }
    }
}
