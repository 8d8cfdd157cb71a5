//! Turning the engines' Python objects into Rust columns, fast.
//!
//! Engines hand over numbers in three shapes: numpy arrays (vLLM's logprob
//! tensors), nested Python lists (vLLM's sampled ids, SGLang everywhere) and
//! flat lists. numpy arrays and lists of plain ints and floats are read
//! straight from memory (`layout`, which checks those layouts first); other
//! arrays go through the buffer protocol, in one request whose format string
//! is inspected here — no failed attempts per element type (a failed attempt
//! raises and formats a Python exception, which would cost more than the
//! copy); other sequences through the C API, one level of nesting flattened.
//! Anything else that iterates works too, just slower.

use crate::layout::{self, ArrayView, Elem, Numbers};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use std::ffi::CStr;

/// A target column type: how to make one from an integer or a float. The
/// conversions return the value and whether it was in range, so the copy
/// loops have no branch per element and vectorize.
pub trait Num: Copy {
    /// From an integer element.
    fn from_i64(v: i64) -> (Self, bool);
    /// From a floating-point element.
    fn from_f64(v: f64) -> (Self, bool);
    /// A plain int or float object read directly; None when it is neither
    /// (or its layout is not read directly).
    ///
    /// # Safety
    /// `obj` must be a live object.
    unsafe fn direct(nums: Numbers, obj: *mut ffi::PyObject) -> Option<(Self, bool)>;
    /// Any number object, through the C API when it must: that may run the
    /// object's `__index__` or `__float__`, so the caller holds a strong
    /// reference, and re-reads anything it borrowed, from containers the
    /// Python code could change, after the call.
    fn from_object(obj: &Bound<'_, PyAny>) -> Option<Self>;
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
    #[inline(always)]
    unsafe fn direct(nums: Numbers, obj: *mut ffi::PyObject) -> Option<(u32, bool)> {
        nums.int_value(obj).map(u32::from_i64)
    }
    #[inline]
    fn from_object(obj: &Bound<'_, PyAny>) -> Option<u32> {
        // SAFETY: `obj` is held.
        if let Some((v, ok)) = unsafe { Self::direct(layout::numbers(), obj.as_ptr()) } {
            return ok.then_some(v);
        }
        // SAFETY: a held object. -1 with an error set means "not an int": clear it.
        let v = unsafe { ffi::PyLong_AsLongLong(obj.as_ptr()) };
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
    #[inline(always)]
    unsafe fn direct(nums: Numbers, obj: *mut ffi::PyObject) -> Option<(f32, bool)> {
        match nums.float_value(obj) {
            Some(v) => Some(f32::from_f64(v)),
            None => nums.int_value(obj).map(f32::from_i64),
        }
    }
    #[inline]
    fn from_object(obj: &Bound<'_, PyAny>) -> Option<f32> {
        // SAFETY: `obj` is held.
        if let Some((v, _)) = unsafe { Self::direct(layout::numbers(), obj.as_ptr()) } {
            return Some(v);
        }
        // SAFETY: as above; PyFloat_AsDouble also accepts ints and numpy scalars.
        let v = unsafe { ffi::PyFloat_AsDouble(obj.as_ptr()) };
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

/// A source element type of an array.
trait Src: Copy {
    fn conv<T: Num>(self) -> (T, bool);
}

macro_rules! src_int {
    ($($t:ty),*) => {$(
        impl Src for $t {
            #[inline(always)]
            fn conv<T: Num>(self) -> (T, bool) {
                T::from_i64(self as i64)
            }
        }
    )*};
}
src_int!(i8, u8, i16, u16, i32, u32, i64);

impl Src for u64 {
    #[inline(always)]
    fn conv<T: Num>(self) -> (T, bool) {
        let (v, ok) = T::from_i64(self as i64);
        (v, ok && self <= i64::MAX as u64)
    }
}

impl Src for f32 {
    #[inline(always)]
    fn conv<T: Num>(self) -> (T, bool) {
        T::from_f64(f64::from(self))
    }
}

impl Src for f64 {
    #[inline(always)]
    fn conv<T: Num>(self) -> (T, bool) {
        T::from_f64(self)
    }
}

/// Most dimensions read (engines hand over 1-D and 2-D).
const MAX_DIMS: usize = 8;

/// Append every element of `a` (any dimensionality and strides) to `out`, in
/// C order. False if one was out of range for `T`.
fn copy_array<T: Num>(a: &ArrayView<'_>, out: &mut Vec<T>) -> bool {
    // SAFETY (all arms): `a` describes memory of a live array the caller
    // holds, as its exporter (or numpy's own header) reported it.
    unsafe {
        match a.elem {
            Elem::I8 => copy_typed::<i8, T>(a, out),
            Elem::U8 => copy_typed::<u8, T>(a, out),
            Elem::I16 => copy_typed::<i16, T>(a, out),
            Elem::U16 => copy_typed::<u16, T>(a, out),
            Elem::I32 => copy_typed::<i32, T>(a, out),
            Elem::U32 => copy_typed::<u32, T>(a, out),
            Elem::I64 => copy_typed::<i64, T>(a, out),
            Elem::U64 => copy_typed::<u64, T>(a, out),
            Elem::F32 => copy_typed::<f32, T>(a, out),
            Elem::F64 => copy_typed::<f64, T>(a, out),
        }
    }
}

/// # Safety
/// Every element `a` describes must be a readable `S`.
unsafe fn copy_typed<S: Src, T: Num>(a: &ArrayView<'_>, out: &mut Vec<T>) -> bool {
    let ndim = a.shape.len();
    if ndim > MAX_DIMS || a.strides.len() != ndim {
        return false;
    }
    let total: usize = a.shape.iter().map(|&n| n.max(0) as usize).product();
    out.reserve(total);
    let start = out.len();
    let dst = out.spare_capacity_mut();
    let mut ok = true;
    let size = std::mem::size_of::<S>() as isize;
    let base = a.data;
    let contiguous = {
        let mut expect = size;
        let mut c = true;
        for d in (0..ndim).rev() {
            c &= a.shape[d] <= 1 || a.strides[d] == expect;
            expect *= a.shape[d].max(1);
        }
        c
    };
    if total == 0 {
        return true;
    }
    if contiguous && (base as usize).is_multiple_of(std::mem::align_of::<S>()) {
        // One plain slice: the loop vectorizes. The same loop as
        // `convert_run`'s slice arm, kept apart: calling that here changed
        // its inlining and made unrelated steps a third slower (A/B).
        let src = std::slice::from_raw_parts(base.cast::<S>(), total);
        for (d, &x) in dst[..total].iter_mut().zip(src) {
            let (v, good) = x.conv::<T>();
            d.write(v);
            ok &= good;
        }
    } else {
        // The last dimension is a strided run; the outer ones are stepped
        // through as table rows (2-D) or by an odometer (more).
        let inner = if ndim == 0 {
            1
        } else {
            a.shape[ndim - 1] as usize
        };
        let inner_stride = if ndim == 0 { 0 } else { a.strides[ndim - 1] };
        let outer = ndim.saturating_sub(1);
        // Rows of adjacent aligned values (a column range of a table, like
        // numpy's `top[:, 1:]`) convert as plain slices.
        let rows_are_slices = inner_stride == size
            && (base as usize).is_multiple_of(std::mem::align_of::<S>())
            && a.strides[..outer].iter().all(|&s| s % size == 0);
        let run = |p: *const u8, dst: &mut [std::mem::MaybeUninit<T>]| {
            convert_run::<S, T>(p, inner_stride, rows_are_slices, dst)
        };
        let mut w = 0usize;
        if outer == 1 {
            // A table (the usual case past 1-D): rows a fixed stride apart,
            // stepped by pointer (the odometer below keeps its indices in
            // memory, and every row would wait on the previous row's store).
            let mut p = base;
            for _ in 0..a.shape[0] {
                ok &= run(p, &mut dst[w..w + inner]);
                w += inner;
                p = p.offset(a.strides[0]);
            }
        } else {
            let mut index = [0isize; MAX_DIMS];
            'rows: loop {
                let mut p = base;
                for (&i, &stride) in index[..outer].iter().zip(a.strides) {
                    p = p.offset(i * stride);
                }
                ok &= run(p, &mut dst[w..w + inner]);
                w += inner;
                let mut d = outer;
                loop {
                    if d == 0 {
                        break 'rows;
                    }
                    d -= 1;
                    index[d] += 1;
                    if index[d] < a.shape[d] {
                        break;
                    }
                    index[d] = 0;
                }
            }
        }
    }
    // SAFETY: all `total` slots after `start` were written above.
    out.set_len(start + total);
    ok
}

/// Convert one run of `dst.len()` values starting at `p`, `stride` bytes
/// apart; `slices`: they are adjacent and aligned (read as a slice).
///
/// # Safety
/// `p` and the `dst.len() - 1` strides after it point at readable `S` (aligned when `slices`).
#[inline(always)]
unsafe fn convert_run<S: Src, T: Num>(
    mut p: *const u8,
    stride: isize,
    slices: bool,
    dst: &mut [std::mem::MaybeUninit<T>],
) -> bool {
    let mut ok = true;
    if slices && dst.len() == 5 {
        ok = convert_fixed::<S, T, 5>(p.cast::<S>(), dst);
    } else if slices {
        let src = std::slice::from_raw_parts(p.cast::<S>(), dst.len());
        for (d, &x) in dst.iter_mut().zip(src) {
            let (v, good) = x.conv::<T>();
            d.write(v);
            ok &= good;
        }
    } else {
        for d in dst {
            let (v, good) = p.cast::<S>().read_unaligned().conv::<T>();
            d.write(v);
            ok &= good;
            p = p.offset(stride);
        }
    }
    ok
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

/// A held buffer view, released on drop.
struct View(ffi::Py_buffer);

impl Drop for View {
    fn drop(&mut self) {
        // SAFETY: the view was filled by a successful PyObject_GetBuffer and is released once.
        unsafe { ffi::PyBuffer_Release(&mut self.0) };
    }
}

/// Copy a buffer-protocol object's elements into `out`. `None` when `obj`
/// has no usable buffer.
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
        let mut derived = [0isize; MAX_DIMS];
        let strides: &[isize] = if v.strides.is_null() {
            // C-contiguous: derive the strides.
            if ndim > 0 {
                derived[ndim - 1] = v.itemsize;
                for d in (0..ndim - 1).rev() {
                    derived[d] = derived[d + 1] * shape[d + 1];
                }
            }
            &derived[..ndim]
        } else {
            std::slice::from_raw_parts(v.strides, ndim)
        };
        let array = ArrayView {
            data: v.buf as *const u8,
            shape,
            strides,
            elem,
        };
        Some(if copy_array(&array, out) {
            Ok(())
        } else {
            Err(bad_value())
        })
    }
}

fn is_list_or_tuple(obj: &Bound<'_, PyAny>) -> bool {
    // SAFETY: type checks on a held object.
    unsafe { ffi::PyList_Check(obj.as_ptr()) != 0 || ffi::PyTuple_Check(obj.as_ptr()) != 0 }
}

/// Length of a list or tuple (0 for anything else).
pub fn seq_len(seq: &Bound<'_, PyAny>) -> usize {
    let seq = seq.as_ptr();
    // SAFETY: type checks and sizes of a held object; the size calls cannot
    // fail on the type checked.
    unsafe {
        if ffi::PyList_Check(seq) != 0 {
            ffi::PyList_Size(seq)
        } else if ffi::PyTuple_Check(seq) != 0 {
            ffi::PyTuple_Size(seq)
        } else {
            0
        }
    }
    .max(0) as usize
}

/// Item `i` of a list or tuple, borrowed from it, read now: Python code run
/// since an earlier read (a getattr, a dropped object) may have shrunk a
/// list, and then this is null. Lists are read directly when their layout is
/// known. The item stays alive only while no Python code runs: take a strong
/// reference before anything that may run some.
pub fn seq_item(seq: &Bound<'_, PyAny>, i: usize) -> *mut ffi::PyObject {
    let seq = seq.as_ptr();
    // SAFETY: `seq` is held; *_GetItem return borrowed references (null when
    // out of range or not of their type, with an IndexError or SystemError
    // set, cleared here: null says it), the direct read a fresh slice.
    unsafe {
        let item = if ffi::PyList_Check(seq) == 0 {
            ffi::PyTuple_GetItem(seq, i as ffi::Py_ssize_t)
        } else if layout::is_direct_list(seq) {
            return layout::list_items(seq)
                .get(i)
                .copied()
                .unwrap_or(std::ptr::null_mut());
        } else {
            ffi::PyList_GetItem(seq, i as ffi::Py_ssize_t)
        };
        if item.is_null() {
            ffi::PyErr_Clear();
        }
        item
    }
}

/// The items of a list or tuple, each read (`seq_item`) when reached.
pub fn items<'a>(
    seq: &'a Bound<'_, PyAny>,
) -> impl ExactSizeIterator<Item = *mut ffi::PyObject> + 'a {
    (0..seq_len(seq)).map(move |i| seq_item(seq, i))
}

