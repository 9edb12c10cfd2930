//! The dynamic loader: `dlsym(3)`, `dladdr(3)` and `dlopen(3)`, in
//! dynamically linked programs.

use core::ffi::{CStr, c_void};
use core::ptr::NonNull;

/// `dlsym(RTLD_DEFAULT, name)`: the address of the symbol `name` in the
/// loaded objects, or `None`.
#[inline]
pub(crate) fn dlsym_default(name: &CStr) -> Option<NonNull<c_void>> {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only
    // searches the loaded objects' symbol tables.
    NonNull::new(unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) })
}

/// A loaded object that stays loaded while ktl runs, as `dladdr(3)`
/// describes it: the one that holds ktl ([`ktl_object`]) or the executable
/// ([`executable_object`]).
#[cfg(not(any(target_feature = "crt-static", target_env = "musl")))]
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoadedObject {
    /// `dli_fname`: the object's name as the dynamic loader knows it, a
    /// NUL-terminated string the loader owns, valid while the object stays
    /// loaded.
    name: *const core::ffi::c_char,
    /// `dli_fbase`: the address the object is mapped at.
    base: *mut c_void,
}

#[cfg(not(any(target_feature = "crt-static", target_env = "musl")))]
impl LoadedObject {
    /// The address the object is mapped at.
    pub(crate) fn base(&self) -> usize {
        self.base.addr()
    }
}

/// `dladdr(3)`: the loaded object whose mappings contain `addr`, or `None`
/// when none does.
#[cfg(not(any(target_feature = "crt-static", target_env = "musl")))]
fn dladdr(addr: *const c_void) -> Option<LoadedObject> {
    let mut info = libc::Dl_info {
        dli_fname: core::ptr::null(),
        dli_fbase: core::ptr::null_mut(),
        dli_sname: core::ptr::null(),
        dli_saddr: core::ptr::null_mut(),
    };
    // SAFETY: dladdr only looks `addr` up in the loader's tables (it never
    // dereferences it) and writes the `Dl_info`, valid for writes.
    let found = unsafe { libc::dladdr(addr, &mut info) };
    (found != 0 && !info.dli_fname.is_null()).then_some(LoadedObject {
        name: info.dli_fname,
        base: info.dli_fbase,
    })
}

/// A static of ktl's, so in the object that holds ktl.
#[cfg(not(any(target_feature = "crt-static", target_env = "musl")))]
static ANCHOR: u8 = 0;

/// The loaded object that holds ktl (and so this code), or `None` when
/// `dladdr` finds none.
#[cfg(not(any(target_feature = "crt-static", target_env = "musl")))]
pub(crate) fn ktl_object() -> Option<LoadedObject> {
    dladdr(core::ptr::addr_of!(ANCHOR).cast::<c_void>())
}

/// The executable, the object that holds its program headers
/// (`AT_PHDR`), or `None` when `dladdr` finds none.
#[cfg(not(any(target_feature = "crt-static", target_env = "musl")))]
pub(crate) fn executable_object() -> Option<LoadedObject> {
    super::auxv::getauxval(super::auxv::AT_PHDR)
        .and_then(|phdr| dladdr(core::ptr::with_exposed_provenance::<c_void>(phdr as usize)))
}

/// `dlopen(name, RTLD_LAZY | RTLD_NOLOAD | RTLD_NODELETE)` of `object`:
/// makes the already loaded object permanent, so that no `dlclose` ever
/// unmaps it, and loads nothing. Returns the handle, a reference that the
/// caller must never close, or `None` when the loader refused; its message
/// is consumed then, so that the application's next `dlerror` does not
/// report it.
#[cfg(not(any(target_feature = "crt-static", target_env = "musl")))]
pub(crate) fn dlopen_nodelete(object: &LoadedObject) -> Option<NonNull<c_void>> {
    // RTLD_LAZY only because glibc requires a binding mode: with
    // RTLD_NOLOAD, an object that is already loaded is not relocated again.
    let mode = libc::RTLD_LAZY | libc::RTLD_NOLOAD | libc::RTLD_NODELETE;
    // SAFETY: `object.name` is the loader's NUL-terminated name of an object
    // that stays loaded while ktl runs (see `LoadedObject`: the one that
    // holds this code, which the program cannot rightly unload while it
    // calls into it, or the executable). With RTLD_NOLOAD the loader maps
    // and initializes nothing, it only finds the loaded object and marks it.
    let handle = unsafe { libc::dlopen(object.name, mode) };
    let handle = NonNull::new(handle);
    if handle.is_none() {
        // SAFETY: dlerror only returns (and clears) the calling thread's
        // pending message.
        unsafe { libc::dlerror() };
    }
    handle
}
