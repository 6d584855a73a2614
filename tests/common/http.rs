//! A raw-TCP HTTP/1.1 client (std only), so tests control the bytes exactly and see
//! exactly what came back: status, headers in order and case, body bytes, and whether the
//! body was complete.
//!
//! * [`request`] / [`try_request`]: one request on a fresh connection with
//!   `Connection: close`; [`get`] for the common case.
//! * [`KeepAliveClient`]: many requests on one connection.
//! * [`load`] / [`load_with`]: a bounded, threaded load with a status histogram.
//! * [`send_raw`]: arbitrary bytes in, everything up to EOF out.
//!
//! Framing follows RFC 9112: no body for HEAD, 1xx, 204 and 304; chunked; Content-Length;
//! else read until close. A body cut short (EOF before Content-Length bytes or before the
//! last chunk) is an error of kind `UnexpectedEof`, never a short body.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// Read/write timeout of every client socket unless a `_timeout` variant says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest status/request line or header line accepted.
const MAX_LINE: usize = 64 * 1024;

#[derive(Clone, Debug)]
pub struct Response {
    /// e.g. "HTTP/1.1"
    pub version: String,
    pub status: u16,
    pub reason: String,
    /// Header fields in the order received, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked if it was chunked.
    pub body: Vec<u8>,
    /// True if the body came with `Transfer-Encoding: chunked`.
    pub chunked: bool,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every header named `name` (case-insensitive), in order.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// True if the server said it will close the connection.
    pub fn closes(&self) -> bool {
        match self.header("connection") {
            Some(v) => v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")),
            None => self.version == "HTTP/1.0",
        }
    }
}

/// Reads one CRLF- (or LF-) terminated line, without the terminator.
/// `Ok(None)` on a clean EOF before any byte.
pub fn read_line(r: &mut impl BufRead) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let n = r
        .by_ref()
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(if line.len() >= MAX_LINE {
            io::Error::new(io::ErrorKind::InvalidData, "line too long")
        } else {
            io::Error::new(io::ErrorKind::UnexpectedEof, "EOF in the middle of a line")
        });
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(Some(line))
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn eof(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, msg.to_string())
}

/// Reads header lines up to the empty line.
pub fn read_headers(r: &mut impl BufRead) -> io::Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    loop {
        let line = read_line(r)?.ok_or_else(|| eof("EOF in headers"))?;
        if line.is_empty() {
            return Ok(headers);
        }
        let text = String::from_utf8_lossy(&line);
        let (name, value) = text
            .split_once(':')
            .ok_or_else(|| invalid(format!("header line without ':': {text:?}")))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
}

/// Reads a chunked body (and its trailers, which are discarded).
pub fn read_chunked(r: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r)?.ok_or_else(|| eof("EOF before chunk size"))?;
        let text = String::from_utf8_lossy(&line);
        let size_text = text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| invalid(format!("bad chunk size line {text:?}")))?;
        if size == 0 {
            read_headers(r)?; // trailers
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])
            .map_err(|_| eof("EOF inside a chunk"))?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf)
            .map_err(|_| eof("EOF after chunk data"))?;
        if &crlf != b"\r\n" {
            return Err(invalid(format!("chunk not followed by CRLF: {crlf:?}")));
        }
    }
}

/// Encodes `body` as chunked transfer coding with chunks of at most `chunk` bytes.
/// Use with a `Transfer-Encoding: chunked` header in [`request`].
pub fn chunked(body: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in body.chunks(chunk.max(1)) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Reads one response. `head` = the request was HEAD. Returns the response and whether its
/// body was delimited by connection close (so the connection is now unusable).
pub fn read_response(r: &mut impl BufRead, head: bool) -> io::Result<(Response, bool)> {
    loop {
        let line = read_line(r)?.ok_or_else(|| eof("connection closed before a response"))?;
        let text = String::from_utf8_lossy(&line).into_owned();
        let mut parts = text.splitn(3, ' ');
        let version = parts.next().unwrap_or("").to_string();
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid(format!("bad status line {text:?}")))?;
        let reason = parts.next().unwrap_or("").to_string();
        if !version.starts_with("HTTP/") {
            return Err(invalid(format!("bad status line {text:?}")));
        }
        let headers = read_headers(r)?;
        if (100..200).contains(&status) {
            continue; // interim response
        }
        let mut resp = Response {
            version,
            status,
            reason,
            headers,
            body: Vec::new(),
            chunked: false,
        };
        if head || status == 204 || status == 304 {
            return Ok((resp, false));
        }
        let te = find_header(&resp.headers, "transfer-encoding").map(str::to_ascii_lowercase);
        if te.as_deref().is_some_and(|t| t.contains("chunked")) {
            resp.chunked = true;
            resp.body = read_chunked(r)?;
            return Ok((resp, false));
        }
        if let Some(cl) = find_header(&resp.headers, "content-length") {
            let len: usize = cl
                .parse()
                .map_err(|_| invalid(format!("bad Content-Length {cl:?}")))?;
            resp.body = vec![0; len];
            let mut got = 0;
            while got < len {
                let n = r.read(&mut resp.body[got..])?;
                if n == 0 {
                    return Err(eof(&format!(
                        "body truncated: got {got} of {len} bytes (status {})",
                        resp.status
                    )));
                }
                got += n;
            }
            return Ok((resp, false));
        }
        r.read_to_end(&mut resp.body)?;
        return Ok((resp, true));
    }
}

