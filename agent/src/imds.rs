//! Client of the EC2 instance metadata service (IMDS).
//!
//! IMDSv2 first: `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds`, then every
//! GET carries `X-aws-ec2-metadata-token`. The token is renewed before it expires and again when
//! the service answers 401 (expired or unknown token). IMDSv1 (plain GETs) is used only when the
//! service refuses the token request (403, 404 or 405: v2 switched off or not implemented).
//!
//! [`ImdsClient::connect`] waits for the service with exponential backoff, because at boot the
//! network may still be coming up, but only for a bounded total time: when the service never
//! answers it returns [`ImdsError::NeverAnswered`] and the agent boots on without metadata.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::http::{self, HttpError, Request};

/// The address of the metadata service on EC2.
pub const DEFAULT_ENDPOINT: &str = "169.254.169.254:80";
/// The header that carries the token.
pub const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
/// The header that asks for a token lifetime.
pub const TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error(
        "the instance metadata service at {endpoint} did not answer within {waited:?} (last error: {last})"
    )]
    NeverAnswered {
        endpoint: SocketAddr,
        waited: Duration,
        last: String,
    },
    #[error(
        "the instance metadata service at {endpoint} refuses access (HTTP {status}): it is probably disabled for this instance"
    )]
    Disabled { endpoint: SocketAddr, status: u16 },
    #[error("GET {path}: unexpected HTTP {status}")]
    Status { path: String, status: u16 },
    #[error("GET {path}: {source}")]
    Http {
        path: String,
        #[source]
        source: HttpError,
    },
    #[error("GET {path}: answer is not UTF-8")]
    NotText { path: String },
}

/// Which protocol the client settled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImdsVersion {
    V1,
    V2,
}

impl ImdsVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            ImdsVersion::V1 => "v1",
            ImdsVersion::V2 => "v2",
        }
    }
}

/// Timing of the client.
#[derive(Debug, Clone)]
pub struct ImdsConfig {
    pub endpoint: SocketAddr,
    /// How long [`ImdsClient::connect`] keeps trying before giving up.
    pub total_wait: Duration,
    /// Limit for one HTTP exchange.
    pub request_timeout: Duration,
    /// Token lifetime asked for, in seconds (1..=21600 on EC2).
    pub token_ttl_secs: u32,
    /// First retry delay; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for ImdsConfig {
    fn default() -> Self {
        Self {
            endpoint: DEFAULT_ENDPOINT.parse().expect("valid constant"),
            total_wait: Duration::from_secs(60),
            request_timeout: Duration::from_secs(2),
            token_ttl_secs: 21600,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    value: String,
    /// When to ask for a new one (a little before the service forgets it).
    renew_at: Instant,
}

/// A connected metadata client.
#[derive(Debug)]
pub struct ImdsClient {
    config: ImdsConfig,
    version: ImdsVersion,
    token: Option<Token>,
}

/// What the agent needs from the metadata tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceInfo {
    pub instance_id: Option<String>,
    pub local_ipv4: Option<String>,
    pub local_hostname: Option<String>,
    /// OpenSSH public keys from `public-keys/N/openssh-key`.
    pub public_keys: Vec<String>,
}

enum TokenAnswer {
    Token(Token),
    Refused(u16),
    Retry(String),
}

impl ImdsClient {
    /// Waits for the metadata service and settles on v2 (or v1 if v2 is refused).
    /// `on_retry` is called with the error of each failed attempt (for progress messages).
    pub fn connect(
        config: ImdsConfig,
        mut on_retry: impl FnMut(u32, &str),
    ) -> Result<Self, ImdsError> {
        let start = Instant::now();
        let mut backoff = config.initial_backoff;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let last = match Self::try_connect(&config) {
                Ok(client) => return Ok(client),
                Err(ConnectError::Fatal(e)) => return Err(e),
                Err(ConnectError::Retry(reason)) => reason,
            };
            let waited = start.elapsed();
            if waited + backoff > config.total_wait {
                return Err(ImdsError::NeverAnswered {
                    endpoint: config.endpoint,
                    waited,
                    last,
                });
            }
            on_retry(attempt, &last);
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(config.max_backoff);
        }
    }

