//! The native side of `bench/run.sh`, through the `rbd-backend` crate (librbd or the
//! embedded store): the workload (fill an image, change a fraction of it in scattered
//! extents), snapshot chores, and `export-diff`, the native Rust loop that is the limit the
//! backup guest is measured against.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use rbd_backend::{CreateOptions, Error, Extent, Image};
use rbd_wasm_bench::{fill_data, scattered_extents, Store};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    store: Store,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create IMAGE of MIB MiB and write every byte of it (the data of SEED).
    Fill {
        image: String,
        #[arg(long)]
        mib: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 4)]
        threads: usize,
    },
    /// Overwrite FRACTION of IMAGE in non-overlapping extents of MIN..MAX bytes at 4 KiB-aligned
    /// random offsets (placement and data from SEED). Prints what it changed, as JSON.
    Change {
        image: String,
        #[arg(long, default_value_t = 0.25)]
        fraction: f64,
        #[arg(long, default_value_t = 64 << 10)]
        min: u64,
        #[arg(long, default_value_t = 4 << 20)]
        max: u64,
        #[arg(long, default_value_t = 2)]
        seed: u64,
        #[arg(long, default_value_t = 4)]
        threads: usize,
    },
    SnapCreate { image: String, snap: String },
    /// Remove a snapshot (fine if it does not exist).
    SnapRm { image: String, snap: String },
    /// Remove an image and its snapshots (fine if it does not exist).
    Rm { image: String },
    /// The native loop: the diff of IMAGE from --from to --to, written to OUT in the
    /// `rbd export-diff` v1 format, with IN_FLIGHT reads at once (threads, one image handle),
    /// records in order, then fsync. Prints what it wrote, as JSON.
    ExportDiff {
        image: String,
        out: PathBuf,
        /// The base snapshot; none for a full export.
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: String,
        /// Take the snapshot --to first (as a backup would), then export it.
        #[arg(long)]
        create_snap: bool,
        #[arg(long, default_value_t = 8)]
        in_flight: usize,
    },
}

const PIECE: u64 = 4 << 20;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let backend = cli.store.open()?;
    let pool = cli.store.pool.as_str();
    match cli.command {
        Command::Fill { image, mib, seed, threads } => {
            let size = mib << 20;
            backend.create(pool, &image, size, &CreateOptions::default())?;
            let handle = backend.open(pool, &image, None, false)?;
            let pieces: Vec<(u64, u64)> = (0..size).step_by(PIECE as usize).map(|o| (o, PIECE.min(size - o))).collect();
            write_pieces(&*handle, &pieces, seed, threads)?;
            handle.flush()?;
        }
        Command::Change { image, fraction, min, max, seed, threads } => {
            let handle = backend.open(pool, &image, None, false)?;
            let size = handle.size()?;
            let extents = scattered_extents(size, fraction, min, max, seed);
            write_pieces(&*handle, &extents, seed.wrapping_mul(0x1000_0001) ^ 0xc4a9_3e, threads)?;
            handle.flush()?;
            let bytes: u64 = extents.iter().map(|e| e.1).sum();
            println!(
                "{}",
                serde_json::json!({"extents": extents.len(), "bytes": bytes, "fraction": bytes as f64 / size as f64,
                    "min_extent": extents.iter().map(|e| e.1).min(), "max_extent": extents.iter().map(|e| e.1).max()})
            );
        }
        Command::SnapCreate { image, snap } => backend.open(pool, &image, None, false)?.create_snap(&snap)?,
        Command::SnapRm { image, snap } => match backend.open(pool, &image, None, false)?.remove_snap(&snap) {
            Ok(()) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        },
        Command::Rm { image } => {
            match backend.open(pool, &image, None, false) {
                Ok(handle) => {
                    for snap in handle.list_snaps()? {
                        if handle.is_protected_snap(&snap.name)? {
                            handle.unprotect_snap(&snap.name)?;
                        }
                        handle.remove_snap(&snap.name)?;
                    }
                }
                Err(Error::NotFound(_)) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
            backend.remove(pool, &image)?;
        }
        Command::ExportDiff { image, out, from, to, create_snap, in_flight } => {
            let started = Instant::now();
            if create_snap {
                backend.open(pool, &image, None, false)?.create_snap(&to)?;
            }
            let handle = backend.open(pool, &image, Some(&to), true)?;
            let (bytes, extents) = export_diff(&*handle, from.as_deref(), &to, &out, in_flight.max(1))?;
            println!(
                "{}",
                serde_json::json!({"stream_bytes": bytes, "extents": extents, "secs": started.elapsed().as_secs_f64()})
            );
        }
    }
    Ok(())
}

