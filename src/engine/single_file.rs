//! Single-file checkpoints as A1111, ComfyUI and civitai ship them: one
//! `.safetensors` with the original LDM key names (`model.diffusion_model.`,
//! `first_stage_model.`, `cond_stage_model.` / `conditioner.embedders.`).
//! The architecture is read from the keys; each key is renamed to the
//! diffusers name the networks ask for (fused OpenCLIP q/k/v split, 1x1-conv
//! attention weights squeezed, projections transposed), and the configs and
//! tokenizers come from the matching base model.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use super::config::{UnetSpec, VaeSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointArch {
    Sd1,
    Sd2,
    Sdxl,
}

impl CheckpointArch {
    /// The alias of the model whose configs and tokenizers it uses.
    pub fn base_alias(self) -> &'static str {
        match self {
            CheckpointArch::Sd1 => "sd15",
            CheckpointArch::Sd2 => "sd21",
            CheckpointArch::Sdxl => "sdxl",
        }
    }
}

const UNET: &str = "model.diffusion_model.";
const VAE: &str = "first_stage_model.";
const SD1_TEXT: &str = "cond_stage_model.transformer.";
const SD2_TEXT: &str = "cond_stage_model.model.";
const XL_TEXT_1: &str = "conditioner.embedders.0.transformer.";
const XL_TEXT_2: &str = "conditioner.embedders.1.model.";

/// Tensor names and shapes from the file's header, without reading weights.
fn header(path: &Path) -> Result<HashMap<String, Vec<usize>>> {
    let (map, _) = super::weights::read_safetensors_header(path).with_context(|| {
        format!(
            "{} is not a safetensors checkpoint (a .ckpt pickle must be converted first, \
             e.g. with diffusers or A1111's checkpoint merger)",
            path.display()
        )
    })?;
    Ok(map
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, v)| {
            let shape = v["shape"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .filter_map(|d| d.as_u64().map(|d| d as usize))
                        .collect()
                })
                .unwrap_or_default();
            (k, shape)
        })
        .collect())
}

/// Which architecture a checkpoint holds, from its key names.
pub fn detect(path: &Path) -> Result<CheckpointArch> {
    let keys = header(path)?;
    let has = |k: &str| keys.contains_key(k);
    let arch = if has(&format!("{XL_TEXT_2}ln_final.weight")) {
        CheckpointArch::Sdxl
    } else if has(&format!("{SD2_TEXT}ln_final.weight")) {
        CheckpointArch::Sd2
    } else if has(&format!("{SD1_TEXT}text_model.final_layer_norm.weight"))
        || has(&format!("{SD1_TEXT}final_layer_norm.weight"))
    {
        CheckpointArch::Sd1
    } else {
        let mut prefixes: Vec<&str> = keys
            .keys()
            .map(|k| k.split('.').next().unwrap_or(k))
            .collect();
        prefixes.sort();
        prefixes.dedup();
        bail!(
            "{} is not a Stable Diffusion 1.x/2.x/XL checkpoint atelier recognises: no CLIP \
             text encoder under cond_stage_model. or conditioner.embedders. (top-level names \
             found: {}; a LoRA, VAE-only or refiner file cannot be used as --model)",
            path.display(),
            prefixes.join(", ")
        );
    };
    match keys.get(&format!("{UNET}input_blocks.0.0.weight")) {
        Some(shape) if shape.get(1) == Some(&4) => Ok(arch),
        Some(shape) => bail!(
            "{}: the UNet takes {} input channels (an inpainting or other special model); \
             atelier runs 4-channel img2img models",
            path.display(),
            shape.get(1).copied().unwrap_or(0)
        ),
        None => bail!("{}: no UNet weights ({UNET}...)", path.display()),
    }
}

/// Where a diffusers-named tensor comes from in the checkpoint.
#[derive(Debug, Clone)]
enum Source {
    Same(String),
    /// One third of a fused OpenCLIP `in_proj` (0 = q, 1 = k, 2 = v).
    Third(String, usize),
    /// An OpenCLIP `text_projection` (x @ P) as a linear weight (P^T).
    Transposed(String),
    /// A VAE attention 1x1-conv weight [c, c, 1, 1] used as a linear [c, c].
    Squeezed(String),
}

