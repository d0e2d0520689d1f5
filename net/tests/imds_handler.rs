//! The metadata service's HTTP layer (no sockets): IMDSv1 and v2, token expiry on an injected
//! clock, 400/401/403/404/405, exact listings and documents.

mod imds_common;

use std::time::{Duration, Instant};

use imds_common::sample_metadata;
use kumo_net::imds::handler::{self, MetadataRequest, MetadataResponse};
use kumo_net::imds::tokens::TokenStore;
use kumo_net::imds::{HttpEndpoint, HttpTokens, InstanceMetadata};
use proptest::prelude::*;

fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> MetadataRequest {
    MetadataRequest {
        method: method.to_owned(),
        target: target.to_owned(),
        headers: headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
            .collect(),
    }
}

struct Imds {
    metadata: InstanceMetadata,
    tokens: TokenStore,
    now: Instant,
}

impl Imds {
    fn new(metadata: InstanceMetadata) -> Self {
        Self {
            metadata,
            tokens: TokenStore::new(64),
            now: Instant::now(),
        }
    }

    fn send(&mut self, method: &str, target: &str, headers: &[(&str, &str)]) -> MetadataResponse {
        handler::handle(
            &request(method, target, headers),
            &self.metadata,
            &mut self.tokens,
            self.now,
        )
    }

    fn get(&mut self, target: &str) -> MetadataResponse {
        self.send("GET", target, &[])
    }

    fn get_text(&mut self, target: &str) -> String {
        let response = self.get(target);
        assert_eq!(response.status, 200, "GET {target}");
        String::from_utf8(response.body).unwrap()
    }

    fn token(&mut self, ttl: &str) -> String {
        let response = self.send(
            "PUT",
            "/latest/api/token",
            &[("X-aws-ec2-metadata-token-ttl-seconds", ttl)],
        );
        assert_eq!(response.status, 200);
        String::from_utf8(response.body).unwrap()
    }
}

fn header<'a>(response: &'a MetadataResponse, name: &str) -> Option<&'a str> {
    response
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[test]
fn imdsv1_serves_the_paths_cloud_init_reads() {
    let mut imds = Imds::new(sample_metadata());
    for (path, expected) in [
        ("/latest/meta-data/instance-id", "i-0123456789abcdef0"),
        ("/latest/meta-data/ami-id", "ami-0fedcba9876543210"),
        ("/latest/meta-data/ami-launch-index", "0"),
        ("/latest/meta-data/instance-type", "t3.micro"),
        ("/latest/meta-data/local-ipv4", "10.0.1.5"),
        ("/latest/meta-data/mac", "02:4b:55:00:01:05"),
        ("/latest/meta-data/hostname", "ip-10-0-1-5.ec2.internal"),
        (
            "/latest/meta-data/local-hostname",
            "ip-10-0-1-5.ec2.internal",
        ),
        (
            "/latest/meta-data/placement/availability-zone",
            "us-east-1a",
        ),
        (
            "/latest/meta-data/placement/availability-zone-id",
            "use1-az1",
        ),
        ("/latest/meta-data/placement/region", "us-east-1"),
        ("/latest/meta-data/security-groups", "default\nweb"),
        ("/latest/meta-data/reservation-id", "r-0aaaabbbbccccdddd"),
        ("/latest/meta-data/block-device-mapping/ami", "/dev/xvda"),
        ("/latest/meta-data/block-device-mapping/root", "/dev/xvda"),
        ("/latest/meta-data/services/domain", "amazonaws.com"),
        (
            "/latest/meta-data/public-keys/0/openssh-key",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKumoTestKeyOnly my-key",
        ),
    ] {
        assert_eq!(imds.get_text(path), expected, "{path}");
    }
    let user_data = imds.get("/latest/user-data");
    assert_eq!(user_data.status, 200);
    assert_eq!(user_data.content_type, "application/octet-stream");
    assert_eq!(user_data.body, b"#!/bin/sh\necho hello from user-data\n");
}

