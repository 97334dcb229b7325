//! Model configs read from a diffusers-layout folder (`unet/config.json`,
//! `vae/config.json`, `text_encoder/config.json`), checked for fields this
//! engine cannot honour, and translated into the networks' own configs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_transformers::models::stable_diffusion::unet_2d::{
    BlockConfig, UNet2DConditionModelConfig,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Reads and parses one JSON config file, naming it in any error.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read {}: a diffusers model folder needs this file",
            path.display()
        )
    })?;
    serde_json::from_str(&python_json_to_strict(&text))
        .with_context(|| format!("{} is not a valid config", path.display()))
}

/// Python's json module writes `Infinity`, `-Infinity` and `NaN` (diffusers'
/// DPM configs carry `"lambda_min_clipped": -Infinity`); strict JSON has no
/// such tokens. Outside strings they become `null`, read as the default.
fn python_json_to_strict(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            in_string = c != '"' || escaped;
            escaped = c == '\\' && !escaped;
        } else if c == '"' {
            in_string = true;
        } else if let Some(token) = ["-Infinity", "Infinity", "NaN"]
            .iter()
            .find(|t| rest.starts_with(**t))
        {
            out.push_str("null");
            rest = &rest[token.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Fields that change the network and that this engine only supports with
/// one value (or null). Anything else is named in the error instead of being
/// silently ignored.
fn check_fixed_fields(raw: &Value, path: &Path, fixed: &[(&str, &[Value])]) -> Result<()> {
    for (key, allowed) in fixed {
        let Some(value) = raw.get(*key) else { continue };
        if value.is_null() || allowed.contains(value) {
            continue;
        }
        let allowed: Vec<String> = allowed.iter().map(|v| v.to_string()).collect();
        bail!(
            "{}: `{key}` = {value} is not supported (supported: {}); this model's architecture \
             is not one atelier can run yet",
            path.display(),
            if allowed.is_empty() {
                "null".to_string()
            } else {
                allowed.join(", ")
            }
        );
    }
    Ok(())
}

/// An integer, or a per-block list of integers.
fn per_block(raw: &Value, key: &str, n: usize, path: &Path) -> Result<Option<Vec<usize>>> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(x)) => {
            let x = x.as_u64().with_context(|| {
                format!("{}: `{key}` must be a positive integer", path.display())
            })?;
            Ok(Some(vec![x as usize; n]))
        }
        Some(Value::Array(xs)) => {
            if xs.len() != n {
                bail!(
                    "{}: `{key}` has {} entries but the model has {n} blocks",
                    path.display(),
                    xs.len()
                );
            }
            xs.iter()
                .map(|x| {
                    x.as_u64().map(|x| x as usize).with_context(|| {
                        format!(
                            "{}: `{key}` entries must be positive integers",
                            path.display()
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()
                .map(Some)
        }
        Some(other) => bail!(
            "{}: `{key}` = {other} must be an integer or a list",
            path.display()
        ),
    }
}

fn get_or<T: DeserializeOwned>(raw: &Value, key: &str, default: T, path: &Path) -> Result<T> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => serde_json::from_value(v.clone())
            .with_context(|| format!("{}: `{key}` = {v} has the wrong type", path.display())),
    }
}

fn required<T: DeserializeOwned>(raw: &Value, key: &str, path: &Path) -> Result<T> {
    let v = raw
        .get(key)
        .with_context(|| format!("{}: missing the field `{key}`", path.display()))?;
    serde_json::from_value(v.clone())
        .with_context(|| format!("{}: `{key}` = {v} has the wrong type", path.display()))
}

/// The UNet as this engine builds it.
#[derive(Debug, Clone)]
pub struct UnetSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    pub cross_attention_dim: usize,
    /// Attention computed in f32 even when the model runs in half precision
    /// (SD 2.1 sets this: its attention overflows in f16).
    pub upcast_attention: bool,
    /// SDXL's added conditioning (`addition_embed_type = "text_time"`).
    pub addition: Option<AdditionSpec>,
    pub config: UNet2DConditionModelConfig,
}

/// SDXL's added conditioning: the pooled text embedding and the size/crop
/// time ids, embedded and added to the timestep embedding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdditionSpec {
    /// Sinusoidal features per time id (`addition_time_embed_dim`).
    pub time_embed_dim: usize,
    /// Input width of `add_embedding` (pooled dim + time ids x time_embed_dim).
    pub input_dim: usize,
}

