//! A line plot as a standalone SVG document, written by hand (no plotting crate): axes with
//! a "nice" y range, one polyline per series with labelled points, a legend.

use std::fmt::Write as _;

/// One line of the plot: y values at x = 0, 1, …; `None` leaves a gap (no point).
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub color: &'static str,
    pub dashed: bool,
    pub values: Vec<Option<f64>>,
}

/// A line plot over categorical x positions.
#[derive(Debug, Clone)]
pub struct LinePlot {
    pub title: String,
    pub x_title: String,
    pub y_title: String,
    /// An upper limit for the y axis (100 for percentages), so a rate of 100% does not
    /// stretch the axis to the next nice bound (200); `None` leaves it to the data.
    pub y_cap: Option<f64>,
    pub x_labels: Vec<String>,
    pub series: Vec<Series>,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

/// The smallest "nice" bound (1, 2, 2.5, 5 × 10^k) at or above `v` (at least 1).
fn nice_ceiling(v: f64) -> f64 {
    if !v.is_finite() || v <= 1.0 {
        return 1.0;
    }
    let exp = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * exp >= v - 1e-9 {
            return m * exp;
        }
    }
    10.0 * exp
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Renders the plot (y axis from 0 to a nice bound above the largest value, at most `y_cap`).
pub fn render(plot: &LinePlot) -> String {
    render_with_errors(plot, &[])
}

/// [`render`] with error bars: `errors[s][i]` draws ± that much around point i of series s
/// (series without an entry, and `None`s, get none).
pub fn render_with_errors(plot: &LinePlot, errors: &[Vec<Option<f64>>]) -> String {
    let intervals: Vec<Vec<Option<(f64, f64)>>> = plot
        .series
        .iter()
        .enumerate()
        .map(|(s, series)| {
            let e = |i: usize| errors.get(s).and_then(|e| e.get(i).copied().flatten()).filter(|e| *e > 0.0);
            series.values.iter().enumerate().map(|(i, v)| v.zip(e(i)).map(|(v, e)| (v - e, v + e))).collect()
        })
        .collect();
    render_with_intervals(plot, &intervals)
}

/// [`render`] with interval bars: `intervals[s][i]` = (low, high) around point i of series
/// s, drawn from low to high (clipped to the axis); `None` draws none.
pub fn render_with_intervals(plot: &LinePlot, intervals: &[Vec<Option<(f64, f64)>>]) -> String {
    let (pw, ph) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let interval = |s: usize, i: usize| intervals.get(s).and_then(|e| e.get(i).copied().flatten());
    let max = plot
        .series
        .iter()
        .enumerate()
        .flat_map(|(s, series)| series.values.iter().enumerate().filter_map(move |(i, v)| v.map(|v| interval(s, i).map_or(v, |(_, hi)| hi.max(v)))))
        .fold(0.0f64, f64::max);
    let y_max = match plot.y_cap {
        Some(cap) => nice_ceiling(max * 1.1).min(cap),
        None => nice_ceiling(max * 1.1),
    };
    let n = plot.x_labels.len().max(1);
    let x_at = |i: usize| if n == 1 { LEFT + pw / 2.0 } else { LEFT + pw * i as f64 / (n - 1) as f64 };
    let y_at = |v: f64| TOP + ph * (1.0 - v / y_max);

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(svg, r#"<text x="{}" y="24" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#, LEFT + pw / 2.0, escape(&plot.title));
    // Grid and y ticks.
    for k in 0..=5 {
        let v = y_max * k as f64 / 5.0;
        let y = y_at(v);
        let _ = writeln!(svg, r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e0e0e0"/>"##, LEFT + pw);
        let _ = writeln!(svg, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#, LEFT - 8.0, y + 4.0, trim_number(v));
    }
    // X ticks.
    for (i, label) in plot.x_labels.iter().enumerate() {
        let x = x_at(i);
        let _ = writeln!(svg, r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#444"/>"##, TOP + ph, TOP + ph + 5.0);
        let _ = writeln!(svg, r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#, TOP + ph + 20.0, escape(label));
    }
    // Axes and their titles.
    let _ = writeln!(svg, r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="#444"/>"##, TOP + ph);
    let _ = writeln!(svg, r##"<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#444"/>"##, TOP + ph, LEFT + pw, TOP + ph);
    let _ = writeln!(svg, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#, LEFT + pw / 2.0, HEIGHT - 15.0, escape(&plot.x_title));
    let _ = writeln!(
        svg,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">{}</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        escape(&plot.y_title)
    );
    // Series: a polyline per run of consecutive values, a labelled dot per value.
    for (series_idx, s) in plot.series.iter().enumerate() {
        let dash = if s.dashed { r#" stroke-dasharray="6 4""# } else { "" };
        let mut run: Vec<(f64, f64)> = Vec::new();
        let flush = |svg: &mut String, run: &mut Vec<(f64, f64)>| {
            if run.len() > 1 {
                let pts: Vec<String> = run.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
                let _ = writeln!(svg, r#"<polyline fill="none" stroke="{}" stroke-width="2"{dash} points="{}"/>"#, s.color, pts.join(" "));
            }
            run.clear();
        };
        for (i, v) in s.values.iter().enumerate() {
            match v {
                Some(v) => run.push((x_at(i), y_at(*v))),
                None => flush(&mut svg, &mut run),
            }
        }
        flush(&mut svg, &mut run);
        for (i, v) in s.values.iter().enumerate() {
            if let Some(v) = v {
                let (x, y) = (x_at(i), y_at(*v));
                if let Some((low, high)) = interval(series_idx, i) {
                    let (lo, hi) = (y_at(low.max(0.0)), y_at(high.min(y_max)));
                    let _ = writeln!(
                        svg,
                        r#"<path d="M{x:.1},{lo:.1}V{hi:.1}M{:.1},{lo:.1}H{:.1}M{:.1},{hi:.1}H{:.1}" stroke="{}" stroke-width="1.5" fill="none"/>"#,
                        x - 4.0,
                        x + 4.0,
                        x - 4.0,
                        x + 4.0,
                        s.color
                    );
                }
                let _ = writeln!(svg, r#"<circle cx="{x:.1}" cy="{y:.1}" r="4" fill="{}"/>"#, s.color);
                let _ = writeln!(svg, r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="{}">{:.1}</text>"#, y - 9.0, s.color, v);
            }
        }
    }
    // Legend.
    for (k, s) in plot.series.iter().enumerate() {
        let (x, y) = (WIDTH - RIGHT + 20.0, TOP + 10.0 + 22.0 * k as f64);
        let dash = if s.dashed { r#" stroke-dasharray="6 4""# } else { "" };
        let _ = writeln!(svg, r#"<line x1="{x:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{}" stroke-width="2"{dash}/>"#, x + 24.0, s.color);
        let _ = writeln!(svg, r#"<text x="{:.1}" y="{:.1}">{}</text>"#, x + 30.0, y + 4.0, escape(&s.name));
    }
    svg.push_str("</svg>\n");
    svg
}

fn trim_number(v: f64) -> String {
    let s = format!("{v:.1}");
    s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_bounds() {
        for (v, want) in [(0.0, 1.0), (0.7, 1.0), (3.2, 5.0), (11.0, 20.0), (22.0, 25.0), (61.6, 100.0), (100.0, 100.0), (110.0, 200.0)] {
            assert_eq!(nice_ceiling(v), want, "{v}");
        }
    }

    #[test]
    fn renders_series_gaps_and_escapes() {
        let plot = LinePlot {
            title: "Resolve rate <%>".into(),
            x_title: "policy".into(),
            y_title: "%".into(),
            y_cap: None,
            x_labels: vec!["zero-shot".into(), "iter 1".into(), "iter 2".into()],
            series: vec![
                Series { name: "test".into(), color: "#1f77b4", dashed: false, values: vec![Some(7.0), Some(9.0), Some(10.0)] },
                Series { name: "train & more".into(), color: "#ff7f0e", dashed: true, values: vec![Some(5.0), None, Some(8.0)] },
            ],
        };
        let svg = render(&plot);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 1, "the gap splits the dashed series into single points");
        assert_eq!(svg.matches("<circle").count(), 5);
        assert!(svg.contains("Resolve rate &lt;%&gt;") && svg.contains("train &amp; more"));
        assert!(svg.contains(">10.0</text>") && svg.contains(">zero-shot</text>"));
    }

    #[test]
    fn error_bars_are_drawn_and_fit_the_axis() {
        let plot = LinePlot {
            title: "Best@k".into(),
            x_title: "k".into(),
            y_title: "%".into(),
            y_cap: Some(100.0),
            x_labels: vec!["1".into(), "2".into()],
            series: vec![
                Series { name: "pass".into(), color: "#1f77b4", dashed: false, values: vec![Some(40.0), Some(45.0)] },
                Series { name: "best".into(), color: "#ff7f0e", dashed: false, values: vec![Some(40.0), None] },
            ],
        };
        assert_eq!(render(&plot).matches("<path").count(), 0);
        let svg = render_with_errors(&plot, &[vec![Some(2.0), Some(10.0)], vec![None, Some(3.0)]]);
        assert_eq!(svg.matches("<path").count(), 2, "one bar per point with an error (not the gap)");
        // 45 + 10 = 55 sets the axis: 55 × 1.1 → 100 (capped), not the 50 that 45 × 1.1 gives
        assert!(svg.contains(">100</text>"), "{svg}");
    }

    #[test]
    fn a_rate_of_100_percent_tops_the_axis_at_its_cap() {
        let mut plot = LinePlot {
            title: "Empty-patch rate".into(),
            x_title: "policy".into(),
            y_title: "%".into(),
            y_cap: Some(100.0),
            x_labels: vec!["zero-shot".into(), "iter 1".into()],
            series: vec![Series { name: "test".into(), color: "#1f77b4", dashed: false, values: vec![Some(100.0), Some(75.0)] }],
        };
        let svg = render(&plot);
        assert!(svg.contains(">100</text>") && !svg.contains(">200</text>"), "the axis ends at the cap");
        // Below the cap the axis still follows the data (2% is not drawn on a 0-100 axis).
        plot.series[0].values = vec![Some(2.0), Some(1.0)];
        let svg = render(&plot);
        assert!(svg.contains(">2.5</text>") && !svg.contains(">100</text>"));
        // Without a cap, 100% rounds up to the next nice bound.
        plot.y_cap = None;
        plot.series[0].values = vec![Some(100.0)];
        assert!(render(&plot).contains(">200</text>"));
    }
}
