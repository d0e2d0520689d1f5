//! Decoding user-data into parts, the way cloud-init does.
//!
//! Order of work: the EC2 size limit on the raw bytes (16 KiB), gzip decompression (with a cap on
//! the decompressed size), then either a MIME multi-part message (`MIME-Version:` or
//! `Content-Type:` at the top; nested multiparts are flattened, base64 and quoted-printable
//! transfer encodings are decoded, gzip parts are decompressed) or a single part. A part's kind
//! comes from its MIME type (`text/x-shellscript`, `text/cloud-config`, `text/cloud-boothook`),
//! or, for `text/plain`, `text/x-not-multipart`, `application/octet-stream` and single parts,
//! from how it starts: `#!` (script), `#cloud-config`, `#cloud-boothook`. Anything else
//! (`#include`, `#cloud-config-archive`, part handlers, jinja templates, binary data) is kept as
//! an [`PartKind::Unsupported`] part with the reason, so the agent can report it.

use std::io::Read;

/// EC2 rejects user-data larger than this (raw, before base64 encoding).
pub const EC2_USER_DATA_LIMIT: usize = 16 * 1024;
/// Largest user-data accepted after gzip decompression (guards against gzip bombs).
pub const MAX_DECOMPRESSED: usize = 4 * 1024 * 1024;
/// Deepest nesting of gzip inside MIME inside gzip ... followed.
const MAX_NESTING: usize = 4;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserDataError {
    #[error(
        "user-data is {size} bytes, more than the {limit} bytes (16 KiB) EC2 accepts; compress it with gzip or have a short script download the rest"
    )]
    TooLarge { size: usize, limit: usize },
    #[error("user-data looks gzip-compressed but cannot be decompressed: {0}")]
    Gzip(String),
    #[error("user-data decompresses to more than {limit} bytes")]
    DecompressedTooLarge { limit: usize },
    #[error("user-data is not a valid MIME multi-part message: {0}")]
    Mime(String),
}

/// What a part is, and so what the agent does with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartKind {
    /// A `#!` script, run once per instance.
    Script,
    /// `#cloud-config` YAML.
    CloudConfig,
    /// `#cloud-boothook`: a shell script run early on every boot.
    Boothook,
    /// Not handled; the string says why.
    Unsupported(String),
}

impl PartKind {
    pub fn label(&self) -> &'static str {
        match self {
            PartKind::Script => "script",
            PartKind::CloudConfig => "cloud-config",
            PartKind::Boothook => "boothook",
            PartKind::Unsupported(_) => "unsupported",
        }
    }
}

/// One part of the user-data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The MIME filename, or `part-NNN`.
    pub name: String,
    pub kind: PartKind,
    pub content: Vec<u8>,
}

impl Part {
    /// Where the content stops being valid UTF-8, if it does.
    pub fn utf8_error(&self) -> Option<usize> {
        std::str::from_utf8(&self.content)
            .err()
            .map(|e| e.valid_up_to())
    }
}

/// Decodes raw user-data (as served at `/latest/user-data`) into its parts.
/// Empty user-data has no parts.
pub fn decode(raw: &[u8]) -> Result<Vec<Part>, UserDataError> {
    if raw.len() > EC2_USER_DATA_LIMIT {
        return Err(UserDataError::TooLarge {
            size: raw.len(),
            limit: EC2_USER_DATA_LIMIT,
        });
    }
    let mut parts = Vec::new();
    decode_into(raw, None, 0, &mut parts)?;
    Ok(parts)
}

fn is_gzip(data: &[u8]) -> bool {
    data.starts_with(&[0x1f, 0x8b])
}

/// Decompresses gzip data with a size cap.
pub fn gunzip(data: &[u8]) -> Result<Vec<u8>, UserDataError> {
    let mut out = Vec::new();
    let decoder = flate2::read::MultiGzDecoder::new(data);
    let mut limited = decoder.take(MAX_DECOMPRESSED as u64 + 1);
    limited
        .read_to_end(&mut out)
        .map_err(|e| UserDataError::Gzip(e.to_string()))?;
    if out.len() > MAX_DECOMPRESSED {
        return Err(UserDataError::DecompressedTooLarge {
            limit: MAX_DECOMPRESSED,
        });
    }
    Ok(out)
}

fn looks_like_mime(data: &[u8]) -> bool {
    let head = data[..data.len().min(4096)].to_ascii_lowercase();
    let starts_with_header =
        head.starts_with(b"content-type:") || head.starts_with(b"mime-version:");
    // A header block (e.g. `From:` first) that declares MIME somewhere, as cloud-init accepts.
    let header_block_with_mime = head.first().is_some_and(u8::is_ascii_alphabetic)
        && head.windows(13).any(|w| w == b"mime-version:");
    starts_with_header || header_block_with_mime
}

