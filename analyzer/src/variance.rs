//! `batch_variance`: requests given the same prompt with greedy sampling
//! should answer alike, token for token and logprob for logprob. When they
//! do not, what differed between them is how they were batched (kernels that
//! reduce in another order at another batch size, another chunking of the
//! prefill), and the place to look is where they first parted.
//!
//! Loading keeps, per request, a digest of its sampled ids and logprobs
//! ([`crate::data::TokenChecks::output_digest`]): [`suspects`] groups the
//! same-prompt greedy requests and keeps the groups whose digests differ.
//! [`locate`] then compares each member's tokens with the group's first
//! request (its reference) and says where they diverged: the token, the step
//! each was in, the steps' batch sizes and who was co-scheduled. The tokens
//! come from the load when it kept them (exports), else from a second,
//! narrow read of the trace ([`locate_in_dir`]).

use crate::data::{RequestIx, StepIx, TokenDetail, TraceData};
use crate::{Analysis, Detail, LoadOptions};
use std::collections::HashMap;
use std::path::Path;

/// Logprobs of the same token that differ by more than this (in nats)
/// count as a divergence. Batch-variant kernels move logprobs by 1e-6 to
/// 1e-2; float32 round-off in the sampler's own log-softmax stays below it.
pub const LOGPROB_TOLERANCE: f32 = 1e-4;

/// At most this many suspect requests get their tokens read back.
pub const MAX_LOCATED: usize = 1_000;

/// Co-scheduled requests named per step (the count says how many in all).
const NAMED: usize = 6;

/// How a request's answer first parted from its reference's.
#[derive(Debug, Clone, PartialEq)]
pub enum Parting {
    /// Another token was chosen.
    Token {
        /// This request's.
        ours: u32,
        /// The reference's.
        theirs: u32,
    },
    /// Same token, another logprob.
    Logprob {
        /// The token both chose.
        token: u32,
        /// This request's logprob.
        ours: f32,
        /// The reference's.
        theirs: f32,
    },
}

/// Where one request of a same-prompt greedy group diverged from the
/// group's first request.
#[derive(Debug, Clone, PartialEq)]
pub struct Divergence {
    /// The request.
    pub request: RequestIx,
    /// The group's first request, which it is compared with.
    pub reference: RequestIx,
    /// Output position of the first token that differs.
    pub index: u32,
    /// What differed there.
    pub parting: Parting,
    /// The step that sampled this request's token there.
    pub step: Option<StepIx>,
    /// The step that sampled the reference's.
    pub reference_step: Option<StepIx>,
}

/// Whether a request's sampling is greedy (temperature 0, or top-k 1): the
/// only sampling whose answer should not depend on anything but the prompt.
fn greedy(params: &probe_core::event::SamplingParams) -> bool {
    params.temperature == Some(0.0) || params.top_k == Some(1)
}

/// What makes requests comparable: the model, the prompt, the token limit.
type GroupKey<'a> = (Option<&'a str>, u64, Option<u32>);

/// Same-prompt greedy groups (same engine process's model, prompt hash and
/// token limit) whose recorded answers differ, members in arrival order.
/// Requests with tokens missing (dropped records) are left out: their
/// digests differ for want of data, not by batching.
pub fn suspects(data: &TraceData) -> Vec<Vec<RequestIx>> {
    let mut groups: HashMap<GroupKey<'_>, Vec<RequestIx>> = HashMap::new();
    for (ix, r) in data.requests.iter().enumerate() {
        let Some(hash) = r.prompt_hash else { continue };
        if !greedy(&r.params) || r.checks.digested == 0 || r.finish_ns.is_none() {
            continue;
        }
        if r.reported_output_tokens
            .is_some_and(|n| n > r.token_step.len() as u32)
        {
            continue;
        }
        let model = data
            .processes
            .get(r.process as usize)
            .and_then(|p| p.info.as_ref())
            .and_then(|i| i.model_name.as_deref());
        groups
            .entry((model, hash, r.params.max_tokens))
            .or_default()
            .push(ix as RequestIx);
    }
    let mut out: Vec<Vec<RequestIx>> = groups
        .into_values()
        .filter(|g| {
            let first = &data.requests[g[0] as usize].checks;
            g.len() > 1
                && g.iter().any(|&r| {
                    let c = &data.requests[r as usize].checks;
                    (c.output_digest, c.digested) != (first.output_digest, first.digested)
                })
        })
        .map(|mut g| {
            g.sort_by_key(|&r| (data.requests[r as usize].arrival_ns(), r));
            g
        })
        .collect();
    out.sort_by_key(|g| g[0]);
    out
}