/// A strong reference to a borrowed item (see [`seq_item`]); an error when
/// it is null: the container changed while it was read.
fn hold<'py>(py: Python<'py>, item: *mut ffi::PyObject) -> PyResult<Bound<'py, PyAny>> {
    if item.is_null() {
        return Err(PyTypeError::new_err("column changed while being read"));
    }
    // SAFETY: a non-null item borrowed from a container the caller holds, with
    // no Python code run since it was read.
    Ok(unsafe { Bound::from_borrowed_ptr(py, item) })
}

/// A list of plain numbers, or of lists of them, read straight from memory.
/// None when an item is anything else (the caller then starts over on the
/// API path): nothing here can run Python code, so the list cannot change
/// while it is read.
///
/// # Safety
/// `list` is a live object that passed `is_direct_list`.
unsafe fn from_list_direct<T: Num>(
    list: *mut ffi::PyObject,
    out: &mut Vec<T>,
) -> Option<PyResult<()>> {
    let nums = layout::numbers();
    // SAFETY: nothing below runs Python code, so the item slices stay valid
    // while they are read.
    unsafe {
        let items = layout::list_items(list);
        // Flat numbers first, written straight into the spare capacity.
        out.reserve(items.len());
        let start = out.len();
        let spare = &mut out.spare_capacity_mut()[..items.len()];
        let mut ok = true;
        let mut flat = 0;
        // An item that is the previous item's object has its value: small
        // ints are shared objects, and batch columns (1 token per decode,
        // 0 cached) repeat them down the list.
        let mut last: (*mut ffi::PyObject, Option<(T, bool)>) = (std::ptr::null_mut(), None);
        for (&item, slot) in items.iter().zip(spare) {
            let read = match last {
                (prev, Some(value)) if prev == item => value,
                _ => match T::direct(nums, item) {
                    Some(value) => {
                        last = (item, Some(value));
                        value
                    }
                    None => break,
                },
            };
            slot.write(read.0);
            ok &= read.1;
            flat += 1;
        }
        // Then lists of numbers (vLLM's per-request token lists), or a
        // bail-out. The length lives in a local until the end: storing it per
        // item would chain every item to the one before through memory.
        let mut len = start + flat;
        for &item in &items[flat..] {
            let inner: &[*mut ffi::PyObject] = if layout::is_direct_list(item) {
                layout::list_items(item)
            } else {
                std::slice::from_ref(&item)
            };
            if out.capacity() - len < inner.len() {
                out.set_len(len);
                out.reserve(inner.len().max(items.len()));
            }
            let dst = out.as_mut_ptr().add(len);
            for (j, &x) in inner.iter().enumerate() {
                let Some((v, good)) = T::direct(nums, x) else {
                    out.set_len(len);
                    return None;
                };
                dst.add(j).write(v);
                ok &= good;
            }
            len += inner.len();
        }
        out.set_len(len);
        Some(if ok { Ok(()) } else { Err(bad_value()) })
    }
}

