//! The fallback application nginx proxies to: a tiny threaded HTTP/1.1 server.
//!
//! By default ([`App::start`]) every request gets `200`, `Content-Type: text/plain` and an
//! "echo" body of `key=value` lines, so a test can assert what the app saw:
//!
//! ```text
//! app=1
//! method=POST
//! uri=/dynamic/page?x=1          (request-target exactly as received)
//! version=HTTP/1.0
//! body_len=5
//! body_sha=<lowercase hex SHA-256 of the body>   (see common::sha256_hex)
//! h:host=127.0.0.1:1234          (one line per request header, name lowercased, in order)
//! h:connection=close
//! ```
//!
//! Parse it with [`Echo::parse`]. [`App::start_with`] takes any handler instead. Request
//! bodies may come with Content-Length or chunked; connections are kept alive as HTTP/1.x
//! says. Every request is recorded ([`App::seen`]) before it is answered.

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};

use super::http::{read_chunked, read_headers, read_line};
use super::server::{ConnCtx, Server};
use super::sha256::sha256_hex;

/// A request as the app received it.
#[derive(Clone, Debug)]
pub struct AppRequest {
    pub method: String,
    /// The request-target exactly as received (path and query, still percent-encoded).
    pub target: String,
    pub version: String,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// Which connection (accept order, 0-based) carried it.
    pub conn: usize,
}

impl AppRequest {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What a handler answers. `Content-Length` is added (unless the handler set one, or a
/// `Transfer-Encoding` whose encoded body it supplies, or the response is
/// [`AppResponse::chunked`]) and `Connection: close` when the app closes the connection.
#[derive(Clone, Debug)]
pub struct AppResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Send the body with `Transfer-Encoding: chunked`, in chunks of this many bytes with
    /// this pause before each chunk after the first (a response streamed as it is made).
    pub chunked: Option<(usize, std::time::Duration)>,
}

impl AppResponse {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> AppResponse {
        AppResponse {
            status,
            headers: Vec::new(),
            body: body.into(),
            chunked: None,
        }
    }

    /// Streams the body chunked (builder style): `Transfer-Encoding: chunked`, no
    /// `Content-Length`, chunks of `chunk` bytes written one by one with `pause` between
    /// them. The 0-size last chunk follows the last one.
    pub fn chunked(mut self, chunk: usize, pause: std::time::Duration) -> AppResponse {
        self.chunked = Some((chunk.max(1), pause));
        self
    }

