//! atelier's CPU kernels against candle's ops on the shapes of SD 1.5's
//! UNet (batch 2, as with classifier-free guidance) and VAE at 256 px (and
//! the UNet's first attention at 512 px), same process, same inputs, median
//! of 5 after a warm-up: the 3x3 convolutions
//! (candle's `conv2d` vs atelier's im2col, Winograd F(4x4) and F(2x2)) and attention
//! (candle's matmul + softmax + matmul with the heads split out, as the
//! generic path runs it, vs the fused kernel, in f32 and with bf16
//! products), the linear layers (candle's, weight `[out, in]`; the
//! gemm crate's, weight `[in, out]`; atelier's AVX-512 products, weight in
//! panels; bf16), and the transformer blocks' layer norm. On AVX-512,
//! im2col's and the fused f32 attention's products are atelier's own
//! (`cpu::f32_products`);
//! `ATELIER_CPU_PRODUCTS=gemm` puts them back on the gemm crate.
//!
//!     cargo bench --bench cpu_kernels [-- convolution|attention|linear|pointwise|norm|peak]
//!
//! A convolution shape as `batch,in,out,size[,stride]` runs that row only,
//! median of `REPEATS` (default 5): the spread of this machine hides a 5%
//! change at 5, and a row takes seconds at 101 (`REPEATS=101 cargo bench
//! --bench cpu_kernels -- 2,640,640,16`).
//!
//! The process keeps freed memory, as `atelier` does
//! (`cpu::keep_freed_memory`).
//!
//! `peak` measures this machine's ceilings on all threads: f32 FMA and
//! bf16 dot-product rates (independent register chains, no memory) and
//! the rate of reading a 1 GiB array, against which the tables' GFLOP/s
//! read as a fraction of what the cores can do.
//!
//! GFLOP/s counts a direct convolution's work (2·K·C·9 per output pixel)
//! for every column, so Winograd's column shows its effective rate.

use std::time::Instant;

use atelier::engine::blocks;
use atelier::engine::cpu::attention::{self, AttentionShape};
use atelier::engine::cpu::conv::{self as cpu_conv, Algorithm, ConvShape};
use atelier::engine::cpu::{bf16, f32_products, ops};
use candle_core::{Device, Module, Tensor};

