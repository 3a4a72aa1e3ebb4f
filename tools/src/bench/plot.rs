//! SVG plots of the latency benchmarks, like the paper's Fig. 3: time
//! against RTT (left) and the same minus the RTTs it must take (right),
//! medians with their 95% intervals as error bars.
//!
//! Owns only drawing: it takes summarized points and writes one SVG file.

use std::path::Path;

use plotters::prelude::*;

use super::BenchError;

/// One line of a plot.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Points: (RTT ms, median ms, CI low ms, CI high ms), by RTT.
    pub points: Vec<(f64, f64, f64, f64)>,
}

/// A plot: its title, the y description, how many RTTs the right panel
/// subtracts, and the lines.
#[derive(Debug, Clone)]
pub struct Figure {
    /// Title over both panels.
    pub title: String,
    /// What is measured (y axis of the left panel).
    pub what: String,
    /// The right panel shows `time - rtts * RTT`.
    pub rtts: f64,
    /// The lines.
    pub series: Vec<Series>,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

/// Writes `figure` to `path` as SVG.
pub fn draw(figure: &Figure, path: &Path) -> Result<(), BenchError> {
    draw_inner(figure, path).map_err(|e| BenchError::Plot {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw_inner(figure: &Figure, path: &Path) -> DrawResult {
    let root = SVGBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(&figure.title, ("sans-serif", 20))?;
    let (left, right) = root.split_horizontally(600);
    let x_max = figure
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    panel(&left, figure, x_max, 0.0, &figure.what)?;
    let excess = if figure.rtts == 1.0 {
        format!("{} minus RTT", figure.what)
    } else {
        format!("{} minus {}×RTT", figure.what, figure.rtts)
    };
    panel(&right, figure, x_max, figure.rtts, &excess)?;
    root.present()?;
    Ok(())
}

/// One panel: the series minus `rtts` times the RTT.
fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    figure: &Figure,
    x_max: f64,
    rtts: f64,
    y_desc: &str,
) -> DrawResult {
    let shifted: Vec<Vec<(f64, f64, f64, f64)>> = figure
        .series
        .iter()
        .map(|s| {
            s.points
                .iter()
                .map(|&(x, m, lo, hi)| (x, m - rtts * x, lo - rtts * x, hi - rtts * x))
                .collect()
        })
        .collect();
    let (mut y_min, mut y_max) = (f64::MAX, f64::MIN);
    for p in shifted.iter().flatten() {
        y_min = y_min.min(p.2);
        y_max = y_max.max(p.3);
    }
    if y_min > y_max {
        (y_min, y_max) = (0.0, 1.0);
    }
    let pad = ((y_max - y_min) * 0.08).max(0.01);
    let y_lo = if rtts == 0.0 { 0.0 } else { y_min - pad };
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-x_max * 0.03..x_max * 1.03, y_lo..y_max + pad)?;
    chart
        .configure_mesh()
        .x_desc("emulated RTT (ms)")
        .y_desc(format!("{y_desc} (ms)"))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    if rtts == 0.0 {
        // Reference: the RTTs the measurement must take.
        let k = figure.rtts;
        chart
            .draw_series(LineSeries::new(
                [(0.0, 0.0), (x_max, k * x_max)],
                BLACK.mix(0.3).stroke_width(1),
            ))?
            .label(format!("{k} × RTT"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.3)));
    }
    for (i, (series, points)) in figure.series.iter().zip(&shifted).enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.0, p.1)),
                color.stroke_width(2),
            ))?
            .label(series.label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart.draw_series(points.iter().map(|&(x, m, lo, hi)| {
            ErrorBar::new_vertical(x, lo, m, hi, color.stroke_width(1), 8)
        }))?;
        chart.draw_series(
            points
                .iter()
                .map(|&(x, m, _, _)| Circle::new((x, m), 3, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_an_svg_with_both_panels_and_the_legend() {
        let path = std::env::temp_dir().join(format!("tiflow-plot-{}.svg", std::process::id()));
        let figure = Figure {
            title: "test".into(),
            what: "time".into(),
            rtts: 1.0,
            series: vec![
                Series {
                    label: "legacy connect".into(),
                    points: vec![(0.0, 0.2, 0.1, 0.3), (10.0, 10.3, 10.2, 10.4)],
                },
                Series {
                    label: "TI reconnect".into(),
                    points: vec![(0.0, 0.25, 0.2, 0.3), (10.0, 10.35, 10.3, 10.4)],
                },
            ],
        };
        draw(&figure, &path).expect("draw");
        let svg = std::fs::read_to_string(&path).expect("read svg");
        let _ = std::fs::remove_file(&path);
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        assert!(svg.contains("TI reconnect") && svg.contains("legacy connect"));
        assert!(svg.contains("minus RTT"));
    }
}
