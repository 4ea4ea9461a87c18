//! The `ds4 bench --svg` chart: prefill and decode tokens/s against the
//! context, in two panels over one context axis. Plain SVG 1.1 with no
//! scripts or external fonts, so any viewer (browsers, resvg) renders it.

use std::fmt::Write;

use crate::cmd::bench::Row;

const W: f64 = 900.0;
const PANEL_H: f64 = 250.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 60.0;
const GAP: f64 = 70.0;

/// A "nice" step (1, 2 or 5 times a power of ten) for about `target` ticks.
fn nice_step(max: f64, target: f64) -> f64 {
    if max.is_nan() || max <= 0.0 {
        return 1.0;
    }
    let raw = max / target;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * mag);
    step.max(f64::MIN_POSITIVE)
}

/// Ticks from 0 to the first multiple of the step at or above `max`.
fn ticks(max: f64) -> (Vec<f64>, f64) {
    let step = nice_step(max, 5.0);
    let top = ((max / step).ceil() * step).max(step);
    let n = (top / step).round() as usize;
    ((0..=n).map(|i| i as f64 * step).collect(), top)
}

fn label(v: f64) -> String {
    if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

struct Panel<'a> {
    top: f64,
    title: &'a str,
    color: &'a str,
    values: Vec<f64>,
}

/// The chart as an SVG document.
pub fn chart(rows: &[Row], title: &str) -> String {
    let xs: Vec<f64> = rows.iter().map(|r| r.ctx_tokens as f64).collect();
    let (xticks, xmax) = ticks(xs.iter().copied().fold(0.0, f64::max));
    let plot_w = W - LEFT - RIGHT;
    let x_of = |x: f64| LEFT + plot_w * x / xmax;
    let panels = [
        Panel {
            top: TOP,
            title: "prefill tokens/s",
            color: "#1f77b4",
            values: rows.iter().map(|r| r.prefill_tps).collect(),
        },
        Panel {
            top: TOP + PANEL_H + GAP,
            title: "decode tokens/s",
            color: "#d62728",
            values: rows.iter().map(|r| r.gen_tps).collect(),
        },
    ];
    let h = TOP + 2.0 * PANEL_H + GAP + 60.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">
<rect x="0" y="0" width="{W}" height="{h}" fill="#ffffff"/>
<text x="{cx}" y="30" font-size="18" text-anchor="middle" fill="#222222">{t}</text>
"##,
        cx = W / 2.0,
        t = escape(title)
    );
    for p in &panels {
        let finite: Vec<f64> = p.values.iter().copied().filter(|v| v.is_finite()).collect();
        let (yticks, ymax) = ticks(finite.iter().copied().fold(0.0, f64::max));
        let bottom = p.top + PANEL_H;
        let y_of = |y: f64| bottom - PANEL_H * y / ymax;
        // Grid, y ticks and labels.
        for &t in &yticks {
            let y = y_of(t);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e0e0e0" stroke-width="1"/>
<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="end" fill="#444444">{}</text>"##,
                W - RIGHT,
                LEFT - 8.0,
                y + 4.0,
                label(t)
            );
        }
        for &t in &xticks {
            let x = x_of(t);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{bottom:.1}" stroke="#f0f0f0" stroke-width="1"/>
<text x="{x:.1}" y="{:.1}" font-size="12" text-anchor="middle" fill="#444444">{}</text>"##,
                p.top,
                bottom + 18.0,
                label(t)
            );
        }
        // Axes and the panel's title.
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{:.1}" x2="{LEFT}" y2="{bottom:.1}" stroke="#333333" stroke-width="1.5"/>
<line x1="{LEFT}" y1="{bottom:.1}" x2="{:.1}" y2="{bottom:.1}" stroke="#333333" stroke-width="1.5"/>
<text x="{:.1}" y="{:.1}" font-size="14" text-anchor="middle" fill="{}" transform="rotate(-90 {:.1} {:.1})">{}</text>"##,
            p.top,
            W - RIGHT,
            LEFT - 60.0,
            p.top + PANEL_H / 2.0,
            p.color,
            LEFT - 60.0,
            p.top + PANEL_H / 2.0,
            p.title
        );
        // The series.
        let pts: Vec<(f64, f64)> = xs
            .iter()
            .zip(&p.values)
            .filter(|(_, v)| v.is_finite())
            .map(|(&x, &v)| (x_of(x), y_of(v)))
            .collect();
        if pts.len() > 1 {
            let list: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let _ = writeln!(
                s,
                r##"<polyline points="{}" fill="none" stroke="{}" stroke-width="2.5"/>"##,
                list.join(" "),
                p.color
            );
        }
        let show_values = pts.len() <= 16;
        for ((x, y), v) in pts.iter().zip(finite.iter()) {
            let _ = writeln!(
                s,
                r##"<circle cx="{x:.1}" cy="{y:.1}" r="4" fill="{}"/>"##,
                p.color
            );
            if show_values {
                let _ = writeln!(
                    s,
                    r##"<text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle" fill="#222222">{}</text>"##,
                    y - 9.0,
                    label(*v)
                );
            }
        }
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" font-size="14" text-anchor="middle" fill="#222222">context (tokens)</text>
</svg>"##,
        LEFT + plot_w / 2.0,
        h - 15.0
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_max() {
        let (t, top) = ticks(32768.0);
        assert_eq!(t.first(), Some(&0.0));
        assert!((32768.0..=40000.0).contains(&top), "{top}");
        assert_eq!(ticks(0.0).1, 1.0);
        assert_eq!(label(27.1), "27.1");
        assert_eq!(label(4.256), "4.26");
    }

    #[test]
    fn chart_has_both_series() {
        let rows: Vec<Row> = (1..=3)
            .map(|i| Row {
                ctx_tokens: i * 1024,
                prefill_tokens: 1024,
                prefill_tps: 300.0 / i as f64,
                gen_tokens: 16,
                gen_tps: 20.0 - i as f64,
                kvcache_bytes: 0,
            })
            .collect();
        let svg = chart(&rows, "a <b> & c");
        assert!(svg.starts_with("<?xml") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 6);
        assert!(svg.contains("a &lt;b&gt; &amp; c"));
    }
}
