//! A minimal HTTP/1.1 client over `std::net::TcpStream`, and the message framing it shares with the
//! test upstream.
//!
//! Ordinary clients refuse header values that are not valid UTF-8 or contain odd bytes; the tests
//! send such values on purpose, so every header line is written verbatim.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Header lines as (lower-case name, raw value).
pub type Headers = Vec<(String, Vec<u8>)>;

#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Written in this order, verbatim.
    pub headers: Headers,
    pub body: Vec<u8>,
}

impl Request {
    pub fn new(method: &str, path: &str) -> Request {
        Request { method: method.to_string(), path: path.to_string(), headers: Vec::new(), body: Vec::new() }
    }

    pub fn get(path: &str) -> Request {
        Request::new("GET", path)
    }

    pub fn post(path: &str) -> Request {
        Request::new("POST", path)
    }

    /// Appends a header line; calling it again with the same name sends a repeated line.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Request {
        self.headers.push((name.to_string(), value.as_ref().to_vec()));
        self
    }

    /// The body is sent as is: with a `transfer-encoding: chunked` header it must already be
    /// chunk-encoded, which lets tests send any framing they like.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    fn has_header(&self, name: &str) -> bool {
        self.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// The request as bytes on the wire; `close` asks the server to end the connection after it.
    fn encode(&self, close: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.body.len());
        out.extend_from_slice(format!("{} {} HTTP/1.1\r\n", self.method, self.path).as_bytes());
        if !self.has_header("host") {
            out.extend_from_slice(b"host: localhost\r\n");
        }
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        // A request's body is framed only by these headers, so a test that sets either one itself
        // (to send chunks, or a wrong length on purpose) gets exactly what it wrote.
        let framed = self.has_header("content-length") || self.has_header("transfer-encoding");
        let wants_length = !self.body.is_empty() || matches!(self.method.as_str(), "POST" | "PUT" | "PATCH");
        if wants_length && !framed {
            out.extend_from_slice(format!("content-length: {}\r\n", self.body.len()).as_bytes());
        }
        if close && !self.has_header("connection") {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    /// Names lower-cased, in arrival order.
    pub headers: Headers,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of `name` (any case), lossy UTF-8.
    pub fn header(&self, name: &str) -> Option<String> {
        self.header_all(name).into_iter().next()
    }

    /// Every value of `name` (any case), in arrival order, lossy UTF-8.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        values(&self.headers, name).map(|v| String::from_utf8_lossy(v).into_owned()).collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics (failing the test) with the body in the message if it is not.
    #[allow(clippy::panic)] // a test helper: the panic is the assertion
    pub fn json(&self) -> serde_json::Value {
        match serde_json::from_slice(&self.body) {
            Ok(value) => value,
            Err(e) => panic!("response body (status {}) is not JSON ({e}): {}", self.status, self.text()),
        }
    }
}

/// One keep-alive connection to 127.0.0.1: consecutive requests reach the same Envoy worker.
pub struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(port: u16) -> io::Result<Conn> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Conn { stream: BufReader::new(stream) })
    }

    /// Like [`Conn::open`], with `timeout` for connecting and for each read and write (a peer
    /// that may hang, e.g. an etcd member without a leader, or a stopped process).
    pub fn open_timeout(port: u16, timeout: Duration) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&(std::net::Ipv4Addr::LOCALHOST, port).into(), timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Conn { stream: BufReader::new(stream) })
    }

    pub fn send(&mut self, req: &Request) -> io::Result<Response> {
        self.exchange(req, false)
    }

    fn exchange(&mut self, req: &Request, close: bool) -> io::Result<Response> {
        let writer = self.stream.get_mut();
        writer.write_all(&req.encode(close))?;
        writer.flush()?;
        read_response(&mut self.stream, &req.method)
    }
}

/// Sends one request on a new connection, with `connection: close`.
pub fn send(port: u16, req: &Request) -> io::Result<Response> {
    Conn::open(port)?.exchange(req, true)
}

