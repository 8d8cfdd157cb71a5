//! The `toktrace._native` extension: the probe as Python engines call it.
//!
//! Only probe-core is linked in here — never the analyzer or the viewer — so
//! what loads into an engine process stays small.

use pyo3::prelude::*;

/// The probe's version.
#[pyfunction]
fn probe_version() -> &'static str {
    probe_core::PROBE_VERSION
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(probe_version, m)?)?;
    Ok(())
}
