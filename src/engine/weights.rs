//! Finding a component's safetensors files (single, `fp16` variant, or
//! sharded with an index) and opening them as a VarBuilder.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;

/// The weight file names a component folder may hold, in the order to
/// prefer them: half-precision runs prefer the `fp16` variant, full
/// precision the full file (each falls back to the other).
pub fn weight_candidates(stem: &str, prefer_half: bool) -> Vec<String> {
    let full = [
        format!("{stem}.safetensors"),
        format!("{stem}.safetensors.index.json"),
    ];
    let half = [
        format!("{stem}.fp16.safetensors"),
        format!("{stem}.safetensors.index.fp16.json"),
        format!("{stem}.fp16.safetensors.index.json"),
    ];
    if prefer_half {
        half.into_iter().chain(full).collect()
    } else {
        full.into_iter().chain(half).collect()
    }
}

/// Which weight files a component folder holds, in the order to prefer them.
/// `stem` is `diffusion_pytorch_model` for the UNet and VAE, `model` for the
/// text encoder. Half-precision runs prefer the `fp16` variant; full
/// precision runs prefer the full file and fall back to the variant.
pub fn weight_files(dir: &Path, stem: &str, prefer_half: bool) -> Result<Vec<PathBuf>> {
    for name in weight_candidates(stem, prefer_half) {
        let path = dir.join(&name);
        if path.is_file() {
            return if name.ends_with(".json") {
                shards_from_index(&path)
            } else {
                Ok(vec![path])
            };
        }
    }
    if dir.join(format!("{stem}.bin")).is_file() || dir.join("pytorch_model.bin").is_file() {
        bail!(
            "{} holds only PyTorch .bin weights; atelier reads safetensors. Convert them \
             (e.g. diffusers' `save_pretrained(..., safe_serialization=True)`)",
            dir.display()
        );
    }
    bail!(
        "no weights in {}: expected {stem}.safetensors (or its fp16 variant, or a sharded \
         {stem}.safetensors.index.json)",
        dir.display()
    )
}

/// The shard file names a `*.safetensors.index.json` lists.
pub fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index)
        .with_context(|| format!("cannot read {}", index.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", index.display()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{} has no `weight_map`", index.display()))?;
    let names: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
    Ok(names.into_iter().map(String::from).collect())
}

fn shards_from_index(index: &Path) -> Result<Vec<PathBuf>> {
    let dir = index.parent().unwrap_or(Path::new("."));
    let shards: Vec<PathBuf> = shard_names(index)?
        .into_iter()
        .map(|n| dir.join(n))
        .collect();
    if let Some(missing) = shards.iter().find(|p| !p.is_file()) {
        bail!(
            "{} names the shard {}, which is missing",
            index.display(),
            missing.display()
        );
    }
    Ok(shards)
}

/// Opens the files memory-mapped; tensors are converted to `dtype` on load.
pub fn var_builder(
    files: &[PathBuf],
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    for file in files {
        check_safetensors_header(file)?;
    }
    // SAFETY: the files are mapped read-only; atelier never writes model files,
    // and a user replacing them mid-run is outside what mmap can guard.
    unsafe { VarBuilder::from_mmaped_safetensors(files, dtype, device) }
        .with_context(|| format!("cannot load weights from {}", describe(files)))
}

/// A readable error for a file that is not safetensors at all (truncated
/// download, an HTML error page saved under the weight's name, ...).
/// A safetensors file's header: the JSON object naming each tensor (dtype,
/// shape, data offsets; `__metadata__` included), and how many data bytes
/// follow it. Reads only the header, never the weights.
pub fn read_safetensors_header(
    file: &Path,
) -> Result<(serde_json::Map<String, serde_json::Value>, u64)> {
    use std::io::Read;
    let mut f =
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let size = f.metadata()?.len();
    let mut len = [0u8; 8];
    let corrupt = |why: String| {
        anyhow::anyhow!(
            "{} is not a valid safetensors file ({why}); download it again",
            file.display()
        )
    };
    f.read_exact(&mut len)
        .map_err(|_| corrupt(format!("only {size} bytes")))?;
    let header_len = u64::from_le_bytes(len);
    if header_len == 0 || header_len > 100_000_000 || 8 + header_len > size {
        return Err(corrupt(format!(
            "header of {header_len} bytes in a file of {size} bytes"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header)
        .map_err(|_| corrupt("truncated header".into()))?;
    let json: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| corrupt(format!("header is not JSON: {e}")))?;
    match json {
        serde_json::Value::Object(map) => Ok((map, size - 8 - header_len)),
        _ => Err(corrupt("header is not a JSON object".into())),
    }
}

fn check_safetensors_header(file: &Path) -> Result<()> {
    let (map, data_len) = read_safetensors_header(file)?;
    // Every tensor's data must lie inside the file.
    for (name, info) in &map {
        if name == "__metadata__" {
            continue;
        }
        let end = info
            .get("data_offsets")
            .and_then(|o| o.get(1))
            .and_then(|e| e.as_u64())
            .unwrap_or(0);
        if end > data_len {
            bail!(
                "{} is not a valid safetensors file (tensor `{name}` ends at byte {end} of \
                 {data_len} data bytes: the file is truncated); download it again",
                file.display()
            );
        }
    }
    Ok(())
}

pub fn describe(files: &[PathBuf]) -> String {
    match files {
        [one] => one.display().to_string(),
        many => format!(
            "{} shards in {}",
            many.len(),
            many[0].parent().unwrap_or(Path::new(".")).display()
        ),
    }
}

/// A cheap, stable identity for a set of weight files: SHA-256 over each
/// file's name, size, first and last MiB. Hashing gigabytes per load would
/// take longer than the generation; this still changes when a file does.
pub fn fingerprint(files: &[PathBuf]) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Seek, SeekFrom};
    const WINDOW: u64 = 1 << 20;
    let mut sorted: Vec<&PathBuf> = files.iter().collect();
    sorted.sort();
    let mut hasher = Sha256::new();
    for path in sorted {
        let mut f =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let size = f.metadata()?.len();
        hasher.update(
            path.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .as_bytes(),
        );
        hasher.update(size.to_le_bytes());
        let mut buf = vec![0u8; WINDOW.min(size) as usize];
        f.read_exact(&mut buf)?;
        hasher.update(&buf);
        if size > WINDOW {
            f.seek(SeekFrom::Start(size - WINDOW.min(size)))?;
            f.read_exact(&mut buf)?;
            hasher.update(&buf);
        }
    }
    Ok(hasher
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect())
}