/// [`send`] with `timeout` for connecting and for each read and write instead of 10 s.
pub fn send_timeout(port: u16, req: &Request, timeout: Duration) -> io::Result<Response> {
    Conn::open_timeout(port, timeout)?.exchange(req, true)
}

fn read_response(reader: &mut impl BufRead, method: &str) -> io::Result<Response> {
    let (status, headers) = loop {
        let head = read_head(reader)?.ok_or_else(|| eof("connection closed before a response"))?;
        let status = parse_status_line(&head.start_line)
            .ok_or_else(|| invalid(format!("bad status line {:?}", head.start_line)))?;
        // Interim responses (100 Continue, 103 Early Hints) precede the real one; 101 is final.
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        break (status, head.headers);
    };
    let bodiless =
        method.eq_ignore_ascii_case("HEAD") || (100..200).contains(&status) || status == 204 || status == 304;
    let body = if bodiless {
        Vec::new()
    } else {
        match framing(&headers)? {
            Framing::Chunked => read_chunked(reader)?,
            Framing::Length(len) => read_exactly(reader, len)?,
            // A response without framing headers ends when the server closes the connection.
            Framing::Unframed => {
                let mut body = Vec::new();
                reader.read_to_end(&mut body)?;
                body
            }
        }
    };
    Ok(Response { status, headers, body })
}

/// `HTTP/1.x NNN reason` -> NNN.
fn parse_status_line(line: &str) -> Option<u16> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    let code = parts.next()?;
    if !version.starts_with("HTTP/") || code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    code.parse().ok()
}

// ---- Framing, shared with the upstream (`super::upstream`). ----------------------------------

/// Bounds on one message head and on one chunk-size or trailer line: a broken or hostile peer
/// gets an error instead of growing memory without end. Envoy accepts request heads of up to
/// 8 MiB when configured to, hence the generous head bound.
const MAX_HEAD_BYTES: usize = 8 << 20;
const MAX_CHUNK_LINE_BYTES: usize = 4096;

/// A message head: the start line (lossy UTF-8) and the header lines.
#[derive(Debug)]
pub(super) struct Head {
    pub(super) start_line: String,
    pub(super) headers: Headers,
}

/// How a message's body is delimited (RFC 9112 §6).
#[derive(Debug, PartialEq)]
pub(super) enum Framing {
    Chunked,
    Length(u64),
    /// No framing header: a request has no body, a response runs until the connection closes.
    Unframed,
}

pub(super) fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

fn eof(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, message)
}

/// Every value of header `name` (any case).
pub(super) fn values<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> impl Iterator<Item = &'a [u8]> {
    let name = name.to_ascii_lowercase();
    headers.iter().filter(move |(n, _)| *n == name).map(|(_, v)| v.as_slice())
}

/// Whether a comma-separated header (`connection`, `expect`) lists `token`.
pub(super) fn has_token(headers: &[(String, Vec<u8>)], name: &str, token: &str) -> bool {
    values(headers, name)
        .flat_map(|v| v.split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Reads one message head; `Ok(None)` when the connection ends cleanly before it starts.
pub(super) fn read_head(reader: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut budget = MAX_HEAD_BYTES;
    // Empty lines before a start line are allowed (RFC 9112 §2.2), e.g. a stray CRLF after a body.
    let start_line = loop {
        match read_line(reader, &mut budget)? {
            None => return Ok(None),
            Some(line) if line.is_empty() => continue,
            Some(line) => break String::from_utf8_lossy(&line).into_owned(),
        }
    };
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader, &mut budget)?.ok_or_else(|| eof("connection closed inside a message head"))?;
        if line.is_empty() {
            return Ok(Some(Head { start_line, headers }));
        }
        headers.push(parse_header_line(&line)?);
    }
}

fn parse_header_line(line: &[u8]) -> io::Result<(String, Vec<u8>)> {
    let colon = line.iter().position(|&b| b == b':');
    let (name, value) = colon.map(|at| line.split_at(at)).ok_or_else(|| invalid("header line without a colon"))?;
    // Whitespace in or before a name is invalid; a leading one is the obsolete line folding.
    if name.is_empty() || name.iter().any(u8::is_ascii_whitespace) {
        return Err(invalid(format!("bad header name {:?}", String::from_utf8_lossy(name))));
    }
    let value = value.strip_prefix(b":").unwrap_or(value).trim_ascii();
    Ok((String::from_utf8_lossy(name).to_ascii_lowercase(), value.to_vec()))
}

