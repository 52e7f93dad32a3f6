//! The `rbd export-diff` v1 stream (Ceph's `doc/dev/rbd-diff.rst`): a banner, then tagged
//! records, little-endian, strings as a le32 length and bytes.
//!
//! `f` from-snapshot name, `t` to-snapshot name, `s` le64 image size, `w` le64 offset, le64
//! length and the data, `z` le64 offset and le64 length of zeroes, `e` the end. Written by
//! hand: no Rust crate reads or writes it, and it is six record kinds.
//!
//! A stream may come from anywhere, so the reader trusts no length in it: a name is at most
//! [`MAX_NAME`] bytes, and a `w` or `z` record must lie inside the image the `s` record
//! before it sizes. It allocates nothing for a `w` record's data: the caller reads it in
//! pieces of its own size with [`StreamReader::read_data`].

use std::io::{self, BufWriter, Read, Write};

use rbd_wasm_guest::{OutputFile, PendingReads, Piece, Range};

use crate::hash::Hasher;

pub const BANNER: &[u8] = b"rbd diff v1\n";
const V2_BANNER: &[u8] = b"rbd diff v2\n";

/// Longest snapshot name accepted in a stream (librbd's own limit is lower).
pub const MAX_NAME: u32 = 4096;

/// Writes a stream, hashing it as it goes.
pub struct StreamWriter<W: Write> {
    out: BufWriter<Hashed<W>>,
}

/// Passes writes on and hashes them. Under the `BufWriter`, so it sees few, large writes
/// (a data record's bytes go through whole).
struct Hashed<W: Write> {
    inner: W,
    hasher: Hasher,
    bytes: u64,
}

impl<W: Write> Write for Hashed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The banner and the header records of a stream.
fn header(from: Option<&str>, to: &str, size: u64) -> io::Result<Vec<u8>> {
    let mut out = BANNER.to_vec();
    if let Some(from) = from {
        name(&mut out, b'f', from)?;
    }
    name(&mut out, b't', to)?;
    out.push(b's');
    out.extend_from_slice(&size.to_le_bytes());
    Ok(out)
}

fn name(out: &mut Vec<u8>, tag: u8, name: &str) -> io::Result<()> {
    // Never write what the reader would refuse.
    let len = u32::try_from(name.len()).ok().filter(|&len| len <= MAX_NAME).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("a snapshot name of {} bytes (at most {MAX_NAME})", name.len()))
    })?;
    out.push(tag);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    Ok(())
}

/// A `w` or `z` record's header.
fn extent(tag: u8, offset: u64, length: u64) -> [u8; 17] {
    let mut record = [0u8; 17];
    record[0] = tag;
    record[1..9].copy_from_slice(&offset.to_le_bytes());
    record[9..].copy_from_slice(&length.to_le_bytes());
    record
}

impl<W: Write> StreamWriter<W> {
    /// The banner and the header records.
    pub fn new(out: W, from: Option<&str>, to: &str, size: u64) -> io::Result<Self> {
        let hashed = Hashed { inner: out, hasher: Hasher::new(), bytes: 0 };
        let mut w = StreamWriter { out: BufWriter::with_capacity(1 << 20, hashed) };
        w.put(&header(from, to, size)?)?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)
    }

    /// A `w` record: `data` is the image's content at `offset`.
    pub fn data(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.put(&extent(b'w', offset, data.len() as u64))?;
        self.put(data)
    }

    /// A `z` record: `[offset, offset + length)` reads as zeroes.
    pub fn zero(&mut self, offset: u64, length: u64) -> io::Result<()> {
        self.put(&extent(b'z', offset, length))
    }

    /// The `e` record; gives back the output (flushed), the stream's sha256 (hex) and its
    /// length.
    pub fn finish(mut self) -> io::Result<(W, String, u64)> {
        self.put(b"e")?;
        let mut hashed = self.out.into_inner().map_err(|e| e.into_error())?;
        let sha = hex::encode(hashed.hasher.finish());
        Ok((hashed.inner, sha, hashed.bytes))
    }
}

