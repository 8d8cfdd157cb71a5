//! Opening a trace to ask about it: the whole trace without per-token detail
//! (enough for every list, metric and verdict), and the detail (ids,
//! logprobs, top-K, text) of one request at a time, fetched when asked for.
//!
//! With an index next to the trace ([`crate::index`]), opening one request
//! reads only its window of time and the detail of any request comes from
//! its own window ([`IndexLoader`]); a large trace opened on a request gets
//! its index built the first time. Without one, the whole trace is read and
//! detail is fetched by reading it again ([`ScanLoader`]). The analysis
//! commands, the exports and the terminal viewer all open traces here.

use crate::data::{RequestIx, TokenDetail, TraceData};
use crate::index::{self, TraceIndex};
use crate::load::ProgressHook;
use crate::{Analysis, AnalyzeOptions, Detail, LoadOptions};
use probe_core::reader::ReadError;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// No request (or more than one) answers to the id given. The CLI exits with
/// code 3 for it, whichever command took the `--request`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UnknownRequest(pub String);

/// Why a trace (or a part of it) could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Reading failed; `what` says what was being read.
    #[error("{what}")]
    Read {
        /// "reading the trace DIR", "reading the tokens of ID", ….
        what: String,
        /// The reader's error.
        #[source]
        source: ReadError,
    },
    /// The id given names no request, or several.
    #[error(transparent)]
    UnknownRequest(#[from] UnknownRequest),
}

impl OpenError {
    /// Whether the request asked for was not found (the CLI's exit code 3).
    pub fn is_unknown_request(&self) -> bool {
        matches!(self, OpenError::UnknownRequest(_))
    }

    fn read(what: String) -> impl FnOnce(ReadError) -> OpenError {
        move |source| OpenError::Read { what, source }
    }
}

/// Load and analyse the whole trace, without per-token detail.
pub fn load_trace(dir: &Path, progress: Option<ProgressHook>) -> Result<Analysis, OpenError> {
    let options = LoadOptions {
        progress,
        ..Default::default()
    };
    let data = crate::load(dir, &options).map_err(OpenError::read(format!(
        "reading the trace {}",
        dir.display()
    )))?;
    let mut analysis = Analysis::new(data, &AnalyzeOptions::default());
    crate::variance::locate_in_dir(&mut analysis, dir).map_err(OpenError::read(format!(
        "reading the tokens of same-prompt requests in {}",
        dir.display()
    )))?;
    Ok(analysis)
}

/// Fetches the per-token detail of one request on demand.
pub trait DetailLoader {
    /// The detail of request `r` of `data` (None: the trace holds none).
    fn load(&self, data: &TraceData, r: RequestIx) -> Result<Option<TokenDetail>, OpenError>;
}

/// Reads the trace again, keeping the detail of the one request.
pub struct ScanLoader {
    /// The trace.
    pub dir: PathBuf,
}

impl DetailLoader for ScanLoader {
    fn load(&self, data: &TraceData, r: RequestIx) -> Result<Option<TokenDetail>, OpenError> {
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
        let detailed = crate::load(&self.dir, &options).map_err(OpenError::read(format!(
            "reading the tokens of {}",
            req.display_id()
        )))?;
        Ok(detailed
            .requests
            .into_iter()
            .find(|q| (q.process, q.key) == key)
            .and_then(|q| q.detail))
    }
}

/// Reads one request's detail from its own window of an indexed trace.
pub struct IndexLoader {
    /// The trace.
    pub dir: PathBuf,
    /// Its index.
    pub index: Arc<TraceIndex>,
}

impl DetailLoader for IndexLoader {
    fn load(&self, data: &TraceData, r: RequestIx) -> Result<Option<TokenDetail>, OpenError> {
        let Some(req) = data.requests.get(r as usize) else {
            return Ok(None);
        };
        self.index
            .detail(&self.dir, req.process, req.key, &req.token_index)
            .map_err(OpenError::read(format!(
                "reading the tokens of {}",
                req.display_id()
            )))
    }
}

/// A loader for traces loaded with their detail already (tests, small
/// traces): there is nothing more to fetch.
pub struct NoLoader;

impl DetailLoader for NoLoader {
    fn load(&self, _: &TraceData, _: RequestIx) -> Result<Option<TokenDetail>, OpenError> {
        Ok(None)
    }
}

/// What a trace was opened on.
pub struct Opened {
    /// The trace, or the window of it around the request asked for.
    pub analysis: Analysis,
    /// Where token detail comes from.
    pub loader: Box<dyn DetailLoader>,
    /// The request asked for.
    pub request: Option<RequestIx>,
    /// What to tell the user about how it was opened (a window, an index
    /// built or not saved).
    pub note: Option<String>,
    /// When only a window of the trace was read: what it is.
    pub window: Option<String>,
}

/// How to open a trace.
#[derive(Clone, Default)]
pub struct OpenOptions {
    /// Use the trace's index (and build one for a large trace opened on a
    /// request); false reads the whole trace.
    pub use_index: bool,
    /// Told of the bytes read so far, on long reads.
    pub progress: Option<ProgressHook>,
}

