//! The kernels of this module as candle custom ops on f32 CPU tensors.
//! Callers check the device and dtype first (see [`applies`]) and keep
//! candle's own ops for everything else.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, InplaceOp2, Layout, Result, Shape,
    Storage, Tensor,
};

use super::add;
use super::attention::{self, AttentionShape};
use super::bf16::{self, PackedRhs};
use super::conv::{self, Bf16Kernel, ConvShape};
use super::f32_products::{self, Panels};
use super::geglu;
use super::group_norm::{self, GroupShape};
use super::layer_norm;
use super::linear::{self, Arrangement, LinearShape};
use super::upsample;

/// Whether the CPU kernels take this tensor: f32 on the CPU.
pub fn applies(xs: &Tensor) -> bool {
    xs.device().is_cpu() && xs.dtype() == DType::F32
}

/// `conv2d(xs, weight) + bias`, square kernel, stride and padding.
pub fn conv2d(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    xs.contiguous()?
        .apply_op3_no_bwd(weight, bias, &Conv { stride, padding })
}

/// [`conv2d`] with the kernel packed for bf16 products.
pub fn conv2d_bf16(
    xs: &Tensor,
    kernel: &Bf16Kernel,
    bias: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    xs.contiguous()?.apply_op2_no_bwd(
        bias,
        &ConvBf16 {
            kernel,
            stride,
            padding,
            upsampled: false,
        },
    )
}

/// [`conv2d_upsampled`] with the kernel packed for bf16 products (see
/// [`conv::conv2d_upsampled_bf16`]): `[batch, C, h, w]` in, `[batch, K,
/// 2h, 2w]` out.
pub fn conv2d_upsampled_bf16(xs: &Tensor, kernel: &Bf16Kernel, bias: &Tensor) -> Result<Tensor> {
    xs.contiguous()?.apply_op2_no_bwd(
        bias,
        &ConvBf16 {
            kernel,
            stride: 1,
            padding: 1,
            upsampled: true,
        },
    )
}

/// Multi-head attention over `[batch, tokens, heads * head_dim]` q, k, v;
/// its products in bf16 (f32 sums) if `bf16_products`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f32,
    bf16_products: bool,
) -> Result<Tensor> {
    q.contiguous()?.apply_op3_no_bwd(
        &k.contiguous()?,
        &v.contiguous()?,
        &Attention {
            heads,
            scale,
            bf16_products,
        },
    )
}

/// A linear layer's weight for the CPU kernels.
pub enum LinearWeight {
    /// W stored as `[in, out]`, f32, for the gemm crate's products.
    F32(Tensor),
    /// W in f32 panels, for atelier's AVX-512 products.
    Panels(Panels),
    /// W rounded to bf16 and packed: bf16 products, f32 sums.
    Bf16(PackedRhs),
}

impl LinearWeight {
    /// From W `[out, in]` (as checkpoints store it) on the CPU in f32;
    /// packed for bf16 products when `bf16`, else in panels where
    /// [`f32_products::enabled`].
    pub fn new(weight: &Tensor, bf16: bool) -> Result<Self> {
        let (outputs, inputs) = weight.dims2()?;
        if bf16 {
            let values = weight.flatten_all()?.to_vec1::<f32>()?;
            return Ok(Self::Bf16(PackedRhs::from_transposed(
                &values, inputs, outputs,
            )));
        }
        if f32_products::enabled() {
            let values = weight.flatten_all()?.to_vec1::<f32>()?;
            return Ok(Self::Panels(Panels::from_transposed(
                &values, inputs, outputs,
            )));
        }
        Ok(Self::F32(weight.t()?.contiguous()?))
    }

    /// Whether [`gated`](Self::gated) can make a weight here: with bf16
    /// products, or f32 ones in panels.
    pub fn can_gate(bf16: bool) -> bool {
        bf16 || f32_products::enabled()
    }

