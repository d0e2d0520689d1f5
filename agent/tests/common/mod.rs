//! Test support: an in-process instance metadata service that behaves like EC2's (IMDSv2 tokens
//! with TTLs, IMDSv1, `HttpTokens` required or optional, v2 switched off, 404 for absent
//! user-data), with counters so tests can see what the client did.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the service treats tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenMode {
    /// HttpTokens=optional: v1 and v2 both work.
    Optional,
    /// HttpTokens=required: GETs without a valid token get 401.
    Required,
    /// The token PUT is refused with this status (v2 not available); GETs work without tokens.
    V2Refused(u16),
    /// Everything answers 403 (HttpEndpoint=disabled).
    Disabled,
}

#[derive(Debug, Default)]
pub struct Counters {
    pub puts: AtomicUsize,
    pub gets: AtomicUsize,
    pub gets_with_token: AtomicUsize,
    pub unauthorized: AtomicUsize,
    pub server_errors: AtomicUsize,
    /// Requests refused with 403 because the endpoint is disabled.
    pub forbidden: AtomicUsize,
}

#[derive(Debug)]
struct State {
    mode: TokenMode,
    /// Path under /latest/meta-data/ -> value.
    meta: BTreeMap<String, String>,
    user_data: Option<Vec<u8>>,
    tokens: Vec<(String, Instant)>,
    next_token: u64,
    /// Answer 503 to this many requests first.
    fail_first: usize,
}

/// A running metadata server; stops when dropped.
pub struct ImdsServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    pub counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
}

/// A typical instance's metadata.
pub fn instance_meta(instance_id: &str, ip: &str) -> BTreeMap<String, String> {
    let dashed = ip.replace('.', "-");
    let mut m = BTreeMap::new();
    m.insert("instance-id".into(), instance_id.into());
    m.insert("ami-id".into(), "ami-0123456789abcdef0".into());
    m.insert("instance-type".into(), "t3.micro".into());
    m.insert("local-ipv4".into(), ip.into());
    m.insert("local-hostname".into(), format!("ip-{dashed}.ec2.internal"));
    m.insert("hostname".into(), format!("ip-{dashed}.ec2.internal"));
    m.insert("mac".into(), "02:00:00:00:00:05".into());
    m.insert(
        "public-keys/0/openssh-key".into(),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKumoTestKey test-key".into(),
    );
    m
}

impl ImdsServer {
    pub fn start(
        mode: TokenMode,
        meta: BTreeMap<String, String>,
        user_data: Option<Vec<u8>>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        Self::from_listener(listener, mode, meta, user_data)
    }

