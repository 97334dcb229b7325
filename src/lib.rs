//! atelier: a terminal workstation for image-to-image generation.

pub mod atomic;
pub mod benchmark;
pub mod cli;
pub mod config;
pub mod engine;
pub mod hash;
pub mod infotext;
pub mod jobs;
pub mod models;
pub mod png_meta;
pub mod project;
pub mod recipe;
pub mod sheet;
pub mod tui;