/// The API path for lists and tuples, one level of nesting flattened. Each
/// item is held while it is read: an `__index__` may change the containers.
fn from_sequence<T: Num>(obj: &Bound<'_, PyAny>, out: &mut Vec<T>) -> PyResult<()> {
    let py = obj.py();
    for item in items(obj) {
        let item = hold(py, item)?;
        if is_list_or_tuple(&item) {
            for inner in items(&item) {
                let inner = hold(py, inner)?;
                out.push(T::from_object(&inner).ok_or_else(bad_value)?);
            }
        } else {
            out.push(T::from_object(&item).ok_or_else(bad_value)?);
        }
    }
    Ok(())
}

fn extend<T: Num>(obj: &Bound<'_, PyAny>, out: &mut Vec<T>) -> PyResult<()> {
    let p = obj.as_ptr();
    // SAFETY: `obj` is held.
    if unsafe { layout::is_direct_list(p) } {
        let start = out.len();
        // SAFETY: `p` passed `is_direct_list` just above.
        if let Some(r) = unsafe { from_list_direct(p, out) } {
            return r;
        }
        out.truncate(start);
    }
    if is_list_or_tuple(obj) {
        return from_sequence(obj, out);
    }
    if let Some(array) = layout::ndarray(obj) {
        return if copy_array(&array, out) {
            Ok(())
        } else {
            Err(bad_value())
        };
    }
    if let Some(r) = from_buffer(obj, out) {
        layout::learn_ndarray(obj.py());
        return r;
    }
    // Anything iterable (array-likes without a usable buffer, generators).
    for item in obj.try_iter()? {
        let item = item?;
        if is_list_or_tuple(&item) {
            from_sequence(&item, out)?;
        } else if let Some(r) = from_buffer(&item, out) {
            r?;
        } else {
            out.push(T::from_object(&item).ok_or_else(bad_value)?);
        }
    }
    Ok(())
}

