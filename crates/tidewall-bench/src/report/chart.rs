//! One workload's chart: a slot per runtime, in the report's row order, each holding a bar for
//! the median, a min-max whisker and the median's value; every runtime keeps its colour in every
//! chart, and a legend names it in full.

use std::ops::Range;
use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::plan::Row;
use crate::runtimes::RuntimeKind;

/// The whole canvas, in pixels.
const SIZE: (u32, u32) = (820, 420);
/// The legend's column on the right of the plot.
const LEGEND_WIDTH: u32 = 160;
const MARGIN: u32 = 12;
const Y_LABEL_AREA: u32 = 70;
const X_LABEL_AREA: u32 = 30;
/// Font sizes as the SVG states them.
const TITLE_PX: f64 = 16.0;
const LABEL_PX: f64 = 12.0;
const NOTE_PX: f64 = 11.0;
/// A bar takes the middle 60% of its slot.
const BAR_PAD: f64 = 0.2;
const CAP_HALF_WIDTH: f64 = 0.12;
const GREY: RGBColor = RGBColor(90, 90, 90);

/// What one runtime's slot shows.
pub(super) struct Slot {
    runtime: RuntimeKind,
    figure: Result<Figure, &'static str>,
}

struct Figure {
    median: f64,
    /// Absent when the samples give no finite spread: then only the bar is drawn.
    whisker: Option<(f64, f64)>,
}

impl Slot {
    pub(super) fn of(row: &Row) -> Self {
        let figure = match &row.result {
            Err(_) => Err("failed"),
            Ok(m) if !m.summary.median.is_finite() => Err("no figure"),
            Ok(m) => Ok(Figure {
                median: m.summary.median,
                whisker: (m.summary.min.is_finite() && m.summary.max.is_finite())
                    .then_some((m.summary.min, m.summary.max)),
            }),
        };
        Self {
            runtime: row.runtime,
            figure,
        }
    }
}

/// Where the drawing put each slot and its axis label, in pixels: the geometry the tests check.
#[derive(Debug)]
#[cfg_attr(not(test), allow(dead_code, reason = "read by the tests only"))]
pub(super) struct Drawn {
    /// The plot's horizontal pixel span, which the slots tile.
    pub(super) plot: Range<i32>,
    pub(super) slots: Vec<Range<i32>>,
    /// Each axis label's horizontal extent, from a deliberately wide estimate of its text.
    pub(super) labels: Vec<Range<f64>>,
}

/// Each runtime's colour, the same in every chart (Okabe-Ito, readable with colour blindness);
/// the two tokio schedulers share a hue at different lightness.
fn colour(runtime: RuntimeKind) -> RGBColor {
    match runtime {
        RuntimeKind::TokioMt => RGBColor(0, 114, 178),
        RuntimeKind::TokioCt => RGBColor(86, 180, 233),
        RuntimeKind::Smol => RGBColor(0, 158, 115),
        RuntimeKind::AsyncStd => RGBColor(230, 159, 0),
        RuntimeKind::Monoio => RGBColor(204, 121, 167),
        RuntimeKind::Embassy => RGBColor(213, 94, 0),
    }
}

/// A generous width for a label: 0.65 em a character, above the 0.55 em or so that DejaVu Sans
/// and Helvetica average over lowercase letters, digits and punctuation, so labels this keeps
/// apart are apart on screen.
fn text_width(text: &str, px: f64) -> f64 {
    text.chars().count() as f64 * 0.65 * px
}

/// Writes the chart for `slots` as an SVG file.
pub(super) fn write_svg(
    path: &Path,
    title: &str,
    unit: &str,
    slots: &[Slot],
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    draw(&root, title, unit, slots)?;
    root.present().map_err(draw_error)?;
    Ok(())
}