/// Reads one line without its CRLF (or bare LF), spending at most `budget` bytes of it;
/// `Ok(None)` at end of input before any byte.
fn read_line(reader: &mut impl BufRead, budget: &mut usize) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let limit = u64::try_from(*budget).unwrap_or(u64::MAX);
    let n = reader.by_ref().take(limit).read_until(b'\n', &mut line)?;
    *budget = budget.saturating_sub(n);
    match line.last() {
        None => Ok(None),
        Some(b'\n') => {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            Ok(Some(line))
        }
        Some(_) if *budget == 0 => Err(invalid("line too long")),
        Some(_) => Err(eof("connection closed inside a line")),
    }
}

/// The body framing a message's headers declare; conflicting or unparsable lengths are errors.
pub(super) fn framing(headers: &[(String, Vec<u8>)]) -> io::Result<Framing> {
    // Transfer-encoding overrides content-length; only a final `chunked` coding frames the body.
    if let Some(codings) = values(headers, "transfer-encoding").last() {
        let last = codings.rsplit(|&b| b == b',').next().unwrap_or_default();
        return Ok(if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            Framing::Chunked
        } else {
            Framing::Unframed
        });
    }
    let mut length = None;
    // `content-length: 5, 5` and repeated lines are allowed when they agree (RFC 9110 §8.6).
    for item in values(headers, "content-length").flat_map(|v| v.split(|&b| b == b',')) {
        let text = String::from_utf8_lossy(item.trim_ascii()).into_owned();
        let parsed = Some(text.as_str())
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse::<u64>().ok())
            .ok_or_else(|| invalid(format!("bad content-length {text:?}")))?;
        if length.is_some_and(|l| l != parsed) {
            return Err(invalid("conflicting content-length values"));
        }
        length = Some(parsed);
    }
    Ok(length.map_or(Framing::Unframed, Framing::Length))
}

/// Reads exactly `len` bytes. Memory grows with the bytes that actually arrive, not with the
/// declared length, so a bogus huge length is an EOF error rather than an allocation failure.
pub(super) fn read_exactly(reader: &mut impl BufRead, len: u64) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    append_exactly(reader, len, &mut body)?;
    Ok(body)
}

fn append_exactly(reader: &mut impl BufRead, len: u64, out: &mut Vec<u8>) -> io::Result<()> {
    let got = reader.by_ref().take(len).read_to_end(out)?;
    if u64::try_from(got).unwrap_or(u64::MAX) < len {
        return Err(eof("connection closed inside a body"));
    }
    Ok(())
}

/// Reads a chunked body (RFC 9112 §7.1) and returns it decoded; trailers are read and dropped.
pub(super) fn read_chunked(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut budget = MAX_CHUNK_LINE_BYTES;
        let line = read_line(reader, &mut budget)?.ok_or_else(|| eof("connection closed before a chunk"))?;
        // The size may carry `;name=value` extensions.
        let size_text = line.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
        let size = std::str::from_utf8(size_text)
            .ok()
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|t| u64::from_str_radix(t, 16).ok())
            .ok_or_else(|| invalid(format!("bad chunk size line {:?}", String::from_utf8_lossy(&line))))?;
        if size == 0 {
            let mut budget = MAX_HEAD_BYTES;
            loop {
                let trailer =
                    read_line(reader, &mut budget)?.ok_or_else(|| eof("connection closed inside trailers"))?;
                if trailer.is_empty() {
                    return Ok(body);
                }
            }
        }
        append_exactly(reader, size, &mut body)?;
        let mut crlf = [0; 2];
        reader.read_exact(&mut crlf)?;
        if &crlf != b"\r\n" {
            return Err(invalid("chunk data not followed by CRLF"));
        }
    }
}
