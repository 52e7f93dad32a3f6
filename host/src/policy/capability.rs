//! Grants, and the one place where a guest's permission is decided.
//!
//! An operator grants a job pools, image-name patterns within them, and a set of
//! operations. Everything a guest holds was minted here: [`Grants::pool`] answers the
//! pool capability for a granted pool (and nothing for any other), and
//! [`PoolCapability::image`] answers the operations a named image may undergo (and nothing
//! for an image outside the grant, which the guest then sees as not found). After minting,
//! host code asks the capability ([`ImageCapability::require`]) and never looks at grants
//! again.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use rbd_backend::Error;

/// One operation a grant can allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    /// Open, read, stat, list snapshots, set-snap, diff-iterate, list lockers and children.
    Read,
    /// Write, discard, flush, flatten.
    Write,
    Resize,
    SnapshotCreate,
    SnapshotRemove,
    SnapshotRollback,
    /// Protect and unprotect.
    SnapshotProtect,
    /// Clone a snapshot of this image (the child must fall under a `create` grant too).
    Clone,
    /// Create an image with this name (also the target of clone, copy and rename).
    Create,
    Remove,
    /// Rename an image away from this name.
    Rename,
    /// Take and release this client's advisory locks.
    Lock,
    /// Break another client's lock.
    BreakLock,
}

impl Operation {
    pub const ALL: [Operation; 13] = [
        Operation::Read,
        Operation::Write,
        Operation::Resize,
        Operation::SnapshotCreate,
        Operation::SnapshotRemove,
        Operation::SnapshotRollback,
        Operation::SnapshotProtect,
        Operation::Clone,
        Operation::Create,
        Operation::Remove,
        Operation::Rename,
        Operation::Lock,
        Operation::BreakLock,
    ];

    /// The name used in manifests and the audit log.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Write => "write",
            Operation::Resize => "resize",
            Operation::SnapshotCreate => "snapshot-create",
            Operation::SnapshotRemove => "snapshot-remove",
            Operation::SnapshotRollback => "snapshot-rollback",
            Operation::SnapshotProtect => "snapshot-protect",
            Operation::Clone => "clone",
            Operation::Create => "create",
            Operation::Remove => "remove",
            Operation::Rename => "rename",
            Operation::Lock => "lock",
            Operation::BreakLock => "break-lock",
        }
    }

    /// Whether the operation can change stored state (these are audited).
    pub fn mutates(self) -> bool {
        self != Operation::Read
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Operation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Operation::ALL
            .into_iter()
            .find(|op| op.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Operation::ALL.iter().map(|o| o.name()).collect();
                format!("unknown operation `{s}` (expected one of: {}, or `all`)", names.join(", "))
            })
    }
}

/// A set of operations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Operations(BTreeSet<Operation>);

impl Operations {
    pub fn all() -> Self {
        Operations(Operation::ALL.into_iter().collect())
    }

    pub fn read_only() -> Self {
        Operations([Operation::Read].into_iter().collect())
    }

    pub fn contains(&self, op: Operation) -> bool {
        self.0.contains(&op)
    }

    /// Whether an image opened under these operations must be opened read-only: none of them
    /// writes to the image through the handle.
    pub fn is_read_only(&self) -> bool {
        !self.0.iter().any(|op| {
            matches!(
                op,
                Operation::Write
                    | Operation::Resize
                    | Operation::SnapshotCreate
                    | Operation::SnapshotRemove
                    | Operation::SnapshotRollback
                    | Operation::SnapshotProtect
                    | Operation::Lock
                    | Operation::BreakLock
            )
        })
    }

    fn union(&mut self, other: &Operations) {
        self.0.extend(other.0.iter().copied());
    }
}

impl FromIterator<Operation> for Operations {
    fn from_iter<I: IntoIterator<Item = Operation>>(iter: I) -> Self {
        Operations(iter.into_iter().collect())
    }
}

impl FromStr for Operations {
    type Err = String;
    /// A comma-separated list of operation names, or `all`.
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim() == "all" {
            return Ok(Operations::all());
        }
        s.split(',').map(|op| op.trim().parse()).collect()
    }
}

/// An image-name pattern: `*` matches any run of characters, everything else itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePattern(String);

impl ImagePattern {
    pub fn any() -> Self {
        ImagePattern("*".into())
    }

    pub fn new(pattern: impl Into<String>) -> Self {
        ImagePattern(pattern.into())
    }

    pub fn matches(&self, name: &str) -> bool {
        glob_match(self.0.as_bytes(), name.as_bytes())
    }
}

