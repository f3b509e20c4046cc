//! Reading the traced app's memory with `process_vm_readv`.
//!
//! The app's pointers are untrusted: a read may hit an unmapped page (EFAULT) or the thread
//! may be gone (ESRCH). Every read is length-capped by the caller and a short read counts as
//! a fault, which is what the kernel itself would report for the same pointer.

use std::io;

use super::syscall;

/// Copies exactly `buf.len()` bytes from address `addr` in the address space of thread
/// `tid`. A partial copy is reported as EFAULT.
pub fn read_exact(tid: u32, addr: u64, buf: &mut [u8]) -> io::Result<()> {
    if buf.is_empty() {
        return Ok(());
    }
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as usize as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: `local` describes `buf`, which is writable for its whole length; `remote` is
    // only dereferenced by the kernel in the other process, with fault checking.
    let ret = unsafe { libc::process_vm_readv(tid as libc::pid_t, &local, 1, &remote, 1, 0) };
    let n = syscall!(ret)?;
    if n as usize != buf.len() {
        return Err(io::Error::from_raw_os_error(libc::EFAULT));
    }
    Ok(())
}

/// Copies `len` bytes from `addr` in thread `tid` into a new vector.
pub fn read_vec(tid: u32, addr: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    read_exact(tid, addr, &mut buf)?;
    Ok(buf)
}

/// Copies `data` to address `addr` in thread `tid`'s address space. A partial copy is
/// reported as EFAULT, as the kernel would for the same pointer.
///
/// Used only to return results of calls sctrace answers itself (received datagrams, peer
/// addresses): the call is then answered with a value, never continued, so the app can't
/// observe a half-done call.
pub fn write_all(tid: u32, addr: u64, data: &[u8]) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let local = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as usize as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: `local` describes `data`, which is readable for its whole length (the kernel
    // only reads it); `remote` is only dereferenced by the kernel in the other process.
    let ret = unsafe { libc::process_vm_writev(tid as libc::pid_t, &local, 1, &remote, 1, 0) };
    let n = syscall!(ret)?;
    if n as usize != data.len() {
        return Err(io::Error::from_raw_os_error(libc::EFAULT));
    }
    Ok(())
}