impl AdditionSpec {
    /// SDXL base conditions on six time ids: original size, crop top-left,
    /// target size.
    pub const TIME_IDS: usize = 6;

    /// The pooled text embedding width the UNet expects.
    pub fn pooled_dim(&self) -> Option<usize> {
        self.input_dim
            .checked_sub(Self::TIME_IDS * self.time_embed_dim)
            .filter(|&d| d > 0)
    }
}

pub fn unet_spec(dir: &Path) -> Result<UnetSpec> {
    let path = dir.join("config.json");
    let raw: Value = read_json(&path)?;
    let s = |v: &str| Value::String(v.to_string());
    check_fixed_fields(
        &raw,
        &path,
        &[
            ("act_fn", &[s("silu")]),
            ("addition_embed_type", &[s("text_time")]),
            ("class_embed_type", &[]),
            ("num_class_embeds", &[]),
            ("encoder_hid_dim", &[]),
            ("encoder_hid_dim_type", &[]),
            ("time_cond_proj_dim", &[]),
            ("time_embedding_dim", &[]),
            ("time_embedding_act_fn", &[]),
            ("timestep_post_act", &[]),
            ("time_embedding_type", &[s("positional")]),
            ("resnet_time_scale_shift", &[s("default")]),
            ("resnet_skip_time_act", &[Value::Bool(false)]),
            (
                "resnet_out_scale_factor",
                &[serde_json::json!(1.0), serde_json::json!(1)],
            ),
            ("only_cross_attention", &[Value::Bool(false)]),
            ("dual_cross_attention", &[Value::Bool(false)]),
            ("mid_block_only_cross_attention", &[Value::Bool(false)]),
            ("mid_block_type", &[s("UNetMidBlock2DCrossAttn")]),
            ("cross_attention_norm", &[]),
            ("conv_in_kernel", &[serde_json::json!(3)]),
            ("conv_out_kernel", &[serde_json::json!(3)]),
            ("attention_type", &[s("default")]),
            ("class_embeddings_concat", &[Value::Bool(false)]),
            ("reverse_transformer_layers_per_block", &[]),
        ],
    )?;

    let block_out_channels: Vec<usize> = required(&raw, "block_out_channels", &path)?;
    let n = block_out_channels.len();
    if n == 0 {
        bail!("{}: `block_out_channels` is empty", path.display());
    }
    let down: Vec<String> = required(&raw, "down_block_types", &path)?;
    let up: Vec<String> = required(&raw, "up_block_types", &path)?;
    if down.len() != n || up.len() != n {
        bail!(
            "{}: {} down blocks and {} up blocks for {n} entries of `block_out_channels`",
            path.display(),
            down.len(),
            up.len()
        );
    }
    let mut cross = Vec::with_capacity(n);
    for (i, kind) in down.iter().enumerate() {
        let mirror = &up[n - 1 - i];
        let (has_cross, mirror_expected) = match kind.as_str() {
            "CrossAttnDownBlock2D" => (true, "CrossAttnUpBlock2D"),
            "DownBlock2D" => (false, "UpBlock2D"),
            other => bail!(
                "{}: down block type `{other}` is not supported (CrossAttnDownBlock2D, DownBlock2D)",
                path.display()
            ),
        };
        if mirror != mirror_expected {
            bail!(
                "{}: up block {} is `{mirror}` but mirrors down block {i} `{kind}`; expected `{mirror_expected}`",
                path.display(),
                n - 1 - i
            );
        }
        cross.push(has_cross);
    }

    let layers = per_block(&raw, "layers_per_block", n, &path)?.unwrap_or(vec![2; n]);
    if layers.iter().any(|&l| l != layers[0]) {
        bail!(
            "{}: a different `layers_per_block` per block is not supported",
            path.display()
        );
    }
    let cross_dims = per_block(&raw, "cross_attention_dim", n, &path)?.unwrap_or(vec![1280; n]);
    if cross_dims.iter().any(|&d| d != cross_dims[0]) {
        bail!(
            "{}: a different `cross_attention_dim` per block is not supported",
            path.display()
        );
    }
    // diffusers' historical naming: `attention_head_dim` holds the number of
    // heads unless `num_attention_heads` is given.
    let heads = match per_block(&raw, "num_attention_heads", n, &path)? {
        Some(h) => h,
        None => per_block(&raw, "attention_head_dim", n, &path)?.unwrap_or(vec![8; n]),
    };
    let transformer_layers =
        per_block(&raw, "transformer_layers_per_block", n, &path)?.unwrap_or(vec![1; n]);
    for (i, (&channels, &h)) in block_out_channels.iter().zip(&heads).enumerate() {
        if h == 0 || channels % h != 0 {
            bail!(
                "{}: block {i} has {channels} channels, not divisible into {h} attention heads",
                path.display()
            );
        }
    }
    let norm_num_groups: usize = get_or(&raw, "norm_num_groups", 32, &path)?;
    if let Some(c) = block_out_channels
        .iter()
        .find(|&&c| c % norm_num_groups != 0)
    {
        bail!(
            "{}: {c} channels are not divisible into {norm_num_groups} norm groups",
            path.display()
        );
    }

    let blocks = (0..n)
        .map(|i| BlockConfig {
            out_channels: block_out_channels[i],
            use_cross_attn: cross[i].then_some(transformer_layers[i]),
            attention_head_dim: heads[i],
        })
        .collect();
    let config = UNet2DConditionModelConfig {
        center_input_sample: get_or(&raw, "center_input_sample", false, &path)?,
        flip_sin_to_cos: get_or(&raw, "flip_sin_to_cos", true, &path)?,
        freq_shift: get_or(&raw, "freq_shift", 0.0, &path)?,
        blocks,
        layers_per_block: layers[0],
        downsample_padding: get_or(&raw, "downsample_padding", 1, &path)?,
        mid_block_scale_factor: get_or(&raw, "mid_block_scale_factor", 1.0, &path)?,
        norm_num_groups,
        norm_eps: get_or(&raw, "norm_eps", 1e-5, &path)?,
        cross_attention_dim: cross_dims[0],
        sliced_attention_size: None,
        use_linear_projection: get_or(&raw, "use_linear_projection", false, &path)?,
    };
    let addition = match raw.get("addition_embed_type").and_then(Value::as_str) {
        Some(_) => {
            let spec = AdditionSpec {
                time_embed_dim: required(&raw, "addition_time_embed_dim", &path)?,
                input_dim: required(&raw, "projection_class_embeddings_input_dim", &path)?,
            };
            if spec.pooled_dim().is_none() {
                bail!(
                    "{}: `projection_class_embeddings_input_dim` {} leaves no room for the pooled \
                     text embedding beside {} time ids of {} features (an SDXL refiner, which \
                     conditions on an aesthetic score, is not supported)",
                    path.display(),
                    spec.input_dim,
                    AdditionSpec::TIME_IDS,
                    spec.time_embed_dim
                );
            }
            Some(spec)
        }
        None => None,
    };
    Ok(UnetSpec {
        addition,
        in_channels: get_or(&raw, "in_channels", 4, &path)?,
        out_channels: get_or(&raw, "out_channels", 4, &path)?,
        cross_attention_dim: cross_dims[0],
        upcast_attention: get_or(&raw, "upcast_attention", false, &path)?,
        config,
    })
}

