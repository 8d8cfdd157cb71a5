//! The `toktrace._native` extension: the probe as Python engines call it.
//!
//! `NativeProbe` takes one call per engine iteration (the step's batch and all
//! of its sampled tokens as arrays or lists), per batch of request lifecycle
//! events, and per batch of frontend emits; it converts them to probe-core
//! records and pushes them into the lock-free ring. Only probe-core is linked
//! in here — never the analyzer or the viewer — so what loads into an engine
//! process stays small.

mod attrs;
mod convert;
mod intern;
mod layout;
mod probe;

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

/// Which object layouts are read directly: (lists, ints, floats, numpy, dicts).
#[pyfunction]
fn direct_reads() -> (bool, bool, bool, bool, bool) {
    layout::status()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    layout::init(m.py())?;
    m.add_class::<probe::NativeProbe>()?;
    m.add_function(wrap_pyfunction!(probe_version, m)?)?;
    m.add_function(wrap_pyfunction!(probe::monotonic_ns, m)?)?;
    m.add_function(wrap_pyfunction!(noop, m)?)?;
    m.add_function(wrap_pyfunction!(direct_reads, m)?)?;
    m.add_function(wrap_pyfunction!(attrs::attr_columns, m)?)?;
    m.add("FORMAT_VERSION", probe_core::FORMAT_VERSION)?;
    Ok(())
}
