//! What a step's columns mean, in plain Rust: the engine semantics applied
//! between reading an adapter's columns out of Python (`probe.rs` through
//! `convert.rs`) and handing probe-core a `Step`. Which tokens of a batch
//! entry are prefill and which decode; each request's output index carried
//! on from step to step; the token runs; which rows of the engine's logprob
//! arrays belong to which tokens, and the candidates kept of them. Nothing
//! here touches Python, so it is tested on its own.

use probe_core::event::{SampledTokens, TokenRun};

/// Per-step working columns, reused from step to step so recording does not
/// allocate. `probe.rs` fills them from the adapter's Python objects.
#[derive(Default)]
pub struct Scratch {
    /// Request keys: the batch's, then the runs' when they name their own.
    pub keys: Vec<u32>,
    /// Each key's slot in the interner's per-request state.
    pub slots: Vec<u32>,
    /// Tokens scheduled per batch entry (adapters that hand over what was
    /// scheduled and computed rather than prefill and decode).
    pub scheduled: Vec<u32>,
    /// Tokens computed before the step, per batch entry (same adapters).
    pub computed: Vec<u32>,
    /// Prompt (or recomputed) tokens computed per batch entry.
    pub prefill: Vec<u32>,
    /// Tokens decoded per batch entry.
    pub decode: Vec<u32>,
    /// Prompt tokens served from the prefix cache per batch entry.
    pub cached: Vec<u32>,
    /// First output index of each run.
    pub firsts: Vec<u32>,
    /// Tokens in each run.
    pub counts: Vec<u32>,
    /// Whether each run has logprob data (0 or 1).
    pub has_lp: Vec<u32>,
    /// The logprob row each run starts at, when the adapter names them.
    pub rows: Vec<u32>,
    /// The logprob row of each token kept, in token order.
    pub picked: Vec<u32>,
    /// The sampled tokens' logprobs as the engine's column holds them.
    pub raw_lp: Vec<f32>,
    /// The sampled tokens' ranks as the engine's column holds them.
    pub raw_ranks: Vec<u32>,
    /// Slots of preempted and finished requests (unused, but looking their
    /// keys up gives them).
    pub other_slots: Vec<u32>,
    /// Tokens in this step's runs.
    pub tokens: usize,
    /// Tokens in this step's runs with logprob data.
    pub flagged_tokens: usize,
}

impl Scratch {
    /// Forget the last step's columns, keeping the allocations.
    pub fn clear(&mut self) {
        for v in [
            &mut self.keys,
            &mut self.slots,
            &mut self.scheduled,
            &mut self.computed,
            &mut self.prefill,
            &mut self.decode,
            &mut self.cached,
            &mut self.firsts,
            &mut self.counts,
            &mut self.has_lp,
            &mut self.other_slots,
        ] {
            v.clear();
        }
    }
}

/// Prefill and decode tokens per batch entry from what was scheduled and the
/// tokens computed before the step (`scheduled`, `computed`, `slots` of the
/// batch): positions before the prompt's end plus the outputs recorded so far
/// (less the last one, whose token is fed back) are prefill work — the
/// prompt, or outputs recomputed after a preemption; from there on it is
/// decode. `prompts` and `outputs` are per slot; a request whose arrival this
/// probe did not see has no prompt length, so only its outputs tell.
pub fn split_work(sc: &mut Scratch, prompts: &[Option<u32>], outputs: &[u32]) {
    sc.prefill.clear();
    sc.decode.clear();
    let entries = sc.scheduled.iter().zip(&sc.computed).zip(&sc.slots);
    for ((&n, &computed), &slot) in entries {
        let slot = slot as usize;
        let prompt = prompts.get(slot).copied().flatten().unwrap_or(0);
        let output = outputs.get(slot).copied().unwrap_or(0);
        let decoding =
            output > 0 && u64::from(computed) + 1 >= u64::from(prompt) + u64::from(output);
        let (p, d) = if decoding { (0, n) } else { (n, 0) };
        sc.prefill.push(p);
        sc.decode.push(d);
    }
}

/// First output index of each run: as given (`firsts` filled), or continued
/// from what this probe recorded (`outputs`, by slot); either way each
/// request's count moves on past its run.
pub fn carry_outputs(sc: &mut Scratch, firsts_given: bool, outputs: &mut [u32]) {
    if !firsts_given {
        sc.firsts.extend(
            sc.slots
                .iter()
                .map(|&slot| outputs.get(slot as usize).copied().unwrap_or(0)),
        );
    }
    for ((&slot, &first), &count) in sc.slots.iter().zip(&sc.firsts).zip(&sc.counts) {
        if let Some(o) = outputs.get_mut(slot as usize) {
            *o = first.saturating_add(count);
        }
    }
}