/// Renamed views of one checkpoint, one per network.
pub struct Checkpoint {
    st: std::sync::Arc<MmapedSafetensors>,
    parts: HashMap<&'static str, HashMap<String, Source>>,
}

impl Checkpoint {
    pub fn open(path: &Path, arch: CheckpointArch, unet: &UnetSpec, vae: &VaeSpec) -> Result<Self> {
        // SAFETY: mapped read-only; atelier never writes model files.
        let st = unsafe { MmapedSafetensors::new(path) }
            .with_context(|| format!("cannot map {}", path.display()))?;
        let keys: Vec<String> = st.tensors().into_iter().map(|(name, _)| name).collect();
        let layers = unet.config.layers_per_block;
        let vae_levels = vae.block_out_channels.len();
        let mut parts: HashMap<&'static str, HashMap<String, Source>> = HashMap::new();
        for key in &keys {
            let mapped = if let Some(rest) = key.strip_prefix(UNET) {
                unet_name(rest, layers).map(|n| ("unet", n, Source::Same(key.clone())))
            } else if let Some(rest) = key.strip_prefix(VAE) {
                vae_name(rest, vae_levels).map(|(n, squeeze)| {
                    let src = if squeeze {
                        Source::Squeezed(key.clone())
                    } else {
                        Source::Same(key.clone())
                    };
                    ("vae", n, src)
                })
            } else {
                None
            };
            if let Some((part, name, src)) = mapped {
                parts.entry(part).or_default().insert(name, src);
                continue;
            }
            let text = match arch {
                CheckpointArch::Sd1 => key
                    .strip_prefix(SD1_TEXT)
                    .map(|r| ("text_encoder", r, false)),
                CheckpointArch::Sd2 => key
                    .strip_prefix(SD2_TEXT)
                    .map(|r| ("text_encoder", r, true)),
                CheckpointArch::Sdxl => key
                    .strip_prefix(XL_TEXT_1)
                    .map(|r| ("text_encoder", r, false))
                    .or_else(|| {
                        key.strip_prefix(XL_TEXT_2)
                            .map(|r| ("text_encoder_2", r, true))
                    }),
            };
            if let Some((part, rest, openclip)) = text {
                let entries = parts.entry(part).or_default();
                if openclip {
                    for (name, src) in openclip_names(rest, key) {
                        entries.insert(name, src);
                    }
                } else {
                    let rest = rest.strip_prefix("text_model.").unwrap_or(rest);
                    entries.insert(format!("text_model.{rest}"), Source::Same(key.clone()));
                }
            }
        }
        Ok(Self {
            st: std::sync::Arc::new(st),
            parts,
        })
    }

    /// The weights of one network (`unet`, `vae`, `text_encoder`, `text_encoder_2`).
    pub fn var_builder(
        &self,
        part: &str,
        dtype: DType,
        device: &Device,
    ) -> Result<VarBuilder<'static>> {
        let names = self
            .parts
            .get(part)
            .with_context(|| format!("the checkpoint holds no weights for the {part}"))?
            .clone();
        let backend = Renamed {
            st: self.st.clone(),
            names,
            part: part.to_string(),
        };
        Ok(VarBuilder::from_backend(
            Box::new(backend),
            dtype,
            device.clone(),
        ))
    }
}

struct Renamed {
    st: std::sync::Arc<MmapedSafetensors>,
    names: HashMap<String, Source>,
    part: String,
}

