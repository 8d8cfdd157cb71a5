//! Object layouts read directly, each checked once against the C API.
//!
//! Through the limited (abi3) C API every list item, int and float is an
//! exported function call (`PyList_GetItem`, `PyLong_AsLongLong`, …), a dict
//! is walked one `PyDict_Next` call per entry, and a numpy array is a buffer
//! export that allocates its format string: together most of a step's cost
//! at batch 256. The layouts behind them are old and stable — CPython's
//! list, float, int and dict headers in the 3.11–3.14 GIL builds
//! an abi3-py311 wheel loads into, numpy's ndarray and dtype headers since
//! numpy 1.7 — so this module reads them directly, the way a profiler reads
//! an interpreter's memory. Each layout is used only after a check on sample
//! objects shows that the direct read gives exactly what the C API gives; one
//! that fails its check (a debug build, a future version) is never read
//! directly and everything falls back to the API. All the layout facts live
//! here and nowhere else.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::os::raw::{c_char, c_int};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, Ordering};

/// `PyListObject`: the variable-size header, then the item array.
#[repr(C)]
struct ListHead {
    ob_base: ffi::PyVarObject,
    ob_item: *mut *mut ffi::PyObject,
}

/// `PyFloatObject`.
#[repr(C)]
struct FloatHead {
    ob_base: ffi::PyObject,
    ob_fval: f64,
}

/// `PyLongObject` up to its first digits. The word after the object header
/// is `ob_size` (signed digit count) up to 3.11 and `lv_tag` (digit count
/// shifted left by 3, sign in the low bits) from 3.12.
#[repr(C)]
struct LongHead {
    ob_base: ffi::PyObject,
    size_or_tag: isize,
    digits: [u32; 2],
}

/// numpy's `PyArrayObject_fields`, up to the dtype.
#[repr(C)]
struct ArrayHead {
    ob_base: ffi::PyObject,
    data: *mut u8,
    nd: c_int,
    dimensions: *const isize,
    strides: *const isize,
    base: *mut ffi::PyObject,
    descr: *const DescrHead,
}

/// numpy's `PyArray_Descr` up to `type_num` (the same in numpy 1.x and 2.x).
#[repr(C)]
struct DescrHead {
    ob_base: ffi::PyObject,
    typeobj: *mut ffi::PyTypeObject,
    kind: c_char,
    type_char: c_char,
    byteorder: c_char,
    flags: c_char,
    type_num: c_int,
}

/// `PyDictObject` (3.11 on; `ma_version_tag` is a watcher tag from 3.13,
/// the same size). Fields not read stay for their place in the layout.
#[repr(C)]
#[allow(dead_code)]
struct DictHead {
    ob_base: ffi::PyObject,
    ma_used: isize,
    ma_version_tag: u64,
    ma_keys: *const DictKeysHead,
    ma_values: *const u8,
}

/// `PyDictKeysObject` up to its index table (`dk_indices`), which the entry
/// array follows. The 3.11 compact form, unchanged in the GIL builds since.
#[repr(C)]
#[allow(dead_code)]
struct DictKeysHead {
    dk_refcnt: isize,
    dk_log2_size: u8,
    dk_log2_index_bytes: u8,
    dk_kind: u8,
    dk_version: u32,
    dk_usable: isize,
    dk_nentries: isize,
}

/// `dk_kind`: entries are (hash, key, value) / (key, value) / split away.
const DICT_KEYS_GENERAL: u8 = 0;
const DICT_KEYS_UNICODE: u8 = 1;

const LONG_OFF: u8 = 0;
const LONG_SIZE: u8 = 1; // 3.11: ob_size
const LONG_TAG: u8 = 2; // 3.12+: lv_tag

static LIST_OK: AtomicBool = AtomicBool::new(false);
static DICT_OK: AtomicBool = AtomicBool::new(false);
static FLOAT_OK: AtomicBool = AtomicBool::new(false);
static LONG_FORM: AtomicU8 = AtomicU8::new(LONG_OFF);
/// numpy's ndarray type once it passed its check; null before (or never).
static NDARRAY: AtomicPtr<ffi::PyTypeObject> = AtomicPtr::new(std::ptr::null_mut());
const ND_UNTRIED: u8 = 0;
const ND_OK: u8 = 1;
const ND_FAILED: u8 = 2;
static ND_STATE: AtomicU8 = AtomicU8::new(ND_UNTRIED);

