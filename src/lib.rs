//! gptlab: compare transformer variants by writing a TOML file.
//!
//! Data flows one way: [`spec`] (the file) → [`plan`] (runnable runs) → [`train`]
//! (metrics under `runs/`). [`model`] and [`data`] are the pieces training is made of.

pub mod alloc;
pub mod checkpoint;
pub mod data;
pub mod device;
pub mod discover;
pub mod lock;
pub mod model;
pub mod params;
pub mod plan;
pub mod probe;
pub mod report;
pub mod sample;
pub mod seed;
pub mod spec;
pub mod train;
