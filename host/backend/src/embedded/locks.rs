//! Advisory image locks, as Ceph's `cls_lock` keeps them in the image header.
//!
//! They are plain data in the header (so they persist until unlocked or broken, like a
//! crashed client's lock in Ceph), and these functions are `cls_lock`'s rules over that
//! data, checked in `cls_lock`'s order: a tag conflict first, then "this locker already",
//! then exclusivity.
//!
//! The exclusive-lock feature's lock is the same lock on a cluster (`rbd_lock`, exclusive,
//! tag `internal`, cookie `auto <n>`): a handle takes it when it first writes, hands it to
//! another handle that writes, and releases it when it closes. So after a write, advisory
//! `lock_exclusive` and `lock_shared` answer `Busy` (the writer's own too), and
//! `list_lockers` shows it; breaking it blocklists the writer.

use serde::{Deserialize, Serialize};

use crate::{Error, LockInfo, Locker, Result};

/// Who is asking: `client.<n>` and its address.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub client: String,
    pub address: String,
}

/// One holder of the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Holder {
    pub client: String,
    pub cookie: String,
    pub address: String,
}

/// The lock state of an image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Locks {
    pub tag: String,
    pub exclusive: bool,
    pub holders: Vec<Holder>,
}

/// The tag of the exclusive-lock feature's lock.
pub(crate) const MANAGED_TAG: &str = "internal";

impl Locks {
    /// The holder of the exclusive-lock feature's lock, if that is what is held.
    pub fn managed(&self) -> Option<&Holder> {
        match self.holders.as_slice() {
            [h] if self.exclusive && self.tag == MANAGED_TAG && h.cookie.starts_with("auto ") => Some(h),
            _ => None,
        }
    }

    /// Take the exclusive-lock feature's lock for `me`'s handle `cookie`: free, or handed
    /// over by the handle that holds it (librbd's owner releases it on request). `Busy` if
    /// an advisory lock is held: librbd's write would wait for it for ever.
    pub fn take_managed(&mut self, me: &Identity, cookie: &str) -> Result<()> {
        if !self.holders.is_empty() && self.managed().is_none() {
            return Err(Error::Busy(
                "the image holds an advisory lock; with the exclusive-lock feature a write would wait for it".into(),
            ));
        }
        *self = Locks {
            tag: MANAGED_TAG.into(),
            exclusive: true,
            holders: vec![Holder { client: me.client.clone(), cookie: cookie.into(), address: me.address.clone() }],
        };
        Ok(())
    }

    /// Whether `client`'s handle `cookie` holds the exclusive-lock feature's lock.
    pub fn owns_managed(&self, client: &str, cookie: &str) -> bool {
        self.managed().is_some_and(|h| h.client == client && h.cookie == cookie)
    }

    fn held_by(&self, client: &str, cookie: &str) -> Option<usize> {
        self.holders.iter().position(|h| h.client == client && h.cookie == cookie)
    }

    /// Take the lock (exclusive, or shared with `tag`).
    pub fn lock(&mut self, me: &Identity, cookie: &str, exclusive: bool, tag: &str) -> Result<()> {
        if !self.holders.is_empty() && self.tag != tag {
            return Err(Error::Busy(format!("image is locked with tag {:?}", self.tag)));
        }
        if self.held_by(&me.client, cookie).is_some() {
            return Err(Error::Exists(format!("{} already holds the lock with cookie {cookie:?}", me.client)));
        }
        if !self.holders.is_empty() && (exclusive || self.exclusive) {
            return Err(Error::Busy("image is locked by another client".into()));
        }
        self.exclusive = exclusive;
        self.tag = tag.to_string();
        self.holders.push(Holder {
            client: me.client.clone(),
            cookie: cookie.to_string(),
            address: me.address.clone(),
        });
        Ok(())
    }

    /// Release the lock held by `client` with `cookie`; `NotFound` if there is none.
    pub fn unlock(&mut self, client: &str, cookie: &str) -> Result<()> {
        let at = self
            .held_by(client, cookie)
            .ok_or_else(|| Error::NotFound(format!("no lock held by {client} with cookie {cookie:?}")))?;
        self.holders.remove(at);
        if self.holders.is_empty() {
            *self = Locks::default();
        }
        Ok(())
    }

    /// `Image.list_lockers()`.
    pub fn info(&self) -> LockInfo {
        if self.holders.is_empty() {
            return LockInfo::default();
        }
        let mut lockers: Vec<Locker> = self
            .holders
            .iter()
            .map(|h| Locker { client: h.client.clone(), cookie: h.cookie.clone(), address: h.address.clone() })
            .collect();
        lockers.sort();
        LockInfo { tag: self.tag.clone(), exclusive: self.exclusive, lockers }
    }
}

/// A locker's name must parse as a Ceph entity (`client.4151`); anything else is
/// `InvalidArgument`, as `break_lock` answers on a cluster.
pub(crate) fn check_entity(name: &str) -> Result<()> {
    let valid = name.split_once('.').is_some_and(|(kind, id)| {
        matches!(kind, "client" | "mon" | "osd" | "mds" | "mgr") && !id.is_empty() && id.parse::<u64>().is_ok()
    });
    if !valid {
        return Err(Error::InvalidArgument(format!("{name:?} is not a client name")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(n: u32) -> Identity {
        Identity { client: format!("client.{n}"), address: format!("embedded:1/{n}") }
    }

    #[test]
    fn tag_conflict_wins_over_same_cookie() {
        let mut l = Locks::default();
        l.lock(&who(1), "c", false, "t").unwrap();
        assert!(matches!(l.lock(&who(1), "c", true, ""), Err(Error::Busy(_))));
        assert!(matches!(l.lock(&who(1), "c", false, "t"), Err(Error::Exists(_))));
        l.lock(&who(2), "c", false, "t").unwrap();
        assert_eq!(l.info().lockers.len(), 2);
        l.unlock("client.1", "c").unwrap();
        l.unlock("client.2", "c").unwrap();
        assert_eq!(l.info(), LockInfo::default());
    }

    #[test]
    fn the_managed_lock_is_handed_over_and_shuts_out_advisory_locks() {
        let mut l = Locks::default();
        l.take_managed(&who(1), "auto 7").unwrap();
        assert!(l.owns_managed("client.1", "auto 7"));
        assert_eq!(l.info().tag, "internal");
        assert!(matches!(l.lock(&who(1), "c", true, ""), Err(Error::Busy(_))), "even the writer's");
        assert!(matches!(l.lock(&who(2), "c", false, "internal"), Err(Error::Busy(_))));
        l.take_managed(&who(2), "auto 3").unwrap();
        assert!(!l.owns_managed("client.1", "auto 7") && l.owns_managed("client.2", "auto 3"));
        l.unlock("client.2", "auto 3").unwrap();
        l.lock(&who(1), "c", true, "").unwrap();
        assert!(matches!(l.take_managed(&who(2), "auto 3"), Err(Error::Busy(_))), "an advisory lock blocks writes");
        assert!(l.managed().is_none());
    }
}