/// Serializes a request. Adds `Host` unless given, and `Content-Length` for a body unless
/// a `Content-Length` or `Transfer-Encoding` header is given (pass pre-encoded bytes from
/// [`chunked`] with `Transfer-Encoding: chunked`).
fn encode_request(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    close: bool,
) -> Vec<u8> {
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut out = format!("{method} {target} HTTP/1.1\r\n").into_bytes();
    if !has("host") {
        out.extend_from_slice(format!("Host: 127.0.0.1:{port}\r\n").as_bytes());
    }
    for (n, v) in headers {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    if close && !has("connection") {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    if let Some(b) = body {
        if !has("content-length") && !has("transfer-encoding") {
            out.extend_from_slice(format!("Content-Length: {}\r\n", b.len()).as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
    if let Some(b) = body {
        out.extend_from_slice(b);
    }
    out
}

fn connect(port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// One request on a new connection with `Connection: close`, with `timeout` for connect
/// and for each read/write.
pub fn try_request_timeout(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> io::Result<Response> {
    let mut stream = connect(port, timeout)?;
    stream.write_all(&encode_request(port, method, target, headers, body, true))?;
    let mut reader = BufReader::new(stream);
    let (resp, _) = read_response(&mut reader, method.eq_ignore_ascii_case("HEAD"))?;
    Ok(resp)
}

/// [`try_request_timeout`] with [`DEFAULT_TIMEOUT`].
pub fn try_request(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> io::Result<Response> {
    try_request_timeout(port, method, target, headers, body, DEFAULT_TIMEOUT)
}

/// Like [`try_request`], panicking with the request in the message on any I/O or framing
/// error.
pub fn request(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Response {
    try_request(port, method, target, headers, body)
        .unwrap_or_else(|e| panic!("HTTP {method} {target} to 127.0.0.1:{port} failed: {e}"))
}

/// `GET target` with no extra headers.
pub fn get(port: u16, target: &str) -> Response {
    request(port, "GET", target, &[], None)
}

/// Writes `bytes` as they are and returns everything the server sends until it closes
/// (or until `timeout` of silence, then what arrived so far). Send `Connection: close` or
/// HTTP/1.0 so the server closes; the socket is deliberately not half-closed, because nginx
/// takes a read EOF as a client abort (499) while it waits for an upstream.
pub fn send_raw(port: u16, bytes: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    let mut stream = connect(port, timeout)?;
    stream.write_all(bytes)?;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(out)
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(out),
            Err(e) => return Err(e),
        }
    }
}

/// A client that keeps one connection open across requests (HTTP/1.1 keep-alive).
pub struct KeepAliveClient {
    port: u16,
    reader: BufReader<TcpStream>,
    closed: bool,
    requests: usize,
}

impl KeepAliveClient {
    pub fn connect(port: u16) -> io::Result<KeepAliveClient> {
        Self::connect_timeout(port, DEFAULT_TIMEOUT)
    }

    pub fn connect_timeout(port: u16, timeout: Duration) -> io::Result<KeepAliveClient> {
        Ok(KeepAliveClient {
            port,
            reader: BufReader::new(connect(port, timeout)?),
            closed: false,
            requests: 0,
        })
    }

    /// Sends one request on the connection and reads its response. After a response that
    /// closes the connection (`Connection: close` or close-delimited), [`Self::is_closed`]
    /// is true and further requests fail: make a new client.
    pub fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> io::Result<Response> {
        if self.closed {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "connection was closed by the previous response",
            ));
        }
        let bytes = encode_request(self.port, method, target, headers, body, false);
        let result = self
            .reader
            .get_mut()
            .write_all(&bytes)
            .and_then(|_| read_response(&mut self.reader, method.eq_ignore_ascii_case("HEAD")));
        match result {
            Ok((resp, close_delimited)) => {
                self.requests += 1;
                self.closed = close_delimited || resp.closes();
                Ok(resp)
            }
            Err(e) => {
                self.closed = true;
                Err(e)
            }
        }
    }

    /// `GET target` on this connection.
    pub fn get(&mut self, target: &str) -> io::Result<Response> {
        self.request("GET", target, &[], None)
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Responses received on this connection so far.
    pub fn requests(&self) -> usize {
        self.requests
    }

    /// The local port of this connection (to match it in server logs).
    pub fn local_port(&self) -> u16 {
        self.reader
            .get_ref()
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(0)
    }
}

#[derive(Debug, Default)]
pub struct LoadResult {
    /// status code -> number of responses
    pub statuses: BTreeMap<u16, usize>,
    /// Requests that got no complete response (I/O or framing error).
    pub errors: usize,
    /// Responses the check function rejected (counted in `statuses` too).
    pub check_failures: usize,
    /// The first few error / check-failure descriptions.
    pub samples: Vec<String>,
    /// Connections opened.
    pub connections: usize,
    pub elapsed: Duration,
}

impl LoadResult {
    /// Number of responses with `status`.
    pub fn count(&self, status: u16) -> usize {
        self.statuses.get(&status).copied().unwrap_or(0)
    }

    /// Number of responses received (any status).
    pub fn responses(&self) -> usize {
        self.statuses.values().sum()
    }

    /// Responses per second over the whole run.
    pub fn rate(&self) -> f64 {
        self.responses() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// True if every request got a 200 that passed the check.
    pub fn all_ok(&self) -> bool {
        self.errors == 0 && self.check_failures == 0 && self.responses() == self.count(200)
    }
}

/// `total` GETs of `target` over `concurrency` keep-alive connections.
pub fn load(port: u16, target: &str, total: usize, concurrency: usize) -> LoadResult {
    load_with(port, "GET", target, &[], total, concurrency, |_| true)
}

/// `total` requests over `concurrency` keep-alive connections (each thread reconnects
/// after a close or an error); `check` judges each response.
pub fn load_with(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    total: usize,
    concurrency: usize,
    check: impl Fn(&Response) -> bool + Sync,
) -> LoadResult {
    const MAX_SAMPLES: usize = 10;
    let next = AtomicUsize::new(0);
    let result = Mutex::new(LoadResult::default());
    let note = |msg: String, result: &Mutex<LoadResult>| {
        let mut r = result.lock().expect("load result lock");
        if r.samples.len() < MAX_SAMPLES {
            r.samples.push(msg);
        }
    };
    let start = Instant::now();
    thread::scope(|scope| {
        for _ in 0..concurrency.max(1) {
            scope.spawn(|| {
                let mut client: Option<KeepAliveClient> = None;
                while next.fetch_add(1, Ordering::SeqCst) < total {
                    if client.as_ref().is_none_or(KeepAliveClient::is_closed) {
                        match KeepAliveClient::connect(port) {
                            Ok(c) => {
                                client = Some(c);
                                result.lock().expect("load result lock").connections += 1;
                            }
                            Err(e) => {
                                result.lock().expect("load result lock").errors += 1;
                                note(format!("connect: {e}"), &result);
                                continue;
                            }
                        }
                    }
                    let c = client.as_mut().expect("client was just connected");
                    match c.request(method, target, headers, None) {
                        Ok(resp) => {
                            let ok = check(&resp);
                            let mut r = result.lock().expect("load result lock");
                            *r.statuses.entry(resp.status).or_insert(0) += 1;
                            if !ok {
                                r.check_failures += 1;
                                drop(r);
                                note(
                                    format!("check failed: status {} body {:?}", resp.status, {
                                        let t = resp.text();
                                        t.chars().take(200).collect::<String>()
                                    }),
                                    &result,
                                );
                            }
                        }
                        Err(e) => {
                            result.lock().expect("load result lock").errors += 1;
                            note(format!("request: {e}"), &result);
                        }
                    }
                }
            });
        }
    });
    let mut r = result.into_inner().expect("load result lock");
    r.elapsed = start.elapsed();
    r
}