/// Draws the chart on `root` (of `SIZE`) and says where its slots and axis labels went.
fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    unit: &str,
    slots: &[Slot],
) -> anyhow::Result<Drawn> {
    root.fill(&WHITE).map_err(draw_error)?;
    let (plot_area, legend_area) = root.split_horizontally(SIZE.0 - LEGEND_WIDTH);
    let count = slots.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&plot_area)
        .caption(title, font(TITLE_PX))
        .margin(MARGIN)
        .x_label_area_size(X_LABEL_AREA)
        .y_label_area_size(Y_LABEL_AREA)
        .build_cartesian_2d(0f64..count, 0f64..y_top(slots))
        .map_err(draw_error)?;
    let decimals = tick_decimals(y_top(slots));
    chart
        .configure_mesh()
        .disable_x_mesh()
        // Only the labelled grid lines: the finer ones crowd the bars.
        .light_line_style(TRANSPARENT)
        // The slots carry their own labels, centred under each bar.
        .x_labels(0)
        .y_labels(8)
        .y_label_formatter(&|v| format!("{v:.decimals$}"))
        .label_style(font(LABEL_PX))
        .axis_desc_style(font(LABEL_PX))
        .y_desc(unit)
        .draw()
        .map_err(draw_error)?;

    // Slot i spans edges i to i + 1: the same mapping the bars are drawn with.
    let edges: Vec<i32> = (0..=slots.len().max(1))
        .map(|i| chart.backend_coord(&(i as f64, 0.0)).0)
        .collect();
    let axis_y = chart.backend_coord(&(0.0, 0.0)).1;
    // The plot's own pixels, independent of the slots: plotters maps the x range onto its
    // first to last pixel column.
    let plot = chart.plotting_area().get_pixel_range().0;
    let mut drawn = Drawn {
        plot: plot.start..plot.end - 1,
        slots: edges
            .windows(2)
            .take(slots.len())
            .map(|e| e[0]..e[1])
            .collect(),
        labels: Vec::new(),
    };
    for (slot, i) in slots.iter().zip(0u32..) {
        let left = f64::from(i);
        let centre = left + 0.5;
        let colour = colour(slot.runtime);
        let value_at = match &slot.figure {
            Ok(figure) => {
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(left + BAR_PAD, 0.0), (left + 1.0 - BAR_PAD, figure.median)],
                        colour.filled(),
                    )))
                    .map_err(draw_error)?;
                if let Some((min, max)) = figure.whisker {
                    // A white halo under the black line keeps it visible on dark bars.
                    for style in [WHITE.stroke_width(4), BLACK.stroke_width(2)] {
                        let lines = [
                            vec![(centre, min), (centre, max)],
                            vec![
                                (centre - CAP_HALF_WIDTH, min),
                                (centre + CAP_HALF_WIDTH, min),
                            ],
                            vec![
                                (centre - CAP_HALF_WIDTH, max),
                                (centre + CAP_HALF_WIDTH, max),
                            ],
                        ];
                        chart
                            .draw_series(lines.into_iter().map(|l| PathElement::new(l, style)))
                            .map_err(draw_error)?;
                    }
                }
                let top = figure
                    .whisker
                    .map_or(figure.median, |(_, max)| max.max(figure.median));
                chart.backend_coord(&(centre, top))
            }
            Err(_) => chart.backend_coord(&(centre, 0.0)),
        };
        let value = slot
            .figure
            .as_ref()
            .map_or_else(|why| (*why).to_owned(), |f| value_text(f.median));
        root.draw(&Text::new(
            value,
            (value_at.0, value_at.1 - 4),
            font(NOTE_PX)
                .color(&GREY)
                .pos(Pos::new(HPos::Center, VPos::Bottom)),
        ))
        .map_err(draw_error)?;

        let name = slot.runtime.name();
        let x = chart.backend_coord(&(centre, 0.0)).0;
        root.draw(&Text::new(
            name,
            (x, axis_y + 8),
            font(LABEL_PX)
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(draw_error)?;
        let half = text_width(name, LABEL_PX) / 2.0;
        drawn.labels.push(f64::from(x) - half..f64::from(x) + half);
    }
    if slots.is_empty() {
        let at = chart.backend_coord(&(0.5, y_top(slots) / 2.0));
        root.draw(&Text::new(
            "no runtime ran this workload",
            at,
            font(LABEL_PX)
                .color(&GREY)
                .pos(Pos::new(HPos::Center, VPos::Center)),
        ))
        .map_err(draw_error)?;
    }
    legend(
        &legend_area,
        slots,
        chart.backend_coord(&(0.0, y_top(slots))).1,
    )?;
    Ok(drawn)
}

/// The legend: each runtime's colour, name and caveat (what its full report label adds), then
/// what the marks mean.
fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    slots: &[Slot],
    top: i32,
) -> anyhow::Result<()> {
    let x = 4;
    let mut y = top;
    for slot in slots {
        let colour = colour(slot.runtime);
        area.draw(&Rectangle::new(
            [(x, y + 1), (x + 12, y + 13)],
            colour.filled(),
        ))
        .map_err(draw_error)?;
        let text_x = x + 18;
        area.draw(&Text::new(
            slot.runtime.name(),
            (text_x, y),
            font(LABEL_PX)
                .color(&BLACK)
                .pos(Pos::new(HPos::Left, VPos::Top)),
        ))
        .map_err(draw_error)?;
        y += 18;
        if let Some(caveat) = caveat(slot.runtime) {
            area.draw(&Text::new(
                caveat,
                (text_x, y),
                font(NOTE_PX)
                    .color(&GREY)
                    .pos(Pos::new(HPos::Left, VPos::Top)),
            ))
            .map_err(draw_error)?;
            y += 16;
        }
        y += 6;
    }
    y += 8;
    for key in ["bar, number: median", "whisker: min to max"] {
        area.draw(&Text::new(
            key,
            (x, y),
            font(NOTE_PX)
                .color(&GREY)
                .pos(Pos::new(HPos::Left, VPos::Top)),
        ))
        .map_err(draw_error)?;
        y += 16;
    }
    Ok(())
}

/// What a runtime's report label says beyond its name, e.g. "discontinued".
fn caveat(runtime: RuntimeKind) -> Option<&'static str> {
    let rest = runtime.label().strip_prefix(runtime.name())?.trim();
    let rest = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or(rest);
    (!rest.is_empty()).then_some(rest)
}

