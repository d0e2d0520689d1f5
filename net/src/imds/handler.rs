//! The metadata service's request -> response logic, free of sockets and clocks: the caller
//! passes the instance, its port's [`TokenStore`] and the time.
//!
//! What it implements, as EC2 does:
//!
//! * `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds: 1..=21600` issues an
//!   IMDSv2 token (body: the token; response header `X-Aws-Ec2-Metadata-Token-Ttl-Seconds`); the
//!   response's packets carry the instance's `HttpPutResponseHopLimit` as IP TTL. A missing or
//!   out-of-range TTL is 400; a request carrying `X-Forwarded-For` is 403 (it came through a
//!   proxy); any other method on the token path is 405.
//! * `GET`/`HEAD` elsewhere; any other method is 405. A request carrying
//!   `X-aws-ec2-metadata-token` must present a valid, unexpired token of this instance (else 401,
//!   even when IMDSv1 is allowed); without one the request is IMDSv1, answered only when
//!   `HttpTokens` is `optional` (else 401).
//! * `HttpEndpoint=disabled`: every request is 403.
//! * The tree: `/` lists the API versions; `/<version>/` lists `dynamic`, `meta-data` and
//!   `user-data` (the latter only when there is user-data); `meta-data/` and everything below
//!   list their children one per line, directories with a trailing `/`, no trailing newline;
//!   `public-keys/` lists `0=keyname`. Unknown paths are 404 with EC2's XHTML error page.
//!   A path works with or without a trailing slash.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::http::{http_date, iso8601};
use super::metadata::{InstanceMetadata, MAX_TOKEN_TTL_SECONDS, format_mac};
use super::tokens::{TokenCheck, TokenStore};
use super::{HttpEndpoint, HttpTokens};

/// Request header carrying an IMDSv2 token.
pub const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
/// Request header asking for a token's lifetime; response header giving it.
pub const TOKEN_TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
/// How EC2 spells the TTL header in responses.
const TOKEN_TTL_RESPONSE_HEADER: &str = "X-Aws-Ec2-Metadata-Token-Ttl-Seconds";
/// The token path (only under `latest`, as on EC2).
pub const TOKEN_PATH: &str = "/latest/api/token";

/// API versions `/` lists (EC2's list, oldest first), each serving the same tree here.
pub const API_VERSIONS: &[&str] = &[
    "1.0",
    "2007-01-19",
    "2007-03-01",
    "2007-08-29",
    "2007-10-10",
    "2007-12-15",
    "2008-02-01",
    "2008-09-01",
    "2009-04-04",
    "2011-01-01",
    "2011-05-01",
    "2012-01-12",
    "2014-02-25",
    "2014-11-05",
    "2015-10-20",
    "2016-04-19",
    "2016-06-30",
    "2016-09-02",
    "2018-03-28",
    "2018-08-17",
    "2018-09-24",
    "2019-10-01",
    "2020-10-27",
    "2021-01-03",
    "2021-03-23",
    "2021-07-15",
    "2022-09-24",
    "latest",
];

const TEXT: &str = "text/plain";
const HTML: &str = "text/html";
const OCTETS: &str = "application/octet-stream";

/// A parsed HTTP request as the handler sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetadataRequest {
    /// Request method (`GET`, `PUT`, ...).
    pub method: String,
    /// Request target as sent (`/latest/meta-data/instance-id`).
    pub target: String,
    /// Header (name, value) pairs in arrival order; names compare case-insensitively.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl MetadataRequest {
    /// The first value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// The handler's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataResponse {
    /// HTTP status code.
    pub status: u16,
    /// Extra headers (name, value) beyond the ones every response carries.
    pub headers: Vec<(String, String)>,
    /// `Content-Type` of the body.
    pub content_type: &'static str,
    /// Response body.
    pub body: Vec<u8>,
    /// IP TTL for the response's packets (`Some(hop limit)` for the token PUT), else the default.
    pub hop_limit: Option<u8>,
}

impl MetadataResponse {
    /// An EC2-style error page (`404 - Not Found` ...), `text/html`.
    pub fn error(status: u16) -> Self {
        let title = format!("{status} - {}", super::http::reason_phrase(status));
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n\
             <!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\"\n\
             \t\"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd\">\n\
             <html xmlns=\"http://www.w3.org/1999/xhtml\" xml:lang=\"en\" lang=\"en\">\n \
             <head>\n  <title>{title}</title>\n </head>\n \
             <body>\n  <h1>{title}</h1>\n </body>\n</html>\n"
        );
        Self {
            status,
            headers: Vec::new(),
            content_type: HTML,
            body: body.into_bytes(),
            hop_limit: None,
        }
    }

    fn ok(content_type: &'static str, body: Vec<u8>) -> Self {
        Self {
            status: 200,
            headers: Vec::new(),
            content_type,
            body,
            hop_limit: None,
        }
    }

    fn with_header(mut self, name: &str, value: String) -> Self {
        self.headers.push((name.to_owned(), value));
        self
    }
}