    fn try_connect(config: &ImdsConfig) -> Result<Self, ConnectError> {
        let mut client = ImdsClient {
            config: config.clone(),
            version: ImdsVersion::V2,
            token: None,
        };
        match client.request_token() {
            TokenAnswer::Token(t) => client.token = Some(t),
            TokenAnswer::Retry(reason) => return Err(ConnectError::Retry(reason)),
            TokenAnswer::Refused(status) => {
                tracing::info!("IMDSv2 token request refused (HTTP {status}); using IMDSv1");
                client.version = ImdsVersion::V1;
            }
        }
        // Probe the tree with the chosen protocol.
        let probe = client.raw_get("/latest/meta-data/");
        match probe {
            Ok(r) if r.status == 200 => Ok(client),
            Ok(r) if r.status == 403 => Err(ConnectError::Fatal(ImdsError::Disabled {
                endpoint: config.endpoint,
                status: 403,
            })),
            Ok(r) if r.status == 401 => Err(ConnectError::Retry(
                "the service refused the token request but requires a token (HTTP 401)".into(),
            )),
            Ok(r) => Err(ConnectError::Retry(format!(
                "GET /latest/meta-data/: HTTP {}",
                r.status
            ))),
            Err(e) => Err(ConnectError::Retry(e.to_string())),
        }
    }

    fn request_token(&self) -> TokenAnswer {
        let req = Request::new("PUT", "/latest/api/token")
            .header(TTL_HEADER, self.config.token_ttl_secs.to_string())
            .timeout(self.config.request_timeout);
        match http::send(self.config.endpoint, &req) {
            Ok(r) if r.status == 200 => match String::from_utf8(r.body) {
                Ok(value) if !value.trim().is_empty() => {
                    let ttl = r
                        .headers
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(TTL_HEADER))
                        .and_then(|(_, v)| v.trim().parse::<u64>().ok())
                        .unwrap_or(u64::from(self.config.token_ttl_secs));
                    // Renew when 90% of the lifetime has passed.
                    let renew_in = Duration::from_millis(ttl.saturating_mul(900));
                    TokenAnswer::Token(Token {
                        value: value.trim().to_string(),
                        renew_at: Instant::now() + renew_in,
                    })
                }
                _ => TokenAnswer::Retry("token request answered with an empty token".into()),
            },
            Ok(r) if (403..=405).contains(&r.status) => TokenAnswer::Refused(r.status),
            Ok(r) => TokenAnswer::Retry(format!("PUT /latest/api/token: HTTP {}", r.status)),
            Err(e) => TokenAnswer::Retry(e.to_string()),
        }
    }

    pub fn version(&self) -> ImdsVersion {
        self.version
    }

    pub fn endpoint(&self) -> SocketAddr {
        self.config.endpoint
    }

    fn raw_get(&self, path: &str) -> Result<http::Response, HttpError> {
        let mut req = Request::new("GET", path).timeout(self.config.request_timeout);
        if let Some(token) = &self.token {
            req = req.header(TOKEN_HEADER, token.value.clone());
        }
        http::send(self.config.endpoint, &req)
    }

    fn ensure_token(&mut self) {
        if self.version != ImdsVersion::V2 {
            return;
        }
        let expired = self
            .token
            .as_ref()
            .is_none_or(|t| Instant::now() >= t.renew_at);
        if expired && let TokenAnswer::Token(t) = self.request_token() {
            self.token = Some(t);
        }
    }

    /// GETs a metadata path: `Ok(None)` when it does not exist (404).
    pub fn get(&mut self, path: &str) -> Result<Option<Vec<u8>>, ImdsError> {
        let mut token_retried = false;
        let mut transient = 0;
        loop {
            self.ensure_token();
            match self.raw_get(path) {
                Ok(r) if r.status == 200 => return Ok(Some(r.body)),
                Ok(r) if r.status == 404 => return Ok(None),
                Ok(r) if r.status == 401 && !token_retried => {
                    // Expired or unknown token, or v1 was switched off: get a (new) token.
                    token_retried = true;
                    match self.request_token() {
                        TokenAnswer::Token(t) => {
                            self.version = ImdsVersion::V2;
                            self.token = Some(t);
                        }
                        _ => {
                            return Err(ImdsError::Status {
                                path: path.into(),
                                status: 401,
                            });
                        }
                    }
                }
                Ok(r) if r.status >= 500 && transient < 3 => {
                    transient += 1;
                    std::thread::sleep(self.config.initial_backoff * transient);
                }
                Ok(r) => {
                    return Err(ImdsError::Status {
                        path: path.into(),
                        status: r.status,
                    });
                }
                Err(e) if transient < 3 => {
                    transient += 1;
                    tracing::debug!("GET {path}: {e}; retrying");
                    std::thread::sleep(self.config.initial_backoff * transient);
                }
                Err(source) => {
                    return Err(ImdsError::Http {
                        path: path.into(),
                        source,
                    });
                }
            }
        }
    }

    /// GETs a metadata path as trimmed text.
    pub fn get_text(&mut self, path: &str) -> Result<Option<String>, ImdsError> {
        match self.get(path)? {
            None => Ok(None),
            Some(body) => String::from_utf8(body)
                .map(|s| Some(s.trim().to_string()))
                .map_err(|_| ImdsError::NotText { path: path.into() }),
        }
    }

    /// The raw user-data, or `None` when the instance has none (404).
    pub fn user_data(&mut self) -> Result<Option<Vec<u8>>, ImdsError> {
        self.get("/latest/user-data")
    }

    /// Instance identity, addresses and public keys.
    pub fn instance_info(&mut self) -> Result<InstanceInfo, ImdsError> {
        let mut info = InstanceInfo {
            instance_id: self.get_text("/latest/meta-data/instance-id")?,
            local_ipv4: self.get_text("/latest/meta-data/local-ipv4")?,
            local_hostname: self.get_text("/latest/meta-data/local-hostname")?,
            public_keys: Vec::new(),
        };
        if let Some(listing) = self.get_text("/latest/meta-data/public-keys/")? {
            for index in parse_public_key_listing(&listing) {
                let path = format!("/latest/meta-data/public-keys/{index}/openssh-key");
                if let Some(key) = self.get_text(&path)?
                    && !key.is_empty()
                {
                    info.public_keys.push(key);
                }
            }
        }
        Ok(info)
    }
}

