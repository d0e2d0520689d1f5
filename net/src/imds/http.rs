//! A bounded, incremental HTTP/1.x request parser and the response writer for the metadata
//! service.
//!
//! The parser looks only at the request head (request line and headers): the metadata service
//! answers every request with `Connection: close`, as EC2's does, so a body (a token PUT may carry
//! `Content-Length: 0`) is never needed and whatever follows the head is discarded. The head's
//! size is bounded by the caller; anything malformed is an [`HttpParseError`], which the service
//! answers with 400 and a close.

use std::time::{SystemTime, UNIX_EPOCH};

use super::handler::{MetadataRequest, MetadataResponse};

/// Most header fields a request may carry; clients of the metadata service send a handful.
pub const MAX_HEADERS: usize = 32;

/// Why a request head could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpParseError {
    /// The head grew past the size limit before it was complete.
    #[error("request head is larger than {limit} bytes")]
    TooLarge {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// More header fields than [`MAX_HEADERS`].
    #[error("request has more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    /// The bytes are not an HTTP/1.x request head.
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    /// The request target is not an origin-form path (`/latest/...`).
    #[error("request target must be a path starting with '/'")]
    BadTarget,
}

/// Outcome of feeding the bytes received so far to [`parse_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseStatus {
    /// The head is not complete yet: wait for more bytes.
    Incomplete,
    /// A complete request head, and how many bytes of the input it took.
    Complete {
        /// The parsed request.
        request: MetadataRequest,
        /// Length of the head in bytes (the end of the blank line).
        head_len: usize,
    },
}

/// Parses the request head at the start of `buf`, everything received on the connection so far.
///
/// `max_head_bytes` bounds the head: once `buf` is that long without a complete head (or the
/// head is longer), the result is [`HttpParseError::TooLarge`]. Never panics, whatever the input.
pub fn parse_request(buf: &[u8], max_head_bytes: usize) -> Result<ParseStatus, HttpParseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let window = &buf[..buf.len().min(max_head_bytes)];
    match parsed.parse(window) {
        Ok(httparse::Status::Partial) => {
            if buf.len() >= max_head_bytes {
                Err(HttpParseError::TooLarge {
                    limit: max_head_bytes,
                })
            } else {
                Ok(ParseStatus::Incomplete)
            }
        }
        Ok(httparse::Status::Complete(head_len)) => {
            let method = parsed.method.unwrap_or_default().to_owned();
            let target = parsed.path.unwrap_or_default();
            if !target.starts_with('/') {
                return Err(HttpParseError::BadTarget);
            }
            let headers = parsed
                .headers
                .iter()
                .map(|h| (h.name.to_owned(), h.value.to_vec()))
                .collect();
            Ok(ParseStatus::Complete {
                request: MetadataRequest {
                    method,
                    target: target.to_owned(),
                    headers,
                },
                head_len,
            })
        }
        Err(httparse::Error::TooManyHeaders) => Err(HttpParseError::TooManyHeaders),
        Err(e) => Err(HttpParseError::Malformed(e.to_string())),
    }
}

/// The reason phrase EC2's metadata service sends with `status`.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        500 => "Internal Server Error",
        _ => "Unknown",
    }
}

/// Serializes `response` as EC2's metadata service writes it: HTTP/1.1, `Server: EC2ws`,
/// `Connection: close`, `Date` from `date`, and `Content-Length`. For a HEAD request
/// (`head_only`) the body is left out but `Content-Length` still gives its size.
pub fn write_response(response: &MetadataResponse, date: SystemTime, head_only: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + response.body.len());
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\n",
            response.status,
            reason_phrase(response.status)
        )
        .as_bytes(),
    );
    for (name, value) in &response.headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(format!("Content-Type: {}\r\n", response.content_type).as_bytes());
    out.extend_from_slice(format!("Content-Length: {}\r\n", response.body.len()).as_bytes());
    out.extend_from_slice(format!("Date: {}\r\n", http_date(date)).as_bytes());
    out.extend_from_slice(b"Server: EC2ws\r\nConnection: close\r\n\r\n");
    if !head_only {
        out.extend_from_slice(&response.body);
    }
    out
}