/// The VAE as this engine builds it.
#[derive(Debug, Clone)]
pub struct VaeSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    pub latent_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub norm_num_groups: usize,
    pub scaling_factor: f64,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    /// The VAE overflows in f16 and must run in f32 (read for SDXL, as diffusers does).
    pub force_upcast: bool,
    /// Per-channel latent statistics some VAEs normalise with (both or none).
    pub latents_mean_std: Option<(Vec<f64>, Vec<f64>)>,
}

pub fn vae_spec(dir: &Path) -> Result<VaeSpec> {
    let path = dir.join("config.json");
    let raw: Value = read_json(&path)?;
    let s = |v: &str| Value::String(v.to_string());
    check_fixed_fields(
        &raw,
        &path,
        &[
            ("act_fn", &[s("silu")]),
            (
                "shift_factor",
                &[serde_json::json!(0.0), serde_json::json!(0)],
            ),
            ("mid_block_add_attention", &[Value::Bool(true)]),
        ],
    )?;
    let block_out_channels: Vec<usize> = required(&raw, "block_out_channels", &path)?;
    let n = block_out_channels.len();
    if n == 0 {
        bail!("{}: `block_out_channels` is empty", path.display());
    }
    let down: Vec<String> = get_or(
        &raw,
        "down_block_types",
        vec!["DownEncoderBlock2D".into(); n],
        &path,
    )?;
    let up: Vec<String> = get_or(
        &raw,
        "up_block_types",
        vec!["UpDecoderBlock2D".into(); n],
        &path,
    )?;
    if down.len() != n || up.len() != n {
        bail!(
            "{}: block types do not match `block_out_channels`",
            path.display()
        );
    }
    if let Some(t) = down.iter().find(|t| *t != "DownEncoderBlock2D") {
        bail!("{}: VAE down block `{t}` is not supported", path.display());
    }
    if let Some(t) = up.iter().find(|t| *t != "UpDecoderBlock2D") {
        bail!("{}: VAE up block `{t}` is not supported", path.display());
    }
    let norm_num_groups: usize = get_or(&raw, "norm_num_groups", 32, &path)?;
    if let Some(c) = block_out_channels
        .iter()
        .find(|&&c| c % norm_num_groups != 0)
    {
        bail!(
            "{}: {c} channels are not divisible into {norm_num_groups} norm groups",
            path.display()
        );
    }
    let latent_channels: usize = get_or(&raw, "latent_channels", 4, &path)?;
    let mean: Option<Vec<f64>> = get_or(&raw, "latents_mean", None, &path)?;
    let std: Option<Vec<f64>> = get_or(&raw, "latents_std", None, &path)?;
    let latents_mean_std = match (mean, std) {
        (Some(m), Some(s)) if m.len() == latent_channels && s.len() == latent_channels => {
            Some((m, s))
        }
        (None, None) => None,
        _ => bail!(
            "{}: `latents_mean` and `latents_std` must both be given, with {latent_channels} \
             entries each",
            path.display()
        ),
    };
    Ok(VaeSpec {
        latents_mean_std,
        in_channels: get_or(&raw, "in_channels", 3, &path)?,
        out_channels: get_or(&raw, "out_channels", 3, &path)?,
        latent_channels,
        block_out_channels,
        layers_per_block: get_or(&raw, "layers_per_block", 1, &path)?,
        norm_num_groups,
        scaling_factor: get_or(&raw, "scaling_factor", 0.18215, &path)?,
        use_quant_conv: get_or(&raw, "use_quant_conv", true, &path)?,
        use_post_quant_conv: get_or(&raw, "use_post_quant_conv", true, &path)?,
        force_upcast: get_or(&raw, "force_upcast", true, &path)?,
    })
}

