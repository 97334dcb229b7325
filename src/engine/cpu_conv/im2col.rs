//! Convolution as unfold + one matrix product per block of output rows:
//! `out[K, rows*Wo] = kernel[K, C*kh*kw] x columns[C*kh*kw, rows*Wo]`.
//! The kernel is the left operand as stored and the product lands in the
//! NCHW output (row stride Ho*Wo), so nothing is transposed.

use rayon::prelude::*;

use super::ConvShape;

/// Unfolded input held at once, in floats (16 MiB): large maps are done a
/// band of output rows at a time.
const COLUMN_BUDGET: usize = 4 << 20;

pub(super) fn conv2d(s: &ConvShape, input: &[f32], kernel: &[f32], bias: &[f32]) -> Vec<f32> {
    let (ho, wo) = (s.out_height(), s.out_width());
    let plane = ho * wo;
    let depth = s.in_channels * s.kernel * s.kernel;
    let band_rows = (COLUMN_BUDGET / (depth * wo)).clamp(1, ho);
    let mut out = vec![0f32; s.output_len()];
    let mut columns = Vec::new();
    for n in 0..s.batch {
        let image = &input[n * s.in_channels * s.height * s.width..];
        let out_image = &mut out[n * s.out_channels * plane..(n + 1) * s.out_channels * plane];
        for y0 in (0..ho).step_by(band_rows) {
            let y1 = (y0 + band_rows).min(ho);
            let cols = (y1 - y0) * wo;
            columns.resize(depth * cols, 0.0);
            unfold(s, image, y0..y1, &mut columns);
            for (k, row) in out_image.chunks_mut(plane).enumerate() {
                row[y0 * wo..y1 * wo].fill(bias[k]);
            }
            // SAFETY: every pointer covers the extent its strides and sizes
            // reach: kernel [K, depth], columns [depth, cols], and the K
            // output rows of `cols` floats at stride `plane`.
            unsafe {
                gemm::gemm(
                    s.out_channels,
                    cols,
                    depth,
                    out_image.as_mut_ptr().add(y0 * wo),
                    1,
                    plane as isize,
                    true,
                    kernel.as_ptr(),
                    1,
                    depth as isize,
                    columns.as_ptr(),
                    1,
                    cols as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(rayon::current_num_threads()),
                );
            }
        }
    }
    out
}

/// Writes `columns[(c, i, j), (y - rows.start) * Wo + x] = input[c, y*s + i
/// - p, x*s + j - p]` (zero outside the image), one row per thread task.
fn unfold(s: &ConvShape, image: &[f32], rows: std::ops::Range<usize>, columns: &mut [f32]) {
    let (h, w, k, wo) = (s.height, s.width, s.kernel, s.out_width());
    let cols = rows.len() * wo;
    columns
        .par_chunks_mut(cols)
        .enumerate()
        .for_each(|(r, dst)| {
            let (c, i, j) = (r / (k * k), r / k % k, r % k);
            let plane = &image[c * h * w..(c + 1) * h * w];
            for (y, dst_row) in rows.clone().zip(dst.chunks_mut(wo)) {
                let iy = (y * s.stride + i) as isize - s.padding as isize;
                if iy < 0 || iy >= h as isize {
                    dst_row.fill(0.0);
                    continue;
                }
                let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                if s.stride == 1 {
                    // Output x reads input x + j - p: a shifted copy with
                    // zeros where it falls off either edge.
                    let shift = j as isize - s.padding as isize;
                    let first = (-shift).clamp(0, wo as isize) as usize;
                    let last = (w as isize - shift).clamp(first as isize, wo as isize) as usize;
                    dst_row[..first].fill(0.0);
                    dst_row[first..last].copy_from_slice(
                        &src[(first as isize + shift) as usize..(last as isize + shift) as usize],
                    );
                    dst_row[last..].fill(0.0);
                } else {
                    for (x, d) in dst_row.iter_mut().enumerate() {
                        let ix = (x * s.stride + j) as isize - s.padding as isize;
                        *d = if ix < 0 || ix >= w as isize {
                            0.0
                        } else {
                            src[ix as usize]
                        };
                    }
                }
            }
        });
}
