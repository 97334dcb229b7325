//! A Stable Diffusion model loaded from a diffusers-layout folder: every
//! network built from its own config, weights mapped from safetensors.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};

use super::blocks;
use super::clip::ClipTextEncoder;
use super::config::{clip_spec, unet_spec, vae_spec, ClipSpec, ModelLayout, UnetSpec, VaeSpec};
use super::random_weights::random_var_builder;
use super::scheduler::SchedulerConfig;
use super::single_file;
use super::tokenizer::ClipTokenizer;
use super::unet::UNet;
use super::vae::Vae;
use super::weights::{describe, fingerprint, var_builder, weight_files};

/// One text encoder with its tokenizer.
pub struct TextEncoder {
    pub tokenizer: ClipTokenizer,
    pub encoder: ClipTextEncoder,
    pub spec: ClipSpec,
}

/// What a prompt becomes: the UNet's cross-attention context and, for SDXL,
/// the pooled text embedding.
#[derive(Clone)]
pub struct TextConditioning {
    /// [1, 77, cross_attention_dim].
    pub context: Tensor,
    /// [1, pooled_dim] (SDXL only).
    pub pooled: Option<Tensor>,
}

impl TextConditioning {
    /// SDXL's unconditional input for an empty negative prompt
    /// (`force_zeros_for_empty_prompt`).
    pub fn zeros_like(&self) -> Result<Self> {
        Ok(Self {
            context: self.context.zeros_like()?,
            pooled: self.pooled.as_ref().map(Tensor::zeros_like).transpose()?,
        })
    }

    /// A guided step's UNet context, `uncond` (the negative prompt's) then
    /// `cond` (the prompt's), and SDXL's pooled embeddings in that order.
    pub fn guided(uncond: Self, cond: Self) -> Result<(Tensor, Option<Tensor>)> {
        let pooled = match (uncond.pooled, cond.pooled) {
            (Some(u), Some(c)) => Some(Tensor::cat(&[u, c], 0)?),
            _ => None,
        };
        Ok((Tensor::cat(&[uncond.context, cond.context], 0)?, pooled))
    }
}

/// Where a model's weights come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightSource {
    /// The safetensors files in the model folder.
    Files,
    /// Random values of the right shapes, made on the device (benchmarks).
    Random,
}

/// Where `build` takes each network's weights from.
#[derive(Clone, Copy)]
enum Weights<'a> {
    Files,
    Random,
    Checkpoint(&'a single_file::Checkpoint),
}

pub struct Model {
    pub dir: PathBuf,
    /// One encoder (SD 1.x/2.x) or two (SDXL: CLIP ViT-L, then OpenCLIP bigG).
    pub text_encoders: Vec<TextEncoder>,
    pub unet: UNet,
    pub vae: Vae,
    pub unet_spec: UnetSpec,
    pub vae_spec: VaeSpec,
    pub scheduler: SchedulerConfig,
    /// An empty negative prompt conditions on zeros (SDXL pipelines).
    pub force_zeros_for_empty_prompt: bool,
    pub device: Device,
    /// What was asked for: `dtype`, or bf16 for an f32 network with bf16
    /// products on the CPU.
    pub precision: DType,
    /// Precision of the text encoders' and UNet's tensors.
    pub dtype: DType,
    /// Precision of the VAE (f32 when its config asks to upcast).
    pub vae_dtype: DType,
    pub load_seconds: f64,
    /// Identity of the weight files (`weights::fingerprint`), for records.
    pub fingerprint: String,
}