/// The median of `REPEATS` timed runs (5 unless set) after a warm-up.
fn median_ms(mut f: impl FnMut()) -> f64 {
    static REPEATS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let repeats = *REPEATS.get_or_init(|| {
        std::env::var("REPEATS").map_or(5, |r| r.parse().expect("REPEATS is a count"))
    });
    f();
    let mut times: Vec<f64> = (0..repeats.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// The UNet's and VAE's 3x3 convolutions: (batch, in, out, size, stride).
const CONVOLUTIONS: [ConvRow; 12] = [
    (2, 320, 320, 32, 1),
    (2, 960, 320, 32, 1),
    (2, 640, 640, 16, 1),
    (2, 1920, 640, 16, 1),
    (2, 1280, 1280, 8, 1),
    (2, 2560, 1280, 8, 1),
    (2, 1280, 1280, 4, 1),
    (1, 640, 640, 16, 1),
    (1, 1280, 1280, 8, 1),
    (2, 320, 320, 32, 2),
    (1, 128, 128, 256, 1),
    (1, 512, 512, 64, 1),
];
type ConvRow = (usize, usize, usize, usize, usize);

/// `batch,in,out,size[,stride]` as a row of the convolution table.
fn parse_convolution(arg: &str) -> Option<ConvRow> {
    let n: Vec<usize> = arg
        .split(',')
        .map(|n| n.parse().ok())
        .collect::<Option<_>>()?;
    match n[..] {
        [b, c, k, size] => Some((b, c, k, size, 1)),
        [b, c, k, size, stride] => Some((b, c, k, size, stride)),
        _ => None,
    }
}

fn main() -> candle_core::Result<()> {
    // As the atelier binary runs them.
    atelier::engine::cpu::keep_freed_memory();
    // `cargo bench --bench cpu_kernels -- attention` runs that table only.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let shapes: Vec<ConvRow> = only.iter().filter_map(|a| parse_convolution(a)).collect();
    if !shapes.is_empty() {
        return convolutions(&shapes);
    }
    type Table = fn() -> candle_core::Result<()>;
    let tables: [(&str, Table); 6] = [
        ("convolution", || convolutions(&CONVOLUTIONS)),
        ("attention", attentions),
        ("linear", linears),
        ("pointwise", pointwise),
        ("norm", layer_norms),
        ("peak", peaks),
    ];
    for (name, table) in tables {
        if only.is_empty() || only.iter().any(|o| name.starts_with(o.as_str())) {
            table()?;
        }
    }
    Ok(())
}

fn linears() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    println!(
        "\n{:<44} {:>16} {:>16} {:>16} {:>16}",
        "linear (tokens, in -> out)", "candle ms", "gemm crate ms", "panels ms", "bf16 ms"
    );
    for (rows, inputs, outputs) in [
        (2048, 320, 2560),
        (2048, 1280, 320),
        (2048, 320, 320),
        (512, 640, 5120),
        (512, 2560, 640),
        (128, 1280, 10240),
        (128, 5120, 1280),
        (128, 1280, 1280),
    ] {
        let x = Tensor::randn(0f32, 1., (rows, inputs), &dev)?;
        let w = Tensor::randn(0f32, 0.05, (outputs, inputs), &dev)?;
        let b = Tensor::randn(0f32, 1., outputs, &dev)?;
        let candle_linear = candle_nn::Linear::new(w.clone(), Some(b.clone()));
        // The weight [in, out] for the gemm crate, and in panels for
        // atelier's AVX-512 products where the CPU has them.
        let gemm_linear = blocks::Linear::Cpu {
            weight: ops::LinearWeight::F32(w.t()?.contiguous()?),
            bias: Some(b.clone()),
        };
        let cpu_linear = blocks::Linear::new(w.clone(), Some(b))?;
        let flop = 2.0 * (rows * inputs * outputs) as f64 / 1e6;
        let rate = |ms: f64| format!("{ms:8.1} ({:4.0}/s)", flop / ms);
        let candle = median_ms(|| {
            candle_linear.forward(&x).expect("candle linear");
        });
        let gemm = median_ms(|| {
            gemm_linear.forward(&x).expect("gemm linear");
        });
        let panels = if f32_products::available() {
            rate(median_ms(|| {
                cpu_linear.forward(&x).expect("panels linear");
            }))
        } else {
            "no AVX-512".into()
        };
        let bf16 = if bf16::available() {
            let xv = x.flatten_all()?.to_vec1::<f32>()?;
            let wv = w.flatten_all()?.to_vec1::<f32>()?;
            let packed = bf16::PackedRhs::from_transposed(&wv, inputs, outputs);
            // Made once: zeroing it at every call took up to a tenth of
            // the product's time, where the model's outputs are not zeroed.
            let mut out = vec![0f32; rows * outputs];
            rate(median_ms(|| {
                // SAFETY: available() is true; out is [rows, outputs] and
                // xv [rows, inputs], row-major.
                unsafe {
                    bf16::product(
                        rows,
                        (out.as_mut_ptr(), outputs, 1),
                        (xv.as_ptr(), inputs, 1),
                        &packed,
                        f32_products::Addends::default(),
                    );
                }
            }))
        } else {
            "no AVX512-BF16".into()
        };
        println!(
            "{:<44} {:>16} {:>16} {:>16} {:>16}",
            format!("{rows}, {inputs} -> {outputs}"),
            rate(candle),
            rate(gemm),
            panels,
            bf16,
        );
    }
    Ok(())
}

/// Layer norm over `[2, tokens, dim]`: candle's (`candle_nn::ops::layer_norm`,
/// which `candle_nn::LayerNorm` runs) against atelier's.
fn layer_norms() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    println!(
        "\n{:<44} {:>16} {:>16}",
        "layer norm (batch 2, tokens x dim)", "candle ms", "atelier ms"
    );
    for (tokens, dim) in [(1024, 320), (256, 640), (64, 1280), (4096, 320)] {
        let x = Tensor::randn(0f32, 1., (2, tokens, dim), &dev)?;
        let w = Tensor::randn(0f32, 1., dim, &dev)?;
        let b = Tensor::randn(0f32, 1., dim, &dev)?;
        let candle = median_ms(|| {
            candle_nn::ops::layer_norm(&x, &w, &b, 1e-5).expect("candle's layer norm");
        });
        let atelier = median_ms(|| {
            ops::layer_norm(&x, &w, &b, 1e-5).expect("atelier's layer norm");
        });
        println!(
            "{:<44} {:>16.3} {:>16.3}",
            format!("{tokens} x {dim}"),
            candle,
            atelier
        );
    }
    Ok(())
}

