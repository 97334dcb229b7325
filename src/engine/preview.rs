//! A cheap live preview: latents mapped to RGB by a fixed linear projection
//! (the well-known approximation for SD 1.x/2.x latent spaces), at 1/8 size.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use image::RgbImage;

/// Rows: latent channels; columns: R, G, B.
const LATENT_RGB: [[f32; 3]; 4] = [
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
];

/// `latents`: [1, 4, h, w] (unscaled, as the scheduler holds them).
pub fn latent_preview(latents: &Tensor) -> Result<RgbImage> {
    let (_, c, h, w) = latents.dims4()?;
    let l = latents
        .get(0)?
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?;
    let data = l.flatten_all()?.to_vec1::<f32>()?;
    let mut img = RgbImage::new(w as u32, h as u32);
    let channels = c.min(LATENT_RGB.len());
    for y in 0..h {
        for x in 0..w {
            let mut rgb = [0f32; 3];
            for (ch, row) in LATENT_RGB.iter().enumerate().take(channels) {
                let v = data[ch * h * w + y * w + x];
                for k in 0..3 {
                    rgb[k] += v * row[k];
                }
            }
            let px = rgb.map(|v| ((v + 1.0) * 127.5).clamp(0.0, 255.0) as u8);
            img.put_pixel(x as u32, y as u32, image::Rgb(px));
        }
    }
    Ok(img)
}
