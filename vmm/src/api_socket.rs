//! The control API: JSON lines over a Unix stream socket (`--api-socket PATH`).
//!
//! Each request is one JSON object on one line; each gets one JSON object on one line back.
//! A connection may send any number of requests.
//!
//! | request | effect | response |
//! |---|---|---|
//! | `{"op":"status"}` | none | `{"ok":true,"state":"running","pid":1234,"vcpus":2,"memory_mib":256,"uptime_ms":5120}` (`state` is `running` or `shutting-down`) |
//! | `{"op":"shutdown"}` or `{"op":"shutdown","timeout_ms":5000}` | presses Ctrl-Alt-Del on the i8042 keyboard: Linux reboots, which (with `reboot=k`) ends the VM through the i8042 reset; with `timeout_ms`, the VM is stopped if the guest has not gone by then | `{"ok":true,"state":"shutting-down"}` |
//! | `{"op":"stop"}` | stops the VM at once (exit status 0, reason on stderr) | `{"ok":true,"state":"stopping"}` |
//!
//! Errors: `{"ok":false,"error":"..."}` (malformed JSON, unknown `op`, a line over 4 KiB).
//! Try it: `echo '{"op":"status"}' | socat - UNIX-CONNECT:/path/api.sock`.
//!
//! The socket file is created with mode 0600 and removed when the VMM exits.

use event_manager::{EventOps, Events, MutEventSubscriber};
use serde::Deserialize;
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use vmm_sys_util::epoll::EventSet;

/// Longest request line.
pub const MAX_REQUEST: usize = 4096;

/// Errors setting up the socket.
#[derive(Debug, thiserror::Error)]
pub enum ApiSocketError {
    #[error("API socket {0} is in use by a running process")]
    InUse(PathBuf),
    #[error("cannot create the API socket {0}: {1}")]
    Bind(PathBuf, std::io::Error),
}

/// A request.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Report state.
    Status,
    /// Ask the guest to shut down (Ctrl-Alt-Del), optionally stopping it after `timeout_ms`.
    Shutdown {
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// Stop now.
    Stop,
}

/// Parses one request line; the error is the response to send.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(line).map_err(|_| "request is not UTF-8".to_string())?;
    serde_json::from_str(text.trim()).map_err(|e| format!("bad request: {e}"))
}

/// What answers requests (the VMM).
pub type Handler = Box<dyn FnMut(Request) -> serde_json::Value + Send>;

struct Connection {
    stream: UnixStream,
    buf: Vec<u8>,
}

/// The listening socket and its connections, driven by the event loop.
pub struct ApiServer {
    path: PathBuf,
    listener: UnixListener,
    conns: HashMap<RawFd, Connection>,
    handler: Option<Handler>,
}

impl ApiServer {
    /// Binds `path` (replacing a stale socket file nobody listens on).
    pub fn bind(path: &Path) -> Result<Self, ApiSocketError> {
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(ApiSocketError::InUse(path.to_path_buf()));
            }
            let _ = std::fs::remove_file(path);
        }
        let listener =
            UnixListener::bind(path).map_err(|e| ApiSocketError::Bind(path.to_path_buf(), e))?;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        listener
            .set_nonblocking(true)
            .map_err(|e| ApiSocketError::Bind(path.to_path_buf(), e))?;
        Ok(Self {
            path: path.to_path_buf(),
            listener,
            conns: HashMap::new(),
            handler: None,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets who answers requests.
    pub fn set_handler(&mut self, handler: Handler) {
        self.handler = Some(handler);
    }

    fn respond(&mut self, line: &[u8]) -> serde_json::Value {
        match parse_request(line) {
            Ok(req) => match self.handler.as_mut() {
                Some(h) => h(req),
                None => serde_json::json!({"ok": false, "error": "not ready"}),
            },
            Err(e) => serde_json::json!({"ok": false, "error": e}),
        }
    }

    fn accept(&mut self, ops: &mut EventOps) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    if ops
                        .add(Events::new(&stream, EventSet::IN | EventSet::READ_HANG_UP))
                        .is_ok()
                    {
                        self.conns.insert(
                            fd,
                            Connection {
                                stream,
                                buf: Vec::new(),
                            },
                        );
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("API socket accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// Reads from a connection; returns false when it should be closed.
    fn serve(&mut self, fd: RawFd) -> bool {
        let mut chunk = [0u8; 1024];
        loop {
            let Some(conn) = self.conns.get_mut(&fd) else {
                return false;
            };
            match conn.stream.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => conn.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        loop {
            let Some(conn) = self.conns.get_mut(&fd) else {
                return false;
            };
            let Some(nl) = conn.buf.iter().position(|b| *b == b'\n') else {
                if conn.buf.len() > MAX_REQUEST {
                    let _ = conn
                        .stream
                        .write_all(b"{\"ok\":false,\"error\":\"request line too long\"}\n");
                    return false;
                }
                return true;
            };
            let line: Vec<u8> = conn.buf.drain(..=nl).collect();
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            let resp = self.respond(&line[..line.len() - 1]);
            let Some(conn) = self.conns.get_mut(&fd) else {
                return false;
            };
            let mut out = resp.to_string().into_bytes();
            out.push(b'\n');
            // Responses are small; a client that does not read them is dropped.
            conn.stream.set_nonblocking(false).ok();
            conn.stream
                .set_write_timeout(Some(std::time::Duration::from_secs(1)))
                .ok();
            let ok = conn.stream.write_all(&out).is_ok();
            conn.stream.set_nonblocking(true).ok();
            if !ok {
                return false;
            }
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl MutEventSubscriber for ApiServer {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.listener.as_raw_fd() {
            self.accept(ops);
            return;
        }
        let hangup = events
            .event_set()
            .intersects(EventSet::HANG_UP | EventSet::ERROR);
        let keep = self.serve(fd) && !hangup;
        if !keep && let Some(conn) = self.conns.remove(&fd) {
            let _ = ops.remove(Events::new(
                &conn.stream,
                EventSet::IN | EventSet::READ_HANG_UP,
            ));
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.listener, EventSet::IN)) {
            tracing::error!("cannot watch the API socket: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert_eq!(parse_request(br#"{"op":"status"}"#), Ok(Request::Status));
        assert_eq!(parse_request(br#" {"op":"stop"} "#), Ok(Request::Stop));
        assert_eq!(
            parse_request(br#"{"op":"shutdown"}"#),
            Ok(Request::Shutdown { timeout_ms: None })
        );
        assert_eq!(
            parse_request(br#"{"op":"shutdown","timeout_ms":50}"#),
            Ok(Request::Shutdown {
                timeout_ms: Some(50)
            })
        );
        for bad in [&b"{}"[..], b"{\"op\":\"reboot\"}", b"nonsense", b"\xff\xfe"] {
            assert!(parse_request(bad).is_err());
        }
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..128)) {
            let _ = parse_request(&bytes);
        }
    }

    #[test]
    fn bind_replaces_a_stale_socket_and_refuses_a_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("api.sock");
        let a = ApiServer::bind(&p).unwrap();
        assert!(matches!(ApiServer::bind(&p), Err(ApiSocketError::InUse(_))));
        drop(a);
        assert!(!p.exists(), "removed on drop");
        std::os::unix::net::UnixListener::bind(&p)
            .map(drop)
            .unwrap(); // a stale file
        let _b = ApiServer::bind(&p).unwrap();
    }
}