/// 1x1 convolutions on NCHW maps (the resnets' shortcuts, SD 1.x's
/// transformer projections in and out), batch 2, as the blocks run them:
/// f32 panels and bf16, weight prepared once.
fn pointwise() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    println!(
        "\n{:<44} {:>16} {:>16}",
        "1x1 on a map (pixels, in -> out)", "panels ms", "bf16 ms"
    );
    for (pixels, inputs, outputs) in [
        (1024, 640, 320),
        (1024, 320, 320),
        (256, 960, 640),
        (256, 640, 640),
        (64, 1920, 1280),
        (4096, 256, 128),
    ] {
        let side = (pixels as f64).sqrt() as usize;
        let x = Tensor::randn(0f32, 1., (2, inputs, side, side), &dev)?;
        let w = Tensor::randn(0f32, 0.05, (outputs, inputs), &dev)?;
        let b = Tensor::randn(0f32, 1., outputs, &dev)?;
        let flop = 2.0 * (2 * pixels * inputs * outputs) as f64 / 1e6;
        let rate = |ms: f64| format!("{ms:8.2} ({:4.0}/s)", flop / ms);
        let time = |bf16: bool| -> candle_core::Result<String> {
            let linear = blocks::Linear::Cpu {
                weight: ops::LinearWeight::new(&w, bf16)?,
                bias: Some(b.clone()),
            };
            Ok(rate(median_ms(|| {
                linear.forward_on_map(&x, None).expect("1x1 on a map");
            })))
        };
        let panels = if f32_products::available() {
            time(false)?
        } else {
            "no AVX-512".into()
        };
        let bf16 = if bf16::available() {
            time(true)?
        } else {
            "no AVX512-BF16".into()
        };
        println!(
            "{:<44} {:>16} {:>16}",
            format!("{side}x{side}, {inputs} -> {outputs}"),
            panels,
            bf16
        );
    }
    Ok(())
}