/// Append the step's token runs (those of 0 tokens left out) to `runs`, each
/// with logprob data keeping `keep_k` candidates when its flag is set; sets
/// `sc.tokens` and `sc.flagged_tokens`.
pub fn write_runs(runs: &mut Vec<TokenRun>, sc: &mut Scratch, keep_k: Option<u8>) {
    // Written into reserved space with the length set once at the end: a
    // `push` per run keeps the length in memory, and each run then waits for
    // the previous one's store — that cost more than everything else here.
    let nr = sc.keys.len();
    runs.reserve(nr);
    let start = runs.len();
    let spare = &mut runs.spare_capacity_mut()[..nr];
    let (mut n, mut flagged, mut written) = (0usize, 0usize, 0usize);
    let columns = sc
        .keys
        .iter()
        .zip(&sc.firsts)
        .zip(&sc.counts)
        .zip(&sc.has_lp);
    for (((&req, &first), &count), &has) in columns {
        let has = has != 0;
        n += count as usize;
        flagged += if has { count as usize } else { 0 };
        spare[written].write(TokenRun {
            req,
            first_index: first,
            count,
            top_k: keep_k.filter(|_| has),
        });
        written += usize::from(count > 0);
    }
    // SAFETY: the first `written` slots after `start` were written above
    // (`written` counts at most one slot per run, and there are at most
    // `nr` runs).
    unsafe { runs.set_len(start + written) };
    sc.tokens = n;
    sc.flagged_tokens = flagged;
}

/// Candidates kept per token for a step handing over `top_k` (negative: no
/// logprob data): at most `cap`, and at most what a run records (255).
pub fn kept_k(top_k: i64, cap: u32) -> Option<usize> {
    let k = usize::try_from(top_k).ok()?;
    Some(k.min(cap as usize).min(u8::MAX as usize))
}

/// The logprob row of each token of the runs with logprob data, in token
/// order, into `sc.picked`: from the row each run names (`sc.rows`), or in
/// run order through columns that hold a row for every token
/// (`every_token`) or only for the flagged runs' tokens.
pub fn pick_rows(sc: &mut Scratch, every_token: bool) {
    let flagged: usize = sc
        .counts
        .iter()
        .zip(&sc.has_lp)
        .filter(|(_, &has)| has != 0)
        .map(|(&count, _)| count as usize)
        .sum();
    let mut cursor = 0usize;
    // Into reserved space with the length in a local (see `write_runs`).
    let picked = &mut sc.picked;
    picked.clear();
    picked.reserve(flagged);
    let spare = &mut picked.spare_capacity_mut()[..flagged];
    let mut len = 0usize;
    for (run, (&count, &has)) in sc.counts.iter().zip(&sc.has_lp).enumerate() {
        let start = match sc.rows.get(run) {
            Some(&r) => r,
            None => {
                let s = cursor as u32;
                if every_token || has != 0 {
                    cursor += count as usize;
                }
                s
            }
        };
        if has != 0 {
            for (slot, j) in spare[len..len + count as usize].iter_mut().zip(0..) {
                slot.write(start.saturating_add(j));
            }
            len += count as usize;
        }
    }
    // SAFETY: the flagged runs' counts add up to `flagged`, and every one of
    // the first `len` (= `flagged`) slots was written.
    unsafe { picked.set_len(len) };
}

