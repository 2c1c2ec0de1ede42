//! `loss_curve.png`: the training loss (blue) and the eval loss (red) against the optimizer
//! step, with axes, tick labels, axis titles and a legend, drawn with plotters' chart builder.
//!
//! Text needs a font inside the binary (a run may be on a machine without fonts): DejaVu Sans cut
//! down to printable ASCII (`assets/DejaVuSans-ascii.ttf`, 20 KB; `assets/subset_font.sh` cut it,
//! its licence is beside it), registered once as plotters' `sans-serif` through its ab_glyph
//! backend.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

use crate::metrics::LogEntry;
use crate::TrainError;

/// The font the plot's text is drawn in.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans-ascii.ttf");

/// Pixel size of the picture.
const SIZE: (u32, u32) = (900, 560);

/// `(step, loss)` points.
type Points = Vec<(f64, f64)>;

/// The points of the training and eval losses in `history` (finite ones only).
fn series(history: &[LogEntry]) -> (Points, Points) {
    let (mut train, mut eval) = (vec![], vec![]);
    for e in history {
        match *e {
            LogEntry::Train { step, loss, .. } if loss.is_finite() => train.push((step as f64, loss)),
            LogEntry::Eval { step, eval_loss, .. } if eval_loss.is_finite() => eval.push((step as f64, eval_loss)),
            _ => {}
        }
    }
    (train, eval)
}

/// `[lo, hi]` of `values`, widened by `pad` of its span on each side; a single value (or equal
/// values) gets a span of its own.
fn range(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    if hi > lo {
        let p = pad * (hi - lo);
        return (lo - p, hi + p);
    }
    let half = (lo.abs() * 0.05).max(0.5);
    (lo - half, hi + half)
}

/// Decimals enough to tell the tick labels of a `span` apart (2 for a span of 1 to 10).
fn decimals(span: f64) -> usize {
    (2.0 - span.log10().floor()).clamp(0.0, 6.0) as usize
}

/// Draws the losses of `history` into `out`; nothing is written when there is no finite loss.
pub fn loss_curve(history: &[LogEntry], out: &Path) -> Result<(), TrainError> {
    draw(history, out).map_err(|e| TrainError::Io { path: out.into(), source: std::io::Error::other(e.to_string()) })
}

fn draw(history: &[LogEntry], out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    static REGISTER: Once = Once::new();
    // The font is a valid TrueType file (checked by the test below); a failure leaves plotters
    // without it, and drawing text then fails with its error.
    REGISTER.call_once(|| drop(plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)));
    let (train, eval) = series(history);
    let all = || train.iter().chain(&eval);
    if all().next().is_none() {
        return Ok(());
    }
    let (x0, x1) = range(all().map(|p| p.0), 0.0);
    let (y0, y1) = range(all().map(|p| p.1), 0.05);
    let digits = decimals(y1 - y0);
    let root = BitMapBackend::new(out, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Loss", ("sans-serif", 26))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss")
        .axis_desc_style(("sans-serif", 18))
        .label_style(("sans-serif", 14))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.*}", digits))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for (points, color, label) in [(&train, BLUE, "training loss"), (&eval, RED, "eval loss")] {
        if points.is_empty() {
            continue;
        }
        let style = color.stroke_width(2);
        chart
            .draw_series(LineSeries::new(points.iter().copied(), style).point_size(3))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn train(step: usize, loss: f64) -> LogEntry {
        LogEntry::Train { step, epoch: 0.0, loss, learning_rate: 1e-3, grad_norm: 1.0 }
    }

    #[test]
    fn ranges_and_tick_decimals() {
        assert_eq!(range([1.0, 3.0].into_iter(), 0.5), (0.0, 4.0));
        assert_eq!(range([2.0].into_iter(), 0.0), (1.5, 2.5));
        assert_eq!((decimals(3.0), decimals(0.05), decimals(400.0)), (2, 4, 0));
    }

    #[test]
    fn the_font_is_a_truetype_file_with_the_ascii_glyphs() {
        assert!(plotters::style::register_font("sft-test", FontStyle::Normal, FONT).is_ok());
        assert!(FONT.len() < 64 * 1024, "the subset font stays small");
    }

    #[test]
    fn one_point_and_nan_losses_still_draw() {
        let dir = std::env::temp_dir().join(format!("sft-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let out = dir.join("one.png");
        loss_curve(&[train(1, 2.0), train(2, f64::NAN)], &out).expect("plot");
        assert!(out.is_file());
        let none = dir.join("none.png");
        loss_curve(&[train(1, f64::NAN)], &none).expect("nothing to plot");
        assert!(!none.exists());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
