//! The kernels of this module as candle custom ops on f32 CPU tensors.
//! Callers check the device and dtype first (see [`applies`]) and keep
//! candle's own ops for everything else.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor};

use super::attention::{self, AttentionShape};
use super::conv::{self, ConvShape};
use super::geglu;
use super::group_norm::{self, GroupShape};

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

/// Multi-head attention over `[batch, tokens, heads * head_dim]` q, k, v.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f32) -> Result<Tensor> {
    q.contiguous()?.apply_op3_no_bwd(
        &k.contiguous()?,
        &v.contiguous()?,
        &Attention { heads, scale },
    )
}

/// GEGLU over the last dimension: `[.., 2n]` to `[.., n]`.
pub fn geglu(h: &Tensor) -> Result<Tensor> {
    h.contiguous()?.apply_op1_no_bwd(&Geglu)
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
        let (batch, in_channels, height, width) = input_layout.shape().dims4()?;
        let (out_channels, weight_in, kh, kw) = weight_layout.shape().dims4()?;
        if weight_in != in_channels || kh != kw {
            candle_core::bail!(
                "conv2d: input {:?} does not fit kernel {:?}",
                input_layout.shape(),
                weight_layout.shape()
            );
        }
        let shape = ConvShape {
            batch,
            in_channels,
            height,
            width,
            out_channels,
            kernel: kh,
            stride: self.stride,
            padding: self.padding,
        };
        let out = conv::conv2d(
            &shape,
            slice(input, input_layout)?,
            slice(weight, weight_layout)?,
            slice(bias, bias_layout)?,
        );
        let dims = (batch, out_channels, shape.out_height(), shape.out_width());
        Ok((CpuStorage::F32(out), dims.into()))
    }
}

struct Attention {
    heads: usize,
    scale: f32,
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
        let out = attention::attention(
            &shape,
            slice(q, q_layout)?,
            slice(k, k_layout)?,
            slice(v, v_layout)?,
            self.scale,
        );
        Ok((CpuStorage::F32(out), q_layout.shape().clone()))
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
