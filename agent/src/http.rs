//! A small HTTP/1.1 client over `std::net::TcpStream`, enough for the instance metadata service.
//!
//! One request per connection (`Connection: close`), a deadline for the whole exchange, a cap on
//! the response size, and `Content-Length`, chunked or read-to-close bodies. Response heads are
//! parsed with `httparse`. No TLS: the metadata service is plain HTTP on a link-local address.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Most headers in a response.
const MAX_HEADERS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no complete answer from {addr} within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("connection to {addr} failed: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("malformed HTTP response from {addr}: {reason}")]
    Malformed { addr: SocketAddr, reason: String },
    #[error("response from {addr} is larger than {limit} bytes")]
    TooLarge { addr: SocketAddr, limit: usize },
}

impl HttpError {
    /// True when the server could not be reached at all (network not up yet, nothing listening).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, HttpError::Connect { .. } | HttpError::Timeout { .. })
    }
}

/// A parsed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: Vec<(&'a str, String)>,
    pub timeout: Duration,
    pub max_body: usize,
}

impl<'a> Request<'a> {
    pub fn new(method: &'a str, path: &'a str) -> Self {
        Self {
            method,
            path,
            headers: Vec::new(),
            timeout: Duration::from_secs(5),
            max_body: 1024 * 1024,
        }
    }