/// A row-major table of numbers to pick rows from: a 2-D numpy array read in
/// place, or any other column copied once into a flat vector.
pub enum Matrix<'a, T> {
    InPlace(ArrayView<'a>),
    Copied { values: Vec<T>, width: usize },
}

impl<'a, T: Num> Matrix<'a, T> {
    /// `obj` as rows of `width` values; a numpy array of that width is read in
    /// place, anything else is copied (and must hold whole rows).
    pub fn new(obj: &'a Bound<'_, PyAny>, width: usize) -> PyResult<Matrix<'a, T>> {
        if let Some(a) = layout::ndarray(obj) {
            if a.shape.len() == 2 && a.shape[1] as usize == width {
                return Ok(Matrix::InPlace(a));
            }
        }
        let mut values = Vec::new();
        extend(obj, &mut values)?;
        if width > 0 && values.len() % width != 0 {
            return Err(PyValueError::new_err(format!(
                "a logprob table of {} values is not made of rows of {width}",
                values.len()
            )));
        }
        Ok(Matrix::Copied { values, width })
    }

    /// Rows held.
    pub fn rows(&self) -> usize {
        match self {
            Matrix::InPlace(a) => a.shape[0].max(0) as usize,
            Matrix::Copied { values, width } => values.len().checked_div(*width).unwrap_or(0),
        }
    }

    /// Append, for each row in `rows`, its `n` values from column `col` on.
    /// False if a row is out of range, `col + n` exceeds the width, or a value
    /// does not fit `T`.
    pub fn gather(&self, rows: &[u32], col: usize, n: usize, out: &mut Vec<T>) -> bool {
        let height = self.rows();
        if rows.iter().any(|&r| r as usize >= height) {
            return false;
        }
        match self {
            Matrix::InPlace(a) => {
                if col + n > a.shape[1].max(0) as usize {
                    return false;
                }
                // SAFETY (all arms): rows and columns were checked against the shape above.
                unsafe {
                    match a.elem {
                        Elem::I8 => gather_typed::<i8, T>(a, rows, col, n, out),
                        Elem::U8 => gather_typed::<u8, T>(a, rows, col, n, out),
                        Elem::I16 => gather_typed::<i16, T>(a, rows, col, n, out),
                        Elem::U16 => gather_typed::<u16, T>(a, rows, col, n, out),
                        Elem::I32 => gather_typed::<i32, T>(a, rows, col, n, out),
                        Elem::U32 => gather_typed::<u32, T>(a, rows, col, n, out),
                        Elem::I64 => gather_typed::<i64, T>(a, rows, col, n, out),
                        Elem::U64 => gather_typed::<u64, T>(a, rows, col, n, out),
                        Elem::F32 => gather_typed::<f32, T>(a, rows, col, n, out),
                        Elem::F64 => gather_typed::<f64, T>(a, rows, col, n, out),
                    }
                }
            }
            Matrix::Copied { values, width } => {
                if col + n > *width {
                    return false;
                }
                out.reserve(rows.len() * n);
                for &r in rows {
                    let from = r as usize * width + col;
                    out.extend(values[from..from + n].iter().copied());
                }
                true
            }
        }
    }
}

