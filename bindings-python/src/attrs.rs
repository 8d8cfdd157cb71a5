//! Reading a few attributes of many engine objects in one pass.
//!
//! Adapters get per-request output objects from the engine (vLLM's
//! `EngineCoreOutput`s) and need several of their fields as lists. One
//! `list(map(attrgetter(name), objects))` per field walks the objects once per
//! field; right after the model's forward pass those objects are out of
//! cache, so each walk pays the misses again. One walk reads every field of
//! an object while it is in cache: the first touch after the forward pass
//! pays the misses once (what this call costs inside vLLM's step is measured
//! in docs/performance.md, "In situ").

use crate::convert::items;
use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};

/// Owned new list references, released on drop unless handed over.
struct Lists(Vec<*mut ffi::PyObject>);

impl Drop for Lists {
    fn drop(&mut self) {
        for &list in &self.0 {
            // SAFETY: each pointer is a list we created and still own.
            unsafe { ffi::Py_DECREF(list) };
        }
    }
}

/// `attr_columns(objects, names)`: for each name, the list of that attribute
/// of every object (a list or tuple), in order, read in one pass.
/// `a, b = attr_columns(objs, ("a", "b"))` equals
/// `[o.a for o in objs], [o.b for o in objs]`, exceptions included.
#[pyfunction]
pub fn attr_columns<'py>(
    objects: &Bound<'py, PyAny>,
    names: Vec<Bound<'py, PyString>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let py = objects.py();
    let seq = objects.as_ptr();
    // SAFETY: type checks on a live object.
    let is_list = unsafe { ffi::PyList_Check(seq) } != 0;
    if !is_list && unsafe { ffi::PyTuple_Check(seq) } == 0 {
        return Err(PyTypeError::new_err(
            "attr_columns: objects must be a list or a tuple",
        ));
    }
    // Each object read when reached: getattr may run Python code that
    // shrinks the list.
    let objects = items(objects);
    let n = objects.len() as ffi::Py_ssize_t;
    let mut lists = Lists(Vec::with_capacity(names.len()));
    for _ in &names {
        // SAFETY: a new list of `n` empty slots, each filled below before use.
        let list = unsafe { ffi::PyList_New(n) };
        if list.is_null() {
            return Err(PyErr::fetch(py));
        }
        lists.0.push(list);
    }
    for (i, p) in objects.enumerate() {
        if p.is_null() {
            return Err(PyTypeError::new_err(
                "attr_columns: the list changed while being read",
            ));
        }
        // SAFETY: a live borrowed item; the new reference keeps it alive
        // while its attributes are read.
        let item = unsafe { Bound::from_borrowed_ptr(py, p) };
        for (name, &list) in names.iter().zip(&lists.0) {
            let value = item.getattr(name)?;
            // SAFETY: slot `i` of a list we own, empty so far; the call
            // steals the reference (and cannot fail for an index in range).
            unsafe { ffi::PyList_SetItem(list, i as ffi::Py_ssize_t, value.into_ptr()) };
        }
    }
    let lists = std::mem::take(&mut lists.0);
    // SAFETY: each pointer is an owned, fully filled list, handed to the tuple.
    let owned = lists
        .into_iter()
        .map(|l| unsafe { Bound::from_owned_ptr(py, l) });
    PyTuple::new(py, owned)
}
