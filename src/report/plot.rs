//! The study's figures as SVG: training loss curves with phase boundaries, and sweep charts.

use anyhow::{Result, anyhow};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One training's losses (one seed of a run).
#[derive(Clone, Debug, Default)]
pub struct Series {
    /// `(step, train loss)`, in step order.
    pub train: Vec<(f64, f64)>,
    /// `(step, validation loss)`.
    pub val: Vec<(f64, f64)>,
}

/// One run's curves: one [`Series`] per seed.
#[derive(Clone, Debug)]
pub struct Curve {
    /// Legend text.
    pub label: String,
    /// One per seed (one for a run without `seeds`).
    pub seeds: Vec<Series>,
}

/// A vertical marker where a phase changes.
pub struct Boundary {
    /// First step of the new phase.
    pub step: f64,
    /// e.g. `seq 128 → 256`.
    pub label: String,
}

/// Twelve colours that stay distinct on white (Tableau 10 plus two).
pub const PALETTE: [RGBColor; 12] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(0, 0, 128),
    RGBColor(128, 128, 0),
];

/// Colour of boundary lines.
pub const BOUNDARY: RGBColor = RGBColor(85, 85, 85);

/// Points kept per drawn series; longer runs are thinned so the SVG stays small.
const MAX_POINTS: usize = 1500;

/// A figure's canvas and font sizes. The page shows the first figure across the page
/// (768–1,240 px wide in windows 800–1,400 px wide) and the others in a grid (612–768 px), and
/// plotters writes a font of size `s` as `0.806·s` px: these sizes keep every tick label and
/// legend at 12 px or more on screen, as large as the page's small text (`tests/report.rs`
/// measures it in headless Chromium).
#[derive(Clone, Copy, Debug)]
pub struct Frame {
    /// Width and height of the SVG canvas.
    pub size: (u32, u32),
    /// The title.
    pub title: u32,
    /// Tick labels, legends, axis names and marks.
    pub text: u32,
}

/// The figure shown across the page: 960 px shown at 768 or more, text 19 → ≥ 12.2 px.
pub const WIDE: Frame = Frame {
    size: (960, 560),
    title: 24,
    text: 19,
};

/// A figure of the grid: 640 px shown at 612 or more, text 16 → ≥ 12.3 px.
pub const SMALL: Frame = Frame {
    size: (640, 440),
    title: 19,
    text: 16,
};

/// Exponential moving average with bias correction (as TensorBoard's smoothing);
/// `alpha = 0` returns the input.
pub fn ema(values: &[(f64, f64)], alpha: f64) -> Vec<(f64, f64)> {
    let mut avg = 0.0;
    let mut weight = 0.0;
    values
        .iter()
        .map(|&(x, y)| {
            avg = alpha * avg + (1.0 - alpha) * y;
            weight = alpha * weight + (1.0 - alpha);
            (x, if weight > 0.0 { avg / weight } else { y })
        })
        .collect()
}

/// The EMA factor that gives `alpha`'s smoothing at 1,000 points, scaled to `points`: the
/// average's time constant, 1/(1 − α) points at 1,000, is kept at the same share of the run,
/// so a short run is not smoothed into a curve that visibly lags its own points (0 below a
/// time constant of one point). TensorBoard's fixed per-point factor lags a 40-step run by a
/// quarter of its length at 0.9; here it is 1% of any run.
pub fn scaled_smoothing(alpha: f64, points: usize) -> f64 {
    let tau = points as f64 / 1000.0 / (1.0 - alpha).max(1e-9);
    if tau <= 1.0 { 0.0 } else { 1.0 - 1.0 / tau }
}

