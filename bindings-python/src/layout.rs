//! Object layouts read directly, sealed per CPython version.
//!
//! Through the limited (abi3) C API every list item, int and float is an
//! exported function call (`PyList_GetItem`, `PyLong_AsLongLong`, …), a dict
//! is walked one `PyDict_Next` call per entry, and a numpy array is a buffer
//! export that allocates its format string: together most of a step's cost
//! at batch 256. This module reads those objects straight from memory, the
//! way a profiler reads an interpreter's — but only where that is known to be
//! safe, as py-spy answers an interpreter it has no layout for with
//! "unsupported":
//!
//! 1. **Sealed versions.** [`SEALED`] holds, for each CPython minor version
//!    CI tests (3.11, 3.12, 3.13), what its headers define for the objects
//!    read here. Any other version, a free-threaded build (whose safety
//!    argument differs: a borrowed slice is safe to hold only because no
//!    other thread runs Python code under the GIL), or
//!    `TOKTRACE_DIRECT_READS=0` takes the C-API path everywhere, with the
//!    same results.
//! 2. **Sizes before pointers.** On a sealed version each type's
//!    `__basicsize__` and `__itemsize__` must equal the sealed ones before any
//!    of its fields is read, so no check follows a pointer from an offset
//!    that is not known to be right.
//! 3. **Then values.** Each layout is used only after a direct read of sample
//!    objects gives exactly what the C API gives.
//!
//! numpy's ndarray header (stable since numpy 1.7) is learned the same way,
//! once numpy is loaded, and only when the CPython layouts are read directly.
//! All the layout facts live here and nowhere else; [`report`] says which
//! path runs and why (`toktrace._native.direct_reads()`, the trace's process
//! record).

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyType};
use std::os::raw::{c_char, c_int};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, Ordering};
use std::sync::OnceLock;

// ---------- the sealed versions ----------

/// A type's `__basicsize__` and `__itemsize__`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Size {
    basic: isize,
    item: isize,
}

/// How an `int` keeps its digit count and sign in the word after its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LongForm {
    /// `ob_size`: the signed digit count (3.11).
    SignedSize,
    /// `lv_tag`: the digit count shifted left by 3, the sign in the low two
    /// bits (0 positive, 1 zero, 2 negative; 3.12 on).
    Tag,
}

/// What one CPython minor version's headers define, in a release GIL build,
/// for the objects read directly. The heads below ([`ListHead`],
/// [`FloatHead`], [`LongHead`], [`DictHead`], [`DictKeysHead`]) are the same in
/// every version sealed so far; a version whose heads differ gets heads of
/// its own beside these, not a patch to them.
#[derive(Debug)]
pub struct Sealed {
    /// The minor version: 3.`minor`.
    minor: u32,
    list: Size,
    float: Size,
    int: Size,
    dict: Size,
    long_form: LongForm,
}

/// The versions read directly (the ones CI runs the package tests on).
/// Sources: `Include/cpython/listobject.h`, `floatobject.h`,
/// `longintrepr.h`, `dictobject.h` and `Objects/dict-common.h`
/// (`Include/internal/pycore_dict.h` from 3.12) of each release; the sizes
/// are what `type.__basicsize__` / `__itemsize__` print on 3.11.7, 3.12.1 and
/// 3.13.0.
static SEALED: [Sealed; 3] = [
    Sealed {
        minor: 11,
        list: Size { basic: 40, item: 0 },
        float: Size { basic: 24, item: 0 },
        int: Size { basic: 24, item: 4 },
        dict: Size { basic: 48, item: 0 },
        long_form: LongForm::SignedSize,
    },
    Sealed {
        minor: 12,
        list: Size { basic: 40, item: 0 },
        float: Size { basic: 24, item: 0 },
        int: Size { basic: 24, item: 4 },
        dict: Size { basic: 48, item: 0 },
        long_form: LongForm::Tag,
    },
    Sealed {
        minor: 13,
        list: Size { basic: 40, item: 0 },
        float: Size { basic: 24, item: 0 },
        int: Size { basic: 24, item: 4 },
        dict: Size { basic: 48, item: 0 },
        long_form: LongForm::Tag,
    },
];

/// The environment switch: `0`, `off`, `false` or `no` turns direct reads off.
pub const SWITCH: &str = "TOKTRACE_DIRECT_READS";

