//! Turning `--model DIR|REPO|ALIAS` into a model folder: a local folder, or a
//! repository already in the Hugging Face cache (`hub/models--org--name`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// Short names for the models people use most.
pub const ALIASES: &[(&str, &str)] = &[
    ("sd-turbo", "stabilityai/sd-turbo"),
    ("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
    ("sd21", "stabilityai/stable-diffusion-2-1"),
    ("sd21-base", "stabilityai/stable-diffusion-2-1-base"),
];

/// The model out of the box.
pub const DEFAULT_MODEL: &str = "sd-turbo";

/// The Hugging Face hub cache folder, as huggingface_hub finds it.
pub fn hf_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return Some(PathBuf::from(dir));
    }
    if let Some(home) = std::env::var_os("HF_HOME") {
        return Some(PathBuf::from(home).join("hub"));
    }
    directories::BaseDirs::new().map(|b| b.home_dir().join(".cache/huggingface/hub"))
}

/// The snapshot folder of `repo` in the cache `cache`, if it is there.
pub fn cached_snapshot(cache: &Path, repo: &str) -> Option<PathBuf> {
    let root = cache.join(format!("models--{}", repo.replace('/', "--")));
    let snapshots = root.join("snapshots");
    if let Ok(hash) = std::fs::read_to_string(root.join("refs/main")) {
        let dir = snapshots.join(hash.trim());
        if dir.is_dir() {
            return Some(dir);
        }
    }
    // No `main` ref (a download of a pinned revision): take the newest snapshot.
    let mut dirs: Vec<_> = std::fs::read_dir(&snapshots)
        .ok()?
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    dirs.sort_by_key(|e| e.metadata().and_then(|m| m.modified()).ok());
    dirs.last().map(|e| e.path())
}

/// Resolves a model argument to a folder in diffusers layout.
pub fn resolve_model(name: &str) -> Result<PathBuf> {
    let path = Path::new(name);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let repo = ALIASES
        .iter()
        .find(|(alias, _)| *alias == name)
        .map(|(_, repo)| *repo)
        .unwrap_or(name);
    let looks_like_repo =
        repo.split('/').count() == 2 && !repo.starts_with('.') && !path.is_absolute();
    if !looks_like_repo {
        bail!(
            "model folder {name} does not exist; give --model a folder in diffusers layout, \
             a Hugging Face repository (org/name) or one of: {}",
            ALIASES
                .iter()
                .map(|(a, _)| *a)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(cache) = hf_cache_dir() {
        if let Some(dir) = cached_snapshot(&cache, repo) {
            return Ok(dir);
        }
    }
    bail!(
        "the model {repo} is not in the Hugging Face cache ({}); download it with \
         `hf download {repo}` (pip install huggingface_hub) or pass --model DIR",
        hf_cache_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| "no home folder".into())
    )
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
    fn a_missing_folder_that_is_no_repo_names_the_choices() {
        let err = resolve_model("./no/such/folder").unwrap_err().to_string();
        assert!(
            err.contains("does not exist") && err.contains("sd-turbo"),
            "{err}"
        );
    }
}
