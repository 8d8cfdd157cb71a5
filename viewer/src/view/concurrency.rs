//! The concurrency window: the engine's steps around one moment, and who was
//! in each (prefill or decode).
//!
//! The trace keeps step × request rows for prefill work only (one row per
//! generated token would double a big trace's memory), so decode membership
//! is rebuilt from the requests' own token lists: a request decoded in a step
//! exactly when it sampled a token there. Only the window is rebuilt, by a
//! binary search per request.

use toktrace_analyzer::data::{RequestIx, StepIx, TraceData};

/// One request's part in one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// The request.
    pub request: RequestIx,
    /// Prompt tokens it computed in the step (0: decode only).
    pub prefill_tokens: u32,
    /// Tokens it sampled in the step.
    pub sampled: u32,
}

/// One step with its members, in the order [`lines`] gives.
#[derive(Debug, Clone)]
pub struct StepLine {
    /// The step.
    pub step: StepIx,
    /// Who ran in it.
    pub members: Vec<Member>,
}

/// The steps of one engine process, and a cursor over them.
pub struct StepWindow {
    /// The process's steps: `first..end` in the trace's step table.
    pub first: StepIx,
    /// One past its last step.
    pub end: StepIx,
    /// The step under the cursor.
    pub cursor: StepIx,
    /// Which member of the cursor's step is selected.
    pub member: usize,
    /// The step the window was opened on (the stalled token's), marked.
    pub focus: StepIx,
}

impl StepWindow {
    /// A window over the steps of `step`'s process, the cursor on `step`.
    pub fn around(data: &TraceData, step: StepIx) -> Option<StepWindow> {
        let process = data.steps.get(step as usize)?.process;
        // Steps are ordered by process, then time.
        let first = data.steps.partition_point(|s| s.process < process) as StepIx;
        let end = data.steps.partition_point(|s| s.process <= process) as StepIx;
        Some(StepWindow {
            first,
            end,
            cursor: step,
            member: 0,
            focus: step,
        })
    }

    /// Move the cursor by `delta` steps, staying in the process.
    pub fn move_by(&mut self, delta: i64) {
        let at =
            (i64::from(self.cursor) + delta).clamp(i64::from(self.first), i64::from(self.end) - 1);
        self.cursor = at as StepIx;
        self.member = 0;
    }

    /// The `rows` steps to show: the cursor kept in view, centred when it can be.
    pub fn visible(&self, rows: usize) -> std::ops::Range<StepIx> {
        let rows = rows.max(1) as StepIx;
        let len = self.end - self.first;
        if len <= rows {
            return self.first..self.end;
        }
        let half = rows / 2;
        let from = self
            .cursor
            .saturating_sub(half)
            .clamp(self.first, self.end - rows);
        from..from + rows
    }
}

/// Steps `range` with their members: prefills first (largest first), then
/// `focus` (the request being examined, so it is seen however full the step),
/// then the other decodes.
pub fn lines(
    data: &TraceData,
    range: std::ops::Range<StepIx>,
    focus: Option<RequestIx>,
) -> Vec<StepLine> {
    let mut out: Vec<StepLine> = range
        .clone()
        .map(|step| StepLine {
            step,
            members: data
                .slices_of(step)
                .iter()
                .filter(|s| s.prefill_tokens > 0)
                .map(|s| Member {
                    request: s.request,
                    prefill_tokens: s.prefill_tokens,
                    sampled: 0,
                })
                .collect(),
        })
        .collect();
    if out.is_empty() {
        return out;
    }
    let process = data.steps.get(range.start as usize).map(|s| s.process);
    for (ix, r) in data.requests.iter().enumerate() {
        if Some(r.process) != process {
            continue;
        }
        // token_step is in step order: the tokens in the window are one run.
        let from = r.token_step.partition_point(|&s| s < range.start);
        let to = r.token_step.partition_point(|&s| s < range.end);
        for &step in &r.token_step[from..to] {
            let line = &mut out[(step - range.start) as usize];
            match line
                .members
                .iter_mut()
                .find(|m| m.request == ix as RequestIx)
            {
                Some(m) => m.sampled += 1,
                None => line.members.push(Member {
                    request: ix as RequestIx,
                    prefill_tokens: 0,
                    sampled: 1,
                }),
            }
        }
    }
    for line in &mut out {
        line.members.sort_by_key(|m| {
            (
                std::cmp::Reverse(m.prefill_tokens),
                Some(m.request) != focus,
                m.request,
            )
        });
    }
    out
}