/// Per step, the mean and the min–max over the series that have that step.
fn across_seeds(series: &[Vec<(f64, f64)>]) -> Vec<(f64, f64, f64, f64)> {
    let mut at: std::collections::BTreeMap<i64, Vec<f64>> = Default::default();
    for s in series {
        for &(x, y) in s.iter().filter(|(x, y)| x.is_finite() && y.is_finite()) {
            at.entry(x.round() as i64).or_default().push(y);
        }
    }
    at.into_iter()
        .map(|(x, ys)| {
            let mean = ys.iter().sum::<f64>() / ys.len() as f64;
            let lo = ys.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = ys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (x as f64, mean, lo, hi)
        })
        .collect()
}

fn thin(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let stride = points.len().div_ceil(MAX_POINTS).max(1);
    let mut out: Vec<(f64, f64)> = points.iter().step_by(stride).copied().collect();
    if let (Some(last), Some(kept)) = (points.last(), out.last())
        && last != kept
    {
        out.push(*last);
    }
    out
}

fn finite(points: &[(f64, f64)]) -> impl Iterator<Item = &(f64, f64)> {
    points.iter().filter(|(x, y)| x.is_finite() && y.is_finite())
}

pub(super) fn padded(lo: f64, hi: f64) -> (f64, f64) {
    let span = (hi - lo).max(1e-3);
    (lo - 0.05 * span, hi + 0.05 * span)
}

/// A y tick label that fits its axis: plain for ordinary losses, scientific notation for a
/// curve that ran off to 1e16 (a diverging run) or down to 1e-5; tokens per second stay plain.
pub(super) fn tick(y: f64) -> String {
    use plotters::coord::ranged1d::ValueFormatter;
    let a = y.abs();
    if a != 0.0 && !(1e-3..1e8).contains(&a) {
        format!("{y:.1e}")
    } else {
        // plotters' own label, as every ordinary figure had it.
        plotters::coord::types::RangedCoordf64::format(&y)
    }
}

pub(super) fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing: {e}")
}

/// Training loss vs step: each run raw (light) and smoothed (`smoothing` EMA factor, bold),
/// validation losses as markers, and dashed labelled lines at phase boundaries.
pub fn loss_chart(
    title: &str,
    curves: &[Curve],
    boundaries: &[Boundary],
    smoothing: f64,
    unit: &str,
    frame: Frame,
) -> Result<String> {
    let all: Vec<(f64, f64)> = curves
        .iter()
        .flat_map(|c| &c.seeds)
        .flat_map(|s| finite(&s.train).chain(finite(&s.val)))
        .copied()
        .collect();
    let max_step = all.iter().map(|p| p.0).fold(1.0, f64::max);
    let (lo, hi) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
        (lo.min(p.1), hi.max(p.1))
    });
    let (lo, hi) = if lo.is_finite() { padded(lo, hi) } else { (0.0, 5.0) };

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, frame.size).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", frame.title))
            .margin(16)
            .x_label_area_size(2 * frame.text + 14)
            .y_label_area_size(4 * frame.text + 6)
            .build_cartesian_2d(0.0..max_step * 1.01, lo..hi)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc(format!("loss ({unit})"))
            .x_label_formatter(&|x| format!("{}", x.round() as i64))
            .y_label_formatter(&|y| tick(*y))
            .label_style(("sans-serif", frame.text))
            .axis_desc_style(("sans-serif", frame.text))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(err)?;
        draw_boundaries(&mut chart, boundaries, (lo, hi), max_step, frame.text)?;
        for (i, c) in curves.iter().enumerate() {
            draw_curve(&mut chart, c, PALETTE[i % PALETTE.len()], smoothing)?;
        }
        chart
            .configure_series_labels()
            // Loss curves fall from the upper left, so the lower left is the emptiest corner.
            .position(SeriesLabelPosition::LowerLeft)
            .border_style(BLACK.mix(0.4))
            .background_style(WHITE.mix(0.9))
            .label_font(("sans-serif", frame.text))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// One quantity against a swept value: a point per run (several per x when seeds repeat),
