//! Group normalisation with its affine transform, and optionally SiLU, in
//! two passes per (image, group), groups in parallel (candle's runs eight
//! whole-tensor passes, most of them on one thread).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::math::exp;
use super::vectorized;

/// Sums are kept per lane of this many floats so that they vectorise.
const LANES: usize = 16;

/// An input `[batch, channels, spatial]` split into `groups` groups of
/// channels.
#[derive(Clone, Copy, Debug)]
pub struct GroupShape {
    pub batch: usize,
    pub channels: usize,
    pub spatial: usize,
    pub groups: usize,
}

/// Each group is normalised over its channels and positions (biased
/// variance, as PyTorch), then `· weight[c] + bias[c]`, then `x ·
/// sigmoid(x)` when `silu`.
pub fn group_norm(
    s: &GroupShape,
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    eps: f32,
    silu: bool,
) -> Vec<f32> {
    assert_eq!(s.channels % s.groups, 0, "channels in whole groups");
    assert_eq!(x.len(), s.batch * s.channels * s.spatial, "input size");
    let per_group = s.channels / s.groups;
    let len = per_group * s.spatial;
    // Not zeroed first: every value is written below (zeroing took a third
    // of the layer norm's time, whose loop is this one's).
    let mut out = Vec::with_capacity(x.len());
    out.spare_capacity_mut()
        .par_chunks_mut(len)
        .zip(x.par_chunks(len))
        .enumerate()
        .for_each(|(bg, (dst, src))| {
            let first = (bg % s.groups) * per_group;
            let (weight, bias) = (&weight[first..][..per_group], &bias[first..][..per_group]);
            vectorized(
                #[inline(always)]
                || normalize_group(src, dst, s.spatial, weight, bias, eps, silu),
            )
        });
    // SAFETY: each group of x had its values in out written.
    unsafe { out.set_len(x.len()) };
    out
}

/// One group: `src` and `dst` are its channels' planes of `spatial`
/// values, `weight` and `bias` its channels' affine transform.
#[inline(always)]
fn normalize_group(
    src: &[f32],
    dst: &mut [MaybeUninit<f32>],
    spatial: usize,
    weight: &[f32],
    bias: &[f32],
    eps: f32,
    silu: bool,
) {
    let len = src.len() as f32;
    let mean = sum(src) / len;
    let var = sum_sq_dev(src, mean) / len;
    let rstd = 1.0 / (var + eps).sqrt();
    for (c, (dst, src)) in dst.chunks_mut(spatial).zip(src.chunks(spatial)).enumerate() {
        let scale = rstd * weight[c];
        let shift = bias[c] - mean * scale;
        if silu {
            for (d, &v) in dst.iter_mut().zip(src) {
                let y = v * scale + shift;
                d.write(y / (1.0 + exp(-y)));
            }
        } else {
            for (d, &v) in dst.iter_mut().zip(src) {
                d.write(v * scale + shift);
            }
        }
    }
}

#[inline(always)]
pub(super) fn sum(xs: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (acc, &v) in lanes.iter_mut().zip(chunk) {
            *acc += v;
        }
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

#[inline(always)]
pub(super) fn sum_sq_dev(xs: &[f32], mean: f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (acc, &v) in lanes.iter_mut().zip(chunk) {
            *acc += (v - mean) * (v - mean);
        }
    }
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|v| (v - mean) * (v - mean))
        .sum();
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn matches_the_definition_with_and_without_silu() {
        let s = GroupShape {
            batch: 2,
            channels: 6,
            spatial: 37,
            groups: 3,
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let x: Vec<f32> = (0..2 * 6 * 37)
            .map(|_| rng.random_range(-3.0..5.0))
            .collect();
        let weight: Vec<f32> = (0..6).map(|i| 0.5 + i as f32 * 0.1).collect();
        let bias: Vec<f32> = (0..6).map(|i| i as f32 * 0.2 - 0.5).collect();
        for silu in [false, true] {
            let got = group_norm(&s, &x, &weight, &bias, 1e-5, silu);
            for b in 0..2 {
                for g in 0..3 {
                    let at = (b * 6 + g * 2) * 37;
                    let group = &x[at..at + 2 * 37];
                    let mean = group.iter().map(|&v| v as f64).sum::<f64>() / 74.0;
                    let var = group
                        .iter()
                        .map(|&v| (v as f64 - mean).powi(2))
                        .sum::<f64>()
                        / 74.0;
                    for (i, &v) in group.iter().enumerate() {
                        let c = g * 2 + i / 37;
                        let mut want = (v as f64 - mean) / (var + 1e-5).sqrt() * weight[c] as f64
                            + bias[c] as f64;
                        if silu {
                            want /= 1.0 + (-want).exp();
                        }
                        let diff = (got[at + i] as f64 - want).abs();
                        assert!(diff < 1e-5, "silu {silu}, {b}/{g}/{i}: {diff}");
                    }
                }
            }
        }
    }
}
