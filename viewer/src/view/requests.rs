//! The requests list: one row per request with the analyzer's figures, an
//! order and a filter. Rows are computed once; sorting and filtering only
//! reorder indices, so a big trace stays responsive.

use toktrace_analyzer::data::RequestIx;
use toktrace_analyzer::report::RequestRow;
use toktrace_analyzer::Analysis;

/// What the list is ordered by (worst first, except arrival: oldest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// Arrival time.
    Arrival,
    /// Time to first token.
    Ttft,
    /// 99th percentile inter-token gap.
    ItlP99,
    /// The slowest token (largest gap).
    MaxItl,
    /// Delay caused by other requests.
    Interference,
    /// Number of flags.
    Flags,
}

impl Sort {
    /// The next order (the `s` key cycles through them).
    pub fn next(self) -> Sort {
        match self {
            Sort::Arrival => Sort::Ttft,
            Sort::Ttft => Sort::ItlP99,
            Sort::ItlP99 => Sort::MaxItl,
            Sort::MaxItl => Sort::Interference,
            Sort::Interference => Sort::Flags,
            Sort::Flags => Sort::Arrival,
        }
    }

    /// Its name in the header.
    pub fn name(self) -> &'static str {
        match self {
            Sort::Arrival => "arrival",
            Sort::Ttft => "TTFT",
            Sort::ItlP99 => "p99 ITL",
            Sort::MaxItl => "slowest token",
            Sort::Interference => "interference",
            Sort::Flags => "flags",
        }
    }

    fn key(self, r: &RequestRow) -> Option<f64> {
        match self {
            // Oldest first: negate so "largest first" puts it on top.
            Sort::Arrival => r.arrival_unix_ns.map(|t| -(t as f64)),
            Sort::Ttft => r.ttft_ms,
            Sort::ItlP99 => r.itl_p99_ms,
            Sort::MaxItl => r.max_itl_ms,
            Sort::Interference => Some(r.interference_ms),
            Sort::Flags => Some(r.flags.len() as f64),
        }
    }
}

/// The list's rows, order, filter and selection.
pub struct RequestList {
    /// One row per request, aligned with the trace's requests.
    pub rows: Vec<RequestRow>,
    /// The requests shown, in order.
    pub shown: Vec<RequestIx>,
    /// Current order.
    pub sort: Sort,
    /// Best first (false: reversed).
    pub worst_first: bool,
    /// Only requests delayed by others.
    pub only_interfered: bool,
    /// Only rows containing this text (id, internal id, trace id, flag, culprit).
    pub filter: String,
    /// Position of the selection in `shown`.
    pub selected: usize,
}

impl RequestList {
    /// Rows of every request, ordered by the slowest token (what someone
    /// opening the viewer without an ID most likely looks for).
    pub fn new(a: &Analysis) -> RequestList {
        let rows = (0..a.data.requests.len() as RequestIx)
            .map(|r| a.request_row(r))
            .collect();
        let mut list = RequestList {
            rows,
            shown: Vec::new(),
            sort: Sort::MaxItl,
            worst_first: true,
            only_interfered: false,
            filter: String::new(),
            selected: 0,
        };
        list.refresh();
        list
    }

    /// Recompute `shown` after a change of order or filter, keeping the
    /// selected request selected when it is still shown.
    pub fn refresh(&mut self) {
        let keep = self.selected_request();
        let needle = self.filter.to_lowercase();
        let mut shown: Vec<RequestIx> = (0..self.rows.len() as RequestIx)
            .filter(|&r| {
                let row = &self.rows[r as usize];
                (!self.only_interfered || row.interference_ms > 0.0)
                    && (needle.is_empty() || matches(row, &needle))
            })
            .collect();
        let sort = self.sort;
        let rows = &self.rows;
        // Requests without the figure go last either way.
        shown.sort_by(|&x, &y| {
            let (a, b) = (sort.key(&rows[x as usize]), sort.key(&rows[y as usize]));
            match (a, b) {
                (Some(a), Some(b)) => {
                    let worst = b.total_cmp(&a);
                    if self.worst_first {
                        worst
                    } else {
                        worst.reverse()
                    }
                }
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            }
            .then(x.cmp(&y))
        });
        self.shown = shown;
        self.selected = keep
            .and_then(|k| self.shown.iter().position(|&r| r == k))
            .unwrap_or(0);
    }

    /// The selected request, if any row is shown.
    pub fn selected_request(&self) -> Option<RequestIx> {
        self.shown.get(self.selected).copied()
    }

    /// Select request `r` (clearing a filter that hides it).
    pub fn select(&mut self, r: RequestIx) {
        if !self.shown.contains(&r) {
            self.filter.clear();
            self.only_interfered = false;
            self.refresh();
        }
        if let Some(at) = self.shown.iter().position(|&x| x == r) {
            self.selected = at;
        }
    }

    /// Move the selection by `delta` rows, staying in the list.
    pub fn move_by(&mut self, delta: isize) {
        let last = self.shown.len().saturating_sub(1);
        self.selected = self.selected.saturating_add_signed(delta).min(last);
    }
}

fn matches(row: &RequestRow, needle: &str) -> bool {
    let hit = |s: &str| s.to_lowercase().contains(needle);
    hit(&row.request_id)
        || hit(&row.internal_id)
        || row.trace_id.as_deref().is_some_and(hit)
        || row.flags.iter().any(|f| hit(f))
        || row.top_culprits.iter().any(|c| hit(&c.request_id))
}

/// Short names of the flags, for a narrow column.
pub fn short_flag(name: &str) -> &str {
    match name {
        "special_token_in_output" => "special",
        "sampled_outside_top_k" => "top-k",
        "low_confidence" => "unsure",
        "batch_variance" => "variance",
        "nan_logprobs" => "nan",
        "repetition" => "repeat",
        "preempted" => "preempt",
        "missing_tokens" => "missing",
        other => other,
    }
}
