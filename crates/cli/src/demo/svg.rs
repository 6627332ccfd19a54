//! The picture of a demo run: request latency over time (the largest per
//! 100 ms, on a log scale) with every failover marked, as a hand-written,
//! self-contained SVG.

use std::fmt::Write;

/// One failover to mark.
#[derive(Debug, Clone)]
pub struct Marker {
    /// When it started, in seconds since the load started.
    pub at_s: f64,
    /// Its label, e.g. `kill 1→2 · pause 412 ms`.
    pub label: String,
    /// The pause clients saw, in seconds (shaded).
    pub pause_s: Option<f64>,
}

/// What to draw.
#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub subtitle: String,
    /// Width of one sample, in seconds.
    pub bucket_s: f64,
    /// Per bucket from time 0: the largest latency in seconds, or `None`
    /// if no request sent then was answered.
    pub max_latency_s: Vec<Option<f64>>,
    /// Length of the x axis, in seconds.
    pub duration_s: f64,
    pub markers: Vec<Marker>,
}

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 460.0;
const LEFT: f64 = 78.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 86.0;
const BOTTOM: f64 = 56.0;

/// Escapes text for XML content and attribute values.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn latency_label(s: f64) -> String {
    if s >= 1.0 {
        format!("{} s", s)
    } else if s >= 0.001 {
        format!("{} ms", (s * 1e3).round())
    } else {
        format!("{} µs", (s * 1e6).round())
    }
}

