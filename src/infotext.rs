//! Generation parameters other tools embed in PNGs: A1111's `parameters`
//! text (also written by sd.cpp and by Fooocus in its A1111 scheme) and
//! Fooocus' own JSON. Parsed into prompt, negative prompt and an ordered
//! list of settings; unknown settings are kept.

use anyhow::{bail, Result};

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Infotext {
    pub prompt: String,
    pub negative: String,
    /// `key: value` pairs in their order, values unquoted.
    pub settings: Vec<(String, String)>,
}

impl Infotext {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    pub fn parse(text: &str) -> Result<Self> {
        let trimmed = text.trim();
        if trimmed.starts_with('{') {
            return parse_fooocus_json(trimmed);
        }
        Ok(parse_a1111(trimmed))
    }
}

/// One `key: value` pair at the start of `s`; returns it and the rest.
/// Values may be JSON-quoted (A1111 quotes values holding commas).
fn next_setting(s: &str) -> Option<((String, String), &str)> {
    let s = s.trim_start();
    let colon = s.find(':')?;
    let key = &s[..colon];
    let key_ok = !key.is_empty()
        && key.len() < 64
        && key.chars().next().is_some_and(|c| c.is_alphanumeric())
        && key
            .chars()
            .all(|c| c.is_alphanumeric() || " -_/().+".contains(c));
    if !key_ok {
        return None;
    }
    let rest = s[colon + 1..].trim_start();
    if let Some(quoted) = rest.strip_prefix('"') {
        // Find the closing quote, honouring backslash escapes.
        let mut escaped = false;
        for (i, c) in quoted.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    let raw = &rest[..i + 2];
                    let value = serde_json::from_str::<String>(raw)
                        .unwrap_or_else(|_| quoted[..i].to_string());
                    let after = quoted[i + 1..].trim_start();
                    let after = after.strip_prefix(',').unwrap_or(after);
                    return Some(((key.trim().to_string(), value), after));
                }
                _ => escaped = false,
            }
        }
        return None;
    }
    let end = rest.find(',').unwrap_or(rest.len());
    let value = rest[..end].trim().to_string();
    let after = if end < rest.len() {
        &rest[end + 1..]
    } else {
        ""
    };
    Some(((key.trim().to_string(), value), after))
}

/// All settings of a line, or None when the line is not a settings line.
fn parse_settings_line(line: &str) -> Option<Vec<(String, String)>> {
    let mut settings = Vec::new();
    let mut rest = line.trim();
    while !rest.trim().is_empty() {
        let (pair, after) = next_setting(rest)?;
        settings.push(pair);
        rest = after;
    }
    // A prompt line like "style: oil" is not a settings line; A1111's has
    // several settings and always `Steps`.
    (settings.len() >= 3 || settings.iter().any(|(k, _)| k == "Steps")).then_some(settings)
}

fn parse_a1111(text: &str) -> Infotext {
    let mut lines: Vec<&str> = text.lines().collect();
    let settings = match lines.last().and_then(|l| parse_settings_line(l)) {
        Some(s) => {
            lines.pop();
            s
        }
        None => Vec::new(),
    };
    let mut prompt = Vec::new();
    let mut negative = Vec::new();
    let mut in_negative = false;
    for line in lines {
        if let Some(rest) = line.strip_prefix("Negative prompt:") {
            in_negative = true;
            negative.push(rest.trim_start());
        } else if in_negative {
            negative.push(line);
        } else {
            prompt.push(line);
        }
    }
    Infotext {
        prompt: prompt.join("\n").trim().to_string(),
        negative: negative.join("\n").trim().to_string(),
        settings,
    }
}

