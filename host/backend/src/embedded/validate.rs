//! Name and option rules, checked before anything touches the disk.
//!
//! They live in one place so that every entry point (create, clone, copy, rename, snapshots)
//! applies the same rule, and so the rule can be read next to librbd's: the comments say
//! which librbd check each one mirrors.

use crate::{features, CloneOptions, CreateOptions, Error, Result, DEFAULT_ORDER};

/// The longest pool name, in bytes (pools are directories of the store).
pub(crate) const MAX_POOL_NAME_LEN: usize = 255;
/// The longest image or snapshot name: RADOS refuses object names over 2048 bytes
/// (`osd_max_object_name_len`), and an image's id object is `rbd_id.<name>`.
pub(crate) const MAX_NAME_LEN: usize = 2048 - "rbd_id.".len();
const ENAMETOOLONG: i32 = 36;
/// The smallest object order librbd accepts (4 KiB objects).
pub(crate) const MIN_ORDER: u8 = 12;
/// The largest object order librbd accepts (32 MiB objects).
pub(crate) const MAX_ORDER: u8 = 25;

/// Every feature bit a client may ask for (`RBD_FEATURE_*` up to data-pool).
const USER_FEATURES: u64 = 0xff;
/// `RBD_FEATURES_ALL` on Pacific: the user bits plus operations, migrating and non-primary,
/// which librbd controls itself.
const ALL_FEATURES: u64 = 0x7ff;

/// An image or snapshot name that is about to be created, as librbd takes it: NUL is a
/// `TypeError` (it cannot cross into librbd); empty is `InvalidArgument`; longer than RADOS
/// allows is ENAMETOOLONG (python-rbd's base `Error`); anything else, `/`, `@`, spaces and
/// unicode included, is a name.
pub(crate) fn new_name(what: &str, name: &str) -> Result<()> {
    if name.contains('\0') {
        return Err(Error::TypeError(format!("{what} name contains a NUL byte")));
    }
    if name.is_empty() {
        return Err(Error::InvalidArgument(format!("empty {what} name")));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::Other { errno: ENAMETOOLONG, message: format!("{what} name of {} bytes is too long", name.len()) });
    }
    Ok(())
}

/// A name to look up. NUL is still a `TypeError`; any other name that could never have been
/// created cannot exist, so it is `NotFound`, as librbd answers for a missing name.
pub(crate) fn lookup_name(what: &str, name: &str) -> Result<()> {
    match new_name(what, name) {
        Err(Error::InvalidArgument(_)) | Err(Error::Other { .. }) => Err(Error::NotFound(format!("{what} {name:?}"))),
        other => other,
    }
}

/// A pool name to create. Pools are directories of the store, so the rule is stricter than
/// for images: not empty, no `/`, not `.` or `..`, at most 255 bytes.
pub(crate) fn new_pool_name(name: &str) -> Result<()> {
    if name.contains('\0') {
        return Err(Error::TypeError("pool name contains a NUL byte".into()));
    }
    if name.is_empty() || name.len() > MAX_POOL_NAME_LEN || name.contains('/') || name == "." || name == ".." {
        return Err(Error::InvalidArgument(format!("invalid pool name {name:?}")));
    }
    Ok(())
}

/// A pool name to look up; see [`lookup_name`].
pub(crate) fn lookup_pool_name(name: &str) -> Result<()> {
    match new_pool_name(name) {
        Err(Error::InvalidArgument(_)) => Err(Error::NotFound(format!("pool {name:?}"))),
        other => other,
    }
}

/// `CreateRequest::validate_order`: 12..=25, else `OutOfRange` (EDOM).
pub(crate) fn order(order: u8) -> Result<()> {
    if !(MIN_ORDER..=MAX_ORDER).contains(&order) {
        return Err(Error::OutOfRange(format!(
            "order {order} is outside {MIN_ORDER}..={MAX_ORDER}"
        )));
    }
    Ok(())
}

/// `CreateRequest::validate_features`: unknown bits, internal bits, and the dependencies of
/// object map and journaling on exclusive lock. (Fast diff without object map is dropped
/// rather than refused: see [`settle_features`].)
fn feature_bits(bits: u64) -> Result<()> {
    if bits & !ALL_FEATURES != 0 {
        return Err(Error::NotSupported(format!("unknown feature bits {bits:#x}")));
    }
    if bits & !USER_FEATURES != 0 {
        return Err(Error::InvalidArgument(format!(
            "feature bits {:#x} are controlled by librbd",
            bits & !USER_FEATURES
        )));
    }
    let has = |f: u64| bits & f != 0;
    if has(features::OBJECT_MAP) && !has(features::EXCLUSIVE_LOCK) {
        return Err(Error::InvalidArgument("object-map needs exclusive-lock".into()));
    }
    if has(features::JOURNALING) && !has(features::EXCLUSIVE_LOCK) {
        return Err(Error::InvalidArgument("journaling needs exclusive-lock".into()));
    }
    Ok(())
}

/// Pacific creates an image asked for fast-diff without object-map without fast-diff
/// (`features=1|4|16` gives 5).
fn settle_features(bits: u64) -> u64 {
    if bits & features::OBJECT_MAP == 0 {
        bits & !features::FAST_DIFF
    } else {
        bits
    }
}

/// The settled shape of a new image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    pub order: u8,
    pub features: u64,
    pub stripe_unit: u64,
    pub stripe_count: u64,
}