/// # Safety
/// Every `rows[i] < shape[0]` and `col + n <= shape[1]` of the 2-D array `a`.
unsafe fn gather_typed<S: Src, T: Num>(
    a: &ArrayView<'_>,
    rows: &[u32],
    col: usize,
    n: usize,
    out: &mut Vec<T>,
) -> bool {
    let total = rows.len() * n;
    out.reserve(total);
    let start = out.len();
    let dst = &mut out.spare_capacity_mut()[..total];
    let (s0, s1) = (a.strides[0], a.strides[1]);
    let size = std::mem::size_of::<S>();
    // Rows of contiguous values (numpy's usual layout) convert as slices.
    let slices = s1 == size as isize
        && (a.data as usize).is_multiple_of(std::mem::align_of::<S>())
        && s0 % size as isize == 0;
    let mut ok = true;
    for (&r, chunk) in rows.iter().zip(dst.chunks_exact_mut(n.max(1))) {
        let p = a.data.offset(r as isize * s0 + col as isize * s1);
        ok &= convert_run::<S, T>(p, s1, slices, &mut chunk[..n]);
    }
    // SAFETY: every one of the `total` slots was written above.
    out.set_len(start + total);
    ok
}

/// Convert the `N` values at `src` into `dst[..N]`. A loop of known length
/// unrolls, where a 5-value loop of unknown length spends more on its own
/// control than on the values; top-5 is what requests usually ask for
/// (longer rows amortize the loop). What it saves is measured by
/// `benches/python_probe.py` (docs/performance.md), not written here.
///
/// # Safety
/// `src` points at `N` readable, aligned `S`; `dst` holds at least `N` slots.
#[inline(always)]
unsafe fn convert_fixed<S: Src, T: Num, const N: usize>(
    src: *const S,
    dst: &mut [std::mem::MaybeUninit<T>],
) -> bool {
    let src = &*src.cast::<[S; N]>();
    let dst = &mut dst[..N];
    let mut ok = true;
    for i in 0..N {
        let (v, good) = src[i].conv::<T>();
        dst[i].write(v);
        ok &= good;
    }
    ok
}