/// a line through the per-x means of each series and, where there are several seeds, the
/// 95% t interval of the mean as an error bar.
pub struct SweepChart {
    /// Chart title.
    pub title: String,
    /// The swept key, for the x axis.
    pub x_label: String,
    /// The quantity, with its unit, for the y axis.
    pub y_label: String,
    /// x labels in order (categories; numeric ones keep their order of appearance).
    pub xs: Vec<String>,
    /// `(series label, [(x index, y)])`.
    pub series: Vec<(String, Vec<(usize, f64)>)>,
}

/// The chart type every figure here draws on.
type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// Dashed labelled lines at the phase boundaries, over the y range `(lo, hi)`.
fn draw_boundaries(
    chart: &mut Chart<'_, '_>,
    boundaries: &[Boundary],
    (lo, hi): (f64, f64),
    max_step: f64,
    font_size: u32,
) -> Result<()> {
    for b in boundaries {
        let style = ShapeStyle::from(&BOUNDARY).stroke_width(1);
        chart
            .draw_series(DashedLineSeries::new(vec![(b.step, lo), (b.step, hi)], 6, 4, style))
            .map_err(err)?;
        // A label in the right quarter is drawn leftwards of its line, so it is never cut
        // off at the plot's edge.
        let (text, anchor) = if b.step > 0.75 * max_step {
            (format!("{} ", b.label), HPos::Right)
        } else {
            (format!(" {}", b.label), HPos::Left)
        };
        let font = ("sans-serif", font_size)
            .into_font()
            .color(&BOUNDARY)
            .pos(Pos::new(anchor, VPos::Top));
        chart
            .draw_series(std::iter::once(Text::new(text, (b.step, hi - 0.01 * (hi - lo)), font)))
            .map_err(err)?;
    }
    Ok(())
}

/// One run's training loss in `color`: with one seed the raw curve, light, under the smoothed
/// one; with several the min–max band of the seeds' smoothed curves and their mean; and the
/// mean validation losses as dots.
fn draw_curve(chart: &mut Chart<'_, '_>, c: &Curve, color: RGBColor, smoothing: f64) -> Result<()> {
    let raws: Vec<Vec<(f64, f64)>> = c.seeds.iter().map(|s| finite(&s.train).copied().collect()).collect();
    let points = raws.iter().map(Vec::len).max().unwrap_or(0);
    let alpha = scaled_smoothing(smoothing, points);
    let smoothed: Vec<Vec<(f64, f64)>> = raws.iter().map(|r| ema(r, alpha)).collect();
    let line: Vec<(f64, f64)> = if let [raw] = raws.as_slice() {
        chart
            .draw_series(LineSeries::new(thin(raw), color.mix(0.25).stroke_width(1)))
            .map_err(err)?;
        smoothed[0].clone()
    } else {
        let across = across_seeds(&smoothed);
        let upper = thin(&across.iter().map(|a| (a.0, a.3)).collect::<Vec<_>>());
        let lower = thin(&across.iter().map(|a| (a.0, a.2)).collect::<Vec<_>>());
        let band: Vec<(f64, f64)> = upper.into_iter().chain(lower.into_iter().rev()).collect();
        chart
            .draw_series(std::iter::once(Polygon::new(band, color.mix(0.2).filled())))
            .map_err(err)?;
        across.iter().map(|a| (a.0, a.1)).collect()
    };
    chart
        .draw_series(LineSeries::new(thin(&line), color.stroke_width(2)))
        .map_err(err)?
        .label(c.label.clone())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2)));
    let vals: Vec<Vec<(f64, f64)>> = c.seeds.iter().map(|s| s.val.clone()).collect();
    let val: Vec<(f64, f64)> = across_seeds(&vals).iter().map(|a| (a.0, a.1)).collect();
    chart
        .draw_series(val.into_iter().map(|p| Circle::new(p, 4, color.filled())))
        .map_err(err)?;
    Ok(())
}

