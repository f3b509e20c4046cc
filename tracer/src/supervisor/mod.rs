//! The notification loop: ① receive a trapped call → ② its handler decides (a `Plan`) →
//! ③ the executor carries the plan out → ④ answer.
//!
//! The loop runs on its own OS thread and never waits on anything but the listener: a plan
//! is either carried out at once (cheap decisions, non-blocking calls) or becomes deferred
//! work, which runs on the tokio runtime and answers when done. So a slow call of one
//! thread never holds up another thread's calls.
//!
//! Every received call is answered exactly once, whatever happens: a failed answer is logged
//! (ENOENT — the caller was interrupted or died — is expected and silent).
//!
//! One kind of call is answered elsewhere: a blocking accept parked in sctrace
//! (`execute::parked`), answered by whoever has a connection for it first — the thread that
//! received a stolen connection from the local agent (`remote::incoming`), or the parked
//! accepts' own task for a client of the listener, which also ends calls that went or that
//! a caught signal interrupts, as [`watch`] does for deferred work.

use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::thread;

use tokio::runtime::Handle;

use crate::execute::{Action, Executor};
use crate::handlers::{self, Context};
use crate::plan::Reply;
use crate::sys::notify::NotifyFd;
use crate::trap::{CallRef, Fate, Notification, WATCH_EVERY};

/// Answers one call.
fn respond(notify: &NotifyFd, id: u64, reply: Reply) {
    let result = match reply {
        Reply::Continue => notify.respond(id, 0, 0, true),
        Reply::Return(v) => notify.respond(id, v, 0, false),
        Reply::Fail(errno) => notify.respond(id, 0, -errno.0, false),
        Reply::InstallFd { fd, cloexec, then } => {
            use std::os::fd::AsFd;
            let (answered, installed) = match notify.install_fd_and_answer(id, fd.as_fd(), cloexec)
            {
                Ok(installed) => (Ok(()), installed),
                // The fd could not be installed (EMFILE, ...): the call fails the same way.
                Err(err) => (
                    notify.respond(id, 0, -err.raw_os_error().unwrap_or(libc::EIO), false),
                    None,
                ),
            };
            if let Some(then) = then {
                (then.0)(installed);
            }
            answered
        }
        Reply::ReplaceFd {
            fd,
            target,
            cloexec,
            then,
        } => {
            use std::os::fd::AsFd;
            match notify.replace_fd(id, fd.as_fd(), target, cloexec) {
                Ok(true) => match then {
                    Ok(v) => notify.respond(id, v, 0, false),
                    Err(errno) => notify.respond(id, 0, -errno.0, false),
                },
                // Interrupted: the app keeps its socket, and restarts or fails its call.
                Ok(false) => Ok(()),
                Err(err) => notify.respond(id, 0, -err.raw_os_error().unwrap_or(libc::EIO), false),
            }
        }
    };
    if let Err(err) = result {
        tracing::error!("cannot answer a trapped call (id {id}): {err}");
    }
}

/// A received call that must be answered. Dropped unanswered (deferred work that panicked,
/// or a runtime shutting down), it lets the kernel run the call rather than leave the app's
/// thread blocked forever.
struct PendingCall {
    notify: Arc<NotifyFd>,
    id: u64,
    answered: bool,
}

impl PendingCall {
    /// The call needs no answer: its caller is gone.
    fn forget(mut self) {
        self.answered = true;
    }

    fn answer(mut self, reply: Reply) {
        self.answered = true;
        respond(&self.notify, self.id, reply);
    }
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        // A call whose caller is gone (killed while waiting, e.g. in a blocking accept)
        // needs no answer; one still waiting means deferred work was lost (a bug).
        if self.notify.id_valid(self.id) {
            tracing::error!(
                "a trapped call (id {}) lost its handler; letting the kernel run it",
                self.id
            );
            respond(&self.notify, self.id, Reply::Continue);
        }
    }
}

/// Watches a call whose answer waits on deferred work, until it is gone or a caught signal
/// waits for its thread. Deferred work can wait long (a blocking accept or receive); with
/// WAIT_KILLABLE_RECV the kernel keeps a call sctrace received from being interrupted by
/// non-fatal signals, so sctrace does it.
async fn watch(call: CallRef, tid: u32) -> Fate {
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        if let Some(fate) = call.fate(tid) {
            return fate;
        }
    }
}

/// Starts the loop on its own thread. It ends when no traced process is left (the listener
/// reports hang-up) or the listener fails.
pub fn start(
    ctx: Arc<Context>,
    executor: Executor,
    runtime: Handle,
) -> io::Result<thread::JoinHandle<()>> {
    if ctx.notify.enable_sync_wakeup() {
        tracing::debug!("seccomp: synchronous wake-ups enabled");
    }
    thread::Builder::new()
        .name("sctrace-notify".into())
        .spawn(move || {
            // Handlers start relay tasks and sockets that belong to the runtime.
            let _entered = runtime.enter();
            run(&ctx, &executor, &runtime)
        })
}

fn run(ctx: &Context, executor: &Executor, runtime: &Handle) {
    loop {
        let raw = match ctx.notify.recv() {
            Ok(Some(raw)) => raw,
            Ok(None) => {
                // ENOENT: the caller died, or no traced task is left at all.
                match ctx.notify.hung_up() {
                    Ok(false) => continue,
                    Ok(true) => return,
                    Err(err) => {
                        tracing::error!(
                            "seccomp listener failed, no more calls can be intercepted: {err}"
                        );
                        return;
                    }
                }
            }
            Err(err) => {
                tracing::error!("seccomp listener failed, no more calls can be intercepted: {err}");
                return;
            }
        };
        let n = Notification::new(raw);
        let call = PendingCall {
            notify: Arc::clone(&ctx.notify),
            id: raw.id,
            answered: false,
        };
        // A bug in a handler or the executor must not stop the loop: every other call would
        // hang.
        let carried = panic::catch_unwind(AssertUnwindSafe(|| {
            executor.carry_out(handlers::decide(ctx, &n))
        }));
        match carried {
            Ok(Action::Now(reply)) => call.answer(reply),
            // Answered by whoever has a connection for it (see `execute::parked`).
            Ok(Action::Parked) => call.forget(),
            Ok(Action::Defer(work)) => {
                let tid = n.tid();
                runtime.spawn(async move {
                    tokio::select! {
                        reply = work => call.answer(reply),
                        fate = watch(CallRef::new(Arc::clone(&call.notify), call.id), tid) => match fate {
                            // Nobody waits for an answer any more; the work is dropped.
                            Fate::Gone => call.forget(),
                            Fate::Interrupted(errno) => call.answer(Reply::Fail(errno)),
                        },
                    }
                });
            }
            Err(_) => {
                tracing::error!(
                    "the {} handler panicked; letting the kernel run the call",
                    n.call.name()
                );
                call.answer(Reply::Continue);
            }
        }
    }
}