impl SimpleBackend for Renamed {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &s {
            candle_core::bail!(
                "{} weight {name} has shape {:?} in the checkpoint, the config expects {s:?}",
                self.part,
                t.dims()
            );
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let Some(src) = self.names.get(name) else {
            candle_core::bail!(
                "the checkpoint has no {} weight {name} (after renaming from LDM keys)",
                self.part
            )
        };
        let t = match src {
            Source::Same(k) => self.st.load(k, dev)?,
            Source::Third(k, i) => {
                let fused = self.st.load(k, dev)?;
                let third = fused.dim(0)? / 3;
                fused.narrow(0, i * third, third)?
            }
            Source::Transposed(k) => self.st.load(k, dev)?.t()?.contiguous()?,
            Source::Squeezed(k) => {
                let w = self.st.load(k, dev)?;
                match w.dims() {
                    [o, i, 1, 1] => w.reshape((*o, *i))?,
                    _ => w,
                }
            }
        };
        t.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }
}

/// A UNet key (after `model.diffusion_model.`) as diffusers names it.
fn unet_name(rest: &str, layers: usize) -> Option<String> {
    let fixed = [
        ("time_embed.0.", "time_embedding.linear_1."),
        ("time_embed.2.", "time_embedding.linear_2."),
        ("label_emb.0.0.", "add_embedding.linear_1."),
        ("label_emb.0.2.", "add_embedding.linear_2."),
        ("input_blocks.0.0.", "conv_in."),
        ("out.0.", "conv_norm_out."),
        ("out.2.", "conv_out."),
        ("middle_block.0.", "mid_block.resnets.0."),
        ("middle_block.1.", "mid_block.attentions.0."),
        ("middle_block.2.", "mid_block.resnets.1."),
    ];
    for (from, to) in fixed {
        if let Some(tail) = rest.strip_prefix(from) {
            let tail = if to.contains("resnets") {
                resnet_tail(tail)
            } else {
                tail.to_string()
            };
            return Some(format!("{to}{tail}"));
        }
    }
    let (kind, rest) = rest.split_once('.')?;
    let (index, rest) = rest.split_once('.')?;
    let (module, tail) = rest.split_once('.')?;
    let (index, module): (usize, usize) = (index.parse().ok()?, module.parse().ok()?);
    let per_level = layers + 1;
    match kind {
        "input_blocks" if index >= 1 => {
            let (level, layer) = ((index - 1) / per_level, (index - 1) % per_level);
            if layer == layers {
                let tail = tail.strip_prefix("op.").unwrap_or(tail);
                Some(format!("down_blocks.{level}.downsamplers.0.conv.{tail}"))
            } else if module == 0 {
                Some(format!(
                    "down_blocks.{level}.resnets.{layer}.{}",
                    resnet_tail(tail)
                ))
            } else {
                Some(format!("down_blocks.{level}.attentions.{layer}.{tail}"))
            }
        }
        "output_blocks" => {
            let (level, layer) = (index / per_level, index % per_level);
            let is_upsampler = tail.starts_with("conv.");
            if module == 0 {
                Some(format!(
                    "up_blocks.{level}.resnets.{layer}.{}",
                    resnet_tail(tail)
                ))
            } else if is_upsampler {
                Some(format!("up_blocks.{level}.upsamplers.0.{tail}"))
            } else {
                Some(format!("up_blocks.{level}.attentions.{layer}.{tail}"))
            }
        }
        _ => None,
    }
}

fn resnet_tail(tail: &str) -> String {
    let renames = [
        ("in_layers.0.", "norm1."),
        ("in_layers.2.", "conv1."),
        ("emb_layers.1.", "time_emb_proj."),
        ("out_layers.0.", "norm2."),
        ("out_layers.3.", "conv2."),
        ("skip_connection.", "conv_shortcut."),
    ];
    for (from, to) in renames {
        if let Some(rest) = tail.strip_prefix(from) {
            return format!("{to}{rest}");
        }
    }
    tail.to_string()
}

