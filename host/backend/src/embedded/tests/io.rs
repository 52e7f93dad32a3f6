//! Reads, writes, discards, resizes; sparseness; concurrency; handles and clients sharing
//! an image.

use super::*;

#[test]
fn reads_are_cut_at_the_end_and_refused_past_it() {
    let fx = Fx::new();
    let size = 8 * MIB;
    let img = fx.image("img", size, 22);
    img.write(size - 10, &[0x11; 10]).unwrap();
    assert_eq!(img.read(0, 0).unwrap(), Vec::<u8>::new());
    assert_eq!(img.read(size, 0).unwrap(), Vec::<u8>::new());
    assert_eq!(img.read(u64::MAX, 0).unwrap(), Vec::<u8>::new());
    assert_eq!(kind(img.read(size, 1)), "invalid-argument");
    assert_eq!(kind(img.read(size + 4096, 1)), "invalid-argument");
    assert_eq!(kind(img.read(u64::MAX, 1)), "invalid-argument");
    assert_eq!(img.read(size - 10, 100).unwrap(), vec![0x11; 10]);
    assert_eq!(img.read(0, 8).unwrap(), vec![0; 8], "holes read as zeroes");
    assert_eq!(img.read(0, size + 1).unwrap().len() as u64, size);
    assert_eq!(kind(img.read(4096, u64::MAX)), "invalid-argument", "offset + length overflows");
    assert_eq!(img.read(4096, u64::MAX - 4096).unwrap().len() as u64, size - 4096, "cut at the end");
}

#[test]
fn offset_plus_length_overflowing_is_invalid() {
    let fx = Fx::new();
    let img = fx.image("huge", u64::MAX, 22);
    assert_eq!(kind(img.read(u64::MAX - 10, 100)), "invalid-argument");
    assert_eq!(kind(img.write(u64::MAX - 1, &[1; 10])), "invalid-argument");
    assert_eq!(kind(img.discard(u64::MAX - 1, 10)), "invalid-argument");
    assert_eq!(kind(img.diff_iterate(u64::MAX - 1, 10, None, true, false, &mut |_| {})), "invalid-argument");
    assert_eq!(img.write(u64::MAX - 5, &[7; 4]).unwrap(), 4);
    assert_eq!(img.read(u64::MAX - 5, 4).unwrap(), vec![7; 4]);
    assert_eq!(img.read(u64::MAX - 5, 5).unwrap(), vec![7, 7, 7, 7, 0]);
}

#[test]
fn writes_past_the_end_are_cut_and_reported_incomplete() {
    let fx = Fx::new();
    let size = 8 * MIB;
    let img = fx.image("img", size, 22);
    assert_eq!(img.write(0, b"").unwrap(), 0);
    assert_eq!(img.write(size + 4096, b"").unwrap(), 0);
    assert_eq!(kind(img.write(size, b"x")), "invalid-argument");
    assert_eq!(kind(img.write(size + 4096, b"x")), "invalid-argument");
    let err = img.write(size - 100, &[0x22; 200]).unwrap_err();
    assert_eq!(err, crate::Error::IncompleteWrite { requested: 200, written: 100 });
    assert_eq!(img.read(size - 100, 100).unwrap(), vec![0x22; 100]);
    assert_eq!(img.write(1, &[0x79; 4097]).unwrap(), 4097);
}

#[test]
fn data_round_trips_across_object_boundaries() {
    let fx = Fx::new();
    let img = fx.image("img", 64 * KIB, 12);
    let mut model = vec![0u8; 64 * KIB as usize];
    for (i, (off, len)) in [(0usize, 10usize), (4090, 20), (5000, 12000), (60000, 5536), (8191, 1)].into_iter().enumerate() {
        let data = pattern(len, i as u8);
        img.write(off as u64, &data).unwrap();
        model[off..off + len].copy_from_slice(&data);
    }
    assert_eq!(read_all(&*img), model);
    assert_eq!(img.read(4000, 9000).unwrap(), model[4000..13000]);
}

