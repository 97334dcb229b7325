//! Random weights for any architecture, made on the device as each tensor is
//! asked for: benchmarks run the real networks at their real sizes without a
//! download. Values follow each layer's init hint (norms get 1 and 0,
//! projections a fan-in scaled normal) so activations stay finite in f16.

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

struct RandomWeights;

impl SimpleBackend for RandomWeights {
    fn get(&self, s: Shape, _name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let t = match h {
            Init::Const(v) => Tensor::full(v as f32, s, dev)?,
            Init::Randn { mean, stdev } => Tensor::randn(mean as f32, stdev as f32, s, dev)?,
            Init::Uniform { lo, up } => Tensor::rand(lo as f32, up as f32, s, dev)?,
            Init::Kaiming { .. } => {
                let fan_in: usize = s.dims().iter().skip(1).product::<usize>().max(1);
                Tensor::randn(0f32, (1.0 / fan_in as f64).sqrt() as f32, s, dev)?
            }
        };
        t.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("random weights need a shape for {name}")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        // Present in every layout except the transformers-4 text encoder prefix.
        !name.starts_with("text_model.")
    }
}

/// A VarBuilder whose every tensor is random.
pub fn random_var_builder(dtype: DType, device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(RandomWeights), dtype, device.clone())
}
