//! Each kernel against candle's own ops on the same CUDA tensors, on shapes
//! that do not divide evenly into the kernels' blocks. They run where a
//! CUDA build finds a GPU, and say so and pass where it finds none.

use super::*;
use candle_core::{Device, Result, D};

fn gpu() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(device) => Some(device),
        Err(e) => {
            eprintln!("no CUDA device, kernels not checked: {e}");
            None
        }
    }
}

/// The largest difference, relative to the largest magnitude of `want`.
fn relative_error(got: &Tensor, want: &Tensor) -> Result<f32> {
    let (got, want) = (got.to_dtype(DType::F32)?, want.to_dtype(DType::F32)?);
    let scale = want.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-6);
    Ok((got - want)?.abs()?.max_all()?.to_scalar::<f32>()? / scale)
}

/// f32 to candle's precision; f16 and bf16 to their rounding, against
/// candle's op in f32 on the same (rounded) input.
fn tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::F32 => 1e-5,
        DType::F16 => 2e-3,
        _ => 1.6e-2,
    }
}

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

#[test]
fn group_norm_matches_candle() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    for (shape, groups) in [
        ((2, 64, 7, 9), 32),
        ((1, 320, 64, 64), 32),
        ((2, 12, 3, 1), 4),
    ] {
        let xs = Tensor::randn(0f32, 1., shape, &dev)?.affine(3., 0.5)?;
        let weight = Tensor::randn(1f32, 0.2, shape.1, &dev)?;
        let bias = Tensor::randn(0f32, 0.2, shape.1, &dev)?;
        let reference =
            candle_nn::GroupNorm::new(weight.clone(), bias.clone(), shape.1, groups, 1e-5)?;
        for dtype in DTYPES {
            let (x, w, b) = (
                xs.to_dtype(dtype)?,
                weight.to_dtype(dtype)?,
                bias.to_dtype(dtype)?,
            );
            let x32 = x.to_dtype(DType::F32)?;
            for silu in [false, true] {
                let got = group_norm(&x, groups, &w, &b, 1e-5, silu)?;
                let want = candle_core::Module::forward(&reference, &x32)?;
                let want = if silu { want.silu()? } else { want };
                let err = relative_error(&got, &want)?;
                assert!(
                    err < tolerance(dtype),
                    "{shape:?} {dtype:?} silu {silu}: {err}"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn softmax_matches_candle() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    for shape in [(3, 5, 77), (2, 1, 4096), (1, 2, 5000), (4, 3, 1)] {
        let xs = (Tensor::randn(0f32, 1., shape, &dev)? * 4.)?;
        for dtype in DTYPES {
            let x = xs.to_dtype(dtype)?;
            let got = softmax_last_dim(&x)?;
            let want = candle_nn::ops::softmax_last_dim(&x.to_dtype(DType::F32)?)?;
            let err = relative_error(&got, &want)?;
            assert!(err < tolerance(dtype), "{shape:?} {dtype:?}: {err}");
        }
    }
    Ok(())
}

/// Attention in f32 with candle's products, per head.
fn reference_attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, n, dim) = q.dims3()?;
    let d = dim / heads;
    let split = |x: &Tensor| -> Result<Tensor> {
        let m = x.dim(1)?;
        x.to_dtype(DType::F32)?
            .reshape((b, m, heads, d))?
            .transpose(1, 2)?
            .contiguous()
    };
    let (q, k, v) = (split(q)?, split(k)?, split(v)?);
    let scores = (q.matmul(&k.t()?)? * (d as f64).powf(-0.5))?;
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    probs.matmul(&v)?.transpose(1, 2)?.reshape((b, n, dim))
}

#[test]
fn flash_attention_matches_candle() -> Result<()> {
    attention_matches_candle(FlashKernel::Wmma)
}

#[test]
fn flash_attention_mma_matches_candle() -> Result<()> {
    attention_matches_candle(FlashKernel::Mma)
}

#[test]
fn flash_attention_mma1_matches_candle() -> Result<()> {
    attention_matches_candle(FlashKernel::MmaOneTile)
}

fn attention_matches_candle(kernel: FlashKernel) -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    // (batch, queries, keys, heads, head width): SD's widths, lengths
    // that are not multiples of the 64-row tiles, cross-attention's 77.
    for (b, n, m, heads, d) in [
        (2, 100, 77, 8, 40),
        (1, 130, 200, 2, 64),
        (1, 300, 150, 2, 64),
        (2, 64, 64, 3, 80),
        (1, 33, 257, 1, 160),
        (1, 1, 1, 2, 96),
    ] {
        let q = Tensor::randn(0f32, 1., (b, n, heads * d), &dev)?;
        let k = Tensor::randn(0f32, 1., (b, m, heads * d), &dev)?;
        let v = Tensor::randn(0f32, 1., (b, m, heads * d), &dev)?;
        for dtype in [DType::F16, DType::BF16] {
            let (q, k, v) = (q.to_dtype(dtype)?, k.to_dtype(dtype)?, v.to_dtype(dtype)?);
            let scale = (d as f32).powf(-0.5);
            let got = flash_attention_with(&q, &k, &v, heads, scale, kernel)?
                .expect("the kernel takes SD's head widths");
            let want = reference_attention(&q, &k, &v, heads)?;
            let err = relative_error(&got, &want)?;
            // P is rounded to the storage type before P·V.
            assert!(
                err < 4. * tolerance(dtype),
                "{kernel:?} {b}x{n}x{m} {heads}x{d} {dtype:?}: {err}"
            );
        }
    }
    // f32 and head widths it is not built for go to candle's products.
    let q = Tensor::randn(0f32, 1., (1, 8, 2 * 12), &dev)?;
    assert!(flash_attention_with(&q, &q, &q, 2, 1., kernel)?.is_none());
    let half = q.to_dtype(DType::F16)?;
    assert!(flash_attention_with(&half, &half, &half, 2, 1., kernel)?.is_none());
    Ok(())
}