/// `CreateRequest`'s striping rules: both or neither of unit and count; the unit divides
/// the object size; STRIPINGV2 is set exactly when the striping is not the default one.
fn striping(order: u8, features: u64, unit: u64, count: u64) -> Result<Shape> {
    let obj_size = 1u64 << order;
    if (unit == 0) != (count == 0) {
        return Err(Error::InvalidArgument(
            "stripe unit and stripe count must be given together".into(),
        ));
    }
    let (unit, count) = if unit == 0 { (obj_size, 1) } else { (unit, count) };
    if unit > obj_size || obj_size % unit != 0 {
        return Err(Error::InvalidArgument(format!(
            "stripe unit {unit} is not a factor of the object size {obj_size}"
        )));
    }
    let features = if unit != obj_size || count != 1 {
        features | features::STRIPINGV2
    } else {
        features & !features::STRIPINGV2
    };
    let features = settle_features(features);
    Ok(Shape { order, features, stripe_unit: unit, stripe_count: count })
}

/// `RBD.create`'s options, in librbd's order: python's old-format check, then the order,
/// then features, then striping. (The name-exists check sits between python's check and
/// the order in librbd; the caller does it.)
pub(crate) fn old_format(options: &CreateOptions) -> Result<()> {
    if options.old_format
        && (options.features != 0 || options.stripe_unit != 0 || options.stripe_count != 0)
    {
        return Err(Error::InvalidArgument(
            "old-format images take no features and no striping".into(),
        ));
    }
    Ok(())
}

/// See [`old_format`]; this is the part after the name-exists check.
pub(crate) fn create_shape(options: &CreateOptions) -> Result<Shape> {
    // librbd takes an order of 0 as "not given".
    let o = options.order.filter(|o| *o != 0).unwrap_or(DEFAULT_ORDER);
    order(o)?;
    let bits = if options.features == 0 { features::DEFAULT } else { options.features };
    feature_bits(bits)?;
    striping(o, bits, options.stripe_unit, options.stripe_count)
}

/// `RBD.clone`'s first check (`CloneRequest::validate_options`), before the parent is looked
/// up: unknown feature bits are `NotSupported`.
pub(crate) fn clone_features(options: &CloneOptions) -> Result<()> {
    if options.features != 0 && options.features & !ALL_FEATURES != 0 {
        return Err(Error::NotSupported(format!(
            "unknown feature bits {:#x}",
            options.features
        )));
    }
    Ok(())
}

/// The child's shape, against the parent's (`CloneRequest`, then `CreateRequest`): the child
/// inherits the parent's features (less STRIPINGV2), order and striping unless told
/// otherwise; it must have layering (`NotSupported`, ENOSYS, as librbd answers); then the
/// create rules apply, so a child order whose objects are smaller than the parent's stripe
/// unit is `InvalidArgument`, as on a cluster.
pub(crate) fn clone_shape(options: &CloneOptions, parent: Shape) -> Result<Shape> {
    let bits = if options.features == 0 {
        parent.features & !features::STRIPINGV2
    } else {
        options.features
    };
    if bits & features::LAYERING == 0 {
        return Err(Error::NotSupported("a clone must have the layering feature".into()));
    }
    let o = options.order.filter(|o| *o != 0).unwrap_or(parent.order);
    feature_bits(bits)?;
    order(o)?;
    striping(o, bits, parent.stripe_unit, parent.stripe_count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_image_name_rule() {
        assert!(new_name("image", "a").is_ok());
        for good in ["a/b", "a@b", ".", &"x".repeat(MAX_NAME_LEN)] {
            assert!(new_name("image", good).is_ok(), "{good}");
        }
        assert!(matches!(new_name("image", ""), Err(Error::InvalidArgument(_))));
        assert!(matches!(new_name("image", &"x".repeat(MAX_NAME_LEN + 1)), Err(Error::Other { errno: 36, .. })));
        for bad in ["", &"x".repeat(MAX_NAME_LEN + 1)] {
            assert!(matches!(lookup_name("image", bad), Err(Error::NotFound(_))), "{bad}");
        }
        assert!(matches!(new_name("image", "a\0b"), Err(Error::TypeError(_))));
        assert!(matches!(lookup_name("image", "a\0b"), Err(Error::TypeError(_))));
        assert!(matches!(new_pool_name(".."), Err(Error::InvalidArgument(_))));
        assert!(matches!(lookup_pool_name("."), Err(Error::NotFound(_))));
    }

    #[test]
    fn default_striping_clears_stripingv2_and_custom_striping_sets_it() {
        let shape = create_shape(&CreateOptions {
            features: features::LAYERING | features::STRIPINGV2,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(shape.features, features::LAYERING);
        let shape = create_shape(&CreateOptions {
            features: features::LAYERING,
            stripe_unit: 65536,
            stripe_count: 4,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(shape.features, features::LAYERING | features::STRIPINGV2);
        assert_eq!((shape.stripe_unit, shape.stripe_count), (65536, 4));
    }

    #[test]
    fn feature_dependencies_are_checked() {
        for bits in [features::OBJECT_MAP, features::JOURNALING, 256] {
            let o = CreateOptions { features: bits, ..Default::default() };
            assert!(matches!(create_shape(&o), Err(Error::InvalidArgument(_))), "{bits}");
        }
        let o = CreateOptions { features: 1 | 4 | 16, ..Default::default() };
        assert_eq!(create_shape(&o).unwrap().features, 5);
        let o = CreateOptions { order: Some(0), ..Default::default() };
        assert_eq!(create_shape(&o).unwrap().order, DEFAULT_ORDER);
        let o = CreateOptions { features: 1 << 20, ..Default::default() };
        assert!(matches!(create_shape(&o), Err(Error::NotSupported(_))));
    }
}
