//! Turning the engines' Python objects into Rust columns, fast.
//!
//! Engines hand over numbers in three shapes: numpy arrays (vLLM's logprob
//! tensors), nested Python lists (vLLM's sampled ids, SGLang everywhere) and
//! flat lists. Arrays are read through the buffer protocol in one request
//! whose format string is inspected here — no failed attempts per element type
//! (a failed attempt raises and formats a Python exception, which would cost
//! more than the copy). Lists are walked with the C API, one level of nesting
//! flattened, reading each int or float without going through PyO3's generic
//! extraction. Anything else that iterates works too, just slower.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use std::ffi::CStr;

/// A target column type: how to make one from an integer or a float. The
/// array conversions return the value and whether it was in range, so the
/// copy loops have no branch per element and vectorize.
pub trait Num: Copy {
    /// From an integer element.
    fn from_i64(v: i64) -> (Self, bool);
    /// From a floating-point element.
    fn from_f64(v: f64) -> (Self, bool);
    /// Read a Python int/float object (fast path for list elements).
    fn from_object(obj: *mut ffi::PyObject) -> Option<Self>;
}

impl Num for u32 {
    #[inline(always)]
    fn from_i64(v: i64) -> (u32, bool) {
        (v as u32, (v as u64) <= u64::from(u32::MAX))
    }
    #[inline(always)]
    fn from_f64(_: f64) -> (u32, bool) {
        (0, false)
    }
    #[inline]
    fn from_object(obj: *mut ffi::PyObject) -> Option<u32> {
        // SAFETY: `obj` is a live object borrowed from a list we hold; the call
        // only reads it. -1 with an error set means "not an int": clear it.
        let v = unsafe { ffi::PyLong_AsLongLong(obj) };
        if v == -1 && unsafe { !ffi::PyErr_Occurred().is_null() } {
            unsafe { ffi::PyErr_Clear() };
            return None;
        }
        u32::try_from(v).ok()
    }
}

impl Num for f32 {
    #[inline(always)]
    fn from_i64(v: i64) -> (f32, bool) {
        (v as f32, true)
    }
    #[inline(always)]
    fn from_f64(v: f64) -> (f32, bool) {
        (v as f32, true)
    }
    #[inline]
    fn from_object(obj: *mut ffi::PyObject) -> Option<f32> {
        // SAFETY: as above; PyFloat_AsDouble also accepts ints and numpy scalars.
        let v = unsafe { ffi::PyFloat_AsDouble(obj) };
        if v == -1.0 && unsafe { !ffi::PyErr_Occurred().is_null() } {
            unsafe { ffi::PyErr_Clear() };
            return None;
        }
        Some(v as f32)
    }
}

fn bad_value() -> PyErr {
    PyValueError::new_err("a column holds a value that is not a valid token id, rank or count (negative, too large, or not a number)")
}

/// Element kinds the buffer reader understands.
#[derive(Clone, Copy)]
enum Elem {
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    F32,
    F64,
}

fn parse_format(format: *const std::os::raw::c_char, itemsize: isize) -> Option<Elem> {
    let text = if format.is_null() {
        "B"
    } else {
        // SAFETY: the exporter guarantees a NUL-terminated format string while the view is held.
        unsafe { CStr::from_ptr(format) }.to_str().ok()?
    };
    let text = match text.as_bytes().first()? {
        b'@' | b'=' | b'<' => &text[1..],
        b'>' | b'!' if cfg!(target_endian = "big") => &text[1..],
        b'>' | b'!' => return None, // foreign byte order: take the slow path
        _ => text,
    };
    let kind = match (text, itemsize) {
        ("b", 1) => Elem::I8,
        ("B", 1) | ("?", 1) => Elem::U8,
        ("h", 2) => Elem::I16,
        ("H", 2) => Elem::U16,
        ("i" | "l" | "q" | "n", 4) => Elem::I32,
        ("I" | "L" | "Q" | "N", 4) => Elem::U32,
        ("i" | "l" | "q" | "n", 8) => Elem::I64,
        ("I" | "L" | "Q" | "N", 8) => Elem::U64,
        ("f", 4) => Elem::F32,
        ("d", 8) => Elem::F64,
        _ => return None,
    };
    Some(kind)
}

