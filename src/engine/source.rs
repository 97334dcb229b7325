//! Source images: decoded with limits, EXIF orientation applied, alpha
//! flattened onto white, cropped to an optional rectangle, then fitted to the
//! generation size (a multiple of 8) by crop, pad or stretch.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use image::imageops::FilterType;
use image::{
    DynamicImage, GenericImageView, ImageDecoder, ImageReader, Limits, RgbImage, RgbaImage,
};
use serde::{Deserialize, Serialize};

/// The largest generation size, in pixels (2048 x 2048).
pub const MAX_OUTPUT_PIXELS: u64 = 2048 * 2048;
/// The largest source side atelier decodes.
pub const MAX_SOURCE_SIDE: u32 = 16384;

/// How a source whose shape differs from the output's is fitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fit {
    /// Scale to cover, then centre crop.
    #[default]
    Crop,
    /// Scale to fit inside, then pad with white.
    Pad,
    /// Scale each axis independently.
    Stretch,
}

impl FromStr for Fit {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "crop" => Fit::Crop,
            "pad" => Fit::Pad,
            "stretch" => Fit::Stretch,
            other => bail!("unknown fit {other:?}; choose crop, pad or stretch"),
        })
    }
}

impl fmt::Display for Fit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fit::Crop => "crop",
            Fit::Pad => "pad",
            Fit::Stretch => "stretch",
        })
    }
}

/// A rectangle of the source, in source pixels (after EXIF orientation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CropRect {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

impl FromStr for CropRect {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let nums: Option<Vec<u32>> = parts.iter().map(|p| p.parse().ok()).collect();
        match nums.as_deref() {
            Some(&[x, y, w, h]) if w > 0 && h > 0 => Ok(CropRect { x, y, w, h }),
            _ => bail!(
                "crop {s:?} must be X,Y,W,H in pixels, with W and H above 0 (e.g. 100,50,512,512)"
            ),
        }
    }
}

impl fmt::Display for CropRect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{},{},{}", self.x, self.y, self.w, self.h)
    }
}

/// Decodes an image file with EXIF orientation applied.
pub fn load_source(path: &Path) -> Result<DynamicImage> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot open the source image {}", path.display()))?;
    decode_source(&bytes, path)
}

/// The size of an image file as [`load_source`] gives it (EXIF
/// orientation applied), from its header: without decoding it.
pub fn oriented_dimensions(path: &Path) -> Result<(u32, u32)> {
    use image::metadata::Orientation::*;
    let reader = ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut decoder = reader
        .into_decoder()
        .with_context(|| format!("{} is not an image atelier can read", path.display()))?;
    let (w, h) = decoder.dimensions();
    Ok(match decoder.orientation() {
        Ok(Rotate90 | Rotate270 | Rotate90FlipH | Rotate270FlipH) => (h, w),
        _ => (w, h),
    })
}

/// Decodes image bytes read from `path` (named in errors), as `load_source`.
pub fn decode_source(bytes: &[u8], path: &Path) -> Result<DynamicImage> {
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SOURCE_SIDE);
    limits.max_image_height = Some(MAX_SOURCE_SIDE);
    limits.max_alloc = Some(2 << 30);
    reader.limits(limits);
    let not_image = |e: image::ImageError| match e {
        image::ImageError::Limits(_) => anyhow::anyhow!(
            "the source {} is too large to decode (at most {MAX_SOURCE_SIDE} pixels a side); \
             downscale it first",
            path.display()
        ),
        other => anyhow::anyhow!(
            "{} is not an image atelier can read ({other}); use PNG, JPEG, WebP, BMP, GIF or TIFF",
            path.display()
        ),
    };
    if reader.format().is_none() {
        bail!(
            "{} is not an image atelier can read (unknown format); use PNG, JPEG, WebP, BMP, GIF or TIFF",
            path.display()
        );
    }
    let mut decoder = reader.into_decoder().map_err(not_image)?;
    let orientation = decoder.orientation().map_err(not_image)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(not_image)?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// Any colour type to 8-bit RGB; transparent pixels are composited on white.
pub fn flatten_to_rgb(img: &DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.to_rgb8();
    }
    let rgba: RgbaImage = img.to_rgba8();
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let p = rgba.get_pixel(x, y).0;
        let a = p[3] as u32;
        let blend = |c: u8| ((c as u32 * a + 255 * (255 - a) + 127) / 255) as u8;
        image::Rgb([blend(p[0]), blend(p[1]), blend(p[2])])
    })
}

fn round8(x: u32) -> u32 {
    x - x % 8
}

