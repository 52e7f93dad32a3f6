//! A misbehaving HTTP server for the hostile suite's network cases: it redirects, trickles,
//! never ends, never answers, and records when each request came and when the host hung up,
//! so a test can measure what the host did rather than what the job saw.
//!
//! Paths: `/redirect?to=URL` (302 to URL), `/slow` (a chunked body, a byte every 200 ms,
//! forever), `/endless` (a body without a length, 64 KiB writes, forever), `/hang` (reads
//! the request and never answers), `/ping` (200, `ok`), `/sink` (reads the request body
//! until the client stops; answers nothing).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the server saw.
#[derive(Default)]
pub struct Seen {
    /// Each request's path and when it came.
    pub requests: Mutex<Vec<(Instant, String)>>,
    /// Connections open now.
    pub open: AtomicUsize,
    /// The most connections open at once.
    pub most_open: AtomicUsize,
    /// When the last connection ended (the peer hung up or a write failed).
    pub last_closed: Mutex<Option<Instant>>,
    /// Request body bytes read from `/sink`.
    pub sunk: AtomicU64,
}

/// A running server on 127.0.0.1; stops accepting when dropped.
pub struct RogueHttp {
    pub authority: String,
    pub seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
}

impl RogueHttp {
    pub fn start() -> RogueHttp {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a rogue server");
        let authority = listener.local_addr().expect("its address").to_string();
        let seen = Arc::new(Seen::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        listener.set_nonblocking(true).expect("nonblocking listener");
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let seen = seen2.clone();
                        std::thread::spawn(move || serve(conn, &seen));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        RogueHttp { authority, seen, stop }
    }

    /// Requests received so far.
    pub fn requests(&self) -> Vec<(Instant, String)> {
        self.seen.requests.lock().unwrap().clone()
    }
}

impl Drop for RogueHttp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(mut conn: TcpStream, seen: &Seen) {
    let now_open = seen.open.fetch_add(1, Ordering::SeqCst) + 1;
    seen.most_open.fetch_max(now_open, Ordering::SeqCst);
    let _ = conn.set_nodelay(true);
    if let Some(path) = read_head(&mut conn) {
        seen.requests.lock().unwrap().push((Instant::now(), path.clone()));
        respond(&mut conn, &path, seen);
    }
    seen.open.fetch_sub(1, Ordering::SeqCst);
    *seen.last_closed.lock().unwrap() = Some(Instant::now());
}

/// The request line's path, once the head has come.
fn read_head(conn: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).ok()? == 0 || head.len() > 64 << 10 {
            return None;
        }
        head.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&head).lines().next()?.to_owned();
    line.split(' ').nth(1).map(str::to_owned)
}

fn respond(conn: &mut TcpStream, path: &str, seen: &Seen) {
    if let Some(to) = path.strip_prefix("/redirect?to=") {
        let _ = write!(conn, "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\n\r\n");
        wait_for_hangup(conn);
    } else if path == "/slow" {
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        // Between bytes, wait for the peer's hang-up, so it is seen when it happens.
        let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 4096];
        while conn.write_all(b"1\r\nx\r\n").is_ok() {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
    } else if path == "/endless" {
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
        let block = vec![b'e'; 64 << 10];
        while conn.write_all(&block).is_ok() {}
    } else if path == "/hang" {
        wait_for_hangup(conn);
    } else if path == "/ping" {
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    } else if path == "/sink" {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.sunk.fetch_add(n as u64, Ordering::SeqCst);
        }
    } else {
        let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        wait_for_hangup(conn);
    }
}

/// Read until the peer closes (or errs).
fn wait_for_hangup(conn: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
}