/// Write the workload's data of `seed` at every `(offset, length)`, `threads` at a time.
fn write_pieces(image: &dyn Image, pieces: &[(u64, u64)], seed: u64, threads: usize) -> anyhow::Result<()> {
    let next = AtomicUsize::new(0);
    let failed = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                let mut buf = Vec::new();
                while let Some(&(offset, length)) = pieces.get(next.fetch_add(1, Ordering::Relaxed)) {
                    buf.resize(length as usize, 0);
                    fill_data(seed, offset, &mut buf);
                    if let Err(e) = image.write(offset, &buf) {
                        *failed.lock().unwrap() = Some(format!("write at {offset}: {e}"));
                        return;
                    }
                }
            });
        }
    });
    match failed.into_inner().unwrap() {
        Some(e) => bail!(e),
        None => Ok(()),
    }
}

/// One record's worth of work: a data piece to read, or a zero extent.
#[derive(Clone, Copy)]
struct Piece {
    offset: u64,
    length: u64,
    data: bool,
}

/// Reads in flight, completed out of order, handed to the writer in order.
struct Window {
    /// Next piece a reader takes.
    next: usize,
    /// Pieces the writer has taken (readers stay within `written + in_flight`).
    written: usize,
    done: BTreeMap<usize, Result<Vec<u8>, Error>>,
}

fn export_diff(image: &dyn Image, from: Option<&str>, to: &str, out: &PathBuf, in_flight: usize) -> anyhow::Result<(u64, usize)> {
    let size = image.size()?;
    let mut extents: Vec<Extent> = Vec::new();
    image.diff_iterate(0, size, from, true, false, &mut |e| extents.push(e))?;
    let mut pieces = Vec::new();
    for e in &extents {
        if e.exists {
            let mut o = e.offset;
            while o < e.offset + e.length {
                let l = PIECE.min(e.offset + e.length - o);
                pieces.push(Piece { offset: o, length: l, data: true });
                o += l;
            }
        } else {
            pieces.push(Piece { offset: e.offset, length: e.length, data: false });
        }
    }

    let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let written = AtomicU64::new(0);
    let put = |w: &mut BufWriter<File>, bytes: &[u8]| -> std::io::Result<()> {
        written.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        w.write_all(bytes)
    };
    put(&mut w, b"rbd diff v1\n")?;
    for (tag, name) in from.map(|f| (b'f', f)).into_iter().chain([(b't', to)]) {
        put(&mut w, &[tag])?;
        put(&mut w, &(name.len() as u32).to_le_bytes())?;
        put(&mut w, name.as_bytes())?;
    }
    put(&mut w, b"s")?;
    put(&mut w, &size.to_le_bytes())?;

    let window = Mutex::new(Window { next: 0, written: 0, done: BTreeMap::new() });
    let changed = Condvar::new();
    let data_pieces: Vec<usize> = (0..pieces.len()).filter(|&i| pieces[i].data).collect();
    let result: anyhow::Result<()> = std::thread::scope(|s| {
        for _ in 0..in_flight.min(data_pieces.len().max(1)) {
            s.spawn(|| loop {
                let k = {
                    let mut st = window.lock().unwrap();
                    while st.next < data_pieces.len() && st.next >= st.written + in_flight {
                        st = changed.wait(st).unwrap();
                    }
                    if st.next >= data_pieces.len() {
                        return;
                    }
                    st.next += 1;
                    st.next - 1
                };
                let p = pieces[data_pieces[k]];
                let data = image.read(p.offset, p.length);
                window.lock().unwrap().done.insert(k, data);
                changed.notify_all();
            });
        }
        // The writer: records in diff order, data as its read completes.
        let mut k = 0;
        let outcome = (|| -> anyhow::Result<()> {
            for p in &pieces {
                let mut record = [0u8; 17];
                record[0] = if p.data { b'w' } else { b'z' };
                record[1..9].copy_from_slice(&p.offset.to_le_bytes());
                record[9..].copy_from_slice(&p.length.to_le_bytes());
                if !p.data {
                    put(&mut w, &record)?;
                    continue;
                }
                let data = {
                    let mut st = window.lock().unwrap();
                    loop {
                        if let Some(d) = st.done.remove(&k) {
                            st.written = k + 1;
                            break d;
                        }
                        st = changed.wait(st).unwrap();
                    }
                };
                changed.notify_all();
                let data = data.with_context(|| format!("reading {} bytes at {}", p.length, p.offset))?;
                if data.len() as u64 != p.length {
                    bail!("a short read at {}: {} of {} bytes", p.offset, data.len(), p.length);
                }
                put(&mut w, &record)?;
                put(&mut w, &data)?;
                k += 1;
            }
            Ok(())
        })();
        if outcome.is_err() {
            // Let the readers run out.
            let mut st = window.lock().unwrap();
            st.written = usize::MAX / 2;
            st.next = data_pieces.len();
            drop(st);
            changed.notify_all();
        }
        outcome
    });
    result?;
    put(&mut w, b"e")?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok((written.into_inner(), extents.len()))
}
