//! One opened request: each generated token with its text, the split of its
//! latency (scheduling delay / running / emit gap), its batch, its candidates
//! and the analyzer's verdict on why it took as long as it did.

use super::detok::{Detokenizer, TokenText};
use super::fmt;
use toktrace_analyzer::attribution::{Cause, TokenTiming};
use toktrace_analyzer::data::{RequestIx, StepIx, TokenDetail};
use toktrace_analyzer::Analysis;

/// One candidate of a token's top-K.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Its id.
    pub id: u32,
    /// Its text.
    pub text: TokenText,
    /// Its logprob.
    pub logprob: f32,
}

/// One generated token, ready to show.
#[derive(Debug, Clone)]
pub struct TokenLine {
    /// The analyzer's breakdown of its gap.
    pub timing: TokenTiming,
    /// Sampled id (None: not captured).
    pub id: Option<u32>,
    /// What it reads as.
    pub text: TokenText,
    /// Sampled logprob.
    pub logprob: Option<f32>,
    /// Sampled rank (1 = the most likely).
    pub rank: Option<u32>,
    /// Candidates, best first (empty: not captured).
    pub top: Vec<Candidate>,
    /// exit → emit: the frontend's part (None: no frontend recorded it).
    pub emit_delay_ns: Option<u64>,
    /// Counted slow by the analyzer.
    pub slow: bool,
}

impl TokenLine {
    /// Scheduling + running + emit delay: the length of its latency bar.
    pub fn total_ns(&self) -> u64 {
        self.timing.scheduling_ns + self.timing.running_ns + self.emit_delay_ns.unwrap_or(0)
    }
}

/// One culprit of a token's excess, with the work it did.
#[derive(Debug, Clone)]
pub struct Culprit {
    /// The request.
    pub request: RequestIx,
    /// Its id.
    pub id: String,
    /// Delay laid at its door.
    pub ns: f64,
    /// Fraction of the token's excess.
    pub share: f64,
    /// How.
    pub cause: Cause,
    /// Prompt tokens it computed in the steps that delayed the token.
    pub prefill_tokens: u64,
}

/// An opened request.
pub struct RequestView {
    /// The request.
    pub request: RequestIx,
    /// Its tokens, in order.
    pub tokens: Vec<TokenLine>,
    /// Position of the selected token.
    pub selected: usize,
    /// Whether ids, logprobs and candidates were captured at all.
    pub has_ids: bool,
    /// Whether any token has candidates.
    pub has_top: bool,
    /// Why detail is missing (load failure), when it is.
    pub detail_note: Option<String>,
    /// Where the token text comes from, or why ids show instead.
    pub text_note: String,
}

impl RequestView {
    /// Build the view of request `r` from the analysis and its detail.
    pub fn new(
        a: &Analysis,
        r: RequestIx,
        detail: Option<&TokenDetail>,
        detok: &Detokenizer,
    ) -> RequestView {
        let req = &a.data.requests[r as usize];
        let timings = a.timings(r);
        let slow: std::collections::HashSet<usize> =
            a.slow_tokens(r).iter().map(|t| t.position).collect();
        let empty = TokenDetail::default();
        let d = detail.unwrap_or(&empty);
        let texts = detok.texts(&d.ids, &d.texts);
        let tokens = timings
            .into_iter()
            .map(|timing| {
                let i = timing.position;
                TokenLine {
                    id: d.ids.get(i).copied().flatten(),
                    text: texts.get(i).cloned().unwrap_or(TokenText::Unknown),
                    logprob: d.logprobs.get(i).copied().flatten(),
                    rank: d.ranks.get(i).copied().flatten(),
                    top: d
                        .top(i)
                        .map(|(id, logprob)| Candidate {
                            id,
                            text: detok.one(id),
                            logprob,
                        })
                        .collect(),
                    emit_delay_ns: req.emit(i).map(|e| e.saturating_sub(timing.exit_ns)),
                    slow: slow.contains(&i),
                    timing,
                }
            })
            .collect::<Vec<_>>();
        let has_ids = tokens.iter().any(|t| t.id.is_some());
        let has_top = tokens.iter().any(|t| !t.top.is_empty());
        RequestView {
            request: r,
            tokens,
            selected: 0,
            has_ids,
            has_top,
            detail_note: None,
            text_note: detok.note.clone(),
        }
    }

    /// The selected token.
    pub fn current(&self) -> Option<&TokenLine> {
        self.tokens.get(self.selected)
    }

    /// Move the selection by `delta`, staying in the list.
    pub fn move_by(&mut self, delta: isize) {
        let last = self.tokens.len().saturating_sub(1);
        self.selected = self.selected.saturating_add_signed(delta).min(last);
    }

    /// Select the next (or previous) slow token; false when there is none.
    pub fn jump_slow(&mut self, forward: bool) -> bool {
        let found = if forward {
            (self.selected + 1..self.tokens.len()).find(|&i| self.tokens[i].slow)
        } else {
            (0..self.selected).rev().find(|&i| self.tokens[i].slow)
        };
        if let Some(i) = found {
            self.selected = i;
        }
        found.is_some()
    }