/// The length of each inner list when `obj` is a list of `n` lists (token
/// ids handed over one list per run); false, leaving `out` alone, otherwise.
pub fn inner_lengths(obj: &Bound<'_, PyAny>, n: usize, out: &mut Vec<u32>) -> bool {
    let p = obj.as_ptr();
    // SAFETY: `obj` is held.
    if unsafe { layout::is_direct_list(p) } {
        // SAFETY: `p` passed `is_direct_list`; nothing here runs Python code,
        // so its items stay alive.
        let items = unsafe { layout::list_items(p) };
        if items.len() != n || !items.iter().all(|&i| unsafe { layout::is_direct_list(i) }) {
            return false;
        }
        out.extend(
            items
                .iter()
                // SAFETY: each item passed `is_direct_list` just above.
                .map(|&i| unsafe { layout::list_items(i) }.len() as u32),
        );
        return true;
    }
    // The same through the API. SAFETY: type checks and sizes of a held
    // list and of items just read from it; none of these calls runs Python
    // code, so the items stay alive.
    unsafe {
        if ffi::PyList_CheckExact(p) == 0 || seq_len(obj) != n {
            return false;
        }
        let start = out.len();
        for item in items(obj) {
            if item.is_null() || ffi::PyList_CheckExact(item) == 0 {
                out.truncate(start);
                return false;
            }
            out.push(ffi::PyList_Size(item).max(0) as u32);
        }
    }
    true
}

