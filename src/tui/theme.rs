//! Themes: TOML files naming colours, each starting from the theme it
//! `inherits`; `NO_COLOR` turns colour off and leaves emphasis to bold and
//! reversed text.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use ratatui::style::{Color, Modifier, Style};

const BUILTIN: &[(&str, &str)] = &[
    ("dark", include_str!("../../themes/dark.toml")),
    ("light", include_str!("../../themes/light.toml")),
    (
        "high-contrast",
        include_str!("../../themes/high-contrast.toml"),
    ),
];

#[derive(Debug, Clone, PartialEq)]
pub struct Theme {
    pub text: Style,
    pub dim: Style,
    pub accent: Style,
    pub border: Style,
    pub selection: Style,
    pub changed: Style,
    pub ok: Style,
    pub error: Style,
    pub running: Style,
}

fn color(name: &str) -> Result<Color> {
    if name == "reset" {
        return Ok(Color::Reset);
    }
    name.replace('_', "").parse::<Color>().map_err(|_| {
        anyhow::anyhow!(
            "unknown colour {name:?}: use a name (red, dark_gray, light_blue, ...), \
                 \"#rrggbb\" or \"reset\""
        )
    })
}

impl Theme {
    /// Colourless: emphasis by bold and reversed text only.
    pub fn monochrome() -> Self {
        let plain = Style::default();
        Theme {
            text: plain,
            dim: plain,
            accent: plain.add_modifier(Modifier::BOLD),
            border: plain,
            selection: plain.add_modifier(Modifier::REVERSED),
            changed: plain.add_modifier(Modifier::BOLD | Modifier::UNDERLINED),
            ok: plain,
            error: plain.add_modifier(Modifier::BOLD),
            running: plain.add_modifier(Modifier::BOLD),
        }
    }

    /// A built-in theme by name, or a theme file from `dir`.
    pub fn load(name: &str, dir: Option<&Path>) -> Result<Self> {
        let mut fields = HashMap::new();
        collect(name, dir, &mut fields, 0)?;
        let get = |k: &str| -> Result<Color> {
            color(fields.get(k).map(String::as_str).unwrap_or("reset"))
                .with_context(|| format!("theme {name}: {k}"))
        };
        let bg = get("background")?;
        let fg = |k: &str| -> Result<Style> { Ok(Style::default().fg(get(k)?).bg(bg)) };
        Ok(Theme {
            text: fg("text")?,
            dim: fg("dim")?,
            accent: fg("accent")?.add_modifier(Modifier::BOLD),
            border: fg("border")?,
            selection: Style::default()
                .fg(get("selection_fg")?)
                .bg(get("selection_bg")?),
            changed: fg("changed")?.add_modifier(Modifier::BOLD),
            ok: fg("ok")?,
            error: fg("error")?.add_modifier(Modifier::BOLD),
            running: fg("running")?,
        })
    }

    /// The theme to use: monochrome under `NO_COLOR`, else the named one.
    pub fn resolve(name: Option<&str>, dir: Option<&Path>) -> Result<Self> {
        if std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) {
            return Ok(Self::monochrome());
        }
        Self::load(name.unwrap_or("dark"), dir)
    }
}

/// Reads a theme and what it inherits, parents first.
fn collect(
    name: &str,
    dir: Option<&Path>,
    fields: &mut HashMap<String, String>,
    depth: usize,
) -> Result<()> {
    if depth > 8 {
        bail!("theme {name}: `inherits` loops");
    }
    let user = dir
        .map(|d| d.join(format!("{name}.toml")))
        .filter(|p| p.is_file());
    let text = match (&user, BUILTIN.iter().find(|(n, _)| *n == name)) {
        (Some(path), _) => std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
        (None, Some((_, text))) => text.to_string(),
        (None, None) => bail!(
            "unknown theme {name:?}: built-in are {}, or put {name}.toml in the config's themes/ folder",
            BUILTIN.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        ),
    };
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("theme {name} is not valid TOML"))?;
    if let Some(parent) = table.get("inherits").and_then(|v| v.as_str()) {
        // A user theme may share a built-in's name and inherit from it.
        if parent == name && user.is_some() {
            collect(parent, None, fields, depth + 1)?;
        } else {
            collect(parent, dir, fields, depth + 1)?;
        }
    }
    for (k, v) in table {
        // A misspelt colour would otherwise be silently the inherited one.
        if k != "inherits" && !FIELDS.contains(&k.as_str()) {
            bail!(
                "theme {name}: unknown colour {k:?}; a theme names {}",
                FIELDS.join(", ")
            );
        }
        if let Some(v) = v.as_str() {
            fields.insert(k, v.to_string());
        }
    }
    Ok(())
}

/// The colours a theme file may name.
const FIELDS: [&str; 11] = [
    "text",
    "dim",
    "background",
    "accent",
    "border",
    "selection_fg",
    "selection_bg",
    "changed",
    "ok",
    "error",
    "running",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_load_and_differ() {
        let dark = Theme::load("dark", None).unwrap();
        let light = Theme::load("light", None).unwrap();
        let high = Theme::load("high-contrast", None).unwrap();
        assert_ne!(dark, light);
        assert_ne!(dark, high);
    }

    #[test]
    fn a_user_theme_overrides_only_what_it_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("mine.toml"),
            "inherits = \"dark\"\naccent = \"#ff0000\"\n",
        )
        .unwrap();
        let mine = Theme::load("mine", Some(dir.path())).unwrap();
        let dark = Theme::load("dark", None).unwrap();
        assert_eq!(mine.accent.fg, Some(Color::Rgb(255, 0, 0)));
        assert_eq!(mine.text, dark.text);
        assert!(Theme::load("nope", Some(dir.path())).is_err());
    }

    #[test]
    fn a_misspelt_name_or_colour_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let load = |text: &str| {
            std::fs::write(dir.path().join("mine.toml"), text).unwrap();
            format!("{:#}", Theme::load("mine", Some(dir.path())).unwrap_err())
        };
        let typo = load("inherits = \"dark\"\nacent = \"red\"\n");
        assert!(
            typo.contains("unknown colour \"acent\"") && typo.contains("accent"),
            "{typo}"
        );
        let colour = load("accent = \"purpleish\"\n");
        assert!(
            colour.contains("accent: unknown colour \"purpleish\": use a name"),
            "{colour}"
        );
    }
}