/// Where each member of `group` first parted from its first member, given
/// their tokens (`tokens(r)`); members that did not part (within
/// [`LOGPROB_TOLERANCE`]) are left out.
pub fn locate<'a>(
    data: &TraceData,
    group: &[RequestIx],
    tokens: impl Fn(RequestIx) -> Option<&'a TokenDetail>,
) -> Vec<Divergence> {
    let Some((&reference, rest)) = group.split_first() else {
        return Vec::new();
    };
    let Some(theirs) = tokens(reference) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for &r in rest {
        let Some(ours) = tokens(r) else { continue };
        let Some((i, parting)) = first_parting(ours, theirs) else {
            continue;
        };
        let step_at = |ix: RequestIx| data.requests[ix as usize].token_step.get(i).copied();
        out.push(Divergence {
            request: r,
            reference,
            index: data.requests[r as usize]
                .token_index
                .get(i)
                .copied()
                .unwrap_or(i as u32),
            parting,
            step: step_at(r),
            reference_step: step_at(reference),
        });
    }
    out
}

/// The first position where two answers differ.
fn first_parting(ours: &TokenDetail, theirs: &TokenDetail) -> Option<(usize, Parting)> {
    for (i, (a, b)) in ours.ids.iter().zip(&theirs.ids).enumerate() {
        let (Some(a), Some(b)) = (*a, *b) else {
            continue;
        };
        if a != b {
            return Some((i, Parting::Token { ours: a, theirs: b }));
        }
        let la = ours.logprobs.get(i).copied().flatten();
        let lb = theirs.logprobs.get(i).copied().flatten();
        if let (Some(la), Some(lb)) = (la, lb) {
            if (la - lb).abs() > LOGPROB_TOLERANCE {
                return Some((
                    i,
                    Parting::Logprob {
                        token: a,
                        ours: la,
                        theirs: lb,
                    },
                ));
            }
        }
    }
    None
}

/// Requests with a token sampled in step `s` or prefill work in it: its
/// batch as far as the trace kept it.
pub fn co_scheduled(data: &TraceData, s: StepIx) -> Vec<RequestIx> {
    let mut out: Vec<RequestIx> = data.slices_of(s).iter().map(|x| x.request).collect();
    for (ix, r) in data.requests.iter().enumerate() {
        if r.process == data.steps[s as usize].process && r.token_step.binary_search(&s).is_ok() {
            out.push(ix as RequestIx);
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The flag's text for one divergence.
pub fn describe(data: &TraceData, d: &Divergence) -> String {
    let reference = data.requests[d.reference as usize].display_id();
    let what = match &d.parting {
        Parting::Token { ours, theirs } => format!("token {ours} where {reference} has {theirs}"),
        Parting::Logprob {
            token,
            ours,
            theirs,
        } => format!(
            "the same token {token} with logprob {ours:.6} where {reference} has {theirs:.6}"
        ),
    };
    let batch = |s: Option<StepIx>, me: RequestIx| match s {
        None => "a step not recorded".to_string(),
        Some(s) => {
            let step = &data.steps[s as usize];
            let others: Vec<RequestIx> = co_scheduled(data, s)
                .into_iter()
                .filter(|&o| o != me)
                .collect();
            let named: Vec<&str> = others
                .iter()
                .take(NAMED)
                .map(|&o| data.requests[o as usize].display_id())
                .collect();
            let with = match others.len() {
                0 => "alone".to_string(),
                n if n <= NAMED => format!("with {}", named.join(", ")),
                n => format!("with {} and {} more", named.join(", "), n - NAMED),
            };
            format!("step {} (batch of {}, {with})", step.step_id, step.requests)
        }
    };
    format!(
        "same prompt and greedy sampling as {reference}, parted at token {}: {what}; this request in {}, {reference} in {}",
        d.index,
        batch(d.step, d.request),
        batch(d.reference_step, d.reference)
    )
}

/// Locate the suspects of `analysis` whose tokens it lacks by reading them
/// from `dir` (one read of the trace keeping only those requests' tokens),
/// and put the flags on their reports. A no-op when there are none.
pub fn locate_in_dir(analysis: &mut Analysis, dir: &Path) -> Result<(), probe_core::ReadError> {
    let groups = suspects(&analysis.data);
    let wanted: Vec<RequestIx> = groups
        .iter()
        .flatten()
        .copied()
        .filter(|&r| analysis.data.requests[r as usize].detail.is_none())
        .take(MAX_LOCATED)
        .collect();
    if wanted.is_empty() {
        // No suspects, or all with their tokens: the analysis flagged them.
        return Ok(());
    }
    let keys: std::collections::HashSet<(u32, u32)> = wanted
        .iter()
        .map(|&r| {
            let q = &analysis.data.requests[r as usize];
            (q.process, q.key)
        })
        .collect();
    let detailed = crate::load(
        dir,
        &LoadOptions {
            detail: Detail::Only(keys),
            ..Default::default()
        },
    )?;
    let by_key: HashMap<(u32, u32), TokenDetail> = detailed
        .requests
        .into_iter()
        .filter_map(|q| Some(((q.process, q.key), q.detail?)))
        .collect();
    let keyed: Vec<(u32, u32)> = analysis
        .data
        .requests
        .iter()
        .map(|q| (q.process, q.key))
        .collect();
    analysis.flag_variance(&groups, |r| by_key.get(&keyed[r as usize]));
    Ok(())
}
