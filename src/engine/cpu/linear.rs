//! The linear layer, `x·W + b (+ residual)` over rows of `x`, with the
//! weight prepared once when the model loads: in panels (atelier's f32
//! products) or rounded to bf16 and packed, whose products add the bias
//! and residual as they store each tile, or transposed (`[in, out]`) for
//! the gemm crate, whose product accumulates onto the bias and residual
//! written into the output first.
//!
//! Stored as `[out, in]`, as checkpoints keep it, the gemm crate repacks
//! the whole weight at every call; on the UNet's low-resolution levels (few
//! tokens, wide layers) that doubles the time of a product: 128 x 5120 ->
//! 1280 takes 16.8 ms from `[out, in]` and 8.7 ms from `[in, out]`.
//!
//! Input and output are either tokens or a map's channels
//! ([`Arrangement`]), so a transformer's projections into and out of its
//! tokens read and write the NCHW map in place: no permuted copy.

use rayon::prelude::*;

use super::bf16::{self, PackedRhs};
use super::f32_products::{self, Addends, Panels};
use super::product;

/// A linear layer's weight, as the CPU kernels take it.
#[derive(Clone, Copy)]
pub enum Weight<'a> {
    /// `[in, out]`, row-major, f32 (the gemm crate's products).
    F32(&'a [f32]),
    /// f32 in panels (atelier's AVX-512 products); needs
    /// [`f32_products::available`].
    Panels(&'a Panels),
    /// Rounded to bf16 and packed: products in bf16 with f32 sums (the
    /// input is rounded to bf16 too); needs [`bf16::available`].
    Bf16(&'a PackedRhs),
}

impl Weight<'_> {
    fn fits(&self, inputs: usize, outputs: usize) -> bool {
        match self {
            Self::F32(w) => w.len() == inputs * outputs,
            Self::Panels(p) => p.k() == inputs && p.outputs() == outputs,
            Self::Bf16(p) => p.k() == inputs && p.outputs() == outputs,
        }
    }

    /// Values its bias holds: one per output, or for a gated weight one
    /// per column of sums (a value's and its gate's).
    pub fn bias_len(&self, outputs: usize) -> usize {
        match self {
            Self::Bf16(p) => p.n(),
            Self::Panels(p) => p.n(),
            Self::F32(_) => outputs,
        }
    }
}

/// How one image's `rows x features` operand lies in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrangement {
    /// `[rows, features]`: tokens.
    Tokens,
    /// `[features, rows]`: the channels of a map of `rows` pixels (NCHW).
    Channels,
}

impl Arrangement {
    /// (row stride, feature stride) of an operand of `rows` x `features`.
    fn strides(self, rows: usize, features: usize) -> (usize, usize) {
        match self {
            Self::Tokens => (features, 1),
            Self::Channels => (1, rows),
        }
    }
}

/// `batch` images of `rows` rows (tokens or pixels), `inputs` features in,
/// `outputs` out.
#[derive(Clone, Copy, Debug)]
pub struct LinearShape {
    pub batch: usize,
    pub rows: usize,
    pub inputs: usize,
    pub outputs: usize,
    /// How x lies.
    pub input: Arrangement,
    /// How the output (and the residual) lie.
    pub output: Arrangement,
}

impl LinearShape {
    /// (products, rows of each): one per image, or one for the whole
    /// batch when tokens go in and out (the batch folds into the rows).
    fn products(&self) -> (usize, usize) {
        match (self.input, self.output) {
            (Arrangement::Tokens, Arrangement::Tokens) => (1, self.batch * self.rows),
            _ => (self.batch, self.rows),
        }
    }
}

/// `out[n, r, o] = residual[n, r, o] + bias[o] + Σᵢ x[n, r, i] ·
/// weight[i, o]`, each operand in its arrangement.
pub fn linear(
    s: &LinearShape,
    x: &[f32],
    weight: Weight,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
) -> Vec<f32> {
    let (x_len, out_len) = (s.batch * s.rows * s.inputs, s.batch * s.rows * s.outputs);
    assert_eq!(x.len(), x_len, "x of {s:?}");
    assert!(weight.fits(s.inputs, s.outputs), "weight of {s:?}");
    assert!(
        bias.is_none_or(|b| b.len() == weight.bias_len(s.outputs)),
        "bias of {s:?}"
    );
    assert!(
        residual.is_none_or(|r| r.len() == out_len),
        "residual of {s:?}"
    );
    let weight_t = match weight {
        Weight::Panels(panels) => return with_panels(s, x, panels, bias, residual),
        Weight::Bf16(packed) => return with_bf16(s, x, packed, bias, residual),
        Weight::F32(weight_t) => weight_t,
    };
    let mut out = starting_output(s, bias, residual);
    let (images, rows) = s.products();
    let (x_rs, x_cs) = s.input.strides(rows, s.inputs);
    let (out_rs, out_cs) = s.output.strides(rows, s.outputs);
    for n in 0..images {
        // SAFETY: image n's x and out are [rows x features] at the strides
        // of their arrangement inside their buffers (lengths checked
        // above); the weight is [inputs, outputs], row-major (checked
        // above). The product adds onto `out`, which holds zeros, bias or
        // residual.
        unsafe {
            product(
                [rows, s.outputs, s.inputs],
                (out.as_mut_ptr().add(n * rows * s.outputs), out_rs, out_cs),
                bias.is_some() || residual.is_some(),
                (x.as_ptr().add(n * rows * s.inputs), x_rs, x_cs),
                (weight_t.as_ptr(), s.outputs, 1),
                1.0,
                gemm::Parallelism::Rayon(0),
            )
        }
    }
    out
}