/// Element kinds of a directly readable array.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Elem {
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

/// A strided array's memory, borrowed from an object the caller holds.
pub struct ArrayView<'a> {
    pub data: *const u8,
    pub shape: &'a [isize],
    /// Byte strides, one per dimension (same length as `shape`).
    pub strides: &'a [isize],
    pub elem: Elem,
}

// ---------- lists ----------

/// True when `obj` is exactly a `list` and lists are read directly.
#[inline]
pub fn is_direct_list(obj: *mut ffi::PyObject) -> bool {
    // SAFETY: reading the type pointer of a live object.
    LIST_OK.load(Ordering::Relaxed)
        && std::ptr::eq(
            unsafe { ffi::Py_TYPE(obj) },
            std::ptr::addr_of_mut!(ffi::PyList_Type),
        )
}

/// The items of a list checked with `is_direct_list`, as they are now.
///
/// # Safety
/// `list` must be a live object for which `is_direct_list` returned true, and
/// no Python code may run while the slice is used (it could resize the list).
#[inline]
pub unsafe fn list_items<'a>(list: *mut ffi::PyObject) -> &'a [*mut ffi::PyObject] {
    let head = &*list.cast::<ListHead>();
    let n = head.ob_base.ob_size.max(0) as usize;
    if n == 0 || head.ob_item.is_null() {
        &[]
    } else {
        std::slice::from_raw_parts(head.ob_item, n)
    }
}

// ---------- dicts ----------

/// A dict's entry array as it is now: entry `i` of `0..len` in insertion
/// order, deleted ones holding a null value.
#[derive(Clone, Copy)]
pub struct DictEntries {
    first: *const *mut ffi::PyObject,
    /// Pointers per entry (2: key, value; 3: hash, key, value).
    width: usize,
    len: usize,
}

impl DictEntries {
    /// Key and value of entry `i < len()` (value null if deleted).
    ///
    /// # Safety
    /// The dict must be unchanged since `dict_entries` returned this.
    pub unsafe fn get(&self, i: usize) -> (*mut ffi::PyObject, *mut ffi::PyObject) {
        let e = self.first.add(i * self.width + self.width - 2);
        (*e, *e.add(1))
    }

    /// The first live entry at or after index `from`: its key, its value and
    /// the index after it (deleted entries are skipped).
    ///
    /// # Safety
    /// As `get`.
    #[inline]
    pub unsafe fn next_live(
        &self,
        from: usize,
    ) -> Option<(*mut ffi::PyObject, *mut ffi::PyObject, usize)> {
        (from..self.len).find_map(|i| {
            let (key, value) = self.get(i);
            (!value.is_null()).then_some((key, value, i + 1))
        })
    }
}

/// The entries of `dict` when dicts are read directly and its table holds
/// them (not a split instance dict); None otherwise.
///
/// # Safety
/// `dict` must be a live exact dict. The result is valid until the dict is
/// changed: no Python code may run while it is used.
pub unsafe fn dict_entries(dict: *mut ffi::PyObject) -> Option<DictEntries> {
    if !DICT_OK.load(Ordering::Relaxed) {
        return None;
    }
    let head = &*dict.cast::<DictHead>();
    if !head.ma_values.is_null() || head.ma_keys.is_null() {
        return None;
    }
    let keys = &*head.ma_keys;
    let width = match keys.dk_kind {
        DICT_KEYS_UNICODE => 2,
        DICT_KEYS_GENERAL => 3,
        _ => return None,
    };
    let indices = head
        .ma_keys
        .cast::<u8>()
        .add(std::mem::size_of::<DictKeysHead>());
    let first = indices
        .add(1usize << keys.dk_log2_index_bytes)
        .cast::<*mut ffi::PyObject>();
    Some(DictEntries {
        first,
        width,
        len: keys.dk_nentries.max(0) as usize,
    })
}

// ---------- numbers ----------

/// The number readers in force, loaded once per column.
#[derive(Clone, Copy)]
pub struct Numbers {
    long_form: u8,
    float_ok: bool,
}