/// The y axis top: headroom above the highest whisker for the value labels; 1 when every
/// figure is zero (or there is none), so the axis still has a scale.
fn y_top(slots: &[Slot]) -> f64 {
    let highest = slots
        .iter()
        .filter_map(|s| s.figure.as_ref().ok())
        .map(|f| f.whisker.map_or(f.median, |(_, max)| max.max(f.median)))
        .fold(0.0f64, f64::max);
    if highest > 0.0 && highest.is_finite() {
        highest * 1.15
    } else {
        1.0
    }
}

/// Enough decimals to tell the y ticks apart (about eight of them up to `top`), no more.
fn tick_decimals(top: f64) -> usize {
    let mut step = top / 8.0;
    let mut decimals = 0;
    while step < 1.0 && decimals < 6 {
        step *= 10.0;
        decimals += 1;
    }
    decimals
}

/// A median with three significant digits (all of them when it is larger).
fn value_text(value: f64) -> String {
    if value == 0.0 || !value.is_finite() {
        return format!("{value}");
    }
    let (mut magnitude, mut decimals) = (value.abs(), 2usize);
    while magnitude >= 10.0 && decimals > 0 {
        magnitude /= 10.0;
        decimals -= 1;
    }
    while magnitude < 1.0 && decimals < 6 {
        magnitude *= 10.0;
        decimals += 1;
    }
    format!("{value:.decimals$}")
}

/// A sans-serif font that the SVG states at `px` (plotters writes sizes divided by 1.24).
fn font(px: f64) -> FontDesc<'static> {
    FontDesc::new(FontFamily::SansSerif, px * 1.24, FontStyle::Normal)
}

fn draw_error<E: std::fmt::Display>(error: E) -> anyhow::Error {
    anyhow::anyhow!("drawing a chart: {error}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Clear space the axis labels keep between them.
    const LABEL_GAP_PX: f64 = 8.0;

    fn slots(runtimes: &[RuntimeKind]) -> Vec<Slot> {
        runtimes
            .iter()
            .zip(1u32..)
            .map(|(&runtime, i)| Slot {
                runtime,
                figure: Ok(Figure {
                    median: f64::from(i) * 100.0,
                    whisker: Some((f64::from(i) * 90.0, f64::from(i) * 130.0)),
                }),
            })
            .collect()
    }

    fn drawn(slots: &[Slot]) -> Drawn {
        let mut svg = String::new();
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        draw(&root, "spawn-local (n = 1000)", "ns/task", slots).unwrap()
    }

    #[test]
    fn every_runtime_fills_one_slot_and_the_slots_fill_the_plot() {
        for count in 1..=RuntimeKind::ALL.len() {
            let drawn = drawn(&slots(&RuntimeKind::ALL[..count]));
            assert_eq!(drawn.slots.len(), count, "{drawn:?}");
            assert_eq!(drawn.slots[0].start, drawn.plot.start, "{drawn:?}");
            assert_eq!(drawn.slots[count - 1].end, drawn.plot.end, "{drawn:?}");
            for pair in drawn.slots.windows(2) {
                assert_eq!(pair[0].end, pair[1].start, "{drawn:?}");
            }
        }
    }

    #[test]
    fn axis_labels_of_every_runtime_stay_apart_inside_their_slots() {
        let drawn = drawn(&slots(&RuntimeKind::ALL));
        for (label, slot) in drawn.labels.iter().zip(&drawn.slots) {
            assert!(
                label.start >= f64::from(slot.start) && label.end <= f64::from(slot.end),
                "{label:?} leaves its slot {slot:?}"
            );
        }
        for pair in drawn.labels.windows(2) {
            assert!(
                pair[0].end + LABEL_GAP_PX <= pair[1].start,
                "labels {:?} and {:?} run into each other",
                pair[0],
                pair[1]
            );
        }
    }

    #[test]
    fn each_runtime_has_its_own_colour() {
        for (i, a) in RuntimeKind::ALL.iter().enumerate() {
            for b in &RuntimeKind::ALL[i + 1..] {
                assert_ne!(colour(*a), colour(*b), "{a:?} and {b:?}");
            }
        }
    }

    #[test]
    fn a_failed_runtime_keeps_its_slot() {
        let mut slots = slots(&[RuntimeKind::TokioMt, RuntimeKind::Smol]);
        slots[1].figure = Err("failed");
        assert_eq!(drawn(&slots).slots.len(), 2);
        assert_eq!(drawn(&[]).slots.len(), 0);
    }

    #[test]
    fn caveats_are_what_the_report_label_adds() {
        assert_eq!(caveat(RuntimeKind::TokioMt), None);
        assert_eq!(caveat(RuntimeKind::AsyncStd), Some("discontinued"));
        assert_eq!(caveat(RuntimeKind::Monoio), Some("io_uring, TCP only"));
    }

    #[test]
    fn figures_read_with_three_significant_digits() {
        assert_eq!(value_text(0.0), "0");
        assert_eq!(value_text(0.72232), "0.722");
        assert_eq!(value_text(34.727), "34.7");
        assert_eq!(value_text(20114.02), "20114");
        assert_eq!(tick_decimals(2.1), 1);
        assert_eq!(tick_decimals(46000.0), 0);
    }
}
