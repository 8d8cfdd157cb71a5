//! What part of a trace an export covers: a time window and/or a set of
//! requests (`export --from T --to T --request ID …`).
//!
//! An incident review is about minutes of a long trace, or about the few
//! requests a ticket names. A selection keeps the steps that overlap the
//! window, the requests that were alive in it (and named, when ids were
//! given), and their tokens computed in it. Naming requests without a window
//! sets the window to their lifetimes, so the engine's steps around them come
//! along.
//!
//! Times are unix nanoseconds, as every export shows them. [`TimeSpec`] is how
//! people write them: seconds from the start of the trace (`90`, `1.5s`,
//! `250ms`) or an RFC 3339 time (`2026-11-23T14:03:10.5Z`).

use crate::analysis::Analysis;
use crate::data::{RequestIx, StepIx};
use std::collections::HashSet;

/// A point in time as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TimeSpec {
    /// Seconds after the trace's first recorded moment.
    SinceStart(f64),
    /// Unix nanoseconds.
    Unix(u64),
}

impl std::str::FromStr for TimeSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<TimeSpec, String> {
        let s = s.trim();
        if s.contains('T') || s.contains(':') {
            return parse_rfc3339(s).map(TimeSpec::Unix);
        }
        let (number, scale) = if let Some(v) = s.strip_suffix("ms") {
            (v, 1e-3)
        } else if let Some(v) = s.strip_suffix('s') {
            (v, 1.0)
        } else {
            (s, 1.0)
        };
        match number.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => Ok(TimeSpec::SinceStart(v * scale)),
            _ => Err(format!(
                "`{s}` is not a time: give seconds from the trace start (90, 1.5s, 250ms) \
                 or an RFC 3339 time (2026-11-23T14:03:10Z)"
            )),
        }
    }
}

