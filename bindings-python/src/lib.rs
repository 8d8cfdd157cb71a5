//! The `toktrace._native` extension: the probe as Python engines call it.
//!
//! `NativeProbe` takes one call per engine iteration (the step's batch and all
//! of its sampled tokens as arrays or lists), per batch of request lifecycle
//! events, and per batch of frontend emits; it converts them to probe-core
//! records and pushes them into the lock-free ring. Only probe-core is linked
//! in here — never the analyzer or the viewer — so what loads into an engine
//! process stays small.

#![deny(missing_docs)]

mod attrs;
mod convert;
mod intern;
mod layout;
mod probe;
mod step_builder;

use pyo3::prelude::*;

/// The probe's version.
#[pyfunction]
fn probe_version() -> &'static str {
    probe_core::PROBE_VERSION
}

/// A no-op native call: the baseline the benchmarks compare against.
#[pyfunction]
#[pyo3(signature = (*_args, **_kwargs))]
fn noop(_args: &Bound<'_, pyo3::types::PyTuple>, _kwargs: Option<&Bound<'_, pyo3::types::PyDict>>) {
}

/// Which path reads the engines' objects, and why: a dict with `path`
/// ("direct" or "c-api"), `why`, and whether each reader is on (`lists`,
/// `ints`, `floats`, `dicts`, `numpy`; numpy's is learned on the first
/// array that comes through the buffer path).
#[pyfunction]
fn direct_reads(py: Python<'_>) -> PyResult<Bound<'_, pyo3::types::PyDict>> {
    let r = layout::report();
    let d = pyo3::types::PyDict::new(py);
    d.set_item("path", r.path)?;
    d.set_item("why", r.why)?;
    d.set_item("lists", r.lists)?;
    d.set_item("ints", r.ints)?;
    d.set_item("floats", r.floats)?;
    d.set_item("dicts", r.dicts)?;
    d.set_item("numpy", r.numpy)?;
    Ok(d)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    layout::init(m.py());
    m.add_class::<probe::NativeProbe>()?;
    m.add_function(wrap_pyfunction!(probe_version, m)?)?;
    m.add_function(wrap_pyfunction!(probe::monotonic_ns, m)?)?;
    m.add_function(wrap_pyfunction!(noop, m)?)?;
    m.add_function(wrap_pyfunction!(direct_reads, m)?)?;
    m.add_function(wrap_pyfunction!(attrs::attr_columns, m)?)?;
    m.add_function(wrap_pyfunction!(probe::prompt_hash, m)?)?;
    m.add_function(wrap_pyfunction!(probe::topk_sampled, m)?)?;
    m.add("FORMAT_VERSION", probe_core::FORMAT_VERSION)?;
    Ok(())
}