fn next_name(parts: &[Part], filename: Option<String>) -> String {
    filename
        .filter(|f| !f.is_empty())
        .map(|f| sanitize_name(&f))
        .unwrap_or_else(|| format!("part-{:03}", parts.len() + 1))
}

/// A file name safe to use in a directory (no separators, no leading dots).
fn sanitize_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cleaned = cleaned.trim_start_matches('.').to_string();
    if cleaned.is_empty() {
        "part".into()
    } else {
        cleaned.chars().take(64).collect()
    }
}

fn decode_into(
    data: &[u8],
    filename: Option<String>,
    depth: usize,
    parts: &mut Vec<Part>,
) -> Result<(), UserDataError> {
    if depth > MAX_NESTING {
        let name = next_name(parts, filename);
        parts.push(Part {
            name,
            kind: PartKind::Unsupported("nested too deeply (gzip/MIME inside each other)".into()),
            content: data.to_vec(),
        });
        return Ok(());
    }
    if is_gzip(data) {
        let inner = gunzip(data)?;
        return decode_into(&inner, filename, depth + 1, parts);
    }
    if looks_like_mime(data) {
        let mail = mailparse::parse_mail(data).map_err(|e| UserDataError::Mime(e.to_string()))?;
        return walk_mime(&mail, depth + 1, parts);
    }
    if data.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(());
    }
    let name = next_name(parts, filename);
    parts.push(Part {
        name,
        kind: kind_from_start(data),
        content: data.to_vec(),
    });
    Ok(())
}

fn walk_mime(
    mail: &mailparse::ParsedMail<'_>,
    depth: usize,
    parts: &mut Vec<Part>,
) -> Result<(), UserDataError> {
    let mimetype = mail.ctype.mimetype.to_ascii_lowercase();
    if mimetype.starts_with("multipart/") {
        if depth > MAX_NESTING {
            return Err(UserDataError::Mime("multi-parts nested too deeply".into()));
        }
        for sub in &mail.subparts {
            walk_mime(sub, depth + 1, parts)?;
        }
        return Ok(());
    }
    let filename = mail
        .get_content_disposition()
        .params
        .get("filename")
        .cloned();
    let body = match mail.get_body_raw() {
        Ok(b) => b,
        Err(e) => {
            let name = next_name(parts, filename);
            parts.push(Part {
                name,
                kind: PartKind::Unsupported(format!("cannot decode the part's body: {e}")),
                content: Vec::new(),
            });
            return Ok(());
        }
    };
    let gzip_type = matches!(
        mimetype.as_str(),
        "application/x-gzip" | "application/gzip" | "application/gzip-compressed"
    );
    if gzip_type || is_gzip(&body) {
        let inner = match gunzip(&body) {
            Ok(inner) => inner,
            Err(e) => {
                let name = next_name(parts, filename);
                parts.push(Part {
                    name,
                    kind: PartKind::Unsupported(e.to_string()),
                    content: body,
                });
                return Ok(());
            }
        };
        return decode_into(&inner, filename, depth + 1, parts);
    }
    let kind = match mimetype.as_str() {
        "text/x-shellscript" => PartKind::Script,
        "text/cloud-config" => PartKind::CloudConfig,
        "text/cloud-boothook" => PartKind::Boothook,
        "text/plain" | "text/x-not-multipart" | "application/octet-stream" | "" => {
            kind_from_start(&body)
        }
        other => PartKind::Unsupported(format!(
            "content type {other} is not supported by kumo-agent (supported: text/x-shellscript, text/cloud-config, text/cloud-boothook)"
        )),
    };
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(());
    }
    let name = next_name(parts, filename);
    parts.push(Part {
        name,
        kind,
        content: body,
    });
    Ok(())
}

