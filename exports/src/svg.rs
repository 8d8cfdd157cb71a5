//! Small inline SVG charts for the HTML report: a time series and a
//! histogram, with axes and tick labels, and nothing the page must fetch.
//!
//! Charts are strings; the caller places them. Values arrive already reduced
//! (a few hundred points at most), so the page stays light whatever the
//! trace's size.

use std::fmt::Write;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 36.0;

/// Escape text for HTML and SVG.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Round tick positions covering `[lo, hi]`, about `count` of them.
fn ticks(lo: f64, hi: f64, count: usize) -> Vec<f64> {
    let span = (hi - lo).max(f64::MIN_POSITIVE);
    let raw = span / count.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * magnitude);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 && out.len() < 50 {
        out.push(t);
        t += step;
    }
    out
}

/// A number for an axis label: no trailing zeros, thousands kept short.
fn label(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.3}M", v / 1e6)
            .trim_end_matches('0')
            .trim_end_matches('.')
            .replace(".M", "M")
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 10.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

struct Frame {
    x: (f64, f64),
    y: (f64, f64),
}

impl Frame {
    fn px(&self, x: f64) -> f64 {
        LEFT + (x - self.x.0) / (self.x.1 - self.x.0).max(f64::MIN_POSITIVE)
            * (WIDTH - LEFT - RIGHT)
    }
    fn py(&self, y: f64) -> f64 {
        HEIGHT
            - BOTTOM
            - (y - self.y.0) / (self.y.1 - self.y.0).max(f64::MIN_POSITIVE)
                * (HEIGHT - TOP - BOTTOM)
    }
}

fn open(out: &mut String, title: &str, x_label: &str, y_label: &str, f: &Frame) {
    let _ = write!(
        out,
        r#"<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{t}">"#,
        t = escape(title)
    );
    let _ = write!(
        out,
        r#"<text x="{LEFT}" y="16" class="title">{}</text>"#,
        escape(title)
    );
    for t in ticks(f.y.0, f.y.1, 4) {
        let y = f.py(t);
        let _ = write!(
            out,
            r#"<line x1="{LEFT}" x2="{x2}" y1="{y:.1}" y2="{y:.1}" class="grid"/><text x="{lx}" y="{ty:.1}" class="tick" text-anchor="end">{l}</text>"#,
            x2 = WIDTH - RIGHT,
            lx = LEFT - 6.0,
            ty = y + 4.0,
            l = label(t)
        );
    }
    for t in ticks(f.x.0, f.x.1, 8) {
        let x = f.px(t);
        let _ = write!(
            out,
            r#"<text x="{x:.1}" y="{y}" class="tick" text-anchor="middle">{l}</text>"#,
            y = HEIGHT - BOTTOM + 16.0,
            l = label(t)
        );
    }
    let _ = write!(
        out,
        r#"<line x1="{LEFT}" x2="{x2}" y1="{y}" y2="{y}" class="axis"/><text x="{cx}" y="{by}" class="tick" text-anchor="middle">{xl}</text><text x="12" y="{cy}" class="tick" transform="rotate(-90 12 {cy})" text-anchor="middle">{yl}</text>"#,
        x2 = WIDTH - RIGHT,
        y = HEIGHT - BOTTOM,
        cx = (LEFT + WIDTH - RIGHT) / 2.0,
        by = HEIGHT - 4.0,
        cy = (TOP + HEIGHT - BOTTOM) / 2.0,
        xl = escape(x_label),
        yl = escape(y_label),
    );
}

/// A time series of buckets `(from, to, value)`: each bucket a level line
/// over its span, joined to its neighbour when they touch; a bucket without
/// a value is a gap (nothing happened there, or one long step was running).
pub fn series(
    title: &str,
    x_label: &str,
    y_label: &str,
    buckets: &[(f64, f64, Option<f64>)],
    class: &str,
) -> String {
    let mut out = String::new();
    let x_lo = buckets.first().map_or(0.0, |b| b.0);
    let x_hi = buckets.last().map_or(1.0, |b| b.1).max(x_lo + 1e-9);
    let y_hi = buckets
        .iter()
        .filter_map(|b| b.2)
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.05;
    let f = Frame {
        x: (x_lo, x_hi),
        y: (0.0, y_hi),
    };
    open(&mut out, title, x_label, y_label, &f);
    let mut path = String::new();
    let mut joined = false;
    for &(x0, x1, y) in buckets {
        match y {
            Some(y) => {
                let (a, b, v) = (f.px(x0), f.px(x1), f.py(y));
                if joined {
                    let _ = write!(path, " V{v:.1} H{b:.1}");
                } else {
                    let _ = write!(path, " M{a:.1},{v:.1} H{b:.1}");
                }
                joined = true;
            }
            None => joined = false,
        }
    }
    if !path.is_empty() {
        let _ = write!(
            out,
            r#"<path d="{}" class="{class}" fill="none"/>"#,
            path.trim_start()
        );
    }
    out.push_str("</svg>");
    out
}

