//! Layers the UNet and the VAE share: the linear layer, group norm, the
//! residual block, the 1x1 convolution as a matrix product, and multi-head
//! attention.

use std::cell::Cell;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::conv::Conv2d;
use super::cpu::ops;
use super::cuda;
use super::profile::{self, section};

/// Nearest-neighbour upsampling of `[batch, channels, h, w]` to `height x
/// width`: the CPU kernel for f32 at exactly twice the size, candle's
/// otherwise.
pub fn upsample_nearest(xs: &Tensor, height: usize, width: usize) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    if ops::applies(xs) && (height, width) == (2 * h, 2 * w) {
        ops::upsample2x(xs)
    } else {
        xs.upsample_nearest2d(height, width)
    }
}

/// A linear layer. f32 on the CPU keeps its weight transposed (`[in,
/// out]`, see `cpu::linear` for why), or rounded to bf16 and packed inside
/// [`with_bf16_products`], and runs the CPU kernel; elsewhere it is
/// candle's layer, with the leading dimensions of the input folded into
/// one first: one `[batch * tokens, in] x [in, out]` product instead of one
/// per batch entry.
pub enum Linear {
    Candle(candle_nn::Linear),
    Cpu {
        weight: ops::LinearWeight,
        bias: Option<Tensor>,
    },
}

thread_local! {
    static BF16_PRODUCTS: Cell<bool> = const { Cell::new(false) };
}

/// Runs `build` with the CPU layers it makes (linear layers and
/// convolutions) taking bf16 weights when `on`: products in bf16 with f32
/// sums (AVX512-BF16), everything else f32. That is what `--dtype bf16`
/// means on the CPU, where candle has no bf16 kernels of its own.
pub fn with_bf16_products<R>(on: bool, build: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            BF16_PRODUCTS.with(|flag| flag.set(self.0));
        }
    }
    let _restore = Restore(BF16_PRODUCTS.with(|flag| flag.replace(on)));
    build()
}

/// Whether layers made now take bf16 weights (inside [`with_bf16_products`]).
pub fn bf16_products() -> bool {
    BF16_PRODUCTS.with(Cell::get)
}

impl Linear {
    /// `weight` `[out, in]`, `bias` `[out]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        if ops::applies(&weight) {
            let weight = ops::LinearWeight::new(&weight, bf16_products())?;
            Ok(Self::Cpu { weight, bias })
        } else {
            Ok(Self::Candle(candle_nn::Linear::new(weight, bias)))
        }
    }

    /// Counts the layer's arithmetic on `xs` (tokens or a map, `in`
    /// values per row) for the profile.
    fn count_flops(&self, xs: &Tensor) -> Result<()> {
        if profile::enabled() {
            // Each of the rows' inputs meets each column of sums once.
            let columns = match self {
                Self::Cpu { weight, .. } => weight.product_columns()?,
                Self::Candle(linear) => linear.weight().dim(0)?,
            };
            profile::count_flops(2 * xs.elem_count() * columns);
        }
        Ok(())
    }

    /// [`Module::forward`] without [`count_flops`](Self::count_flops), for
    /// the other forms, which count their own.
    fn forward_uncounted(&self, xs: &Tensor) -> Result<Tensor> {
        let linear = match self {
            Self::Cpu { weight, bias } => return ops::linear(xs, weight, bias.as_ref(), None),
            Self::Candle(linear) => linear,
        };
        let dims = xs.dims();
        if dims.len() <= 2 {
            return linear.forward(xs);
        }
        let (lead, last) = dims.split_at(dims.len() - 1);
        let rows: usize = lead.iter().product();
        let out = linear.forward(&xs.reshape((rows, last[0]))?)?;
        let mut shape = lead.to_vec();
        shape.push(out.dim(1)?);
        out.reshape(shape)
    }

    /// `forward(xs) + residual`, the sum made by the product on the CPU.
    pub fn forward_add(&self, xs: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.count_flops(xs)?;
        match self {
            Self::Cpu { weight, bias } => ops::linear(xs, weight, bias.as_ref(), Some(residual)),
            Self::Candle(_) => self.forward_uncounted(xs)? + residual,
        }
    }

    /// The layer at every pixel of `map` `[batch, in, h, w]`: `[batch, out,
    /// h, w]`, plus `residual` if given (a map of that shape).
    pub fn forward_on_map(&self, map: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        self.count_flops(map)?;
        match self {
            Self::Cpu { weight, bias } => ops::linear_on_map(map, weight, bias.as_ref(), residual),
            Self::Candle(linear) => {
                let (b, c, h, w) = map.dims4()?;
                let flat = map.reshape((b, c, h * w))?;
                let mut out = linear.weight().broadcast_left(b)?.matmul(&flat)?;
                if let Some(bias) = linear.bias() {
                    out = out.broadcast_add(&bias.reshape((1, (), 1))?)?;
                }
                let out = out.reshape((b, (), h, w))?;
                match residual {
                    Some(residual) => out + residual,
                    None => Ok(out),
                }
            }
        }
    }

    /// The pixels of `map` `[batch, in, h, w]` as tokens: `[batch, h·w,
    /// out]` (read in place on the CPU, permuted elsewhere).
    pub fn forward_from_map(&self, map: &Tensor) -> Result<Tensor> {
        self.count_flops(map)?;
        match self {
            Self::Cpu { weight, bias } => ops::linear_from_map(map, weight, bias.as_ref()),
            Self::Candle(_) => {
                let (b, c, h, w) = map.dims4()?;
                self.forward_uncounted(&map.permute((0, 2, 3, 1))?.reshape((b, h * w, c))?)
            }
        }
    }

    /// Tokens `[batch, h·w, in]` back to a map `[batch, out, h, w]` plus
    /// `residual`, a map of that shape (written in place on the CPU,
    /// permuted elsewhere).
    pub fn forward_to_map_add(&self, xs: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.count_flops(xs)?;
        match self {
            Self::Cpu { weight, bias } => ops::linear_to_map(xs, weight, bias.as_ref(), residual),
            Self::Candle(_) => {
                let (b, c, h, w) = residual.dims4()?;
                self.forward_uncounted(xs)?
                    .reshape((b, h, w, c))?
                    .permute((0, 3, 1, 2))?
                    + residual
            }
        }
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.count_flops(xs)?;
        self.forward_uncounted(xs)
    }
}