/// Pixels from which a map's channels to its channels take
/// [`f32_products::product_transposed`]. On a Zen 5 the two ways ran
/// alike from 16 x 16 up but for 64 pixels; on an Intel Xeon with AMX the
/// transposed one ran 32 x 32 640 -> 320 in 3.8 ms, the other in 5.7-6.9
/// (`cargo bench --bench cpu_kernels -- pointwise`).
const TRANSPOSED_FROM_PIXELS: usize = 256;

/// [`linear`] with the weight in panels: the product writes every output
/// element once, bias and residual added as it stores them.
fn with_panels(
    s: &LinearShape,
    x: &[f32],
    w: &Panels,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
) -> Vec<f32> {
    let rows = s.products().1;
    // SAFETY: as `written_once` promises; the panels imply a CPU with
    // AVX-512F.
    written_once(s, x, bias, residual, |dst, lhs, addends| unsafe {
        match (s.input, s.output) {
            // A large map's channels to its channels: Wᵀ times the map,
            // whose pixels are the product's contiguous rows (see
            // `f32_products`; on a Zen 5, at 64 pixels, 1920 -> 1280, this
            // one ran at 217 GFLOP/s, the other 304).
            (Arrangement::Channels, Arrangement::Channels) if rows >= TRANSPOSED_FROM_PIXELS => {
                f32_products::product_transposed(rows, (dst.0, rows), w, (lhs.0, rows), addends)
            }
            _ => f32_products::product(rows, dst, lhs, w, addends),
        }
    })
}

/// [`linear`] with the weight rounded to bf16 and packed: as
/// [`with_panels`], every output element written once.
fn with_bf16(
    s: &LinearShape,
    x: &[f32],
    w: &PackedRhs,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
) -> Vec<f32> {
    let rows = s.products().1;
    // SAFETY: as `written_once` promises; a packed weight implies a CPU
    // with bf16 products.
    written_once(s, x, bias, residual, |dst, lhs, addends| unsafe {
        bf16::product(rows, dst, lhs, w, addends)
    })
}

/// The output of [`linear`], made by `product(dst, lhs, addends)` once per
/// image (or once, tokens to tokens): `dst` and `lhs` that image's output
/// and x at the strides of their arrangement (pointer, row stride, column
/// stride), `addends` its bias and residual. `product` must write every
/// element of `dst`.
fn written_once(
    s: &LinearShape,
    x: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    product: impl Fn((*mut f32, usize, usize), (*const f32, usize, usize), Addends),
) -> Vec<f32> {
    let len = s.batch * s.rows * s.outputs;
    let mut out = Vec::<f32>::with_capacity(len);
    let (images, rows) = s.products();
    let (x_rs, x_cs) = s.input.strides(rows, s.inputs);
    let (out_rs, out_cs) = s.output.strides(rows, s.outputs);
    for n in 0..images {
        let (x_at, out_at) = (n * rows * s.inputs, n * rows * s.outputs);
        let addends = Addends {
            bias,
            residual: residual.map(|r| r[out_at..].as_ptr()),
        };
        // SAFETY: image n's x, out and residual are [rows x features] at
        // the strides of their arrangement inside their buffers (lengths
        // checked by `linear`; out has the capacity).
        let (dst, lhs) = unsafe { (out.as_mut_ptr().add(out_at), x.as_ptr().add(x_at)) };
        product((dst, out_rs, out_cs), (lhs, x_rs, x_cs), addends);
    }
    // SAFETY: the products above wrote every element of every image.
    unsafe { out.set_len(len) };
    out
}

/// Elements per task of [`starting_output`].
const CHUNK: usize = 1 << 16;

