//! Clients that send a request body in pieces, for the tests of keys in the body: a raw HTTP/1.1
//! upload over a socket (each piece one write, so that Envoy hands meshguard separate body
//! chunks), curl for HTTP/2 and TLS, and the CloudEvents Python SDK's requests
//! (`tests/support/cloudevents_http.py`). Used through `#[path]` by the test files that need it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::http::{Request, Response};

/// How an [`Upload`] frames its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `content-length` of the whole body; pieces are written as they are.
    Length(usize),
    /// `transfer-encoding: chunked`; each piece is one chunk.
    Chunked,
}

/// One HTTP/1.1 request written piece by piece on its own connection (`connection: close`).
pub struct Upload {
    stream: TcpStream,
    framing: Framing,
}

impl Upload {
    /// Writes the request head (and nothing of the body).
    pub fn start(port: u16, path: &str, headers: &[(&str, &str)], framing: Framing) -> Upload {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to Envoy");
        stream.set_nodelay(true).expect("nodelay");
        stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        let mut head = format!("POST {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        match framing {
            Framing::Length(len) => head.push_str(&format!("content-length: {len}\r\n\r\n")),
            Framing::Chunked => head.push_str("transfer-encoding: chunked\r\n\r\n"),
        }
        let mut upload = Upload { stream, framing };
        upload.stream.write_all(head.as_bytes()).expect("write the head");
        upload
    }

    /// Writes one piece of the body (one chunk when chunked). Errors are ignored: Envoy may have
    /// closed the connection after answering, which the response shows.
    pub fn write(&mut self, piece: &[u8]) {
        let bytes = match self.framing {
            Framing::Length(_) => piece.to_vec(),
            Framing::Chunked if piece.is_empty() => return,
            Framing::Chunked => [format!("{:x}\r\n", piece.len()).as_bytes(), piece, b"\r\n"].concat(),
        };
        let _ = self.stream.write_all(&bytes);
    }

    /// Writes `body` in pieces of `size` bytes.
    pub fn write_in_pieces(&mut self, body: &[u8], size: usize) {
        for piece in body.chunks(size) {
            self.write(piece);
        }
    }

    /// Whether any byte of a response has arrived (without waiting more than `wait`).
    pub fn answered_within(&self, wait: Duration) -> bool {
        self.stream.set_read_timeout(Some(wait)).expect("timeout");
        let mut byte = [0u8; 1];
        let answered = matches!(self.stream.peek(&mut byte), Ok(n) if n > 0);
        self.stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        answered
    }

    /// Ends the body (the last chunk when chunked) and reads the response.
    pub fn finish(mut self) -> Response {
        if self.framing == Framing::Chunked {
            let _ = self.stream.write_all(b"0\r\n\r\n");
        }
        read_response(BufReader::new(self.stream))
    }
}

/// A response: its head, then `content-length` bytes (Envoy frames its own replies and the test
/// upstream's with one), or else everything until the connection closes. Reading to the close
/// alone would wait for Envoy's delayed close (1 s) after each answer.
fn read_response(mut reader: impl BufRead) -> Response {
    let mut raw = Vec::new();
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
            break;
        }
        raw.extend_from_slice(&line);
        if line == b"\r\n" {
            let head = String::from_utf8_lossy(&raw).to_ascii_lowercase();
            let status_line = head.lines().last_status();
            if (100..200).contains(&status_line) {
                continue; // an interim response: the real one follows
            }
            let length = head
                .lines()
                .rev()
                .take_while(|l| !l.starts_with("http/"))
                .find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse::<u64>().ok()));
            match length {
                Some(len) => {
                    let _ = reader.by_ref().take(len).read_to_end(&mut raw);
                }
                None => {
                    let _ = reader.read_to_end(&mut raw);
                }
            }
            break;
        }
    }
    parse_response(&raw).unwrap_or_else(|| panic!("no HTTP response: {:?}", String::from_utf8_lossy(&raw)))
}

/// The status of the last status line among `lines` (0 if none).
trait LastStatus {
    fn last_status(self) -> u16;
}