    /// A GEGLU projection's W `[2 x inner, in]` and bias `[2 x inner]`
    /// (outputs `[a | b]`), packed for products that store `a · gelu(b)`,
    /// `inner` outputs: bf16 ones when `bf16`
    /// ([`PackedRhs::gated_from_transposed`]), else f32 panels
    /// ([`Panels::gated_from_transposed`], where
    /// [`can_gate`](Self::can_gate)). The bias comes back in the order the
    /// product adds it. `inner` must be a multiple of 16.
    pub fn gated(weight: &Tensor, bias: &Tensor, bf16: bool) -> Result<(Self, Tensor)> {
        let (columns, inputs) = weight.dims2()?;
        if bias.dims1()? != columns || !columns.is_multiple_of(bf16::RHS_PANEL) {
            candle_core::bail!(
                "a GEGLU projection of weight {:?} and bias {:?}: 2 x a multiple of 16 outputs, one bias each",
                weight.shape(),
                bias.shape()
            );
        }
        let values = weight.flatten_all()?.to_vec1::<f32>()?;
        let packed = match bf16 {
            true => Self::Bf16(PackedRhs::gated_from_transposed(&values, inputs, columns)),
            false => {
                assert!(Self::can_gate(false), "gated f32 panels without AVX-512");
                Self::Panels(Panels::gated_from_transposed(&values, inputs, columns))
            }
        };
        let bias = bias.to_vec1::<f32>()?;
        let bias: Vec<f32> = (0..columns)
            .map(|j| bias[bf16::gated_column(j, columns)])
            .collect();
        Ok((packed, Tensor::new(bias, &Device::Cpu)?))
    }

    /// Columns of sums: a gated weight's include its gates, which its
    /// outputs do not.
    pub fn product_columns(&self) -> Result<usize> {
        match self {
            Self::Bf16(packed) => Ok(packed.n()),
            Self::Panels(panels) => Ok(panels.n()),
            Self::F32(_) => Ok(self.dims()?.1),
        }
    }

    /// (inputs, outputs).
    fn dims(&self) -> Result<(usize, usize)> {
        match self {
            Self::F32(weight_t) => weight_t.dims2(),
            Self::Panels(panels) => Ok((panels.k(), panels.outputs())),
            Self::Bf16(packed) => Ok((packed.k(), packed.outputs())),
        }
    }
}

/// `xs·W + bias (+ residual)` over the last dimension of `xs`.
pub fn linear(
    xs: &Tensor,
    weight: &LinearWeight,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    Linear::new(weight, Arrangement::Tokens, Arrangement::Tokens, residual)?.apply(xs, bias)
}

/// [`linear()`] at every pixel of a map `[batch, in, h, w]`: `[batch, out,
/// h, w]`, plus `residual` (that shape) if given; read and written in place.
pub fn linear_on_map(
    xs: &Tensor,
    weight: &LinearWeight,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let op = Linear::new(
        weight,
        Arrangement::Channels,
        Arrangement::Channels,
        residual,
    )?;
    let (b, c, h, w) = xs.dims4()?;
    op.apply(&xs.reshape((b, c, h * w))?, bias)?
        .reshape((b, (), h, w))
}

/// [`linear()`] from the pixels of a map `[batch, in, h, w]` as tokens to
/// `[batch, h·w, out]`, read in place.
pub fn linear_from_map(
    xs: &Tensor,
    weight: &LinearWeight,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let op = Linear::new(weight, Arrangement::Channels, Arrangement::Tokens, None)?;
    let (b, c, h, w) = xs.dims4()?;
    op.apply(&xs.reshape((b, c, h * w))?, bias)
}

/// [`linear()`] from tokens `[batch, h·w, in]` to the pixels of `residual`'s
/// map `[batch, out, h, w]`, plus `residual`, written in place.
pub fn linear_to_map(
    xs: &Tensor,
    weight: &LinearWeight,
    bias: Option<&Tensor>,
    residual: &Tensor,
) -> Result<Tensor> {
    Linear::new(
        weight,
        Arrangement::Tokens,
        Arrangement::Channels,
        Some(residual),
    )?
    .apply(xs, bias)?
    .reshape(residual.shape())
}

