//! The trace's own step-time model: what an iteration of a given composition
//! normally costs on this engine, model and hardware.
//!
//! duration ≈ base + per_decode · decode_tokens + per_prefill · prefill_tokens
//!            + per_context · context_tokens
//!
//! fitted per engine process by iteratively reweighted least squares with
//! Huber weights (scale from the median absolute deviation), so the slow steps
//! the analysis is looking for — a stall, a warm-up, a hiccup — do not bend the
//! line they are measured against. Coefficients are kept non-negative: a
//! token never makes a step cheaper.

use crate::data::StepRow;

/// Fitted coefficients, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct StepModel {
    /// Fixed cost of an iteration.
    pub base_ns: f64,
    /// Per decode token.
    pub per_decode_token_ns: f64,
    /// Per prefill (prompt) token computed.
    pub per_prefill_token_ns: f64,
    /// Per token of KV context the batch reads.
    pub per_context_token_ns: f64,
    /// Steps the fit used.
    pub steps: usize,
    /// Robust spread of the residuals (1.4826 · MAD).
    pub residual_scale_ns: f64,
}

const FEATURES: usize = 4;
const HUBER_K: f64 = 1.345;
const ITERATIONS: usize = 12;

fn features(s: &StepRow) -> [f64; FEATURES] {
    [
        1.0,
        f64::from(s.decode_tokens),
        f64::from(s.prefill_tokens),
        s.context_tokens as f64,
    ]
}

impl StepModel {
    /// Predicted duration of a step with this composition.
    pub fn predict(&self, decode_tokens: f64, prefill_tokens: f64, context_tokens: f64) -> f64 {
        self.base_ns
            + self.per_decode_token_ns * decode_tokens
            + self.per_prefill_token_ns * prefill_tokens
            + self.per_context_token_ns * context_tokens
    }

    /// Predicted duration of a recorded step.
    pub fn predict_step(&self, s: &StepRow) -> f64 {
        self.predict(
            f64::from(s.decode_tokens),
            f64::from(s.prefill_tokens),
            s.context_tokens as f64,
        )
    }

    /// Fit on steps; `None` when there are too few to say anything.
    pub fn fit<'a>(steps: impl IntoIterator<Item = &'a StepRow>) -> Option<StepModel> {
        let rows: Vec<([f64; FEATURES], f64)> = steps
            .into_iter()
            .map(|s| (features(s), s.duration_ns() as f64))
            .collect();
        if rows.len() < 3 {
            return None;
        }
        // Columns scaled to [0, 1] keep the normal equations well conditioned
        // (context counts run to millions, the intercept is 1).
        let mut scale = [1.0f64; FEATURES];
        for (x, _) in &rows {
            for j in 1..FEATURES {
                scale[j] = scale[j].max(x[j]);
            }
        }
        let rows: Vec<([f64; FEATURES], f64)> = rows
            .into_iter()
            .map(|(mut x, y)| {
                for j in 0..FEATURES {
                    x[j] /= scale[j];
                }
                (x, y)
            })
            .collect();
        // Columns that never vary carry no information: leave them out.
        let mut active = [true; FEATURES];
        for (j, a) in active.iter_mut().enumerate().skip(1) {
            *a = rows.iter().any(|(x, _)| x[j] != rows[0].0[j]);
        }
        let mut weights = vec![1.0f64; rows.len()];
        let mut beta = [0.0f64; FEATURES];
        let mut residual_scale = 0.0;
        for _ in 0..ITERATIONS {
            beta = fit_nonnegative(&rows, &weights, &mut active.clone());
            let mut residuals: Vec<f64> = rows.iter().map(|(x, y)| y - dot(&beta, x)).collect();
            residual_scale = 1.4826 * median_abs(&mut residuals);
            if residual_scale <= 0.0 {
                break;
            }
            for ((x, y), w) in rows.iter().zip(weights.iter_mut()) {
                let r = (y - dot(&beta, x)).abs();
                let cut = HUBER_K * residual_scale;
                *w = if r <= cut { 1.0 } else { cut / r };
            }
        }
        Some(StepModel {
            base_ns: beta[0] / scale[0],
            per_decode_token_ns: beta[1] / scale[1],
            per_prefill_token_ns: beta[2] / scale[2],
            per_context_token_ns: beta[3] / scale[3],
            steps: rows.len(),
            residual_scale_ns: residual_scale,
        })
    }
}