#[test]
fn interface_tree_under_the_mac() {
    let mut imds = Imds::new(sample_metadata());
    let base = "/latest/meta-data/network/interfaces/macs/02:4b:55:00:01:05";
    assert_eq!(
        imds.get_text("/latest/meta-data/network/interfaces/macs/"),
        "02:4b:55:00:01:05/"
    );
    assert_eq!(
        imds.get_text(&format!("{base}/")),
        "device-number\ninterface-id\nlocal-hostname\nlocal-ipv4s\nmac\nowner-id\n\
         security-group-ids\nsecurity-groups\nsubnet-id\nsubnet-ipv4-cidr-block\nvpc-id\n\
         vpc-ipv4-cidr-block\nvpc-ipv4-cidr-blocks"
    );
    for (leaf, expected) in [
        ("device-number", "0"),
        ("interface-id", "eni-0123456789abcdef0"),
        ("local-ipv4s", "10.0.1.5"),
        ("mac", "02:4b:55:00:01:05"),
        ("owner-id", "123456789012"),
        (
            "security-group-ids",
            "sg-0aaaaaaaaaaaaaaaa\nsg-0bbbbbbbbbbbbbbbb",
        ),
        ("security-groups", "default\nweb"),
        ("subnet-id", "subnet-0123456789abcdef0"),
        ("subnet-ipv4-cidr-block", "10.0.1.0/24"),
        ("vpc-id", "vpc-0123456789abcdef0"),
        ("vpc-ipv4-cidr-block", "10.0.0.0/16"),
        ("vpc-ipv4-cidr-blocks", "10.0.0.0/16"),
    ] {
        assert_eq!(imds.get_text(&format!("{base}/{leaf}")), expected, "{leaf}");
    }
}

#[test]
fn listings_have_ec2s_exact_format() {
    let mut imds = Imds::new(sample_metadata());
    let versions = imds.get_text("/");
    assert!(versions.starts_with("1.0\n2007-01-19\n"), "{versions}");
    assert!(versions.contains("\n2021-03-23\n"));
    assert!(versions.ends_with("\nlatest"), "no trailing newline");
    assert_eq!(imds.get_text("/latest"), "dynamic\nmeta-data\nuser-data");
    assert_eq!(imds.get_text("/latest/"), "dynamic\nmeta-data\nuser-data");
    let listing = imds.get_text("/latest/meta-data/");
    assert_eq!(
        listing,
        "ami-id\nami-launch-index\nami-manifest-path\nblock-device-mapping/\nevents/\n\
         hostname\ninstance-action\ninstance-id\ninstance-life-cycle\ninstance-type\n\
         local-hostname\nlocal-ipv4\nmac\nnetwork/\nplacement/\nprofile\npublic-keys/\n\
         reservation-id\nsecurity-groups\nservices/"
    );
    // Listed in EC2's (alphabetical) order.
    let names: Vec<&str> = listing.lines().collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    // With or without the trailing slash.
    assert_eq!(imds.get_text("/latest/meta-data"), listing);
    assert_eq!(imds.get_text("/2021-03-23/meta-data/"), listing);
    assert_eq!(imds.get_text("/latest/meta-data/public-keys/"), "0=my-key");
    assert_eq!(
        imds.get_text("/latest/meta-data/public-keys/0"),
        "openssh-key"
    );
    assert_eq!(
        imds.get_text("/latest/meta-data/placement/"),
        "availability-zone\navailability-zone-id\nregion"
    );
    assert_eq!(
        imds.get_text("/latest/meta-data/block-device-mapping/"),
        "ami\nroot"
    );
    assert_eq!(imds.get_text("/latest/dynamic/"), "instance-identity/");
    assert_eq!(
        imds.get_text("/latest/dynamic/instance-identity/"),
        "document"
    );
    let listing = imds.get("/latest/meta-data/");
    assert_eq!(listing.content_type, "text/plain");
    assert_eq!(header(&listing, "Accept-Ranges"), Some("none"));
    assert_eq!(
        header(&listing, "Last-Modified"),
        Some("Thu, 29 Feb 2024 12:34:56 GMT")
    );
}

