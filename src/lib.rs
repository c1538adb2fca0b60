//! gptlab: compare transformer variants by writing a TOML file.
//!
//! Data flows one way: [`spec`] (the file) → [`plan`] (runnable runs) → [`train`]
//! (metrics under `runs/`). [`model`] and [`data`] are the pieces training is made of.

#![warn(missing_docs)]

pub mod alloc;
pub mod checkpoint;
pub mod data;
pub mod device;
pub mod discover;
pub mod error;
pub mod events;
pub mod experiment;
pub mod format;
pub mod fsio;
pub mod interrupt;
pub mod isa;
pub mod lock;
pub mod model;
pub mod params;
pub mod plan;
pub mod probe;
pub mod provenance;
pub mod report;
pub mod run_dir;
pub mod sample;
pub mod schedule;
pub mod seed;
pub mod session;
pub mod slurm;
pub mod spec;
pub mod stats;
pub mod status;
pub mod train;

pub use error::Error;
