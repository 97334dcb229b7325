//! Stable Diffusion img2img on candle, computed as diffusers'
//! `StableDiffusionImg2ImgPipeline` does.

pub mod blocks;
pub mod clip;
pub mod config;
pub mod conv;
pub mod cpu;
pub mod cuda;
pub mod device;
pub mod model;
pub mod noise;
pub mod pipeline;
pub mod preview;
pub mod profile;
pub mod random_weights;
pub mod scheduler;
pub mod single_file;
pub mod source;
pub mod tokenizer;
pub mod unet;
pub mod vae;
pub mod weights;

pub use model::{Model, TextConditioning, WeightSource};
pub use pipeline::{Cancelled, Engine, Event, Generation, Request, SourceInput, Timings};
pub use scheduler::SchedulerKind;
pub use source::{CropRect, Fit};