fn attentions() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    println!(
        "\n{:<44} {:>16} {:>16} {:>16}",
        "attention (batch, queries x keys, heads x dim)", "candle ms", "fused ms", "bf16 ms"
    );
    for (batch, queries, keys, heads, head_dim) in [
        // The UNet's first level at 512 px, then its levels at 256 px.
        (2, 4096, 4096, 8, 40),
        (2, 1024, 1024, 8, 40),
        (2, 256, 256, 8, 80),
        (2, 64, 64, 8, 160),
        (2, 1024, 77, 8, 40),
        (1, 1024, 1024, 1, 512),
        // SDXL's at 256 px: its levels of 640 and 1280 channels, heads of 64.
        (2, 256, 256, 10, 64),
        (2, 64, 64, 20, 64),
        (2, 64, 77, 20, 64),
    ] {
        let dim = heads * head_dim;
        let q = Tensor::randn(0f32, 1., (batch, queries, dim), &dev)?;
        let k = Tensor::randn(0f32, 1., (batch, keys, dim), &dev)?;
        let v = Tensor::randn(0f32, 1., (batch, keys, dim), &dev)?;
        let (qv, kv, vv) = (
            q.flatten_all()?.to_vec1::<f32>()?,
            k.flatten_all()?.to_vec1::<f32>()?,
            v.flatten_all()?.to_vec1::<f32>()?,
        );
        let flop = 4.0 * (batch * heads * queries * keys * head_dim) as f64 / 1e6;
        let rate = |ms: f64| format!("{ms:8.1} ({:4.0}/s)", flop / ms);
        // What `blocks::attention` runs off the CPU, here on the CPU.
        let candle = median_ms(|| {
            let split = |x: &Tensor| {
                let m = x.dim(1)?;
                x.reshape((batch, m, heads, head_dim))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let run = || -> candle_core::Result<Tensor> {
                let scale = (head_dim as f64).powf(-0.5);
                let scores = (split(&q)? * scale)?.matmul(&split(&k)?.t()?)?;
                let probs = candle_nn::ops::softmax_last_dim(&scores)?;
                probs
                    .matmul(&split(&v)?)?
                    .transpose(1, 2)?
                    .reshape((batch, queries, dim))
            };
            run().expect("candle attention");
        });
        let shape = AttentionShape {
            batch,
            queries,
            keys,
            heads,
            head_dim,
        };
        let scale = (head_dim as f32).powf(-0.5);
        let fused = median_ms(|| {
            attention::attention(&shape, &qv, &kv, &vv, scale);
        });
        let fused_bf16 = if bf16::available() {
            rate(median_ms(|| {
                attention::attention_bf16(&shape, &qv, &kv, &vv, scale);
            }))
        } else {
            "no AVX512-BF16".into()
        };
        println!(
            "{:<44} {:>16} {:>16} {:>16}",
            format!("{batch}, {queries} x {keys}, {heads} x {head_dim}"),
            rate(candle),
            rate(fused),
            fused_bf16,
        );
    }
    Ok(())
}

fn convolutions(rows: &[ConvRow]) -> candle_core::Result<()> {
    let dev = Device::Cpu;
    println!(
        "{:<34} {:>16} {:>16} {:>16} {:>16} {:>16} {:>16} {:>16}",
        "shape (batch, C->K, map)",
        "candle ms",
        "im2col ms",
        "F(4x4) ms",
        "F(2x2) ms",
        "bf16 im2col ms",
        "bf16 F(2x2) ms",
        "bf16 direct ms"
    );
    for &(batch, c, k, size, stride) in rows {
        let shape = ConvShape {
            batch,
            in_channels: c,
            height: size,
            width: size,
            out_channels: k,
            kernel: 3,
            stride,
            padding: 1,
        };
        let xs = Tensor::randn(0f32, 1., (batch, c, size, size), &dev)?;
        let w = Tensor::randn(0f32, 0.05, (k, c, 3, 3), &dev)?;
        let b = Tensor::randn(0f32, 1., k, &dev)?;
        let (xv, wv, bv) = (
            xs.flatten_all()?.to_vec1::<f32>()?,
            w.flatten_all()?.to_vec1::<f32>()?,
            b.to_vec1::<f32>()?,
        );
        let flop = 2.0 * (batch * k * c * 9 * shape.out_height() * shape.out_width()) as f64 / 1e6;
        let rate = |ms: f64| format!("{ms:8.1} ({:4.0}/s)", flop / ms);
        let candle = median_ms(|| {
            xs.conv2d(&w, 1, stride, 1, 1)
                .and_then(|o| o.broadcast_add(&b.reshape((1, k, 1, 1))?))
                .expect("candle conv2d");
        });
        let im2col = median_ms(|| {
            cpu_conv::conv2d_with(Algorithm::Im2col, &shape, &xv, &wv, &bv);
        });
        let winograd = |algorithm| {
            let ms = (stride == 1).then(|| {
                median_ms(|| {
                    cpu_conv::conv2d_with(algorithm, &shape, &xv, &wv, &bv);
                })
            });
            ms.map(rate).unwrap_or_else(|| "-".into())
        };
        let in_bf16 = |algorithm| {
            if !bf16::available() {
                return "no AVX512-BF16".into();
            }
            if algorithm != Algorithm::Im2col && stride != 1 {
                return "-".into();
            }
            if algorithm == Algorithm::Direct && !cpu_conv::direct_fits(c, 3, stride, 1) {
                return "no AMX".into();
            }
            let kernel = cpu_conv::Bf16Kernel::for_algorithm(algorithm, &wv, [k, c, 3]);
            rate(median_ms(|| {
                cpu_conv::conv2d_bf16(&shape, &xv, &kernel, &bv);
            }))
        };
        println!(
            "{:<34} {:>16} {:>16} {:>16} {:>16} {:>16} {:>16} {:>16}  f32 uses {:?}",
            format!("{batch}, {c}->{k}, {size}x{size} /{stride}"),
            rate(candle),
            rate(im2col),
            winograd(Algorithm::WinogradF4),
            winograd(Algorithm::WinogradF2),
            in_bf16(Algorithm::Im2col),
            in_bf16(Algorithm::WinogradF2),
            in_bf16(Algorithm::Direct),
            cpu_conv::algorithm(&shape),
        );
    }
    Ok(())
}