/// Answers `request` for the instance `metadata` at `now`, issuing and checking tokens in
/// `tokens` (the port's store).
pub fn handle(
    request: &MetadataRequest,
    metadata: &InstanceMetadata,
    tokens: &mut TokenStore,
    now: Instant,
) -> MetadataResponse {
    if metadata.http_endpoint == HttpEndpoint::Disabled {
        return MetadataResponse::error(403);
    }
    let path = request_path(&request.target);
    let method = request.method.as_str();

    if trim_slashes(path) == trim_slashes(TOKEN_PATH) {
        if method != "PUT" {
            return MetadataResponse::error(405).with_header("Allow", "PUT".to_owned());
        }
        return issue_token(request, metadata, tokens, now);
    }
    if method != "GET" && method != "HEAD" {
        return MetadataResponse::error(405).with_header("Allow", "GET, HEAD".to_owned());
    }

    let token_ttl = match request.header(TOKEN_HEADER) {
        Some(token) => match tokens.check(token, &metadata.instance_id, now) {
            TokenCheck::Valid { remaining_secs } => Some(remaining_secs),
            TokenCheck::Invalid => return MetadataResponse::error(401),
        },
        None if metadata.http_tokens == HttpTokens::Required => {
            return MetadataResponse::error(401);
        }
        None => None,
    };

    let mut response = match lookup(metadata, path) {
        Some(Node::Leaf { body, content_type }) => MetadataResponse::ok(content_type, body)
            .with_header("Accept-Ranges", "none".to_owned())
            .with_header("Last-Modified", http_date(metadata.launch_time)),
        Some(Node::Dir(entries)) => {
            let listing: Vec<&str> = entries.iter().map(|e| e.listed.as_str()).collect();
            MetadataResponse::ok(TEXT, listing.join("\n").into_bytes())
                .with_header("Accept-Ranges", "none".to_owned())
                .with_header("Last-Modified", http_date(metadata.launch_time))
        }
        None => MetadataResponse::error(404),
    };
    if let Some(remaining) = token_ttl {
        response.headers.insert(
            0,
            (TOKEN_TTL_RESPONSE_HEADER.to_owned(), remaining.to_string()),
        );
    }
    response
}

fn issue_token(
    request: &MetadataRequest,
    metadata: &InstanceMetadata,
    tokens: &mut TokenStore,
    now: Instant,
) -> MetadataResponse {
    if request.header("X-Forwarded-For").is_some() {
        return MetadataResponse::error(403);
    }
    let Some(ttl) = request.header(TOKEN_TTL_HEADER).and_then(parse_ttl) else {
        return MetadataResponse::error(400);
    };
    let token = tokens.issue(
        &metadata.instance_id,
        Duration::from_secs(u64::from(ttl)),
        now,
    );
    let mut response = MetadataResponse::ok(TEXT, token.into_bytes())
        .with_header(TOKEN_TTL_RESPONSE_HEADER, ttl.to_string());
    response.hop_limit = Some(metadata.http_put_response_hop_limit.max(1));
    response
}

/// A TTL header value: decimal seconds, 1 to 21600.
fn parse_ttl(value: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ttl: u32 = text.parse().ok()?;
    (1..=MAX_TOKEN_TTL_SECONDS).contains(&ttl).then_some(ttl)
}

/// The path part of a request target (query and fragment removed).
fn request_path(target: &str) -> &str {
    let end = target.find(['?', '#']).unwrap_or(target.len());
    &target[..end]
}

fn trim_slashes(path: &str) -> &str {
    path.trim_matches('/')
}

/// One node of the metadata tree.
enum Node {
    Leaf {
        body: Vec<u8>,
        content_type: &'static str,
    },
    Dir(Vec<Entry>),
}

/// A named child of a directory, and how the directory's listing shows it.
struct Entry {
    name: String,
    listed: String,
    node: Node,
}

fn leaf(name: &str, value: impl Into<String>) -> Entry {
    Entry {
        name: name.to_owned(),
        listed: name.to_owned(),
        node: Node::Leaf {
            body: value.into().into_bytes(),
            content_type: TEXT,
        },
    }
}

