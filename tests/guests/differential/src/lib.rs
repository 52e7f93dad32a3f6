//! The guest half of the differential test: run an operation script through the `ceph:rbd`
//! API and print one line per operation. `tests/differential/oracle.py` runs the same script
//! through python-rbd; the host test compares the two outputs line by line.
//!
//! Arguments: `PREFIX OP...`; each OP is one string of space-separated words (the language
//! is described in oracle.py, which is its reference). Image aliases become `PREFIX-ALIAS` in
//! pool `rbd`. Output lines are `ok[ VALUE]` or `err KIND`.

use std::collections::BTreeMap;

use rbd_wasm_guest::{open_pool, CreateOptions, Error, Image, Pool};
use sha2::{Digest, Sha256};

struct Runner {
    prefix: String,
    pool: Pool,
    images: BTreeMap<String, Image>,
}

type Out = Result<String, Error>;

/// Deterministic data: byte i is ((i + seed) * 31) mod 251 (oracle.py makes the same).
fn pattern(len: u64, seed: u64) -> Vec<u8> {
    (0..len).map(|i| (((i + seed) * 31) % 251) as u8).collect()
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn num(words: &[&str], i: usize) -> u64 {
    words.get(i).and_then(|w| w.parse().ok()).unwrap_or(0)
}

fn word<'a>(words: &[&'a str], i: usize) -> &'a str {
    words.get(i).copied().unwrap_or("")
}

