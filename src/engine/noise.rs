//! Seeded Gaussian noise made on the CPU, so a seed gives the same latents on
//! every device and platform (candle's CPU backend cannot be seeded).

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, StandardNormal};
use std::path::Path;

pub struct NoiseSource {
    rng: ChaCha20Rng,
}

impl NoiseSource {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha20Rng::seed_from_u64(seed),
        }
    }

    /// Standard-normal f32 noise of `shape`, on `device`.
    pub fn sample(&mut self, shape: &[usize], device: &Device) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| StandardNormal.sample(&mut self.rng))
            .collect();
        Ok(Tensor::from_vec(values, shape, device)?)
    }
}

/// Initial noise from a safetensors file holding `init_noise`, f32
/// [1, channels, h/8, w/8]: the way to reproduce a run across implementations.
pub fn load_init_noise(path: &Path, expected: &[usize], device: &Device) -> Result<Tensor> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("cannot read the noise file {}", path.display()))?;
    let noise = tensors.get("init_noise").with_context(|| {
        format!(
            "{} has no tensor `init_noise` (it has: {})",
            path.display(),
            tensors.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })?;
    if noise.dims() != expected {
        bail!(
            "{}: `init_noise` has shape {:?}, but this run needs {:?} (batch, latent channels, height/8, width/8)",
            path.display(),
            noise.dims(),
            expected
        );
    }
    Ok(noise.to_dtype(DType::F32)?.to_device(device)?)
}