impl<'a, I: DoubleEndedIterator<Item = &'a str>> LastStatus for I {
    fn last_status(self) -> u16 {
        self.rev().find(|l| l.starts_with("http/")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
    }
}

/// `HTTP/x NNN …` head (interim 1xx responses skipped) and the body after it, as it came (curl
/// has decoded any chunked framing already; Envoy frames its answers with a content-length).
fn parse_response(raw: &[u8]) -> Option<Response> {
    let mut rest = raw;
    loop {
        let end = rest.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let body = &rest[end + 4..];
        let mut lines = head.lines();
        let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
        if (100..200).contains(&status) {
            rest = body;
            continue;
        }
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().as_bytes().to_vec()))
            .collect::<Vec<_>>();
        let length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<usize>().ok());
        let body = match length {
            Some(len) => body.get(..len).unwrap_or(body).to_vec(),
            None => body.to_vec(),
        };
        return Some(Response { status, headers, body });
    }
}

/// A curl run: `args`, then the body written to its standard input in `pieces`, calling
/// `between` before each piece after the first (e.g. to wait until the previous piece went
/// upstream). curl `-T -` sends what it reads as it reads it: one HTTP/2 DATA frame per piece
/// when the pieces are apart. Returns the response (`-i` output).
pub fn curl(args: &[&str], pieces: &[&[u8]], between: &(dyn Fn() + Sync)) -> Response {
    let mut all = vec!["-sS", "-i", "--max-time", "60"];
    all.extend_from_slice(args);
    let mut child = Command::new("curl")
        .args(&all)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl (scripts/setup.sh installs it)");
    let mut stdin = child.stdin.take().expect("stdin");
    let out = std::thread::scope(|scope| {
        scope.spawn(move || {
            for (i, piece) in pieces.iter().enumerate() {
                if i > 0 {
                    between();
                }
                if stdin.write_all(piece).and_then(|()| stdin.flush()).is_err() {
                    break; // answered before the end
                }
            }
        });
        child.wait_with_output().expect("curl output")
    });
    parse_response(&out.stdout).unwrap_or_else(|| {
        panic!(
            "curl {all:?}: no response\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// An HTTP/2 (h2c, prior knowledge) POST through curl with these header lines (repeated names
/// are sent as separate header fields) and the body streamed from standard input in `pieces`
/// (see [`curl`]); no pieces: an empty body.
pub fn h2_post(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    pieces: &[&[u8]],
    between: &(dyn Fn() + Sync),
) -> Response {
    let lines: Vec<String> = headers.iter().map(|(n, v)| format!("{n}: {v}")).collect();
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut args = vec!["--http2-prior-knowledge", "-X", "POST"];
    if pieces.is_empty() {
        args.extend(["--data-binary", ""]);
    } else {
        args.extend(["-T", "-"]);
    }
    for line in &lines {
        args.extend(["-H", line]);
    }
    args.push(&url);
    curl(&args, pieces, between)
}

/// `between` for [`curl`] that does nothing.
pub fn nothing() {}

/// A request made by the CloudEvents Python SDK (`tests/support/cloudevents_http.py`): `mode` is
/// `structured`, `binary` or `batch`; `events` a JSON array of `{"source", "id", "type", "data"}`.
/// A POST to `path` with the SDK's headers and body (and a content-length).
pub fn cloudevent(mode: &str, path: &str, events: &serde_json::Value) -> Request {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/cloudevents_http.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(mode)
        .arg(events.to_string())
        .output()
        .expect("python3 (scripts/setup.sh installs the CloudEvents SDK)");
    assert!(out.status.success(), "{}: {}", script.display(), String::from_utf8_lossy(&out.stderr));
    let split = out.stdout.windows(2).position(|w| w == b"\n\n").expect("headers, empty line, body");
    let head = String::from_utf8(out.stdout[..split].to_vec()).expect("UTF-8 headers");
    let mut request = Request::post(path);
    for line in head.lines() {
        let (name, value) = line.split_once(": ").expect("name: value");
        request = request.header(name, value);
    }
    request.body(out.stdout[split + 2..].to_vec())
}

/// A fresh temporary directory for files a test makes (certificates, bodies), removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("meshguard-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `check` every 10 ms until it holds; false when `secs` pass first.
pub fn eventually(secs: u64, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