    /// Select the token with the largest excess over the step model (the
    /// first token, whose wait is the TTFT, aside); false when none is late.
    pub fn jump_slowest(&mut self) -> bool {
        let worst = self
            .tokens
            .iter()
            .enumerate()
            .skip(1)
            .filter(|(_, t)| t.timing.excess_ns > 0.0)
            .max_by(|a, b| a.1.timing.excess_ns.total_cmp(&b.1.timing.excess_ns));
        if let Some((i, _)) = worst {
            self.selected = i;
        }
        worst.is_some()
    }

    /// Select the token computed in step `step`, or the nearest after it.
    pub fn select_step(&mut self, step: StepIx) {
        if let Some(i) = self.tokens.iter().position(|t| t.timing.step >= step) {
            self.selected = i;
        }
    }

    /// The largest bar (scheduling + running + emit) among the tokens after
    /// the first: the first token's wait is the TTFT and would flatten the rest.
    pub fn bar_scale_ns(&self) -> u64 {
        let rest = self.tokens.iter().skip(1).map(TokenLine::total_ns).max();
        rest.or_else(|| self.tokens.first().map(TokenLine::total_ns))
            .unwrap_or(0)
            .max(1)
    }
}

/// The culprits of a token, largest share first, with the prompt tokens each
/// computed between the token's previous step and its own.
pub fn culprits(a: &Analysis, r: RequestIx, t: &TokenTiming) -> Vec<Culprit> {
    let req = &a.data.requests[r as usize];
    let from = t
        .position
        .checked_sub(1)
        .and_then(|p| req.token_step.get(p).copied())
        .unwrap_or(t.step);
    let mut out: Vec<Culprit> = Vec::new();
    for s in &t.shares {
        if let Some(c) = out
            .iter_mut()
            .find(|c| c.request == s.culprit && c.cause == s.cause)
        {
            c.ns += s.ns;
            continue;
        }
        let prefill_tokens = (from..=t.step)
            .flat_map(|step| a.data.slices_of(step))
            .filter(|sl| sl.request == s.culprit)
            .map(|sl| u64::from(sl.prefill_tokens))
            .sum();
        out.push(Culprit {
            request: s.culprit,
            id: a
                .data
                .requests
                .get(s.culprit as usize)
                .map(|q| q.display_id().to_string())
                .unwrap_or_default(),
            ns: s.ns,
            share: 0.0,
            cause: s.cause,
            prefill_tokens,
        });
    }
    for c in &mut out {
        c.share = if t.excess_ns > 0.0 {
            c.ns / t.excess_ns
        } else {
            0.0
        };
    }
    out.sort_by(|x, y| y.ns.total_cmp(&x.ns));
    out
}

/// How a culprit delayed the token, in a few words.
pub fn cause_name(c: Cause) -> &'static str {
    match c {
        Cause::CoScheduledPrefill => "same step",
        Cause::Queued => "while queued",
        Cause::Preemption => "preempted",
    }
}

/// The analyzer's verdict on a token in one line, e.g.
/// "waited 1.7 s: long-prompt prefill 3 858 tokens, 100 %".
pub fn verdict(t: &TokenTiming, culprits: &[Culprit]) -> String {
    if t.position == 0 {
        return format!(
            "first token: {} after arrival (TTFT), {} of it before its first step",
            fmt::dur(t.gap_ns as f64),
            fmt::dur(t.scheduling_ns as f64)
        );
    }
    let waited = fmt::dur(t.gap_ns as f64);
    match culprits.first() {
        // Many small shares: no single culprit to name, but their sum is the story.
        Some(c) if culprits.len() > 2 && c.share < 0.5 => {
            let tokens: u64 = culprits.iter().map(|c| c.prefill_tokens).sum();
            let share: f64 = culprits.iter().map(|c| c.share).sum();
            format!(
                "waited {waited}: prefill of {} requests, {} tokens, {:.0}\u{a0}% (largest {}, {:.0}\u{a0}%)",
                culprits.len(),
                fmt::count(tokens),
                share * 100.0,
                c.id,
                c.share * 100.0
            )
        }
        Some(c) => {
            let more = if culprits.len() > 1 {
                format!(" (+{} more)", culprits.len() - 1)
            } else {
                String::new()
            };
            format!(
                "waited {waited}: {} prefill {} tokens, {:.0}\u{a0}%{more}",
                c.id,
                fmt::count(c.prefill_tokens),
                c.share * 100.0
            )
        }
        None if t.excess_ns > 0.0 => format!(
            "waited {waited}, {} over the model; no other request's prefill explains it (engine pause, warm-up or noise)",
            fmt::dur(t.excess_ns)
        ),
        None => format!(
            "on time: {waited} (the model expects {})",
            fmt::dur(t.expected_ns)
        ),
    }
}