/// GEGLU over the last dimension: `[.., 2n]` to `[.., n]`.
pub fn geglu(h: &Tensor) -> Result<Tensor> {
    h.contiguous()?.apply_op1_no_bwd(&Geglu)
}

/// `dst += src` in place, for `dst` `[batch, channels, ...]` and `src` of
/// the same shape or `[batch, channels, 1, ...]` (one value per image and
/// channel, added over its plane, as candle's `broadcast_add` would). `dst` must be a tensor nothing else holds, such
/// as a layer's fresh output: every view of its storage sees the sum.
pub fn add_assign(dst: &Tensor, src: &Tensor) -> Result<()> {
    dst.inplace_op2(&src.contiguous()?, &AddAssign)
}

/// Group norm (`[batch, channels, ...]`) with its affine transform, then
/// SiLU when `silu`.
pub fn group_norm(
    xs: &Tensor,
    groups: usize,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    xs.contiguous()?.apply_op3_no_bwd(
        weight,
        bias,
        &GroupNorm {
            groups,
            eps: eps as f32,
            silu,
        },
    )
}

/// Layer norm over the last dimension, with its affine transform.
pub fn layer_norm(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    xs.contiguous()?
        .apply_op3_no_bwd(weight, bias, &LayerNorm { eps: eps as f32 })
}

struct LayerNorm {
    eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "atelier-cpu-layer-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dim = x_layout.shape().dims().last().copied().unwrap_or(0);
        let (weight, bias) = (slice(weight, weight_layout)?, slice(bias, bias_layout)?);
        if dim == 0 || weight.len() != dim || bias.len() != dim {
            candle_core::bail!(
                "layer norm: {:?} with {} weights and {} biases",
                x_layout.shape(),
                weight.len(),
                bias.len()
            );
        }
        let out = layer_norm::layer_norm(slice(x, x_layout)?, dim, weight, bias, self.eps);
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }
}

struct GroupNorm {
    groups: usize,
    eps: f32,
    silu: bool,
}

impl CustomOp3 for GroupNorm {
    fn name(&self) -> &'static str {
        "atelier-cpu-group-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = x_layout.shape().dims();
        if dims.len() < 2 || !dims[1].is_multiple_of(self.groups) {
            candle_core::bail!("group norm: {:?} in {} groups", dims, self.groups);
        }
        let shape = GroupShape {
            batch: dims[0],
            channels: dims[1],
            spatial: dims[2..].iter().product(),
            groups: self.groups,
        };
        let out = group_norm::group_norm(
            &shape,
            slice(x, x_layout)?,
            slice(weight, weight_layout)?,
            slice(bias, bias_layout)?,
            self.eps,
            self.silu,
        );
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }
}

struct Conv {
    stride: usize,
    padding: usize,
}

impl CustomOp3 for Conv {
    fn name(&self) -> &'static str {
        "atelier-cpu-conv2d"
    }

    fn cpu_fwd(
        &self,
        input: &CpuStorage,
        input_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (k, c, kh, kw) = weight_layout.shape().dims4()?;
        let shape = conv_shape(input_layout, [k, c, kh, kw], self.stride, self.padding)?;
        let out = conv::conv2d(
            &shape,
            slice(input, input_layout)?,
            slice(weight, weight_layout)?,
            slice(bias, bias_layout)?,
        );
        Ok((CpuStorage::F32(out), output_shape(&shape)))
    }
}

/// `conv(upsample2x(xs), weight) + bias` for a 3x3 kernel at stride 1 and
/// padding 1 (see [`conv::conv2d_upsampled`]): `[batch, C, h, w]` in,
/// `[batch, K, 2h, 2w]` out.
pub fn conv2d_upsampled(xs: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    xs.contiguous()?
        .apply_op3_no_bwd(weight, bias, &UpsampledConv)
}