/// Writes a stream through the host's data plane: the job lays out the records, the host
/// writes them with the image's bytes from its reads (which never enter the job) and
/// computes the stream's check on the way (`pending-reads.write-to`): `chunked-sha256`
/// with the digest chunks, whose whole chunks the reads hashed already (see
/// [`crate::StreamCheck`]). Records are gathered per group
/// of reads ([`crate::digest::walk_diff`]) and written when the group's reads are taken.
pub struct PlannedStream {
    out: OutputFile,
    hash: rbd_wasm_guest::Sha256,
    pieces: Vec<Piece>,
    /// The job's bytes since the last piece (headers of consecutive records merge).
    given: Vec<u8>,
    bytes: u64,
}

/// Most pieces of one group (the host takes at most 65536 in one call).
const MAX_PIECES: usize = 1 << 16;

impl PlannedStream {
    /// The banner and the header records (written with the first group).
    pub fn new(out: OutputFile, from: Option<&str>, to: &str, size: u64) -> io::Result<Self> {
        let given = header(from, to, size)?;
        let hash = rbd_wasm_guest::Sha256::chunked(crate::digest::CHUNK as u32);
        Ok(PlannedStream { out, hash, pieces: Vec::new(), given, bytes: 0 })
    }

    fn give(&mut self, bytes: &[u8]) {
        self.given.extend_from_slice(bytes);
    }

    fn close_given(&mut self) {
        if !self.given.is_empty() {
            self.bytes += self.given.len() as u64;
            self.pieces.push(Piece::Bytes(std::mem::take(&mut self.given)));
        }
    }

    /// A `w` record of the image's bytes `[offset, offset + length)`, which the group's
    /// reads (`ranges`, in order) must hold.
    pub fn data(&mut self, offset: u64, length: u64, ranges: &[Range]) -> crate::Result<()> {
        let cut = crate::digest::covering(ranges, offset, length)?;
        if self.pieces.len() + cut.len() + 2 > MAX_PIECES {
            return Err(format!("a group of more than {MAX_PIECES} pieces").into());
        }
        self.give(&extent(b'w', offset, length));
        self.close_given();
        self.bytes += length;
        self.pieces.extend(cut.into_iter().map(Piece::Read));
        Ok(())
    }

    /// A `z` record: `[offset, offset + length)` reads as zeroes.
    pub fn zero(&mut self, offset: u64, length: u64) {
        self.give(&extent(b'z', offset, length));
    }

    /// Have the host write the records gathered, with the bytes `reads` read; gives back
    /// each read's chunk digests.
    pub fn write(&mut self, reads: PendingReads) -> crate::Result<Vec<Vec<u8>>> {
        self.close_given();
        let pieces = std::mem::take(&mut self.pieces);
        Ok(reads.write_to(&self.out, &pieces, Some(&self.hash))?)
    }

    /// The `e` record; gives back the file, the stream's check (see [`crate::StreamCheck`])
    /// and its length.
    pub fn finish(mut self) -> crate::Result<(OutputFile, crate::StreamCheck, u64)> {
        if !self.pieces.is_empty() {
            return Err("records gathered for reads that were never written".into());
        }
        self.give(b"e");
        self.out.write_all(&self.given)?;
        self.hash.update(&self.given);
        self.out.flush()?;
        let bytes = self.bytes + self.given.len() as u64;
        let check = crate::StreamCheck {
            method: rbddiff_check::METHOD.into(),
            chunk_size: crate::digest::CHUNK,
            digest: hex::encode(self.hash.finish()),
        };
        Ok((self.out, check, bytes))
    }
}

/// One record of a stream; a `w` record's data is read with [`StreamReader::read_data`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    From(String),
    To(String),
    Size(u64),
    Data { offset: u64, length: u64 },
    Zero { offset: u64, length: u64 },
    End,
}

