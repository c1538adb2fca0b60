//! The instruction-set path the CPU kernels run on: baseline x86-64, AVX2+FMA or AVX-512.
//!
//! Matrix products round differently on each path (16-lane AVX-512 tiles accumulate in
//! another order than 8-lane AVX2 ones, and the baseline has no fused multiply-add), so a run
//! is bit for bit reproducible only on one path. The path is chosen once per process — the
//! best the CPU has, or the one `GPTLAB_ISA` names — and never changes after the first kernel
//! ran; provenance and checkpoints record it so a resume on another path is said, not hidden.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// The environment variable that pins the path.
pub const ENV: &str = "GPTLAB_ISA";

/// An instruction-set path, from the oldest to the widest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isa {
    /// x86-64's baseline (SSE2), or the target's default elsewhere: runs on any CPU.
    Baseline,
    /// AVX2 with FMA (x86-64-v3): 8 lanes.
    Avx2,
    /// AVX-512 F, BW, CD, DQ and VL (x86-64-v4): 16 lanes.
    Avx512,
}

/// Every path, oldest first.
pub const ALL: [Isa; 3] = [Isa::Baseline, Isa::Avx2, Isa::Avx512];

impl Isa {
    /// The name `GPTLAB_ISA` and provenance use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::Avx2 => "avx2",
            Self::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run the path (the features the kernels use and those `gemm`'s
    /// kernels for it check for).
    pub fn supported(self) -> bool {
        match self {
            Self::Baseline => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && gemm_common::simd::V3::try_new().is_some()
            }
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => {
                Self::Avx2.supported()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512cd")
                    && is_x86_feature_detected!("avx512dq")
                    && is_x86_feature_detected!("avx512vl")
                    && gemm_common::simd::V4::try_new().is_some()
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The widest path this CPU runs.
    pub fn best() -> Self {
        choose(None, Self::supported).map_or(Self::Baseline, |c| c.isa)
    }

    /// The paths this CPU runs, oldest first.
    pub fn supported_paths() -> Vec<Self> {
        ALL.into_iter().filter(|isa| isa.supported()).collect()
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Isa {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ALL.into_iter()
            .find(|isa| isa.name() == s.trim())
            .ok_or_else(|| format!("`{s}` is not an instruction-set path; use baseline, avx2 or avx512"))
    }
}

/// The path of this process and why it was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    /// The path.
    pub isa: Isa,
    /// Whether `GPTLAB_ISA` pinned it (else it is the CPU's best).
    pub pinned: bool,
}

impl Choice {
    /// `isa: avx512 (the CPU's widest)` / `isa: avx2 (pinned by GPTLAB_ISA)`.
    pub fn line(self) -> String {
        let why = if self.pinned {
            "pinned by GPTLAB_ISA"
        } else {
            "the CPU's widest"
        };
        format!("isa: {} ({why})", self.isa)
    }
}

static CHOSEN: OnceLock<Choice> = OnceLock::new();

/// Reads `GPTLAB_ISA` (unset or empty: the CPU's best path); an error names a value that is
/// not a path or a path this CPU lacks.
pub fn from_env() -> Result<Choice, String> {
    choose(std::env::var(ENV).ok().as_deref(), Isa::supported)
}

/// The path `value` (of `GPTLAB_ISA`) asks for on a CPU that runs the paths `runs` accepts:
/// unset or blank is the widest of those.
pub fn choose(value: Option<&str>, runs: impl Fn(Isa) -> bool) -> Result<Choice, String> {
    let Some(value) = value.filter(|v| !v.trim().is_empty()) else {
        let best = ALL.into_iter().rev().find(|&isa| runs(isa)).unwrap_or(Isa::Baseline);
        return Ok(Choice {
            isa: best,
            pinned: false,
        });
    };
    let isa: Isa = value.parse().map_err(|e| format!("{ENV}: {e}"))?;
    if !runs(isa) {
        let have: Vec<&str> = ALL.into_iter().filter(|&i| runs(i)).map(Isa::name).collect();
        return Err(format!(
            "{ENV}={isa}: this CPU cannot run the {isa} path (it runs: {})",
            have.join(", ")
        ));
    }
    Ok(Choice { isa, pinned: true })
}

/// Fixes this process's path from `GPTLAB_ISA`, or returns the one already fixed. Call it
/// before any kernel runs to turn a bad `GPTLAB_ISA` into an error instead of a panic.
pub fn init() -> Result<Choice, String> {
    if let Some(choice) = CHOSEN.get() {
        return Ok(*choice);
    }
    let choice = from_env()?;
    Ok(*CHOSEN.get_or_init(|| choice))
}

/// This process's path (fixed on first use).
///
/// # Panics
/// When `GPTLAB_ISA` is invalid and [`init`] was not called first to report it.
pub fn current() -> Isa {
    CHOSEN
        .get()
        .copied()
        .unwrap_or_else(|| init().unwrap_or_else(|e| panic!("{e}")))
        .isa
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_names_are_refused() {
        for isa in ALL {
            assert_eq!(isa.name().parse::<Isa>().unwrap(), isa);
            assert_eq!(serde_json::to_string(&isa).unwrap(), format!("\"{isa}\""));
        }
        let err = "avx512f".parse::<Isa>().unwrap_err();
        assert!(err.contains("baseline, avx2 or avx512"), "{err}");
    }

    #[test]
    fn a_path_the_cpu_lacks_is_refused_and_unset_means_the_widest() {
        let avx2_cpu = |isa: Isa| isa <= Isa::Avx2;
        let err = choose(Some("avx512"), avx2_cpu).unwrap_err();
        assert_eq!(
            err,
            "GPTLAB_ISA=avx512: this CPU cannot run the avx512 path (it runs: baseline, avx2)"
        );
        let widest = Choice {
            isa: Isa::Avx2,
            pinned: false,
        };
        assert_eq!(choose(None, avx2_cpu).unwrap(), widest);
        assert_eq!(choose(Some(" "), avx2_cpu).unwrap(), widest);
        let pinned = Choice {
            isa: Isa::Baseline,
            pinned: true,
        };
        assert_eq!(choose(Some("baseline"), avx2_cpu).unwrap(), pinned);
        assert!(
            choose(Some("sse9"), avx2_cpu)
                .unwrap_err()
                .starts_with("GPTLAB_ISA: `sse9`")
        );
    }

    #[test]
    fn paths_nest_and_the_best_is_supported() {
        assert!(Isa::Baseline.supported());
        if Isa::Avx512.supported() {
            assert!(Isa::Avx2.supported(), "AVX-512 without AVX2");
        }
        assert!(Isa::best().supported());
        assert_eq!(*Isa::supported_paths().last().unwrap(), Isa::best());
    }
}