impl Model {
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        Self::load_with(dir, device, dtype, WeightSource::Files)
    }

    /// Builds every network from the folder's configs; weights from `source`.
    pub fn load_with(
        dir: &Path,
        device: &Device,
        dtype: DType,
        source: WeightSource,
    ) -> Result<Self> {
        let weights = match source {
            WeightSource::Files => Weights::Files,
            WeightSource::Random => Weights::Random,
        };
        Self::build(dir, device, dtype, weights)
    }

    /// A single-file (LDM-named) checkpoint, with the configs and tokenizers
    /// of `base`, a diffusers folder of the same architecture.
    pub fn load_single_file(
        file: &Path,
        base: &Path,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let arch = single_file::detect(file)?;
        let layout = ModelLayout::open(base)?;
        let unet = unet_spec(&layout.part("unet"))?;
        let vae = vae_spec(&layout.part("vae"))?;
        let checkpoint = single_file::Checkpoint::open(file, arch, &unet, &vae)?;
        let mut model = Self::build(base, device, dtype, Weights::Checkpoint(&checkpoint))
            .with_context(|| {
                format!(
                    "{} (a {arch:?} checkpoint, configs from {}) does not fit",
                    file.display(),
                    base.display()
                )
            })?;
        model.dir = file.to_path_buf();
        model.fingerprint = fingerprint(&[file.to_path_buf()])?;
        Ok(model)
    }

    fn build(dir: &Path, device: &Device, dtype: DType, source: Weights) -> Result<Self> {
        // candle has no bf16 kernels on the CPU: there bf16 means an f32
        // network whose linear layers multiply in bf16 (AVX512-BF16).
        if device.is_cpu() && dtype == DType::BF16 {
            if !super::cpu::bf16::available() {
                bail!(super::cpu::bf16::UNAVAILABLE);
            }
            let mut model = blocks::with_bf16_products(true, || {
                Self::build_in(dir, device, DType::F32, source)
            })?;
            model.precision = DType::BF16;
            return Ok(model);
        }
        Self::build_in(dir, device, dtype, source)
    }

    fn build_in(dir: &Path, device: &Device, dtype: DType, source: Weights) -> Result<Self> {
        let started = Instant::now();
        let layout = ModelLayout::open(dir)?;
        let half = dtype != DType::F32;
        let scheduler =
            SchedulerConfig::load(&layout.part("scheduler").join("scheduler_config.json"))?;
        let unet_spec = unet_spec(&layout.part("unet"))?;
        let vae_spec = vae_spec(&layout.part("vae"))?;
        let encoder_parts = layout.text_encoder_parts();
        let clip_specs = encoder_parts
            .iter()
            .map(|(encoder, _)| clip_spec(&layout.part(encoder)))
            .collect::<Result<Vec<_>>>()?;
        check_parts_fit(dir, &clip_specs, &unet_spec, &vae_spec)?;

        let mut all_files = Vec::new();
        let mut part = |name: &str, stem: &str, dtype: DType| -> Result<_> {
            match source {
                Weights::Random => Ok((random_var_builder(dtype, device), "random weights".into())),
                Weights::Checkpoint(c) => Ok((
                    c.var_builder(name, dtype, device)?,
                    format!("the checkpoint's {name}"),
                )),
                Weights::Files => {
                    let files = weight_files(&layout.part(name), stem, half)?;
                    all_files.extend(files.iter().cloned());
                    Ok((var_builder(&files, dtype, device)?, describe(&files)))
                }
            }
        };

        let mut text_encoders = Vec::new();
        for ((encoder, tokenizer), spec) in encoder_parts.iter().zip(clip_specs) {
            let tokenizer = match source {
                Weights::Random => ClipTokenizer::for_benchmarks()?,
                _ => ClipTokenizer::load(&layout.part(tokenizer))?,
            };
            let (vb, files) = part(encoder, "model", dtype)?;
            let encoder = ClipTextEncoder::new(vb, &spec).with_context(|| weights_error(&files))?;
            text_encoders.push(TextEncoder {
                tokenizer,
                encoder,
                spec,
            });
        }
        if unet_spec.addition.is_some()
            && !text_encoders
                .last()
                .is_some_and(|t| t.encoder.has_projection())
        {
            bail!(
                "{}: the UNet conditions on a pooled text embedding but the last text encoder \
                 has no `text_projection` (projection_dim in its config.json)",
                dir.display()
            );
        }

        let (vb, files) = part("unet", "diffusion_pytorch_model", dtype)?;
        let unet = UNet::new(vb, &unet_spec).with_context(|| weights_error(&files))?;

        // As diffusers' pipelines: the SDXL VAE overflows in f16 and is run in
        // f32 when its config says so (bf16 has the range and stays); SD
        // 1.x/2.x VAEs run in the model's dtype.
        let vae_dtype =
            if vae_spec.force_upcast && unet_spec.addition.is_some() && dtype == DType::F16 {
                DType::F32
            } else {
                dtype
            };
        let (vb, files) = part("vae", "diffusion_pytorch_model", vae_dtype)?;
        // With bf16 products the VAE takes them too, but for the layers
        // where f32 is faster or bf16 untested (see `vae::conv`).
        let vae = Vae::new(vb, &vae_spec).with_context(|| weights_error(&files))?;
        let fingerprint = match source {
            Weights::Files => fingerprint(&all_files)?,
            Weights::Random => "random".into(),
            Weights::Checkpoint(_) => String::new(), // the caller fingerprints the file
        };

        Ok(Self {
            dir: dir.to_path_buf(),
            text_encoders,
            unet,
            vae,
            force_zeros_for_empty_prompt: layout
                .force_zeros_for_empty_prompt(unet_spec.addition.is_some())?,
            unet_spec,
            vae_spec,
            scheduler,
            device: device.clone(),
            precision: dtype,
            dtype,
            vae_dtype,
            load_seconds: started.elapsed().as_secs_f64(),
            fingerprint,
        })
    }

    /// Whether `negative` conditions on zeros rather than on its encoding
    /// (an empty one, on models that ask for it: SDXL).
    pub fn negative_is_zeros(&self, negative: &str) -> bool {
        negative.is_empty() && self.force_zeros_for_empty_prompt
    }

    /// A prompt's conditioning, as diffusers' pipelines compute it: the last
    /// hidden state of the one encoder (SD 1.x/2.x), or the penultimate
    /// hidden states of both encoders side by side plus the second one's
    /// pooled projection (SDXL).
    pub fn encode_prompt(&self, prompt: &str) -> Result<TextConditioning> {
        let encode = |t: &TextEncoder| -> Result<_> {
            let ids = t.tokenizer.encode(prompt)?;
            let ids = Tensor::new(ids.as_slice(), &self.device)?.unsqueeze(0)?;
            Ok(t.encoder.forward_all(&ids, t.tokenizer.end_id())?)
        };
        if self.unet_spec.addition.is_none() {
            let out = encode(&self.text_encoders[0])?;
            return Ok(TextConditioning {
                context: out.last,
                pooled: None,
            });
        }
        let mut contexts = Vec::new();
        let mut pooled = None;
        for encoder in &self.text_encoders {
            let out = encode(encoder)?;
            contexts.push(out.penultimate);
            pooled = out.pooled.or(pooled);
        }
        Ok(TextConditioning {
            context: Tensor::cat(&contexts, D::Minus1)?,
            pooled,
        })
    }

    /// The source latent: VAE posterior mean, normalised as the VAE config
    /// says (latents mean/std, scaling factor), f32.
    pub fn encode_source(&self, pixels: &Tensor) -> Result<Tensor> {
        let mean = self
            .vae
            .encode_mean(&pixels.to_dtype(self.vae_dtype)?)?
            .to_dtype(DType::F32)?;
        let sf = self.vae_spec.scaling_factor;
        Ok(match self.latent_stats()? {
            Some((m, s)) => (mean.broadcast_sub(&m)? * sf)?.broadcast_div(&s)?,
            None => (mean * sf)?,
        })
    }

    /// Latents to an image tensor [3, h, w] in [0, 1].
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let sf = self.vae_spec.scaling_factor;
        let latents = match self.latent_stats()? {
            Some((m, s)) => (latents.broadcast_mul(&s)? / sf)?.broadcast_add(&m)?,
            None => (latents / sf)?,
        };
        let image = self
            .vae
            .decode(&latents.to_dtype(self.vae_dtype)?)?
            .to_dtype(DType::F32)?;
        Ok(((image / 2.0)? + 0.5)?.clamp(0f32, 1f32)?.get(0)?)
    }

    /// The VAE's per-channel latent mean and std as [1, c, 1, 1] tensors.
    fn latent_stats(&self) -> Result<Option<(Tensor, Tensor)>> {
        let Some((mean, std)) = &self.vae_spec.latents_mean_std else {
            return Ok(None);
        };
        let column = |v: &Vec<f64>| -> Result<Tensor> {
            let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            Ok(Tensor::from_vec(v, (1, mean.len(), 1, 1), &self.device)?)
        };
        Ok(Some((column(mean)?, column(std)?)))
    }
}