enum ConnectError {
    Retry(String),
    Fatal(ImdsError),
}

/// Parses the `public-keys/` listing (`0=my-key` per line) into the key indexes.
pub fn parse_public_key_listing(listing: &str) -> Vec<u32> {
    listing
        .lines()
        .filter_map(|line| {
            let index = line.split('=').next()?.trim().trim_end_matches('/');
            index.parse::<u32>().ok()
        })
        .collect()
}

/// The EC2-style short hostname: the first label of `local-hostname`, or `ip-a-b-c-d` made from
/// `local-ipv4`.
pub fn ec2_hostname(local_hostname: Option<&str>, local_ipv4: Option<&str>) -> Option<String> {
    if let Some(h) = local_hostname {
        let first = h.split('.').next().unwrap_or("").trim();
        if is_valid_hostname(first) {
            return Some(first.to_string());
        }
    }
    let ip: std::net::Ipv4Addr = local_ipv4?.trim().parse().ok()?;
    let [a, b, c, d] = ip.octets();
    Some(format!("ip-{a}-{b}-{c}-{d}"))
}

/// A single DNS label usable as a hostname (letters, digits, hyphens; 1..=63 characters).
pub fn is_valid_hostname(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        assert_eq!(
            ec2_hostname(Some("ip-10-0-1-5.ec2.internal"), None).as_deref(),
            Some("ip-10-0-1-5")
        );
        assert_eq!(
            ec2_hostname(None, Some("10.0.1.5")).as_deref(),
            Some("ip-10-0-1-5")
        );
        assert_eq!(
            ec2_hostname(Some("bad name!"), Some("10.0.1.6")).as_deref(),
            Some("ip-10-0-1-6")
        );
        assert_eq!(ec2_hostname(None, Some("nope")), None);
    }

    #[test]
    fn key_listing() {
        assert_eq!(parse_public_key_listing("0=a\n1=b\n"), vec![0, 1]);
        assert_eq!(parse_public_key_listing("junk\n2=c"), vec![2]);
    }
}
