//! The operator benchmark's plot: bootstrap replicas (as read from the StatefulSet) and workers
//! per bootstrap node against the worker count, for a sweep up and a sweep down. Plain SVG text,
//! no plotting library.

use std::fmt::Write as _;

use serde::Serialize;

/// One measured step of a sweep.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct SweepPoint {
    /// `up` or `down`.
    pub direction: Direction,
    /// The DhtCluster's spec.workers.replicas, set through the scale subresource.
    pub workers: u32,
    /// The bootstrap StatefulSet's spec.replicas once the operator had reconciled the change.
    pub bootstrap_replicas: u32,
    /// What the tier policy calls for at `workers`.
    pub expected_bootstrap_replicas: u32,
}

impl SweepPoint {
    /// Workers per bootstrap node (0 without bootstrap nodes).
    pub fn ratio(&self) -> f64 {
        if self.bootstrap_replicas == 0 {
            0.0
        } else {
            f64::from(self.workers) / f64::from(self.bootstrap_replicas)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Up,
    Down,
}

/// What the plot marks besides the points: the tier boundaries and the ratio limit.
pub struct PlotFrame<'a> {
    /// (largest worker count of the tier, tier name), smallest tier first; the last tier has none.
    pub tiers: &'a [(Option<u32>, &'a str)],
    /// maxWorkersPerBootstrap.
    pub ratio_limit: f64,
    /// One line under the title (what was run, when).
    pub subtitle: &'a str,
}

const WIDTH: f64 = 860.0;
const HEIGHT: f64 = 460.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 80.0;
const TOP: f64 = 70.0;
const BOTTOM: f64 = 60.0;
const REPLICAS_COLOR: &str = "#1f77b4";
const DOWN_COLOR: &str = "#ff7f0e";
const RATIO_COLOR: &str = "#2ca02c";
const LIMIT_COLOR: &str = "#d62728";

