//! Group norm (+ SiLU) as one CUDA kernel (`group_norm.cu`): one block per
//! (image, group), statistics in f32 for every storage type.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

/// `group_norm(xs)` with its affine transform, then SiLU when `silu`, for
/// `xs` `[batch, channels, ...]` on a CUDA device; `weight` and `bias`
/// `[channels]` in `xs`'s dtype.
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

// Read by the CUDA side alone, which CPU-only builds leave out.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct GroupNorm {
    groups: usize,
    eps: f32,
    silu: bool,
}

impl CustomOp3 for GroupNorm {
    fn name(&self) -> &'static str {
        "atelier-cuda-group-norm"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Err(super::cpu_refusal("group norm"))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_layout: &Layout,
        weight: &candle_core::CudaStorage,
        weight_layout: &Layout,
        bias: &candle_core::CudaStorage,
        bias_layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::Map3;
        let slice = self.map(
            &x.slice,
            x_layout,
            &weight.slice,
            weight_layout,
            &bias.slice,
            bias_layout,
            &x.device,
        )?;
        Ok((super::launch::storage(slice, x), x_layout.shape().clone()))
    }
}

#[cfg(feature = "cuda")]
impl candle_core::cuda_backend::Map3 for GroupNorm {
    fn f<T: candle_core::cuda_backend::cudarc::driver::DeviceRepr + candle_core::WithDType>(
        &self,
        x: &candle_core::cuda_backend::cudarc::driver::CudaSlice<T>,
        x_layout: &Layout,
        weight: &candle_core::cuda_backend::cudarc::driver::CudaSlice<T>,
        weight_layout: &Layout,
        bias: &candle_core::cuda_backend::cudarc::driver::CudaSlice<T>,
        bias_layout: &Layout,
        dev: &candle_core::CudaDevice,
    ) -> Result<candle_core::cuda_backend::cudarc::driver::CudaSlice<T>> {
        use super::launch::{int, view, GROUP_NORM};
        use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
        use candle_core::cuda_backend::{kernel_name, WrapErr};

        const OP: &str = "group norm";
        let dims = x_layout.shape().dims();
        if dims.len() < 2 || self.groups == 0 || !dims[1].is_multiple_of(self.groups) {
            candle_core::bail!("{OP}: {:?} in {} groups", dims, self.groups);
        }
        let (batch, channels) = (dims[0], dims[1]);
        let spatial: usize = dims[2..].iter().product();
        let x = view(x, x_layout, OP, "input")?;
        let weight = view(weight, weight_layout, OP, "weight")?;
        let bias = view(bias, bias_layout, OP, "bias")?;
        if weight.len() != channels || bias.len() != channels {
            candle_core::bail!(
                "{OP}: {channels} channels, but a weight of {} and a bias of {}",
                weight.len(),
                bias.len()
            );
        }
        int(channels / self.groups * spatial, OP, "a group")?;
        let (channels, spatial, groups) = (
            int(channels, OP, "channels")?,
            int(spatial, OP, "a map")?,
            int(self.groups, OP, "groups")?,
        );
        let silu = self.silu as i32;
        let func = dev.get_or_load_custom_func(
            &kernel_name::<T>("group_norm"),
            GROUP_NORM.name,
            GROUP_NORM.ptx,
        )?;
        // SAFETY: the kernel writes every element.
        let out = unsafe { dev.alloc::<T>(x.len())? };
        let mut builder = func.builder();
        builder.arg(&x);
        builder.arg(&weight);
        builder.arg(&bias);
        builder.arg(&out);
        builder.arg(&channels);
        builder.arg(&spatial);
        builder.arg(&groups);
        builder.arg(&self.eps);
        builder.arg(&silu);
        // One block per (image, group), as many threads as a block takes: a
        // block covers a whole group, so it wants many loads in flight.
        let cfg = LaunchConfig {
            grid_dim: ((batch * self.groups) as u32, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match `group_norm` in group_norm.cu, and the
        // buffers hold the sizes checked above.
        unsafe { builder.launch(cfg) }.w()?;
        Ok(out)
    }
}
