//! The headless commands.

pub mod gen;
