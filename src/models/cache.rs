//! The Hugging Face hub cache as huggingface_hub lays it out:
//! `models--org--name/{blobs, snapshots/<commit>/..., refs/<ref>}`, snapshot
//! files being links into `blobs/`.

use std::path::{Path, PathBuf};

/// The hub cache folder: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
/// `~/.cache/huggingface/hub`.
pub fn hf_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return Some(PathBuf::from(dir));
    }
    if let Some(home) = std::env::var_os("HF_HOME") {
        return Some(PathBuf::from(home).join("hub"));
    }
    directories::BaseDirs::new().map(|b| b.home_dir().join(".cache/huggingface/hub"))
}

/// `models--org--name` under the cache.
pub fn repo_dir(cache: &Path, repo: &str) -> PathBuf {
    cache.join(format!("models--{}", repo.replace('/', "--")))
}

/// The repo id a `models--org--name` folder holds.
pub fn repo_of_dir(name: &str) -> Option<String> {
    let rest = name.strip_prefix("models--")?;
    let (org, model) = rest.split_once("--")?;
    Some(format!("{org}/{model}"))
}

/// The snapshot folder of `repo` in the cache, if it is there: the one
/// `refs/main` names, else the newest.
pub fn cached_snapshot(cache: &Path, repo: &str) -> Option<PathBuf> {
    let root = repo_dir(cache, repo);
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

/// Every file under `dir` (following links), as `/`-separated relative paths.
pub fn relative_files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.is_file() {
                if let Ok(rel) = path.strip_prefix(root) {
                    out.push(rel.to_string_lossy().replace('\\', "/"));
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
