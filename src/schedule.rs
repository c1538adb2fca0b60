//! Learning-rate schedules: constant, cosine, linear and warmup-stable-decay, each with an
//! optional linear warmup. One small function ([`LrSchedule::at`]) is the whole formula.

use serde::{Deserialize, Serialize};

/// `[train] schedule`, `[[phase]] schedule`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// The peak rate throughout (after any warmup).
    #[default]
    Constant,
    /// Half a cosine from the peak down to the floor at the last step (nanoGPT's shape).
    Cosine,
    /// A straight line from the peak down to the floor at the last step.
    Linear,
    /// Warmup-stable-decay: the peak, then a decay over the last `decay_steps` to the floor.
    Wsd,
}

impl std::fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ScheduleKind::Constant => "constant",
            ScheduleKind::Cosine => "cosine",
            ScheduleKind::Linear => "linear",
            ScheduleKind::Wsd => "wsd",
        })
    }
}

/// The shape of a `wsd` schedule's decay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecayShape {
    /// `1 − q`.
    #[default]
    Linear,
    /// `1 − √q`.
    Sqrt,
    /// `½(1 + cos πq)`.
    Cosine,
}

/// A schedule laid over `steps` optimizer steps, numbered from 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    /// Its shape.
    pub kind: ScheduleKind,
    /// The peak rate.
    pub peak: f64,
    /// The floor a decay ends at.
    pub min: f64,
    /// Steps of linear warmup.
    pub warmup: usize,
    /// Steps the schedule spans.
    pub steps: usize,
    /// `wsd`: steps of the final decay.
    pub decay: usize,
    /// `wsd`: its shape.
    pub shape: DecayShape,
}

impl LrSchedule {
    /// The peak rate at every step.
    pub fn constant(peak: f64, steps: usize) -> Self {
        Self {
            kind: ScheduleKind::Constant,
            peak,
            min: peak,
            warmup: 0,
            steps,
            decay: 0,
            shape: DecayShape::Linear,
        }
    }

    /// The rate of step `s` (1-based) of the schedule:
    /// - warmup, `s ≤ W`: `peak · s / W` (step 1 gets `peak / W`, never 0; step `W` the peak);
    /// - then, with `p = (s − W) / (S − W)` in (0, 1]: constant `peak`; cosine
    ///   `min + (peak − min) · ½(1 + cos πp)`; linear `min + (peak − min)(1 − p)` (both reach
    ///   `min` exactly at the last step `S`);
    /// - wsd: `peak` up to step `S − D`, then with `q = (s − (S − D)) / D` in (0, 1]:
    ///   `min + (peak − min) · f(q)`, `f` = `1 − q`, `1 − √q` or `½(1 + cos πq)`.
    pub fn at(&self, s: usize) -> f64 {
        let (peak, min, w) = (self.peak, self.min, self.warmup);
        if s <= w {
            return peak * s as f64 / w as f64;
        }
        let p = (s - w) as f64 / (self.steps.max(s) - w) as f64;
        let cosine = |x: f64| 0.5 * (1.0 + (std::f64::consts::PI * x).cos());
        match self.kind {
            ScheduleKind::Constant => peak,
            ScheduleKind::Cosine => min + (peak - min) * cosine(p),
            ScheduleKind::Linear => min + (peak - min) * (1.0 - p),
            ScheduleKind::Wsd => {
                let stable_end = self.steps.saturating_sub(self.decay);
                if s <= stable_end || self.decay == 0 {
                    return peak;
                }
                let q = ((s - stable_end) as f64 / self.decay as f64).min(1.0);
                let f = match self.shape {
                    DecayShape::Linear => 1.0 - q,
                    DecayShape::Sqrt => 1.0 - q.sqrt(),
                    DecayShape::Cosine => cosine(q),
                };
                min + (peak - min) * f
            }
        }
    }

    /// Whether a step's rate depends on how many steps the schedule spans (a decay does;
    /// a constant rate with or without warmup does not).
    pub fn depends_on_length(&self) -> bool {
        self.kind != ScheduleKind::Constant
    }
}
