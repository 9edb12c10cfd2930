//! `ktl::random` for the rest of the ecosystem: an RNG for `rand_core`
//! (cargo feature `rand_core`) and a custom backend for the `getrandom` crate
//! (cargo feature `getrandom`).

#[cfg(feature = "getrandom")]
use core::mem::MaybeUninit;

#[cfg(any(feature = "getrandom", feature = "rand_core"))]
use super::RandomError;

/// A cryptographically secure RNG backed by [`fill`](super::fill): vDSO
/// getrandom with per-thread state, or the system call.
///
/// It holds no state of its own (each thread's generator state lives with
/// the thread), so it is free to create, copy and send between threads.
///
/// It implements `rand_core` 0.10's [`TryRng`](rand_core::TryRng) and
/// [`TryCryptoRng`](rand_core::TryCryptoRng), like the `getrandom` crate's
/// `SysRng`: the only error is a failed system call where the vDSO is
/// missing. `rand_core` 0.10 renamed `RngCore` to `Rng`; wrap it in
/// [`UnwrapErr`](rand_core::UnwrapErr) to get an `Rng + CryptoRng` that
/// panics on that error, as `rand`'s own generators do.
///
/// ```
/// use ktl::random::KtlRng;
/// use rand_core::{Rng, TryRng, UnwrapErr};
///
/// let mut key = [0u8; 32];
/// KtlRng.try_fill_bytes(&mut key)?;
///
/// let mut rng = UnwrapErr(KtlRng); // Rng + CryptoRng
/// let x = rng.next_u64();
/// # let _ = x;
/// # Ok::<(), ktl::random::RandomError>(())
/// ```
#[cfg(feature = "rand_core")]
#[cfg_attr(docsrs, doc(cfg(feature = "rand_core")))]
#[derive(Clone, Copy, Debug, Default)]
pub struct KtlRng;

#[cfg(feature = "rand_core")]
impl rand_core::TryRng for KtlRng {
    type Error = RandomError;

    #[inline]
    fn try_next_u32(&mut self) -> Result<u32, RandomError> {
        super::u32()
    }

    #[inline]
    fn try_next_u64(&mut self) -> Result<u64, RandomError> {
        super::u64()
    }

    #[inline]
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), RandomError> {
        super::fill(dst)
    }
}

#[cfg(feature = "rand_core")]
impl rand_core::TryCryptoRng for KtlRng {}

/// Fills the `getrandom` crate's buffer: the body of the function that
/// [`getrandom_backend!`](crate::getrandom_backend) defines.
///
/// A failed system call becomes `getrandom::Error::new_custom(errno)` (the
/// crate has no public constructor from an errno).
///
/// # Errors
///
/// As for [`fill`](super::fill).
#[cfg(feature = "getrandom")]
#[doc(hidden)]
pub fn getrandom_custom(dest: &mut [MaybeUninit<u8>]) -> Result<(), getrandom::Error> {
    super::fill_uninit(dest).map(|_| ()).map_err(|e| match e {
        RandomError::Syscall(errno) => {
            getrandom::Error::new_custom(u16::try_from(errno.0).unwrap_or(u16::MAX))
        }
    })
}

/// Makes the `getrandom` crate use [`ktl::random`](crate::random): defines
/// the crate's documented custom-backend hook, `__getrandom_v03_custom`.
///
/// Call it once, in the binary crate (a library must not: the hook may be
/// defined only once in a program), and select the custom backend in
/// `.cargo/config.toml`, as the `getrandom` crate requires:
///
/// ```toml
/// [target.'cfg(target_os = "linux")']
/// rustflags = ['--cfg', 'getrandom_backend="custom"']
/// ```
///
/// ```no_run
/// // main.rs
/// ktl::getrandom_backend!();
///
/// fn main() {
///     // rand, uuid and every other user of getrandom now take the vDSO path.
///     let mut buf = [0u8; 16];
///     getrandom::fill(&mut buf).unwrap();
/// }
/// ```
///
/// Requires the cargo feature `getrandom`. Without the `--cfg`, the hook is
/// defined but unused, and `getrandom` keeps its own backend.
#[cfg(feature = "getrandom")]
#[cfg_attr(docsrs, doc(cfg(feature = "getrandom")))]
#[macro_export]
macro_rules! getrandom_backend {
    () => {
        /// The `getrandom` crate's custom backend: `ktl::random`.
        ///
        /// # Safety
        ///
        /// `dest` must be valid for writes of `len` bytes, as the
        /// `getrandom` crate guarantees.
        #[unsafe(no_mangle)]
        unsafe extern "Rust" fn __getrandom_v03_custom(
            dest: *mut u8,
            len: usize,
        ) -> ::core::result::Result<(), $crate::__getrandom::Error> {
            // SAFETY: the `getrandom` crate passes a buffer valid for writes
            // of `len` bytes, possibly uninitialised, and non-null.
            let dest = unsafe {
                ::core::slice::from_raw_parts_mut(dest.cast::<::core::mem::MaybeUninit<u8>>(), len)
            };
            $crate::random::getrandom_custom(dest)
        }
    };
}

#[cfg(all(test, feature = "rand_core"))]
mod tests {
    use super::KtlRng;
    use rand_core::{CryptoRng, TryCryptoRng, TryRng, UnwrapErr};

    /// Draws through the infallible interface, as `rand` does.
    fn draw<R: CryptoRng>(rng: &mut R) -> (u32, u64, [u8; 48]) {
        let mut b = [0u8; 48];
        rng.fill_bytes(&mut b);
        (rng.next_u32(), rng.next_u64(), b)
    }

    fn try_draw<R: TryCryptoRng>(rng: &mut R) -> Result<[u8; 32], R::Error> {
        let mut b = [0u8; 32];
        rng.try_fill_bytes(&mut b)?;
        Ok(b)
    }

    #[test]
    fn rng_outputs_differ() {
        let mut rng = UnwrapErr(KtlRng);
        let a = draw(&mut rng);
        let b = draw(&mut rng);
        assert_ne!(a, b);
        assert_ne!(a.2, [0u8; 48]);
        let x = try_draw(&mut KtlRng).unwrap();
        let y = try_draw(&mut KtlRng).unwrap();
        assert_ne!(x, y);
        assert_ne!(
            KtlRng.try_next_u64().unwrap(),
            KtlRng.try_next_u64().unwrap()
        );
    }
}
