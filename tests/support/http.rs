//! A minimal HTTP/1.1 client over `TcpStream`. Header bytes are written verbatim: tests send
//! values that are not UTF-8 on purpose, which ordinary clients refuse to do.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, Vec<u8>)>,
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
    /// Appends a header line (repeat the call for repeated lines).
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Request {
        self.headers.push((name.to_string(), value.as_ref().to_vec()));
        self
    }
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    fn has(&self, name: &str) -> bool {
        self.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    fn write_to(&self, out: &mut impl Write, close: bool) -> io::Result<()> {
        let mut buf = Vec::with_capacity(256 + self.body.len());
        buf.extend_from_slice(format!("{} {} HTTP/1.1\r\n", self.method, self.path).as_bytes());
        if !self.has("host") {
            buf.extend_from_slice(b"host: localhost\r\n");
        }
        for (name, value) in &self.headers {
            buf.extend_from_slice(name.as_bytes());
            buf.extend_from_slice(b": ");
            buf.extend_from_slice(value);
            buf.extend_from_slice(b"\r\n");
        }
        let needs_length = !self.body.is_empty() || matches!(self.method.as_str(), "POST" | "PUT" | "PATCH");
        if needs_length && !self.has("content-length") && !self.has("transfer-encoding") {
            buf.extend_from_slice(format!("content-length: {}\r\n", self.body.len()).as_bytes());
        }
        if close {
            buf.extend_from_slice(b"connection: close\r\n");
        }
        buf.extend_from_slice(b"\r\n");
        buf.extend_from_slice(&self.body);
        out.write_all(&buf)?;
        out.flush()
    }
}

#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    /// Names lower-cased.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<String> {
        self.header_all(name).into_iter().next()
    }
    pub fn header_all(&self, name: &str) -> Vec<String> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().filter(|(n, _)| *n == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned()).collect()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {}", self.text()))
    }
}

fn bad(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Header lines as (lower-case name, raw value).
pub type Headers = Vec<(String, Vec<u8>)>;

/// Reads one message head (start line + headers); `None` at a clean end of the connection.
pub(crate) fn read_head(reader: &mut impl BufRead) -> io::Result<Option<(String, Headers)>> {
    let mut line = Vec::new();
    let mut start = None;
    let mut headers = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            return if start.is_none() { Ok(None) } else { Err(bad("connection closed inside the head")) };
        }
        let trimmed = line.strip_suffix(b"\n").unwrap_or(&line);
        let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
        if start.is_none() {
            if trimmed.is_empty() {
                continue; // tolerate stray CRLF between messages
            }
            start = Some(String::from_utf8_lossy(trimmed).into_owned());
            continue;
        }
        if trimmed.is_empty() {
            return Ok(start.map(|s| (s, headers)));
        }
        let colon = trimmed.iter().position(|&b| b == b':').ok_or_else(|| bad("header line without colon"))?;
        let name = String::from_utf8_lossy(&trimmed[..colon]).trim().to_ascii_lowercase();
        let value = trimmed[colon + 1..].trim_ascii().to_vec();
        headers.push((name, value));
    }
}

fn header_value<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
}

/// Reads a body delimited by content-length or chunked encoding; `None` when neither is present.
pub(crate) fn read_body(reader: &mut impl BufRead, headers: &[(String, Vec<u8>)]) -> io::Result<Option<Vec<u8>>> {
    if header_value(headers, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case(b"chunked")) {
        let mut body = Vec::new();
        loop {
            let mut size_line = Vec::new();
            reader.read_until(b'\n', &mut size_line)?;
            let text = String::from_utf8_lossy(&size_line);
            let hex = text.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(hex, 16).map_err(|_| bad(format!("bad chunk size {hex:?}")))?;
            if size == 0 {
                // Trailers until an empty line.
                loop {
                    let mut trailer = Vec::new();
                    if reader.read_until(b'\n', &mut trailer)? == 0 || trailer == b"\r\n" || trailer == b"\n" {
                        return Ok(Some(body));
                    }
                }
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..])?;
            let mut crlf = [0u8; 2];
            reader.read_exact(&mut crlf)?;
        }
    }
    match header_value(headers, "content-length") {
        Some(v) => {
            let len: usize = String::from_utf8_lossy(v).trim().parse().map_err(|_| bad("bad content-length"))?;
            let mut body = vec![0; len];
            reader.read_exact(&mut body)?;
            Ok(Some(body))
        }
        None => Ok(None),
    }
}

/// One keep-alive connection: consecutive requests stay on one Envoy worker thread.
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    pub fn open(port: u16) -> io::Result<Conn> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        Ok(Conn { reader: BufReader::new(stream.try_clone()?), writer: stream })
    }

    pub fn send(&mut self, req: &Request) -> io::Result<Response> {
        req.write_to(&mut self.writer, false)?;
        read_response(&mut self.reader, &req.method)
    }
}

fn read_response(reader: &mut BufReader<TcpStream>, method: &str) -> io::Result<Response> {
    let (start, headers) =
        read_head(reader)?.ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no response"))?;
    let status: u16 = start
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {start:?}")))?;
    let no_body = method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status);
    let body = if no_body {
        Vec::new()
    } else {
        match read_body(reader, &headers)? {
            Some(body) => body,
            None => {
                let mut body = Vec::new();
                reader.read_to_end(&mut body)?;
                body
            }
        }
    };
    Ok(Response { status, headers, body })
}

/// Sends one request on a new connection (`connection: close`).
pub fn send(port: u16, req: &Request) -> io::Result<Response> {
    let mut conn = Conn::open(port)?;
    req.write_to(&mut conn.writer, true)?;
    read_response(&mut conn.reader, &req.method)
}