/// Activation of the CLIP text encoder's MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipActivation {
    QuickGelu,
    Gelu,
}

/// The CLIP text encoder as this engine builds it.
#[derive(Debug, Clone)]
pub struct ClipSpec {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub layer_norm_eps: f64,
    pub activation: ClipActivation,
    /// Width of `text_projection` (CLIPTextModelWithProjection, SDXL's second encoder).
    pub projection_dim: Option<usize>,
}

pub fn clip_spec(dir: &Path) -> Result<ClipSpec> {
    let path = dir.join("config.json");
    let raw: Value = read_json(&path)?;
    // Some repositories nest the text config (a full CLIPModel config).
    let raw = raw.get("text_config").cloned().unwrap_or(raw);
    let act: String = get_or(&raw, "hidden_act", "quick_gelu".to_string(), &path)?;
    let activation = match act.as_str() {
        "quick_gelu" => ClipActivation::QuickGelu,
        "gelu" => ClipActivation::Gelu,
        other => bail!(
            "{}: `hidden_act` = \"{other}\" is not supported (quick_gelu, gelu)",
            path.display()
        ),
    };
    let spec = ClipSpec {
        vocab_size: get_or(&raw, "vocab_size", 49408, &path)?,
        hidden_size: get_or(&raw, "hidden_size", 512, &path)?,
        intermediate_size: get_or(&raw, "intermediate_size", 2048, &path)?,
        num_hidden_layers: get_or(&raw, "num_hidden_layers", 12, &path)?,
        num_attention_heads: get_or(&raw, "num_attention_heads", 8, &path)?,
        max_position_embeddings: get_or(&raw, "max_position_embeddings", 77, &path)?,
        layer_norm_eps: get_or(&raw, "layer_norm_eps", 1e-5, &path)?,
        activation,
        projection_dim: get_or(&raw, "projection_dim", None, &path)?,
    };
    if spec.num_attention_heads == 0 || !spec.hidden_size.is_multiple_of(spec.num_attention_heads) {
        bail!(
            "{}: `hidden_size` {} is not divisible into {} heads",
            path.display(),
            spec.hidden_size,
            spec.num_attention_heads
        );
    }
    if spec.max_position_embeddings < super::tokenizer::MAX_TOKENS {
        bail!(
            "{}: `max_position_embeddings` {} is below the {} tokens SD prompts use",
            path.display(),
            spec.max_position_embeddings,
            super::tokenizer::MAX_TOKENS
        );
    }
    Ok(spec)
}

