//! The real architectures the benchmark runs, as the diffusers configs of
//! their public repositories describe them (runwayml/stable-diffusion-v1-5,
//! stabilityai/stable-diffusion-2-1, stabilityai/stable-diffusion-xl-base-1.0).
//! Written out as a model folder without weights, so the engine builds the
//! networks exactly as it builds a downloaded model, and so the PyTorch
//! script (benches/pytorch_bench.py) builds the same ones.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Sd15,
    Sd21,
    Sdxl,
}

impl Arch {
    pub const ALL: [Arch; 3] = [Arch::Sd15, Arch::Sd21, Arch::Sdxl];

    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "sd15" | "sd1.5" | "sd1" => Arch::Sd15,
            "sd21" | "sd2.1" | "sd2" => Arch::Sd21,
            "sdxl" | "xl" => Arch::Sdxl,
            other => bail!("unknown architecture {other:?}: use sd15, sd21 or sdxl"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Sd15 => "sd15",
            Arch::Sd21 => "sd21",
            Arch::Sdxl => "sdxl",
        }
    }

    /// The resolution the model was trained at.
    pub fn native_size(self) -> u32 {
        match self {
            Arch::Sd15 => 512,
            Arch::Sd21 => 768,
            Arch::Sdxl => 1024,
        }
    }

    /// Writes model_index.json and each part's config into `dir`.
    pub fn write_configs(self, dir: &Path) -> Result<()> {
        let write = |part: &str, file: &str, value: Value| -> Result<()> {
            let folder = dir.join(part);
            std::fs::create_dir_all(&folder)
                .with_context(|| format!("cannot create {}", folder.display()))?;
            let path = folder.join(file);
            std::fs::write(&path, serde_json::to_string_pretty(&value)?)
                .with_context(|| format!("cannot write {}", path.display()))
        };
        write("", "model_index.json", self.model_index())?;
        write("unet", "config.json", self.unet())?;
        write("vae", "config.json", self.vae())?;
        write("scheduler", "scheduler_config.json", self.scheduler())?;
        write("text_encoder", "config.json", self.text_encoder())?;
        std::fs::create_dir_all(dir.join("tokenizer"))?;
        if self == Arch::Sdxl {
            write("text_encoder_2", "config.json", openclip_big_g())?;
            std::fs::create_dir_all(dir.join("tokenizer_2"))?;
        }
        Ok(())
    }

    fn model_index(self) -> Value {
        match self {
            Arch::Sdxl => json!({"_class_name": "StableDiffusionXLImg2ImgPipeline",
                                 "force_zeros_for_empty_prompt": true}),
            _ => json!({"_class_name": "StableDiffusionImg2ImgPipeline"}),
        }
    }

    fn unet(self) -> Value {
        let sd_blocks = json!({
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "block_out_channels": [320, 640, 1280, 1280],
        });
        let mut unet = json!({
            "_class_name": "UNet2DConditionModel", "act_fn": "silu", "center_input_sample": false,
            "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4,
            "out_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-5,
            "norm_num_groups": 32,
        });
        let specific = match self {
            Arch::Sd15 => {
                json!({"attention_head_dim": 8, "cross_attention_dim": 768, "sample_size": 64})
            }
            Arch::Sd21 => {
                json!({"attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024,
                                 "sample_size": 96, "use_linear_projection": true, "upcast_attention": true})
            }
            Arch::Sdxl => json!({
                "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                "block_out_channels": [320, 640, 1280], "attention_head_dim": [5, 10, 20],
                "transformer_layers_per_block": [1, 2, 10], "cross_attention_dim": 2048,
                "use_linear_projection": true, "sample_size": 128, "addition_embed_type": "text_time",
                "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816,
            }),
        };
        if self != Arch::Sdxl {
            merge(&mut unet, sd_blocks);
        }
        merge(&mut unet, specific);
        unet
    }

    fn vae(self) -> Value {
        json!({
            "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
            "down_block_types": vec!["DownEncoderBlock2D"; 4], "up_block_types": vec!["UpDecoderBlock2D"; 4],
            "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
            "norm_num_groups": 32, "sample_size": self.native_size(), "force_upcast": true,
            "scaling_factor": if self == Arch::Sdxl { 0.13025 } else { 0.18215 },
        })
    }

    /// Euler (order 1, one UNet call per step) on every side of the comparison.
    fn scheduler(self) -> Value {
        json!({
            "_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "steps_offset": 1,
            "timestep_spacing": "leading",
            "prediction_type": if self == Arch::Sd21 { "v_prediction" } else { "epsilon" },
        })
    }

    fn text_encoder(self) -> Value {
        match self {
            // OpenCLIP ViT-H's text tower, 23 of its 24 layers as SD 2 ships it.
            Arch::Sd21 => clip_config(1024, 4096, 23, 16, "gelu", 512),
            _ => clip_config(768, 3072, 12, 12, "quick_gelu", 768),
        }
    }
}

/// SDXL's second text encoder: OpenCLIP ViT-bigG's text tower with projection.
fn openclip_big_g() -> Value {
    let mut c = clip_config(1280, 5120, 32, 20, "gelu", 1280);
    merge(
        &mut c,
        json!({"architectures": ["CLIPTextModelWithProjection"]}),
    );
    c
}

fn clip_config(
    hidden: usize,
    mlp: usize,
    layers: usize,
    heads: usize,
    act: &str,
    proj: usize,
) -> Value {
    json!({
        "architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "hidden_size": hidden,
        "intermediate_size": mlp, "num_hidden_layers": layers, "num_attention_heads": heads,
        "hidden_act": act, "projection_dim": proj, "vocab_size": 49408, "max_position_embeddings": 77,
        "layer_norm_eps": 1e-5, "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407,
    })
}

fn merge(base: &mut Value, extra: Value) {
    if let (Value::Object(b), Value::Object(e)) = (base, extra) {
        b.extend(e);
    }
}
