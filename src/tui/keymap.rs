//! Commands, their default keys and descriptions; the help overlay is made
//! from this table. A TOML file can rebind any command (`generate = "G"` or
//! `move_down = ["j", "down"]`); what it does not name keeps its default.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

macro_rules! commands {
    ($($variant:ident $name:literal [$($key:literal),*] $desc:literal;)*) => {
        /// Everything a key can do in normal mode.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Command { $($variant),* }

        impl Command {
            pub const ALL: &'static [Command] = &[$(Command::$variant),*];
            pub fn name(self) -> &'static str { match self { $(Command::$variant => $name),* } }
            pub fn description(self) -> &'static str { match self { $(Command::$variant => $desc),* } }
            fn default_keys(self) -> &'static [&'static str] { match self { $(Command::$variant => &[$($key),*]),* } }
        }
    };
}

commands! {
    MoveDown "move_down" ["j", "down"] "next run";
    MoveUp "move_up" ["k", "up"] "previous run";
    Top "top" ["home"] "newest run";
    Bottom "bottom" ["G", "end"] "oldest run";
    Generate "generate" ["g"] "generate with the recipe (queued)";
    Recall "recall" ["r"] "recall the selected run's recipe into the editor";
    Cancel "cancel" ["x"] "cancel the running job";
    Help "help" ["?"] "this help";
    Quit "quit" ["q"] "quit (asks while jobs run)";
    Star "star" ["s"] "star / unstar the selected run";
    Filter "filter" ["/"] "filter runs by prompt text";
    StrengthDown "strength_down" ["["] "strength - 0.05";
    StrengthUp "strength_up" ["]"] "strength + 0.05";
    StrengthDownFine "strength_down_fine" ["{"] "strength - 0.01";
    StrengthUpFine "strength_up_fine" ["}"] "strength + 0.01";
    StepsDown "steps_down" ["-"] "steps - 1";
    StepsUp "steps_up" ["+", "="] "steps + 1";
    GuidanceDown "guidance_down" [","] "guidance - 0.5";
    GuidanceUp "guidance_up" ["."] "guidance + 0.5";
    SeedMode "seed_mode" ["S"] "seed: fixed / random";
    SeedNext "seed_next" ["N"] "seed + 1";
    CountDown "count_down" ["<"] "fewer variations";
    CountUp "count_up" [">"] "more variations";
    NextScheduler "next_scheduler" ["t"] "next scheduler";
    NextFit "next_fit" ["f"] "next fit: crop, pad, stretch";
    NextSize "next_size" ["z"] "next size: the source's, 512x512, 768x512, 512x768, 768x768, 1024x1024";
    NextModel "next_model" ["M"] "next model: the project's, this machine's, then aliases";
    EditPrompt "edit_prompt" ["e", "i"] "edit the prompt (Esc ends)";
    EditNegative "edit_negative" ["E"] "edit the negative prompt (Esc ends)";
    Styles "styles" ["y"] "insert a saved prompt style";
    Crop "crop" ["c"] "crop the source: arrows/hjkl move, +/- size, a aspect, 0 clears";
    UseAsSource "use_as_source" ["u"] "use the selected run's output as the source";
    ToggleAb "toggle_ab" ["tab"] "show A / B: the run, then its source or the marked run";
    Mark "mark" ["m"] "mark the selected run to compare with";
    NextView "next_view" ["v"] "history: newest, by source, lineage";
    RemoveQueued "remove_queued" ["d"] "remove the last queued job";
    PromoteQueued "promote_queued" ["p"] "move the last queued job to the front";
}

/// A key as written in keymap files: "g", "G", "ctrl-s", "down", "tab", "?".
fn parse_key(text: &str) -> Result<KeyEvent> {
    let (mods, key) = match text.rsplit_once('-') {
        Some((m, k)) if !k.is_empty() && !m.is_empty() => (m, k),
        _ => ("", text),
    };
    let mut modifiers = KeyModifiers::NONE;
    for m in mods.split('-').filter(|m| !m.is_empty()) {
        modifiers |= match m {
            "ctrl" => KeyModifiers::CONTROL,
            "alt" => KeyModifiers::ALT,
            "shift" => KeyModifiers::SHIFT,
            other => bail!("unknown modifier {other:?} in key {text:?}"),
        };
    }
    let code = match key {
        "down" => KeyCode::Down,
        "up" => KeyCode::Up,
        "left" => KeyCode::Left,
        "right" => KeyCode::Right,
        "home" => KeyCode::Home,
        "end" => KeyCode::End,
        "tab" => KeyCode::Tab,
        "enter" => KeyCode::Enter,
        "esc" => KeyCode::Esc,
        "space" => KeyCode::Char(' '),
        k if k.chars().count() == 1 => KeyCode::Char(k.chars().next().expect("one char")),
        other => bail!("unknown key {other:?}"),
    };
    Ok(KeyEvent::new(code, modifiers))
}

/// Normalises crossterm's reports (shifted letters arrive with SHIFT).
fn normalise(key: KeyEvent) -> (KeyCode, KeyModifiers) {
    let mods = key.modifiers & (KeyModifiers::CONTROL | KeyModifiers::ALT);
    (key.code, mods)
}

#[derive(Debug, Clone)]
pub struct Keymap {
    bindings: HashMap<(KeyCode, KeyModifiers), Command>,
    keys: HashMap<Command, Vec<String>>,
}