    pub fn header(mut self, name: &'a str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// Sends `request` to `addr` and reads the whole response.
pub fn send(addr: SocketAddr, request: &Request<'_>) -> Result<Response, HttpError> {
    let deadline = Instant::now() + request.timeout;
    let mut stream = TcpStream::connect_timeout(&addr, request.timeout).map_err(|source| {
        if source.kind() == std::io::ErrorKind::TimedOut {
            HttpError::Timeout {
                addr,
                timeout: request.timeout,
            }
        } else {
            HttpError::Connect { addr, source }
        }
    })?;
    let _ = stream.set_nodelay(true);

    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: kumo-agent/{}\r\nAccept: */*\r\nConnection: close\r\n",
        request.method,
        request.path,
        addr.ip(),
        env!("CARGO_PKG_VERSION")
    );
    for (name, value) in &request.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if request.method == "PUT" || request.method == "POST" {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("\r\n");
    let mut conn = Conn {
        stream: &mut stream,
        addr,
        deadline,
        timeout: request.timeout,
    };
    conn.write_all(head.as_bytes())?;

    // Read until the head is complete.
    let mut buf = Vec::with_capacity(4096);
    let (status, headers, head_len) = loop {
        if conn.fill(&mut buf)? == 0 {
            return Err(HttpError::Malformed {
                addr,
                reason: "connection closed before the response head ended".into(),
            });
        }
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut slots);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let status = parsed.code.unwrap_or(0);
                let headers = parsed
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect::<Vec<_>>();
                break (status, headers, n);
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => {
                return Err(HttpError::TooLarge {
                    addr,
                    limit: MAX_HEAD,
                });
            }
            Err(e) => {
                return Err(HttpError::Malformed {
                    addr,
                    reason: e.to_string(),
                });
            }
        }
    };
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let rest = buf.split_off(head_len);
    let no_body = request.method == "HEAD" || status == 204 || status == 304 || status < 200;
    if no_body {
        return Ok(response);
    }
    let chunked = response
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let length = match response.header("content-length") {
        Some(v) => Some(
            v.trim()
                .parse::<usize>()
                .map_err(|_| HttpError::Malformed {
                    addr,
                    reason: format!("bad Content-Length {v:?}"),
                })?,
        ),
        None => None,
    };
    response.body = if chunked {
        read_chunked(&mut conn, rest, request.max_body)?
    } else if let Some(len) = length {
        if len > request.max_body {
            return Err(HttpError::TooLarge {
                addr,
                limit: request.max_body,
            });
        }
        let mut body = rest;
        while body.len() < len {
            if conn.fill(&mut body)? == 0 {
                return Err(HttpError::Malformed {
                    addr,
                    reason: format!("body ended after {} of {len} bytes", body.len()),
                });
            }
        }
        body.truncate(len);
        body
    } else {
        let mut body = rest;
        while conn.fill(&mut body)? > 0 {
            if body.len() > request.max_body {
                return Err(HttpError::TooLarge {
                    addr,
                    limit: request.max_body,
                });
            }
        }
        body
    };
    Ok(response)
}

fn read_chunked(conn: &mut Conn<'_>, mut buf: Vec<u8>, max: usize) -> Result<Vec<u8>, HttpError> {
    let addr = conn.addr;
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        // Chunk size line.
        let (size, used) = loop {
            match httparse::parse_chunk_size(&buf[pos..]) {
                Ok(httparse::Status::Complete((used, size))) => break (size, used),
                Ok(httparse::Status::Partial) => {
                    if buf.len() - pos > 1024 {
                        return Err(HttpError::Malformed {
                            addr,
                            reason: "chunk size line too long".into(),
                        });
                    }
                    if conn.fill(&mut buf)? == 0 {
                        return Err(HttpError::Malformed {
                            addr,
                            reason: "connection closed inside a chunked body".into(),
                        });
                    }
                }
                Err(_) => {
                    return Err(HttpError::Malformed {
                        addr,
                        reason: "bad chunk size".into(),
                    });
                }
            }
        };
        pos += used;
        if size == 0 {
            return Ok(body);
        }
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if size > max || body.len() + size > max {
            return Err(HttpError::TooLarge { addr, limit: max });
        }
        // Chunk data plus its CRLF.
        while buf.len() - pos < size + 2 {
            if conn.fill(&mut buf)? == 0 {
                return Err(HttpError::Malformed {
                    addr,
                    reason: "connection closed inside a chunk".into(),
                });
            }
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return Err(HttpError::Malformed {
                addr,
                reason: "chunk not followed by CRLF".into(),
            });
        }
        pos += size + 2;
    }
}

/// A connection with one deadline for every read and write.
struct Conn<'a> {
    stream: &'a mut TcpStream,
    addr: SocketAddr,
    deadline: Instant,
    timeout: Duration,
}

impl Conn<'_> {
    fn remaining(&self) -> Result<Duration, HttpError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(self.timed_out())
        } else {
            Ok(left)
        }
    }

    fn timed_out(&self) -> HttpError {
        HttpError::Timeout {
            addr: self.addr,
            timeout: self.timeout,
        }
    }

    fn map_io(&self, source: std::io::Error) -> HttpError {
        match source.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => self.timed_out(),
            _ => HttpError::Io {
                addr: self.addr,
                source,
            },
        }
    }

    fn write_all(&mut self, data: &[u8]) -> Result<(), HttpError> {
        let left = self.remaining()?;
        let _ = self.stream.set_write_timeout(Some(left));
        self.stream.write_all(data).map_err(|e| self.map_io(e))
    }

    /// Reads more bytes onto the end of `buf`; 0 at end of stream.
    fn fill(&mut self, buf: &mut Vec<u8>) -> Result<usize, HttpError> {
        let left = self.remaining()?;
        let _ = self.stream.set_read_timeout(Some(left));
        let mut chunk = [0u8; 8192];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.map_io(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Serves one connection with a canned response and returns the request it read.
    fn serve_once(response: &'static [u8]) -> (SocketAddr, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while !req.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut b).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&b[..n]);
            }
            s.write_all(response).unwrap();
            String::from_utf8(req).unwrap()
        });
        (addr, handle)
    }

    #[test]
    fn content_length_body() {
        let (addr, h) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
        let r = send(addr, &Request::new("GET", "/x").header("X-A", "b")).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hello");
        let req = h.join().unwrap();
        assert!(req.starts_with("GET /x HTTP/1.1\r\n"));
        assert!(req.contains("X-A: b\r\n"));
    }

    #[test]
    fn chunked_body() {
        let (addr, h) = serve_once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        );
        let r = send(addr, &Request::new("GET", "/")).unwrap();
        assert_eq!(r.body, b"abcde");
        h.join().unwrap();
    }

    #[test]
    fn body_until_close() {
        let (addr, h) = serve_once(b"HTTP/1.0 404 Not Found\r\n\r\nnope");
        let r = send(addr, &Request::new("GET", "/")).unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.body, b"nope");
        h.join().unwrap();
    }

    #[test]
    fn truncated_body_is_an_error() {
        let (addr, h) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort");
        let e = send(addr, &Request::new("GET", "/")).unwrap_err();
        assert!(matches!(e, HttpError::Malformed { .. }), "{e}");
        h.join().unwrap();
    }

    #[test]
    fn oversized_body_is_refused() {
        let (addr, h) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n");
        let mut req = Request::new("GET", "/");
        req.max_body = 10;
        assert!(matches!(
            send(addr, &req).unwrap_err(),
            HttpError::TooLarge { .. }
        ));
        h.join().unwrap();
    }

    #[test]
    fn silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let e = send(
            addr,
            &Request::new("GET", "/").timeout(Duration::from_millis(200)),
        )
        .unwrap_err();
        assert!(matches!(e, HttpError::Timeout { .. }), "{e}");
        drop(listener);
    }

    #[test]
    fn nothing_listening_is_unreachable() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let e = send(addr, &Request::new("GET", "/")).unwrap_err();
        assert!(e.is_unreachable(), "{e}");
    }
}
