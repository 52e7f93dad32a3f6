//! The `diff-iterator` resource: a diff-iterate handed out a batch at a time, each batch one
//! backend call over a bounded window of objects (so a batch's memory is bounded however
//! large the image), each `next-batch` charged as an operation.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use rbd_backend::{Error, Image};
use wasmtime::component::Resource;

use super::image::OpenImage;
use super::{blocking, HostResult, ImageHandle, RbdView};
use crate::bindings::ceph::rbd::{rbd, types};
use crate::capability::Operation;
use crate::meter::{HandleSlot, Meter};

/// Objects covered by one backend diff call behind `next-batch`: bounds a batch's memory.
const DIFF_WINDOW_OBJECTS: u64 = 1024;
/// A window that found nothing doubles, up to this many times the base, so a huge sparse
/// image takes a few dozen backend calls rather than thousands (each librbd diff call costs
/// milliseconds even over empty objects).
const DIFF_WINDOW_MAX_GROWTH: u64 = 64;

/// A diff-iterate in progress.
pub struct DiffIterator {
    open: Arc<OpenImage>,
    meter: Arc<Meter>,
    watch: Arc<super::BackendWatch>,
    from: Option<String>,
    include_parent: bool,
    whole_object: bool,
    next: u64,
    end: u64,
    /// The current window; grows over empty stretches, back to `base_window` after data.
    window: u64,
    base_window: u64,
    selection: u64,
    /// The batch computed when the iterator was made, not yet handed out.
    pending: Option<Vec<types::Extent>>,
    _slot: HandleSlot,
}

impl ImageHandle {
    pub(super) async fn diff_iterate(
        &self,
        offset: u64,
        length: u64,
        from_snapshot: Option<String>,
        include_parent: bool,
        whole_object: bool,
    ) -> HostResult<DiffIterator> {
        let end = offset
            .checked_add(length)
            .ok_or_else(|| Error::InvalidArgument(format!("offset {offset} + length {length} overflows")))?;
        let slot = self.scope.meter().handle_slot()?;
        let selection = self.open.selection.load(Ordering::SeqCst);
        // The first window runs now, so a bad from-snapshot fails here and not at the
        // first batch.
        let from = from_snapshot.clone();
        let (stat, first) = self
            .call("diff-iterate", Some(Operation::Read), move |i| {
                let stat = i.stat()?;
                let end = end.min(stat.size);
                let window = diff_window(stat.obj_size);
                let length = window.min(end.saturating_sub(offset));
                let batch = diff_batch(i, offset, length, from.as_deref(), include_parent, whole_object)?;
                Ok((stat, batch))
            })
            .await?;
        let window = diff_window(stat.obj_size);
        let end = end.min(stat.size);
        Ok(DiffIterator {
            open: self.open.clone(),
            meter: self.scope.meter().clone(),
            watch: self.scope.watch().clone(),
            from: from_snapshot,
            include_parent,
            whole_object,
            next: offset.saturating_add(window).min(end.max(offset)),
            end,
            window,
            base_window: window,
            selection,
            pending: Some(first).filter(|b| !b.is_empty()),
            _slot: slot,
        })
    }
}

impl rbd::HostDiffIterator for RbdView<'_> {
    async fn next_batch(&mut self, iter: Resource<DiffIterator>) -> HostResult<Option<Vec<types::Extent>>> {
        let it = self.table.get_mut(&iter)?;
        it.meter.operation()?;
        if !it.open.is_open() {
            return Err(Error::NotFound("the image of this diff-iterate was closed".into()).into());
        }
        if it.open.selection.load(Ordering::SeqCst) != it.selection {
            return Err(Error::InvalidArgument("set-snap was called while this diff-iterate was in progress".into()).into());
        }
        if let Some(batch) = it.pending.take() {
            return Ok(Some(batch));
        }
        loop {
            let it = self.table.get(&iter)?;
            if it.next >= it.end {
                return Ok(None);
            }
            let start = it.next;
            let length = it.window.min(it.end - start);
            let (open, from, watch) = (it.open.clone(), it.from.clone(), it.watch.clone());
            let (include_parent, whole_object) = (it.include_parent, it.whole_object);
            let batch =
                blocking(&watch, move || open.with(|i| diff_batch(i, start, length, from.as_deref(), include_parent, whole_object)))
                    .await?;
            let it = self.table.get_mut(&iter)?;
            it.next = start + length;
            if batch.is_empty() {
                let max = it.base_window.saturating_mul(DIFF_WINDOW_MAX_GROWTH);
                it.window = it.window.saturating_mul(2).min(max);
            } else {
                it.window = it.base_window;
                return Ok(Some(batch));
            }
        }
    }

    async fn drop(&mut self, iter: Resource<DiffIterator>) -> wasmtime::Result<()> {
        self.table.delete(iter)?;
        Ok(())
    }
}

fn diff_window(obj_size: u64) -> u64 {
    obj_size.saturating_mul(DIFF_WINDOW_OBJECTS).max(1)
}

/// One backend diff call over `[offset, offset + length)`, collected.
fn diff_batch(
    image: &dyn Image,
    offset: u64,
    length: u64,
    from: Option<&str>,
    include_parent: bool,
    whole_object: bool,
) -> Result<Vec<types::Extent>, Error> {
    let mut batch = Vec::new();
    image.diff_iterate(offset, length, from, include_parent, whole_object, &mut |e| {
        batch.push(types::Extent { offset: e.offset, length: e.length, exists: e.exists })
    })?;
    Ok(batch)
}
