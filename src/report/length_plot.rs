//! The length-generalisation figures: loss against evaluation length (`length.svg`) and loss
//! by position in the window (`position_loss.svg`), with the training lengths marked.

use anyhow::Result;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::plot::{BOUNDARY, PALETTE, SMALL, err, padded};

/// The top of a y axis whose data reach `hi`, leaving the upper part of a [`SMALL`] chart
/// free for a legend of `entries` lines.
fn legend_room(lo: f64, hi: f64, entries: usize) -> f64 {
    let line = SMALL.text as f64 * 1.25;
    let plot_height = SMALL.size.1 as f64 - 120.0;
    let share = ((entries as f64 * line + 24.0) / plot_height).min(0.6);
    hi + (hi - lo) * share / (1.0 - share)
}

/// The bottom of a y axis whose data start at `lo`, leaving a band under them for the
/// training-length labels ([`markers`]), so no curve runs through a label.
fn label_room(lo: f64, hi: f64) -> f64 {
    let plot_height = SMALL.size.1 as f64 - 120.0;
    let share = SMALL.text as f64 * 1.6 / plot_height;
    lo - (hi - lo) * share / (1.0 - share)
}

/// One line of `length.svg`: a run after one phase, with or without a RoPE scaling.
#[derive(Clone, Debug, PartialEq)]
pub struct LengthCurve {
    /// Run name.
    pub run: String,
    /// Index of the run among the report's runs (its colour).
    pub run_index: usize,
    /// The phase whose end was evaluated.
    pub phase: usize,
    /// Whether it is the run's last phase.
    pub last_phase: bool,
    /// The longest length trained on by then.
    pub train_len: usize,
    /// RoPE scaling, empty for none.
    pub scaling: String,
    /// `(length, mean loss over seeds)`, or `None` when some seed cannot read the length.
    pub points: Vec<(usize, Option<f64>)>,
    /// Why a length is not defined, for each length that is not: `(length, reason)`.
    pub notes: Vec<(usize, String)>,
}

impl LengthCurve {
    /// Legend text: `rope, ntk ×2, after phase 1 (trained to 256)`.
    pub fn label(&self) -> String {
        let scaling = if self.scaling.is_empty() {
            String::new()
        } else {
            format!(", {}", self.scaling)
        };
        format!(
            "{}{scaling}, after phase {} (trained to {})",
            self.run, self.phase, self.train_len
        )
    }
}

/// One line of `position_loss.svg`: a run's mean loss by position after one phase.
#[derive(Clone, Debug, PartialEq)]
pub struct PositionCurve {
    /// Legend text.
    pub label: String,
    /// Index of the run among the report's runs (its colour).
    pub run_index: usize,
    /// Whether it is the run's last phase.
    pub last_phase: bool,
    /// `(position, mean loss)` in bins of `bin` positions (the bin's centre), mean over seeds.
    pub points: Vec<(f64, f64)>,
}

/// A chart with two numeric axes.
type Chart<'a, DB> =
    ChartContext<'a, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>>;

/// A run's colour; earlier phases lighter, so the final model stands out.
fn style(run_index: usize, last_phase: bool) -> (RGBAColor, u32) {
    let c = PALETTE[run_index % PALETTE.len()];
    if last_phase { (c.mix(1.0), 2) } else { (c.mix(0.45), 2) }
}

/// Dashed labelled vertical lines at `xs` (axis coordinates) between `lo` and `hi`.
fn markers<DB: DrawingBackend>(
    chart: &mut ChartContext<
        '_,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    xs: &[(f64, String)],
    (lo, hi): (f64, f64),
) -> Result<()> {
    for (x, label) in xs {
        let line = ShapeStyle::from(&BOUNDARY).stroke_width(1);
        chart
            .draw_series(DashedLineSeries::new(vec![(*x, lo), (*x, hi)], 6, 4, line))
            .map_err(err)?;
        // Labelled at the foot of the line, in the band `label_room` keeps under the data:
        // the legend takes the top of the plot.
        let font = ("sans-serif", SMALL.text)
            .into_font()
            .color(&BOUNDARY)
            .pos(Pos::new(HPos::Left, VPos::Bottom));
        chart
            .draw_series(std::iter::once(Text::new(format!(" {label}"), (*x, lo), font)))
            .map_err(err)?;
    }
    Ok(())
}

/// The legend, in the upper left (the space [`legend_room`] keeps free).
fn legend<'a, DB: DrawingBackend + 'a>(chart: &mut Chart<'a, DB>) -> Result<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK.mix(0.4))
        .background_style(WHITE.mix(0.9))
        .label_font(("sans-serif", SMALL.text))
        .draw()
        .map_err(err)
}