struct UpsampledConv;

impl CustomOp3 for UpsampledConv {
    fn name(&self) -> &'static str {
        "atelier-cpu-upsampled-conv2d"
    }

    fn cpu_fwd(
        &self,
        input: &CpuStorage,
        input_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (k, c, kh, kw) = weight_layout.shape().dims4()?;
        if (kh, kw) != (3, 3) {
            candle_core::bail!("up-convolution: a {kh}x{kw} kernel, where 3x3 is taken");
        }
        let shape = conv_shape(input_layout, [k, c, kh, kw], 1, 1)?;
        let out = conv::conv2d_upsampled(
            &shape,
            slice(input, input_layout)?,
            slice(weight, weight_layout)?,
            slice(bias, bias_layout)?,
        );
        let dims = (shape.batch, k, 2 * shape.height, 2 * shape.width);
        Ok((CpuStorage::F32(out), dims.into()))
    }
}

struct ConvBf16<'a> {
    kernel: &'a Bf16Kernel,
    stride: usize,
    padding: usize,
    /// Of the input upsampled 2x (nearest), without the upsampled copy
    /// where the kernel was made for it.
    upsampled: bool,
}

impl CustomOp2 for ConvBf16<'_> {
    fn name(&self) -> &'static str {
        "atelier-cpu-conv2d-bf16"
    }

    fn cpu_fwd(
        &self,
        input: &CpuStorage,
        input_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let k = self.kernel;
        let kernel_dims = [k.out_channels, k.in_channels, k.size, k.size];
        let shape = conv_shape(input_layout, kernel_dims, self.stride, self.padding)?;
        let (input, bias) = (slice(input, input_layout)?, slice(bias, bias_layout)?);
        if self.upsampled {
            if k.size != 3 {
                candle_core::bail!(
                    "up-convolution: a {0}x{0} kernel, where 3x3 is taken",
                    k.size
                );
            }
            let out = conv::conv2d_upsampled_bf16(&shape, input, k, bias);
            let dims = (
                shape.batch,
                k.out_channels,
                2 * shape.height,
                2 * shape.width,
            );
            return Ok((CpuStorage::F32(out), dims.into()));
        }
        let out = conv::conv2d_bf16(&shape, input, k, bias);
        Ok((CpuStorage::F32(out), output_shape(&shape)))
    }
}

/// The convolution of an input `[b, c, h, w]` by a kernel `[k, c, kh, kw]`
/// (square), or why they do not make one.
fn conv_shape(
    input: &Layout,
    [out_channels, kernel_in, kh, kw]: [usize; 4],
    stride: usize,
    padding: usize,
) -> Result<ConvShape> {
    let (batch, in_channels, height, width) = input.shape().dims4()?;
    if kernel_in != in_channels || kh != kw {
        candle_core::bail!(
            "conv2d: input {:?} does not fit kernel {:?}",
            input.shape(),
            [out_channels, kernel_in, kh, kw]
        );
    }
    Ok(ConvShape {
        batch,
        in_channels,
        height,
        width,
        out_channels,
        kernel: kh,
        stride,
        padding,
    })
}

/// `[b, k, oh, ow]`.
fn output_shape(s: &ConvShape) -> Shape {
    (s.batch, s.out_channels, s.out_height(), s.out_width()).into()
}

