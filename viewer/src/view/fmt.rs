//! Number and duration formatting shared by the screens: short, fixed-width
//! friendly, and the same everywhere (a duration reads "6.8 s" or "12.4 ms"
//! on every screen).

/// A duration in nanoseconds, with a unit that keeps 2–4 significant digits.
pub fn dur(ns: f64) -> String {
    let ns = ns.max(0.0);
    if ns >= 10e9 {
        format!("{:.0} s", ns / 1e9)
    } else if ns >= 1e9 {
        format!("{:.1} s", ns / 1e9)
    } else if ns >= 100e6 {
        format!("{:.0} ms", ns / 1e6)
    } else if ns >= 1e6 {
        format!("{:.1} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.0} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

/// Milliseconds with one decimal, or "-".
pub fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

/// An integer in groups of three: 6 012, 1 250 000. The groups are joined by
/// no-break spaces so a wrapped line never splits a number.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('\u{a0}');
        }
        out.push(c);
    }
    out
}

/// `s` cut to at most `n` characters, the cut marked with "…" at the end.
pub fn fit(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    if n == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(n - 1).collect();
    out.push('…');
    out
}

/// `s` cut to at most `n` characters keeping its end (ids differ at the end).
pub fn fit_end(s: &str, n: usize) -> String {
    let len = s.chars().count();
    if len <= n {
        return s.to_string();
    }
    if n == 0 {
        return String::new();
    }
    let tail: String = s.chars().skip(len - (n - 1)).collect();
    format!("…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_pick_a_unit() {
        assert_eq!(dur(6.8e9), "6.8 s");
        assert_eq!(dur(12.44e6), "12.4 ms");
        assert_eq!(dur(1663.9e6), "1.7 s");
        assert_eq!(dur(250e6), "250 ms");
        assert_eq!(dur(900.0), "900 ns");
    }

    #[test]
    fn counts_are_grouped() {
        assert_eq!(count(6012), "6\u{a0}012");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_250_000), "1\u{a0}250\u{a0}000");
    }

    #[test]
    fn cutting_marks_the_cut() {
        assert_eq!(fit("abcdef", 4), "abc…");
        assert_eq!(fit_end("abcdef", 4), "…def");
        assert_eq!(fit("ab", 4), "ab");
    }
}