/// The generation size for a (cropped) source of `src` pixels: given sizes
/// are rounded down to multiples of 8; one missing side keeps the aspect.
pub fn output_size(src: (u32, u32), width: Option<u32>, height: Option<u32>) -> Result<(u32, u32)> {
    let (sw, sh) = src;
    let (w, h) = match (width, height) {
        (Some(w), Some(h)) => (w, h),
        (Some(w), None) => (w, (w as f64 * sh as f64 / sw as f64).round() as u32),
        (None, Some(h)) => ((h as f64 * sw as f64 / sh as f64).round() as u32, h),
        (None, None) => (sw, sh),
    };
    let (w, h) = (round8(w), round8(h));
    if w == 0 || h == 0 {
        bail!("the generation size {w}x{h} is too small: both sides must be at least 8 pixels");
    }
    if w as u64 * h as u64 > MAX_OUTPUT_PIXELS {
        bail!(
            "the generation size {w}x{h} is over the limit of {} pixels (2048x2048); \
             choose a smaller size (--width 1024 keeps the aspect; z in the workstation) \
             or crop the source",
            MAX_OUTPUT_PIXELS
        );
    }
    Ok((w, h))
}

/// Crops, then fits the source to exactly `size`.
pub fn prepare(
    img: &DynamicImage,
    crop: Option<CropRect>,
    size: (u32, u32),
    fit: Fit,
) -> Result<RgbImage> {
    let img = match crop {
        None => img.clone(),
        Some(c) => {
            let (iw, ih) = img.dimensions();
            if c.x as u64 + c.w as u64 > iw as u64 || c.y as u64 + c.h as u64 > ih as u64 {
                bail!("crop {c} reaches outside the {iw}x{ih} source");
            }
            img.crop_imm(c.x, c.y, c.w, c.h)
        }
    };
    let rgb = flatten_to_rgb(&img);
    let (w, h) = size;
    if rgb.dimensions() == size {
        return Ok(rgb);
    }
    let (sw, sh) = rgb.dimensions();
    Ok(match fit {
        Fit::Stretch => image::imageops::resize(&rgb, w, h, FilterType::Lanczos3),
        Fit::Crop => {
            let scale = (w as f64 / sw as f64).max(h as f64 / sh as f64);
            let (rw, rh) = (
                ((sw as f64 * scale).round() as u32).max(w),
                ((sh as f64 * scale).round() as u32).max(h),
            );
            let resized = image::imageops::resize(&rgb, rw, rh, FilterType::Lanczos3);
            image::imageops::crop_imm(&resized, (rw - w) / 2, (rh - h) / 2, w, h).to_image()
        }
        Fit::Pad => {
            let scale = (w as f64 / sw as f64).min(h as f64 / sh as f64);
            let (rw, rh) = (
                ((sw as f64 * scale).round() as u32).clamp(1, w),
                ((sh as f64 * scale).round() as u32).clamp(1, h),
            );
            let resized = image::imageops::resize(&rgb, rw, rh, FilterType::Lanczos3);
            let mut canvas = RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
            image::imageops::replace(
                &mut canvas,
                &resized,
                ((w - rw) / 2) as i64,
                ((h - rh) / 2) as i64,
            );
            canvas
        }
    })
}

/// RGB pixels to the VAE's input: f32 [1, 3, h, w] in [-1, 1].
pub fn to_tensor(img: &RgbImage, device: &Device) -> Result<Tensor> {
    let (w, h) = img.dimensions();
    let data: Vec<f32> = img
        .as_raw()
        .iter()
        .map(|&v| v as f32 / 255.0 * 2.0 - 1.0)
        .collect();
    Ok(Tensor::from_vec(data, (h as usize, w as usize, 3), device)?
        .permute((2, 0, 1))?
        .unsqueeze(0)?
        .contiguous()?)
}

/// [3, h, w] in [0, 1] to 8-bit RGB, rounding as diffusers does.
pub fn from_tensor(t: &Tensor) -> Result<RgbImage> {
    let (c, h, w) = t.dims3()?;
    if c != 3 {
        bail!("expected an RGB tensor, got {c} channels");
    }
    let data = t
        .to_device(&Device::Cpu)?
        .to_dtype(candle_core::DType::F32)?
        .permute((1, 2, 0))?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let bytes = data
        .iter()
        .map(|v| (v * 255.0).round().clamp(0.0, 255.0) as u8)
        .collect();
    RgbImage::from_raw(w as u32, h as u32, bytes).context("image buffer size")
}
