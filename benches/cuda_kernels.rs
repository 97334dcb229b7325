//! atelier's CUDA kernels against candle's ops on the shapes of SD 1.5's,
//! SD 2.1's and SDXL's UNets (batch 2, as with classifier-free guidance)
//! and VAEs, same process, same inputs, f16, median of 20 after a warm-up,
//! each run synchronised: attention (each fused kernel vs candle's products
//! with atelier's softmax, as `blocks::attention` runs them), convolutions
//! (atelier's im2col + one product, and with `--features cudnn` cuDNN with
//! its setup kept per shape, each vs candle's `conv2d`, which is cuDNN set
//! up at every call in such a build), group norm + SiLU.
//! The kernels' A/B for one GPU call, before a whole-model bench.
//!
//!     cargo bench --features cuda --bench cuda_kernels

use std::time::Instant;

use atelier::engine::{blocks, cuda};
use candle_core::{DType, Device, Module, Result, Tensor};

const DTYPE: DType = DType::F16;

fn median_ms(dev: &Device, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    dev.synchronize()?;
    let mut times = Vec::with_capacity(20);
    for _ in 0..20 {
        let t = Instant::now();
        f()?;
        dev.synchronize()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn row(what: String, candle: f64, atelier: f64) {
    println!(
        "{what:<52} {candle:>10.3} {atelier:>10.3} {:>8.2}",
        atelier / candle
    );
}

fn main() -> Result<()> {
    let dev = Device::new_cuda(0)?;
    println!(
        "{:<52} {:>10} {:>10} {:>8}",
        "op", "candle ms", "atelier ms", "ratio"
    );
    attentions(&dev)?;
    convolutions(&dev)?;
    group_norms(&dev)
}

fn attentions(dev: &Device) -> Result<()> {
    // (what, queries, keys, width, heads, upcast)
    for (what, n, m, dim, heads, upcast) in [
        ("SD 1.5 512 self, heads of 40", 4096, 4096, 320, 8, false),
        ("SD 1.5 512 cross, heads of 40", 4096, 77, 320, 8, false),
        ("SD 1.5 512 level 1, heads of 80", 1024, 1024, 640, 8, false),
        (
            "SD 2.1 768 self, heads of 64, f32 scores",
            9216,
            9216,
            320,
            5,
            true,
        ),
        ("SDXL 1024 level 1, heads of 64", 4096, 4096, 640, 10, false),
        (
            "SDXL 1024 level 2, heads of 64",
            1024,
            1024,
            1280,
            20,
            false,
        ),
    ] {
        let q = Tensor::randn(0f32, 1., (2, n, dim), dev)?.to_dtype(DTYPE)?;
        let k = Tensor::randn(0f32, 1., (2, m, dim), dev)?.to_dtype(DTYPE)?;
        let v = Tensor::randn(0f32, 1., (2, m, dim), dev)?.to_dtype(DTYPE)?;
        let time = |fused: &str| {
            std::env::set_var("ATELIER_CUDA_ATTENTION", fused);
            median_ms(dev, || {
                blocks::attention(&q, &k, &v, heads, blocks::AttentionMode::new(upcast)).map(drop)
            })
        };
        let (products, fused) = (time("off")?, time("on")?);
        std::env::set_var("ATELIER_CUDA_FLASH", "mma");
        let fused_mma = time("on")?;
        std::env::set_var("ATELIER_CUDA_FLASH", "mma1");
        let fused_mma1 = time("on")?;
        std::env::remove_var("ATELIER_CUDA_FLASH");
        std::env::remove_var("ATELIER_CUDA_ATTENTION");
        row(format!("attention, WMMA: {what}"), products, fused);
        row(format!("attention, mma.sync: {what}"), products, fused_mma);
        row(
            format!("attention, mma.sync 1 tile: {what}"),
            products,
            fused_mma1,
        );
    }
    Ok(())
}

fn convolutions(dev: &Device) -> Result<()> {
    // (what, batch, in, out, size, stride)
    for (what, b, c, co, size, stride) in [
        ("UNet SD 1.5 512 level 0", 2, 320, 320, 64, 1),
        ("UNet SD 1.5 512 level 2", 2, 1280, 1280, 16, 1),
        ("UNet SDXL 1024 level 0", 2, 320, 320, 128, 1),
        ("UNet downsampling, stride 2", 2, 320, 320, 64, 2),
        ("VAE 512, 512 channels at 64 px", 1, 512, 512, 64, 1),
        ("VAE 512, 256 channels at 256 px", 1, 256, 256, 256, 1),
        ("VAE 512, 128 channels at 512 px", 1, 128, 128, 512, 1),
    ] {
        let x = Tensor::randn(0f32, 1., (b, c, size, size), dev)?.to_dtype(DTYPE)?;
        let w = Tensor::randn(0f32, 0.02, (co, c, 3, 3), dev)?.to_dtype(DTYPE)?;
        let bias = Tensor::randn(0f32, 0.02, co, dev)?.to_dtype(DTYPE)?;
        let candle = median_ms(dev, || {
            x.conv2d(&w, 1, stride, 1, 1)?
                .broadcast_add(&bias.reshape((1, co, 1, 1))?)
                .map(drop)
        })?;
        let im2col = median_ms(dev, || cuda::conv2d(&x, &w, &bias, stride, 1).map(drop))?;
        row(format!("3x3 conv, im2col: {what}"), candle, im2col);
        if cfg!(feature = "cudnn") {
            let cudnn = median_ms(dev, || {
                cuda::cudnn_conv2d(&x, &w, &bias, stride, 1).map(drop)
            })?;
            row(format!("3x3 conv, cuDNN: {what}"), candle, cudnn);
        }
    }
    Ok(())
}

fn group_norms(dev: &Device) -> Result<()> {
    for (what, b, c, size) in [
        ("UNet SD 1.5 512 level 0", 2, 320, 64),
        ("VAE 512, 128 channels at 512 px", 1, 128, 512),
    ] {
        let x = Tensor::randn(0f32, 1., (b, c, size, size), dev)?.to_dtype(DTYPE)?;
        let weight = Tensor::ones(c, DTYPE, dev)?;
        let bias = Tensor::zeros(c, DTYPE, dev)?;
        let reference = candle_nn::GroupNorm::new(weight.clone(), bias.clone(), c, 32, 1e-5)?;
        let candle = median_ms(dev, || reference.forward(&x)?.silu().map(drop))?;
        let atelier = median_ms(dev, || {
            cuda::group_norm(&x, 32, &weight, &bias, 1e-5, true).map(drop)
        })?;
        row(format!("group norm + SiLU: {what}"), candle, atelier);
    }
    Ok(())
}
