//! The user's configuration: `~/.config/atelier/` (or `$ATELIER_CONFIG_DIR`)
//! holding `config.toml`, `keymap.toml` and `themes/*.toml`; the data folder
//! (logs) from `$ATELIER_DATA_DIR` or the platform's.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// A built-in theme (dark, light, high-contrast) or a file in themes/.
    pub theme: Option<String>,
    /// auto, kitty, sixel, iterm2 or halfblocks.
    pub image_protocol: Option<String>,
    /// Send kitty images deflated (`o=z`), where the terminal says it can
    /// inflate them: about 40% fewer bytes for a photograph, for a little
    /// CPU per image [default: when over SSH].
    pub kitty_compression: Option<bool>,
    /// Folders holding models (diffusers folders or single-file checkpoints),
    /// listed by `atelier models` beside the Hugging Face cache.
    pub model_dirs: Vec<PathBuf>,
}

impl Config {
    /// `model_dirs` with a leading `~` made the home folder.
    pub fn model_folders(&self) -> Vec<PathBuf> {
        let home = directories::BaseDirs::new().map(|b| b.home_dir().to_path_buf());
        self.model_dirs
            .iter()
            .map(|p| match (p.strip_prefix("~"), &home) {
                (Ok(rest), Some(home)) => home.join(rest),
                _ => p.clone(),
            })
            .collect()
    }
}

pub fn config_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("ATELIER_CONFIG_DIR") {
        return Some(PathBuf::from(dir));
    }
    directories::ProjectDirs::from("", "", "atelier").map(|d| d.config_dir().to_path_buf())
}

pub fn data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ATELIER_DATA_DIR") {
        return PathBuf::from(dir);
    }
    directories::ProjectDirs::from("", "", "atelier")
        .map(|d| d.data_dir().to_path_buf())
        .unwrap_or_else(std::env::temp_dir)
}

pub fn load() -> Result<Config> {
    let Some(path) = config_dir().map(|d| d.join("config.toml")) else {
        return Ok(Config::default());
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            toml::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
        }
        Err(_) => Ok(Config::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_reads_and_a_wrong_one_is_named() {
        let config: Config = toml::from_str(
            "theme = \"light\"\nimage_protocol = \"kitty\"\nkitty_compression = false\n\
             model_dirs = [\"/models\"]\n",
        )
        .unwrap();
        assert_eq!(
            config,
            Config {
                theme: Some("light".into()),
                image_protocol: Some("kitty".into()),
                kitty_compression: Some(false),
                model_dirs: vec![PathBuf::from("/models")],
            }
        );
        let wrong = toml::from_str::<Config>("kitty_compression = \"yes\"\n").unwrap_err();
        assert!(wrong.to_string().contains("kitty_compression"), "{wrong}");
        let misspelt = toml::from_str::<Config>("image_protcol = \"kitty\"\n").unwrap_err();
        assert!(
            misspelt
                .to_string()
                .contains("unknown field `image_protcol`"),
            "{misspelt}"
        );
    }
}