/// The number readers in force now.
#[inline]
pub fn numbers() -> Numbers {
    Numbers {
        long_form: LONG_FORM.load(Ordering::Relaxed),
        float_ok: FLOAT_OK.load(Ordering::Relaxed),
    }
}

impl Numbers {
    /// The value of an exact `int` that fits in 60 bits; None for anything
    /// else (the caller then asks the C API).
    #[inline(always)]
    pub fn int_value(self, obj: *mut ffi::PyObject) -> Option<i64> {
        // SAFETY: the type pointer of a live object; the header is read only for exact ints.
        unsafe {
            if self.long_form == LONG_OFF
                || !std::ptr::eq(ffi::Py_TYPE(obj), std::ptr::addr_of_mut!(ffi::PyLong_Type))
            {
                return None;
            }
            let head = &*obj.cast::<LongHead>();
            let (ndigits, negative) = if self.long_form == LONG_TAG {
                let tag = head.size_or_tag as usize;
                (tag >> 3, tag & 3 == 2)
            } else {
                (head.size_or_tag.unsigned_abs(), head.size_or_tag < 0)
            };
            let magnitude = match ndigits {
                0 => 0,
                1 => i64::from(head.digits[0]),
                2 => i64::from(head.digits[0]) | (i64::from(head.digits[1]) << 30),
                _ => return None,
            };
            Some(if negative { -magnitude } else { magnitude })
        }
    }

    /// The value of an exact `float`; None for anything else.
    #[inline(always)]
    pub fn float_value(self, obj: *mut ffi::PyObject) -> Option<f64> {
        // SAFETY: as above; the header is read only for exact floats.
        unsafe {
            if self.float_ok
                && std::ptr::eq(ffi::Py_TYPE(obj), std::ptr::addr_of_mut!(ffi::PyFloat_Type))
            {
                Some((*obj.cast::<FloatHead>()).ob_fval)
            } else {
                None
            }
        }
    }
}

// ---------- numpy ----------

/// The memory of a numpy array (exact `ndarray`, native byte order, a plain
/// number dtype), or None: then the buffer protocol is the way in.
#[inline]
pub fn ndarray<'a>(obj: &'a Bound<'_, PyAny>) -> Option<ArrayView<'a>> {
    let t = NDARRAY.load(Ordering::Relaxed);
    // SAFETY: `t` is non-null only after the ndarray layout passed its check,
    // and then only objects of exactly that type are read.
    unsafe {
        if t.is_null() || !std::ptr::eq(ffi::Py_TYPE(obj.as_ptr()), t) {
            return None;
        }
        array_view(obj.as_ptr())
    }
}

/// # Safety
/// `obj` must be a live numpy array whose layout was checked.
unsafe fn array_view<'a>(obj: *mut ffi::PyObject) -> Option<ArrayView<'a>> {
    let head = &*obj.cast::<ArrayHead>();
    let ndim = usize::try_from(head.nd).ok()?;
    let descr = head.descr.as_ref()?;
    let little = cfg!(target_endian = "little");
    match descr.byteorder as u8 {
        b'=' | b'|' => {}
        b'<' if little => {}
        b'>' if !little => {}
        _ => return None,
    }
    let elem = elem_of(descr.type_num)?;
    let (shape, strides): (&[isize], &[isize]) = if ndim == 0 {
        (&[], &[])
    } else {
        (
            std::slice::from_raw_parts(head.dimensions, ndim),
            std::slice::from_raw_parts(head.strides, ndim),
        )
    };
    Some(ArrayView {
        data: head.data,
        shape,
        strides,
        elem,
    })
}

/// numpy's type numbers (fixed since numpy 1.0) to element kinds.
fn elem_of(type_num: c_int) -> Option<Elem> {
    let long8 = std::mem::size_of::<std::os::raw::c_long>() == 8;
    Some(match type_num {
        0 | 2 => Elem::U8, // bool, ubyte
        1 => Elem::I8,
        3 => Elem::I16,
        4 => Elem::U16,
        5 => Elem::I32,
        6 => Elem::U32,
        7 if long8 => Elem::I64,
        7 => Elem::I32,
        8 if long8 => Elem::U64,
        8 => Elem::U32,
        9 => Elem::I64,
        10 => Elem::U64,
        11 => Elem::F32,
        12 => Elem::F64,
        _ => return None,
    })
}

