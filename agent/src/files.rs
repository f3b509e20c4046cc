//! Running out of file descriptors: the agent says so at most once a minute, with its
//! limit and what to do, however many calls fail meanwhile (a full table fails every accept
//! and every new relay until some connection closes).

use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The least time between two reports.
const REPORT_EVERY: Duration = Duration::from_secs(60);

static LAST_REPORT: Mutex<Option<Instant>> = Mutex::new(None);

/// Whether `err` says the process (EMFILE) or the system (ENFILE) has no file left.
pub fn exhausted(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(nix::libc::EMFILE) | Some(nix::libc::ENFILE)
    )
}

/// Reports `err` if it is a lack of files and none was reported in the last minute; `what`
/// says what could not be done ("a connection was refused", ...). Returns whether `err`
/// was such a lack.
pub fn report_if_exhausted(err: &io::Error, what: &str) -> bool {
    if !exhausted(err) {
        return false;
    }
    if due(&LAST_REPORT, Instant::now()) {
        let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| soft.to_string())
            .unwrap_or_else(|_| "unknown".into());
        tracing::warn!(
            error = %err,
            "out of file descriptors (the limit is {limit}): {what}; each relayed TCP connection holds two (four more while bytes are in flight); raise the agent's RLIMIT_NOFILE (further reports of this are held for a minute)"
        );
    }
    true
}

/// Whether a report is due at `now`, recording it if so.
fn due(last: &Mutex<Option<Instant>>, now: Instant) -> bool {
    let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
    match *last {
        Some(at) if now.duration_since(at) < REPORT_EVERY => false,
        _ => {
            *last = Some(now);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_lack_of_files_counts() {
        assert!(exhausted(&io::Error::from_raw_os_error(nix::libc::EMFILE)));
        assert!(exhausted(&io::Error::from_raw_os_error(nix::libc::ENFILE)));
        assert!(!exhausted(&io::Error::from_raw_os_error(
            nix::libc::ECONNRESET
        )));
        assert!(!exhausted(&io::Error::other("no errno")));
    }

    #[test]
    fn reports_are_held_for_a_minute() {
        let last = Mutex::new(None);
        let t0 = Instant::now();
        assert!(due(&last, t0));
        assert!(!due(&last, t0 + Duration::from_secs(1)));
        assert!(!due(&last, t0 + Duration::from_secs(59)));
        assert!(due(&last, t0 + Duration::from_secs(61)));
        assert!(!due(&last, t0 + Duration::from_secs(62)));
    }
}