/// The parts must agree on widths before any weight is read.
fn check_parts_fit(dir: &Path, clips: &[ClipSpec], unet: &UnetSpec, vae: &VaeSpec) -> Result<()> {
    let context: usize = clips.iter().map(|c| c.hidden_size).sum();
    if context != unet.cross_attention_dim {
        bail!(
            "{}: the text encoders' hidden sizes add up to {context} but the UNet's \
             cross_attention_dim is {}; these parts do not belong together",
            dir.display(),
            unet.cross_attention_dim
        );
    }
    if let Some(addition) = unet.addition {
        let pooled = clips.last().and_then(|c| c.projection_dim);
        if pooled != addition.pooled_dim() {
            bail!(
                "{}: the UNet expects a pooled text embedding of {:?} features but the last \
                 text encoder projects to {pooled:?} (an SDXL refiner, which conditions on an \
                 aesthetic score, is not supported)",
                dir.display(),
                addition.pooled_dim()
            );
        }
    }
    if unet.in_channels != vae.latent_channels {
        bail!(
            "{}: the UNet takes {} input channels but the VAE makes {} latent channels{}",
            dir.display(),
            unet.in_channels,
            vae.latent_channels,
            if unet.in_channels == 9 {
                " (an inpainting model: not supported yet)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

fn weights_error(files: &str) -> String {
    format!(
        "the weights in {files} do not fit the architecture its config.json describes \
         (a missing tensor or one of the wrong shape)"
    )
}