/// The parts of a diffusers model folder.
#[derive(Debug, Clone)]
pub struct ModelLayout {
    pub root: PathBuf,
}

impl ModelLayout {
    pub fn open(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            bail!(
                "model folder {} does not exist; give --model a folder in diffusers layout \
                 (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)",
                root.display()
            );
        }
        for part in ["unet", "vae", "text_encoder", "tokenizer", "scheduler"] {
            if !root.join(part).is_dir() {
                bail!(
                    "model folder {} has no {part}/ folder; a diffusers Stable Diffusion model \
                     has unet/, vae/, text_encoder/, tokenizer/ and scheduler/",
                    root.display()
                );
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    pub fn part(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// (text encoder, tokenizer) folders: one pair, or two for SDXL.
    pub fn text_encoder_parts(&self) -> Vec<(&'static str, &'static str)> {
        let mut parts = vec![("text_encoder", "tokenizer")];
        if self.part("text_encoder_2").is_dir() {
            parts.push(("text_encoder_2", "tokenizer_2"));
        }
        parts
    }

    /// `force_zeros_for_empty_prompt` from model_index.json; diffusers' SDXL
    /// pipelines default it to true, the SD 1.x/2.x ones do not have it.
    pub fn force_zeros_for_empty_prompt(&self, xl: bool) -> Result<bool> {
        let path = self.part("model_index.json");
        if !path.is_file() {
            return Ok(xl);
        }
        let raw: Value = read_json(&path)?;
        get_or(&raw, "force_zeros_for_empty_prompt", xl, &path)
    }
}