/// A tick step giving about `target` ticks over `span`.
fn nice_step(span: f64, target: f64) -> f64 {
    let raw = (span / target).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

impl Chart {
    /// The SVG document.
    pub fn render(&self) -> String {
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        let duration = self.duration_s.max(self.bucket_s);
        // y: log10 of seconds, from a decade at or below the fastest
        // sample to a decade at or above the slowest (and the pauses).
        let values = self
            .max_latency_s
            .iter()
            .flatten()
            .copied()
            .chain(self.markers.iter().filter_map(|m| m.pause_s))
            .filter(|v| *v > 0.0);
        let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let (lo, hi) = if lo > hi { (1e-4, 1.0) } else { (lo, hi) };
        let y_min = lo.log10().floor().max(-6.0);
        let y_max = hi.log10().ceil().max(y_min + 1.0);
        let x = |t: f64| LEFT + (t / duration).clamp(0.0, 1.0) * plot_w;
        let y = |v: f64| {
            let l = v.max(1e-9).log10().clamp(y_min, y_max);
            TOP + (1.0 - (l - y_min) / (y_max - y_min)) * plot_h
        };

        let mut s = String::new();
        let _ = writeln!(s, r##"<?xml version="1.0" encoding="UTF-8"?>"##);
        let _ = writeln!(
            s,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"##
        );
        let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="white"/>"##);
        let _ = writeln!(
            s,
            r##"<text x="{}" y="24" font-size="17" font-weight="bold">{}</text>"##,
            LEFT,
            esc(&self.title)
        );
        let _ = writeln!(
            s,
            r##"<text x="{}" y="44" fill="#555">{}</text>"##,
            LEFT,
            esc(&self.subtitle)
        );
        // Grid and y labels: every decade.
        let _ = writeln!(s, r##"<g class="y-axis" stroke="#ddd">"##);
        let mut decade = y_min;
        while decade <= y_max + 1e-9 {
            let v = 10f64.powf(decade);
            let py = y(v);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}"/>"##,
                LEFT + plot_w
            );
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="end" stroke="none" fill="#333">{}</text>"##,
                LEFT - 6.0,
                py + 4.0,
                esc(&latency_label(v))
            );
            decade += 1.0;
        }
        let _ = writeln!(s, "</g>");
        // x ticks.
        let step = nice_step(duration, 10.0);
        let _ = writeln!(s, r##"<g class="x-axis" stroke="#ddd">"##);
        let mut t = 0.0;
        while t <= duration + 1e-9 {
            let px = x(t);
            let _ = writeln!(
                s,
                r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}"/>"##,
                TOP + plot_h
            );
            let _ = writeln!(
                s,
                r##"<text x="{px:.1}" y="{:.1}" text-anchor="middle" stroke="none" fill="#333">{}</text>"##,
                TOP + plot_h + 16.0,
                (t * 1000.0).round() / 1000.0
            );
            t += step;
        }
        let _ = writeln!(s, "</g>");
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#888"/>"##
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">time since the load started (s)</text>"##,
            LEFT + plot_w / 2.0,
            HEIGHT - 14.0
        );
        let _ = writeln!(
            s,
            r##"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">request latency (max per {} ms, log scale)</text>"##,
            TOP + plot_h / 2.0,
            (self.bucket_s * 1e3).round()
        );
        // Failovers: the pause shaded, a dashed line at the fault, a label.
        for (i, m) in self.markers.iter().enumerate() {
            let px = x(m.at_s);
            if let Some(p) = m.pause_s {
                let _ = writeln!(
                    s,
                    r##"<rect class="pause" x="{px:.1}" y="{TOP}" width="{:.1}" height="{plot_h}" fill="#e4572e" fill-opacity="0.15"/>"##,
                    (x(m.at_s + p) - px).max(1.0)
                );
            }
            let _ = writeln!(
                s,
                r##"<line class="failover" x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#e4572e" stroke-width="1.5" stroke-dasharray="5 3"/>"##,
                TOP + plot_h
            );
            // Alternate two label rows so neighbours do not overlap; a
            // label that would run off the right edge ends at its line.
            let ly = TOP - 20.0 + 12.0 * (i % 2) as f64;
            let fits = px + 3.0 + 6.5 * m.label.chars().count() as f64 <= WIDTH - 4.0;
            let (lx, anchor) = if fits {
                (px + 3.0, "start")
            } else {
                (px - 3.0, "end")
            };
            let _ = writeln!(
                s,
                r##"<text class="failover-label" x="{lx:.1}" y="{ly:.1}" text-anchor="{anchor}" fill="#b03a1a" font-size="11">{}</text>"##,
                esc(&m.label)
            );
        }
        // The latency line: through every bucket that had replies.
        let mut points = String::new();
        for (i, v) in self.max_latency_s.iter().enumerate() {
            if let Some(v) = v {
                let t = (i as f64 + 0.5) * self.bucket_s;
                let _ = write!(points, "{:.1},{:.1} ", x(t), y(*v));
            }
        }
        let _ = writeln!(
            s,
            r##"<polyline class="latency" points="{}" fill="none" stroke="#1f6fb2" stroke-width="1.3" stroke-linejoin="round"/>"##,
            points.trim_end()
        );
        let _ = writeln!(s, "</svg>");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_one_svg_document_with_its_markers() {
        let chart = Chart {
            title: "latency <demo> & failovers".to_string(),
            subtitle: "3 nodes".to_string(),
            bucket_s: 0.1,
            max_latency_s: (0..200)
                .map(|i| match i {
                    50 => Some(0.6),
                    51..=55 => None,
                    _ => Some(0.0008 + (i % 7) as f64 * 1e-4),
                })
                .collect(),
            duration_s: 20.0,
            markers: vec![
                Marker {
                    at_s: 5.0,
                    label: "kill 1→2 · pause 600 ms".to_string(),
                    pause_s: Some(0.6),
                },
                Marker {
                    at_s: 10.0,
                    label: "crash 2→3 · pause ?".to_string(),
                    pause_s: None,
                },
            ],
        };
        let svg = chart.render();
        assert!(svg.starts_with("<?xml"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches(r##"class="failover""##).count(), 2);
        assert_eq!(svg.matches(r##"class="pause""##).count(), 1);
        assert!(svg.contains("latency &lt;demo&gt; &amp; failovers"));
        assert!(svg.contains("100 µs") && svg.contains("1 s"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        // Balanced elements: every opened tag is closed or self-closing.
        let opens = svg.matches("<g ").count() + svg.matches("<svg ").count();
        let closes = svg.matches("</g>").count() + svg.matches("</svg>").count();
        assert_eq!(opens, closes);
    }

    #[test]
    fn tick_steps_are_round() {
        assert_eq!(nice_step(45.0, 10.0), 5.0);
        assert_eq!(nice_step(20.0, 10.0), 2.0);
        assert_eq!(nice_step(600.0, 10.0), 100.0);
    }
}