/// `weight` `[out, in]` and `bias` `[out]` from `vb`.
pub fn linear(cin: usize, cout: usize, vb: VarBuilder) -> Result<Linear> {
    let l = candle_nn::linear(cin, cout, vb)?;
    Linear::new(l.weight().clone(), l.bias().cloned())
}

/// `weight` [out, in] from `vb`, no bias.
pub fn linear_no_bias(cin: usize, cout: usize, vb: VarBuilder) -> Result<Linear> {
    let l = candle_nn::linear_no_bias(cin, cout, vb)?;
    Linear::new(l.weight().clone(), None)
}

/// Group norm that runs a fused kernel, atelier's own, for f32 on the CPU
/// and on CUDA (candle's elsewhere), with SiLU folded in where a block asks
/// for it.
pub struct GroupNorm {
    inner: candle_nn::GroupNorm,
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

/// `weight` and `bias` `[channels]` from `vb`, as `candle_nn::group_norm`.
pub fn group_norm(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<GroupNorm> {
    let weight = vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.))?;
    let bias = vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.))?;
    Ok(GroupNorm {
        inner: candle_nn::GroupNorm::new(weight.clone(), bias.clone(), channels, groups, eps)?,
        weight,
        bias,
        groups,
        eps,
    })
}

impl GroupNorm {
    /// `silu(group_norm(xs))`.
    pub fn forward_silu(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_fused(xs, true)
    }

    fn forward_fused(&self, xs: &Tensor, silu: bool) -> Result<Tensor> {
        let (groups, weight, bias, eps) = (self.groups, &self.weight, &self.bias, self.eps);
        if ops::applies(xs) {
            ops::group_norm(xs, groups, weight, bias, eps, silu)
        } else if cuda::applies(xs) {
            cuda::group_norm(xs, groups, weight, bias, eps, silu)
        } else if silu {
            self.inner.forward(xs)?.silu()
        } else {
            self.inner.forward(xs)
        }
    }
}

impl Module for GroupNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_fused(xs, false)
    }
}

/// Layer norm over the last dimension: atelier's kernel for f32 on the
/// CPU, candle's elsewhere.
pub struct LayerNorm {
    inner: candle_nn::LayerNorm,
    eps: f64,
}

/// `weight` and `bias` `[dim]` from `vb`, as `candle_nn::layer_norm`.
pub fn layer_norm(dim: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    Ok(LayerNorm {
        inner: candle_nn::layer_norm(dim, eps, vb)?,
        eps,
    })
}

impl Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self.inner.bias() {
            Some(bias) if ops::applies(xs) => {
                ops::layer_norm(xs, self.inner.weight(), bias, self.eps)
            }
            _ => self.inner.forward(xs),
        }
    }
}

/// A 1x1 convolution: the linear layer applied at every pixel, as one
/// matrix product per image (no im2col copy, no layout transposes, no
/// cuDNN call).
pub struct Conv1x1(Linear);