struct Attention {
    heads: usize,
    scale: f32,
    bf16_products: bool,
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "atelier-cpu-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_layout: &Layout,
        k: &CpuStorage,
        k_layout: &Layout,
        v: &CpuStorage,
        v_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (batch, queries, dim) = q_layout.shape().dims3()?;
        let (kb, keys, kdim) = k_layout.shape().dims3()?;
        if kb != batch
            || kdim != dim
            || v_layout.shape() != k_layout.shape()
            || !dim.is_multiple_of(self.heads)
        {
            candle_core::bail!(
                "attention: q {:?}, k {:?} and v {:?} do not fit {} heads",
                q_layout.shape(),
                k_layout.shape(),
                v_layout.shape(),
                self.heads
            );
        }
        let shape = AttentionShape {
            batch,
            queries,
            keys,
            heads: self.heads,
            head_dim: dim / self.heads,
        };
        let kernel = if self.bf16_products {
            attention::attention_bf16
        } else {
            attention::attention
        };
        let out = kernel(
            &shape,
            slice(q, q_layout)?,
            slice(k, k_layout)?,
            slice(v, v_layout)?,
            self.scale,
        );
        Ok((CpuStorage::F32(out), q_layout.shape().clone()))
    }
}

struct Linear<'a> {
    weight: &'a LinearWeight,
    input: Arrangement,
    output: Arrangement,
    /// Added to the output; in the output's arrangement.
    residual: Option<Tensor>,
}

impl<'a> Linear<'a> {
    fn new(
        weight: &'a LinearWeight,
        input: Arrangement,
        output: Arrangement,
        residual: Option<&Tensor>,
    ) -> Result<Self> {
        Ok(Self {
            weight,
            input,
            output,
            residual: residual.map(Tensor::contiguous).transpose()?,
        })
    }

    fn apply(&self, xs: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let xs = xs.contiguous()?;
        match bias {
            Some(bias) => xs.apply_op2_no_bwd(bias, self),
            None => xs.apply_op1_no_bwd(self),
        }
    }

    /// `x` is `[batch, rows, in]` as tokens or `[batch, in, rows]` as a map's
    /// channels; the output `[batch, rows, out]` or `[batch, out, rows]`.
    fn run(
        &self,
        x: (&CpuStorage, &Layout),
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let (inputs, outputs) = self.weight.dims()?;
        let dims = x.1.shape().dims();
        let (batch, rows, x_inputs) = match (self.input, dims) {
            (Arrangement::Tokens, [lead @ .., rows, features]) => {
                (lead.iter().product(), *rows, *features)
            }
            (Arrangement::Channels, [batch, features, rows]) => (*batch, *rows, *features),
            _ => (0, 0, 0),
        };
        let out_dims: Vec<usize> = match (self.input, self.output) {
            (Arrangement::Tokens, Arrangement::Tokens) => {
                [&dims[..dims.len() - 1], &[outputs]].concat()
            }
            (_, Arrangement::Tokens) => vec![batch, rows, outputs],
            (_, Arrangement::Channels) => vec![batch, outputs, rows],
        };
        // Holds the f32 weight's storage readable while the product runs.
        let weight_storage;
        let weight = match self.weight {
            LinearWeight::F32(weight_t) => {
                weight_storage = weight_t.storage_and_layout();
                linear::Weight::F32(on_cpu("weight", &weight_storage.0, weight_storage.1)?)
            }
            LinearWeight::Panels(panels) => linear::Weight::Panels(panels),
            LinearWeight::Bf16(packed) => linear::Weight::Bf16(packed),
        };
        let residual = self.residual.as_ref().map(|r| r.storage_and_layout());
        let bias_fits = bias.is_none_or(|b| b.1.shape().dims() == [weight.bias_len(outputs)]);
        let residual_fits = residual
            .as_ref()
            .is_none_or(|r| r.1.shape().elem_count() == batch * rows * outputs);
        if x_inputs != inputs || rows == 0 || !bias_fits || !residual_fits {
            candle_core::bail!(
                "linear: input {:?} does not fit weight [in, out] [{inputs}, {outputs}], bias {:?} and residual {:?}",
                x.1.shape(),
                bias.map(|b| b.1.shape()),
                residual.as_ref().map(|r| r.1.shape()),
            );
        }
        let residual = match &residual {
            Some((storage, layout)) => Some(on_cpu("residual", storage, layout)?),
            None => None,
        };
        let shape = LinearShape {
            batch,
            rows,
            inputs,
            outputs,
            input: self.input,
            output: self.output,
        };
        let bias = bias.map(|(s, l)| slice(s, l)).transpose()?;
        let out = linear::linear(&shape, slice(x.0, x.1)?, weight, bias, residual);
        Ok((CpuStorage::F32(out), out_dims.into()))
    }
}

