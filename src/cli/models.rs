//! `atelier models`: the models this machine has, and what --model takes.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::models::list::{list, LocalModel};

#[derive(Args, Debug)]
pub struct ModelsArgs {
    /// More folders to look in (beside `model_dirs` in config.toml).
    #[arg(long = "dir")]
    pub dirs: Vec<PathBuf>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ModelsArgs) -> Result<()> {
    let mut folders: Vec<PathBuf> = crate::config::load()?.model_folders();
    folders.extend(args.dirs);
    for missing in folders.iter().filter(|f| !f.is_dir()) {
        eprintln!(
            "warning: the model folder {} does not exist",
            missing.display()
        );
    }
    let cache = crate::models::hf_cache_dir();
    let models = list(cache.as_deref(), &folders);
    if args.json {
        for m in &models {
            println!("{}", serde_json::to_string(m)?);
        }
        return Ok(());
    }
    if models.is_empty() {
        let searched = if folders.is_empty() {
            "; no model folders are set (`model_dirs` in config.toml, or --dir)".to_string()
        } else {
            let names: Vec<_> = folders.iter().map(|f| f.display().to_string()).collect();
            format!(" or in {}", names.join(", "))
        };
        println!(
            "no models found in the Hugging Face cache ({}){searched}; `atelier gen \
             --model sd-turbo` downloads one (aliases: {})",
            cache
                .map(|c| c.display().to_string())
                .unwrap_or_else(|| "none".into()),
            crate::models::ALIASES
                .iter()
                .map(|(a, _)| *a)
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(());
    }
    println!(
        "{:<48} {:<10} {:<12} {:>9}  {:<10} note",
        "model", "arch", "dtype", "size", "source"
    );
    for m in &models {
        println!("{}", row(m));
    }
    Ok(())
}

fn row(m: &LocalModel) -> String {
    let name = match &m.alias {
        Some(alias) => format!("{} ({alias})", m.name),
        None => m.name.clone(),
    };
    let note = match &m.missing {
        Some(missing) => format!("incomplete: {missing}"),
        None => String::new(),
    };
    format!(
        "{name:<48} {:<10} {:<12} {:>9}  {:<10} {note}",
        m.arch,
        m.dtypes.join(","),
        human_size(m.size_bytes),
        m.kind
    )
}

fn human_size(bytes: u64) -> String {
    let gib = bytes as f64 / (1u64 << 30) as f64;
    if gib >= 1.0 {
        format!("{gib:.2} GiB")
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}
