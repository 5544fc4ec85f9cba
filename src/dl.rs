//! Run-time loading of shared libraries and symbols (the C library's dlopen/dlsym): NVML,
//! libtorch's CUDA backend, MKL's BLAS inside libtorch. One declaration of each for the
//! crate.

use std::ffi::{c_char, c_int, c_void, CStr, CString};

extern "C" {
    fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
    fn dlsym(handle: *mut c_void, name: *const c_char) -> usize;
    fn dlerror() -> *const c_char;
}

const RTLD_NOW: c_int = 2;
const RTLD_GLOBAL: c_int = 0x100;

/// A loaded library (never unloaded: its code may be registered with others).
#[derive(Clone, Copy)]
pub struct Library(*mut c_void);

// The handle is an opaque token the loader accepts from any thread.
unsafe impl Send for Library {}
unsafe impl Sync for Library {}

/// Load `name` (searched like the executable's own dependencies) with its symbols global;
/// the loader's message on failure.
pub fn open(name: &str) -> Result<Library, String> {
    let c = CString::new(name).map_err(|e| e.to_string())?;
    // SAFETY: a C string; the flags are the loader's.
    let h = unsafe { dlopen(c.as_ptr(), RTLD_NOW | RTLD_GLOBAL) };
    if h.is_null() {
        // SAFETY: dlerror returns null or a C string valid until the next dl call.
        let msg = unsafe { dlerror() };
        return Err(if msg.is_null() {
            format!("cannot load {name}")
        } else {
            unsafe { CStr::from_ptr(msg) }
                .to_string_lossy()
                .into_owned()
        });
    }
    Ok(Library(h))
}

impl Library {
    /// The address of `name` in this library, or None.
    pub fn symbol(&self, name: &str) -> Option<usize> {
        let c = CString::new(name).ok()?;
        // SAFETY: a handle from dlopen and a C string.
        let p = unsafe { dlsym(self.0, c.as_ptr()) };
        (p != 0).then_some(p)
    }
}

/// The address of a symbol in the process's global scope, or None.
pub fn global_symbol(name: &CStr) -> Option<usize> {
    // SAFETY: RTLD_DEFAULT (null) searches the global scope; the name is a C string.
    let p = unsafe { dlsym(std::ptr::null_mut(), name.as_ptr()) };
    (p != 0).then_some(p)
}