impl CustomOp1 for Linear<'_> {
    fn name(&self) -> &'static str {
        "atelier-cpu-linear"
    }

    fn cpu_fwd(&self, x: &CpuStorage, x_layout: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run((x, x_layout), None)
    }
}

impl CustomOp2 for Linear<'_> {
    fn name(&self) -> &'static str {
        "atelier-cpu-linear-bias"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run((x, x_layout), Some((bias, bias_layout)))
    }
}

/// The f32 values of a tensor operand the op holds, which must be on the
/// CPU.
fn on_cpu<'a>(what: &str, storage: &'a Storage, layout: &Layout) -> Result<&'a [f32]> {
    match storage {
        Storage::Cpu(cpu) => slice(cpu, layout),
        _ => candle_core::bail!("linear: the {what} is not on the CPU"),
    }
}

struct AddAssign;

impl InplaceOp2 for AddAssign {
    fn name(&self) -> &'static str {
        "atelier-cpu-add-assign"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_layout: &Layout,
        src: &CpuStorage,
        src_layout: &Layout,
    ) -> Result<()> {
        let src_values = slice(src, src_layout)?;
        let (dst_dims, src_dims) = (dst_layout.shape().dims(), src_layout.shape().dims());
        let CpuStorage::F32(dst) = dst else {
            candle_core::bail!("the CPU kernels take f32 only");
        };
        let Some((start, end)) = dst_layout.contiguous_offsets() else {
            candle_core::bail!("the CPU kernels take contiguous tensors");
        };
        let dst = &mut dst[start..end];
        if dst_dims == src_dims {
            add::add_assign(dst, src_values);
        } else if dst_dims.len() >= 2
            && src_dims.len() == dst_dims.len()
            && src_dims[..2] == dst_dims[..2]
            && src_dims[2..].iter().all(|&d| d == 1)
        {
            add::add_per_plane(dst, src_values);
        } else {
            candle_core::bail!("add in place: {dst_dims:?} += {src_dims:?}");
        }
        Ok(())
    }
}

struct Geglu;

impl CustomOp1 for Geglu {
    fn name(&self) -> &'static str {
        "atelier-cpu-geglu"
    }

    fn cpu_fwd(&self, h: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut dims = layout.shape().dims().to_vec();
        let last = dims.last_mut().expect("geglu takes at least one dimension");
        if !last.is_multiple_of(2) {
            candle_core::bail!("geglu: the last dimension of {:?} is odd", layout.shape());
        }
        *last /= 2;
        let out = geglu::geglu(slice(h, layout)?, *last);
        Ok((CpuStorage::F32(out), dims.into()))
    }
}

/// Nearest-neighbour upsampling of `[batch, channels, h, w]` to `2h x 2w`.
pub fn upsample2x(xs: &Tensor) -> Result<Tensor> {
    xs.contiguous()?.apply_op1_no_bwd(&Upsample2x)
}

struct Upsample2x;

impl CustomOp1 for Upsample2x {
    fn name(&self) -> &'static str {
        "atelier-cpu-upsample2x"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        let out = upsample::upsample2x(slice(xs, layout)?, h, w);
        Ok((CpuStorage::F32(out), (n, c, 2 * h, 2 * w).into()))
    }
}

/// The f32 elements of a contiguous CPU tensor.
fn slice<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("the CPU kernels take f32 only");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("the CPU kernels take contiguous tensors"),
    }
}