/// What the product adds onto: the residual (or zeros) plus the bias,
/// written once, on every core. Zeroing a 2048 x 2560 output and then
/// adding the bias on one thread took 3.1 ms, a quarter of its bf16
/// product's time.
fn starting_output(s: &LinearShape, bias: Option<&[f32]>, residual: Option<&[f32]>) -> Vec<f32> {
    let len = s.batch * s.rows * s.outputs;
    let Some(bias) = bias.filter(|_| len > 0) else {
        return residual.map_or_else(|| vec![0f32; len], <[f32]>::to_vec);
    };
    // The bias varies along a row of tokens, and is constant over a
    // channel's plane.
    let run = match s.output {
        Arrangement::Tokens => s.outputs,
        Arrangement::Channels => s.rows,
    };
    let value = |run_index: usize, i: usize| match s.output {
        Arrangement::Tokens => bias[i],
        Arrangement::Channels => bias[run_index % s.outputs],
    };
    let mut out = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(run)
        .enumerate()
        .with_min_len(CHUNK.div_ceil(run))
        .for_each(|(r, dst)| match residual {
            Some(residual) => {
                let residual = &residual[r * run..][..run];
                for (i, (d, &x)) in dst.iter_mut().zip(residual).enumerate() {
                    d.write(x + value(r, i));
                }
            }
            None => {
                for (i, d) in dst.iter_mut().enumerate() {
                    d.write(value(r, i));
                }
            }
        });
    // SAFETY: the chunks cover the first `len` elements, each written above.
    unsafe { out.set_len(len) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_sum_over_inputs_in_every_arrangement() {
        use Arrangement::*;
        let (batch, rows, inputs, outputs) = (2, 5, 7, 3);
        let x: Vec<f32> = (0..batch * rows * inputs)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let wt: Vec<f32> = (0..inputs * outputs)
            .map(|i| (i as f32 * 0.11).cos())
            .collect();
        let bias = [0.5, -1.0, 2.0];
        let residual: Vec<f32> = (0..batch * rows * outputs)
            .map(|i| i as f32 * 0.01)
            .collect();
        let at = |arr: Arrangement, n: usize, r: usize, f: usize, features: usize| match arr {
            Tokens => (n * rows + r) * features + f,
            Channels => (n * features + f) * rows + r,
        };
        for (input, output) in [
            (Tokens, Tokens),
            (Channels, Tokens),
            (Tokens, Channels),
            (Channels, Channels),
        ] {
            let s = LinearShape {
                batch,
                rows,
                inputs,
                outputs,
                input,
                output,
            };
            for (b, res) in [
                (None, None),
                (Some(&bias[..]), None),
                (None, Some(&residual[..])),
                (Some(&bias[..]), Some(&residual[..])),
            ] {
                let got = linear(&s, &x, Weight::F32(&wt), b, res);
                // The weight as checkpoints store it, [out, in].
                let w: Vec<f32> = (0..inputs * outputs)
                    .map(|x| wt[(x % inputs) * outputs + x / inputs])
                    .collect();
                let panels_got = f32_products::available().then(|| {
                    let panels = Panels::from_transposed(&w, inputs, outputs);
                    linear(&s, &x, Weight::Panels(&panels), b, res)
                });
                // bf16 products: the same sums within bf16's rounding of
                // both operands (values below 1, 7 inputs).
                let bf16_got = bf16::available().then(|| {
                    let packed = PackedRhs::from_transposed(&w, inputs, outputs);
                    linear(&s, &x, Weight::Bf16(&packed), b, res)
                });
                for n in 0..batch {
                    for r in 0..rows {
                        for o in 0..outputs {
                            let out_at = at(output, n, r, o, outputs);
                            let want: f64 = b.map_or(0.0, |b| b[o] as f64)
                                + res.map_or(0.0, |res| res[out_at] as f64)
                                + (0..inputs)
                                    .map(|i| {
                                        x[at(input, n, r, i, inputs)] as f64
                                            * wt[i * outputs + o] as f64
                                    })
                                    .sum::<f64>();
                            let got_f32 = got[out_at] as f64;
                            assert!(
                                (got_f32 - want).abs() < 1e-5,
                                "{input:?} -> {output:?} [{n}, {r}, {o}]: {got_f32} vs {want}"
                            );
                            if let Some(panels_got) = &panels_got {
                                let got = panels_got[out_at] as f64;
                                assert!(
                                    (got - want).abs() < 1e-5,
                                    "panels {input:?} -> {output:?} [{n}, {r}, {o}]: {got} vs {want}"
                                );
                            }
                            if let Some(bf16_got) = &bf16_got {
                                let got = bf16_got[out_at] as f64;
                                assert!(
                                    (got - want).abs() < 0.03,
                                    "bf16 {input:?} -> {output:?} [{n}, {r}, {o}]: {got} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
