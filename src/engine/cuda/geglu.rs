//! GEGLU (`h * gelu(gate)` over the two halves of the last dimension) as
//! one CUDA kernel (`geglu.cu`).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// `[.., 2 * inner]` -> `[.., inner]` for a tensor on a CUDA device.
pub fn geglu(xs: &Tensor) -> Result<Tensor> {
    xs.contiguous()?.apply_op1_no_bwd(&Geglu)
}

struct Geglu;

impl CustomOp1 for Geglu {
    fn name(&self) -> &'static str {
        "atelier-cuda-geglu"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        Err(super::cpu_refusal("geglu"))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::Map1;
        let mut dims = layout.shape().dims().to_vec();
        let last = dims.last_mut().expect("geglu takes at least one dimension");
        if !last.is_multiple_of(2) {
            candle_core::bail!("geglu: the last dimension of {:?} is odd", layout.shape());
        }
        *last /= 2;
        let slice = self.map(&xs.slice, &xs.device, layout)?;
        Ok((super::launch::storage(slice, xs), Shape::from(dims)))
    }
}

#[cfg(feature = "cuda")]
impl candle_core::cuda_backend::Map1 for Geglu {
    fn f<T: candle_core::cuda_backend::cudarc::driver::DeviceRepr + candle_core::WithDType>(
        &self,
        xs: &candle_core::cuda_backend::cudarc::driver::CudaSlice<T>,
        dev: &candle_core::CudaDevice,
        layout: &Layout,
    ) -> Result<candle_core::cuda_backend::cudarc::driver::CudaSlice<T>> {
        use super::launch::{int, view, GEGLU};
        use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
        use candle_core::cuda_backend::{kernel_name, WrapErr};

        let xs = view(xs, layout, "geglu", "input")?;
        let inner = layout.shape().dims().last().copied().unwrap_or(0) / 2;
        let n = xs.len() / 2;
        let inner_arg = int(inner, "geglu", "a half row")?;
        let n_arg = n as i64;
        let func =
            dev.get_or_load_custom_func(&kernel_name::<T>("geglu"), GEGLU.name, GEGLU.ptx)?;
        // SAFETY: the kernel writes every element.
        let out = unsafe { dev.alloc::<T>(n)? };
        let mut builder = func.builder();
        builder.arg(&xs);
        builder.arg(&out);
        builder.arg(&inner_arg);
        builder.arg(&n_arg);
        // A grid-stride loop: enough blocks to fill the GPU, no more.
        let blocks = n.div_ceil(256).min(65_535) as u32;
        let cfg = LaunchConfig {
            grid_dim: (blocks.max(1), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match `geglu` in geglu.cu, `n` outputs.
        unsafe { builder.launch(cfg) }.w()?;
        Ok(out)
    }
}