/// A histogram: (bucket low, bucket high, count), buckets in order. The x
/// axis is the bucket index, labelled with the bucket bounds.
pub fn histogram(title: &str, x_label: &str, buckets: &[(f64, f64, u64)], class: &str) -> String {
    let mut out = String::new();
    let n = buckets.len().max(1) as f64;
    let top = buckets.iter().map(|b| b.2).max().unwrap_or(0) as f64;
    let f = Frame {
        x: (0.0, n),
        y: (0.0, (top * 1.05).max(1.0)),
    };
    // Axes without x ticks: the bucket bounds are written under the bars.
    let _ = write!(
        out,
        r#"<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{t}"><text x="{LEFT}" y="16" class="title">{t}</text>"#,
        t = escape(title)
    );
    for t in ticks(0.0, f.y.1, 4) {
        let y = f.py(t);
        let _ = write!(
            out,
            r#"<line x1="{LEFT}" x2="{x2}" y1="{y:.1}" y2="{y:.1}" class="grid"/><text x="{lx}" y="{ty:.1}" class="tick" text-anchor="end">{l}</text>"#,
            x2 = WIDTH - RIGHT,
            lx = LEFT - 6.0,
            ty = y + 4.0,
            l = label(t)
        );
    }
    let every = (buckets.len() / 8).max(1);
    for (i, &(lo, hi, count)) in buckets.iter().enumerate() {
        let (x0, x1) = (f.px(i as f64) + 1.0, f.px(i as f64 + 1.0) - 1.0);
        let y = f.py(count as f64);
        let _ = write!(
            out,
            r#"<rect x="{x0:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" class="{class}"><title>{lo} – {hi}: {count}</title></rect>"#,
            w = (x1 - x0).max(0.5),
            h = (HEIGHT - BOTTOM - y).max(0.0),
            lo = label(lo),
            hi = label(hi),
        );
        if i % every == 0 {
            let _ = write!(
                out,
                r#"<text x="{x0:.1}" y="{ty}" class="tick">{l}</text>"#,
                ty = HEIGHT - BOTTOM + 16.0,
                l = label(lo)
            );
        }
    }
    let _ = write!(
        out,
        r#"<line x1="{LEFT}" x2="{x2}" y1="{y}" y2="{y}" class="axis"/><text x="{cx}" y="{by}" class="tick" text-anchor="middle">{xl}</text></svg>"#,
        x2 = WIDTH - RIGHT,
        y = HEIGHT - BOTTOM,
        cx = (LEFT + WIDTH - RIGHT) / 2.0,
        by = HEIGHT - 4.0,
        xl = escape(x_label),
    );
    out
}

/// Log-spaced buckets over positive values (a latency spans decades), at
/// most `count` of them; empty input gives no buckets.
pub fn log_buckets(values: &[f64], count: usize) -> Vec<(f64, f64, u64)> {
    let positive: Vec<f64> = values
        .iter()
        .copied()
        .filter(|v| *v > 0.0 && v.is_finite())
        .collect();
    let (Some(lo), Some(hi)) = (
        positive.iter().copied().reduce(f64::min),
        positive.iter().copied().reduce(f64::max),
    ) else {
        return Vec::new();
    };
    let (l0, l1) = (lo.log10(), (hi * 1.000_001).log10());
    let n = count.max(1);
    let width = ((l1 - l0) / n as f64).max(1e-9);
    let mut buckets: Vec<(f64, f64, u64)> = (0..n)
        .map(|i| {
            (
                10f64.powf(l0 + width * i as f64),
                10f64.powf(l0 + width * (i + 1) as f64),
                0,
            )
        })
        .collect();
    for v in positive {
        let i = (((v.log10() - l0) / width) as usize).min(n - 1);
        buckets[i].2 += 1;
    }
    buckets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        assert_eq!(ticks(0.0, 100.0, 4), vec![0.0, 50.0, 100.0]);
        assert_eq!(
            ticks(0.0, 1.0, 5),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
    }

    #[test]
    fn buckets_hold_every_value() {
        let v = [1.0, 10.0, 100.0, 1000.0, 5.0, 0.0];
        let b = log_buckets(&v, 3);
        assert_eq!(b.iter().map(|x| x.2).sum::<u64>(), 5);
        assert!(log_buckets(&[], 3).is_empty());
    }

    #[test]
    fn charts_escape_their_text() {
        let s = series(
            "a<b",
            "x",
            "y",
            &[
                (0.0, 1.0, Some(1.0)),
                (1.0, 2.0, None),
                (2.0, 3.0, Some(2.0)),
            ],
            "line",
        );
        assert_eq!(s.matches(" M").count() + s.matches("\"M").count(), 2);
        assert!(s.contains("a&lt;b") && s.contains("<path"));
        let h = histogram("h", "ms", &log_buckets(&[1.0, 2.0], 2), "bar");
        assert!(h.contains("<rect"));
    }
}
