//! Where the viewer's data comes from: the whole trace without per-token
//! detail (enough for every list, metric and verdict), and the detail (ids,
//! logprobs, top-K, text) of one request at a time, fetched when it is opened.
//!
//! [`DetailLoader`] is the seam for the on-disk index to come: today
//! [`ScanLoader`] re-reads the trace keeping only the one request, which is
//! fine for the fixture-sized traces but not for the ≤ 1 s goal on a
//! multi-GB trace.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use toktrace_analyzer::data::{RequestIx, TokenDetail, TraceData};
use toktrace_analyzer::{Analysis, AnalyzeOptions, Detail, LoadOptions};

/// No request (or more than one) answers to the ID given: the command exits
/// with code 3, like the other commands that take `--request`.
#[derive(Debug)]
pub struct UnknownRequest(pub String);

impl std::fmt::Display for UnknownRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UnknownRequest {}

/// Load and analyse the whole trace, without per-token detail.
pub fn load_trace(dir: &Path) -> Result<Analysis> {
    let data = toktrace_analyzer::load(dir, &LoadOptions::default())
        .with_context(|| format!("reading the trace {}", dir.display()))?;
    Ok(Analysis::new(data, &AnalyzeOptions::default()))
}

/// Fetches the per-token detail of one request on demand.
pub trait DetailLoader {
    /// The detail of request `r` of `data` (None: the trace holds none).
    fn load(&self, data: &TraceData, r: RequestIx) -> Result<Option<TokenDetail>>;
}

/// Reads the trace again, keeping the detail of the one request.
pub struct ScanLoader {
    /// The trace.
    pub dir: PathBuf,
}

impl DetailLoader for ScanLoader {
    fn load(&self, data: &TraceData, r: RequestIx) -> Result<Option<TokenDetail>> {
        let Some(req) = data.requests.get(r as usize) else {
            return Ok(None);
        };
        // Requests are matched by (process, key), which stay put even when a
        // trace still being written grew between the two reads.
        let key = (req.process, req.key);
        let options = LoadOptions {
            detail: Detail::Only([key].into_iter().collect()),
            ..Default::default()
        };
        let detailed = toktrace_analyzer::load(&self.dir, &options)
            .with_context(|| format!("reading the tokens of {}", req.display_id()))?;
        Ok(detailed
            .requests
            .into_iter()
            .find(|q| (q.process, q.key) == key)
            .and_then(|q| q.detail))
    }
}

/// A loader for traces loaded with their detail already (tests, small
/// traces): there is nothing more to fetch.
pub struct NoLoader;

impl DetailLoader for NoLoader {
    fn load(&self, _: &TraceData, _: RequestIx) -> Result<Option<TokenDetail>> {
        Ok(None)
    }
}

/// The one request that answers to `id` (client id, internal id, trace id or
/// a unique prefix), or an [`UnknownRequest`] saying why not.
pub fn resolve(data: &TraceData, id: &str) -> Result<RequestIx, UnknownRequest> {
    let found = toktrace_analyzer::analysis::find_request(data, id);
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(UnknownRequest(format!(
            "no request with id or trace id {id:?} in this trace ({} requests; `toktrace requests DIR` lists them)",
            data.requests.len()
        ))),
        many => {
            let names: Vec<String> = many
                .iter()
                .take(5)
                .filter_map(|&r| data.requests.get(r as usize))
                .map(|q| format!("{} (internal {})", q.display_id(), q.internal_id))
                .collect();
            Err(UnknownRequest(format!(
                "{} requests answer to {id:?}: {}; give the internal id",
                many.len(),
                names.join(", ")
            )))
        }
    }
}