impl fmt::Display for ImagePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `*`-only glob matching, iterative (no recursion a long name could blow up).
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            backtrack = Some((p, n));
            p += 1;
        } else if p < pattern.len() && pattern[p] == name[n] {
            p += 1;
            n += 1;
        } else if let Some((bp, bn)) = backtrack {
            p = bp + 1;
            n = bn + 1;
            backtrack = Some((bp, bn + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// One grant: operations on the images of a pool whose names match a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub pool: String,
    pub images: ImagePattern,
    pub operations: Operations,
}

impl Grant {
    /// Every operation on every image of `pool`.
    pub fn full(pool: impl Into<String>) -> Self {
        Grant { pool: pool.into(), images: ImagePattern::any(), operations: Operations::all() }
    }
}

/// All the grants of one job.
#[derive(Debug, Clone, Default)]
pub struct Grants(Vec<Grant>);

impl Grants {
    pub fn new(grants: Vec<Grant>) -> Self {
        Grants(grants)
    }

    /// The granted pool names, in the order first granted, without repeats.
    pub fn pools(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for g in &self.0 {
            if !names.contains(&g.pool) {
                names.push(g.pool.clone());
            }
        }
        names
    }

    /// Mint the capability for a pool, or `NotFound` for a pool this job was not granted
    /// (indistinguishable from a pool that does not exist).
    pub fn pool(&self, pool: &str) -> Result<PoolCapability, Error> {
        let grants: Vec<Grant> = self.0.iter().filter(|g| g.pool == pool).cloned().collect();
        if grants.is_empty() {
            return Err(Error::NotFound(format!("pool `{pool}`")));
        }
        Ok(PoolCapability { pool: pool.to_owned(), grants })
    }
}

/// What a job may do in one pool.
#[derive(Debug, Clone)]
pub struct PoolCapability {
    pool: String,
    grants: Vec<Grant>,
}

impl PoolCapability {
    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// Whether the job may see an image of this name at all.
    pub fn can_see(&self, image: &str) -> bool {
        self.grants.iter().any(|g| g.images.matches(image))
    }

    /// Mint the capability for an image: the union of the operations of every grant whose
    /// pattern matches. `NotFound` when none does, so that an image outside the grant looks
    /// like one that does not exist.
    pub fn image(&self, image: &str) -> Result<ImageCapability, Error> {
        let mut operations = Operations::default();
        let mut patterns: Vec<String> = Vec::new();
        for g in self.grants.iter().filter(|g| g.images.matches(image)) {
            patterns.push(format!("{}/{}", g.pool, g.images));
            operations.union(&g.operations);
        }
        if patterns.is_empty() {
            return Err(Error::NotFound(format!("image `{image}` in pool `{}`", self.pool)));
        }
        Ok(ImageCapability { pool: self.pool.clone(), image: image.to_owned(), operations, grant: patterns.join(",") })
    }

    /// Check an operation on a named image of this pool (for pool-level calls such as
    /// create, remove and rename, which name an image rather than hold it).
    pub fn require(&self, image: &str, op: Operation) -> Result<ImageCapability, Error> {
        let cap = self.image(image)?;
        cap.require(op)?;
        Ok(cap)
    }
}

/// What a job may do to one image.
#[derive(Debug, Clone)]
pub struct ImageCapability {
    pool: String,
    image: String,
    operations: Operations,
    /// The grants that matched, as `pool/pattern` (for the audit log).
    grant: String,
}

impl ImageCapability {
    pub fn pool(&self) -> &str {
        &self.pool
    }

    pub fn image(&self) -> &str {
        &self.image
    }

    pub fn operations(&self) -> &Operations {
        &self.operations
    }

    /// The grants this capability was minted from, as `pool/pattern[,…]`.
    pub fn grant(&self) -> &str {
        &self.grant
    }

    /// `PermissionDenied` unless the grant allows `op`.
    pub fn require(&self, op: Operation) -> Result<(), Error> {
        if self.operations.contains(op) {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "the job's grant does not allow `{op}` on image `{}` in pool `{}`",
                self.image, self.pool
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_star_anywhere() {
        let p = ImagePattern::new("vm-*-disk*");
        assert!(p.matches("vm-1-disk"));
        assert!(p.matches("vm-12-disk0"));
        assert!(!p.matches("vm-1-dis"));
        assert!(!p.matches("xvm-1-disk"));
        assert!(ImagePattern::any().matches(""));
        assert!(ImagePattern::new("a").matches("a"));
        assert!(!ImagePattern::new("a").matches("ab"));
    }

    #[test]
    fn ungranted_pool_is_not_found() {
        let grants = Grants::new(vec![Grant::full("rbd")]);
        assert!(grants.pool("rbd").is_ok());
        assert_eq!(grants.pool("other").unwrap_err().kind(), "not-found");
    }

    #[test]
    fn image_outside_pattern_is_not_found_and_missing_op_is_denied() {
        let grants = Grants::new(vec![Grant {
            pool: "rbd".into(),
            images: ImagePattern::new("backup-*"),
            operations: "read,snapshot-create".parse().unwrap(),
        }]);
        let pool = grants.pool("rbd").unwrap();
        assert_eq!(pool.image("vm1").unwrap_err().kind(), "not-found");
        let cap = pool.image("backup-1").unwrap();
        assert!(cap.require(Operation::Read).is_ok());
        assert_eq!(cap.require(Operation::Write).unwrap_err().kind(), "permission-denied");
        assert!(!cap.operations().is_read_only());
    }

    #[test]
    fn operations_parse_and_reject_unknown() {
        assert_eq!("all".parse::<Operations>().unwrap(), Operations::all());
        assert!("read,frobnicate".parse::<Operations>().is_err());
        assert!("read".parse::<Operations>().unwrap().is_read_only());
    }
}