#[test]
fn discard_frees_whole_objects_and_keeps_partial_ones_below_the_granularity() {
    // 4 KiB objects: the granularity is the object size, so only whole objects change.
    let fx = Fx::new();
    let img = fx.image("img", 64 * KIB, 12);
    let data = pattern(64 * KIB as usize, 3);
    img.write(0, &data).unwrap();
    assert_eq!(fx.object_files("img"), 16);
    img.discard(0, 0).unwrap();
    assert_eq!(kind(img.discard(64 * KIB, 10)), "invalid-argument");
    assert_eq!(kind(img.discard(64 * KIB + 4096, 10)), "invalid-argument");
    img.discard(100, 10).unwrap();
    assert_eq!(read_all(&*img), data, "a discard inside one object changes nothing");
    img.discard(4096 + 1000, 3 * 4096).unwrap();
    let mut model = data.clone();
    model[2 * 4096..4 * 4096].fill(0);
    assert_eq!(read_all(&*img), model, "only the whole objects 2 and 3 are zeroed");
    assert_eq!(fx.object_files("img"), 14, "objects 2 and 3 were wholly discarded");
    img.discard(64 * KIB - 100, 1000).unwrap();
    assert_eq!(read_all(&*img), model, "the tail of the last object is partial");
    img.discard(60 * KIB - 100, 10000).unwrap();
    model[(60 * KIB) as usize..].fill(0);
    assert_eq!(read_all(&*img), model, "cut at the end, the last object is whole");
    assert_eq!(fx.object_files("img"), 13);
    img.discard(0, 64 * KIB).unwrap();
    assert_eq!(fx.object_files("img"), 0);
    assert_eq!(read_all(&*img), vec![0; 64 * KIB as usize]);
}

#[test]
fn discard_zeroes_the_granularity_aligned_part_of_partial_objects() {
    // 4 MiB objects and a size that is not a multiple of them: granularity 64 KiB.
    let fx = Fx::new();
    let obj = 4 * MIB;
    let size = obj + 300_000;
    assert_eq!(discarded(1000, 200_000, size, obj), vec![(65536, 196608)], "as librbd does");
    assert_eq!(discarded(0, 4096, size, obj), vec![]);
    let img = fx.image("img", size, 22);
    let data = pattern(size as usize, 9);
    img.write(0, &data).unwrap();
    let mut model = data.clone();
    img.discard(0, 4096).unwrap();
    assert_eq!(read_all(&*img), model, "smaller than the granularity: nothing");
    img.discard(1000, 200_000).unwrap();
    model[65536..196608].fill(0);
    assert_eq!(read_all(&*img), model, "aligned inward: the unaligned head and tail keep their data");
    img.discard(obj - 70_000, 75_000).unwrap();
    model[(obj - 65536) as usize..obj as usize].fill(0);
    assert_eq!(read_all(&*img), model, "each object aligned from its own start");
    img.discard(obj + 1000, MIB).unwrap();
    model[(obj + 65536) as usize..(obj + 262144) as usize].fill(0);
    assert_eq!(read_all(&*img), model, "cut at the end, the partial last granule keeps its data");
    img.discard(obj, MIB).unwrap();
    model[obj as usize..(obj + 65536) as usize].fill(0);
    assert_eq!(read_all(&*img), model);
    assert_eq!(fx.object_files("img"), 2, "the last object is never whole");
    for (off, len) in [(3 * MIB + 5, 2 * MIB), (10, obj), (0, 3 * MIB)] {
        img.discard(off, len).unwrap();
        discard_model(&mut model, off, len, obj);
        assert_eq!(read_all(&*img), model, "discard({off}, {len})");
    }
    img.discard(0, size).unwrap();
    assert_eq!(fx.object_files("img"), 1, "the first object is whole");
    assert_eq!(read_all(&*img)[..obj as usize], vec![0; obj as usize]);
    assert_eq!(read_all(&*img)[(obj + 262144) as usize..], data[(obj + 262144) as usize..]);
}

#[test]
fn resize_shrinks_grows_and_never_resurrects_cut_data() {
    let fx = Fx::new();
    let obj = 4 * KIB;
    let img = fx.image("img", 4 * obj, 12);
    let data = pattern((4 * obj) as usize, 5);
    img.write(0, &data).unwrap();
    img.resize(obj + 100).unwrap();
    assert_eq!(img.size().unwrap(), obj + 100);
    assert_eq!(img.stat().unwrap().num_objs, 2);
    assert_eq!(fx.object_files("img"), 2);
    img.resize(6 * obj).unwrap();
    assert_eq!(img.read(0, obj + 100).unwrap(), data[..(obj + 100) as usize]);
    assert_eq!(img.read(obj + 100, 5 * obj - 100).unwrap(), vec![0; (5 * obj - 100) as usize]);
    img.resize(6 * obj).unwrap();
    img.resize(0).unwrap();
    assert_eq!(kind(img.read(0, 1)), "invalid-argument");
    img.resize(obj).unwrap();
    assert_eq!(read_all(&*img), vec![0; obj as usize]);
    img.resize(u64::MAX).unwrap();
    assert_eq!(img.size().unwrap(), u64::MAX);
}