/// Reads a stream record by record.
pub struct StreamReader<R: Read> {
    input: R,
    /// Bytes of the current `w` record's data not read yet.
    data_left: u64,
    /// The image size of the last `s` record.
    size: Option<u64>,
    ended: bool,
    /// Bytes of the stream consumed so far.
    position: u64,
    /// With [`StreamReader::keeping_raw`]: the bytes of records read since
    /// [`StreamReader::take_raw`], but a `w` record's data (what a stream check adds as it is).
    raw: Option<Vec<u8>>,
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

impl<R: Read> StreamReader<R> {
    /// Check the banner: only v1 streams are read.
    pub fn new(mut input: R) -> io::Result<Self> {
        let mut banner = [0u8; 12];
        input.read_exact(&mut banner).map_err(|e| invalid(format!("not an rbd diff stream: {e}")))?;
        if banner == V2_BANNER {
            return Err(invalid("an rbd diff v2 stream: only v1 is read".into()));
        }
        if banner != BANNER {
            return Err(invalid("not an rbd diff stream (no `rbd diff v1` banner)".into()));
        }
        Ok(StreamReader { input, data_left: 0, size: None, ended: false, position: BANNER.len() as u64, raw: None })
    }

    fn take_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.input.read_exact(buf)?;
        self.position += buf.len() as u64;
        Ok(())
    }

    /// A record's bytes, kept for [`StreamReader::take_raw`].
    fn take_record(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.take_exact(buf)?;
        if let Some(raw) = &mut self.raw {
            raw.extend_from_slice(buf);
        }
        Ok(())
    }

    /// Keep what [`StreamReader::take_raw`] gives (right after [`StreamReader::new`]).
    pub fn keeping_raw(mut self) -> Self {
        self.raw = Some(BANNER.to_vec());
        self
    }

