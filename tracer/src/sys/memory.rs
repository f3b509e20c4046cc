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
    write_pieces(tid, &[(addr, data)])
}

/// Pieces given to one `process_vm_writev` at most (the kernel takes up to 1024 iovecs).
const PIECES_PER_CALL: usize = 512;

/// [`write_all`] for several pieces, `(address, data)`, in as few system calls as possible
/// (one for up to 512 pieces). Any piece copied short is EFAULT; pieces before it may have
/// been written, as with the same calls made one by one.
pub fn write_pieces(tid: u32, pieces: &[(u64, &[u8])]) -> io::Result<()> {
    for chunk in pieces.chunks(PIECES_PER_CALL) {
        let pieces: Vec<&(u64, &[u8])> = chunk.iter().filter(|(_, d)| !d.is_empty()).collect();
        if pieces.is_empty() {
            continue;
        }
        let local: Vec<libc::iovec> = pieces
            .iter()
            .map(|(_, data)| libc::iovec {
                iov_base: data.as_ptr() as *mut libc::c_void,
                iov_len: data.len(),
            })
            .collect();
        let remote: Vec<libc::iovec> = pieces
            .iter()
            .map(|(addr, data)| libc::iovec {
                iov_base: *addr as usize as *mut libc::c_void,
                iov_len: data.len(),
            })
            .collect();
        let total: usize = pieces.iter().map(|(_, d)| d.len()).sum();
        // SAFETY: each `local` iovec describes a slice readable for its whole length (the
        // kernel only reads them); `remote` ones are only dereferenced by the kernel in the
        // other process.
        let ret = unsafe {
            libc::process_vm_writev(
                tid as libc::pid_t,
                local.as_ptr(),
                local.len() as libc::c_ulong,
                remote.as_ptr(),
                remote.len() as libc::c_ulong,
                0,
            )
        };
        let n = syscall!(ret)?;
        if n as usize != total {
            return Err(io::Error::from_raw_os_error(libc::EFAULT));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_land_where_they_are_asked_and_a_bad_address_is_efault() {
        let tid = std::process::id();
        let mut a = [0u8; 4];
        let mut b = [0u8; 3];
        let (at_a, at_b) = (a.as_mut_ptr() as u64, b.as_mut_ptr() as u64);
        write_pieces(tid, &[(at_a, b"abcd"), (at_b, b""), (at_b, b"xyz")]).unwrap();
        assert_eq!((&a, &b), (b"abcd", b"xyz"));
        let err = write_pieces(tid, &[(at_a, b"1234"), (8, b"no")]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EFAULT));
        assert_eq!(&a, b"1234", "the pieces before the fault were written");
    }
}