    /// Adds a header (builder style).
    pub fn header(mut self, name: &str, value: &str) -> AppResponse {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// The default handler: 200 text/plain with the echo body described in the module doc.
pub fn echo(req: &AppRequest) -> AppResponse {
    let mut body = format!(
        "app=1\nmethod={}\nuri={}\nversion={}\nbody_len={}\nbody_sha={}\n",
        req.method,
        req.target,
        req.version,
        req.body.len(),
        sha256_hex(&req.body)
    );
    for (name, value) in &req.headers {
        body.push_str(&format!("h:{}={}\n", name.to_ascii_lowercase(), value));
    }
    AppResponse::new(200, body).header("Content-Type", "text/plain")
}

/// The echo body, parsed.
#[derive(Clone, Debug)]
pub struct Echo {
    pub fields: Vec<(String, String)>,
}

impl Echo {
    /// Parses an echo body; panics (showing the body) if it is not one.
    pub fn parse(body: &[u8]) -> Echo {
        let text = String::from_utf8_lossy(body);
        assert!(
            text.starts_with("app=1\n"),
            "not an app echo body (did the request reach the app?): {text:?}"
        );
        let fields = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Echo { fields }
    }

    /// A field such as `method`, `uri`, `body_len`, `body_sha`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The request header `name` (any case) as the app saw it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.get(&format!("h:{}", name.to_ascii_lowercase()))
    }

    pub fn method(&self) -> &str {
        self.get("method").unwrap_or("")
    }

    pub fn uri(&self) -> &str {
        self.get("uri").unwrap_or("")
    }

    pub fn body_len(&self) -> usize {
        self.get("body_len")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    pub fn body_sha(&self) -> &str {
        self.get("body_sha").unwrap_or("")
    }
}

type Handler = dyn Fn(&AppRequest) -> AppResponse + Send + Sync;

pub struct App {
    seen: Arc<Mutex<Vec<AppRequest>>>,
    server: Server,
}

impl App {
    /// Starts the echo app on 127.0.0.1:<ephemeral>.
    pub fn start() -> App {
        App::start_with(echo)
    }

    /// Starts an app answering with `handler`.
    pub fn start_with(handler: impl Fn(&AppRequest) -> AppResponse + Send + Sync + 'static) -> App {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let conn_seen = Arc::clone(&seen);
        let server = Server::start(
            "app",
            Arc::new(move |stream: TcpStream, ctx: &ConnCtx| {
                serve_connection(stream, ctx, &*handler, &conn_seen)
            }),
        );
        App { seen, server }
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.seen.lock().expect("app request log lock").len()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.server.connections()
    }

    /// Every request received so far, in order.
    pub fn seen(&self) -> Vec<AppRequest> {
        self.seen.lock().expect("app request log lock").clone()
    }

    /// The most recent request.
    pub fn last(&self) -> Option<AppRequest> {
        self.seen
            .lock()
            .expect("app request log lock")
            .last()
            .cloned()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Reads one request; Ok(None) on a clean close between requests.
fn read_request(r: &mut BufReader<TcpStream>, conn: usize) -> Result<Option<AppRequest>, String> {
    let line = match read_line(r) {
        Ok(Some(l)) => l,
        Ok(None) => return Ok(None),
        Err(e) => return Err(format!("request line: {e}")),
    };
    let text = String::from_utf8_lossy(&line).into_owned();
    let parts: Vec<&str> = text.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(format!("bad request line {text:?}"));
    };
    let headers = read_headers(r).map_err(|e| format!("headers: {e}"))?;
    let mut req = AppRequest {
        method: method.to_string(),
        target: target.to_string(),
        version: version.to_string(),
        headers,
        body: Vec::new(),
        conn,
    };
    let chunked = req
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        req.body = read_chunked(r).map_err(|e| format!("chunked body: {e}"))?;
    } else if let Some(cl) = req.header("content-length") {
        let len: usize = cl
            .parse()
            .map_err(|_| format!("bad Content-Length {cl:?}"))?;
        req.body = vec![0; len];
        r.read_exact(&mut req.body)
            .map_err(|e| format!("body ({len} bytes): {e}"))?;
    }
    Ok(Some(req))
}

fn keep_alive(req: &AppRequest) -> bool {
    let conn = req
        .header("connection")
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let has = |token: &str| conn.split(',').any(|t| t.trim() == token);
    if req.version == "HTTP/1.1" {
        !has("close")
    } else {
        has("keep-alive")
    }
}

fn serve_connection(
    stream: TcpStream,
    ctx: &ConnCtx,
    handler: &Handler,
    seen: &Mutex<Vec<AppRequest>>,
) {
    let _ = stream.set_nodelay(true);
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    while !ctx.stopping() {
        let req = match read_request(&mut reader, ctx.id) {
            Ok(Some(req)) => req,
            Ok(None) => return,
            Err(msg) => {
                let body = format!("app: {msg}\n");
                let _ = write!(
                    writer,
                    "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                return;
            }
        };
        let keep = keep_alive(&req);
        let head = req.method.eq_ignore_ascii_case("HEAD");
        let version10 = req.version == "HTTP/1.0";
        seen.lock().expect("app request log lock").push(req.clone());
        let resp = handler(&req);

        let mut out = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status)).into_bytes();
        let mut has_length = false;
        for (n, v) in &resp.headers {
            // A handler that sets Transfer-Encoding itself supplies the encoded body
            // (e.g. from `http::chunked`, or cut short).
            has_length |= n.eq_ignore_ascii_case("content-length")
                || n.eq_ignore_ascii_case("transfer-encoding");
            out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        if resp.chunked.is_some() {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        } else if !has_length {
            out.extend_from_slice(format!("Content-Length: {}\r\n", resp.body.len()).as_bytes());
        }
        if !keep {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if version10 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
        match resp.chunked {
            Some((chunk, pause)) if !head => {
                if writer.write_all(&out).is_err() {
                    return;
                }
                for (i, piece) in resp.body.chunks(chunk).enumerate() {
                    if i > 0 && !ctx.sleep(pause) {
                        return;
                    }
                    let mut bytes = format!("{:x}\r\n", piece.len()).into_bytes();
                    bytes.extend_from_slice(piece);
                    bytes.extend_from_slice(b"\r\n");
                    if writer.write_all(&bytes).is_err() {
                        return;
                    }
                }
                if writer.write_all(b"0\r\n\r\n").is_err() || !keep {
                    return;
                }
            }
            _ => {
                if !head {
                    out.extend_from_slice(&resp.body);
                }
                if writer.write_all(&out).is_err() || !keep {
                    return;
                }
            }
        }
    }
}
