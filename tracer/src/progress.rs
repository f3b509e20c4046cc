//! What sctrace tells the user while a session starts: each step (config read, cluster
//! reached, agent created, agent ready, app started) as it happens. On a terminal the step
//! in progress is one live line with a spinner that turns into `✓ …` when done; elsewhere
//! each finished step is one plain `sctrace: …` line; `--quiet` shows nothing.

use std::io::{self, IsTerminal, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// A live line redrawn in place (stderr is a terminal).
    Live,
    /// One line per finished step.
    Plain,
    /// Nothing.
    Quiet,
}

impl Style {
    /// The style for this process: `Quiet` with `--quiet`, `Live` when stderr is a terminal
    /// (and `TERM` is not `dumb`), else `Plain`.
    pub fn detect(quiet: bool) -> Style {
        if quiet {
            Style::Quiet
        } else if io::stderr().is_terminal()
            && std::env::var_os("TERM").is_none_or(|term| term != "dumb")
        {
            Style::Live
        } else {
            Style::Plain
        }
    }
}

/// The spinner's frames and how often it turns.
const SPINNER: &[char] = &['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
const TICK: Duration = Duration::from_millis(100);

/// Shows the steps of a session's start. Cheap to clone; every clone draws on the same line.
#[derive(Clone)]
pub struct Progress {
    inner: Arc<Inner>,
}

struct Inner {
    style: Style,
    state: Mutex<State>,
    wake: Condvar,
}

struct State {
    out: Box<dyn Write + Send>,
    /// The step in progress and when it began.
    current: Option<(String, Instant)>,
    frame: usize,
    /// The spinner thread runs (live style, first step started).
    spinning: bool,
    finished: bool,
}

impl Progress {
    /// Progress on stderr in `style`.
    pub fn new(style: Style) -> Progress {
        Progress::to_writer(style, Box::new(io::stderr()))
    }

    /// Progress written to `out` (tests).
    pub fn to_writer(style: Style, out: Box<dyn Write + Send>) -> Progress {
        Progress {
            inner: Arc::new(Inner {
                style,
                state: Mutex::new(State {
                    out,
                    current: None,
                    frame: 0,
                    spinning: false,
                    finished: false,
                }),
                wake: Condvar::new(),
            }),
        }
    }

    /// Progress that shows nothing.
    pub fn quiet() -> Progress {
        Progress::to_writer(Style::Quiet, Box::new(io::sink()))
    }

    /// The style in use.
    pub fn style(&self) -> Style {
        self.inner.style
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Drawing never panics while holding the lock; a poisoned one is still usable.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A step begins: `doing` says what, e.g. "reaching the cluster".
    pub fn start(&self, doing: &str) {
        if self.inner.style != Style::Live {
            return;
        }
        let mut st = self.lock();
        if st.finished {
            return;
        }
        st.current = Some((doing.to_owned(), Instant::now()));
        draw_live(&mut st);
        if !st.spinning {
            st.spinning = true;
            let inner = Arc::clone(&self.inner);
            // Without the thread the line is still drawn, only not animated.
            let _ = std::thread::Builder::new()
                .name("sctrace-progress".into())
                .spawn(move || spin(&inner));
        }
    }

    /// The current step is done: `done` says what happened, e.g. "cluster reached".
    pub fn done(&self, done: &str) {
        let mut st = self.lock();
        if st.finished {
            return;
        }
        let elapsed = st.current.take().map(|(_, since)| since.elapsed());
        match self.inner.style {
            Style::Quiet => {}
            Style::Plain => {
                let _ = writeln!(st.out, "sctrace: {done}");
            }
            Style::Live => {
                let took = elapsed
                    .filter(|d| *d >= Duration::from_millis(100))
                    .map(|d| format!(" \x1b[2m({:.1} s)\x1b[0m", d.as_secs_f64()))
                    .unwrap_or_default();
                let _ = write!(st.out, "\r\x1b[2K\x1b[32m✓\x1b[0m {done}{took}\n");
            }
        }
        let _ = st.out.flush();
    }

    /// The current step failed: clear the live line so the error message that follows
    /// starts on a clean line.
    pub fn failed(&self) {
        let mut st = self.lock();
        if st.current.take().is_some() && self.inner.style == Style::Live {
            let _ = write!(st.out, "\r\x1b[2K");
            let _ = st.out.flush();
        }
    }

    /// The app starts: the last line (`done`), after which nothing more is drawn, so the
    /// app's own output is left alone.
    pub fn finish(&self, done: &str) {
        self.done(done);
        let mut st = self.lock();
        st.finished = true;
        self.inner.wake.notify_all();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Last clone gone mid-step (an error path): leave the terminal on a clean line.
        if self.style == Style::Live {
            let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
            if st.current.is_some() {
                let _ = write!(st.out, "\r\x1b[2K");
                let _ = st.out.flush();
            }
        }
    }
}

fn draw_live(st: &mut State) {
    if let Some((doing, _)) = &st.current {
        let spinner = SPINNER[st.frame % SPINNER.len()];
        let line = format!("\r\x1b[2K\x1b[36m{spinner}\x1b[0m {doing}…");
        let _ = st.out.write_all(line.as_bytes());
        let _ = st.out.flush();
    }
}

/// Turns the spinner until the progress is finished. Holds only a weak reference in effect:
/// it exits once `finished` is set or it is the last owner.
fn spin(inner: &Arc<Inner>) {
    let mut st = inner.state.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let (next, _) = inner
            .wake
            .wait_timeout(st, TICK)
            .unwrap_or_else(|e| e.into_inner());
        st = next;
        if st.finished || Arc::strong_count(inner) == 1 {
            return;
        }
        st.frame = st.frame.wrapping_add(1);
        draw_live(&mut st);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn run_steps(progress: &Progress) {
        progress.start("reaching the cluster");
        progress.done("cluster reached (context kind)");
        progress.start("creating the agent");
        progress.failed();
        progress.start("waiting for the agent");
        progress.finish("app started");
        progress.start("after the end");
        progress.done("not shown");
    }

    #[test]
    fn plain_lines_for_finished_steps_only() {
        let out = Captured::default();
        let progress = Progress::to_writer(Style::Plain, Box::new(out.clone()));
        run_steps(&progress);
        assert_eq!(
            out.text(),
            "sctrace: cluster reached (context kind)\nsctrace: app started\n"
        );
    }

    #[test]
    fn quiet_shows_nothing() {
        let out = Captured::default();
        let progress = Progress::to_writer(Style::Quiet, Box::new(out.clone()));
        run_steps(&progress);
        assert_eq!(out.text(), "");
    }

    #[test]
    fn live_redraws_one_line_and_ends_clean() {
        let out = Captured::default();
        let progress = Progress::to_writer(Style::Live, Box::new(out.clone()));
        run_steps(&progress);
        let text = out.text();
        assert!(
            text.starts_with("\r\x1b[2K\x1b[36m⠋\x1b[0m reaching the cluster…"),
            "{text:?}"
        );
        assert!(text.contains("\x1b[32m✓\x1b[0m cluster reached (context kind)\n"));
        assert!(
            text.contains("creating the agent…\r\x1b[2K"),
            "a failed step is cleared"
        );
        assert!(text.ends_with("\x1b[32m✓\x1b[0m app started\n"), "{text:?}");
        assert!(!text.contains("after the end"));
    }

    #[test]
    fn the_spinner_turns_and_stops() {
        let out = Captured::default();
        let progress = Progress::to_writer(Style::Live, Box::new(out.clone()));
        progress.start("waiting");
        // Generous: a few ticks of 100 ms.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !out.text().contains('⠙') && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(out.text().contains("⠙ waiting…") || out.text().contains("\x1b[36m⠙"));
        progress.finish("done");
        std::thread::sleep(Duration::from_millis(300));
        let len = out.text().len();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(out.text().len(), len, "nothing is drawn after finish");
    }
}
