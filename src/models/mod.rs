//! Turning `--model DIR|FILE|REPO|ALIAS` into weights on disk: a diffusers
//! folder, a single-file checkpoint, or a Hugging Face repository found in
//! the hub cache (downloaded into it when missing).

pub mod cache;
pub mod download;
pub mod list;
pub mod needed;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};

pub use cache::{cached_snapshot, hf_cache_dir};
pub use download::Hub;

/// Short names for the models people use most.
pub const ALIASES: &[(&str, &str)] = &[
    ("sd-turbo", "stabilityai/sd-turbo"),
    ("sdxl-turbo", "stabilityai/sdxl-turbo"),
    ("sdxl", "stabilityai/stable-diffusion-xl-base-1.0"),
    ("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
    ("sd21", "stabilityai/stable-diffusion-2-1"),
    ("sd21-base", "stabilityai/stable-diffusion-2-1-base"),
];

/// The model out of the box.
pub const DEFAULT_MODEL: &str = "sd-turbo";

/// Steps and guidance that suit a model when the user gives none: distilled
/// turbo models (sd-turbo, sdxl-turbo) take a few steps without guidance;
/// the others diffusers' usual 30 steps at guidance 7.5.
pub fn recommended_steps_guidance(model: &str) -> (usize, f64) {
    let turbo = [model, repo_of(model)]
        .iter()
        .any(|m| m.to_ascii_lowercase().contains("turbo"));
    if turbo {
        (4, 0.0)
    } else {
        (30, 7.5)
    }
}

static DOWNLOAD_PROGRESS: AtomicBool = AtomicBool::new(true);

/// Progress bars for downloads go to stderr; the workstation owns the
/// screen and turns them off.
pub fn set_download_progress(on: bool) {
    DOWNLOAD_PROGRESS.store(on, Ordering::Relaxed);
}

/// Where a model's weights are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelLocation {
    /// A diffusers-layout folder.
    Folder(PathBuf),
    /// One `.safetensors` checkpoint with LDM key names (A1111, ComfyUI,
    /// civitai); configs and tokenizers come from `base`, a diffusers
    /// folder of the same architecture.
    SingleFile { file: PathBuf, base: PathBuf },
}

impl ModelLocation {
    pub fn path(&self) -> &Path {
        match self {
            ModelLocation::Folder(p) => p,
            ModelLocation::SingleFile { file, .. } => file,
        }
    }
}

/// The repository an alias names, or the name itself.
pub fn repo_of(name: &str) -> &str {
    ALIASES
        .iter()
        .find(|(alias, _)| *alias == name)
        .map(|(_, repo)| *repo)
        .unwrap_or(name)
}

/// The alias whose configs a checkpoint takes. SD 2.x comes as 768 px
/// v-prediction (`sd21`) or 512 px epsilon (`sd21-base`), which the keys do
/// not tell apart; A1111's convention does: a `NAME.yaml` beside the file
/// with `parameterization: "v"` for the former. Without a yaml, v-prediction.
pub fn checkpoint_base(
    path: &Path,
    arch: crate::engine::single_file::CheckpointArch,
) -> &'static str {
    use crate::engine::single_file::CheckpointArch;
    if arch != CheckpointArch::Sd2 {
        return arch.base_alias();
    }
    match std::fs::read_to_string(path.with_extension("yaml")) {
        Ok(yaml) => {
            let v = yaml.lines().any(|l| {
                l.trim()
                    .strip_prefix("parameterization:")
                    .is_some_and(|v| v.trim().trim_matches(|c| c == '"' || c == '\'') == "v")
            });
            if v {
                "sd21"
            } else {
                "sd21-base"
            }
        }
        Err(_) => "sd21",
    }
}