fn dir(name: &str, entries: Vec<Entry>) -> Entry {
    Entry {
        name: name.to_owned(),
        listed: format!("{name}/"),
        node: Node::Dir(entries),
    }
}

fn lines<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|item| item.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Finds `path` in the instance's tree.
fn lookup(metadata: &InstanceMetadata, path: &str) -> Option<Node> {
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    let Some(version) = segments.next() else {
        return Some(Node::Dir(
            API_VERSIONS
                .iter()
                .map(|v| Entry {
                    name: (*v).to_owned(),
                    listed: (*v).to_owned(),
                    node: Node::Dir(Vec::new()),
                })
                .collect(),
        ));
    };
    if !API_VERSIONS.contains(&version) {
        return None;
    }
    let mut node = version_tree(metadata);
    for segment in segments {
        let Node::Dir(entries) = node else {
            return None;
        };
        node = entries.into_iter().find(|e| e.name == segment)?.node;
    }
    Some(node)
}

/// The tree under `/<version>/`.
fn version_tree(metadata: &InstanceMetadata) -> Node {
    let mut entries = vec![
        Entry {
            name: "dynamic".to_owned(),
            listed: "dynamic".to_owned(),
            node: Node::Dir(vec![dir(
                "instance-identity",
                vec![leaf("document", identity_document(metadata))],
            )]),
        },
        Entry {
            name: "meta-data".to_owned(),
            listed: "meta-data".to_owned(),
            node: Node::Dir(meta_data(metadata)),
        },
    ];
    // EC2 has no such thing as empty user-data: none and empty are both a 404.
    if let Some(user_data) = metadata.user_data.as_ref().filter(|data| !data.is_empty()) {
        entries.push(Entry {
            name: "user-data".to_owned(),
            listed: "user-data".to_owned(),
            node: Node::Leaf {
                body: user_data.clone(),
                content_type: OCTETS,
            },
        });
    }
    Node::Dir(entries)
}

/// The entries of `meta-data/`, sorted as EC2 lists them.
fn meta_data(md: &InstanceMetadata) -> Vec<Entry> {
    let primary = md.primary_interface();
    let mut entries = vec![
        leaf("ami-id", md.ami_id.clone()),
        leaf("ami-launch-index", md.ami_launch_index.to_string()),
        leaf("ami-manifest-path", "(unknown)"),
    ];
    if !md.block_device_mappings.is_empty() {
        entries.push(dir(
            "block-device-mapping",
            md.block_device_mappings
                .iter()
                .map(|(name, device)| leaf(name, device.clone()))
                .collect(),
        ));
    }
    entries.push(dir(
        "events",
        vec![dir(
            "maintenance",
            vec![leaf("history", "[]"), leaf("scheduled", "[]")],
        )],
    ));
    entries.push(leaf("hostname", md.hostname.clone()));
    entries.push(leaf("instance-action", "none"));
    entries.push(leaf("instance-id", md.instance_id.clone()));
    entries.push(leaf("instance-life-cycle", "on-demand"));
    entries.push(leaf("instance-type", md.instance_type.clone()));
    let local_hostname = primary
        .map(|eni| eni.local_hostname.clone())
        .unwrap_or_else(|| md.hostname.clone());
    entries.push(leaf("local-hostname", local_hostname));
    if let Some(ip) = primary.and_then(|eni| eni.local_ipv4s.first()) {
        entries.push(leaf("local-ipv4", ip.to_string()));
    }
    if let Some(eni) = primary {
        entries.push(leaf("mac", format_mac(&eni.mac)));
    }
    if !md.interfaces.is_empty() {
        let mut interfaces: Vec<_> = md.interfaces.iter().collect();
        interfaces.sort_by_key(|eni| eni.device_number);
        entries.push(dir(
            "network",
            vec![dir(
                "interfaces",
                vec![dir(
                    "macs",
                    interfaces.into_iter().map(interface_dir).collect(),
                )],
            )],
        ));
    }
    let mut placement = vec![leaf("availability-zone", md.availability_zone.clone())];
    if let Some(az_id) = &md.availability_zone_id {
        placement.push(leaf("availability-zone-id", az_id.clone()));
    }
    placement.push(leaf("region", md.region.clone()));
    entries.push(dir("placement", placement));
    entries.push(leaf("profile", "default-hvm"));
    if let Some(name) = primary.and_then(|eni| eni.public_hostname.clone()) {
        entries.push(leaf("public-hostname", name));
    }
    if let Some(ip) = primary.and_then(|eni| eni.public_ipv4s.first()) {
        entries.push(leaf("public-ipv4", ip.to_string()));
    }
    if !md.public_keys.is_empty() {
        entries.push(dir(
            "public-keys",
            md.public_keys
                .iter()
                .enumerate()
                .map(|(index, key)| Entry {
                    name: index.to_string(),
                    listed: format!("{index}={}", key.name),
                    node: Node::Dir(vec![leaf("openssh-key", key.openssh_key.clone())]),
                })
                .collect(),
        ));
    }
    entries.push(leaf("reservation-id", md.reservation_id.clone()));
    let group_names = primary
        .map(|eni| lines(eni.security_groups.iter().map(|g| g.name.clone())))
        .unwrap_or_default();
    entries.push(leaf("security-groups", group_names));
    entries.push(dir(
        "services",
        vec![leaf("domain", "amazonaws.com"), leaf("partition", "aws")],
    ));
    entries
}

