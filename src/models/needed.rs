//! Which of a repository's files the engine reads: configs, the tokenizers,
//! one weight variant per network. Everything else (safety checkers, `.bin`
//! and `.ckpt` copies, the other precision) is never downloaded.

use anyhow::{bail, Result};

use crate::engine::weights::weight_candidates;

/// Networks with weights, and the stem of their weight files.
const NETWORKS: [(&str, &str); 4] = [
    ("unet", "diffusion_pytorch_model"),
    ("vae", "diffusion_pytorch_model"),
    ("text_encoder", "model"),
    ("text_encoder_2", "model"),
];
const TOKENIZERS: [&str; 2] = ["tokenizer", "tokenizer_2"];
const TOKENIZER_FILES: [&str; 5] = [
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// What to fetch: a whole model, or only what a single-file checkpoint
/// takes from its base model (configs and tokenizers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Everything { prefer_half: bool },
    ConfigsOnly,
}

/// The files to fetch from a repository holding `files`. Sharded weights
/// appear as their index; the shards it names are needed too.
pub fn needed_files(files: &[String], need: Need) -> Result<Vec<String>> {
    let has = |f: &str| files.iter().any(|x| x == f);
    let mut needed = Vec::new();
    let mut missing = Vec::new();
    if has("model_index.json") {
        needed.push("model_index.json".to_string());
    }
    let scheduler = "scheduler/scheduler_config.json";
    if has(scheduler) {
        needed.push(scheduler.into());
    } else {
        missing.push(scheduler.to_string());
    }
    for (part, stem) in NETWORKS {
        let config = format!("{part}/config.json");
        let optional = part == "text_encoder_2";
        if !has(&config) {
            if !optional {
                missing.push(config);
            }
            continue;
        }
        needed.push(config);
        let Need::Everything { prefer_half } = need else {
            continue;
        };
        match weight_candidates(stem, prefer_half)
            .into_iter()
            .map(|name| format!("{part}/{name}"))
            .find(|f| has(f))
        {
            Some(weights) => needed.push(weights),
            None => missing.push(format!("{part}/{stem}.safetensors")),
        }
    }
    for (i, tokenizer) in TOKENIZERS.iter().enumerate() {
        let present: Vec<String> = TOKENIZER_FILES
            .iter()
            .map(|f| format!("{tokenizer}/{f}"))
            .filter(|f| has(f))
            .collect();
        let usable = present.iter().any(|f| f.ends_with("tokenizer.json"))
            || present.iter().any(|f| f.ends_with("vocab.json"))
                && present.iter().any(|f| f.ends_with("merges.txt"));
        let wanted = i == 0 || has("text_encoder_2/config.json");
        if wanted && !usable {
            missing.push(format!(
                "{tokenizer}/vocab.json + merges.txt (or tokenizer.json)"
            ));
        }
        needed.extend(present);
    }
    if !missing.is_empty() {
        bail!("missing: {}", missing.join(", "));
    }
    Ok(needed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    const SD: &[&str] = &[
        "model_index.json",
        "scheduler/scheduler_config.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.bin",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json",
        "text_encoder/model.fp16.safetensors",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "tokenizer/tokenizer_config.json",
        "safety_checker/model.safetensors",
        "v1-5-pruned.ckpt",
    ];

    #[test]
    fn half_precision_takes_the_fp16_variants_and_nothing_else() {
        let needed = needed_files(&listing(SD), Need::Everything { prefer_half: true }).unwrap();
        assert!(needed.contains(&"unet/diffusion_pytorch_model.fp16.safetensors".into()));
        assert!(!needed.contains(&"unet/diffusion_pytorch_model.safetensors".into()));
        // The VAE has no variant: its full file.
        assert!(needed.contains(&"vae/diffusion_pytorch_model.safetensors".into()));
        assert!(!needed
            .iter()
            .any(|f| f.contains("safety_checker") || f.ends_with(".bin") || f.ends_with(".ckpt")));
    }

    #[test]
    fn full_precision_prefers_full_files_and_falls_back_to_the_variant() {
        let needed = needed_files(&listing(SD), Need::Everything { prefer_half: false }).unwrap();
        assert!(needed.contains(&"unet/diffusion_pytorch_model.safetensors".into()));
        assert!(needed.contains(&"text_encoder/model.fp16.safetensors".into()));
    }

    #[test]
    fn a_base_model_for_a_checkpoint_gives_configs_and_tokenizers_only() {
        let needed = needed_files(&listing(SD), Need::ConfigsOnly).unwrap();
        assert!(needed.contains(&"unet/config.json".into()));
        assert!(needed.contains(&"tokenizer/vocab.json".into()));
        assert!(
            !needed.iter().any(|f| f.ends_with(".safetensors")),
            "{needed:?}"
        );
    }

    #[test]
    fn an_incomplete_repository_names_what_is_missing() {
        let err = needed_files(&listing(&SD[..4]), Need::Everything { prefer_half: true })
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("vae/config.json") && err.contains("tokenizer/"),
            "{err}"
        );
    }
}