impl Conv1x1 {
    pub fn new(vb: VarBuilder, cin: usize, cout: usize) -> Result<Self> {
        let conv = candle_nn::conv2d(cin, cout, 1, Default::default(), vb)?;
        let weight = conv.weight().reshape((cout, cin))?;
        let bias = conv.bias().expect("candle_nn::conv2d reads a bias");
        Ok(Self(Linear::new(weight, Some(bias.clone()))?))
    }

    /// The same product as a linear layer over `[.., cin]` tokens.
    pub fn into_linear(self) -> Linear {
        self.0
    }

    /// `forward(xs) + residual`, the sum made by the product on the CPU.
    pub fn forward_add(&self, xs: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.0.forward_on_map(xs, Some(residual))
    }
}

impl Module for Conv1x1 {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.0.forward_on_map(xs, None)
    }
}

/// diffusers' `ResnetBlock2D`: two (group norm, SiLU, 3x3 convolution)
/// with the timestep added in between when there is one (the UNet's, not
/// the VAE's), a 1x1 shortcut when the width changes.
pub struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv1x1>,
    output_scale: f64,
}

impl ResnetBlock {
    pub fn new(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        temb: Option<usize>,
        groups: usize,
        eps: f64,
        output_scale: f64,
    ) -> Result<Self> {
        Ok(Self {
            norm1: group_norm(groups, cin, eps, vb.pp("norm1"))?,
            conv1: Conv2d::new(vb.pp("conv1"), cin, cout, 3, 1, 1)?,
            time_emb_proj: temb
                .map(|t| linear(t, cout, vb.pp("time_emb_proj")))
                .transpose()?,
            norm2: group_norm(groups, cout, eps, vb.pp("norm2"))?,
            conv2: Conv2d::new(vb.pp("conv2"), cout, cout, 3, 1, 1)?,
            shortcut: (cin != cout)
                .then(|| Conv1x1::new(vb.pp("conv_shortcut"), cin, cout))
                .transpose()?,
            output_scale,
        })
    }

    pub fn forward(&self, xs: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let dev = xs.device();
        let h = section("group norm + silu", dev, || self.norm1.forward_silu(xs))?;
        let h = section("conv 3x3", dev, || self.conv1.forward(&h))?;
        let h = match (&self.time_emb_proj, temb) {
            (Some(proj), Some(temb)) => section("resnet time + add", dev, || {
                let t = proj.forward(&temb.silu()?)?.unsqueeze(2)?.unsqueeze(3)?;
                add_to_fresh(h, &t)
            })?,
            _ => h,
        };
        let h = section("group norm + silu", dev, || self.norm2.forward_silu(&h))?;
        let h = section("conv 3x3", dev, || self.conv2.forward(&h))?;
        let out = match &self.shortcut {
            Some(c) => section("conv 1x1 shortcut", dev, || c.forward_add(xs, &h))?,
            None => section("resnet time + add", dev, || add_to_fresh(h, xs))?,
        };
        if self.output_scale == 1.0 {
            Ok(out)
        } else {
            out / self.output_scale
        }
    }
}

/// `fresh + other`, `other` of `fresh`'s shape or broadcast over its planes
/// (`[batch, channels, 1, 1]`). f32 on the CPU sums into `fresh` in place:
/// it must be a layer's fresh output, which nothing else holds.
fn add_to_fresh(fresh: Tensor, other: &Tensor) -> Result<Tensor> {
    if ops::applies(&fresh) {
        ops::add_assign(&fresh, other)?;
        Ok(fresh)
    } else {
        fresh.broadcast_add(other)
    }
}

/// How an attention layer computes, fixed when it is made.
#[derive(Clone, Copy, Debug)]
pub struct AttentionMode {
    /// SD 2.x's `upcast_attention`: f16 scores computed in f32.
    pub upcast: bool,
    /// The CPU kernel's two products in bf16 (see [`with_bf16_products`]).
    pub bf16_products: bool,
}

impl AttentionMode {
    /// For a layer made now: bf16 products inside [`with_bf16_products`].
    pub fn new(upcast: bool) -> Self {
        Self {
            upcast,
            bf16_products: bf16_products(),
        }
    }
}

