//! gptlab: compare transformer variants by writing a TOML file.
//!
//! Data flows one way: [`spec`] (the file) → [`plan`] (runs) → [`train`] → metrics.
pub mod model;
