//! What `bench-native` and `bench-host` share: opening a backend, the workload's data (a pure
//! function of a seed and an offset, so both backends get the same bytes), and process
//! memory figures.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use rbd_backend::embedded::EmbeddedBackend;
use rbd_backend::librbd::{ConnectOptions, LibrbdBackend};
use rbd_backend::Backend;

/// Where the images are: a Ceph cluster (`--conf`) or an embedded store (`--store`).
#[derive(clap::Args, Debug, Clone)]
pub struct Store {
    /// The cluster's ceph.conf (librbd).
    #[arg(short = 'c', long, conflicts_with = "store")]
    pub conf: Option<PathBuf>,
    /// The embedded store's directory.
    #[arg(long)]
    pub store: Option<PathBuf>,
    #[arg(long, default_value = "rbd")]
    pub pool: String,
}

impl Store {
    pub fn open(&self) -> anyhow::Result<Arc<dyn Backend>> {
        match (&self.conf, &self.store) {
            (Some(conf), _) => {
                let options = ConnectOptions { conf: Some(conf.clone()), ..ConnectOptions::default() };
                Ok(Arc::new(LibrbdBackend::connect(&options).with_context(|| format!("connecting with {}", conf.display()))?))
            }
            (None, Some(dir)) => {
                Ok(Arc::new(EmbeddedBackend::open(dir).with_context(|| format!("opening the store {}", dir.display()))?))
            }
            (None, None) => anyhow::bail!("give --conf CEPH_CONF or --store DIR"),
        }
    }
}

/// splitmix64: a fast, well-mixed function of one word.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The workload's bytes at `[offset, offset + buf.len())` for `seed`: incompressible and never
/// all zero (so `rbd export-diff` never turns a data extent into a zero record). `offset` and
/// the length must be multiples of 8.
pub fn fill_data(seed: u64, offset: u64, buf: &mut [u8]) {
    let key = mix(seed);
    for (i, word) in buf.chunks_exact_mut(8).enumerate() {
        let v = mix(key ^ (offset / 8 + i as u64)) | 1;
        word.copy_from_slice(&v.to_le_bytes());
    }
}

/// A seeded sequence of random numbers (splitmix64 stepping).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in `[lo, hi]`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// Non-overlapping extents `(offset, length)`, sorted, 4 KiB-aligned, each `min..=max` bytes,
/// placed at random in an image of `size` bytes until they cover `fraction` of it.
pub fn scattered_extents(size: u64, fraction: f64, min: u64, max: u64, seed: u64) -> Vec<(u64, u64)> {
    const ALIGN: u64 = 4096;
    let target = (size as f64 * fraction) as u64;
    let mut rng = Rng::new(seed);
    let mut taken: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
    let mut covered = 0;
    let mut misses = 0;
    while covered < target && misses < 100_000 {
        // The last extent is cut to what is left to cover, but never below `min`.
        let len = rng.range(min / ALIGN, max.min(size) / ALIGN) * ALIGN;
        let left = (target - covered).div_ceil(ALIGN) * ALIGN;
        let len = len.min(left).max(min.div_ceil(ALIGN) * ALIGN);
        let offset = rng.range(0, (size - len) / ALIGN) * ALIGN;
        let before = taken.range(..offset + len).next_back();
        if before.is_some_and(|(&o, &l)| o + l > offset) {
            misses += 1;
            continue;
        }
        taken.insert(offset, len);
        covered += len;
    }
    taken.into_iter().collect()
}

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resident set size now, in bytes.
pub fn rss_bytes() -> u64 {
    status_kib("VmRSS:").unwrap_or(0) * 1024
}

/// Peak resident set size since start or the last [`reset_peak_rss`], in bytes.
pub fn peak_rss_bytes() -> u64 {
    status_kib("VmHWM:").unwrap_or(0) * 1024
}

/// Reset the peak RSS to the current RSS (Linux: `5` into `/proc/self/clear_refs`).
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_do_not_overlap_and_cover_the_fraction() {
        let size = 64 << 20;
        let extents = scattered_extents(size, 0.25, 64 << 10, 4 << 20, 7);
        let total: u64 = extents.iter().map(|e| e.1).sum();
        assert!(total >= size / 4 && total < size / 4 + (64 << 10) + 4096, "{total}");
        for w in extents.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0);
        }
        assert!(extents.iter().all(|&(o, l)| o % 4096 == 0 && l % 4096 == 0 && o + l <= size));
    }
}