#[test]
fn public_address_appears_only_when_the_instance_has_one() {
    let mut metadata = sample_metadata();
    let mut imds = Imds::new(metadata.clone());
    assert!(!imds.get_text("/latest/meta-data/").contains("public-ipv4"));
    assert_eq!(imds.get("/latest/meta-data/public-ipv4").status, 404);
    assert_eq!(imds.get("/latest/meta-data/public-hostname").status, 404);

    metadata.interfaces[0].public_ipv4s = vec!["198.18.0.7".parse().unwrap()];
    metadata.interfaces[0].public_hostname = Some("ec2-198-18-0-7.compute-1.amazonaws.com".into());
    let mut imds = Imds::new(metadata);
    let listing = imds.get_text("/latest/meta-data/");
    assert!(listing.contains("\npublic-hostname\npublic-ipv4\npublic-keys/\n"));
    assert_eq!(imds.get_text("/latest/meta-data/public-ipv4"), "198.18.0.7");
    let mac = "/latest/meta-data/network/interfaces/macs/02:4b:55:00:01:05";
    assert_eq!(imds.get_text(&format!("{mac}/public-ipv4s")), "198.18.0.7");
    assert_eq!(
        imds.get_text(&format!("{mac}/ipv4-associations/198.18.0.7")),
        "10.0.1.5"
    );
}

#[test]
fn user_data_is_404_when_there_is_none() {
    let mut metadata = sample_metadata();
    metadata.user_data = None;
    let mut imds = Imds::new(metadata);
    let response = imds.get("/latest/user-data");
    assert_eq!(response.status, 404);
    assert_eq!(imds.get_text("/latest/"), "dynamic\nmeta-data");
    imds.metadata.user_data = Some(Vec::new());
    assert_eq!(imds.get("/latest/user-data").status, 404);
}

#[test]
fn identity_document_is_ec2_shaped_json() {
    let mut imds = Imds::new(sample_metadata());
    let text = imds.get_text("/latest/dynamic/instance-identity/document");
    assert!(
        text.starts_with("{\n  \"accountId\" : \"123456789012\",\n"),
        "{text}"
    );
    assert!(text.ends_with("\n}"));
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["instanceId"], "i-0123456789abcdef0");
    assert_eq!(doc["imageId"], "ami-0fedcba9876543210");
    assert_eq!(doc["instanceType"], "t3.micro");
    assert_eq!(doc["privateIp"], "10.0.1.5");
    assert_eq!(doc["availabilityZone"], "us-east-1a");
    assert_eq!(doc["region"], "us-east-1");
    assert_eq!(doc["architecture"], "x86_64");
    assert_eq!(doc["pendingTime"], "2024-02-29T12:34:56Z");
    assert_eq!(doc["version"], "2017-09-30");
    assert!(doc["kernelId"].is_null());
}

#[test]
fn unknown_paths_are_404_with_ec2s_error_page() {
    let mut imds = Imds::new(sample_metadata());
    for path in [
        "/latest/meta-data/nope",
        "/latest/meta-data/instance-id/extra",
        "/2099-01-01/meta-data/",
        "/latest/api",
        "/meta-data/instance-id",
        "/latest/meta-data/public-keys/1/openssh-key",
    ] {
        let response = imds.get(path);
        assert_eq!(response.status, 404, "{path}");
        assert_eq!(response.content_type, "text/html");
        let body = String::from_utf8(response.body).unwrap();
        assert!(body.starts_with("<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n"));
        assert!(body.contains("<title>404 - Not Found</title>"));
        assert!(body.contains("<h1>404 - Not Found</h1>"));
    }
}

#[test]
fn other_methods_are_405() {
    let mut imds = Imds::new(sample_metadata());
    for (method, path) in [
        ("POST", "/latest/meta-data/"),
        ("DELETE", "/latest/meta-data/instance-id"),
        ("PUT", "/latest/meta-data/instance-id"),
        ("GET", "/latest/api/token"),
        ("POST", "/latest/api/token"),
    ] {
        let response = imds.send(
            method,
            path,
            &[("X-aws-ec2-metadata-token-ttl-seconds", "60")],
        );
        assert_eq!(response.status, 405, "{method} {path}");
        assert!(
            String::from_utf8(response.body)
                .unwrap()
                .contains("405 - Method Not Allowed")
        );
    }
    let head = imds.send("HEAD", "/latest/meta-data/instance-id", &[]);
    assert_eq!(head.status, 200);
}