/// Fooocus' JSON scheme: {"Prompt", "Negative Prompt", "Steps", "Seed",
/// "Guidance Scale", "Sampler", "Resolution": "(w, h)", ...}.
fn parse_fooocus_json(text: &str) -> Result<Infotext> {
    let json: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => bail!("the parameters look like JSON but do not parse: {e}"),
    };
    let Some(map) = json.as_object() else {
        bail!("the JSON parameters are not an object");
    };
    let text_of = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut info = Infotext::default();
    for (key, value) in map {
        match key.as_str() {
            "Prompt" | "prompt" => info.prompt = text_of(value),
            "Negative Prompt" | "negative_prompt" => info.negative = text_of(value),
            "Guidance Scale" => info.settings.push(("CFG scale".into(), text_of(value))),
            "Resolution" => {
                let nums: Vec<String> = text_of(value)
                    .split(|c: char| !c.is_ascii_digit())
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
                if let [w, h] = nums.as_slice() {
                    info.settings.push(("Size".into(), format!("{w}x{h}")));
                }
            }
            "Base Model" => info.settings.push(("Model".into(), text_of(value))),
            _ => info.settings.push((key.clone(), text_of(value))),
        }
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a1111_sample_with_quoted_values_and_multiline_negative() {
        let text = "masterpiece, a castle on a hill\nat dawn, (detailed:1.2)\nNegative prompt: lowres, bad anatomy,\nwatermark\nSteps: 28, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 3458233, Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, Lora hashes: \"add_detail: 7c6bad76eb54, more_art: 1a2b\", Hires upscale: 2, Version: v1.6.0";
        let info = Infotext::parse(text).unwrap();
        assert_eq!(
            info.prompt,
            "masterpiece, a castle on a hill\nat dawn, (detailed:1.2)"
        );
        assert_eq!(info.negative, "lowres, bad anatomy,\nwatermark");
        assert_eq!(info.get("Steps"), Some("28"));
        assert_eq!(info.get("Sampler"), Some("DPM++ 2M Karras"));
        assert_eq!(info.get("Size"), Some("512x768"));
        assert_eq!(
            info.get("Lora hashes"),
            Some("add_detail: 7c6bad76eb54, more_art: 1a2b")
        );
        assert_eq!(info.get("Version"), Some("v1.6.0"), "unknown keys are kept");
        assert_eq!(info.settings.len(), 11);
    }

    #[test]
    fn prompt_only_and_no_negative() {
        let info = Infotext::parse("just a prompt, with: a colon").unwrap();
        assert_eq!(info.prompt, "just a prompt, with: a colon");
        assert!(info.settings.is_empty());
        let info = Infotext::parse(
            "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512",
        )
        .unwrap();
        assert_eq!(
            (info.prompt.as_str(), info.negative.as_str()),
            ("a cat", "")
        );
    }

    #[test]
    fn sd_cpp_style_text() {
        let text = "a lovely cat\nNegative prompt: \nSteps: 20, CFG scale: 7.000000, Guidance: 3.500000, Eta: 0.000000, Seed: 42, Size: 512x512, Model: sd-v1-4.ckpt, RNG: cuda, Sampler: euler_a, Scheduler: discrete, Version: stable-diffusion.cpp";
        let info = Infotext::parse(text).unwrap();
        assert_eq!(info.prompt, "a lovely cat");
        assert_eq!(info.negative, "");
        assert_eq!(info.get("Sampler"), Some("euler_a"));
        assert_eq!(info.get("CFG scale"), Some("7.000000"));
    }

    #[test]
    fn fooocus_json() {
        let text = r#"{"Prompt": "a dog", "Negative Prompt": "ugly", "Steps": 30, "Guidance Scale": 4.0, "Seed": "1234", "Sampler": "dpmpp_2m_sde_gpu", "Resolution": "(896, 1152)", "Base Model": "juggernautXL", "Styles": "['Fooocus V2']"}"#;
        let info = Infotext::parse(text).unwrap();
        assert_eq!(info.prompt, "a dog");
        assert_eq!(info.negative, "ugly");
        assert_eq!(info.get("Size"), Some("896x1152"));
        assert_eq!(info.get("CFG scale"), Some("4.0"));
        assert_eq!(info.get("Seed"), Some("1234"));
        assert_eq!(info.get("Styles"), Some("['Fooocus V2']"));
    }
}