/// Where several seeds share a swept value: the 95% t interval of their mean, with caps.
fn draw_intervals(chart: &mut Chart<'_, '_>, per_x: &[(usize, crate::stats::Estimate)], color: RGBColor) -> Result<()> {
    for (x, e) in per_x {
        let Some((lo, hi)) = e.interval else { continue };
        let (x, w) = (*x as f64, 0.06);
        let style = color.stroke_width(2);
        for segment in [
            vec![(x, lo), (x, hi)],
            vec![(x - w, lo), (x + w, lo)],
            vec![(x - w, hi), (x + w, hi)],
        ] {
            chart
                .draw_series(std::iter::once(PathElement::new(segment, style)))
                .map_err(err)?;
        }
    }
    Ok(())
}

/// Each series' estimates at the x values that have points.
type PerX = Vec<Vec<(usize, crate::stats::Estimate)>>;

/// Per series, per x with values: the mean and (several seeds) the 95% t interval, computed
/// once for the axis range and the drawing; and the y range covering points and error bars.
fn sweep_estimates(c: &SweepChart) -> (PerX, (f64, f64)) {
    let per_x: PerX = c
        .series
        .iter()
        .map(|(_, points)| {
            (0..c.xs.len())
                .filter_map(|x| {
                    let at: Vec<f64> = points
                        .iter()
                        .filter(|p| p.0 == x && p.1.is_finite())
                        .map(|p| p.1)
                        .collect();
                    Some((x, crate::stats::Estimate::of(&at)?))
                })
                .collect()
        })
        .collect();
    // The axis covers the points and their error bars.
    let mut ys: Vec<f64> = c
        .series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.1))
        .filter(|y| y.is_finite())
        .collect();
    ys.extend(
        per_x
            .iter()
            .flatten()
            .filter_map(|(_, e)| e.interval)
            .flat_map(|(lo, hi)| [lo, hi]),
    );
    let (lo, hi) = ys.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &y| {
        (lo.min(y), hi.max(y))
    });
    let (lo, hi) = if lo.is_finite() { padded(lo, hi) } else { (0.0, 1.0) };
    (per_x, (lo, hi))
}

/// Draws a [`SweepChart`].
pub fn sweep_chart(c: &SweepChart) -> Result<String> {
    let (per_x, (lo, hi)) = sweep_estimates(c);
    let n = c.xs.len().max(1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SMALL.size).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&c.title, ("sans-serif", SMALL.title))
            .margin(14)
            .x_label_area_size(2 * SMALL.text + 14)
            .y_label_area_size(4 * SMALL.text + 10)
            .build_cartesian_2d(-0.5..(n as f64 - 0.5), lo..hi)
            .map_err(err)?;
        let xs = c.xs.clone();
        chart
            .configure_mesh()
            .x_desc(c.x_label.as_str())
            .y_desc(c.y_label.as_str())
            .y_label_formatter(&|y| tick(*y))
            .label_style(("sans-serif", SMALL.text))
            .axis_desc_style(("sans-serif", SMALL.text))
            .x_labels(n)
            .x_label_formatter(&move |x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 {
                    xs.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(err)?;
        for (si, (label, points)) in c.series.iter().enumerate() {
            let color = PALETTE[si % PALETTE.len()];
            let finite: Vec<(usize, f64)> = points.iter().copied().filter(|p| p.1.is_finite()).collect();
            chart
                .draw_series(
                    finite
                        .iter()
                        .map(|&(x, y)| Circle::new((x as f64, y), 4, color.filled())),
                )
                .map_err(err)?;
            let means: Vec<(f64, f64)> = per_x[si].iter().map(|(x, e)| (*x as f64, e.mean)).collect();
            draw_intervals(&mut chart, &per_x[si], color)?;
            let series = chart
                .draw_series(LineSeries::new(means, color.stroke_width(2)))
                .map_err(err)?;
            if !label.is_empty() {
                series
                    .label(label.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2)));
            }
        }
        if c.series.iter().any(|(l, _)| !l.is_empty()) {
            chart
                .configure_series_labels()
                .border_style(BLACK.mix(0.4))
                .background_style(WHITE.mix(0.9))
                .label_font(("sans-serif", SMALL.text))
                .draw()
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}