#[test]
fn imdsv2_token_round_trip() {
    let mut imds = Imds::new(sample_metadata());
    let put = imds.send(
        "PUT",
        "/latest/api/token",
        &[("X-aws-ec2-metadata-token-ttl-seconds", "21600")],
    );
    assert_eq!(put.status, 200);
    assert_eq!(put.content_type, "text/plain");
    assert_eq!(
        header(&put, "X-Aws-Ec2-Metadata-Token-Ttl-Seconds"),
        Some("21600")
    );
    assert_eq!(
        put.hop_limit,
        Some(1),
        "the PUT response carries the hop limit"
    );
    let token = String::from_utf8(put.body).unwrap();
    assert!(token.len() >= 32);

    let get = imds.send(
        "GET",
        "/latest/meta-data/instance-id",
        &[("X-aws-ec2-metadata-token", &token)],
    );
    assert_eq!(get.status, 200);
    assert_eq!(get.body, b"i-0123456789abcdef0");
    assert_eq!(
        get.hop_limit, None,
        "only the PUT response has the hop limit"
    );
    assert_eq!(
        header(&get, "X-Aws-Ec2-Metadata-Token-Ttl-Seconds"),
        Some("21600")
    );
}

#[test]
fn token_ttl_must_be_1_to_21600() {
    let mut imds = Imds::new(sample_metadata());
    for bad in [
        "0",
        "21601",
        "-1",
        "abc",
        "",
        "1.5",
        "99999999999999999999",
        " ",
    ] {
        let response = imds.send(
            "PUT",
            "/latest/api/token",
            &[("X-aws-ec2-metadata-token-ttl-seconds", bad)],
        );
        assert_eq!(response.status, 400, "ttl {bad:?}");
        assert!(
            String::from_utf8(response.body)
                .unwrap()
                .contains("400 - Bad Request")
        );
    }
    assert_eq!(imds.send("PUT", "/latest/api/token", &[]).status, 400);
    for good in ["1", "21600", "60"] {
        imds.token(good);
    }
}

#[test]
fn token_put_through_a_proxy_is_403() {
    let mut imds = Imds::new(sample_metadata());
    let response = imds.send(
        "PUT",
        "/latest/api/token",
        &[
            ("X-aws-ec2-metadata-token-ttl-seconds", "60"),
            ("X-Forwarded-For", "203.0.113.9"),
        ],
    );
    assert_eq!(response.status, 403);
    assert!(
        String::from_utf8(response.body)
            .unwrap()
            .contains("403 - Forbidden")
    );
}

#[test]
fn tokens_expire_on_the_injected_clock() {
    let mut imds = Imds::new(sample_metadata());
    let token = imds.token("60");
    let with_token = [("X-aws-ec2-metadata-token", token.as_str())];

    imds.now += Duration::from_secs(59);
    let response = imds.send("GET", "/latest/meta-data/instance-id", &with_token);
    assert_eq!(response.status, 200);
    assert_eq!(
        header(&response, "X-Aws-Ec2-Metadata-Token-Ttl-Seconds"),
        Some("1")
    );

    imds.now += Duration::from_secs(1);
    let response = imds.send("GET", "/latest/meta-data/instance-id", &with_token);
    assert_eq!(response.status, 401, "expired at exactly the TTL");
    assert!(
        String::from_utf8(response.body)
            .unwrap()
            .contains("401 - Unauthorized")
    );
    // IMDSv1 still works (HttpTokens=optional) when no token is sent.
    assert_eq!(imds.get("/latest/meta-data/instance-id").status, 200);
}

#[test]
fn a_bad_token_is_401_even_when_v1_is_allowed() {
    let mut imds = Imds::new(sample_metadata());
    let response = imds.send(
        "GET",
        "/latest/meta-data/instance-id",
        &[("X-aws-ec2-metadata-token", "not-a-token")],
    );
    assert_eq!(response.status, 401);
}

#[test]
fn http_tokens_required_turns_v1_off() {
    let mut metadata = sample_metadata();
    metadata.http_tokens = HttpTokens::Required;
    let mut imds = Imds::new(metadata);
    for path in [
        "/latest/meta-data/instance-id",
        "/latest/user-data",
        "/",
        "/nope",
    ] {
        assert_eq!(imds.get(path).status, 401, "{path}");
    }
    let token = imds.token("300");
    let response = imds.send(
        "GET",
        "/latest/meta-data/instance-id",
        &[("x-aws-ec2-metadata-token", &token)],
    );
    assert_eq!(response.status, 200, "header names are case-insensitive");
}

