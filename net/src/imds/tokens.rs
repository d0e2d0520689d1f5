//! IMDSv2 session tokens: issued by `PUT /latest/api/token`, bound to the port's instance,
//! expiring after the TTL the client asked for (1 to 21600 seconds).
//!
//! A [`TokenStore`] belongs to one port, so a token never works on another port even if two
//! instances' addresses are the same; each token also records the instance id it was issued for,
//! so a port reused for a new instance does not honour the old instance's tokens. Memory is
//! bounded: at most `capacity` live tokens; issuing one more forgets the one expiring soonest.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Bytes of randomness in a token (rendered as hex, so tokens are twice this long).
const TOKEN_BYTES: usize = 32;

/// What a token presented with a request turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCheck {
    /// Valid for this instance for `remaining_secs` more seconds (rounded up).
    Valid {
        /// Whole seconds until the token expires, at least 1.
        remaining_secs: u64,
    },
    /// Unknown, expired, or issued for another instance.
    Invalid,
}

#[derive(Debug, Clone)]
struct IssuedToken {
    instance_id: String,
    expires_at: Instant,
}

/// The live tokens of one port.
#[derive(Debug)]
pub struct TokenStore {
    tokens: HashMap<String, IssuedToken>,
    capacity: usize,
}

impl TokenStore {
    /// An empty store holding at most `capacity` (at least 1) live tokens.
    pub fn new(capacity: usize) -> Self {
        Self {
            tokens: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Issues a token for `instance_id` valid for `ttl` from `now`.
    pub fn issue(&mut self, instance_id: &str, ttl: Duration, now: Instant) -> String {
        self.tokens.retain(|_, token| token.expires_at > now);
        while self.tokens.len() >= self.capacity {
            let soonest = self
                .tokens
                .iter()
                .min_by_key(|(_, token)| token.expires_at)
                .map(|(value, _)| value.clone());
            match soonest {
                Some(value) => self.tokens.remove(&value),
                None => break,
            };
        }
        let value = random_token();
        self.tokens.insert(
            value.clone(),
            IssuedToken {
                instance_id: instance_id.to_owned(),
                expires_at: now + ttl,
            },
        );
        value
    }

    /// Checks `presented` (the `X-aws-ec2-metadata-token` header's value) for `instance_id` at
    /// `now`. Expired tokens are forgotten as they are found.
    pub fn check(&mut self, presented: &[u8], instance_id: &str, now: Instant) -> TokenCheck {
        let Ok(presented) = std::str::from_utf8(presented) else {
            return TokenCheck::Invalid;
        };
        let Some(token) = self.tokens.get(presented.trim()) else {
            return TokenCheck::Invalid;
        };
        if token.expires_at <= now {
            self.tokens.remove(presented.trim());
            return TokenCheck::Invalid;
        }
        if token.instance_id != instance_id {
            return TokenCheck::Invalid;
        }
        let remaining = token.expires_at - now;
        let remaining_secs = remaining.as_secs() + u64::from(remaining.subsec_nanos() > 0);
        TokenCheck::Valid { remaining_secs }
    }

    /// Forgets every token not issued for `instance_id` (the port now serves another instance).
    pub fn retain_instance(&mut self, instance_id: &str) {
        self.tokens
            .retain(|_, token| token.instance_id == instance_id);
    }

    /// Number of tokens held (live or not yet found expired).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether no tokens are held.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// A fresh unguessable token: 32 bytes from the kernel's CSPRNG, as hex.
fn random_token() -> String {
    let bytes: [u8; TOKEN_BYTES] = random_bytes();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `N` bytes from the kernel's CSPRNG (`getrandom(2)`); falls back to hashing the time and a
/// counter with a randomly keyed hasher only if the syscall fails (it cannot, after boot, on the
/// kernels kumo supports).
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    let mut filled = 0;
    while filled < N {
        // SAFETY: the pointer and length describe the unfilled tail of `out`, a live, writable
        // buffer; getrandom writes at most that many bytes and returns how many it wrote.
        let got = unsafe {
            libc::getrandom(
                out[filled..].as_mut_ptr().cast::<libc::c_void>(),
                N - filled,
                0,
            )
        };
        if got > 0 {
            filled += got as usize;
        } else if got < 0
            && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
        {
            continue;
        } else {
            break;
        }
    }
    if filled < N {
        use std::hash::{BuildHasher, Hasher};
        let state = std::collections::hash_map::RandomState::new();
        for (i, chunk) in out.chunks_mut(8).enumerate() {
            let mut hasher = state.build_hasher();
            hasher.write_usize(i);
            hasher.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0),
            );
            let word = hasher.finish().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_expire_exactly_at_their_ttl() {
        let t0 = Instant::now();
        let mut store = TokenStore::new(16);
        let token = store.issue("i-0123456789abcdef0", Duration::from_secs(10), t0);
        assert_eq!(token.len(), 64);
        assert_eq!(
            store.check(token.as_bytes(), "i-0123456789abcdef0", t0),
            TokenCheck::Valid { remaining_secs: 10 }
        );
        assert_eq!(
            store.check(
                token.as_bytes(),
                "i-0123456789abcdef0",
                t0 + Duration::from_millis(9_500)
            ),
            TokenCheck::Valid { remaining_secs: 1 }
        );
        assert_eq!(
            store.check(
                token.as_bytes(),
                "i-0123456789abcdef0",
                t0 + Duration::from_secs(10)
            ),
            TokenCheck::Invalid
        );
        assert!(store.is_empty(), "an expired token is forgotten");
    }

    #[test]
    fn tokens_are_bound_to_the_instance() {
        let t0 = Instant::now();
        let mut store = TokenStore::new(16);
        let token = store.issue("i-aaaaaaaaaaaaaaaaa", Duration::from_secs(60), t0);
        assert_eq!(
            store.check(token.as_bytes(), "i-bbbbbbbbbbbbbbbbb", t0),
            TokenCheck::Invalid
        );
        store.retain_instance("i-bbbbbbbbbbbbbbbbb");
        assert!(store.is_empty());
    }

    #[test]
    fn garbage_tokens_are_invalid() {
        let t0 = Instant::now();
        let mut store = TokenStore::new(16);
        let token = store.issue("i-a", Duration::from_secs(60), t0);
        assert_eq!(store.check(b"", "i-a", t0), TokenCheck::Invalid);
        assert_eq!(store.check(b"\xff\xfe", "i-a", t0), TokenCheck::Invalid);
        assert_eq!(
            store.check(&token.as_bytes()[1..], "i-a", t0),
            TokenCheck::Invalid
        );
        assert_ne!(token, store.issue("i-a", Duration::from_secs(60), t0));
    }

    #[test]
    fn capacity_evicts_the_token_expiring_soonest() {
        let t0 = Instant::now();
        let mut store = TokenStore::new(3);
        let short = store.issue("i-a", Duration::from_secs(5), t0);
        let long: Vec<String> = (0..3)
            .map(|i| store.issue("i-a", Duration::from_secs(100 + i), t0))
            .collect();
        assert_eq!(store.len(), 3);
        assert_eq!(
            store.check(short.as_bytes(), "i-a", t0),
            TokenCheck::Invalid
        );
        for token in &long {
            assert!(matches!(
                store.check(token.as_bytes(), "i-a", t0),
                TokenCheck::Valid { .. }
            ));
        }
    }
}
