//! What the operator sees of a job's `report-progress` calls: a bar per label on a
//! terminal, plain lines otherwise (logs, CI), or nothing; and the last report of each
//! label, for the final report.
//!
//! indicatif draws the bars. Job output lines must not tear them, so while bars are shown
//! the job's output is printed through [`ProgressView::print_line`], which lifts the bars
//! for the line.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use rbd_wasm::Progress;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// Bars on standard error (for a terminal).
    Bars,
    /// A line on standard error per label at most every [`LINE_INTERVAL`], and when a label
    /// completes.
    Lines,
    /// Nothing shown; the reports are still kept for the final report.
    Quiet,
}

/// Least time between two plain progress lines of one label.
pub const LINE_INTERVAL: Duration = Duration::from_secs(2);

/// The last report of one label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProgressEntry {
    pub label: String,
    pub done: u64,
    pub total: Option<u64>,
}

/// One job's progress, as shown and as kept.
#[derive(Clone)]
pub struct ProgressView {
    inner: Arc<Inner>,
}

struct Inner {
    job_id: String,
    mode: ProgressMode,
    bars: Option<MultiProgress>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Labels in the order they first appeared, with their last report.
    entries: Vec<ProgressEntry>,
    bars: HashMap<String, ProgressBar>,
    last_line: HashMap<String, Instant>,
}

impl ProgressView {
    pub fn new(job_id: &str, mode: ProgressMode) -> Self {
        let bars = (mode == ProgressMode::Bars).then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        ProgressView {
            inner: Arc::new(Inner { job_id: job_id.to_owned(), mode, bars, state: Mutex::new(State::default()) }),
        }
    }

    /// The function the runtime calls for every `report-progress`.
    pub fn sink(&self) -> Arc<dyn Fn(Progress) + Send + Sync> {
        let view = self.clone();
        Arc::new(move |p: Progress| view.report(p))
    }

    fn report(&self, p: Progress) {
        let inner = &self.inner;
        let mut state = inner.state.lock().unwrap_or_else(|e| e.into_inner());
        let entry = ProgressEntry { label: p.label.clone(), done: p.done, total: p.total };
        match state.entries.iter_mut().find(|e| e.label == p.label) {
            Some(e) => *e = entry,
            None => state.entries.push(entry),
        }
        match inner.mode {
            ProgressMode::Quiet => {}
            ProgressMode::Bars => {
                let Some(multi) = &inner.bars else { return };
                let bar = state.bars.entry(p.label.clone()).or_insert_with(|| {
                    let bar = multi.add(match p.total {
                        Some(total) => ProgressBar::new(total).with_style(
                            ProgressStyle::with_template("[{prefix}] {msg} {wide_bar} {percent:>3}% eta {eta}")
                                .unwrap_or_else(|_| ProgressStyle::default_bar()),
                        ),
                        None => ProgressBar::new_spinner(),
                    });
                    bar.set_prefix(inner.job_id.clone());
                    bar.set_message(p.label.clone());
                    bar
                });
                if let Some(total) = p.total {
                    bar.set_length(total);
                }
                bar.set_position(p.done);
                if p.total == Some(p.done) {
                    bar.finish();
                }
            }
            ProgressMode::Lines => {
                let complete = p.total == Some(p.done);
                let now = Instant::now();
                let due = state.last_line.get(&p.label).is_none_or(|t| now.duration_since(*t) >= LINE_INTERVAL);
                if due || complete {
                    state.last_line.insert(p.label.clone(), now);
                    let line = match p.total {
                        Some(total) if total > 0 => {
                            format!("{} {}/{} ({}%)", p.label, p.done, total, p.done.saturating_mul(100) / total)
                        }
                        Some(total) => format!("{} {}/{total}", p.label, p.done),
                        None => format!("{} {}", p.label, p.done),
                    };
                    eprintln!("[{}] progress: {line}", inner.job_id);
                }
            }
        }
    }

    /// Print one of the job's output lines without tearing the bars.
    pub fn print_line(&self, line: &str, to_stderr: bool) {
        let print = || {
            let _ = if to_stderr {
                writeln!(std::io::stderr().lock(), "{line}")
            } else {
                writeln!(std::io::stdout().lock(), "{line}")
            };
        };
        match &self.inner.bars {
            Some(multi) => multi.suspend(print),
            None => print(),
        }
    }

    /// Take the bars down; the last report of every label, in order of appearance.
    pub fn finish(&self) -> Vec<ProgressEntry> {
        let state = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        for bar in state.bars.values() {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
        state.entries.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(label: &str, done: u64, total: Option<u64>) -> Progress {
        Progress { label: label.into(), done, total }
    }

    #[test]
    fn the_last_report_of_each_label_is_kept_in_order() {
        let view = ProgressView::new("t", ProgressMode::Quiet);
        let sink = view.sink();
        sink(p("b", 1, Some(10)));
        sink(p("a", 5, None));
        sink(p("b", 10, Some(10)));
        assert_eq!(
            view.finish(),
            vec![
                ProgressEntry { label: "b".into(), done: 10, total: Some(10) },
                ProgressEntry { label: "a".into(), done: 5, total: None },
            ]
        );
    }
}