/// A [`SMALL`] SVG figure titled `title` over the axes `x` × `y`, drawn by `body`, with the
/// legend in the upper left.
fn figure(
    title: &str,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    body: impl FnOnce(&mut Chart<'_, SVGBackend<'_>>) -> Result<()>,
) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SMALL.size).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", SMALL.title))
            .margin(16)
            .x_label_area_size(2 * SMALL.text + 14)
            .y_label_area_size(4 * SMALL.text + 6)
            .build_cartesian_2d(x, y)
            .map_err(err)?;
        body(&mut chart)?;
        legend(&mut chart)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Loss against evaluation length on a log₂ axis: one line per run and phase end (RoPE
/// scalings dashed), the training lengths marked, and an × at the top for a length a model
/// cannot read.
pub fn length_chart(title: &str, curves: &[LengthCurve], unit: &str) -> Result<String> {
    let ys: Vec<f64> = curves
        .iter()
        .flat_map(|c| c.points.iter().filter_map(|p| p.1))
        .collect();
    let xs: Vec<f64> = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| (p.0 as f64).log2()))
        .collect();
    let (lo, hi) = ys
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &y| (a.min(y), b.max(y)));
    let (lo, hi) = if lo.is_finite() { padded(lo, hi) } else { (0.0, 1.0) };
    let (data_lo, data_hi) = (lo, hi);
    // Head room for the "not defined" marks, then for the legend; foot room for the labels.
    let hi = legend_room(lo, hi + 0.08 * (hi - lo), curves.len());
    let lo = label_room(lo, hi);
    let (x0, x1) = xs
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
    let (x0, x1) = if x0.is_finite() {
        (x0 - 0.3, x1 + 0.3)
    } else {
        (0.0, 1.0)
    };
    figure(title, x0..x1, lo..hi, |chart| {
        chart
            .configure_mesh()
            .x_desc("evaluation length (tokens, log₂ scale)")
            .y_desc(format!("validation loss ({unit})"))
            .y_label_formatter(&|y| super::plot::tick(*y))
            .x_labels(((x1 - x0).ceil() as usize + 1).max(2))
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 {
                    format!("{}", 2f64.powf(i) as u64)
                } else {
                    String::new()
                }
            })
            .label_style(("sans-serif", SMALL.text))
            .axis_desc_style(("sans-serif", SMALL.text))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(err)?;
        let mut trained: Vec<usize> = curves.iter().map(|c| c.train_len).collect();
        trained.sort_unstable();
        trained.dedup();
        let marks: Vec<(f64, String)> = trained
            .iter()
            .map(|&t| ((t as f64).log2(), format!("trained to {t}")))
            .collect();
        markers(chart, &marks, (lo, hi))?;
        // Not defined: an × above the data, never a made-up value.
        let top = data_hi + 0.04 * (data_hi - data_lo);
        for c in curves {
            length_curve(chart, c, top)?;
        }
        Ok(())
    })
}

/// One run's loss by length (dashed under a RoPE scaling) with its points, in the legend, and
/// an × at height `top` for each length its model cannot read.
fn length_curve<DB: DrawingBackend>(chart: &mut Chart<'_, DB>, c: &LengthCurve, top: f64) -> Result<()> {
    let (color, width) = style(c.run_index, c.last_phase);
    let defined: Vec<(f64, f64)> = c
        .points
        .iter()
        .filter_map(|&(l, y)| Some(((l as f64).log2(), y?)))
        .collect();
    let line = color.stroke_width(width);
    let label = match c.points.iter().find(|p| p.1.is_none()) {
        Some((l, _)) => format!("{} — n/a from {l}", c.label()),
        None => c.label(),
    };
    let drawn = if c.scaling.is_empty() {
        chart.draw_series(LineSeries::new(defined.clone(), line)).map_err(err)?
    } else {
        chart
            .draw_series(DashedLineSeries::new(defined.clone(), 8, 5, line))
            .map_err(err)?
    };
    drawn
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], line));
    chart
        .draw_series(defined.iter().map(|&p| Circle::new(p, 3, color.filled())))
        .map_err(err)?;
    chart
        .draw_series(
            c.points
                .iter()
                .filter(|p| p.1.is_none())
                .map(|&(l, _)| Cross::new(((l as f64).log2(), top), 6, color.stroke_width(2))),
        )
        .map_err(err)?;
    Ok(())
}