/// `softmax(q kᵀ / √head_dim) v` per head for q `[batch, n, heads·head_dim]`
/// and k, v `[batch, m, heads·head_dim]`, in q's layout. f32 on the CPU
/// runs the fused kernel (with bf16 products if `mode` says so), and so do f16 and bf16 on CUDA where that measured
/// faster (`cuda::prefer_fused_attention`; its scores are f32, as `upcast`
/// asks). Elsewhere the scale is folded into q before the product, as fused
/// attention does, so that half-precision scores stay far from f16's range
/// limit, `upcast` (SD 2.x's `upcast_attention`) computes f16 scores in
/// f32, and CUDA runs atelier's softmax kernel.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mode: AttentionMode,
) -> Result<Tensor> {
    let upcast = mode.upcast;
    let (b, n, dim) = q.dims3()?;
    let m = k.dim(1)?;
    // q kᵀ and the probabilities times v: n·m·dim multiply-adds each.
    profile::count_flops(4 * b * n * m * dim);
    let head_dim = dim / heads;
    let scale = (head_dim as f64).powf(-0.5);
    if ops::applies(q) {
        return ops::attention(q, k, v, heads, scale as f32, mode.bf16_products);
    }
    if cuda::applies(q) && cuda::prefer_fused_attention(q, k, heads, upcast)? {
        if let Some(out) = cuda::flash_attention(q, k, v, heads, scale as f32)? {
            return Ok(out);
        }
    }
    let split = |x: &Tensor| -> Result<Tensor> {
        let m = x.dim(1)?;
        x.reshape((b, m, heads, head_dim))?
            .transpose(1, 2)?
            .contiguous()
    };
    let (q, k, v) = (split(q)?, split(k)?, split(v)?);
    let dtype = q.dtype();
    let (q, k) = if upcast && dtype == DType::F16 {
        (q.to_dtype(DType::F32)?, k.to_dtype(DType::F32)?)
    } else {
        (q, k)
    };
    let scores = (q * scale)?.matmul(&k.t()?)?;
    let probs = if cuda::applies(&scores) {
        cuda::softmax_last_dim(&scores)?
    } else {
        candle_nn::ops::softmax_last_dim(&scores)?
    };
    let probs = probs.to_dtype(dtype)?;
    probs.matmul(&v)?.transpose(1, 2)?.reshape((b, n, dim))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::profile::flops_of;
    use candle_core::Device;

    /// Each form of the linear layer counts `2 · rows · in · out` for the
    /// profile, once (the candle forms run the plain one inside), and
    /// attention `4 · batch · n · m · dim` (q kᵀ, then the weights times v).
    #[test]
    fn layers_count_their_arithmetic_for_the_profile() -> Result<()> {
        let dev = Device::Cpu;
        let weight = Tensor::randn(0f32, 1., (6, 4), &dev)?;
        let bias = Tensor::zeros(6, DType::F32, &dev)?;
        let cpu = Linear::new(weight.clone(), Some(bias.clone()))?;
        let candle = Linear::Candle(candle_nn::Linear::new(weight, Some(bias)));
        let tokens = Tensor::randn(0f32, 1., (2, 15, 4), &dev)?;
        let map = Tensor::randn(0f32, 1., (2, 4, 3, 5), &dev)?;
        let out_map = Tensor::zeros((2, 6, 3, 5), DType::F32, &dev)?;
        let out_tokens = Tensor::zeros((2, 15, 6), DType::F32, &dev)?;
        let want = 2 * 30 * 4 * 6;
        for (layer, name) in [(&cpu, "cpu"), (&candle, "candle")] {
            assert_eq!(flops_of(|| layer.forward(&tokens))?, want, "{name}");
            let add = flops_of(|| layer.forward_add(&tokens, &out_tokens))?;
            assert_eq!(add, want, "{name}");
            assert_eq!(
                flops_of(|| layer.forward_on_map(&map, None))?,
                want,
                "{name}"
            );
            assert_eq!(flops_of(|| layer.forward_from_map(&map))?, want, "{name}");
            let to_map = flops_of(|| layer.forward_to_map_add(&tokens, &out_map))?;
            assert_eq!(to_map, want, "{name}");
        }
        // A GEGLU projection that gates in its product counts its gates'
        // columns too: 64 columns of sums for 32 outputs.
        if crate::engine::cpu::bf16::available() {
            let weight = Tensor::randn(0f32, 1., (64, 4), &dev)?;
            let (weight, bias) =
                ops::LinearWeight::gated(&weight, &Tensor::zeros(64, DType::F32, &dev)?, true)?;
            let gated = Linear::Cpu {
                weight,
                bias: Some(bias),
            };
            assert_eq!(flops_of(|| gated.forward(&tokens))?, 2 * 30 * 4 * 64);
        }
        let q = Tensor::randn(0f32, 1., (2, 15, 8), &dev)?;
        let kv = Tensor::randn(0f32, 1., (2, 7, 8), &dev)?;
        let mode = AttentionMode::new(false);
        let counted = flops_of(|| attention(&q, &kv, &kv, 2, mode))?;
        assert_eq!(counted, 4 * 2 * 15 * 7 * 8);
        Ok(())
    }
}
