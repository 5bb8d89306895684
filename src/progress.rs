//! Progress bars on standard error, the one place that draws them: [`crate::gp::ExactGp::fit`]
//! (on by default, [`crate::gp::FitOptions::progress`]) and the solves (off by default, on
//! with [`crate::SolveOptions::progress`]).
//!
//! The bars come from `indicatif`, behind the crate feature `progress` (on by default; without
//! it the options draw nothing). A bar is drawn only when standard error is a terminal, so a
//! program whose output is redirected or captured prints nothing extra, and only once the work
//! has run for the threshold it was given, so that short solves never flash one.

use std::time::{Duration, Instant};

/// A bar that appears once its work has run for `after` (and standard error is a terminal),
/// counts up to `len`, and is cleared by [`Progress::finish`] or when dropped.
pub(crate) struct Progress {
    /// When to show the bar (`None`: never).
    after: Option<Duration>,
    start: Instant,
    len: u64,
    what: &'static str,
    #[cfg(feature = "progress")]
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    /// A bar for `len` steps of `what` (e.g. `"fit"`), shown once `after` has passed (`None`:
    /// never).
    pub(crate) fn new(what: &'static str, len: usize, after: Option<Duration>) -> Progress {
        use std::io::IsTerminal;
        Progress::for_terminal(what, len, after, std::io::stderr().is_terminal())
    }

    /// [`Progress::new`], told whether standard error is a terminal.
    fn for_terminal(
        what: &'static str,
        len: usize,
        after: Option<Duration>,
        terminal: bool,
    ) -> Progress {
        let after = after.filter(|_| cfg!(feature = "progress") && terminal);
        Progress {
            after,
            start: Instant::now(),
            len: u64::try_from(len).unwrap_or(u64::MAX),
            what,
            #[cfg(feature = "progress")]
            bar: None,
        }
    }

    /// Whether `update` may draw: the bar is wanted and its threshold has passed (cheap: the
    /// message of `update` is built only then).
    fn due(&self) -> bool {
        self.after.is_some_and(|a| self.start.elapsed() >= a)
    }

    /// Step `pos` of `len` is done; `message` (built only when the bar is drawn) follows the
    /// bar on its line.
    pub(crate) fn update(&mut self, pos: usize, message: impl FnOnce() -> String) {
        if !self.due() {
            return;
        }
        #[cfg(feature = "progress")]
        {
            let bar = self.bar.get_or_insert_with(|| {
                let bar = indicatif::ProgressBar::new(self.len);
                let style = indicatif::ProgressStyle::with_template(
                    "{prefix} [{bar:24}] {pos}/{len} {elapsed} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> ");
                bar.set_style(style);
                bar.set_prefix(self.what);
                bar
            });
            bar.set_position(u64::try_from(pos).unwrap_or(u64::MAX));
            bar.set_message(message());
        }
        #[cfg(not(feature = "progress"))]
        {
            let _ = (pos, message, self.len, self.what);
        }
    }

    /// The work is done: the bar, if it was drawn, is cleared.
    pub(crate) fn finish(&mut self) {
        #[cfg(feature = "progress")]
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a bar was created (drawn, on a terminal).
    fn shown(p: &Progress) -> bool {
        #[cfg(feature = "progress")]
        return p.bar.is_some();
        #[cfg(not(feature = "progress"))]
        false
    }

    #[test]
    fn a_bar_appears_after_its_threshold_on_a_terminal_only() {
        let mut built = 0;
        // Not a terminal, or no threshold: never drawn, the message never built.
        for (after, terminal) in [(Some(Duration::ZERO), false), (None, true)] {
            let mut p = Progress::for_terminal("test", 10, after, terminal);
            p.update(3, || {
                built += 1;
                String::new()
            });
            assert!(!shown(&p));
        }
        assert_eq!(built, 0);
        // A threshold not yet reached: not drawn.
        let mut p = Progress::for_terminal("test", 10, Some(Duration::from_secs(3600)), true);
        p.update(3, || {
            unreachable!("the message of a bar not drawn is not built")
        });
        assert!(!shown(&p));
        // Reached (zero) on a terminal: drawn from the first update, with the feature.
        let mut p = Progress::for_terminal("test", 10, Some(Duration::ZERO), true);
        p.update(3, || "message".to_string());
        assert_eq!(shown(&p), cfg!(feature = "progress"));
        #[cfg(feature = "progress")]
        if let Some(bar) = &p.bar {
            assert_eq!((bar.position(), bar.length()), (3, Some(10)));
            assert_eq!(bar.message(), "message");
        }
        p.finish();
        assert!(!shown(&p));
    }
}
