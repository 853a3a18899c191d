//! Free space on the data disk. Uploads and conversions stop short of a reserve, so that the
//! database always has room to record what happened and to delete files: a disk filled to the
//! last byte would refuse the very deletes that free it.

use std::path::Path;

/// Bytes available to this process on the filesystem holding `dir`, if it can be asked.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let dir = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs(3) fills the struct it is given; it is read only on success.
    unsafe {
        let mut fs: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(dir.as_ptr(), &mut fs) == 0)
            .then(|| (fs.f_bavail as u64).saturating_mul(fs.f_frsize as u64))
    }
}

/// Whether writing `extra` more bytes under `dir` would leave less than `reserve` free.
pub fn would_dip_into_reserve(dir: &Path, extra: u64, reserve: u64) -> bool {
    reserve > 0 && free_bytes(dir).is_some_and(|free| free < reserve.saturating_add(extra))
}