/// Append `n` elements of kind `e` starting at `p`, `stride` bytes apart.
/// Returns false if any element was out of range for `T`. The element kind
/// is matched once per run; an aligned contiguous run is a plain slice loop
/// the compiler vectorizes.
///
/// # Safety
/// `p + j * stride` must point to a readable element of kind `e` for every j < n.
unsafe fn push_run<T: Num>(
    e: Elem,
    p: *const u8,
    n: usize,
    stride: isize,
    out: &mut Vec<T>,
) -> bool {
    out.reserve(n);
    let start = out.len();
    let dst = &mut out.spare_capacity_mut()[..n];
    let mut ok = true;
    macro_rules! run {
        ($t:ty, $conv:expr) => {{
            let size = std::mem::size_of::<$t>() as isize;
            if stride == size && (p as usize) % std::mem::align_of::<$t>() == 0 {
                let src = std::slice::from_raw_parts(p.cast::<$t>(), n);
                for (d, &x) in dst.iter_mut().zip(src) {
                    let (v, good) = $conv(x);
                    d.write(v);
                    ok &= good;
                }
            } else {
                for (j, d) in dst.iter_mut().enumerate() {
                    let x = p.offset(j as isize * stride).cast::<$t>().read_unaligned();
                    let (v, good) = $conv(x);
                    d.write(v);
                    ok &= good;
                }
            }
        }};
    }
    match e {
        Elem::I8 => run!(i8, |x: i8| T::from_i64(i64::from(x))),
        Elem::U8 => run!(u8, |x: u8| T::from_i64(i64::from(x))),
        Elem::I16 => run!(i16, |x: i16| T::from_i64(i64::from(x))),
        Elem::U16 => run!(u16, |x: u16| T::from_i64(i64::from(x))),
        Elem::I32 => run!(i32, |x: i32| T::from_i64(i64::from(x))),
        Elem::U32 => run!(u32, |x: u32| T::from_i64(i64::from(x))),
        Elem::I64 => run!(i64, T::from_i64),
        Elem::U64 => run!(u64, |x: u64| {
            let (v, good) = T::from_i64(x as i64);
            (v, good && x <= i64::MAX as u64)
        }),
        Elem::F32 => run!(f32, |x: f32| T::from_f64(f64::from(x))),
        Elem::F64 => run!(f64, T::from_f64),
    }
    // SAFETY: all `n` slots after `start` were written above.
    out.set_len(start + n);
    ok
}

/// Most dimensions read through the buffer protocol (engines hand over 1-D and 2-D).
const MAX_DIMS: usize = 8;

/// A held buffer view, released on drop.
struct View(ffi::Py_buffer);

impl Drop for View {
    fn drop(&mut self) {
        // SAFETY: the view was filled by a successful PyObject_GetBuffer and is released once.
        unsafe { ffi::PyBuffer_Release(&mut self.0) };
    }
}