/// Called on an object that has no direct reader: once numpy is loaded,
/// check its ndarray layout (once per process) so later arrays are read
/// directly. Never fails: a check that cannot run leaves the buffer path.
pub fn learn_ndarray(py: Python<'_>) {
    if ND_STATE.load(Ordering::Relaxed) != ND_UNTRIED {
        return;
    }
    let Ok(modules) = py.import("sys").and_then(|s| s.getattr("modules")) else {
        return;
    };
    let Ok(Some(np)) =
        modules
            .call_method1("get", ("numpy",))
            .map(|m| if m.is_none() { None } else { Some(m) })
    else {
        return; // not loaded (yet): try again on a later call
    };
    let state = match check_ndarray(py, &np) {
        Ok(Some(t)) => {
            NDARRAY.store(t, Ordering::Relaxed);
            ND_OK
        }
        _ => ND_FAILED,
    };
    ND_STATE.store(state, Ordering::Relaxed);
}

/// The ndarray type when a direct read of sample arrays (several dtypes, a
/// strided 2-D slice, a 0-d array) agrees with their buffer exports.
fn check_ndarray(
    py: Python<'_>,
    np: &Bound<'_, PyAny>,
) -> PyResult<Option<*mut ffi::PyTypeObject>> {
    let ndarray = np.getattr("ndarray")?;
    let base = np
        .call_method1("arange", (24,))?
        .call_method1("reshape", (4, 6))?;
    let mut samples = Vec::new();
    for (dtype, want) in [
        ("int64", Elem::I64),
        ("int32", Elem::I32),
        ("uint32", Elem::U32),
        ("float32", Elem::F32),
        ("float64", Elem::F64),
        ("int16", Elem::I16),
        ("uint8", Elem::U8),
    ] {
        let a = base.call_method1("astype", (dtype,))?;
        let sliced = a.get_item((py.Ellipsis(), pyo3::types::PySlice::new(py, 1, 6, 2)))?;
        samples.push((a.clone(), want));
        samples.push((sliced, want));
        samples.push((a.get_item((1, 2))?.call_method0("__array__")?, want));
    }
    for (obj, want) in &samples {
        if !std::ptr::eq(obj.get_type().as_type_ptr(), ndarray.as_ptr().cast()) {
            return Ok(None);
        }
        // SAFETY: a live object of the type under test; read only to compare.
        let direct = unsafe { array_view(obj.as_ptr()) };
        let Some(direct) = direct else {
            return Ok(None);
        };
        let interface = obj.getattr("__array_interface__")?;
        let interface = interface.downcast::<PyDict>()?;
        let Some(data) = interface.get_item("data")? else {
            return Ok(None);
        };
        let address: usize = data.get_item(0)?.extract()?;
        let shape: Vec<isize> = obj.getattr("shape")?.extract()?;
        let strides: Vec<isize> = obj.getattr("strides")?.extract()?;
        if direct.elem != *want
            || direct.data as usize != address
            || direct.shape != shape.as_slice()
            || direct.strides != strides.as_slice()
        {
            return Ok(None);
        }
    }
    Ok(Some(ndarray.as_ptr().cast()))
}

// ---------- start-up checks ----------

/// Check the CPython layouts on sample objects; called once when the module
/// loads. A layout whose check fails stays off.
pub fn init(py: Python<'_>) -> PyResult<()> {
    LIST_OK.store(check_list(py)?, Ordering::Relaxed);
    DICT_OK.store(check_dict(py)?, Ordering::Relaxed);
    FLOAT_OK.store(check_float(py)?, Ordering::Relaxed);
    LONG_FORM.store(check_long(py)?, Ordering::Relaxed);
    Ok(())
}