/// Mean loss by position in the window at the longest evaluated length, one line per run and
/// phase end, with a dashed line at each training length.
pub fn position_chart(title: &str, curves: &[PositionCurve], train_lens: &[usize], unit: &str) -> Result<String> {
    let ys: Vec<f64> = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.1))
        .filter(|y| y.is_finite())
        .collect();
    let (lo, hi) = ys
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &y| (a.min(y), b.max(y)));
    let (lo, hi) = if lo.is_finite() { padded(lo, hi) } else { (0.0, 1.0) };
    let hi = legend_room(lo, hi, curves.len());
    let lo = label_room(lo, hi);
    let x1 = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.0))
        .fold(1.0, f64::max)
        + 1.0;
    figure(title, 0.0..x1, lo..hi, |chart| {
        chart
            .configure_mesh()
            .x_desc("position in the window")
            .y_desc(format!("mean loss at the position ({unit})"))
            .y_label_formatter(&|y| super::plot::tick(*y))
            .x_label_formatter(&|x| format!("{}", x.round() as i64))
            .label_style(("sans-serif", SMALL.text))
            .axis_desc_style(("sans-serif", SMALL.text))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(err)?;
        let marks: Vec<(f64, String)> = train_lens
            .iter()
            .filter(|&&t| (t as f64) < x1)
            .map(|&t| (t as f64, format!("trained to {t}")))
            .collect();
        markers(chart, &marks, (lo, hi))?;
        for c in curves {
            let (color, width) = style(c.run_index, c.last_phase);
            let line = color.stroke_width(width);
            chart
                .draw_series(LineSeries::new(c.points.clone(), line))
                .map_err(err)?
                .label(c.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], line));
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The y pixel of every `trained to` label's top (its baseline less the font size, an
    /// upper bound) and the largest y (lowest point) of any curve, read off the SVG.
    fn label_tops_and_lowest_curve(svg: &str) -> (Vec<f64>, f64) {
        let num = |tag: &str, attr: &str| -> Option<f64> {
            let at = tag.find(&format!(" {attr}=\""))? + attr.len() + 3;
            tag[at..].split('"').next()?.parse().ok()
        };
        let tops = svg
            .split("<text")
            .skip(1)
            // The marker labels, not the legend's entries that name a training length too.
            .filter(|t| {
                t.split('>')
                    .nth(1)
                    .is_some_and(|text| text.trim().starts_with("trained to"))
            })
            .map(|t| num(t, "y").unwrap() - f64::from(SMALL.text))
            .collect();
        let lowest = svg
            .split("<polyline")
            .skip(1)
            // The curves are drawn 2 px wide; axes, ticks and the dashed markers 1 px.
            .filter(|p| p.contains("stroke-width=\"2\""))
            .flat_map(|p| {
                let pts = p
                    .split("points=\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap()
                    .to_string();
                pts.split_whitespace()
                    .map(|xy| xy.split(',').nth(1).unwrap().parse::<f64>().unwrap())
                    .collect::<Vec<_>>()
            })
            .fold(f64::NEG_INFINITY, f64::max);
        (tops, lowest)
    }

    #[test]
    fn training_length_labels_sit_below_every_curve() {
        // One curve flat at its minimum across the lengths: the case where a label at the
        // data's foot would be crossed.
        let curve = |run: &str, run_index, ys: [f64; 4]| LengthCurve {
            run: run.into(),
            run_index,
            phase: 0,
            last_phase: true,
            train_len: 128,
            scaling: String::new(),
            points: [64, 128, 256, 512].into_iter().zip(ys.map(Some)).collect(),
            notes: vec![],
        };
        let curves = [
            curve("flat", 0, [2.0, 2.0, 2.0, 2.0]),
            curve("rising", 1, [2.1, 2.2, 3.0, 4.0]),
        ];
        let svg = length_chart("t", &curves, "nats").unwrap();
        let (tops, lowest) = label_tops_and_lowest_curve(&svg);
        assert!(!tops.is_empty(), "no training-length label drawn");
        for top in tops {
            assert!(
                top >= lowest,
                "length.svg: a label's top at y={top} is above the lowest curve point y={lowest}"
            );
        }
        let positions = [PositionCurve {
            label: "flat".into(),
            run_index: 0,
            last_phase: true,
            points: (0..64).map(|p| (p as f64, 2.0)).collect(),
        }];
        let svg = position_chart("t", &positions, &[32], "nats").unwrap();
        let (tops, lowest) = label_tops_and_lowest_curve(&svg);
        assert!(!tops.is_empty(), "no training-length label drawn");
        for top in tops {
            assert!(
                top >= lowest,
                "position_loss.svg: a label's top at y={top} is above the lowest curve point y={lowest}"
            );
        }
    }
}