fn dot(a: &[f64; FEATURES], b: &[f64; FEATURES]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn median_abs(values: &mut [f64]) -> f64 {
    for v in values.iter_mut() {
        *v = v.abs();
    }
    let mid = values.len() / 2;
    let (_, m, _) = values.select_nth_unstable_by(mid, |a, b| a.total_cmp(b));
    *m
}

/// Weighted least squares with every coefficient ≥ 0: solve, drop the most
/// negative coefficient's column, solve again.
fn fit_nonnegative(
    rows: &[([f64; FEATURES], f64)],
    weights: &[f64],
    active: &mut [bool; FEATURES],
) -> [f64; FEATURES] {
    loop {
        let beta = weighted_least_squares(rows, weights, active);
        let worst = (0..FEATURES)
            .filter(|&j| active[j] && beta[j] < 0.0)
            .min_by(|&a, &b| beta[a].total_cmp(&beta[b]));
        match worst {
            Some(j) => active[j] = false,
            None => return beta,
        }
    }
}

fn weighted_least_squares(
    rows: &[([f64; FEATURES], f64)],
    weights: &[f64],
    active: &[bool; FEATURES],
) -> [f64; FEATURES] {
    let idx: Vec<usize> = (0..FEATURES).filter(|&j| active[j]).collect();
    let n = idx.len();
    let mut a = vec![vec![0.0f64; n + 1]; n];
    for ((x, y), w) in rows.iter().zip(weights) {
        for (r, &i) in idx.iter().enumerate() {
            for (c, &j) in idx.iter().enumerate() {
                a[r][c] += w * x[i] * x[j];
            }
            a[r][n] += w * x[i] * y;
        }
    }
    // A whisper of ridge keeps a degenerate system (all steps alike) solvable.
    for (r, row) in a.iter_mut().enumerate() {
        row[r] += 1e-9 * (1.0 + row[r]);
    }
    let solution = solve(a);
    let mut beta = [0.0; FEATURES];
    for (k, &j) in idx.iter().enumerate() {
        beta[j] = solution.get(k).copied().unwrap_or(0.0);
    }
    beta
}

/// Gaussian elimination with partial pivoting on an augmented n × (n+1) matrix.
fn solve(mut a: Vec<Vec<f64>>) -> Vec<f64> {
    let n = a.len();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&x, &y| a[x][col].abs().total_cmp(&a[y][col].abs()))
            .unwrap_or(col);
        a.swap(col, pivot);
        let p = a[col][col];
        if p.abs() < 1e-300 {
            continue;
        }
        for row in col + 1..n {
            let (upper, lower) = a.split_at_mut(row);
            let pivot_row = &upper[col];
            let target = &mut lower[0];
            let f = target[col] / p;
            for (t, v) in target[col..].iter_mut().zip(&pivot_row[col..]) {
                *t -= f * v;
            }
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let mut v = a[row][n];
        for k in row + 1..n {
            v -= a[row][k] * x[k];
        }
        x[row] = if a[row][row].abs() < 1e-300 {
            0.0
        } else {
            v / a[row][row]
        };
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(decode: u32, prefill: u32, context: u64, ms: f64) -> StepRow {
        StepRow {
            decode_tokens: decode,
            prefill_tokens: prefill,
            context_tokens: context,
            start_ns: 0,
            end_ns: (ms * 1e6) as u64,
            ..Default::default()
        }
    }

    #[test]
    fn recovers_a_linear_law_despite_outliers() {
        let mut steps = Vec::new();
        for i in 0..400u32 {
            let d = 1 + i % 32;
            let p = if i % 5 == 0 { 100 + (i % 7) * 200 } else { 0 };
            let c = u64::from(d) * 300 + u64::from(i % 11) * 50;
            let ms = 3.0 + 0.05 * f64::from(d) + 0.01 * f64::from(p) + 0.0001 * c as f64;
            steps.push(step(d, p, c, ms));
        }
        // Stalls far off the line.
        for i in 0..20 {
            steps[i * 17].end_ns += 2_000_000_000;
        }
        let m = StepModel::fit(&steps).unwrap();
        assert!((m.base_ns - 3e6).abs() < 0.05e6, "{m:?}");
        assert!((m.per_decode_token_ns - 0.05e6).abs() < 0.005e6, "{m:?}");
        assert!((m.per_prefill_token_ns - 0.01e6).abs() < 0.001e6, "{m:?}");
    }

    #[test]
    fn never_negative_and_degenerate_input_is_fine() {
        let steps: Vec<StepRow> = (0..10).map(|_| step(4, 0, 100, 5.0)).collect();
        let m = StepModel::fit(&steps).unwrap();
        assert!(m.per_prefill_token_ns >= 0.0 && m.per_decode_token_ns >= 0.0);
        assert!((m.predict_step(&steps[0]) - 5e6).abs() < 1e3, "{m:?}");
        assert_eq!(StepModel::fit(&steps[..2]), None);
    }
}
