//! The `rbd export-diff` v1 stream (Ceph's `doc/dev/rbd-diff.rst`): a banner, then tagged
//! records, little-endian, strings as a le32 length and bytes.
//!
//! `f` from-snapshot name, `t` to-snapshot name, `s` le64 image size, `w` le64 offset, le64
//! length and the data, `z` le64 offset and le64 length of zeroes, `e` the end. Written by
//! hand: no Rust crate reads or writes it, and it is six record kinds.

use std::io::{self, BufWriter, Read, Write};

use crate::hash::Hasher;

pub const BANNER: &[u8] = b"rbd diff v1\n";
const V2_BANNER: &[u8] = b"rbd diff v2\n";

/// Longest snapshot name accepted in a stream (librbd's own limit is lower).
const MAX_NAME: u32 = 4096;

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

impl<W: Write> StreamWriter<W> {
    /// The banner and the header records.
    pub fn new(out: W, from: Option<&str>, to: &str, size: u64) -> io::Result<Self> {
        let hashed = Hashed { inner: out, hasher: Hasher::new(), bytes: 0 };
        let mut w = StreamWriter { out: BufWriter::with_capacity(1 << 20, hashed) };
        w.put(BANNER)?;
        if let Some(from) = from {
            w.name(b'f', from)?;
        }
        w.name(b't', to)?;
        w.put(b"s")?;
        w.put(&size.to_le_bytes())?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)
    }

    fn name(&mut self, tag: u8, name: &str) -> io::Result<()> {
        self.put(&[tag])?;
        self.put(&(name.len() as u32).to_le_bytes())?;
        self.put(name.as_bytes())
    }

    fn extent(&mut self, tag: u8, offset: u64, length: u64) -> io::Result<()> {
        let mut record = [0u8; 17];
        record[0] = tag;
        record[1..9].copy_from_slice(&offset.to_le_bytes());
        record[9..].copy_from_slice(&length.to_le_bytes());
        self.put(&record)
    }

    /// A `w` record: `data` is the image's content at `offset`.
    pub fn data(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.extent(b'w', offset, data.len() as u64)?;
        self.put(data)
    }

    /// A `z` record: `[offset, offset + length)` reads as zeroes.
    pub fn zero(&mut self, offset: u64, length: u64) -> io::Result<()> {
        self.extent(b'z', offset, length)
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
    ended: bool,
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
        Ok(StreamReader { input, data_left: 0, ended: false })
    }

    fn le64(&mut self) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.input.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// The next record; the unread data of a `w` record before it is skipped.
    pub fn next_record(&mut self) -> io::Result<Record> {
        if self.ended {
            return Ok(Record::End);
        }
        if self.data_left > 0 {
            let left = self.data_left;
            let skipped = io::copy(&mut (&mut self.input).take(left), &mut io::sink())?;
            if skipped != left {
                return Err(invalid("the stream ends inside a data record".into()));
            }
            self.data_left = 0;
        }
        let mut tag = [0u8; 1];
        self.input.read_exact(&mut tag).map_err(|e| invalid(format!("the stream ends without its `e` record: {e}")))?;
        let record = match tag[0] {
            b'f' | b't' => {
                let mut len = [0u8; 4];
                self.input.read_exact(&mut len)?;
                let len = u32::from_le_bytes(len);
                if len > MAX_NAME {
                    return Err(invalid(format!("a snapshot name of {len} bytes")));
                }
                let mut name = vec![0u8; len as usize];
                self.input.read_exact(&mut name)?;
                let name = String::from_utf8(name).map_err(|_| invalid("a snapshot name that is not UTF-8".into()))?;
                if tag[0] == b'f' {
                    Record::From(name)
                } else {
                    Record::To(name)
                }
            }
            b's' => Record::Size(self.le64()?),
            b'w' => {
                let (offset, length) = (self.le64()?, self.le64()?);
                self.data_left = length;
                Record::Data { offset, length }
            }
            b'z' => Record::Zero { offset: self.le64()?, length: self.le64()? },
            b'e' => {
                self.ended = true;
                Record::End
            }
            other => return Err(invalid(format!("unknown record tag {other:#04x}"))),
        };
        Ok(record)
    }

    /// Fill `buf` from the current `w` record's data.
    pub fn read_data(&mut self, buf: &mut [u8]) -> io::Result<()> {
        if buf.len() as u64 > self.data_left {
            return Err(invalid("read past the end of a data record".into()));
        }
        self.input.read_exact(buf).map_err(|e| invalid(format!("the stream ends inside a data record: {e}")))?;
        self.data_left -= buf.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