/// Append one flag (0 or 1) per item: an item of a list or tuple is unset
/// when it is None, False or 0 and set otherwise (so a list of the engine's
/// per-run logprob objects, None where a request asked for none, works as it
/// is); an array or other column is read as numbers.
pub fn extend_flags(obj: &Bound<'_, PyAny>, out: &mut Vec<u32>) -> PyResult<()> {
    let p = obj.as_ptr();
    let nums = layout::numbers();
    // SAFETY: `obj` is held.
    if unsafe { layout::is_direct_list(p) } {
        // SAFETY: `p` passed `is_direct_list`; `flag_unset` runs no Python
        // code, so the items stay as they are while read.
        unsafe {
            out.extend(
                layout::list_items(p)
                    .iter()
                    .map(|&item| u32::from(!flag_unset(nums, item))),
            );
        }
    } else if is_list_or_tuple(obj) {
        for item in items(obj) {
            if item.is_null() {
                return Err(PyTypeError::new_err("column changed while being read"));
            }
            // SAFETY: an item just read from a held list or tuple.
            out.push(u32::from(!unsafe { flag_unset(nums, item) }));
        }
    } else {
        let start = out.len();
        extend_u32(obj, out)?;
        for v in &mut out[start..] {
            *v = u32::from(*v != 0);
        }
    }
    Ok(())
}

/// Whether a flag item means "no": None, False or an int equal to 0. Only
/// exact types are asked, so no Python code runs.
///
/// # Safety
/// `item` must be a live object.
#[inline]
unsafe fn flag_unset(nums: Numbers, item: *mut ffi::PyObject) -> bool {
    if item == ffi::Py_None() || item == ffi::Py_False() {
        return true;
    }
    if !std::ptr::eq(ffi::Py_TYPE(item), std::ptr::addr_of_mut!(ffi::PyLong_Type)) {
        return false;
    }
    match nums.int_value(item) {
        Some(v) => v == 0,
        None => ffi::PyObject_IsTrue(item) == 0,
    }
}

/// For each id in the list `ids`, its value in the dict `map` (an engine's
/// request-id → row or → tokens table), `u32::MAX` where it has none. None
/// when `map` is not a dict or `ids` not a list.
///
/// Engines often list the requests in the dict's own order, so the dict's
/// entries are walked alongside the ids: when the next entry's key is the
/// very id object, its value is taken without a lookup (a few ns read
/// directly, ~10 through `PyDict_Next`, against ~20 for hashing into the
/// table). An entry that does not match is left for a later id and the id is
/// looked up; after a few misses in a row only lookups are made.
/// The leading ids that match (usually all of them) are taken first in one
/// tight pass over both tables (`walk_prefix`), cheaper per id than the
/// general loop, which reads each id afresh.
pub fn lookup_each(
    map: &Bound<'_, PyAny>,
    ids: &Bound<'_, PyAny>,
    out: &mut Vec<u32>,
) -> Option<PyResult<()>> {
    /// Misses in a row after which the walk stops.
    const GIVE_UP: u32 = 4;
    let py = map.py();
    let (m, l) = (map.as_ptr(), ids.as_ptr());
    // SAFETY: type checks on live objects.
    if unsafe { ffi::PyDict_Check(m) == 0 || ffi::PyList_Check(l) == 0 } {
        return None;
    }
    // The entry table is read directly for exact dicts only; a subclass is
    // walked through the API.
    // SAFETY (both calls): `m` is a live dict, exact when read directly.
    let exact = unsafe { ffi::PyDict_CheckExact(m) } != 0;
    let read_entries = || exact.then(|| unsafe { layout::dict_entries(m) }).flatten();
    let nums = layout::numbers();
    // Where the walk stands (an entry index), and the entries read directly
    // (read again after a lookup, which may have run Python code).
    let mut pos = 0usize;
    let mut entries = read_entries();
    let mut misses = 0;
    // SAFETY: `l` is a live list and `entries` were just read from `m`; the
    // prefix walk runs no Python code.
    let done = unsafe { walk_prefix(l, entries, &mut pos, out) };
    // Then each id read when reached: a lookup comparing odd key types may
    // run Python code.
    for i in done..seq_len(ids) {
        let item = seq_item(ids, i);
        if item.is_null() {
            return Some(Err(PyTypeError::new_err("column changed while being read")));
        }
        let value = if misses < GIVE_UP {
            // SAFETY: `m` is a live dict, `entries` read from it since the
            // last lookup; the entry is used before any lookup could run
            // Python code.
            match unsafe { peek_entry(m, entries, pos) } {
                Some((key, value, after)) if key == item => {
                    pos = after;
                    misses = 0;
                    value
                }
                _ => {
                    misses += 1;
                    std::ptr::null_mut()
                }
            }
        } else {
            std::ptr::null_mut()
        };
        let value = if value.is_null() {
            // The lookup may compare keys with `__eq__`, which may drop the
            // item from the list: it is held meanwhile.
            let item = match hold(py, item) {
                Ok(item) => item,
                Err(e) => return Some(Err(e)),
            };
            // SAFETY: a held key and a live dict; the result is borrowed (or
            // null: absent, or an error from comparing odd key types).
            let found = unsafe { ffi::PyDict_GetItemWithError(m, item.as_ptr()) };
            entries = read_entries();
            if found.is_null() {
                if let Some(err) = PyErr::take(py) {
                    return Some(Err(err));
                }
                out.push(u32::MAX);
                continue;
            }
            found
        } else {
            value
        };
        // SAFETY: `value` is borrowed from the dict and no Python code ran
        // since it was read.
        out.push(match unsafe { nums.int_value(value) }.map(u32::from_i64) {
            Some((v, true)) => v,
            // Held: its `__index__` may change the dict.
            _ => match hold(py, value).ok().and_then(|v| u32::from_object(&v)) {
                Some(v) => v,
                None => return Some(Err(bad_value())),
            },
        });
    }
    Some(Ok(()))
}