/// Copy a buffer-protocol object's elements (any dimensionality and strides)
/// into `out`. `None` when `obj` has no usable buffer.
fn from_buffer<T: Num>(obj: &Bound<'_, PyAny>, out: &mut Vec<T>) -> Option<PyResult<()>> {
    // SAFETY: plain C-API calls on a live object; the view is released by `View`.
    unsafe {
        if ffi::PyObject_CheckBuffer(obj.as_ptr()) == 0 {
            return None;
        }
        let mut raw = std::mem::MaybeUninit::<ffi::Py_buffer>::zeroed();
        if ffi::PyObject_GetBuffer(obj.as_ptr(), raw.as_mut_ptr(), ffi::PyBUF_RECORDS_RO) != 0 {
            ffi::PyErr_Clear();
            return None;
        }
        let view = View(raw.assume_init());
        let v = &view.0;
        let elem = parse_format(v.format, v.itemsize)?;
        let ndim = v.ndim.max(0) as usize;
        if ndim > MAX_DIMS {
            return None; // exotic: take the slow path
        }
        let shape: &[isize] = if ndim == 0 {
            &[]
        } else {
            std::slice::from_raw_parts(v.shape, ndim)
        };
        let mut strides = [0isize; MAX_DIMS];
        if v.strides.is_null() {
            // C-contiguous: derive the strides.
            if ndim > 0 {
                strides[ndim - 1] = v.itemsize;
                for d in (0..ndim - 1).rev() {
                    strides[d] = strides[d + 1] * shape[d + 1];
                }
            }
        } else {
            strides[..ndim].copy_from_slice(std::slice::from_raw_parts(v.strides, ndim));
        }
        let total: usize = shape.iter().map(|&n| n.max(0) as usize).product();
        out.reserve(total);
        let base = v.buf as *const u8;
        if total == 0 {
            return Some(Ok(()));
        }
        // Odometer over all dimensions but the last; the last is a strided run.
        let inner = if ndim == 0 {
            1
        } else {
            shape[ndim - 1] as usize
        };
        let inner_stride = if ndim == 0 { 0 } else { strides[ndim - 1] };
        let outer_dims = ndim.saturating_sub(1);
        let mut index = [0isize; MAX_DIMS];
        loop {
            let mut p = base;
            for d in 0..outer_dims {
                p = p.offset(index[d] * strides[d]);
            }
            if !push_run(elem, p, inner, inner_stride, out) {
                return Some(Err(bad_value()));
            }
            // Advance the odometer.
            let mut d = outer_dims;
            loop {
                if d == 0 {
                    return Some(Ok(()));
                }
                d -= 1;
                index[d] += 1;
                if index[d] < shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
    }
}

fn is_list_or_tuple(obj: *mut ffi::PyObject) -> bool {
    // SAFETY: type checks on a live object.
    unsafe { ffi::PyList_Check(obj) != 0 || ffi::PyTuple_Check(obj) != 0 }
}

/// True for exact `int` or `float` objects: a pointer compare on the type,
/// cheaper than the flag checks behind PyList_Check in the limited API.
#[inline]
fn is_plain_number(obj: *mut ffi::PyObject) -> bool {
    // SAFETY: reading the type pointer of a live object; the type objects are statics.
    unsafe {
        let t = ffi::Py_TYPE(obj);
        std::ptr::eq(t, std::ptr::addr_of_mut!(ffi::PyLong_Type))
            || std::ptr::eq(t, std::ptr::addr_of_mut!(ffi::PyFloat_Type))
    }
}

/// Items of a list or tuple without new references (the container is held by
/// the caller, so its items stay alive while we read them).
fn items(seq: *mut ffi::PyObject) -> impl Iterator<Item = *mut ffi::PyObject> {
    // SAFETY: `seq` is a live list or tuple; *_GetItem return borrowed references.
    let (n, is_list) = unsafe {
        if ffi::PyList_Check(seq) != 0 {
            (ffi::PyList_Size(seq), true)
        } else {
            (ffi::PyTuple_Size(seq), false)
        }
    };
    (0..n.max(0)).map(move |i| unsafe {
        if is_list {
            ffi::PyList_GetItem(seq, i)
        } else {
            ffi::PyTuple_GetItem(seq, i)
        }
    })
}

fn from_sequence<T: Num>(obj: &Bound<'_, PyAny>, out: &mut Vec<T>) -> PyResult<()> {
    let seq = obj.as_ptr();
    for item in items(seq) {
        if item.is_null() {
            return Err(PyTypeError::new_err("column changed while being read"));
        }
        if is_plain_number(item) {
            out.push(T::from_object(item).ok_or_else(bad_value)?);
        } else if is_list_or_tuple(item) {
            for inner in items(item) {
                if inner.is_null() {
                    return Err(PyTypeError::new_err("column changed while being read"));
                }
                out.push(T::from_object(inner).ok_or_else(bad_value)?);
            }
        } else {
            out.push(T::from_object(item).ok_or_else(bad_value)?);
        }
    }
    Ok(())
}

fn extend<T: Num>(obj: &Bound<'_, PyAny>, out: &mut Vec<T>) -> PyResult<()> {
    if is_list_or_tuple(obj.as_ptr()) {
        return from_sequence(obj, out);
    }
    if let Some(r) = from_buffer(obj, out) {
        return r;
    }
    // Anything iterable (array-likes without a usable buffer, generators).
    for item in obj.try_iter()? {
        let item = item?;
        if is_list_or_tuple(item.as_ptr()) {
            from_sequence(&item, out)?;
        } else if let Some(r) = from_buffer(&item, out) {
            r?;
        } else {
            out.push(T::from_object(item.as_ptr()).ok_or_else(bad_value)?);
        }
    }
    Ok(())
}

/// Append unsigned integers (token ids, ranks, counts) from an array, list or iterable.
pub fn extend_u32(obj: &Bound<'_, PyAny>, out: &mut Vec<u32>) -> PyResult<()> {
    extend(obj, out)
}

/// Append floats (logprobs) from an array, list or iterable.
pub fn extend_f32(obj: &Bound<'_, PyAny>, out: &mut Vec<f32>) -> PyResult<()> {
    extend(obj, out)
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