/// `time` as an IMF-fixdate (`Tue, 15 Nov 1994 08:12:31 GMT`), the format of HTTP's `Date` and
/// `Last-Modified`.
pub fn http_date(time: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let civil = CivilTime::from(time);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[(civil.days_since_epoch.rem_euclid(7)) as usize],
        civil.day,
        MONTHS[(civil.month - 1) as usize],
        civil.year,
        civil.hour,
        civil.minute,
        civil.second
    )
}

/// `time` as ISO 8601 UTC with second precision (`2024-01-31T12:00:00Z`), as the identity
/// document writes `pendingTime`.
pub fn iso8601(time: SystemTime) -> String {
    let civil = CivilTime::from(time);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        civil.year, civil.month, civil.day, civil.hour, civil.minute, civil.second
    )
}

/// A UTC calendar time, second precision (times before 1970 clamp to the epoch).
struct CivilTime {
    days_since_epoch: i64,
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl From<SystemTime> for CivilTime {
    fn from(time: SystemTime) -> Self {
        let secs = time
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            .min(i64::MAX as u64 / 2) as i64;
        let days = secs.div_euclid(86_400);
        let in_day = secs.rem_euclid(86_400);
        // Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Self {
            days_since_epoch: days,
            year,
            month,
            day,
            hour: (in_day / 3_600) as u32,
            minute: (in_day % 3_600 / 60) as u32,
            second: (in_day % 60) as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn complete(buf: &[u8]) -> (MetadataRequest, usize) {
        match parse_request(buf, 8192) {
            Ok(ParseStatus::Complete { request, head_len }) => (request, head_len),
            other => panic!("expected a complete request, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_curl_request() {
        let raw = b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n";
        let (request, head_len) = complete(raw);
        assert_eq!(head_len, raw.len());
        assert_eq!(request.method, "GET");
        assert_eq!(request.target, "/latest/meta-data/");
        assert_eq!(request.header("host"), Some(&b"169.254.169.254"[..]));
        assert_eq!(request.header("USER-AGENT"), Some(&b"curl/7.88.1"[..]));
    }

    #[test]
    fn head_length_excludes_a_body() {
        let raw = b"PUT /latest/api/token HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        let (request, head_len) = complete(raw);
        assert_eq!(request.method, "PUT");
        assert_eq!(head_len, raw.len() - 3);
    }

    #[test]
    fn incomplete_until_the_blank_line() {
        let raw = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        for cut in 0..raw.len() {
            assert_eq!(
                parse_request(&raw[..cut], 8192),
                Ok(ParseStatus::Incomplete),
                "cut at {cut}"
            );
        }
        complete(raw);
    }

    #[test]
    fn rejects_heads_over_the_limit() {
        let mut raw = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        raw.extend(std::iter::repeat_n(b'a', 200));
        assert_eq!(
            parse_request(&raw, 100),
            Err(HttpParseError::TooLarge { limit: 100 })
        );
        // Complete, but longer than the limit: still too large.
        raw.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            parse_request(&raw, 100),
            Err(HttpParseError::TooLarge { limit: 100 })
        );
    }

    #[test]
    fn rejects_garbage_and_absolute_targets() {
        assert!(matches!(
            parse_request(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 8192),
            Err(HttpParseError::Malformed(_))
        ));
        assert!(matches!(
            parse_request(b"GET / HTTP/2.0\r\n\r\n", 8192),
            Err(HttpParseError::Malformed(_))
        ));
        assert_eq!(
            parse_request(b"GET http://169.254.169.254/ HTTP/1.1\r\n\r\n", 8192),
            Err(HttpParseError::BadTarget)
        );
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..40 {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            parse_request(&many, 8192),
            Err(HttpParseError::TooManyHeaders)
        );
    }

    #[test]
    fn writes_responses_like_ec2() {
        let response = MetadataResponse {
            status: 200,
            headers: vec![(
                "X-Aws-Ec2-Metadata-Token-Ttl-Seconds".to_owned(),
                "21600".to_owned(),
            )],
            content_type: "text/plain",
            body: b"i-0123456789abcdef0".to_vec(),
            hop_limit: None,
        };
        let date = UNIX_EPOCH + Duration::from_secs(784_887_151);
        let text = String::from_utf8(write_response(&response, date, false)).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\n\
             X-Aws-Ec2-Metadata-Token-Ttl-Seconds: 21600\r\n\
             Content-Type: text/plain\r\n\
             Content-Length: 19\r\n\
             Date: Tue, 15 Nov 1994 08:12:31 GMT\r\n\
             Server: EC2ws\r\n\
             Connection: close\r\n\r\n\
             i-0123456789abcdef0"
        );
        let head = String::from_utf8(write_response(&response, date, true)).unwrap();
        assert!(head.ends_with("Connection: close\r\n\r\n"));
        assert!(head.contains("Content-Length: 19\r\n"));
    }

    #[test]
    fn formats_dates() {
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        let leap_day = UNIX_EPOCH + Duration::from_secs(1_709_210_096);
        assert_eq!(http_date(leap_day), "Thu, 29 Feb 2024 12:34:56 GMT");
        assert_eq!(iso8601(leap_day), "2024-02-29T12:34:56Z");
        assert_eq!(
            iso8601(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00Z"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Arbitrary bytes never panic, and a complete head is never longer than the input or
        /// the limit.
        #[test]
        fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..2048),
                                       limit in 1usize..4096) {
            match parse_request(&buf, limit) {
                Ok(ParseStatus::Complete { head_len, request }) => {
                    prop_assert!(head_len <= buf.len());
                    prop_assert!(head_len <= limit);
                    prop_assert!(request.target.starts_with('/'));
                }
                Ok(ParseStatus::Incomplete) => prop_assert!(buf.len() < limit),
                Err(_) => {}
            }
        }

        /// Well-formed requests (with arbitrary paths and header values) parse back to what was
        /// written, however the bytes are split into arrivals.
        #[test]
        fn wellformed_requests_roundtrip(
            method in "(GET|PUT|HEAD|POST|DELETE)",
            path in "/[A-Za-z0-9/_.=-]{0,60}",
            headers in proptest::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,20}", "[ -~]{0,40}"), 0..10),
            cut in 0usize..400,
        ) {
            let mut raw = format!("{method} {path} HTTP/1.1\r\n").into_bytes();
            for (name, value) in &headers {
                raw.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
            }
            raw.extend_from_slice(b"\r\n");
            let cut = cut.min(raw.len() - 1);
            prop_assert_eq!(parse_request(&raw[..cut], 8192), Ok(ParseStatus::Incomplete));
            let (request, head_len) = complete(&raw);
            prop_assert_eq!(head_len, raw.len());
            prop_assert_eq!(&request.method, &method);
            prop_assert_eq!(&request.target, &path);
            prop_assert_eq!(request.headers.len(), headers.len());
            for ((name, value), (got_name, got_value)) in headers.iter().zip(&request.headers) {
                prop_assert_eq!(name, got_name);
                prop_assert_eq!(value.trim().as_bytes(), got_value.trim_ascii());
            }
        }

        /// Mutating a valid request (flipping, inserting or deleting bytes) never panics.
        #[test]
        fn mutated_requests_never_panic(
            edits in proptest::collection::vec((0usize..200, any::<u8>(), 0u8..3), 1..20)
        ) {
            let mut raw = b"PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n".to_vec();
            for (at, byte, kind) in edits {
                let at = at % (raw.len() + 1);
                match kind {
                    0 if at < raw.len() => raw[at] = byte,
                    1 => raw.insert(at, byte),
                    _ if at < raw.len() => { raw.remove(at); }
                    _ => {}
                }
            }
            let _ = parse_request(&raw, 8192);
        }
    }
}
