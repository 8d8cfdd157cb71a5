//! Turning the engines' Python objects into Rust columns, fast.
//!
//! Engines hand over numbers in three shapes: numpy arrays (vLLM's logprob
//! tensors), nested Python lists (vLLM's sampled ids, SGLang everywhere) and
//! flat lists. Arrays are read through the buffer protocol — one copy, no
//! per-element Python call, strided views included. Lists are walked with the
//! C API, one level of nesting flattened. Anything else that iterates works
//! too, just slower.

use pyo3::buffer::{Element, PyBuffer};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

/// Append the numbers of `obj` to `out`, converting each with `conv`.
fn extend_with<T, F>(obj: &Bound<'_, PyAny>, out: &mut Vec<T>, conv: &F) -> PyResult<()>
where
    F: Fn(&Bound<'_, PyAny>) -> PyResult<T>,
{
    if let Ok(list) = obj.downcast::<PyList>() {
        out.reserve(list.len());
        for item in list.iter() {
            if item.is_instance_of::<PyList>() || item.is_instance_of::<PyTuple>() {
                extend_with(&item, out, conv)?;
            } else {
                out.push(conv(&item)?);
            }
        }
        return Ok(());
    }
    if let Ok(tuple) = obj.downcast::<PyTuple>() {
        for item in tuple.iter() {
            out.push(conv(&item)?);
        }
        return Ok(());
    }
    for item in obj.try_iter()? {
        let item = item?;
        if item.is_instance_of::<PyList>() || item.is_instance_of::<PyTuple>() {
            extend_with(&item, out, conv)?;
        } else {
            out.push(conv(&item)?);
        }
    }
    Ok(())
}

/// Copy a buffer of element type `E` into `out`, converting with `f`.
fn from_buffer<E, T>(
    obj: &Bound<'_, PyAny>,
    out: &mut Vec<T>,
    f: impl Fn(E) -> Option<T>,
) -> Option<PyResult<()>>
where
    E: Element + Copy,
{
    let buf = PyBuffer::<E>::get(obj).ok()?;
    let v = match buf.to_vec(obj.py()) {
        Ok(v) => v,
        Err(e) => return Some(Err(e)),
    };
    out.reserve(v.len());
    for x in v {
        match f(x) {
            Some(t) => out.push(t),
            None => {
                return Some(Err(PyValueError::new_err(
                    "value out of range for a token column",
                )))
            }
        }
    }
    Some(Ok(()))
}

/// Append unsigned integers (token ids, ranks, counts) from an array, list or iterable.
pub fn extend_u32(obj: &Bound<'_, PyAny>, out: &mut Vec<u32>) -> PyResult<()> {
    if let Some(r) = from_buffer::<u32, u32>(obj, out, Some)
        .or_else(|| from_buffer::<i32, u32>(obj, out, |x| u32::try_from(x).ok()))
        .or_else(|| from_buffer::<i64, u32>(obj, out, |x| u32::try_from(x).ok()))
        .or_else(|| from_buffer::<u64, u32>(obj, out, |x| u32::try_from(x).ok()))
    {
        return r;
    }
    extend_with(obj, out, &|item| item.extract::<u32>())
}

/// Append floats (logprobs) from an array, list or iterable.
pub fn extend_f32(obj: &Bound<'_, PyAny>, out: &mut Vec<f32>) -> PyResult<()> {
    if let Some(r) = from_buffer::<f32, f32>(obj, out, Some)
        .or_else(|| from_buffer::<f64, f32>(obj, out, |x| Some(x as f32)))
    {
        return r;
    }
    extend_with(obj, out, &|item| item.extract::<f64>().map(|x| x as f32))
}

/// Unsigned integers as a fresh vector; `None` stays empty.
pub fn u32s(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<u32>> {
    let mut v = Vec::new();
    if let Some(o) = obj {
        if !o.is_none() {
            extend_u32(o, &mut v)?;
        }
    }
    Ok(v)
}