#[test]
fn im2col_conv2d_matches_candle() -> Result<()> {
    conv_matches_candle("im2col", conv2d)
}

#[test]
fn cudnn_conv2d_matches_candle() -> Result<()> {
    if !cfg!(feature = "cudnn") {
        eprintln!("built without cuDNN, its convolution not checked");
        return Ok(());
    }
    conv_matches_candle("cudnn", cudnn_conv2d)
}

/// `conv` against candle's convolution on the CPU (on the GPU, a cuDNN
/// build's would be TF32).
fn conv_matches_candle(way: &str, conv: ConvFn) -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    // (batch, in, out, size, kernel, stride, padding): the UNet's and
    // VAE's 3x3 (same and stride 2), an odd map, a 1x1.
    for (b, c, co, size, k, stride, padding) in [
        (2, 4, 8, 12, 3, 1, 1),
        (1, 8, 8, 13, 3, 2, 0),
        (2, 6, 5, 5, 1, 1, 0),
        (1, 320, 320, 64, 3, 1, 1),
    ] {
        let xs = Tensor::randn(0f32, 1., (b, c, size, size + 1), &dev)?;
        let weight = Tensor::randn(0f32, 0.1, (co, c, k, k), &dev)?;
        let bias = Tensor::randn(0f32, 0.1, co, &dev)?;
        for dtype in DTYPES {
            let (x, w, bi) = (
                xs.to_dtype(dtype)?,
                weight.to_dtype(dtype)?,
                bias.to_dtype(dtype)?,
            );
            let on_cpu = |t: &Tensor| t.to_dtype(DType::F32)?.to_device(&Device::Cpu);
            let want = on_cpu(&x)?
                .conv2d(&on_cpu(&w)?, padding, stride, 1, 1)?
                .broadcast_add(&on_cpu(&bi)?.reshape((1, co, 1, 1))?)?;
            // Twice: the second call reuses what the first set up.
            for _ in 0..2 {
                let got = conv(&x, &w, &bi, stride, padding)?.to_device(&Device::Cpu)?;
                assert_eq!(got.dims(), want.dims());
                let err = relative_error(&got, &want)?;
                assert!(
                    err < 4. * tolerance(dtype),
                    "{way} {b}x{c}x{size} k{k} s{stride} p{padding} {dtype:?}: {err}"
                );
            }
        }
    }
    Ok(())
}

type ConvFn = fn(&Tensor, &Tensor, &Tensor, usize, usize) -> Result<Tensor>;

#[test]
fn geglu_matches_candle() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    for shape in [(2, 77, 2 * 640), (1, 3, 2 * 5)] {
        let xs = Tensor::randn(0f32, 2., shape, &dev)?;
        for dtype in DTYPES {
            let x = xs.to_dtype(dtype)?;
            let got = geglu(&x)?;
            let parts = x.to_dtype(DType::F32)?.chunk(2, D::Minus1)?;
            let want = (&parts[0] * parts[1].gelu_erf()?)?;
            let err = relative_error(&got, &want)?;
            assert!(err < tolerance(dtype), "{shape:?} {dtype:?}: {err}");
        }
    }
    Ok(())
}
