//! `atelier models`: what is on this machine — diffusers models in the
//! Hugging Face cache and in configured folders, and single-file
//! checkpoints — with architecture, precision and size on disk.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::cache::{cached_snapshot, relative_files, repo_of_dir};
use super::download::complete;
use super::needed::Need;
use super::ALIASES;
use crate::engine::single_file::{detect, CheckpointArch};

#[derive(Debug, Clone, Serialize)]
pub struct LocalModel {
    /// What to pass to --model.
    pub name: String,
    /// The alias naming the same repository, if any.
    pub alias: Option<String>,
    pub arch: String,
    /// Precisions stored (f32, fp16 variant, ...).
    pub dtypes: Vec<String>,
    pub size_bytes: u64,
    pub path: PathBuf,
    /// hf-cache, folder or checkpoint.
    pub kind: &'static str,
    /// What is missing for the engine, if anything.
    pub missing: Option<String>,
}

/// Models in the hub cache and under `folders`.
pub fn list(cache: Option<&Path>, folders: &[PathBuf]) -> Vec<LocalModel> {
    let mut out = Vec::new();
    if let Some(cache) = cache {
        let mut repos: Vec<_> = std::fs::read_dir(cache)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        repos.sort();
        for dir in repos {
            let Some(repo) = dir
                .file_name()
                .and_then(|n| repo_of_dir(&n.to_string_lossy()))
            else {
                continue;
            };
            let Some(snapshot) = cached_snapshot(cache, &repo) else {
                continue;
            };
            if !snapshot.join("unet/config.json").is_file() {
                continue; // not a diffusion model (a tokenizer, an LLM, ...)
            }
            let mut model = diffusers_model(&snapshot, repo.clone(), "hf-cache");
            model.size_bytes = folder_size(&dir.join("blobs"));
            model.alias = ALIASES
                .iter()
                .find(|(_, r)| *r == repo)
                .map(|(a, _)| a.to_string());
            out.push(model);
        }
    }
    for folder in folders {
        if folder.join("unet/config.json").is_file() {
            out.push(diffusers_model(
                folder,
                folder.display().to_string(),
                "folder",
            ));
            continue;
        }
        let mut entries: Vec<_> = std::fs::read_dir(folder)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        entries.sort();
        for path in entries {
            if path.join("unet/config.json").is_file() {
                out.push(diffusers_model(&path, path.display().to_string(), "folder"));
            } else if path.extension().is_some_and(|e| e == "safetensors") {
                if let Ok(arch) = detect(&path) {
                    out.push(LocalModel {
                        name: path.display().to_string(),
                        alias: None,
                        arch: checkpoint_arch_name(arch).into(),
                        dtypes: header_dtype(&path).into_iter().collect(),
                        size_bytes: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
                        path,
                        kind: "checkpoint",
                        missing: None,
                    });
                }
            }
        }
    }
    out
}

fn checkpoint_arch_name(arch: CheckpointArch) -> &'static str {
    match arch {
        CheckpointArch::Sd1 => "SD 1.x",
        CheckpointArch::Sd2 => "SD 2.x",
        CheckpointArch::Sdxl => "SDXL",
    }
}

fn diffusers_model(dir: &Path, name: String, kind: &'static str) -> LocalModel {
    let files = relative_files(dir);
    let mut dtypes = Vec::new();
    for f in files
        .iter()
        .filter(|f| f.starts_with("unet/") && f.ends_with(".safetensors"))
    {
        let dtype = if f.contains(".fp16.") {
            Some("fp16".to_string())
        } else {
            header_dtype(&dir.join(f))
        };
        if let Some(d) = dtype.filter(|d| !dtypes.contains(d)) {
            dtypes.push(d);
        }
    }
    LocalModel {
        name,
        alias: None,
        arch: arch_of(dir),
        dtypes,
        size_bytes: folder_size(dir),
        path: dir.to_path_buf(),
        kind,
        missing: complete(dir, Need::Everything { prefer_half: false })
            .err()
            .map(|e| format!("{e:#}")),
    }
}

/// SD 1.x / 2.x / XL from the UNet config (and v-prediction from the scheduler).
fn arch_of(dir: &Path) -> String {
    let read = |p: &str| -> serde_json::Value {
        std::fs::read_to_string(dir.join(p))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    };
    let unet = read("unet/config.json");
    let text = read("text_encoder/config.json");
    // OpenAI CLIP (quick_gelu) conditions SD 1.x, OpenCLIP (gelu) SD 2.x.
    let mut arch = if unet
        .get("addition_embed_type")
        .is_some_and(|v| !v.is_null())
    {
        "SDXL".to_string()
    } else if text["hidden_act"] == "gelu" {
        "SD 2.x".to_string()
    } else {
        "SD 1.x".to_string()
    };
    if read("scheduler/scheduler_config.json")["prediction_type"] == "v_prediction" {
        arch.push_str(" (v)");
    }
    arch
}

/// The dtype of the first tensor in a safetensors header.
fn header_dtype(path: &Path) -> Option<String> {
    let (map, _) = crate::engine::weights::read_safetensors_header(path).ok()?;
    map.iter()
        .find(|(k, _)| *k != "__metadata__")
        .and_then(|(_, v)| v["dtype"].as_str())
        .map(|d| d.to_ascii_lowercase())
}

/// Bytes under `dir` (links followed).
fn folder_size(dir: &Path) -> u64 {
    relative_files(dir)
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}
