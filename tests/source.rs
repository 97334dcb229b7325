//! Source preprocessing: formats, EXIF orientation, alpha, 16-bit and
//! grayscale, crop rectangles, fit modes, multiples of 8, size limits.

use atelier::engine::source::{
    flatten_to_rgb, load_source, oriented_dimensions, output_size, prepare, to_tensor, CropRect,
    Fit,
};
use image::{DynamicImage, GenericImageView, ImageBuffer, Luma, Rgb, RgbImage, Rgba};

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn exif_orientation_is_applied() {
    // Stored 16x8, red left and blue right, EXIF orientation 6 (rotate 90).
    let img = load_source(&fixture("exif-rotate-90.jpg")).unwrap();
    assert_eq!(img.dimensions(), (8, 16));
    // Read from the header alone (the workstation's crop, the size check).
    assert_eq!(
        oriented_dimensions(&fixture("exif-rotate-90.jpg")).unwrap(),
        (8, 16)
    );
    let rgb = img.to_rgb8();
    assert!(
        rgb.get_pixel(4, 2)[0] > 200 && rgb.get_pixel(4, 2)[2] < 50,
        "top is red"
    );
    assert!(
        rgb.get_pixel(4, 13)[2] > 200 && rgb.get_pixel(4, 13)[0] < 50,
        "bottom is blue"
    );
}

#[test]
fn alpha_is_flattened_onto_white() {
    let mut rgba = ImageBuffer::<Rgba<u8>, _>::new(2, 1);
    rgba.put_pixel(0, 0, Rgba([0, 0, 0, 0]));
    rgba.put_pixel(1, 0, Rgba([0, 0, 0, 255]));
    let rgb = flatten_to_rgb(&DynamicImage::ImageRgba8(rgba));
    assert_eq!(rgb.get_pixel(0, 0), &Rgb([255, 255, 255]));
    assert_eq!(rgb.get_pixel(1, 0), &Rgb([0, 0, 0]));
}

#[test]
fn grayscale_and_16_bit_become_8_bit_rgb() {
    let gray = ImageBuffer::<Luma<u16>, _>::from_pixel(8, 8, Luma([65535]));
    let rgb = flatten_to_rgb(&DynamicImage::ImageLuma16(gray));
    assert_eq!(rgb.get_pixel(3, 3), &Rgb([255, 255, 255]));
}

#[test]
fn sizes_round_down_to_multiples_of_8_and_keep_aspect() {
    assert_eq!(output_size((517, 389), None, None).unwrap(), (512, 384));
    assert_eq!(
        output_size((1000, 500), Some(512), None).unwrap(),
        (512, 256)
    );
    assert_eq!(
        output_size((1000, 500), None, Some(300)).unwrap(),
        (600, 296)
    );
    assert_eq!(
        output_size((64, 64), Some(100), Some(70)).unwrap(),
        (96, 64)
    );
}

#[test]
fn too_small_or_too_large_sizes_are_refused_with_advice() {
    let err = output_size((5, 5), None, None).unwrap_err().to_string();
    assert!(err.contains("at least 8"), "{err}");
    let err = output_size((6000, 4000), None, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("over the limit") && err.contains("--width"),
        "{err}"
    );
}

#[test]
fn fit_modes_fill_the_requested_size() {
    // A 40x20 source: left half black, right half white.
    let src = RgbImage::from_fn(40, 20, |x, _| {
        if x < 20 {
            Rgb([0, 0, 0])
        } else {
            Rgb([255, 255, 255])
        }
    });
    let src = DynamicImage::ImageRgb8(src);
    for fit in [Fit::Crop, Fit::Pad, Fit::Stretch] {
        assert_eq!(
            prepare(&src, None, (16, 16), fit).unwrap().dimensions(),
            (16, 16),
            "{fit}"
        );
    }
    // Pad keeps everything and fills above and below with white.
    let pad = prepare(&src, None, (16, 16), Fit::Pad).unwrap();
    assert_eq!(pad.get_pixel(2, 0), &Rgb([255, 255, 255]));
    assert!(pad.get_pixel(2, 8)[0] < 30, "the black half survives");
    // Crop takes the centre: both halves visible, no padding.
    let crop = prepare(&src, None, (16, 16), Fit::Crop).unwrap();
    assert!(crop.get_pixel(1, 0)[0] < 30 && crop.get_pixel(14, 15)[0] > 225);
}

#[test]
fn a_crop_rectangle_selects_part_of_the_source() {
    let src = RgbImage::from_fn(32, 32, |x, y| Rgb([x as u8 * 8, y as u8 * 8, 0]));
    let src = DynamicImage::ImageRgb8(src);
    let crop: CropRect = "8,16,16,8".parse().unwrap();
    let out = prepare(&src, Some(crop), (16, 8), Fit::Crop).unwrap();
    assert_eq!(out.get_pixel(0, 0), &Rgb([64, 128, 0]));
    let outside: CropRect = "20,20,16,16".parse().unwrap();
    let err = prepare(&src, Some(outside), (16, 16), Fit::Crop)
        .unwrap_err()
        .to_string();
    assert!(err.contains("outside the 32x32 source"), "{err}");
    assert!("1,2,3".parse::<CropRect>().is_err());
    assert!("0,0,0,5".parse::<CropRect>().is_err());
}

#[test]
fn files_that_are_not_images_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.png");
    std::fs::write(&path, b"this is text, not a PNG").unwrap();
    let err = load_source(&path).unwrap_err().to_string();
    assert!(
        err.contains("notes.png") && err.contains("not an image"),
        "{err}"
    );
    let err = load_source(&dir.path().join("missing.jpg"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.jpg"), "{err}");
}

#[test]
fn enormous_sources_are_refused_before_decoding() {
    // A PNG header claiming 20000 x 20000 pixels.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.png");
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, 20000, 20000);
        enc.set_color(png::ColorType::Grayscale);
        let mut w = enc.write_header().unwrap();
        let _ = w.write_image_data(&[]);
    }
    std::fs::write(&path, &bytes).unwrap();
    let err = load_source(&path).unwrap_err().to_string();
    assert!(err.contains("too large"), "{err}");
}

#[test]
fn pixels_map_to_minus_one_one() {
    let img = RgbImage::from_fn(8, 8, |x, _| {
        if x == 0 {
            Rgb([0, 0, 0])
        } else {
            Rgb([255, 255, 255])
        }
    });
    let t = to_tensor(&img, &candle_core::Device::Cpu).unwrap();
    assert_eq!(t.dims(), &[1, 3, 8, 8]);
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(v[0], -1.0);
    assert_eq!(v[1], 1.0);
}