/// Open `dir`, on `request` when given, through the trace's index when it has
/// one (building it first for a large trace opened on a request).
pub fn open(dir: &Path, request: Option<&str>, options: &OpenOptions) -> Result<Opened, OpenError> {
    let saved = if options.use_index {
        index::open(dir)
    } else {
        None
    };
    let Some(index) = saved else {
        if options.use_index && request.is_some() && dir.is_dir() && large(dir) {
            return build_and_open(dir, request, options.progress.clone());
        }
        let loader = Box::new(ScanLoader {
            dir: dir.to_path_buf(),
        });
        let analysis = load_trace(dir, options.progress.clone())?;
        return whole(analysis, request, loader, None);
    };
    let index = Arc::new(index);
    let loader = Box::new(IndexLoader {
        dir: dir.to_path_buf(),
        index: Arc::clone(&index),
    });
    let Some(id) = request else {
        let analysis = load_trace(dir, options.progress.clone())?;
        return whole(analysis, None, loader, None);
    };
    let (window, r) = open_window(dir, &index, id)?;
    let seconds = window.range.1.saturating_sub(window.range.0) as f64 / 1e9;
    Ok(Opened {
        note: Some(format!(
            "window of {seconds:.1} s around {id}: {} of {} requests (from the index; `toktrace view DIR` for all)",
            window.analysis.data.requests.len(),
            index.requests.len()
        )),
        window: Some(format!(
            "the {seconds:.1} s window of {id} (of {} requests)",
            index.requests.len()
        )),
        analysis: window.analysis,
        loader,
        request: Some(r),
    })
}

/// Index a large trace the first time it is opened on a request; the full
/// analysis made on the way is what is shown.
fn build_and_open(
    dir: &Path,
    request: Option<&str>,
    progress: Option<ProgressHook>,
) -> Result<Opened, OpenError> {
    let (ix, analysis) = index::build(dir, progress).map_err(OpenError::read(format!(
        "reading the trace {}",
        dir.display()
    )))?;
    let note = match index::save(dir, &ix) {
        Ok(_) => format!(
            "indexed {} once, so that its requests open quickly from now on",
            dir.display()
        ),
        Err(e) => format!("index not saved: {e}"),
    };
    let loader = Box::new(IndexLoader {
        dir: dir.to_path_buf(),
        index: Arc::new(ix),
    });
    whole(analysis, request, loader, Some(note))
}

/// The whole trace, on `request` when given.
fn whole(
    analysis: Analysis,
    request: Option<&str>,
    loader: Box<dyn DetailLoader>,
    note: Option<String>,
) -> Result<Opened, OpenError> {
    let r = request.map(|id| resolve(&analysis.data, id)).transpose()?;
    Ok(Opened {
        analysis,
        loader,
        request: r,
        note,
        window: None,
    })
}

/// The window of request `id` of an indexed trace, and where the request is
/// in it.
pub fn open_window(
    dir: &Path,
    index: &TraceIndex,
    id: &str,
) -> Result<(index::Window, RequestIx), OpenError> {
    let found = index.find(id);
    let ix = one(&found, id, index.requests.len(), |i| {
        index.requests.get(i).map(|q| {
            (
                q.external_id.clone().unwrap_or(q.internal_id.clone()),
                q.internal_id.clone(),
            )
        })
    })?;
    let entry = &index.requests[ix];
    let window = index.load_window(dir, ix).map_err(OpenError::read(format!(
        "reading the window of {id} in {}",
        dir.display()
    )))?;
    let r = window
        .analysis
        .data
        .requests
        .iter()
        .position(|q| (q.process, q.key) == (entry.process, entry.key))
        .ok_or_else(|| {
            UnknownRequest(format!(
                "request {id:?} is in the index but not in the trace: the trace changed; delete {} and retry",
                dir.join(index::INDEX_FILE).display()
            ))
        })?;
    Ok((window, r as RequestIx))
}

/// Large enough that opening one request is worth indexing the trace first.
fn large(dir: &Path) -> bool {
    index::trace_bytes(dir).is_ok_and(|b| b >= index::AUTO_INDEX_BYTES)
}

/// The one request that answers to `id` (client id, internal id, trace id or
/// a unique prefix), or an [`UnknownRequest`] saying why not.
pub fn resolve(data: &TraceData, id: &str) -> Result<RequestIx, UnknownRequest> {
    let found: Vec<usize> = crate::analysis::find_request(data, id)
        .into_iter()
        .map(|r| r as usize)
        .collect();
    let ix = one(&found, id, data.requests.len(), |i| {
        data.requests
            .get(i)
            .map(|q| (q.display_id().to_string(), q.internal_id.clone()))
    })?;
    Ok(ix as RequestIx)
}

/// The one match, or why there is not exactly one. `names` gives a match's
/// (display id, internal id).
fn one(
    found: &[usize],
    id: &str,
    total: usize,
    names: impl Fn(usize) -> Option<(String, String)>,
) -> Result<usize, UnknownRequest> {
    match found {
        [one] => Ok(*one),
        [] => Err(UnknownRequest(format!(
            "no request with id or trace id {id:?} in this trace ({total} requests; `toktrace requests DIR` lists them)"
        ))),
        many => {
            let listed: Vec<String> = many
                .iter()
                .take(5)
                .filter_map(|&r| names(r))
                .map(|(shown, internal)| format!("{shown} (internal {internal})"))
                .collect();
            Err(UnknownRequest(format!(
                "{} requests answer to {id:?}: {}; give the internal id",
                many.len(),
                listed.join(", ")
            )))
        }
    }
}