/// A VAE key (after `first_stage_model.`) as diffusers names it, and whether
/// it is a 1x1-conv attention weight to squeeze.
fn vae_name(rest: &str, levels: usize) -> Option<(String, bool)> {
    let (coder, tail) = rest.split_once('.')?;
    if coder == "quant_conv" || coder == "post_quant_conv" {
        return Some((rest.to_string(), false));
    }
    if coder != "encoder" && coder != "decoder" {
        return None;
    }
    let resnet = |t: &str| t.replace("nin_shortcut.", "conv_shortcut.");
    let name = if let Some(t) = tail.strip_prefix("norm_out.") {
        format!("conv_norm_out.{t}")
    } else if let Some(t) = tail.strip_prefix("mid.block_1.") {
        format!("mid_block.resnets.0.{}", resnet(t))
    } else if let Some(t) = tail.strip_prefix("mid.block_2.") {
        format!("mid_block.resnets.1.{}", resnet(t))
    } else if let Some(t) = tail.strip_prefix("mid.attn_1.") {
        let (module, param) = t.split_once('.')?;
        let module = match module {
            "norm" => "group_norm",
            "q" => "to_q",
            "k" => "to_k",
            "v" => "to_v",
            "proj_out" => "to_out.0",
            _ => return None,
        };
        let squeeze = module != "group_norm" && param == "weight";
        return Some((
            format!("{coder}.mid_block.attentions.0.{module}.{param}"),
            squeeze,
        ));
    } else if let Some(t) = tail.strip_prefix("down.") {
        let (level, t) = t.split_once('.')?;
        if let Some(t) = t.strip_prefix("downsample.") {
            format!("down_blocks.{level}.downsamplers.0.{t}")
        } else {
            let t = t.strip_prefix("block.")?;
            format!("down_blocks.{level}.resnets.{}", resnet(t))
        }
    } else if let Some(t) = tail.strip_prefix("up.") {
        // LDM counts decoder levels from the bottom; diffusers from the top.
        let (level, t) = t.split_once('.')?;
        let level = levels.checked_sub(1 + level.parse::<usize>().ok()?)?;
        if let Some(t) = t.strip_prefix("upsample.") {
            format!("up_blocks.{level}.upsamplers.0.{t}")
        } else {
            let t = t.strip_prefix("block.")?;
            format!("up_blocks.{level}.resnets.{}", resnet(t))
        }
    } else {
        tail.to_string() // conv_in, conv_out
    };
    Some((format!("{coder}.{name}"), false))
}

/// An OpenCLIP text-tower key (after `.model.`) as transformers'
/// CLIPTextModel(WithProjection) names it; a fused in_proj gives three.
fn openclip_names(rest: &str, key: &str) -> Vec<(String, Source)> {
    let same = |n: String| vec![(n, Source::Same(key.to_string()))];
    match rest {
        "token_embedding.weight" => same("text_model.embeddings.token_embedding.weight".into()),
        "positional_embedding" => same("text_model.embeddings.position_embedding.weight".into()),
        "text_projection" => vec![(
            "text_projection.weight".into(),
            Source::Transposed(key.into()),
        )],
        _ => {
            if let Some(t) = rest.strip_prefix("ln_final.") {
                return same(format!("text_model.final_layer_norm.{t}"));
            }
            let Some(t) = rest.strip_prefix("transformer.resblocks.") else {
                return vec![];
            };
            let Some((layer, t)) = t.split_once('.') else {
                return vec![];
            };
            let prefix = format!("text_model.encoder.layers.{layer}.");
            if let Some(param) = t.strip_prefix("attn.in_proj_") {
                return ["q_proj", "k_proj", "v_proj"]
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        (
                            format!("{prefix}self_attn.{p}.{param}"),
                            Source::Third(key.into(), i),
                        )
                    })
                    .collect();
            }
            let renames = [
                ("attn.out_proj.", "self_attn.out_proj."),
                ("ln_1.", "layer_norm1."),
                ("ln_2.", "layer_norm2."),
                ("mlp.c_fc.", "mlp.fc1."),
                ("mlp.c_proj.", "mlp.fc2."),
            ];
            for (from, to) in renames {
                if let Some(param) = t.strip_prefix(from) {
                    return same(format!("{prefix}{to}{param}"));
                }
            }
            vec![]
        }
    }
}
