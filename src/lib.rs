//! atelier: a terminal workstation for image-to-image generation.

pub mod engine;
pub mod hash;
