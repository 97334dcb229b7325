//! atelier's own CUDA kernels, for work that candle runs as many small or
//! slow ops: fused attention (f16/bf16 on tensor cores), group norm (+
//! SiLU), the softmax where attention is not fused, GEGLU, and an im2col
//! for convolutions. Compiled to PTX at build time (`build.rs`, `cuda`
//! feature) and loaded once per device; arithmetic in f32 for every storage
//! type.
//!
//! `ATELIER_CUDA_KERNELS=off` runs candle's ops instead: an escape hatch for
//! a GPU where a kernel misbehaves, and an A/B baseline.
//! `ATELIER_CUDA_ATTENTION=on|off` overrides where attention runs fused
//! (`prefer_fused_attention`), and `ATELIER_CUDA_FLASH=mma|wmma` which
//! kernel it runs (`FlashKernel`). `ATELIER_CUDA_CONV` picks where
//! convolutions run (`conv_backend`).

mod conv;
mod cudnn_conv;
mod flash_attention;
mod geglu;
mod group_norm;
mod softmax;

pub use conv::{conv2d, conv_backend, ConvBackend};
pub use cudnn_conv::cudnn_conv2d;
pub use flash_attention::{
    flash_attention, flash_attention_with, prefer_fused_attention, FlashKernel,
};
pub use geglu::geglu;
pub use group_norm::group_norm;
pub use softmax::softmax_last_dim;

use candle_core::{DType, Tensor};

/// Whether these kernels take this tensor: a CUDA build, a CUDA tensor of
/// f32, f16 or bf16, and not switched off.
pub fn applies(xs: &Tensor) -> bool {
    cfg!(feature = "cuda")
        && xs.device().is_cuda()
        && matches!(xs.dtype(), DType::F32 | DType::F16 | DType::BF16)
        && enabled()
}

fn enabled() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    !*OFF.get_or_init(|| switched_off("ATELIER_CUDA_KERNELS"))
}

/// Whether the environment variable `name` says `off`.
fn switched_off(name: &str) -> bool {
    std::env::var(name).as_deref() == Ok("off")
}

/// The CPU side of ops that only run on CUDA (`applies` keeps them there).
fn cpu_refusal(op: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!("atelier's CUDA {op} was given CPU tensors"))
}

#[cfg(feature = "cuda")]
mod launch {
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView};
    use candle_core::{Layout, Result};

    mod ptx {
        include!(concat!(env!("OUT_DIR"), "/ptx.rs"));
    }

    /// One `.cu` file's PTX, loaded into a device as a module of this name
    /// (`CudaDevice::get_or_load_custom_func`, on first use).
    pub struct Module {
        pub name: &'static str,
        pub ptx: &'static str,
    }

    pub const GROUP_NORM: Module = Module {
        name: "atelier_group_norm",
        ptx: ptx::GROUP_NORM,
    };
    pub const SOFTMAX: Module = Module {
        name: "atelier_softmax",
        ptx: ptx::SOFTMAX,
    };
    pub const FLASH_ATTENTION: Module = Module {
        name: "atelier_flash_attention",
        ptx: ptx::FLASH_ATTENTION,
    };
    pub const FLASH_ATTENTION_MMA: Module = Module {
        name: "atelier_flash_attention_mma",
        ptx: ptx::FLASH_ATTENTION_MMA,
    };
    pub const IM2COL: Module = Module {
        name: "atelier_im2col",
        ptx: ptx::IM2COL,
    };
    pub const GEGLU: Module = Module {
        name: "atelier_geglu",
        ptx: ptx::GEGLU,
    };

    /// The elements `layout` covers, which must be one contiguous run.
    pub fn view<'a, T>(
        slice: &'a CudaSlice<T>,
        layout: &Layout,
        op: &str,
        what: &str,
    ) -> Result<CudaView<'a, T>> {
        match layout.contiguous_offsets() {
            Some((start, end)) => Ok(slice.slice(start..end)),
            None => candle_core::bail!("{op}: the {what} is not contiguous"),
        }
    }

    /// A kernel's output as candle storage on the device of `input`.
    pub fn storage(
        slice: candle_core::cuda_backend::CudaStorageSlice,
        input: &candle_core::CudaStorage,
    ) -> candle_core::CudaStorage {
        candle_core::CudaStorage {
            slice,
            device: input.device.clone(),
        }
    }

    /// A size the kernels index with 32-bit integers.
    pub fn int(n: usize, op: &str, what: &str) -> Result<i32> {
        i32::try_from(n)
            .map_err(|_| candle_core::Error::Msg(format!("{op}: {what} of {n} is too large")))
    }
}

#[cfg(all(test, feature = "cuda"))]
mod tests;