/// The leading ids that are the dict's keys in entry order, with plain int
/// values (usually every id): their values written to `out` in one pass over
/// both tables, nothing kept in memory between items (`pos` moves past the
/// entries taken). Returns how many ids were taken; the rest are left to the
/// general loop.
///
/// # Safety
/// `list` is a live list and `entries` (if any) the entries of the dict as
/// they are now; no Python code runs during the call.
unsafe fn walk_prefix(
    list: *mut ffi::PyObject,
    entries: Option<layout::DictEntries>,
    pos: &mut usize,
    out: &mut Vec<u32>,
) -> usize {
    let Some(entries) = entries.filter(|_| layout::is_direct_list(list)) else {
        return 0;
    };
    let nums = layout::numbers();
    let ids = layout::list_items(list);
    out.reserve(ids.len());
    let start = out.len();
    let mut taken = 0;
    let mut at = *pos;
    for (&id, slot) in ids.iter().zip(out.spare_capacity_mut()) {
        let Some((key, value, after)) = entries.next_live(at) else {
            break;
        };
        match nums.int_value(value).map(u32::from_i64) {
            Some((v, true)) if key == id => {
                slot.write(v);
                taken += 1;
                at = after;
            }
            _ => break,
        }
    }
    out.set_len(start + taken);
    *pos = at;
    taken
}

/// The first live entry at or after walk position `from`: its key, its value
/// and the position after it. Read from `entries` when the dict is read
/// directly, else one `PyDict_Next` call (whose positions are the same entry
/// indices).
///
/// # Safety
/// `dict` is a live dict and `entries` (if any) its entries as they are now;
/// no Python code runs while the result is used.
unsafe fn peek_entry(
    dict: *mut ffi::PyObject,
    entries: Option<layout::DictEntries>,
    from: usize,
) -> Option<(*mut ffi::PyObject, *mut ffi::PyObject, usize)> {
    if let Some(entries) = entries {
        return entries.next_live(from);
    }
    let mut pos = from as ffi::Py_ssize_t;
    let (mut key, mut value) = (std::ptr::null_mut(), std::ptr::null_mut());
    (ffi::PyDict_Next(dict, &mut pos, &mut key, &mut value) != 0).then_some((
        key,
        value,
        pos as usize,
    ))
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
