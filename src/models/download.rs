//! Fetching a repository's needed files into the Hugging Face cache with
//! hf-hub (resumable `.part` downloads, the same blobs/snapshots/refs layout
//! huggingface_hub writes), or, offline, saying exactly what is missing.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo};

use super::cache::{cached_snapshot, relative_files, repo_dir};
use super::needed::{needed_files, Need};

/// Where and how to reach the hub.
#[derive(Debug, Clone)]
pub struct Hub {
    pub cache: PathBuf,
    /// `HF_ENDPOINT`, default <https://huggingface.co>.
    pub endpoint: String,
    /// `HF_TOKEN`, else the token file `hf auth login` writes.
    pub token: Option<String>,
    /// `HF_HUB_OFFLINE`: use the cache only.
    pub offline: bool,
    /// Draw a progress bar per file on stderr.
    pub progress: bool,
}

impl Hub {
    pub fn from_env(progress: bool) -> Result<Self> {
        let cache = super::cache::hf_cache_dir()
            .context("no home folder for the Hugging Face cache; set HF_HOME or HF_HUB_CACHE")?;
        let token = std::env::var("HF_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .or_else(|| Cache::new(cache.clone()).token());
        let offline = std::env::var("HF_HUB_OFFLINE")
            .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
        Ok(Self {
            cache,
            endpoint: std::env::var("HF_ENDPOINT")
                .unwrap_or_else(|_| "https://huggingface.co".into()),
            token,
            offline,
            progress,
        })
    }

    /// The snapshot folder of `repo` holding every file the engine needs,
    /// downloading what the cache lacks (unless offline).
    pub fn fetch(&self, repo: &str, prefer_half: bool) -> Result<PathBuf> {
        self.fetch_needed(repo, Need::Everything { prefer_half })
    }

    /// The configs and tokenizers of `repo` (a single-file checkpoint's base).
    pub fn fetch_configs(&self, repo: &str) -> Result<PathBuf> {
        self.fetch_needed(repo, Need::ConfigsOnly)
    }

    fn fetch_needed(&self, repo: &str, need: Need) -> Result<PathBuf> {
        let local = cached_snapshot(&self.cache, repo);
        let local_gap = match &local {
            Some(dir) => complete(dir, need).err(),
            None => Some(anyhow!("not in the cache")),
        };
        let Some(gap) = local_gap else {
            return Ok(local.expect("complete snapshot"));
        };
        if self.offline {
            bail!(
                "{repo} is not fully in the Hugging Face cache ({}) and HF_HUB_OFFLINE is set: \
                 {gap:#}. Download it where there is a network: `hf download {repo} --include \
                 '*.json' '*.txt' '*.safetensors'` (or unset HF_HUB_OFFLINE)",
                repo_dir(&self.cache, repo).display()
            );
        }
        self.download(repo, need)
    }

    fn download(&self, repo_id: &str, need: Need) -> Result<PathBuf> {
        let api = ApiBuilder::from_cache(Cache::new(self.cache.clone()))
            .with_endpoint(self.endpoint.clone())
            .with_token(self.token.clone())
            .with_progress(self.progress)
            .build()
            .map_err(|e| anyhow!("cannot set up downloads: {e}"))?;
        let repo = api.repo(Repo::model(repo_id.to_string()));
        let info = repo.info().map_err(|e| self.explain(repo_id, e))?;
        let files: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
        let needed = needed_files(&files, need)
            .with_context(|| format!("{repo_id} is not a diffusers Stable Diffusion model"))?;
        let snapshot = repo_dir(&self.cache, repo_id)
            .join("snapshots")
            .join(&info.sha);
        for file in &needed {
            self.fetch_file(&repo, repo_id, &snapshot, file)?;
            for shard in shard_files(&snapshot, file)? {
                self.fetch_file(&repo, repo_id, &snapshot, &shard)?;
            }
        }
        Ok(snapshot)
    }

    /// One file of the snapshot: kept if there, else downloaded (resuming a
    /// `.part` left by an interrupted download).
    fn fetch_file(
        &self,
        repo: &hf_hub::api::sync::ApiRepo,
        repo_id: &str,
        snapshot: &Path,
        file: &str,
    ) -> Result<()> {
        let path = snapshot.join(file);
        if path.is_file() {
            return Ok(());
        }
        repo.download(file).map_err(|e| self.explain(repo_id, e))?;
        if !path.is_file() {
            bail!(
                "{repo_id} changed while downloading ({file} landed outside snapshot {}); run again",
                snapshot.display()
            );
        }
        Ok(())
    }

    fn explain(&self, repo: &str, e: ApiError) -> anyhow::Error {
        let text = e.to_string();
        let status = match &e {
            ApiError::RequestError(inner) => match inner.as_ref() {
                ureq::Error::Status(code, _) => Some(*code),
                _ => None,
            },
            _ => None,
        };
        match status {
            Some(401) | Some(403) => anyhow!(
                "{repo} refused the download ({text}): it may be gated; accept its licence on \
                 the website and set HF_TOKEN (or run `hf auth login`)"
            ),
            Some(404) => anyhow!("{repo} was not found on {} ({text})", self.endpoint),
            Some(_) => anyhow!("downloading {repo} from {} failed: {text}", self.endpoint),
            None => anyhow!(
                "cannot reach {} to download {repo} ({text}); with the model in the cache, set \
                 HF_HUB_OFFLINE=1",
                self.endpoint
            ),
        }
    }
}

/// Whether a snapshot folder holds everything the engine needs.
pub fn complete(snapshot: &Path, need: Need) -> Result<()> {
    let files = relative_files(snapshot);
    let needed = needed_files(&files, need)?;
    for file in &needed {
        if let Some(missing) = shard_files(snapshot, file)?
            .into_iter()
            .find(|shard| !snapshot.join(shard).is_file())
        {
            bail!("missing: {missing}");
        }
    }
    Ok(())
}

/// The shards a sharded-weights index (`*.index.json`, `*.index.fp16.json`)
/// names, as paths in the repository; none for any other file. The index
/// must already be in the snapshot.
fn shard_files(snapshot: &Path, file: &str) -> Result<Vec<String>> {
    if !(file.ends_with(".index.json") || file.ends_with(".index.fp16.json")) {
        return Ok(Vec::new());
    }
    let folder = file.rsplit_once('/').map(|(d, _)| d);
    Ok(crate::engine::weights::shard_names(&snapshot.join(file))?
        .into_iter()
        .map(|shard| match folder {
            Some(folder) => format!("{folder}/{shard}"),
            None => shard,
        })
        .collect())
}