/// The kind of a part from its first line, as cloud-init guesses it.
pub fn kind_from_start(data: &[u8]) -> PartKind {
    // cloud-init ignores a UTF-8 byte-order mark and leading blank lines.
    let data = data.strip_prefix(b"\xef\xbb\xbf").unwrap_or(data);
    let start = data
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n'))
        .unwrap_or(data.len());
    let data = &data[start..];
    let first_line = data.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let first = String::from_utf8_lossy(first_line)
        .trim()
        .to_ascii_lowercase();
    if first.starts_with("#!") {
        PartKind::Script
    } else if first == "#cloud-config" || first.starts_with("#cloud-config ") {
        PartKind::CloudConfig
    } else if first.starts_with("#cloud-boothook") {
        PartKind::Boothook
    } else if first.starts_with("#cloud-config-archive") {
        PartKind::Unsupported("#cloud-config-archive is not supported by kumo-agent".into())
    } else if first.starts_with("#include") {
        PartKind::Unsupported(
            "#include (user-data from URLs) is not supported by kumo-agent".into(),
        )
    } else if first.starts_with("#part-handler") || first.starts_with("#upstart-job") {
        PartKind::Unsupported(format!(
            "{} parts are not supported by kumo-agent",
            first.split_whitespace().next().unwrap_or("")
        ))
    } else if first.starts_with("## template: jinja") {
        PartKind::Unsupported("jinja templates are not supported by kumo-agent".into())
    } else if std::str::from_utf8(data).is_err() {
        PartKind::Unsupported(
            "binary data: neither gzip, a #! script, #cloud-config nor MIME multi-part".into(),
        )
    } else {
        PartKind::Unsupported(
            "not executable: it starts with neither #! (a script), #cloud-config nor a MIME header, so it was not run".into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn script() {
        let parts = decode(b"#!/bin/sh\necho hi\n").unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].kind, PartKind::Script);
        assert_eq!(parts[0].name, "part-001");
        assert_eq!(parts[0].content, b"#!/bin/sh\necho hi\n");
    }

    #[test]
    fn cloud_config() {
        let parts = decode(b"#cloud-config\nruncmd: [ls]\n").unwrap();
        assert_eq!(parts[0].kind, PartKind::CloudConfig);
    }

    #[test]
    fn empty_has_no_parts() {
        assert!(decode(b"").unwrap().is_empty());
        assert!(decode(b"\n \n").unwrap().is_empty());
    }

    #[test]
    fn size_limit_is_on_the_raw_bytes() {
        let mut big = b"#!/bin/sh\n".to_vec();
        big.resize(EC2_USER_DATA_LIMIT, b'#');
        assert!(decode(&big).is_ok());
        big.push(b'\n');
        assert_eq!(
            decode(&big).unwrap_err(),
            UserDataError::TooLarge {
                size: EC2_USER_DATA_LIMIT + 1,
                limit: EC2_USER_DATA_LIMIT
            }
        );
        // Compressed, the same script fits.
        let parts = decode(&gz(&big)).unwrap();
        assert_eq!(parts[0].kind, PartKind::Script);
        assert_eq!(parts[0].content.len(), EC2_USER_DATA_LIMIT + 1);
    }

    #[test]
    fn gzip_script() {
        let parts = decode(&gz(b"#!/bin/sh\necho gz\n")).unwrap();
        assert_eq!(parts[0].kind, PartKind::Script);
        assert_eq!(parts[0].content, b"#!/bin/sh\necho gz\n");
    }

    #[test]
    fn corrupt_gzip() {
        let mut data = gz(b"#!/bin/sh\necho gz\n");
        let n = data.len();
        data.truncate(n - 6);
        assert!(matches!(decode(&data), Err(UserDataError::Gzip(_))));
    }

    #[test]
    fn gzip_bomb_is_capped() {
        let zeros = vec![0u8; MAX_DECOMPRESSED + 10];
        let data = gz(&zeros);
        assert!(data.len() < EC2_USER_DATA_LIMIT);
        assert_eq!(
            decode(&data).unwrap_err(),
            UserDataError::DecompressedTooLarge {
                limit: MAX_DECOMPRESSED
            }
        );
    }

    const MULTIPART: &str = "Content-Type: multipart/mixed; boundary=\"===BOUNDARY==\"\r\n\
MIME-Version: 1.0\r\n\
\r\n\
--===BOUNDARY==\r\n\
Content-Type: text/cloud-config; charset=\"us-ascii\"\r\n\
MIME-Version: 1.0\r\n\
Content-Transfer-Encoding: 7bit\r\n\
Content-Disposition: attachment; filename=\"cloud-config.txt\"\r\n\
\r\n\
#cloud-config\r\n\
runcmd:\r\n\
 - echo from-runcmd\r\n\
\r\n\
--===BOUNDARY==\r\n\
Content-Type: text/x-shellscript; charset=\"us-ascii\"\r\n\
Content-Transfer-Encoding: base64\r\n\
Content-Disposition: attachment; filename=\"../setup.sh\"\r\n\
\r\n\
IyEvYmluL3NoCmVjaG8gZnJvbS1zY3JpcHQK\r\n\
--===BOUNDARY==\r\n\
Content-Type: text/plain\r\n\
\r\n\
#!/bin/sh\r\n\
echo guessed\r\n\
--===BOUNDARY==\r\n\
Content-Type: text/x-include-url\r\n\
\r\n\
http://example.invalid/x\r\n\
--===BOUNDARY==--\r\n";

    #[test]
    fn mime_multipart() {
        let parts = decode(MULTIPART.as_bytes()).unwrap();
        assert_eq!(parts.len(), 4, "{parts:#?}");
        assert_eq!(parts[0].kind, PartKind::CloudConfig);
        assert_eq!(parts[0].name, "cloud-config.txt");
        assert!(
            String::from_utf8_lossy(&parts[0].content).contains("echo from-runcmd"),
            "{:?}",
            parts[0]
        );
        assert_eq!(parts[1].kind, PartKind::Script);
        assert_eq!(parts[1].name, "_setup.sh");
        assert_eq!(parts[1].content, b"#!/bin/sh\necho from-script\n");
        assert_eq!(parts[2].kind, PartKind::Script);
        assert_eq!(parts[2].name, "part-003");
        assert!(matches!(parts[3].kind, PartKind::Unsupported(_)));
    }

    #[test]
    fn gzipped_multipart() {
        let parts = decode(&gz(MULTIPART.as_bytes())).unwrap();
        assert_eq!(parts.len(), 4);
    }

    #[test]
    fn mime_with_gzip_part() {
        use base64::Engine;
        let inner = base64::engine::general_purpose::STANDARD.encode(gz(b"#!/bin/sh\necho z\n"));
        let msg = format!(
            "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=XX\n\n--XX\nContent-Type: application/x-gzip\nContent-Transfer-Encoding: base64\n\n{inner}\n--XX--\n"
        );
        let parts = decode(msg.as_bytes()).unwrap();
        assert_eq!(parts.len(), 1, "{parts:?}");
        assert_eq!(parts[0].kind, PartKind::Script);
        assert_eq!(parts[0].content, b"#!/bin/sh\necho z\n");
    }

    #[test]
    fn unknown_and_binary() {
        let parts = decode(b"echo no shebang\n").unwrap();
        match &parts[0].kind {
            PartKind::Unsupported(reason) => assert!(reason.contains("not executable")),
            k => panic!("{k:?}"),
        }
        let parts = decode(&[0xff, 0xfe, 0x00, 0x41]).unwrap();
        match &parts[0].kind {
            PartKind::Unsupported(reason) => assert!(reason.contains("binary")),
            k => panic!("{k:?}"),
        }
        let parts = decode(b"#include\nhttp://x\n").unwrap();
        assert!(matches!(parts[0].kind, PartKind::Unsupported(_)));
        let parts = decode(b"#cloud-config-archive\n- a\n").unwrap();
        assert!(matches!(parts[0].kind, PartKind::Unsupported(_)));
        let parts = decode(b"#cloud-boothook\n#!/bin/sh\necho early\n").unwrap();
        assert_eq!(parts[0].kind, PartKind::Boothook);
    }

    #[test]
    fn script_with_bad_utf8_is_still_a_script() {
        let parts = decode(b"#!/bin/sh\necho \xff\n").unwrap();
        assert_eq!(parts[0].kind, PartKind::Script);
        assert_eq!(parts[0].utf8_error(), Some(15));
    }

    #[test]
    fn bom_and_blank_lines() {
        assert_eq!(
            kind_from_start(b"\xef\xbb\xbf#cloud-config\n"),
            PartKind::CloudConfig
        );
        assert_eq!(kind_from_start(b"\n\n#!/bin/sh\n"), PartKind::Script);
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let _ = decode(&data);
        }

        #[test]
        fn decode_mime_like_never_panics(body in ".{0,400}", boundary in "[a-zA-Z0-9=_]{1,12}") {
            let msg = format!("Content-Type: multipart/mixed; boundary={boundary}\n\n--{boundary}\n{body}\n--{boundary}--\n");
            let _ = decode(msg.as_bytes());
        }

        #[test]
        fn scripts_round_trip(body in "[ -~\n]{0,300}") {
            let script = format!("#!/bin/sh\n{body}");
            let parts = decode(script.as_bytes()).unwrap();
            proptest::prop_assert_eq!(parts.len(), 1);
            proptest::prop_assert_eq!(&parts[0].kind, &PartKind::Script);
            proptest::prop_assert_eq!(&parts[0].content, script.as_bytes());
        }
    }
}
