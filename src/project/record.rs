//! A run record (`runs/<id>/run.toml`): the recipe as run and everything
//! needed to trust, compare or repeat it.

use serde::{Deserialize, Serialize};

use crate::engine::Timings;
use crate::recipe::Recipe;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
    /// Brought in from a PNG made elsewhere; its image was not generated here.
    Imported,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Done => "done",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::Imported => "imported",
        }
    }

    /// Whether the run has an output image.
    pub fn has_image(self) -> bool {
        matches!(self, Status::Done | Status::Imported)
    }
}

/// Which model made a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ModelRef {
    /// As the user named it (folder, repository or alias).
    pub name: String,
    /// The folder it resolved to.
    #[serde(default)]
    pub path: String,
    /// Fingerprint of the weight files (see `engine::weights::fingerprint`).
    #[serde(default)]
    pub fingerprint: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: u64,
    /// RFC 3339, UTC.
    pub created: String,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The run this one was derived from (rerun, sweep, recall).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<u64>,
    /// SHA-256 of the source image's bytes (`sources/<hash>.<ext>`).
    pub source: String,
    /// When the source was another run's output: that run (the img2img chain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_run: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps_run: Option<usize>,
    #[serde(default)]
    pub device: String,
    #[serde(default)]
    pub starred: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
    pub recipe: Recipe,
    #[serde(default)]
    pub model: ModelRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<Timings>,
}

impl RunRecord {
    pub fn to_toml(&self) -> anyhow::Result<String> {
        Ok(toml::to_string(self)?)
    }

    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        Ok(toml::from_str(text)?)
    }

    /// The short, typeable id.
    pub fn label(&self) -> String {
        format!("#{}", self.id)
    }
}

/// The current time as RFC 3339 UTC.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