/// Parse `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` into unix nanoseconds.
fn parse_rfc3339(s: &str) -> Result<u64, String> {
    let bad = || format!("`{s}` is not an RFC 3339 time such as 2026-11-23T14:03:10.5Z");
    let (date, rest) = s.split_once(['T', 't', ' ']).ok_or_else(bad)?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (year, month, day) = match (d.next(), d.next(), d.next(), d.next()) {
        (Some(Ok(y)), Some(Ok(m)), Some(Ok(d)), None) => (y, m, d),
        _ => return Err(bad()),
    };
    // The zone: Z, or an offset after the seconds.
    let (clock, offset_s) = if let Some(c) = rest.strip_suffix(['Z', 'z']) {
        (c, 0i64)
    } else {
        let at = rest.rfind(['+', '-']).ok_or_else(bad)?;
        let (c, zone) = rest.split_at(at);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let (h, m) = zone[1..].split_once(':').ok_or_else(bad)?;
        let h: i64 = h.parse().map_err(|_| bad())?;
        let m: i64 = m.parse().map_err(|_| bad())?;
        (c, sign * (h * 3600 + m * 60))
    };
    let mut c = clock.split(':');
    let (hour, minute, second) = match (c.next(), c.next(), c.next(), c.next()) {
        (Some(h), Some(m), Some(sec), None) => (h, m, sec),
        _ => return Err(bad()),
    };
    let hour: i64 = hour.parse().map_err(|_| bad())?;
    let minute: i64 = minute.parse().map_err(|_| bad())?;
    let (whole, fraction) = second.split_once('.').unwrap_or((second, ""));
    let second: i64 = whole.parse().map_err(|_| bad())?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || !(0..24).contains(&hour)
        || !(0..60).contains(&minute)
        || !(0..=60).contains(&second)
        || fraction.len() > 9
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let nanos: i64 = format!("{fraction:0<9}").parse().map_err(|_| bad())?;
    let seconds =
        days_since_epoch(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    u64::try_from(seconds * 1_000_000_000 + nanos).map_err(|_| format!("`{s}` is before 1970"))
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar.
fn days_since_epoch(year: i64, month: i64, day: i64) -> i64 {
    // Count years from March so the leap day is the last day of a year.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Unix nanoseconds as an RFC 3339 UTC time with milliseconds.
pub fn format_rfc3339(unix_ns: u64) -> String {
    let seconds = (unix_ns / 1_000_000_000) as i64;
    let millis = (unix_ns / 1_000_000) % 1000;
    let (days, rest) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// The date `days` after 1970-01-01 (the inverse of [`days_since_epoch`]).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// What an export covers.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Start of the inclusive window, unix nanoseconds; None: unbounded.
    pub from_unix_ns: Option<u64>,
    /// End of the inclusive window, unix nanoseconds; None: unbounded.
    pub to_unix_ns: Option<u64>,
    /// Only these requests (their rows, tokens and interference; and their
    /// slices, unless `steps` is given); None: all.
    pub requests: Option<HashSet<RequestIx>>,
    /// Only these steps, with every request's slice of them; None: all.
    /// (The fleet dataset takes new steps and newly finished requests
    /// apart: a step's slices go with the step.)
    pub steps: Option<HashSet<StepIx>>,
}

impl Selection {
    /// Everything.
    pub fn all() -> Selection {
        Selection::default()
    }

    /// A selection from what the command line gave. With requests but no
    /// window, the window is their lifetimes.
    pub fn new(
        a: &Analysis,
        from: Option<TimeSpec>,
        to: Option<TimeSpec>,
        requests: Option<HashSet<RequestIx>>,
    ) -> Selection {
        let start = trace_start_unix_ns(a);
        let resolve = |t: TimeSpec| match t {
            TimeSpec::Unix(ns) => ns,
            TimeSpec::SinceStart(s) => start.saturating_add((s * 1e9) as u64),
        };
        let mut selection = Selection {
            from_unix_ns: from.map(resolve),
            to_unix_ns: to.map(resolve),
            requests,
            steps: None,
        };
        if let (None, None, Some(ids)) = (from, to, &selection.requests) {
            let spans: Vec<(u64, u64)> = ids.iter().filter_map(|&r| lifetime(a, r)).collect();
            selection.from_unix_ns = spans.iter().map(|s| s.0).min();
            selection.to_unix_ns = spans.iter().map(|s| s.1).max();
        }
        selection
    }

    /// Whether a moment falls in the window.
    pub fn contains(&self, unix_ns: u64) -> bool {
        self.overlaps(unix_ns, unix_ns)
    }

    /// Whether `[from, to]` meets the window.
    pub fn overlaps(&self, from: u64, to: u64) -> bool {
        self.from_unix_ns.is_none_or(|f| to >= f) && self.to_unix_ns.is_none_or(|t| from <= t)
    }

    /// Whether a step is covered.
    pub fn step(&self, a: &Analysis, s: StepIx) -> bool {
        if self.steps.as_ref().is_some_and(|steps| !steps.contains(&s)) {
            return false;
        }
        let step = &a.data.steps[s as usize];
        let p = &a.data.processes[step.process as usize];
        self.overlaps(p.unix_ns(step.start_ns), p.unix_ns(step.end_ns))
    }

    /// Whether a request is covered: named (when names were given) and alive
    /// in the window.
    pub fn request(&self, a: &Analysis, r: RequestIx) -> bool {
        if self.requests.as_ref().is_some_and(|ids| !ids.contains(&r)) {
            return false;
        }
        if self.from_unix_ns.is_none() && self.to_unix_ns.is_none() {
            return true;
        }
        lifetime(a, r).is_some_and(|(from, to)| self.overlaps(from, to))
    }

    /// Whether this selection keeps everything (no filtering needed).
    pub fn is_all(&self) -> bool {
        self.from_unix_ns.is_none()
            && self.to_unix_ns.is_none()
            && self.requests.is_none()
            && self.steps.is_none()
    }
}

/// The first recorded moment of the trace (a step start or an arrival), unix ns.
pub fn trace_start_unix_ns(a: &Analysis) -> u64 {
    let d = &a.data;
    let steps = d
        .steps
        .iter()
        .map(|s| d.processes[s.process as usize].unix_ns(s.start_ns));
    let arrivals = d.requests.iter().filter_map(|r| {
        r.arrival_ns()
            .map(|t| d.processes[r.process as usize].unix_ns(t))
    });
    steps.chain(arrivals).min().unwrap_or(0)
}

/// A request's lifetime in unix ns: arrival (or its first step) to finish
/// (or its last token's step end).
pub fn lifetime(a: &Analysis, r: RequestIx) -> Option<(u64, u64)> {
    let d = &a.data;
    let req = d.requests.get(r as usize)?;
    let p = &d.processes[req.process as usize];
    let first_step = req.first_scheduled.map(|s| d.steps[s as usize].start_ns);
    let last_step = req.token_step.last().map(|&s| d.steps[s as usize].end_ns);
    let from = req.arrival_ns().or(first_step)?;
    let last_emit = req.emit_ns.iter().copied().filter(|&t| t != 0).max();
    let to = [req.finish_ns, last_step, last_emit]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(from);
    Some((p.unix_ns(from), p.unix_ns(to.max(from))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_offsets_from_the_start() {
        assert_eq!("90".parse(), Ok(TimeSpec::SinceStart(90.0)));
        assert_eq!("1.5s".parse(), Ok(TimeSpec::SinceStart(1.5)));
        assert_eq!("250ms".parse(), Ok(TimeSpec::SinceStart(0.25)));
        assert!("-3".parse::<TimeSpec>().is_err());
        assert!("soon".parse::<TimeSpec>().is_err());
    }

    #[test]
    fn parses_rfc3339() {
        assert_eq!(
            "2026-11-23T00:00:00Z".parse(),
            Ok(TimeSpec::Unix(1_795_392_000_000_000_000))
        );
        assert_eq!(days_since_epoch(1970, 1, 1), 0);
        assert_eq!(days_since_epoch(2000, 3, 1), 11_017);
        assert_eq!(days_since_epoch(2024, 2, 29), 19_782);
        assert_eq!(
            "1970-01-01T00:00:01.25Z".parse(),
            Ok(TimeSpec::Unix(1_250_000_000))
        );
        assert_eq!(
            "1970-01-01T01:00:01+01:00".parse(),
            Ok(TimeSpec::Unix(1_000_000_000))
        );
        assert!("2026-13-01T00:00:00Z".parse::<TimeSpec>().is_err());
        assert!("2026-11-23T00:00Z".parse::<TimeSpec>().is_err());
        assert!("1969-12-31T23:59:59Z".parse::<TimeSpec>().is_err());
    }

    #[test]
    fn formats_what_it_parses() {
        for text in [
            "2026-11-23T14:03:10.250Z",
            "2000-02-29T00:00:00.000Z",
            "1970-01-01T00:00:00.001Z",
        ] {
            let Ok(TimeSpec::Unix(ns)) = text.parse() else {
                panic!("{text} did not parse");
            };
            assert_eq!(format_rfc3339(ns), text);
        }
    }

    #[test]
    fn windows_overlap() {
        let s = Selection {
            from_unix_ns: Some(10),
            to_unix_ns: Some(20),
            requests: None,
            steps: None,
        };
        assert!(s.overlaps(5, 10) && s.overlaps(20, 30) && s.overlaps(12, 13));
        assert!(!s.overlaps(0, 9) && !s.overlaps(21, 22));
        assert!(Selection::all().overlaps(0, 0));
    }
}