/// The sealed layout for this interpreter, or why there is none. Pure, so
/// every branch is tested without the interpreter it names.
///
/// `version` is `Py_Version` (`0xMMmmppxx`), `free_threaded` whether the
/// build or the running interpreter has the GIL off, `switch` the value of
/// [`SWITCH`].
fn choose(
    version: u32,
    free_threaded: bool,
    switch: Option<&str>,
) -> Result<&'static Sealed, String> {
    if let Some(v) = switch {
        if matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "0" | "off" | "false" | "no"
        ) {
            return Err(format!("{SWITCH}={v}"));
        }
    }
    let (major, minor) = (version >> 24, (version >> 16) & 0xff);
    if free_threaded {
        return Err(format!(
            "CPython {major}.{minor} runs free-threaded (the GIL is off): objects may change while read"
        ));
    }
    let sealed: Vec<String> = SEALED.iter().map(|s| format!("3.{}", s.minor)).collect();
    SEALED
        .iter()
        .find(|s| major == 3 && s.minor == minor)
        .ok_or_else(|| {
            format!(
                "CPython {major}.{minor} has no sealed layout (sealed: {})",
                sealed.join(", ")
            )
        })
}

// ---------- object heads ----------

/// `PyListObject` up to its item array (`allocated` follows, not read).
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