#[test]
fn resize_and_writes_are_refused_at_a_snapshot() {
    let fx = Fx::new();
    let img = fx.image("img", MIB, 22);
    img.create_snap("s").unwrap();
    img.set_snap(Some("s")).unwrap();
    assert_eq!(kind(img.write(0, b"x")), "read-only");
    assert_eq!(kind(img.discard(0, 10)), "read-only");
    assert_eq!(kind(img.resize(2 * MIB)), "read-only");
    img.flush().unwrap();
    img.set_snap(None).unwrap();
    assert_eq!(img.write(0, b"x").unwrap(), 1);
}

#[test]
fn a_petabyte_sparse_image_costs_nothing() {
    let fx = Fx::new();
    let size = 1u64 << 50;
    let img = fx.image("big", size, 22);
    img.write(size / 2, b"middle").unwrap();
    img.write(size - 3, b"end").unwrap();
    img.create_snap("s").unwrap();
    img.write(size / 3, b"third").unwrap();
    let start = std::time::Instant::now();
    let mut all = Vec::new();
    img.diff_iterate(0, size, None, true, false, &mut |e| all.push(e)).unwrap();
    let mut since = Vec::new();
    img.diff_iterate(0, size, Some("s"), true, false, &mut |e| since.push(e)).unwrap();
    img.discard(0, size).unwrap();
    assert!(start.elapsed() < std::time::Duration::from_secs(2), "took {:?}", start.elapsed());
    assert_eq!(all.len(), 3);
    assert_eq!(since.len(), 1);
    assert_eq!(since[0].offset, (size / 3) & !(4 * MIB - 1));
    assert_eq!(fx.object_files("big"), 2, "the snapshot's objects remain");
    img.set_snap(Some("s")).unwrap();
    assert_eq!(img.read(size - 3, 3).unwrap(), b"end");
}

#[test]
fn threads_read_and_write_one_image_at_once() {
    let fx = Fx::new();
    let img = fx.image("img", 256 * KIB, 12);
    let chunk = 16 * KIB as usize;
    std::thread::scope(|s| {
        for t in 0..8u8 {
            let img = &img;
            s.spawn(move || {
                let data = pattern(chunk, t);
                for round in 0..4 {
                    let off = (t as usize * 2 + round % 2) * chunk;
                    img.write(off as u64, &data).unwrap();
                    assert_eq!(img.read(off as u64, chunk as u64).unwrap(), data);
                }
            });
        }
    });
    for t in 0..8u8 {
        let off = t as u64 * 2 * chunk as u64;
        assert_eq!(img.read(off, 2 * chunk as u64).unwrap(), [pattern(chunk, t), pattern(chunk, t)].concat());
    }
}

#[test]
fn handles_of_one_image_share_snapshots_and_never_write_into_them() {
    let fx = Fx::new();
    let a = fx.image("img", 64 * KIB, 12);
    let b = fx.be.open("rbd", "img", None, false).unwrap();
    a.write(0, &[1; 8192]).unwrap();
    b.create_snap("s").unwrap();
    assert_eq!(a.list_snaps().unwrap().len(), 1);
    a.write(0, &[2; 100]).unwrap();
    b.set_snap(Some("s")).unwrap();
    assert_eq!(b.read(0, 8192).unwrap(), vec![1; 8192]);
    assert_eq!(a.read(0, 101).unwrap()[99..], [2, 1]);
}

#[test]
fn another_client_sees_writes_allocations_and_snapshots() {
    let fx = Fx::new();
    let a = fx.image("img", 64 * KIB, 12);
    let other = fx.client();
    let b = other.open("rbd", "img", None, false).unwrap();
    assert_eq!(b.read(0, 4).unwrap(), vec![0; 4]);
    a.write(0, b"abcd").unwrap();
    assert_eq!(b.read(0, 4).unwrap(), b"abcd", "a newly allocated object");
    a.write(1, b"X").unwrap();
    assert_eq!(b.read(0, 4).unwrap(), b"aXcd", "an in-place write");
    b.create_snap("s").unwrap();
    a.write(0, b"zz").unwrap();
    assert_eq!(a.list_snaps().unwrap().len(), 1);
    b.set_snap(Some("s")).unwrap();
    assert_eq!(b.read(0, 4).unwrap(), b"aXcd", "a's write after b's snapshot copied the object");
    a.resize(8 * KIB).unwrap();
    b.set_snap(None).unwrap();
    assert_eq!(b.size().unwrap(), 8 * KIB);
}

#[test]
fn flush_and_invalidate_cache_succeed() {
    let fx = Fx::new();
    let img = fx.image("img", MIB, 12);
    img.write(0, &[5; 10000]).unwrap();
    img.flush().unwrap();
    img.invalidate_cache().unwrap();
    assert_eq!(img.read(0, 10000).unwrap(), vec![5; 10000]);
}