/// Resolves a model argument; `prefer_half` picks fp16 variants when
/// downloading (GPU runs).
/// Whether `name` can name a model at all, without the network: a folder
/// or file here, an alias, or something shaped like a Hugging Face
/// repository (org/name). Checked before a run is recorded, and by `init`.
pub fn check_name(name: &str) -> Result<()> {
    let path = Path::new(name);
    if path.exists() {
        return Ok(());
    }
    let repo = repo_of(name);
    let looks_like_repo =
        repo.split('/').count() == 2 && !repo.starts_with('.') && !path.is_absolute();
    if !looks_like_repo {
        bail!(
            "model {name} does not exist; give --model a diffusers folder, a .safetensors \
             checkpoint, a Hugging Face repository (org/name) or one of: {}",
            ALIASES
                .iter()
                .map(|(a, _)| *a)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

pub fn resolve(name: &str, prefer_half: bool) -> Result<ModelLocation> {
    let path = Path::new(name);
    if path.is_dir() {
        return Ok(ModelLocation::Folder(path.to_path_buf()));
    }
    if path.is_file() {
        let arch = crate::engine::single_file::detect(path)?;
        let base = Hub::from_env(DOWNLOAD_PROGRESS.load(Ordering::Relaxed))?
            .fetch_configs(repo_of(checkpoint_base(path, arch)))?;
        return Ok(ModelLocation::SingleFile {
            file: path.to_path_buf(),
            base,
        });
    }
    check_name(name)?;
    let repo = repo_of(name);
    let hub = Hub::from_env(DOWNLOAD_PROGRESS.load(Ordering::Relaxed))?;
    let dir = hub.fetch(repo, prefer_half).with_context(|| {
        if repo == name {
            format!("--model {name}: no such folder or file here, so it was taken as a Hugging Face repository")
        } else {
            format!("--model {name} is the alias of {repo}")
        }
    })?;
    Ok(ModelLocation::Folder(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_main_snapshot_in_a_cache() {
        let cache = tempfile::tempdir().unwrap();
        let root = cache.path().join("models--stabilityai--sd-turbo");
        std::fs::create_dir_all(root.join("snapshots/abc123/unet")).unwrap();
        std::fs::create_dir_all(root.join("snapshots/old")).unwrap();
        std::fs::create_dir_all(root.join("refs")).unwrap();
        std::fs::write(root.join("refs/main"), "abc123\n").unwrap();
        assert_eq!(
            cached_snapshot(cache.path(), "stabilityai/sd-turbo").unwrap(),
            root.join("snapshots/abc123")
        );
        assert!(cached_snapshot(cache.path(), "other/model").is_none());
    }

    #[test]
    fn turbo_models_default_to_few_steps_without_guidance() {
        assert_eq!(recommended_steps_guidance("sdxl-turbo"), (4, 0.0));
        assert_eq!(recommended_steps_guidance("stabilityai/sd-turbo"), (4, 0.0));
        assert_eq!(recommended_steps_guidance("sdxl"), (30, 7.5));
        assert_eq!(
            recommended_steps_guidance("/models/dreamshaper_8.safetensors"),
            (30, 7.5)
        );
    }

    #[test]
    fn an_sd2_checkpoint_takes_its_base_from_an_a1111_yaml_beside_it() {
        use crate::engine::single_file::CheckpointArch;
        let dir = tempfile::tempdir().unwrap();
        let ckpt = dir.path().join("model.safetensors");
        assert_eq!(checkpoint_base(&ckpt, CheckpointArch::Sd2), "sd21");
        std::fs::write(
            dir.path().join("model.yaml"),
            "model:\n  params:\n    parameterization: \"v\"\n",
        )
        .unwrap();
        assert_eq!(checkpoint_base(&ckpt, CheckpointArch::Sd2), "sd21");
        std::fs::write(
            dir.path().join("model.yaml"),
            "model:\n  params:\n    linear_start: 0.00085\n",
        )
        .unwrap();
        assert_eq!(checkpoint_base(&ckpt, CheckpointArch::Sd2), "sd21-base");
        assert_eq!(checkpoint_base(&ckpt, CheckpointArch::Sdxl), "sdxl");
    }

    #[test]
    fn a_missing_path_that_is_no_repo_names_the_choices() {
        let err = resolve("./no/such/folder", false).unwrap_err().to_string();
        assert!(
            err.contains("does not exist") && err.contains("sdxl-turbo"),
            "{err}"
        );
    }
}