/// The compute and memory ceilings of this machine on every thread.
fn peaks() -> candle_core::Result<()> {
    let threads = rayon::current_num_threads();
    #[cfg(target_arch = "x86_64")]
    {
        if f32_products::available() {
            // SAFETY: the CPU has AVX-512F (checked above).
            let rate = chains_rate(32.0, |n| unsafe { fma_chains(n) });
            println!("f32 FMA, {threads} threads: {rate}");
        }
        if bf16::available() {
            // SAFETY: the CPU has AVX512-BF16 (checked above).
            let rate = chains_rate(64.0, |n| unsafe { dot_chains(n) });
            println!("bf16 dot, {threads} threads: {rate}");
        }
    }
    let data = vec![1f32; 1 << 28];
    let ms = median_ms(|| {
        use rayon::prelude::*;
        let sum: f32 = data
            .par_chunks(1 << 16)
            .map(|c| {
                c.chunks_exact(16)
                    .fold([0f32; 16], |mut a, x| {
                        for (a, x) in a.iter_mut().zip(x) {
                            *a += x;
                        }
                        a
                    })
                    .iter()
                    .sum::<f32>()
            })
            .sum();
        std::hint::black_box(sum);
    });
    println!(
        "memory read, {threads} threads: {:.1} GB/s",
        4.0 * data.len() as f64 / ms / 1e6
    );
    Ok(())
}

/// The rate of `kernel` (12 chains of `flop_per_instruction` each per
/// round) run on every thread at once.
#[cfg(target_arch = "x86_64")]
fn chains_rate(flop_per_instruction: f64, kernel: fn(usize) -> f32) -> String {
    const ROUNDS: usize = 1 << 24;
    let ms = median_ms(|| {
        let sums: Vec<f32> = rayon::broadcast(|_| kernel(ROUNDS));
        std::hint::black_box(sums);
    });
    let flop = flop_per_instruction * (12 * ROUNDS * rayon::current_num_threads()) as f64;
    format!("{:.0} GFLOP/s", flop / ms / 1e6)
}

/// `rounds` x 12 independent 16-lane FMAs (enough chains to hide their latency).
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_chains(rounds: usize) -> f32 {
    use std::arch::x86_64::*;
    let (b, c) = (_mm512_set1_ps(1.0 - 1e-7), _mm512_set1_ps(1e-7));
    let mut acc: [__m512; 12] = std::array::from_fn(|i| _mm512_set1_ps(i as f32));
    for _ in 0..rounds {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(*a, b, c);
        }
    }
    acc.iter().map(|a| _mm512_reduce_add_ps(*a)).sum()
}

/// `rounds` x 12 independent bf16 dot products of 32 pairs.
///
/// # Safety
/// The CPU has AVX512-BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn dot_chains(rounds: usize) -> f32 {
    use std::arch::x86_64::*;
    // 1.0 and 2^-25 in bf16, as integers.
    let (b, c) = (
        std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi16(0x3f80)),
        std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi16(0x3300)),
    );
    let mut acc: [__m512; 12] = std::array::from_fn(|i| _mm512_set1_ps(i as f32));
    for _ in 0..rounds {
        for a in acc.iter_mut() {
            *a = _mm512_dpbf16_ps(*a, b, c);
        }
    }
    acc.iter().map(|a| _mm512_reduce_add_ps(*a)).sum()
}