/// The SVG document: bootstrap replicas on the left axis, the ratio on the right one.
pub fn tier_plot_svg(points: &[SweepPoint], frame: &PlotFrame<'_>) -> String {
    let max_workers = points.iter().map(|p| p.workers).max().unwrap_or(0).max(1);
    let x_max = f64::from(max_workers.div_ceil(50) * 50);
    let max_replicas = points.iter().map(|p| p.bootstrap_replicas).max().unwrap_or(0);
    let y_max = f64::from(max_replicas + 1);
    let max_ratio = points.iter().map(SweepPoint::ratio).fold(frame.ratio_limit, f64::max);
    let r_max = (max_ratio * 1.15 / 10.0).ceil() * 10.0;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |workers: f64| LEFT + workers / x_max * plot_w;
    let y = |replicas: f64| TOP + plot_h - replicas / y_max * plot_h;
    let yr = |ratio: f64| TOP + plot_h - ratio / r_max * plot_h;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">Bootstrap tier followed by the operator (measured from the StatefulSet)</text>"#,
        WIDTH / 2.0
    );
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="40" text-anchor="middle" fill="#555">{}</text>"##,
        WIDTH / 2.0,
        escape(frame.subtitle)
    );

    // Grid and left axis: one line per bootstrap replica.
    for replicas in 0..=(max_replicas + 1) {
        let py = y(f64::from(replicas));
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{replicas}</text>"##,
            LEFT + plot_w,
            LEFT - 8.0,
            py + 4.0
        );
    }
    // Right axis: the ratio, in steps of a multiple of 10 (at most 8 steps).
    let ratio_step = (r_max / 80.0).ceil() * 10.0;
    let mut ratio = 0.0;
    while ratio <= r_max {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" fill="{RATIO_COLOR}">{ratio:.0}</text>"#,
            LEFT + plot_w + 8.0,
            yr(ratio) + 4.0
        );
        ratio += ratio_step;
    }
    // Bottom axis: every 50 workers.
    let mut tick = 0.0;
    while tick <= x_max {
        let _ = writeln!(
            svg,
            r#"<line x1="{px:.1}" y1="{bottom:.1}" x2="{px:.1}" y2="{:.1}" stroke="black"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{tick:.0}</text>"#,
            TOP + plot_h + 5.0,
            TOP + plot_h + 18.0,
            px = x(tick),
            bottom = TOP + plot_h
        );
        tick += 50.0;
    }
    // Tier boundaries, half a worker above each tier's largest count, and the tier names.
    let mut lower = 0.0;
    for (max, name) in frame.tiers {
        let upper = max.map_or(x_max, |max| f64::from(max) + 0.5).min(x_max);
        if lower >= x_max {
            break;
        }
        if upper < x_max {
            let _ = writeln!(
                svg,
                r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#999" stroke-dasharray="2,3"/>"##,
                TOP + plot_h,
                px = x(upper)
            );
        }
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#777">{}</text>"##,
            (x(lower) + x(upper)) / 2.0,
            TOP + 14.0,
            escape(name)
        );
        lower = upper;
    }
    // The ratio limit.
    let limit_y = yr(frame.ratio_limit);
    let _ = writeln!(
        svg,
        r#"<line x1="{LEFT}" y1="{limit_y:.1}" x2="{:.1}" y2="{limit_y:.1}" stroke="{LIMIT_COLOR}" stroke-dasharray="6,4"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="{LIMIT_COLOR}">maxWorkersPerBootstrap {:.0}:1</text>"#,
        LEFT + plot_w,
        LEFT + plot_w - 4.0,
        limit_y - 5.0,
        frame.ratio_limit
    );
    // Axes and their titles.
    let _ = writeln!(
        svg,
        r#"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">workers (DhtCluster spec.workers.replicas, set with the scale subresource)</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 18.0
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate(22 {:.1}) rotate(-90)" text-anchor="middle" fill="{REPLICAS_COLOR}">bootstrap replicas (StatefulSet spec.replicas)</text>"#,
        TOP + plot_h / 2.0
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate({:.1} {:.1}) rotate(90)" text-anchor="middle" fill="{RATIO_COLOR}">workers per bootstrap node</text>"#,
        WIDTH - 22.0,
        TOP + plot_h / 2.0
    );

    // The measured series: steps for the replicas, straight segments for the ratio.
    for (direction, color, dash) in
        [(Direction::Up, REPLICAS_COLOR, ""), (Direction::Down, DOWN_COLOR, "6,4")]
    {
        let series: Vec<&SweepPoint> = points.iter().filter(|p| p.direction == direction).collect();
        let mut steps = String::new();
        for (i, point) in series.iter().enumerate() {
            let (px, py) = (x(f64::from(point.workers)), y(f64::from(point.bootstrap_replicas)));
            if let Some(previous) = i.checked_sub(1).map(|j| series[j]) {
                let _ = write!(steps, "{px:.1},{:.1} ", y(f64::from(previous.bootstrap_replicas)));
            }
            let _ = write!(steps, "{px:.1},{py:.1} ");
        }
        let ratios: String = series
            .iter()
            .map(|p| format!("{:.1},{:.1} ", x(f64::from(p.workers)), yr(p.ratio())))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/>"#,
            steps.trim_end()
        );
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{RATIO_COLOR}" stroke-width="1.5" stroke-dasharray="{dash}"/>"#,
            ratios.trim_end()
        );
        for point in &series {
            let (px, py) = (x(f64::from(point.workers)), y(f64::from(point.bootstrap_replicas)));
            let fill = if direction == Direction::Up { color } else { "white" };
            let _ = writeln!(
                svg,
                r#"<circle cx="{px:.1}" cy="{py:.1}" r="3" fill="{fill}" stroke="{color}"><title>{:?} {} workers: {} bootstrap replicas, {:.1}:1</title></circle>"#,
                direction,
                point.workers,
                point.bootstrap_replicas,
                point.ratio()
            );
        }
    }

    // Legend.
    let legend = [
        (REPLICAS_COLOR, "", "bootstrap replicas, scaling up"),
        (DOWN_COLOR, "6,4", "bootstrap replicas, scaling down"),
        (RATIO_COLOR, "", "workers per bootstrap node (up; dashed: down)"),
    ];
    for (i, (color, dash, label)) in legend.iter().enumerate() {
        let ly = TOP + 34.0 + 16.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{:.1}" y="{:.1}">{label}</text>"#,
            LEFT + 10.0,
            LEFT + 40.0,
            LEFT + 46.0,
            ly + 4.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(direction: Direction, workers: u32, replicas: u32) -> SweepPoint {
        SweepPoint {
            direction,
            workers,
            bootstrap_replicas: replicas,
            expected_bootstrap_replicas: replicas,
        }
    }

    fn frame() -> PlotFrame<'static> {
        PlotFrame {
            tiers: &[(Some(15), "small"), (Some(50), "medium"), (None, "large & <xlarge>")],
            ratio_limit: 50.0,
            subtitle: "run <now>",
        }
    }

    #[test]
    fn every_point_is_drawn_and_text_is_escaped() {
        let points = [
            point(Direction::Up, 0, 2),
            point(Direction::Up, 16, 3),
            point(Direction::Up, 60, 4),
            point(Direction::Down, 60, 4),
            point(Direction::Down, 0, 2),
        ];
        let svg = tier_plot_svg(&points, &frame());
        assert!(svg.starts_with("<svg ") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<circle ").count(), points.len());
        assert!(svg.contains("<title>Up 16 workers: 3 bootstrap replicas, 5.3:1</title>"));
        // Two series, each a replicas step line and a ratio line.
        assert_eq!(svg.matches("<polyline ").count(), 4);
        assert!(svg.contains("run &lt;now&gt;") && svg.contains("large &amp; &lt;xlarge&gt;"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn replicas_rise_as_a_step_at_the_next_count() {
        let svg = tier_plot_svg(
            &[point(Direction::Up, 0, 2), point(Direction::Up, 50, 3)],
            &PlotFrame { tiers: &[(None, "all")], ratio_limit: 50.0, subtitle: "" },
        );
        // x: 0 → 70, 50 → 70 + 710 = 780; y: 2 of 4 → 70 + 330 - 165 = 235, 3 of 4 → 152.5.
        assert!(svg.contains(r#"<polyline points="70.0,235.0 780.0,235.0 780.0,152.5" "#), "{svg}");
    }

    #[test]
    fn ratio_is_workers_per_bootstrap_node() {
        assert_eq!(point(Direction::Up, 500, 6).ratio(), 500.0 / 6.0);
        assert_eq!(point(Direction::Up, 10, 0).ratio(), 0.0);
    }
}