impl Default for Keymap {
    fn default() -> Self {
        let mut map = Self {
            bindings: HashMap::new(),
            keys: HashMap::new(),
        };
        for &c in Command::ALL {
            let keys: Vec<String> = c.default_keys().iter().map(|k| k.to_string()).collect();
            map.bind(c, keys).expect("default keys parse");
        }
        map
    }
}

impl Keymap {
    fn bind(&mut self, command: Command, keys: Vec<String>) -> Result<()> {
        if let Some(old) = self.keys.remove(&command) {
            for k in old {
                let key = normalise(parse_key(&k)?);
                if self.bindings.get(&key) == Some(&command) {
                    self.bindings.remove(&key);
                }
            }
        }
        for k in &keys {
            self.bindings.insert(normalise(parse_key(k)?), command);
        }
        self.keys.insert(command, keys);
        Ok(())
    }

    /// The defaults with the overrides of a TOML table `command = "key"` or
    /// `command = ["key", ...]`.
    pub fn with_overrides(text: &str, origin: &Path) -> Result<Self> {
        let mut map = Self::default();
        let table: toml::Table = toml::from_str(text)
            .with_context(|| format!("{} is not valid TOML", origin.display()))?;
        for (name, value) in table {
            let Some(&command) = Command::ALL.iter().find(|c| c.name() == name) else {
                bail!("{}: unknown command {name:?}", origin.display());
            };
            let keys: Vec<String> = match value {
                toml::Value::String(s) => vec![s],
                toml::Value::Array(a) => a
                    .into_iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect(),
                _ => bail!(
                    "{}: {name} must be a key or a list of keys",
                    origin.display()
                ),
            };
            map.bind(command, keys)
                .with_context(|| format!("{}: {name}", origin.display()))?;
        }
        map.refuse_shared_keys(origin)?;
        Ok(map)
    }

    /// A key given to a command while another still has it would leave the
    /// other without it (and `?` listing it): say so, whichever the user
    /// meant to move.
    fn refuse_shared_keys(&self, origin: &Path) -> Result<()> {
        for &command in Command::ALL {
            for key in self.keys(command) {
                let Ok(parsed) = parse_key(key) else { continue };
                match self.bindings.get(&normalise(parsed)) {
                    Some(&owner) if owner != command => bail!(
                        "{}: {key} is the key of both {} and {}; give one of them another key",
                        origin.display(),
                        command.name(),
                        owner.name()
                    ),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    pub fn command(&self, key: KeyEvent) -> Option<Command> {
        self.bindings.get(&normalise(key)).copied()
    }

    pub fn keys(&self, command: Command) -> &[String] {
        self.keys.get(&command).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Help lines: keys, then what they do, in the table's order.
    pub fn help_lines(&self) -> Vec<(String, &'static str)> {
        Command::ALL
            .iter()
            .map(|&c| (self.keys(c).join(" "), c.description()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
    }

    #[test]
    fn defaults_cover_the_contract_keys() {
        let map = Keymap::default();
        assert_eq!(map.command(key('g')), Some(Command::Generate));
        assert_eq!(map.command(key('r')), Some(Command::Recall));
        assert_eq!(map.command(key('x')), Some(Command::Cancel));
        assert_eq!(map.command(key('?')), Some(Command::Help));
        assert_eq!(map.command(key('q')), Some(Command::Quit));
        assert_eq!(map.command(key('j')), Some(Command::MoveDown));
        assert_eq!(
            map.command(KeyEvent::new(KeyCode::Up, KeyModifiers::NONE)),
            Some(Command::MoveUp)
        );
        assert_eq!(map.command(key('[')), Some(Command::StrengthDown));
        assert_eq!(map.command(key(']')), Some(Command::StrengthUp));
        assert_eq!(
            map.command(KeyEvent::new(KeyCode::Char('G'), KeyModifiers::SHIFT)),
            Some(Command::Bottom)
        );
    }

    #[test]
    fn overrides_replace_only_what_they_name() {
        let map = Keymap::with_overrides(
            "generate = \"ctrl-g\"\nmove_down = [\"j\", \"n\"]",
            Path::new("keymap.toml"),
        )
        .unwrap();
        assert_eq!(map.command(key('g')), None);
        assert_eq!(
            map.command(KeyEvent::new(KeyCode::Char('g'), KeyModifiers::CONTROL)),
            Some(Command::Generate)
        );
        assert_eq!(map.command(key('n')), Some(Command::MoveDown));
        assert_eq!(map.command(key('r')), Some(Command::Recall));
        let err = Keymap::with_overrides("fly = \"f\"", Path::new("k.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown command"), "{err}");
    }

    #[test]
    fn a_key_left_to_two_commands_is_refused_unless_both_move() {
        let err = Keymap::with_overrides("generate = \"q\"", Path::new("keymap.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("q is the key of both") && err.contains("quit"),
            "{err}"
        );
        let map = Keymap::with_overrides(
            "generate = \"q\"\nquit = \"ctrl-q\"",
            Path::new("keymap.toml"),
        )
        .unwrap();
        assert_eq!(map.command(key('q')), Some(Command::Generate));
        // The defaults share no key either.
        Keymap::default()
            .refuse_shared_keys(Path::new("defaults"))
            .unwrap();
    }

    #[test]
    fn help_lists_every_command() {
        let lines = Keymap::default().help_lines();
        assert_eq!(lines.len(), Command::ALL.len());
        assert!(lines
            .iter()
            .any(|(k, d)| k == "g" && d.contains("generate")));
    }
}