    /// With [`StreamReader::keeping_raw`], the bytes of the stream read since the last call
    /// (the banner first) that are not a `w` record's data: tags, names, sizes, offsets and
    /// lengths, as they are. A caller takes them after each record.
    pub fn take_raw(&mut self) -> Vec<u8> {
        self.raw.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// After the `e` record: how many bytes the input still has (none, in a sound file).
    pub fn trailing_bytes(&mut self) -> io::Result<u64> {
        io::copy(&mut self.input, &mut io::sink())
    }

    /// Where the reader is: the bytes of the stream consumed (read or skipped) so far.
    pub fn position(&self) -> u64 {
        self.position
    }

    fn le64(&mut self) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.take_record(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// A `w` or `z` record's offset and length, checked to lie inside the image.
    fn extent(&mut self, what: &str) -> io::Result<(u64, u64)> {
        let (offset, length) = (self.le64()?, self.le64()?);
        let size = self.size.ok_or_else(|| invalid(format!("a {what} record before the size record")))?;
        if offset.checked_add(length).is_none_or(|end| end > size) {
            return Err(invalid(format!("a {what} record {offset}+{length} past the image's end ({size} bytes)")));
        }
        Ok((offset, length))
    }

    /// The next record; the unread data of a `w` record before it is skipped.
    pub fn next_record(&mut self) -> io::Result<Record> {
        if self.ended {
            return Ok(Record::End);
        }
        if self.data_left > 0 {
            let left = self.data_left;
            let skipped = io::copy(&mut (&mut self.input).take(left), &mut io::sink())?;
            self.position += skipped;
            if skipped != left {
                return Err(invalid("the stream ends inside a data record".into()));
            }
            self.data_left = 0;
        }
        let mut tag = [0u8; 1];
        self.take_record(&mut tag).map_err(|e| invalid(format!("the stream ends without its `e` record: {e}")))?;
        let record = match tag[0] {
            b'f' | b't' => {
                let mut len = [0u8; 4];
                self.take_record(&mut len)?;
                let len = u32::from_le_bytes(len);
                if len > MAX_NAME {
                    return Err(invalid(format!("a snapshot name of {len} bytes")));
                }
                let mut name = vec![0u8; len as usize];
                self.take_record(&mut name)?;
                let name = String::from_utf8(name).map_err(|_| invalid("a snapshot name that is not UTF-8".into()))?;
                if tag[0] == b'f' {
                    Record::From(name)
                } else {
                    Record::To(name)
                }
            }
            b's' => {
                let size = self.le64()?;
                self.size = Some(size);
                Record::Size(size)
            }
            b'w' => {
                let (offset, length) = self.extent("data")?;
                self.data_left = length;
                Record::Data { offset, length }
            }
            b'z' => {
                let (offset, length) = self.extent("zero")?;
                Record::Zero { offset, length }
            }
            b'e' => {
                self.ended = true;
                Record::End
            }
            other => return Err(invalid(format!("unknown record tag {other:#04x}"))),
        };
        Ok(record)
    }

    /// Fill `buf` from the current `w` record's data (a record may be read in several
    /// pieces).
    pub fn read_data(&mut self, buf: &mut [u8]) -> io::Result<()> {
        if buf.len() as u64 > self.data_left {
            return Err(invalid("read past the end of a data record".into()));
        }
        self.take_exact(buf).map_err(|e| invalid(format!("the stream ends inside a data record: {e}")))?;
        self.data_left -= buf.len() as u64;
        Ok(())
    }
}

impl<R: Read + io::Seek> StreamReader<io::BufReader<R>> {
    /// Pass over the next `n` bytes of the current `w` record's data without reading them
    /// (someone else reads them: the host, for `image.write-from`). A stream cut short is
    /// not noticed here, but by whoever reads the bytes.
    pub fn skip_data(&mut self, n: u64) -> io::Result<()> {
        if n > self.data_left {
            return Err(invalid("a skip past the end of a data record".into()));
        }
        let by = i64::try_from(n).map_err(|_| invalid(format!("a skip of {n} bytes")))?;
        self.input.seek_relative(by)?;
        self.data_left -= n;
        self.position += n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_that_skips_data_knows_where_each_records_bytes_are() {
        let mut w = StreamWriter::new(Vec::new(), None, "b", 1 << 20).unwrap();
        w.data(10, b"hello").unwrap();
        w.data(100, b"world!").unwrap();
        let (bytes, _, _) = w.finish().unwrap();
        let mut r = StreamReader::new(io::BufReader::with_capacity(8, io::Cursor::new(&bytes))).unwrap();
        let mut found = Vec::new();
        loop {
            match r.next_record().unwrap() {
                Record::Data { length, .. } => {
                    let at = r.position() as usize;
                    found.push(bytes[at..at + length as usize].to_vec());
                    r.skip_data(2).unwrap();
                    r.skip_data(length - 2).unwrap();
                    assert!(r.skip_data(1).is_err(), "past the record");
                }
                Record::End => break,
                _ => {}
            }
        }
        assert_eq!(found, [b"hello".to_vec(), b"world!".to_vec()]);
        assert_eq!(r.position(), bytes.len() as u64);
    }

    #[test]
    fn what_is_written_reads_back() {
        let mut w = StreamWriter::new(Vec::new(), Some("a"), "b", 1 << 20).unwrap();
        w.data(10, b"hello").unwrap();
        w.zero(4096, 8192).unwrap();
        let (bytes, sha, len) = w.finish().unwrap();
        assert_eq!(len, bytes.len() as u64);
        assert_eq!(sha, hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)));
        let mut r = StreamReader::new(&bytes[..]).unwrap();
        assert_eq!(r.next_record().unwrap(), Record::From("a".into()));
        assert_eq!(r.next_record().unwrap(), Record::To("b".into()));
        assert_eq!(r.next_record().unwrap(), Record::Size(1 << 20));
        assert_eq!(r.next_record().unwrap(), Record::Data { offset: 10, length: 5 });
        let mut data = [0u8; 5];
        r.read_data(&mut data).unwrap();
        assert_eq!(&data, b"hello");
        assert_eq!(r.next_record().unwrap(), Record::Zero { offset: 4096, length: 8192 });
        assert_eq!(r.next_record().unwrap(), Record::End);
    }

    /// A stream of these bytes after the banner.
    fn forged(records: &[&[u8]]) -> Vec<u8> {
        let mut bytes = BANNER.to_vec();
        for r in records {
            bytes.extend_from_slice(r);
        }
        bytes
    }

    fn extent(tag: u8, offset: u64, length: u64) -> Vec<u8> {
        let mut r = vec![tag];
        r.extend_from_slice(&offset.to_le_bytes());
        r.extend_from_slice(&length.to_le_bytes());
        r
    }

    fn size(size: u64) -> Vec<u8> {
        [&b"s"[..], &size.to_le_bytes()].concat()
    }

    fn first_error(bytes: &[u8]) -> String {
        let mut r = StreamReader::new(bytes).unwrap();
        loop {
            match r.next_record() {
                Ok(Record::End) => panic!("read as a whole stream"),
                Ok(_) => {}
                Err(e) => return e.to_string(),
            }
        }
    }

    #[test]
    fn a_huge_forged_record_length_is_refused_before_anything_is_read() {
        const TIB: u64 = 1 << 40;
        // 4 TiB of data claimed in a 1 MiB image, in a stream of a few bytes.
        let e = first_error(&forged(&[&size(1 << 20), &extent(b'w', 0, 4 * TIB), b"e"]));
        assert!(e.contains("a data record 0+4398046511104 past the image's end (1048576 bytes)"), "{e}");
        let e = first_error(&forged(&[&size(1 << 20), &extent(b'z', 1 << 20, 1), b"e"]));
        assert!(e.contains("a zero record 1048576+1 past the image's end"), "{e}");
        // offset + length past 2^64.
        let e = first_error(&forged(&[&size(u64::MAX), &extent(b'w', u64::MAX - 1, 2), b"e"]));
        assert!(e.contains("past the image's end"), "{e}");
        // No size to check against.
        let e = first_error(&forged(&[&extent(b'w', 0, 1), b"x", b"e"]));
        assert!(e.contains("a data record before the size record"), "{e}");
        // A name of 4 GiB.
        let e = first_error(&forged(&[b"t", &u32::MAX.to_le_bytes(), b"e"]));
        assert!(e.contains("a snapshot name of 4294967295 bytes"), "{e}");
    }

    #[test]
    fn records_at_300_tib_read_in_pieces() {
        const TIB: u64 = 1 << 40;
        let mut w = StreamWriter::new(Vec::new(), None, "b", 300 * TIB).unwrap();
        w.data(300 * TIB - 6, b"abcdef").unwrap();
        w.zero(0, 300 * TIB - 6).unwrap();
        let (bytes, _, _) = w.finish().unwrap();
        let mut r = StreamReader::new(&bytes[..]).unwrap();
        assert_eq!(r.next_record().unwrap(), Record::To("b".into()));
        assert_eq!(r.next_record().unwrap(), Record::Size(300 * TIB));
        assert_eq!(r.next_record().unwrap(), Record::Data { offset: 300 * TIB - 6, length: 6 });
        let (mut a, mut b) = ([0u8; 2], [0u8; 4]);
        r.read_data(&mut a).unwrap();
        r.read_data(&mut b).unwrap();
        assert_eq!((&a, &b), (b"ab", b"cdef"));
        assert!(r.read_data(&mut a).is_err());
        assert_eq!(r.next_record().unwrap(), Record::Zero { offset: 0, length: 300 * TIB - 6 });
        assert_eq!(r.next_record().unwrap(), Record::End);
    }

    #[test]
    fn a_name_the_reader_would_refuse_is_not_written() {
        let long = "x".repeat(MAX_NAME as usize + 1);
        assert!(StreamWriter::new(Vec::new(), None, &long, 1).is_err());
        assert!(StreamWriter::new(Vec::new(), Some(&long), "b", 1).is_err());
        assert!(StreamWriter::new(Vec::new(), None, &long[1..], 1).is_ok());
    }

    #[test]
    fn a_cut_stream_is_an_error_not_an_end() {
        let mut w = StreamWriter::new(Vec::new(), None, "b", 100).unwrap();
        w.data(0, &[1; 50]).unwrap();
        let (bytes, _, _) = w.finish().unwrap();
        for cut in 12..bytes.len() {
            let mut r = StreamReader::new(&bytes[..cut]).unwrap();
            let ended = loop {
                match r.next_record() {
                    Ok(Record::End) => break true,
                    Ok(_) => {}
                    Err(_) => break false,
                }
            };
            assert!(!ended, "cut at {cut} read as a whole stream");
        }
    }
}