/// Compact logprob columns in place: drop the rows the columns hold for runs
/// without logprobs, and cut each token's candidates from `k` to `keep`.
/// `counts` and `has_lp` are per run as given (runs of 0 tokens included:
/// they own no rows); `has_row(run)` says whether the columns hold rows for
/// that run's tokens.
pub fn select_rows(
    t: &mut SampledTokens,
    counts: &[u32],
    has_lp: &[u32],
    has_row: impl Fn(usize) -> bool,
    k: usize,
    keep: usize,
) {
    let (mut src, mut dst) = (0usize, 0usize);
    for (run, &count) in counts.iter().enumerate() {
        if !has_row(run) {
            continue;
        }
        for _ in 0..count {
            if has_lp[run] != 0 {
                t.logprobs.0[dst] = t.logprobs.0[src];
                t.ranks.0[dst] = t.ranks.0[src];
                for c in 0..keep {
                    t.top_ids.0[dst * keep + c] = t.top_ids.0[src * k + c];
                    t.top_logprobs.0[dst * keep + c] = t.top_logprobs.0[src * k + c];
                }
                dst += 1;
            }
            src += 1;
        }
    }
    t.logprobs.0.truncate(dst);
    t.ranks.0.truncate(dst);
    t.top_ids.0.truncate(dst * keep);
    t.top_logprobs.0.truncate(dst * keep);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(keys: &[u32], slots: &[u32]) -> Scratch {
        Scratch {
            keys: keys.to_vec(),
            slots: slots.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn scheduled_tokens_are_prefill_until_the_prompt_and_outputs_are_computed() {
        // Slot 0: a 10-token prompt, nothing out yet, 4 scheduled: prefill.
        // Slot 1: prompt 10 with 3 outputs, 12 computed: the fed-back token decodes.
        // Slot 2: preempted after 3 outputs, recomputing from 0: prefill.
        // Slot 3: an arrival this probe never saw, with 5 outputs: decode.
        let mut sc = scratch(&[7, 8, 9, 10], &[0, 1, 2, 3]);
        sc.scheduled = vec![4, 1, 13, 1];
        sc.computed = vec![0, 12, 0, 40];
        split_work(
            &mut sc,
            &[Some(10), Some(10), Some(10), None],
            &[0, 3, 3, 5],
        );
        assert_eq!(sc.prefill, [4, 0, 13, 0]);
        assert_eq!(sc.decode, [0, 1, 0, 1]);
    }

    #[test]
    fn output_indices_carry_on_from_what_was_recorded() {
        let mut sc = scratch(&[1, 2], &[0, 1]);
        sc.counts = vec![1, 3];
        let mut outputs = vec![5, 0];
        carry_outputs(&mut sc, false, &mut outputs);
        assert_eq!(sc.firsts, [5, 0]);
        assert_eq!(outputs, [6, 3]);
        // Given first indices win, and move the counts on from there.
        sc.firsts = vec![10, 0];
        carry_outputs(&mut sc, true, &mut outputs);
        assert_eq!(outputs, [11, 3]);
    }

    #[test]
    fn runs_of_no_tokens_are_left_out_and_flags_pick_the_logprob_runs() {
        let mut sc = scratch(&[1, 2, 3], &[0, 1, 2]);
        sc.firsts = vec![0, 4, 9];
        sc.counts = vec![2, 0, 3];
        sc.has_lp = vec![1, 1, 0];
        let mut runs = Vec::new();
        write_runs(&mut runs, &mut sc, Some(5));
        assert_eq!(
            runs,
            [
                TokenRun {
                    req: 1,
                    first_index: 0,
                    count: 2,
                    top_k: Some(5)
                },
                TokenRun {
                    req: 3,
                    first_index: 9,
                    count: 3,
                    top_k: None
                },
            ]
        );
        assert_eq!((sc.tokens, sc.flagged_tokens), (5, 2));
    }

    #[test]
    fn kept_candidates_are_capped() {
        assert_eq!(kept_k(-1, 20), None);
        assert_eq!(kept_k(5, 20), Some(5));
        assert_eq!(kept_k(50, 20), Some(20));
        assert_eq!(kept_k(1000, 1000), Some(255));
    }

    #[test]
    fn logprob_rows_follow_the_runs_or_the_rows_they_name() {
        // Columns with a row for every token: the unflagged run's rows are skipped.
        let mut sc = scratch(&[], &[]);
        sc.counts = vec![2, 1, 2];
        sc.has_lp = vec![1, 0, 1];
        pick_rows(&mut sc, true);
        assert_eq!(sc.picked, [0, 1, 3, 4]);
        // Columns with rows for the flagged runs only.
        pick_rows(&mut sc, false);
        assert_eq!(sc.picked, [0, 1, 2, 3]);
        // Rows named per run (vLLM's logprob tensors).
        sc.rows = vec![7, 0, 2];
        pick_rows(&mut sc, false);
        assert_eq!(sc.picked, [7, 8, 2, 3]);
    }

    #[test]
    fn selected_rows_drop_unflagged_runs_and_cut_candidates() {
        let mut t = SampledTokens::default();
        // Three tokens (runs of 1, 2), k = 3, keep 2; the first run has no logprobs.
        t.logprobs.0 = vec![-1.0, -2.0, -3.0];
        t.ranks.0 = vec![1, 2, 3];
        t.top_ids.0 = vec![10, 11, 12, 20, 21, 22, 30, 31, 32];
        t.top_logprobs.0 = vec![0.0; 9];
        select_rows(&mut t, &[1, 2], &[0, 1], |_| true, 3, 2);
        assert_eq!(t.logprobs.0, [-2.0, -3.0]);
        assert_eq!(t.ranks.0, [2, 3]);
        assert_eq!(t.top_ids.0, [20, 21, 30, 31]);
        assert_eq!(t.top_logprobs.0.len(), 4);
    }
}