/// `network/interfaces/macs/<mac>/`.
fn interface_dir(eni: &super::NetworkInterfaceMetadata) -> Entry {
    let mut entries = vec![
        leaf("device-number", eni.device_number.to_string()),
        leaf("interface-id", eni.interface_id.clone()),
    ];
    if !eni.public_ipv4s.is_empty() {
        entries.push(dir(
            "ipv4-associations",
            eni.public_ipv4s
                .iter()
                .zip(&eni.local_ipv4s)
                .map(|(public, private)| leaf(&public.to_string(), private.to_string()))
                .collect(),
        ));
    }
    entries.push(leaf("local-hostname", eni.local_hostname.clone()));
    entries.push(leaf("local-ipv4s", lines(&eni.local_ipv4s)));
    entries.push(leaf("mac", format_mac(&eni.mac)));
    entries.push(leaf("owner-id", eni.owner_id.clone()));
    if let Some(name) = &eni.public_hostname {
        entries.push(leaf("public-hostname", name.clone()));
    }
    if !eni.public_ipv4s.is_empty() {
        entries.push(leaf("public-ipv4s", lines(&eni.public_ipv4s)));
    }
    entries.push(leaf(
        "security-group-ids",
        lines(eni.security_groups.iter().map(|g| g.id.clone())),
    ));
    entries.push(leaf(
        "security-groups",
        lines(eni.security_groups.iter().map(|g| g.name.clone())),
    ));
    entries.push(leaf("subnet-id", eni.subnet_id.clone()));
    entries.push(leaf(
        "subnet-ipv4-cidr-block",
        eni.subnet_ipv4_cidr_block.to_string(),
    ));
    entries.push(leaf("vpc-id", eni.vpc_id.clone()));
    if let Some(primary_block) = eni.vpc_ipv4_cidr_blocks.first() {
        entries.push(leaf("vpc-ipv4-cidr-block", primary_block.to_string()));
    }
    entries.push(leaf(
        "vpc-ipv4-cidr-blocks",
        lines(&eni.vpc_ipv4_cidr_blocks),
    ));
    dir(&format_mac(&eni.mac), entries)
}

/// `dynamic/instance-identity/document`, laid out as EC2 writes it (two-space indent, ` : `).
/// It is not signed: kumo serves no `pkcs7`/`signature` documents.
fn identity_document(md: &InstanceMetadata) -> String {
    fn text(value: &str) -> String {
        serde_json::Value::String(value.to_owned()).to_string()
    }
    let private_ip = md
        .primary_interface()
        .and_then(|eni| eni.local_ipv4s.first())
        .map(|ip| text(&ip.to_string()))
        .unwrap_or_else(|| "null".to_owned());
    let fields: [(&str, String); 15] = [
        ("accountId", text(&md.account_id)),
        ("architecture", text(&md.architecture)),
        ("availabilityZone", text(&md.availability_zone)),
        ("billingProducts", "null".to_owned()),
        ("devpayProductCodes", "null".to_owned()),
        ("marketplaceProductCodes", "null".to_owned()),
        ("imageId", text(&md.ami_id)),
        ("instanceId", text(&md.instance_id)),
        ("instanceType", text(&md.instance_type)),
        ("kernelId", "null".to_owned()),
        ("pendingTime", text(&iso8601(md.launch_time))),
        ("privateIp", private_ip),
        ("ramdiskId", "null".to_owned()),
        ("region", text(&md.region)),
        ("version", text("2017-09-30")),
    ];
    let mut doc = String::from("{\n");
    for (i, (name, value)) in fields.iter().enumerate() {
        let comma = if i + 1 < fields.len() { "," } else { "" };
        let _ = writeln!(doc, "  \"{name}\" : {value}{comma}");
    }
    doc.push('}');
    doc
}
