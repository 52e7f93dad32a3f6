//! The run history of one process: `history.jsonl` in the state directory, a JSON line per
//! attempt, appended and fsynced as each attempt ends, so it survives restarts and crashes.
//!
//! Append-only lines, as the audit log is, rather than an embedded database: every write
//! is one append, every read is "the last N runs of each job", which a restart rebuilds in
//! one pass; there is nothing to index. A line cut short by a crash is dropped (and cut
//! off the file) at the next start. The file is rewritten without the runs past the
//! retention (write, fsync, rename) once it holds twice as many lines as are kept.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// One attempt of one tick of a job, as this process ran it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub job: String,
    /// The tick (its scheduled time, Unix seconds) and the same in RFC 3339.
    pub tick: i64,
    pub tick_time: String,
    /// 1 for the first attempt of the tick, 2 for the first retry...
    pub attempt: u32,
    pub host: String,
    /// Unix seconds.
    pub started: f64,
    pub ended: f64,
    /// `success`, the job's failure kind (`failed`, `trap`, `deadline`...), `lease-lost`
    /// or `cancelled`.
    pub outcome: String,
    /// The tick had been claimed by a process that died; this one took it over.
    pub took_over: bool,
    /// What `rbd-wasm run --json` prints for the run.
    pub report: serde_json::Value,
}

/// The history file and the last runs of each job.
pub struct History {
    path: PathBuf,
    inner: Mutex<Inner>,
    /// An `flock` on `state.lock`, held while this lives: two processes must not share a
    /// history (their appends and compactions would cross).
    _lock: File,
}

struct Inner {
    file: File,
    runs: BTreeMap<String, VecDeque<RunRecord>>,
    /// Lines in the file now.
    lines: usize,
    keep: usize,
}

impl History {
    /// Open (or start) the history in `dir`, keeping the last `keep` runs of each job.
    pub fn open(dir: &Path, keep: usize) -> std::io::Result<History> {
        std::fs::create_dir_all(dir)?;
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("state.lock"))?;
        if let Err(std::fs::TryLockError::WouldBlock) = lock.try_lock() {
            return Err(std::io::Error::other(format!(
                "another process uses the state directory {} (give each its own: --state-dir)",
                dir.display()
            )));
        }
        let path = dir.join("history.jsonl");
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        // A last line without its newline was cut short by a crash: cut it off, or the next
        // record would be appended to it.
        let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if whole < bytes.len() {
            tracing::warn!("{}: dropping a record cut short ({} bytes)", path.display(), bytes.len() - whole);
            file.set_len(whole as u64)?;
        }
        let mut runs: BTreeMap<String, VecDeque<RunRecord>> = BTreeMap::new();
        let mut lines = 0;
        for line in bytes[..whole].split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            lines += 1;
            match serde_json::from_slice::<RunRecord>(line) {
                Ok(record) => push(&mut runs, record, keep),
                Err(e) => tracing::warn!("{}: skipping a record that does not parse: {e}", path.display()),
            }
        }
        let history = History { path, inner: Mutex::new(Inner { file, runs, lines, keep }), _lock: lock };
        history.compact_if_due()?;
        Ok(history)
    }

    /// Record an attempt (appended and fsynced before this returns).
    pub fn append(&self, record: RunRecord) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        {
            let mut inner = self.lock();
            let before = inner.file.metadata()?.len();
            if let Err(e) = inner.file.write_all(&line).and_then(|()| inner.file.sync_data()) {
                // A part of the line (the disk filled up): cut it off, or the next record
                // would be appended to it and both lost.
                let _ = inner.file.set_len(before);
                return Err(e);
            }
            inner.lines += 1;
            let keep = inner.keep;
            push(&mut inner.runs, record, keep);
        }
        self.compact_if_due()
    }

    /// The last `n` runs of `job`, newest first.
    pub fn last(&self, job: &str, n: usize) -> Vec<RunRecord> {
        self.lock().runs.get(job).map(|r| r.iter().rev().take(n).cloned().collect()).unwrap_or_default()
    }

    /// A new retention (after a reload).
    pub fn set_keep(&self, keep: usize) {
        let mut inner = self.lock();
        inner.keep = keep;
        for runs in inner.runs.values_mut() {
            while runs.len() > keep {
                runs.pop_front();
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Rewrite the file with the kept runs alone once it has twice as many lines.
    fn compact_if_due(&self) -> std::io::Result<()> {
        let mut inner = self.lock();
        let kept: usize = inner.runs.values().map(VecDeque::len).sum();
        if inner.lines <= 2 * kept.max(inner.keep) {
            return Ok(());
        }
        let tmp = self.path.with_extension("jsonl.tmp");
        let mut out = File::create(&tmp)?;
        let mut all: Vec<&RunRecord> = inner.runs.values().flatten().collect();
        all.sort_by(|a, b| a.ended.total_cmp(&b.ended));
        let mut text = Vec::new();
        for record in &all {
            serde_json::to_writer(&mut text, record).map_err(std::io::Error::other)?;
            text.push(b'\n');
        }
        let count = all.len();
        out.write_all(&text)?;
        out.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        inner.file = OpenOptions::new().append(true).open(&self.path)?;
        inner.lines = count;
        Ok(())
    }
}

fn push(runs: &mut BTreeMap<String, VecDeque<RunRecord>>, record: RunRecord, keep: usize) {
    let list = runs.entry(record.job.clone()).or_default();
    list.push_back(record);
    while list.len() > keep {
        list.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(job: &str, tick: i64) -> RunRecord {
        RunRecord {
            job: job.into(),
            tick,
            tick_time: String::new(),
            attempt: 1,
            host: "h".into(),
            started: tick as f64,
            ended: tick as f64 + 1.0,
            outcome: "success".into(),
            took_over: false,
            report: serde_json::json!({}),
        }
    }

    #[test]
    fn survives_a_restart_and_a_torn_line_and_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        {
            let h = History::open(dir.path(), 3).unwrap();
            for t in 0..10 {
                h.append(record("a", t)).unwrap();
            }
            h.append(record("b", 100)).unwrap();
            assert_eq!(h.last("a", 5).iter().map(|r| r.tick).collect::<Vec<_>>(), vec![9, 8, 7]);
            assert!(History::open(dir.path(), 3).is_err(), "one process a state directory");
        }
        let path = dir.path().join("history.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"job\":\"a\",\"tick\":").unwrap();
        drop(f);
        let h = History::open(dir.path(), 3).unwrap();
        assert_eq!(h.last("a", 5).iter().map(|r| r.tick).collect::<Vec<_>>(), vec![9, 8, 7]);
        assert_eq!(h.last("b", 5).len(), 1);
        h.append(record("a", 10)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.lines().count() <= 8, "compacted: {text}");
        assert!(text.lines().all(|l| serde_json::from_str::<RunRecord>(l).is_ok()));
        drop(h);
        let h = History::open(dir.path(), 3).unwrap();
        assert_eq!(h.last("a", 2).iter().map(|r| r.tick).collect::<Vec<_>>(), vec![10, 9]);
    }
}
