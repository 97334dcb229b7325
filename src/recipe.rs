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
    /// The size as people read it: a run that never started keeps the
    /// request's 0x0, which means the source's own size.
    pub fn size_label(&self) -> String {
        if self.width == 0 || self.height == 0 {
            "source's".to_string()
        } else {
            format!("{}x{}", self.width, self.height)
        }
    }

    /// The scheduler's name, or the model's own where none was asked for
    /// and none was recorded (a run that did not finish).
    pub fn scheduler_label(&self) -> &str {
        if self.scheduler.is_empty() {
            "model's"
        } else {
            &self.scheduler
        }
    }

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

impl Recipe {
    /// A recipe from another tool's parameters. Settings it lacks come from
    /// `defaults` (a txt2img image has no denoising strength, for example).
    pub fn from_infotext(info: &crate::infotext::Infotext, defaults: &Recipe) -> Recipe {
        let num = |key: &str| info.get(key).and_then(|v| v.trim().parse::<f64>().ok());
        let size = info.get("Size").and_then(|s| {
            let (w, h) = s.split_once('x')?;
            Some((w.trim().parse().ok()?, h.trim().parse().ok()?))
        });
        let scheduler = info
            .get("Sampler")
            .and_then(|s| {
                // A1111 writes "Karras" in `Schedule type` since v1.9.
                let karras = info
                    .get("Schedule type")
                    .is_some_and(|t| t.eq_ignore_ascii_case("karras"));
                let name = if karras && !s.contains("Karras") {
                    format!("{s} Karras")
                } else {
                    s.to_string()
                };
                name.parse::<crate::engine::SchedulerKind>().ok()
            })
            .map(|k| k.name().to_string())
            .unwrap_or_else(|| defaults.scheduler.clone());
        Recipe {
            prompt: info.prompt.clone(),
            negative: info.negative.clone(),
            strength: num("Denoising strength").unwrap_or(defaults.strength),
            steps: num("Steps").map(|s| s as usize).unwrap_or(defaults.steps),
            guidance: num("CFG scale").unwrap_or(defaults.guidance),
            seed: info
                .get("Seed")
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(defaults.seed),
            scheduler,
            width: size.map(|s: (u32, u32)| s.0).unwrap_or(defaults.width),
            height: size.map(|s: (u32, u32)| s.1).unwrap_or(defaults.height),
            crop: info.get("Crop").and_then(|c| c.parse().ok()),
            fit: info
                .get("Fit")
                .and_then(|f| f.parse().ok())
                .unwrap_or(defaults.fit),
            model: info
                .get("Model")
                .map(String::from)
                .unwrap_or_else(|| defaults.model.clone()),
        }
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

    fn sample() -> Recipe {
        Recipe {
            prompt: "a fox, \"quoted\", in snow\nsecond line".into(),
            negative: "blurry,\nlow quality".into(),
            strength: 0.45,
            steps: 25,
            guidance: 6.5,
            seed: 1234567,
            scheduler: "dpmpp_2m_karras".into(),
            width: 640,
            height: 384,
            crop: Some(CropRect {
                x: 10,
                y: 20,
                w: 300,
                h: 200,
            }),
            fit: Fit::Pad,
            model: "models/my, model".into(),
        }
    }

    #[test]
    fn an_unresolved_size_and_scheduler_read_as_the_defaults() {
        let ran = sample();
        assert_eq!(
            (ran.size_label().as_str(), ran.scheduler_label()),
            ("640x384", "dpmpp_2m_karras")
        );
        let asked = Recipe {
            width: 0,
            height: 0,
            scheduler: String::new(),
            ..sample()
        };
        assert_eq!(
            (asked.size_label().as_str(), asked.scheduler_label()),
            ("source's", "model's")
        );
    }

    #[test]
    fn infotext_round_trips() {
        let r = sample();
        let text = r.to_infotext("DPM++ 2M Karras");
        let info = crate::infotext::Infotext::parse(&text).unwrap();
        let back = Recipe::from_infotext(
            &info,
            &Recipe {
                prompt: String::new(),
                ..r.clone()
            },
        );
        assert_eq!(back, r);
    }

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