fn read_all(img: &Image) -> Result<Vec<u8>, Error> {
    let size = img.size()?;
    let mut out = Vec::with_capacity(size as usize);
    while (out.len() as u64) < size {
        let chunk = img.read(out.len() as u64, (4 << 20).min(size - out.len() as u64))?;
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

impl Runner {
    fn name(&self, alias: &str) -> String {
        format!("{}-{alias}", self.prefix)
    }

    fn image(&mut self, alias: &str) -> Result<&Image, Error> {
        if !self.images.contains_key(alias) {
            let img = self.pool.open(&self.name(alias))?;
            self.images.insert(alias.to_owned(), img);
        }
        Ok(&self.images[alias])
    }

    fn op(&mut self, line: &str) -> Out {
        let w: Vec<&str> = line.split_whitespace().collect();
        let alias = word(&w, 1);
        match word(&w, 0) {
            "create" => {
                let order = w.get(3).and_then(|o| o.parse().ok());
                let o = CreateOptions { order, ..Default::default() };
                self.pool.create_with(&self.name(alias), num(&w, 2), &o).map(|_| "ok".into())
            }
            "createf" => {
                let o = CreateOptions { features: num(&w, 3), ..Default::default() };
                self.pool.create_with(&self.name(alias), num(&w, 2), &o).map(|_| "ok".into())
            }
            "clonef" => {
                let (parent, snap, child) = (self.name(alias), word(&w, 2).to_owned(), self.name(word(&w, 3)));
                let o = rbd_wasm_guest::CloneOptions { features: num(&w, 4), order: w.get(5).and_then(|o| o.parse().ok()) };
                self.pool.clone_image_with(&parent, &snap, &self.pool, &child, &o).map(|_| "ok".into())
            }
            "removeopen" => {
                self.image(alias)?;
                self.pool.remove(&self.name(alias)).map(|_| "ok".into())
            }
            "isprot" => self.image(alias)?.is_protected_snap(word(&w, 2)).map(|p| format!("ok {p}")),
            "breaklock" => self.image(alias)?.break_lock(word(&w, 2), word(&w, 3)).map(|_| "ok".into()),
            "close" => Ok(if self.images.remove(alias).is_some() { "ok" } else { "ok not-open" }.into()),
            "remove" => {
                self.images.remove(alias);
                self.pool.remove(&self.name(alias)).map(|_| "ok".into())
            }
            "rename" => {
                self.images.remove(alias);
                self.pool.rename(&self.name(alias), &self.name(word(&w, 2))).map(|_| "ok".into())
            }
            "list" => {
                let mine = format!("{}-", self.prefix);
                let names: Vec<String> = self
                    .pool
                    .list()?
                    .into_iter()
                    .filter_map(|n| n.strip_prefix(&mine).map(str::to_owned))
                    .collect();
                Ok(format!("ok {}", names.join(",")))
            }
            "clone" => {
                let (parent, snap, child) = (self.name(alias), word(&w, 2).to_owned(), self.name(word(&w, 3)));
                self.pool.clone_image(&parent, &snap, &self.pool, &child).map(|_| "ok".into())
            }
            "copy" => {
                let dest = self.name(word(&w, 2));
                let pool = open_pool("rbd")?;
                self.image(alias)?.copy(&pool, &dest).map(|_| "ok".into())
            }
            "write" => {
                let data = pattern(num(&w, 3), num(&w, 4));
                self.image(alias)?.write(num(&w, 2), &data).map(|n| format!("ok {n}"))
            }
            "read" => self.image(alias)?.read(num(&w, 2), num(&w, 3)).map(|d| format!("ok {} {}", d.len(), sha(&d))),
            "discard" => self.image(alias)?.discard(num(&w, 2), num(&w, 3)).map(|_| "ok".into()),
            "resize" => self.image(alias)?.resize(num(&w, 2)).map(|_| "ok".into()),
            "flatten" => self.image(alias)?.flatten().map(|_| "ok".into()),
            "snap" => self.image(alias)?.create_snap(word(&w, 2)).map(|_| "ok".into()),
            "rmsnap" => self.image(alias)?.remove_snap(word(&w, 2)).map(|_| "ok".into()),
            "protect" => self.image(alias)?.protect_snap(word(&w, 2)).map(|_| "ok".into()),
            "unprotect" => self.image(alias)?.unprotect_snap(word(&w, 2)).map(|_| "ok".into()),
            "rollback" => self.image(alias)?.rollback_to_snap(word(&w, 2)).map(|_| "ok".into()),
            "setsnap" => {
                let snap = match word(&w, 2) {
                    "-" => None,
                    s => Some(s),
                };
                self.image(alias)?.set_snap(snap).map(|_| "ok".into())
            }
            "lockx" => self.image(alias)?.lock_exclusive(word(&w, 2)).map(|_| "ok".into()),
            "locks" => self.image(alias)?.lock_shared(word(&w, 2), word(&w, 3)).map(|_| "ok".into()),
            "unlock" => self.image(alias)?.unlock(word(&w, 2)).map(|_| "ok".into()),
            "lockers" => {
                let info = self.image(alias)?.list_lockers()?;
                let mut cookies: Vec<String> = info.lockers.into_iter().map(|l| l.cookie).collect();
                cookies.sort();
                let exclusive = !cookies.is_empty() && info.exclusive;
                Ok(format!("ok exclusive={exclusive} tag={} cookies={}", info.tag, cookies.join(",")))
            }
            "flush" => self.image(alias)?.flush().map(|_| "ok".into()),
            "invalidate" => self.image(alias)?.invalidate_cache().map(|_| "ok".into()),
            "oldformat" => self.image(alias)?.old_format().map(|f| format!("ok {f}")),
            "version" => {
                let v = rbd_wasm_guest::version();
                Ok(format!("ok {}.{}.{}", v.major, v.minor, v.extra))
            }
            "children" => {
                let mine = format!("{}-", self.prefix);
                let img = self.image(alias)?;
                img.set_snap(Some(word(&w, 2)))?;
                let children = img.list_children();
                img.set_snap(None)?;
                let mut names: Vec<String> = children?
                    .into_iter()
                    .map(|c| format!("{}/{}", c.pool, c.image.strip_prefix(&mine).unwrap_or(&c.image)))
                    .collect();
                names.sort();
                Ok(format!("ok {}", names.join(",")))
            }
            "rowrite" => {
                let ro = self.pool.open_read_only(&self.name(alias))?;
                ro.write(num(&w, 2), b"x").map(|n| format!("ok {n}"))
            }
            "diff" => self.diff(alias, word(&w, 2)),
            "state" => self.state(alias),
            other => Ok(format!("err unknown-op {other}")),
        }
    }

    /// Apply the diff from FROM (or `-`, the beginning) to the selected state, onto the FROM
    /// state, and say whether that gives the selected state; and list the extents.
    fn diff(&mut self, alias: &str, from: &str) -> Out {
        let from = (from != "-").then_some(from);
        let img = self.image(alias)?;
        let size = img.size()?;
        let extents: Vec<_> = img.diff_iterate(0, size, from)?.collect::<Result<_, _>>()?;
        let new = read_all(img)?;
        let mut old = match from {
            None => Vec::new(),
            Some(snap) => {
                let at = open_pool("rbd")?.open_at_snapshot(&img.name(), snap)?;
                read_all(&at)?
            }
        };
        old.resize(size as usize, 0);
        for e in &extents {
            let (start, end) = (e.offset as usize, (e.offset + e.length) as usize);
            if end > old.len() {
                return Ok(format!("ok diff-extent-past-end {start}+{}", e.length));
            }
            if e.exists {
                old[start..end].copy_from_slice(&new[start..end]);
            } else {
                old[start..end].fill(0);
            }
        }
        // The extents themselves, exactly as reported: the embedded store must answer as librbd.
        let listed: Vec<String> =
            extents.iter().map(|e| format!("{}+{}{}", e.offset, e.length, if e.exists { "d" } else { "z" })).collect();
        let verdict = if old == new { "diff-reproduces" } else { "diff-mismatch" };
        Ok(format!("ok {verdict} [{}]", listed.join(",")))
    }

    /// Everything comparable about an image: layout, snapshots (names, sizes, protection,
    /// data), head data, parent.
    fn state(&mut self, alias: &str) -> Out {
        let mine = format!("{}-", self.prefix);
        let img = self.image(alias)?;
        let stat = img.stat()?;
        let mut parts = vec![format!(
            "size={} order={} obj_size={} num_objs={} features={} stripe={}/{}",
            stat.size,
            stat.order,
            stat.obj_size,
            stat.num_objs,
            img.features()?,
            img.stripe_unit()?,
            img.stripe_count()?
        )];
        parts.push(format!("head={}", sha(&read_all(img)?)));
        let parent = img.parent_info()?.map(|p| format!("{}@{}", p.image, p.snap)).unwrap_or_else(|| "-".into());
        parts.push(format!("parent={}", parent.replace(&mine, "")));
        let name = img.name();
        for snap in img.list_snaps()? {
            let at = open_pool("rbd")?.open_at_snapshot(&name, &snap.name)?;
            let protected = img.is_protected_snap(&snap.name)?;
            parts.push(format!("snap={}:{}:{}:{}", snap.name, snap.size, protected, sha(&read_all(&at)?)));
        }
        Ok(format!("ok {}", parts.join(" ")))
    }
}

fn run(args: Vec<String>) -> Result<(), String> {
    let (prefix, ops) = args.split_first().ok_or("usage: PREFIX OP...")?;
    let mut runner = Runner {
        prefix: prefix.clone(),
        pool: open_pool("rbd").map_err(|e| e.to_string())?,
        images: BTreeMap::new(),
    };
    for op in ops {
        match runner.op(op) {
            Ok(line) => println!("{line}"),
            Err(e) => println!("err {}", e.kind()),
        }
    }
    Ok(())
}

rbd_wasm_guest::job!(run);