#[test]
fn tokens_are_bound_to_the_instance() {
    let mut imds = Imds::new(sample_metadata());
    let token = imds.token("300");
    let mut other = sample_metadata();
    other.instance_id = "i-0fffffffffffffff0".into();
    imds.metadata = other;
    let response = imds.send(
        "GET",
        "/latest/meta-data/instance-id",
        &[("X-aws-ec2-metadata-token", &token)],
    );
    assert_eq!(response.status, 401);
}

#[test]
fn hop_limit_follows_the_instance_setting() {
    let mut metadata = sample_metadata();
    metadata.http_put_response_hop_limit = 2;
    let mut imds = Imds::new(metadata);
    let put = imds.send(
        "PUT",
        "/latest/api/token",
        &[("X-aws-ec2-metadata-token-ttl-seconds", "60")],
    );
    assert_eq!(put.hop_limit, Some(2));
}

#[test]
fn disabled_endpoint_is_403_for_everything() {
    let mut metadata = sample_metadata();
    metadata.http_endpoint = HttpEndpoint::Disabled;
    let mut imds = Imds::new(metadata);
    assert_eq!(imds.get("/latest/meta-data/instance-id").status, 403);
    let put = imds.send(
        "PUT",
        "/latest/api/token",
        &[("X-aws-ec2-metadata-token-ttl-seconds", "60")],
    );
    assert_eq!(put.status, 403);
}

#[test]
fn query_strings_are_ignored() {
    let mut imds = Imds::new(sample_metadata());
    assert_eq!(
        imds.get_text("/latest/meta-data/instance-id?x=1"),
        "i-0123456789abcdef0"
    );
}

/// Walks the whole tree as cloud-init's MetadataMaterializer does: every listed entry must be
/// fetchable (one 404 makes cloud-init drop the whole crawl).
#[test]
fn every_listed_entry_resolves() {
    let mut metadata = sample_metadata();
    metadata.interfaces[0].public_ipv4s = vec!["198.18.0.7".parse().unwrap()];
    metadata.interfaces[0].public_hostname = Some("ec2-198-18-0-7.compute-1.amazonaws.com".into());
    let mut imds = Imds::new(metadata);
    let mut pending = vec![
        "/latest/meta-data/".to_owned(),
        "/latest/dynamic/".to_owned(),
    ];
    let mut fetched = 0;
    while let Some(dir) = pending.pop() {
        for line in imds.get_text(&dir).lines() {
            assert!(
                !line.is_empty() && line.trim() == line,
                "odd entry {line:?} in {dir}"
            );
            let (resource, is_dir) = match line.strip_suffix('/') {
                Some(name) => (format!("{dir}{name}/"), true),
                None => match line.split_once('=') {
                    Some((index, _name)) => (format!("{dir}{index}/openssh-key"), false),
                    None => (format!("{dir}{line}"), false),
                },
            };
            if is_dir {
                pending.push(resource);
            } else {
                imds.get_text(&resource);
                fetched += 1;
            }
        }
    }
    assert!(fetched > 30, "walked {fetched} leaves");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Whatever a guest sends, the handler answers with one of the statuses EC2 uses and
    /// never panics; 200s are only given to GET/HEAD or a well-formed token PUT.
    #[test]
    fn arbitrary_requests_get_an_ec2_status(
        method in "(GET|HEAD|PUT|POST|DELETE|OPTIONS|[A-Z]{1,8})",
        target in "/[ -~]{0,80}",
        headers in proptest::collection::vec(
            (
                "(X-aws-ec2-metadata-token|X-aws-ec2-metadata-token-ttl-seconds|X-Forwarded-For|[A-Za-z-]{1,20})",
                proptest::collection::vec(any::<u8>(), 0..40),
            ),
            0..6,
        ),
        required in any::<bool>(),
    ) {
        let mut metadata = sample_metadata();
        if required {
            metadata.http_tokens = HttpTokens::Required;
        }
        let mut tokens = TokenStore::new(8);
        let request = MetadataRequest {
            method: method.clone(),
            target,
            headers: headers.into_iter().collect(),
        };
        let response = handler::handle(&request, &metadata, &mut tokens, Instant::now());
        prop_assert!([200, 400, 401, 403, 404, 405].contains(&response.status));
        if response.status == 200 {
            prop_assert!(method == "GET" || method == "HEAD" || method == "PUT");
        } else {
            prop_assert_eq!(response.content_type, "text/html");
        }
    }
}