    /// Serves on an already bound listener (e.g. one made inside a network namespace).
    pub fn from_listener(
        listener: TcpListener,
        mode: TokenMode,
        meta: BTreeMap<String, String>,
        user_data: Option<Vec<u8>>,
    ) -> Self {
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let state = Arc::new(Mutex::new(State {
            mode,
            meta,
            user_data,
            tokens: Vec::new(),
            next_token: 1,
            fail_first: 0,
        }));
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (state, counters, stop) = (state.clone(), counters.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let (state, counters) = (state.clone(), counters.clone());
                            std::thread::spawn(move || {
                                let _ = serve(stream, &state, &counters);
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
        }
        Self {
            addr,
            state,
            counters,
            stop,
        }
    }

    /// Forgets every token (as if they all expired).
    pub fn expire_tokens(&self) {
        self.state.lock().unwrap().tokens.clear();
    }

    pub fn fail_first(&self, n: usize) {
        self.state.lock().unwrap().fail_first = n;
    }

    pub fn count(&self, c: &AtomicUsize) -> usize {
        c.load(Ordering::SeqCst)
    }
}

impl Drop for ImdsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn respond(stream: &mut TcpStream, status: u16, headers: &[(&str, String)], body: &[u8]) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nConnection: close\r\nServer: EC2ws\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

fn serve(mut stream: TcpStream, state: &Mutex<State>, counters: &Counters) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    let (method, path, token, ttl) = loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(_) = req.parse(&buf).map_err(std::io::Error::other)? {
            let find = |name: &str| {
                req.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned())
            };
            break (
                req.method.unwrap_or("").to_string(),
                req.path.unwrap_or("").to_string(),
                find("X-aws-ec2-metadata-token"),
                find("X-aws-ec2-metadata-token-ttl-seconds"),
            );
        }
    };
    let mut st = state.lock().unwrap();
    if st.fail_first > 0 {
        st.fail_first -= 1;
        counters.server_errors.fetch_add(1, Ordering::SeqCst);
        respond(&mut stream, 503, &[], b"");
        return Ok(());
    }
    if st.mode == TokenMode::Disabled {
        counters.forbidden.fetch_add(1, Ordering::SeqCst);
        respond(&mut stream, 403, &[], b"Forbidden");
        return Ok(());
    }
    if path == "/latest/api/token" {
        if method != "PUT" {
            respond(&mut stream, 405, &[], b"");
            return Ok(());
        }
        counters.puts.fetch_add(1, Ordering::SeqCst);
        if let TokenMode::V2Refused(status) = st.mode {
            respond(&mut stream, status, &[], b"");
            return Ok(());
        }
        let ttl = match ttl.and_then(|t| t.trim().parse::<u64>().ok()) {
            Some(t) if (1..=21600).contains(&t) => t,
            _ => {
                respond(&mut stream, 400, &[], b"Bad Request");
                return Ok(());
            }
        };
        let token = format!("token-{}-AQAAAexample==", st.next_token);
        st.next_token += 1;
        st.tokens
            .push((token.clone(), Instant::now() + Duration::from_secs(ttl)));
        respond(
            &mut stream,
            200,
            &[("X-aws-ec2-metadata-token-ttl-seconds", ttl.to_string())],
            token.as_bytes(),
        );
        return Ok(());
    }
    if method != "GET" && method != "HEAD" {
        respond(&mut stream, 405, &[], b"");
        return Ok(());
    }
    counters.gets.fetch_add(1, Ordering::SeqCst);
    let now = Instant::now();
    st.tokens.retain(|(_, exp)| *exp > now);
    match &token {
        Some(t) => {
            counters.gets_with_token.fetch_add(1, Ordering::SeqCst);
            if !st.tokens.iter().any(|(v, _)| v == t) {
                counters.unauthorized.fetch_add(1, Ordering::SeqCst);
                respond(&mut stream, 401, &[], b"");
                return Ok(());
            }
        }
        None if st.mode == TokenMode::Required => {
            counters.unauthorized.fetch_add(1, Ordering::SeqCst);
            respond(&mut stream, 401, &[], b"");
            return Ok(());
        }
        None => {}
    }
    if path == "/latest/user-data" || path == "/latest/user-data/" {
        match &st.user_data {
            Some(u) if !u.is_empty() => {
                let u = u.clone();
                respond(&mut stream, 200, &[], &u)
            }
            _ => respond(&mut stream, 404, &[], b"Not Found"),
        }
        return Ok(());
    }
    let Some(rel) = path.strip_prefix("/latest/meta-data/") else {
        respond(&mut stream, 404, &[], b"Not Found");
        return Ok(());
    };
    if let Some(v) = st.meta.get(rel) {
        let v = v.clone();
        respond(&mut stream, 200, &[], v.as_bytes());
        return Ok(());
    }
    // A directory listing: the next path segment of every key under `rel`.
    let dir = rel;
    let mut entries: Vec<String> = st
        .meta
        .keys()
        .filter_map(|k| k.strip_prefix(dir))
        .map(|rest| match rest.split_once('/') {
            Some((first, _)) => format!("{first}/"),
            None => rest.to_string(),
        })
        .collect();
    entries.dedup();
    if entries.is_empty() || (!dir.is_empty() && !dir.ends_with('/')) {
        respond(&mut stream, 404, &[], b"Not Found");
        return Ok(());
    }
    // EC2 lists public keys as `0=key-name`.
    if dir == "public-keys/" {
        entries = entries
            .iter()
            .map(|e| format!("{}=test-key", e.trim_end_matches('/')))
            .collect();
    }
    respond(&mut stream, 200, &[], entries.join("\n").as_bytes());
    Ok(())
}
