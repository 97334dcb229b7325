//! PNGs with text chunks: A1111's `parameters` and atelier's own record.

use std::path::Path;

use anyhow::{Context, Result};
use image::RgbImage;

/// Encodes `image` as PNG with the given `tEXt`/`iTXt` chunks.
pub fn encode_png(image: &RgbImage, texts: &[(&str, &str)]) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, image.width(), image.height());
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        for (key, value) in texts {
            // iTXt holds UTF-8 (prompts are often not Latin-1); A1111 reads both.
            if value.is_ascii() {
                encoder.add_text_chunk(key.to_string(), value.to_string())?;
            } else {
                encoder.add_itxt_chunk(key.to_string(), value.to_string())?;
            }
        }
        let mut writer = encoder.write_header()?;
        writer.write_image_data(image.as_raw())?;
        writer.finish()?;
    }
    Ok(bytes)
}

/// Writes the PNG through a temporary file in the same folder, synced, then
/// renamed, so a crash never leaves a half-written image under the name.
pub fn write_png(path: &Path, image: &RgbImage, texts: &[(&str, &str)]) -> Result<()> {
    let bytes = encode_png(image, texts)
        .with_context(|| format!("cannot encode the PNG for {}", path.display()))?;
    crate::atomic::write_atomic(path, &bytes)
}

/// The text chunks of a PNG file, keyword to text.
pub fn read_png_texts(path: &Path) -> Result<Vec<(String, String)>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let decoder = png::Decoder::new(std::io::BufReader::new(file));
    let reader = decoder
        .read_info()
        .with_context(|| format!("{} is not a PNG", path.display()))?;
    let info = reader.info();
    let mut out: Vec<(String, String)> = info
        .uncompressed_latin1_text
        .iter()
        .map(|t| (t.keyword.clone(), t.text.clone()))
        .collect();
    for t in &info.compressed_latin1_text {
        if let Ok(text) = t.get_text() {
            out.push((t.keyword.clone(), text));
        }
    }
    for t in &info.utf8_text {
        if let Ok(text) = t.get_text() {
            out.push((t.keyword.clone(), text));
        }
    }
    Ok(out)
}