fn check_list(py: Python<'_>) -> PyResult<bool> {
    let list = PyList::new(py, ["a", "b", "c"])?;
    list.append(4)?;
    let p = list.as_ptr();
    // SAFETY: `p` is a live exact list; compared against the C API's answers.
    unsafe {
        if !std::ptr::eq(ffi::Py_TYPE(p), std::ptr::addr_of_mut!(ffi::PyList_Type)) {
            return Ok(false);
        }
        let head = &*p.cast::<ListHead>();
        if head.ob_base.ob_size != ffi::PyList_Size(p) || head.ob_item.is_null() {
            return Ok(false);
        }
        for i in 0..4 {
            if *head.ob_item.add(i) != ffi::PyList_GetItem(p, i as isize) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Dicts of str keys and of other keys, with a deleted entry, a large table
/// and an emptied one: read directly, each must give `PyDict_Next`'s entries
/// in its order.
fn check_dict(py: Python<'_>) -> PyResult<bool> {
    let text = PyDict::new(py);
    for (i, k) in ["a", "b", "c", "d"].into_iter().enumerate() {
        text.set_item(k, i)?;
    }
    text.del_item("b")?;
    text.set_item("e", 9)?;
    let numbers = PyDict::new(py);
    for i in 0..1000 {
        numbers.set_item(i * 7, i)?;
    }
    numbers.del_item(14)?;
    let empty = PyDict::new(py);
    empty.set_item("x", 1)?;
    empty.del_item("x")?;
    DICT_OK.store(true, Ordering::Relaxed);
    for d in [&text, &numbers, &empty] {
        let p = d.as_ptr();
        // SAFETY: live exact dicts, unchanged while compared with the C API.
        let same = unsafe {
            let Some(entries) = dict_entries(p) else {
                DICT_OK.store(false, Ordering::Relaxed);
                return Ok(false);
            };
            let mut direct = Vec::new();
            let mut at = 0;
            while let Some((k, v, after)) = entries.next_live(at) {
                direct.push((k, v));
                at = after;
            }
            let mut api = Vec::new();
            let (mut pos, mut k, mut v) = (0, std::ptr::null_mut(), std::ptr::null_mut());
            while ffi::PyDict_Next(p, &mut pos, &mut k, &mut v) != 0 {
                api.push((k, v));
            }
            direct == api && api.len() == d.len()
        };
        if !same {
            DICT_OK.store(false, Ordering::Relaxed);
            return Ok(false);
        }
    }
    Ok(true)
}

fn check_float(py: Python<'_>) -> PyResult<bool> {
    for v in [0.0f64, -1.5, 3.25e-7, 1e300] {
        let obj = v.into_pyobject(py)?;
        // SAFETY: a live exact float; compared with the value it was made from.
        let direct = unsafe { (*obj.as_ptr().cast::<FloatHead>()).ob_fval };
        if direct.to_bits() != v.to_bits() {
            return Ok(false);
        }
    }
    Ok(true)
}

fn check_long(py: Python<'_>) -> PyResult<u8> {
    // SAFETY: reading an exported constant.
    let form = if unsafe { ffi::Py_Version } >= 0x030C_0000 {
        LONG_TAG
    } else {
        LONG_SIZE
    };
    LONG_FORM.store(form, Ordering::Relaxed);
    let samples: [i64; 10] = [
        0,
        1,
        7,
        255,
        (1 << 30) - 1,
        1 << 30,
        (1 << 45) + 3,
        (1 << 60) - 1,
        -1,
        -(1 << 40) - 9,
    ];
    for v in samples {
        let obj = v.into_pyobject(py)?;
        if numbers().int_value(obj.as_ptr()) != Some(v) {
            LONG_FORM.store(LONG_OFF, Ordering::Relaxed);
            return Ok(LONG_OFF);
        }
    }
    // Beyond two digits the API is asked.
    let big = (1i64 << 61).into_pyobject(py)?;
    if numbers().int_value(big.as_ptr()).is_some() {
        return Ok(LONG_OFF);
    }
    Ok(form)
}

/// Which direct readers are on: (lists, ints, floats, numpy, dicts), for
/// tests and the benchmark's report.
pub fn status() -> (bool, bool, bool, bool, bool) {
    (
        LIST_OK.load(Ordering::Relaxed),
        LONG_FORM.load(Ordering::Relaxed) != LONG_OFF,
        FLOAT_OK.load(Ordering::Relaxed),
        ND_STATE.load(Ordering::Relaxed) == ND_OK,
        DICT_OK.load(Ordering::Relaxed),
    )
}
