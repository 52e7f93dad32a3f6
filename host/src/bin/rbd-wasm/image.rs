//! `rbd-wasm image`: look at the images of a store without writing a job. Names come from
//! the store, which jobs write to: they are printed made safe for a terminal.

use std::io::{Seek, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use rbd_wasm::backend::Image;
use rbd_wasm::output::terminal_safe;

use crate::{open_backend, StoreArgs};

#[derive(Subcommand)]
pub enum ImageCommand {
    /// List the images of a pool.
    Ls {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long, default_value = "rbd")]
        pool: String,
    },
    /// Show an image's size, layout, features, snapshots, parent and lockers.
    Info {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long, default_value = "rbd")]
        pool: String,
        /// `NAME` or `NAME@SNAP`.
        image: String,
    },
    /// Remove an image (it must have no snapshots and be open nowhere).
    Rm {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long, default_value = "rbd")]
        pool: String,
        image: String,
    },
    /// Write bytes of an image (or snapshot) to stdout, as they are.
    Read {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long, default_value = "rbd")]
        pool: String,
        /// `NAME` or `NAME@SNAP`.
        image: String,
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// How many bytes (cut at the end of the image).
        #[arg(long)]
        length: u64,
    },
    /// Write an image's (or snapshot's) bytes to a file (sparse), or to stdout with `-`.
    Export {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long, default_value = "rbd")]
        pool: String,
        /// `NAME` or `NAME@SNAP`.
        image: String,
        /// Destination file, or `-` for stdout.
        dest: PathBuf,
    },
}


/// `NAME@SNAP` into its parts.
fn split_spec(spec: &str) -> (&str, Option<&str>) {
    match spec.split_once('@') {
        Some((name, snap)) => (name, Some(snap)),
        None => (spec, None),
    }
}

pub fn image_command(cmd: ImageCommand) -> anyhow::Result<()> {
    match cmd {
        ImageCommand::Ls { store, pool } => {
            let backend = open_backend(&store)?;
            for name in backend.list(&pool)? {
                println!("{}", terminal_safe(&name));
            }
        }
        ImageCommand::Info { store, pool, image } => {
            let backend = open_backend(&store)?;
            let (name, snap) = split_spec(&image);
            let img = backend.open(&pool, name, snap, true)?;
            print_info(&pool, &image, img.as_ref())?;
        }
        ImageCommand::Rm { store, pool, image } => open_backend(&store)?.remove(&pool, &image)?,
        ImageCommand::Read { store, pool, image, offset, length } => {
            let backend = open_backend(&store)?;
            let (name, snap) = split_spec(&image);
            let img = backend.open(&pool, name, snap, true)?;
            let mut out = std::io::stdout().lock();
            copy_out(img.as_ref(), offset, length, |chunk| out.write_all(chunk))?;
            out.flush()?;
        }
        ImageCommand::Export { store, pool, image, dest } => {
            let backend = open_backend(&store)?;
            let (name, snap) = split_spec(&image);
            let img = backend.open(&pool, name, snap, true)?;
            let size = img.size()?;
            if dest.as_os_str() == "-" {
                let mut out = std::io::stdout().lock();
                copy_out(img.as_ref(), 0, size, |chunk| out.write_all(chunk))?;
                out.flush()?;
            } else {
                // Zero chunks are skipped by seeking, so the file stays sparse.
                let mut file =
                    std::fs::File::create(&dest).with_context(|| format!("cannot create {}", dest.display()))?;
                copy_out(img.as_ref(), 0, size, |chunk| {
                    if chunk.iter().all(|&b| b == 0) {
                        file.seek(std::io::SeekFrom::Current(chunk.len() as i64)).map(|_| ())
                    } else {
                        file.write_all(chunk)
                    }
                })?;
                file.set_len(size)?;
            }
        }
    }
    Ok(())
}

/// Hand `[offset, offset + length)` of an image (cut at its end) to `each`, a chunk at a time.
fn copy_out(
    img: &dyn Image,
    offset: u64,
    length: u64,
    mut each: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    const CHUNK: u64 = 4 << 20;
    let end = offset.saturating_add(length).min(img.size()?);
    let mut pos = offset;
    while pos < end {
        let chunk = img.read(pos, CHUNK.min(end - pos))?;
        each(&chunk)?;
        pos += chunk.len() as u64;
    }
    Ok(())
}

fn print_info(pool: &str, spec: &str, img: &dyn Image) -> anyhow::Result<()> {
    let stat = img.stat()?;
    println!("rbd image '{}' in pool '{}':", terminal_safe(spec), terminal_safe(pool));
    println!("\tsize {} ({} bytes) in {} objects", human(stat.size), stat.size, stat.num_objs);
    println!("\torder {} ({} objects)", stat.order, human(stat.obj_size));
    println!("\tblock_name_prefix: {}", stat.block_name_prefix);
    println!("\tfeatures: {}", feature_names(img.features()?));
    println!("\tstripe unit {}, stripe count {}", human(img.stripe_unit()?), img.stripe_count()?);
    if let Some(parent) = img.parent_info()? {
        println!("\tparent: {}/{}@{}", terminal_safe(&parent.pool), terminal_safe(&parent.image), terminal_safe(&parent.snap));
    }
    let snaps = img.list_snaps()?;
    if !snaps.is_empty() {
        println!("\tsnapshots:");
        for s in snaps {
            let protected = if img.is_protected_snap(&s.name)? { " (protected)" } else { "" };
            println!("\t\t{:>4} {} {}{protected}", s.id, terminal_safe(&s.name), human(s.size));
        }
    }
    let locks = img.list_lockers()?;
    if !locks.lockers.is_empty() {
        let kind = if locks.exclusive { "exclusive".to_string() } else { format!("shared, tag '{}'", terminal_safe(&locks.tag)) };
        println!("\tlock ({kind}):");
        for l in locks.lockers {
            println!("\t\t{} cookie '{}' at {}", terminal_safe(&l.client), terminal_safe(&l.cookie), terminal_safe(&l.address));
        }
    }
    Ok(())
}

fn feature_names(bits: u64) -> String {
    const NAMES: [(u64, &str); 8] = [
        (1, "layering"),
        (2, "striping"),
        (4, "exclusive-lock"),
        (8, "object-map"),
        (16, "fast-diff"),
        (32, "deep-flatten"),
        (64, "journaling"),
        (128, "data-pool"),
    ];
    let names: Vec<&str> = NAMES.iter().filter(|(b, _)| bits & b != 0).map(|(_, n)| *n).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

