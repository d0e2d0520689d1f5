//! The metadata client against an in-process metadata service: IMDSv2, v1 fallback, token expiry,
//! 404 for absent user-data, bounded waiting.

mod common;

use std::time::Duration;

use common::{ImdsServer, TokenMode, instance_meta};
use kumo_agent::imds::{ImdsClient, ImdsConfig, ImdsError, ImdsVersion};

fn config(server: &ImdsServer) -> ImdsConfig {
    ImdsConfig {
        endpoint: server.addr,
        total_wait: Duration::from_secs(10),
        request_timeout: Duration::from_secs(2),
        token_ttl_secs: 21600,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
    }
}

#[test]
fn v2_fetches_everything_with_a_token() {
    let s = ImdsServer::start(
        TokenMode::Required,
        instance_meta("i-0123456789abcdef0", "10.0.1.5"),
        Some(b"#!/bin/sh\necho hi\n".to_vec()),
    );
    let mut c = ImdsClient::connect(config(&s), |_, _| {}).unwrap();
    assert_eq!(c.version(), ImdsVersion::V2);
    let info = c.instance_info().unwrap();
    assert_eq!(info.instance_id.as_deref(), Some("i-0123456789abcdef0"));
    assert_eq!(info.local_ipv4.as_deref(), Some("10.0.1.5"));
    assert_eq!(
        info.local_hostname.as_deref(),
        Some("ip-10-0-1-5.ec2.internal")
    );
    assert_eq!(info.public_keys.len(), 1);
    assert!(info.public_keys[0].starts_with("ssh-ed25519 "));
    assert_eq!(
        c.user_data().unwrap().as_deref(),
        Some(&b"#!/bin/sh\necho hi\n"[..])
    );
    assert_eq!(
        s.count(&s.counters.puts),
        1,
        "one token for the whole session"
    );
    assert_eq!(
        s.count(&s.counters.gets),
        s.count(&s.counters.gets_with_token),
        "every GET carried the token"
    );
    assert_eq!(s.count(&s.counters.unauthorized), 0);
}

#[test]
fn v2_preferred_when_tokens_are_optional() {
    let s = ImdsServer::start(TokenMode::Optional, instance_meta("i-1", "10.0.1.6"), None);
    let mut c = ImdsClient::connect(config(&s), |_, _| {}).unwrap();
    assert_eq!(c.version(), ImdsVersion::V2);
    assert_eq!(
        c.get_text("/latest/meta-data/instance-id")
            .unwrap()
            .as_deref(),
        Some("i-1")
    );
}

#[test]
fn no_user_data_is_a_404() {
    let s = ImdsServer::start(TokenMode::Required, instance_meta("i-1", "10.0.1.6"), None);
    let mut c = ImdsClient::connect(config(&s), |_, _| {}).unwrap();
    assert_eq!(c.user_data().unwrap(), None);
    assert_eq!(c.get("/latest/meta-data/no-such-thing").unwrap(), None);
}

#[test]
fn v1_when_v2_is_refused() {
    for status in [403, 404, 405] {
        let s = ImdsServer::start(
            TokenMode::V2Refused(status),
            instance_meta("i-2", "10.0.2.7"),
            Some(b"#cloud-config\n".to_vec()),
        );
        let mut c = ImdsClient::connect(config(&s), |_, _| {}).unwrap();
        assert_eq!(c.version(), ImdsVersion::V1, "PUT answered {status}");
        let info = c.instance_info().unwrap();
        assert_eq!(info.instance_id.as_deref(), Some("i-2"));
        assert!(c.user_data().unwrap().is_some());
        assert_eq!(s.count(&s.counters.gets_with_token), 0);
    }
}

#[test]
fn disabled_service_is_reported_not_retried() {
    let s = ImdsServer::start(TokenMode::Disabled, instance_meta("i-3", "10.0.0.3"), None);
    let e = ImdsClient::connect(config(&s), |_, _| {}).unwrap_err();
    assert!(matches!(e, ImdsError::Disabled { status: 403, .. }), "{e}");
    // The token request and one probe of the tree, both refused; then reported, not retried.
    assert_eq!(s.count(&s.counters.forbidden), 2);
}

#[test]
fn expired_token_is_renewed_after_401() {
    let s = ImdsServer::start(TokenMode::Required, instance_meta("i-4", "10.0.1.9"), None);
    let mut c = ImdsClient::connect(config(&s), |_, _| {}).unwrap();
    assert_eq!(s.count(&s.counters.puts), 1);
    s.expire_tokens();
    assert_eq!(
        c.get_text("/latest/meta-data/local-ipv4")
            .unwrap()
            .as_deref(),
        Some("10.0.1.9")
    );
    assert_eq!(s.count(&s.counters.unauthorized), 1);
    assert_eq!(s.count(&s.counters.puts), 2);
}

#[test]
fn token_is_renewed_before_its_ttl_runs_out() {
    let s = ImdsServer::start(TokenMode::Required, instance_meta("i-5", "10.0.1.10"), None);
    let mut cfg = config(&s);
    cfg.token_ttl_secs = 1;
    let mut c = ImdsClient::connect(cfg, |_, _| {}).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        c.get_text("/latest/meta-data/instance-id")
            .unwrap()
            .as_deref(),
        Some("i-5")
    );
    assert_eq!(s.count(&s.counters.puts), 2, "renewed proactively");
    assert_eq!(s.count(&s.counters.unauthorized), 0);
}

#[test]
fn retries_while_the_service_comes_up() {
    // 503s first (as a service still starting), then answers.
    let s = ImdsServer::start(TokenMode::Required, instance_meta("i-6", "10.0.1.11"), None);
    s.fail_first(4);
    let mut retries = 0;
    let c = ImdsClient::connect(config(&s), |_, _| retries += 1).unwrap();
    assert_eq!(c.version(), ImdsVersion::V2);
    assert!(retries >= 1);
    assert_eq!(s.count(&s.counters.server_errors), 4);
}

#[test]
fn retries_until_something_listens() {
    // Reserve a port, free it, and start the server there a little later.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let starter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        let listener = std::net::TcpListener::bind(addr).unwrap();
        ImdsServer::from_listener(
            listener,
            TokenMode::Required,
            instance_meta("i-7", "10.0.1.12"),
            None,
        )
    });
    let cfg = ImdsConfig {
        endpoint: addr,
        total_wait: Duration::from_secs(20),
        request_timeout: Duration::from_secs(1),
        token_ttl_secs: 60,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
    };
    let mut c = ImdsClient::connect(cfg, |_, _| {}).unwrap();
    let _server = starter.join().unwrap();
    assert_eq!(
        c.get_text("/latest/meta-data/instance-id")
            .unwrap()
            .as_deref(),
        Some("i-7")
    );
}

#[test]
fn gives_up_after_the_bounded_wait() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = ImdsConfig {
        endpoint: ([127, 0, 0, 1], port).into(),
        total_wait: Duration::from_millis(500),
        request_timeout: Duration::from_millis(200),
        token_ttl_secs: 60,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
    };
    let e = ImdsClient::connect(cfg, |_, _| {}).unwrap_err();
    assert!(matches!(e, ImdsError::NeverAnswered { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("did not answer"), "{msg}");
}