/// `PyLongObject` up to its digits: the object header and the word that is
/// `ob_size` or `lv_tag` ([`LongForm`]). The digits (30 bits in each `u32`)
/// follow; an int holds only as many as it needs, so they are read through
/// a pointer, one by one, never as part of this struct.
#[repr(C)]
struct LongHead {
    ob_base: ffi::PyObject,
    size_or_tag: isize,
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

/// `PyDictObject` (`ma_version_tag` is a watcher tag from 3.13, the same
/// size). Fields not read stay for their place in the layout.
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
/// array follows: the compact form of 3.11, unchanged in the GIL builds
/// since (3.13's `dk_mutex` exists only in free-threaded builds).
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

// No head reads past what its type's `__basicsize__` promises.
const _: () = {
    let s = &SEALED;
    let mut i = 0;
    while i < s.len() {
        assert!(std::mem::size_of::<ListHead>() as isize <= s[i].list.basic);
        assert!(std::mem::size_of::<FloatHead>() as isize <= s[i].float.basic);
        assert!(std::mem::size_of::<LongHead>() as isize <= s[i].int.basic);
        assert!(std::mem::size_of::<DictHead>() as isize <= s[i].dict.basic);
        i += 1;
    }
};

/// `dk_kind`: entries are (hash, key, value) / (key, value) / split away.
const DICT_KEYS_GENERAL: u8 = 0;
const DICT_KEYS_UNICODE: u8 = 1;

const LONG_OFF: u8 = 0;
const LONG_SIZE: u8 = 1;
const LONG_TAG: u8 = 2;

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
/// The interpreter's verdict and what each check found, set once at load.
static VERDICT: OnceLock<Verdict> = OnceLock::new();

/// What `init` decided: the sealed layout in force (None: the C-API path)
/// and why, with any reader a check turned off.
struct Verdict {
    sealed: Option<&'static Sealed>,
    why: String,
}

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
///
/// # Safety
/// `obj` must be a live object.
#[inline]
pub unsafe fn is_direct_list(obj: *mut ffi::PyObject) -> bool {
    LIST_OK.load(Ordering::Relaxed)
        && std::ptr::eq(ffi::Py_TYPE(obj), std::ptr::addr_of_mut!(ffi::PyList_Type))
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
/// them (not a split instance dict) in the form known here; None otherwise.
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
    // A table that does not hold together (index bytes per slot 1, 2, 4 or
    // 8; no more entries than slots) is not read, whatever made it so.
    let (log2_size, log2_index) = (keys.dk_log2_size, keys.dk_log2_index_bytes);
    let len = usize::try_from(keys.dk_nentries).ok()?;
    if log2_size >= 48
        || !(log2_size..=log2_size + 3).contains(&log2_index)
        || len > 1usize << log2_size
    {
        return None;
    }
    let indices = head
        .ma_keys
        .cast::<u8>()
        .add(std::mem::size_of::<DictKeysHead>());
    let first = indices
        .add(1usize << log2_index)
        .cast::<*mut ffi::PyObject>();
    Some(DictEntries { first, width, len })
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
    ///
    /// # Safety
    /// `obj` must be a live object.
    #[inline(always)]
    pub unsafe fn int_value(self, obj: *mut ffi::PyObject) -> Option<i64> {
        if self.long_form == LONG_OFF
            || !std::ptr::eq(ffi::Py_TYPE(obj), std::ptr::addr_of_mut!(ffi::PyLong_Type))
        {
            return None;
        }
        let size_or_tag = (*obj.cast::<LongHead>()).size_or_tag;
        let (ndigits, negative) = if self.long_form == LONG_TAG {
            let tag = size_or_tag as usize;
            (tag >> 3, tag & 3 == 2)
        } else {
            (size_or_tag.unsigned_abs(), size_or_tag < 0)
        };
        // The digits follow the head; an int holds `ndigits` of them (one for 0).
        let digits = obj
            .cast::<u8>()
            .add(std::mem::size_of::<LongHead>())
            .cast::<u32>();
        let magnitude = match ndigits {
            0 => 0,
            1 => i64::from(*digits),
            2 => i64::from(*digits) | (i64::from(*digits.add(1)) << 30),
            _ => return None,
        };
        Some(if negative { -magnitude } else { magnitude })
    }

    /// The value of an exact `float`; None for anything else.
    ///
    /// # Safety
    /// `obj` must be a live object.
    #[inline(always)]
    pub unsafe fn float_value(self, obj: *mut ffi::PyObject) -> Option<f64> {
        if self.float_ok
            && std::ptr::eq(ffi::Py_TYPE(obj), std::ptr::addr_of_mut!(ffi::PyFloat_Type))
        {
            Some((*obj.cast::<FloatHead>()).ob_fval)
        } else {
            None
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
/// `obj` must be a live numpy array whose type's size was checked.
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
    if VERDICT.get().and_then(|v| v.sealed).is_none() {
        ND_STATE.store(ND_FAILED, Ordering::Relaxed);
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

/// The ndarray type when its objects and dtypes are large enough to hold
/// the heads read here, and a direct read of sample arrays (several dtypes,
/// a strided 2-D slice, a 0-d array) agrees with their array interface.
fn check_ndarray(
    py: Python<'_>,
    np: &Bound<'_, PyAny>,
) -> PyResult<Option<*mut ffi::PyTypeObject>> {
    let ndarray = np.getattr("ndarray")?.downcast_into::<PyType>()?;
    let dtype = np.getattr("dtype")?.downcast_into::<PyType>()?;
    if basic_size(&ndarray)?.basic < std::mem::size_of::<ArrayHead>() as isize
        || basic_size(&dtype)?.basic < std::mem::size_of::<DescrHead>() as isize
    {
        return Ok(None);
    }
    let base = np
        .call_method1("arange", (24,))?
        .call_method1("reshape", (4, 6))?;
    let mut samples = Vec::new();
    for (name, want) in [
        ("int64", Elem::I64),
        ("int32", Elem::I32),
        ("uint32", Elem::U32),
        ("float32", Elem::F32),
        ("float64", Elem::F64),
        ("int16", Elem::I16),
        ("uint8", Elem::U8),
    ] {
        let a = base.call_method1("astype", (name,))?;
        let sliced = a.get_item((py.Ellipsis(), pyo3::types::PySlice::new(py, 1, 6, 2)))?;
        samples.push((a.clone(), want));
        samples.push((sliced, want));
        samples.push((a.get_item((1, 2))?.call_method0("__array__")?, want));
    }
    for (obj, want) in &samples {
        // Exactly ndarray, with a dtype object of exactly numpy's dtype
        // class or a subclass (numpy 2 makes one per kind): checked before
        // the array's head is read.
        if !obj.get_type().is(&ndarray) || !obj.getattr("dtype")?.is_instance(&dtype)? {
            return Ok(None);
        }
        // SAFETY: a live object of the type under test, whose size holds
        // the head; read only to compare.
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
    Ok(Some(ndarray.as_type_ptr()))
}

// ---------- start-up checks ----------

/// A type's sizes as Python reports them.
fn basic_size(t: &Bound<'_, PyType>) -> PyResult<Size> {
    Ok(Size {
        basic: t.getattr("__basicsize__")?.extract()?,
        item: t.getattr("__itemsize__")?.extract()?,
    })
}

/// Whether this interpreter runs without the GIL, by its build (`t` in
/// `sys.abiflags`, set by `Py_GIL_DISABLED`) or at run time
/// (`sys._is_gil_enabled()`, 3.13 on). Asked through `sys` so that a test can
/// stand in for a free-threaded interpreter.
fn free_threaded(py: Python<'_>) -> PyResult<bool> {
    let sys = py.import("sys")?;
    let abiflags: String = sys
        .getattr("abiflags")
        .and_then(|f| f.extract())
        .unwrap_or_default();
    if abiflags.contains('t') {
        return Ok(true);
    }
    match sys.getattr("_is_gil_enabled") {
        Ok(f) => Ok(!f.call0()?.is_truthy()?),
        Err(_) => Ok(false),
    }
}

/// Decide once, when the module loads, which objects are read directly:
/// the interpreter's sealed layout ([`choose`]), then each type's sizes, then
/// its sample check. Never fails: anything unexpected, an exception from a
/// check included, leaves the C-API path, and [`report`] says why.
pub fn init(py: Python<'_>) {
    let verdict = decide(py).unwrap_or_else(|e| {
        for flag in [&LIST_OK, &DICT_OK, &FLOAT_OK] {
            flag.store(false, Ordering::Relaxed);
        }
        LONG_FORM.store(LONG_OFF, Ordering::Relaxed);
        Verdict {
            sealed: None,
            why: format!("a start-up check failed: {e}"),
        }
    });
    let _ = VERDICT.set(verdict);
}

fn decide(py: Python<'_>) -> PyResult<Verdict> {
    // SAFETY: reading an exported constant (3.11 on, in the stable ABI).
    let version = unsafe { ffi::Py_Version } as u32;
    let switch = std::env::var(SWITCH).ok();
    let sealed = match choose(version, free_threaded(py)?, switch.as_deref()) {
        Ok(sealed) => sealed,
        Err(why) => return Ok(Verdict { sealed: None, why }),
    };
    let mut off = Vec::new();
    let mut reader = |name: &str, size: Size, check: &dyn Fn() -> PyResult<bool>| {
        if !sized(py, name, size, &mut off)? {
            return PyResult::Ok(false);
        }
        let agrees = check()?;
        if !agrees {
            off.push(format!(
                "{name}: a direct read of samples disagreed with the C API"
            ));
        }
        Ok(agrees)
    };
    LIST_OK.store(
        reader("list", sealed.list, &|| check_list(py))?,
        Ordering::Relaxed,
    );
    DICT_OK.store(
        reader("dict", sealed.dict, &|| check_dict(py))?,
        Ordering::Relaxed,
    );
    FLOAT_OK.store(
        reader("float", sealed.float, &|| check_float(py))?,
        Ordering::Relaxed,
    );
    reader("int", sealed.int, &|| check_long(py, sealed.long_form))?;
    let mut why = format!("CPython 3.{} layout (sealed)", sealed.minor);
    if !off.is_empty() {
        why.push_str("; off: ");
        why.push_str(&off.join("; "));
    }
    Ok(Verdict {
        sealed: Some(sealed),
        why,
    })
}

/// True when builtin type `name` has the sealed sizes; otherwise false, with
/// what differs added to `off`.
fn sized(py: Python<'_>, name: &str, want: Size, off: &mut Vec<String>) -> PyResult<bool> {
    let t = py
        .import("builtins")?
        .getattr(name)?
        .downcast_into::<PyType>()?;
    let got = basic_size(&t)?;
    if got != want {
        off.push(format!(
            "{name} is {}+{} bytes, the sealed layout says {}+{}",
            got.basic, got.item, want.basic, want.item
        ));
        return Ok(false);
    }
    Ok(true)
}

/// A list read directly must give `PyList_Size` and `PyList_GetItem`'s answers.
fn check_list(py: Python<'_>) -> PyResult<bool> {
    let list = PyList::new(py, ["a", "b", "c"])?;
    list.append(4)?;
    let p = list.as_ptr();
    // SAFETY: `p` is a live exact list whose type has the sealed size (checked
    // before this is called); compared against the C API's answers.
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
        // SAFETY: live exact dicts whose type has the sealed size, unchanged
        // while compared with the C API.
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

/// Floats read directly must hold the values they were made from, bit for bit.
fn check_float(py: Python<'_>) -> PyResult<bool> {
    for v in [0.0f64, -1.5, 3.25e-7, 1e300] {
        let obj = v.into_pyobject(py)?;
        // SAFETY: a live exact float whose type has the sealed size.
        let direct = unsafe { (*obj.as_ptr().cast::<FloatHead>()).ob_fval };
        if direct.to_bits() != v.to_bits() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Ints across the digit borders read in the sealed form must hold the
/// values they were made from, and one past two digits must be left to the
/// API. Leaves the form in force when they do.
fn check_long(py: Python<'_>, form: LongForm) -> PyResult<bool> {
    LONG_FORM.store(
        match form {
            LongForm::SignedSize => LONG_SIZE,
            LongForm::Tag => LONG_TAG,
        },
        Ordering::Relaxed,
    );
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
    let off = || {
        LONG_FORM.store(LONG_OFF, Ordering::Relaxed);
        Ok(false)
    };
    for v in samples {
        let obj = v.into_pyobject(py)?;
        // SAFETY: a live object.
        if unsafe { numbers().int_value(obj.as_ptr()) } != Some(v) {
            return off();
        }
    }
    // Beyond two digits the API is asked.
    let big = (1i64 << 61).into_pyobject(py)?;
    // SAFETY: a live object.
    if unsafe { numbers().int_value(big.as_ptr()) }.is_some() {
        return off();
    }
    Ok(true)
}

/// Which path runs and why, for `direct_reads()` and the process record.
pub struct Report {
    /// `"direct"` when the interpreter's layout is sealed, else `"c-api"`.
    pub path: &'static str,
    /// Why: the sealed layout and any reader a check turned off, or why
    /// there is none.
    pub why: String,
    pub lists: bool,
    pub ints: bool,
    pub floats: bool,
    /// Learned once numpy is loaded and an array came through the buffer path.
    pub numpy: bool,
    pub dicts: bool,
}

/// What [`init`] decided, with the readers in force now.
pub fn report() -> Report {
    let (path, why) = match VERDICT.get() {
        Some(Verdict {
            sealed: Some(_),
            why,
        }) => ("direct", why.clone()),
        Some(Verdict { sealed: None, why }) => ("c-api", why.clone()),
        None => ("c-api", "not decided yet".to_owned()),
    };
    Report {
        path,
        why,
        lists: LIST_OK.load(Ordering::Relaxed),
        ints: LONG_FORM.load(Ordering::Relaxed) != LONG_OFF,
        floats: FLOAT_OK.load(Ordering::Relaxed),
        numpy: ND_STATE.load(Ordering::Relaxed) == ND_OK,
        dicts: DICT_OK.load(Ordering::Relaxed),
    }
}

/// One line for the trace's process record: the path and why.
pub fn describe() -> String {
    let r = report();
    format!("{}: {}", r.path, r.why)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V3_11: u32 = 0x030B_07F0;
    const V3_12: u32 = 0x030C_01F0;
    const V3_13: u32 = 0x030D_00F0;

    #[test]
    fn each_tested_version_has_its_own_layout() {
        for (v, minor, form) in [
            (V3_11, 11, LongForm::SignedSize),
            (V3_12, 12, LongForm::Tag),
            (V3_13, 13, LongForm::Tag),
        ] {
            let sealed = choose(v, false, None).expect("sealed");
            assert_eq!((sealed.minor, sealed.long_form), (minor, form));
        }
    }

    #[test]
    fn versions_not_sealed_take_the_c_api() {
        for v in [0x030A_0DF0, 0x030E_00F0, 0x0400_00F0, 0x020B_0000] {
            let why = choose(v, false, None).expect_err("not sealed");
            assert!(why.contains("no sealed layout"), "{why}");
            assert!(why.contains("3.11, 3.12, 3.13"), "{why}");
        }
        assert!(choose(0x030E_00F0, false, None)
            .expect_err("3.14")
            .contains("CPython 3.14"));
    }

    #[test]
    fn free_threaded_builds_never_read_directly() {
        let why = choose(V3_13, true, None).expect_err("free-threaded");
        assert!(why.contains("free-threaded"), "{why}");
    }

    #[test]
    fn the_switch_turns_direct_reads_off() {
        for off in ["0", "off", "FALSE", " no "] {
            let why = choose(V3_12, false, Some(off)).expect_err("switched off");
            assert!(why.starts_with(SWITCH), "{why}");
        }
        for on in ["1", "", "yes"] {
            assert!(choose(V3_12, false, Some(on)).is_ok(), "{on:?}");
        }
    }
}
