//! A Stable Diffusion model loaded from a diffusers-layout folder: every
//! network built from its own config, weights mapped from safetensors.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use super::clip::ClipTextEncoder;
use super::config::{clip_spec, unet_spec, vae_spec, ModelLayout, UnetSpec, VaeSpec};
use super::scheduler::SchedulerConfig;
use super::tokenizer::ClipTokenizer;
use super::unet::UNet;
use super::vae::Vae;
use super::weights::{describe, fingerprint, var_builder, weight_files};

pub struct Model {
    pub dir: PathBuf,
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextEncoder,
    pub unet: UNet,
    pub vae: Vae,
    pub unet_spec: UnetSpec,
    pub vae_spec: VaeSpec,
    pub scheduler: SchedulerConfig,
    pub device: Device,
    /// Precision of the text encoder and UNet.
    pub dtype: DType,
    /// Precision of the VAE (f32 when its config asks to upcast).
    pub vae_dtype: DType,
    pub load_seconds: f64,
    /// Identity of the weight files (`weights::fingerprint`), for records.
    pub fingerprint: String,
}

impl Model {
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let started = Instant::now();
        let layout = ModelLayout::open(dir)?;
        let half = dtype != DType::F32;

        let tokenizer = ClipTokenizer::load(&layout.part("tokenizer"))?;
        let scheduler =
            SchedulerConfig::load(&layout.part("scheduler").join("scheduler_config.json"))?;

        let clip = clip_spec(&layout.part("text_encoder"))?;
        let unet_spec = unet_spec(&layout.part("unet"))?;
        let vae_spec = vae_spec(&layout.part("vae"))?;
        if clip.hidden_size != unet_spec.cross_attention_dim {
            bail!(
                "{}: the text encoder's hidden_size {} does not match the UNet's cross_attention_dim {}; \
                 these parts do not belong together",
                dir.display(),
                clip.hidden_size,
                unet_spec.cross_attention_dim
            );
        }
        if unet_spec.in_channels != vae_spec.latent_channels {
            bail!(
                "{}: the UNet takes {} input channels but the VAE makes {} latent channels{}",
                dir.display(),
                unet_spec.in_channels,
                vae_spec.latent_channels,
                if unet_spec.in_channels == 9 {
                    " (an inpainting model: not supported yet)"
                } else {
                    ""
                }
            );
        }

        let mut all_files = Vec::new();
        let mut part = |name: &str, stem: &str, dtype: DType| -> Result<_> {
            let files = weight_files(&layout.part(name), stem, half)?;
            all_files.extend(files.iter().cloned());
            Ok((var_builder(&files, dtype, device)?, describe(&files)))
        };

        let (vb, files) = part("text_encoder", "model", dtype)?;
        let text_encoder =
            ClipTextEncoder::new(vb, &clip).with_context(|| weights_error(&files))?;

        let (vb, files) = part("unet", "diffusion_pytorch_model", dtype)?;
        let unet = UNet::new(vb, &unet_spec).with_context(|| weights_error(&files))?;

        let vae_dtype = if vae_spec.force_upcast {
            DType::F32
        } else {
            dtype
        };
        let (vb, files) = part("vae", "diffusion_pytorch_model", vae_dtype)?;
        let vae = Vae::new(vb, &vae_spec).with_context(|| weights_error(&files))?;
        let fingerprint = fingerprint(&all_files)?;

        Ok(Self {
            dir: dir.to_path_buf(),
            tokenizer,
            text_encoder,
            unet,
            vae,
            unet_spec,
            vae_spec,
            scheduler,
            device: device.clone(),
            dtype,
            vae_dtype,
            load_seconds: started.elapsed().as_secs_f64(),
            fingerprint,
        })
    }

    /// Text embeddings [1, 77, hidden] for one prompt.
    pub fn encode_prompt(&self, prompt: &str) -> Result<Tensor> {
        let ids = self.tokenizer.encode(prompt)?;
        let ids = Tensor::new(ids.as_slice(), &self.device)?.unsqueeze(0)?;
        Ok(self.text_encoder.forward(&ids)?)
    }

    /// The source latent: VAE posterior mean x scaling factor, f32.
    pub fn encode_source(&self, pixels: &Tensor) -> Result<Tensor> {
        let mean = self.vae.encode_mean(&pixels.to_dtype(self.vae_dtype)?)?;
        Ok((mean.to_dtype(DType::F32)? * self.vae_spec.scaling_factor)?)
    }

    /// Latents to an image tensor [3, h, w] in [0, 1].
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let scaled = (latents / self.vae_spec.scaling_factor)?.to_dtype(self.vae_dtype)?;
        let image = self.vae.decode(&scaled)?.to_dtype(DType::F32)?;
        Ok(((image / 2.0)? + 0.5)?.clamp(0f32, 1f32)?.get(0)?)
    }
}

fn weights_error(files: &str) -> String {
    format!(
        "the weights in {files} do not fit the architecture its config.json describes \
         (a missing tensor or one of the wrong shape)"
    )
}
