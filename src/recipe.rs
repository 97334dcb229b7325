//! A recipe: everything that decides an output, as run. Written into every
//! PNG as A1111-style `parameters` text so other tools read the settings.

use serde::{Deserialize, Serialize};

use crate::engine::{CropRect, Fit};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    pub prompt: String,
    #[serde(default)]
    pub negative: String,
    pub strength: f64,
    pub steps: usize,
    pub guidance: f64,
    /// The seed actually used (random seeds are recorded once drawn).
    pub seed: u64,
    /// atelier's scheduler name (`euler_a`, `dpmpp_2m`, ...).
    pub scheduler: String,
    pub width: u32,
    pub height: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crop: Option<CropRect>,
    #[serde(default)]
    pub fit: Fit,
    /// The model as the user named it (folder, repository or alias).
    pub model: String,
}

impl Recipe {
    /// A1111's infotext: prompt, `Negative prompt:` line, then the settings.
    pub fn to_infotext(&self, sampler: &str) -> String {
        let mut text = self.prompt.clone();
        if !self.negative.is_empty() {
            text.push_str("\nNegative prompt: ");
            text.push_str(&self.negative);
        }
        let mut settings = vec![
            format!("Steps: {}", self.steps),
            format!("Sampler: {sampler}"),
            format!("CFG scale: {}", self.guidance),
            format!("Seed: {}", self.seed),
            format!("Size: {}x{}", self.width, self.height),
            format!("Model: {}", quote_if_needed(&self.model)),
            format!("Denoising strength: {}", self.strength),
        ];
        if let Some(c) = self.crop {
            settings.push(format!("Crop: {}", quote_if_needed(&c.to_string())));
        }
        settings.push(format!("Fit: {}", self.fit));
        text.push('\n');
        text.push_str(&settings.join(", "));
        text
    }
}

/// A1111 quotes values holding commas, colons or quotes (JSON-style).
pub fn quote_if_needed(value: &str) -> String {
    if value.contains([',', ':', '"', '\n']) {
        serde_json::to_string(value).expect("strings serialize")
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infotext_has_a1111_layout() {
        let r = Recipe {
            prompt: "a fox".into(),
            negative: "blurry".into(),
            strength: 0.6,
            steps: 20,
            guidance: 7.5,
            seed: 42,
            scheduler: "euler_a".into(),
            width: 512,
            height: 384,
            crop: None,
            fit: Fit::Crop,
            model: "models/sd, v1".into(),
        };
        assert_eq!(
            r.to_infotext("Euler a"),
            "a fox\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 42, \
             Size: 512x384, Model: \"models/sd, v1\", Denoising strength: 0.6, Fit: crop"
        );
    }
}
