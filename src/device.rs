//! Which device trains: the CPU, or an NVIDIA GPU when the binary was built with
//! `--features cuda` (`just build-cuda`).

use serde::{Deserialize, Serialize};

/// The device a spec or the command line asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceRequest {
    /// The GPU when this binary has CUDA and one is present, else the CPU.
    #[default]
    Auto,
    /// The CPU, on all cores unless `--threads` says otherwise.
    Cpu,
    /// GPU 0; an error when this binary has no CUDA or no GPU is present.
    Cuda,
}

impl std::fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        })
    }
}

impl std::str::FromStr for DeviceRequest {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda),
            other => Err(format!("`{other}` is not a device; use auto, cpu or cuda")),
        }
    }
}

/// The device chosen for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chosen {
    /// dfdx's `Cpu` with gptlab's fused kernels.
    Cpu,
    /// dfdx's `Cuda` on GPU 0.
    Cuda,
}

/// Whether this binary was built with the CUDA backend.
pub const HAS_CUDA: bool = cfg!(feature = "cuda");

/// Chooses the device for `request`, with a line saying which and why; an error when CUDA is
/// asked for and cannot be had.
pub fn choose(request: DeviceRequest) -> Result<(Chosen, String), String> {
    match (request, HAS_CUDA) {
        (DeviceRequest::Cpu, _) => Ok((Chosen::Cpu, "device: cpu (requested)".into())),
        (DeviceRequest::Cuda, false) => Err("device `cuda` was requested but this gptlab was built without CUDA; \
             build it with `just build-cuda` (or `cargo build --release --features cuda`), or use --device cpu"
            .into()),
        (DeviceRequest::Cuda, true) => match probe_gpu() {
            Ok(name) => Ok((Chosen::Cuda, format!("device: cuda ({name}, requested)"))),
            Err(e) => Err(format!("device `cuda` was requested but no usable GPU was found: {e}")),
        },
        (DeviceRequest::Auto, false) => Ok((Chosen::Cpu, "device: cpu (auto: this build has no CUDA)".into())),
        (DeviceRequest::Auto, true) => match probe_gpu() {
            Ok(name) => Ok((Chosen::Cuda, format!("device: cuda (auto: found {name})"))),
            Err(e) => Ok((Chosen::Cpu, format!("device: cpu (auto: no usable GPU: {e})"))),
        },
    }
}

/// Opens GPU 0 for training.
#[cfg(feature = "cuda")]
pub fn open_cuda() -> anyhow::Result<dfdx::tensor::Cuda> {
    dfdx::tensor::Cuda::try_build(0, 0).map_err(|e| anyhow::anyhow!("opening CUDA device 0: {e:?}"))
}

/// GPU 0's description, if a CUDA device can be opened.
#[cfg(feature = "cuda")]
fn probe_gpu() -> Result<String, String> {
    // dfdx unwraps some driver results, so a broken or absent driver panics rather than
    // returning an error; catch it quietly, since the caller reports it in one line.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let opened = std::panic::catch_unwind(|| dfdx::tensor::Cuda::try_build(0, 0).map(|_| "GPU 0".to_string()));
    std::panic::set_hook(hook);
    opened
        .map_err(|_| "the CUDA driver could not be initialised".to_string())?
        .map_err(|e| format!("{e:?}"))
}

#[cfg(not(feature = "cuda"))]
fn probe_gpu() -> Result<String, String> {
    Err("this build has no CUDA".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_builds_choose_the_cpu_and_refuse_cuda() {
        if HAS_CUDA {
            return;
        }
        assert_eq!(choose(DeviceRequest::Cpu).unwrap().0, Chosen::Cpu);
        let (chosen, why) = choose(DeviceRequest::Auto).unwrap();
        assert_eq!(chosen, Chosen::Cpu);
        assert!(why.contains("no CUDA"), "{why}");
        let err = choose(DeviceRequest::Cuda).unwrap_err();
        assert!(
            err.contains("built without CUDA") && err.contains("build-cuda"),
            "{err}"
        );
    }
}
