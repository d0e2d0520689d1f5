//! `kumo-agent --service` end to end against the in-process metadata service, applying to an
//! image directory (`--root`): report lines, script output and exit status, cloud-config steps,
//! SSH keys, bad user-data.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;

use common::{ImdsServer, TokenMode, instance_meta};
use kumo_agent::report::{Event, ReportLine, parse_line};

fn image() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    std::fs::create_dir_all(r.join("etc")).unwrap();
    std::fs::create_dir_all(r.join("root")).unwrap();
    std::fs::write(r.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(r.join("etc/group"), "root:x:0:\n").unwrap();
    d
}

struct Run {
    code: i32,
    events: Vec<Event>,
    stdout: String,
}

fn run_agent(server: &ImdsServer, root: &Path, extra: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_kumo-agent"))
        .args([
            "--service",
            "--imds",
            &server.addr.to_string(),
            "--imds-timeout",
            "10",
        ])
        .arg("--root")
        .arg(root)
        .args(extra)
        .env_remove("KUMO_AGENT_IMDS")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let events = stdout
        .lines()
        .filter_map(parse_line)
        .filter_map(|l| match l {
            ReportLine::Event { event, .. } => Some(event),
            ReportLine::Unknown(_) => None,
        })
        .collect();
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    Run {
        code: out.status.code().unwrap_or(-1),
        events,
        stdout,
    }
}

fn names(events: &[Event]) -> Vec<String> {
    events.iter().map(Event::name).collect()
}

const MULTIPART: &str = r#"Content-Type: multipart/mixed; boundary="==XYZ=="
MIME-Version: 1.0

--==XYZ==
Content-Type: text/cloud-config; charset="us-ascii"

#cloud-config
hostname: web-1
write_files:
  - path: /etc/kumo-test/greeting
    content: |
      hello from write_files
    permissions: '0640'
runcmd:
  - echo runcmd-ran
  - [ sh, -c, "echo argv form" ]
packages: [nginx]

--==XYZ==
Content-Type: text/x-shellscript; charset="us-ascii"
Content-Disposition: attachment; filename="setup.sh"

#!/bin/sh
echo "setup: hello from user-data"
echo "setup: to stderr" >&2
exit 3
--==XYZ==--
"#;

#[test]
fn multipart_user_data_runs_and_reports() {
    let img = image();
    let server = ImdsServer::start(
        TokenMode::Required,
        instance_meta("i-0aaaabbbbccccdddd", "10.0.1.5"),
        Some(MULTIPART.as_bytes().to_vec()),
    );
    let run = run_agent(&server, img.path(), &[]);
    assert_eq!(run.code, 3, "the failing script's status");
    let n = names(&run.events);
    let pos = |name: &str| {
        n.iter()
            .position(|x| x == name)
            .unwrap_or_else(|| panic!("no {name} in {n:?}"))
    };
    assert!(pos("booted") < pos("metadata-ready"));
    assert!(pos("metadata-ready") < pos("userdata-started"));
    assert!(pos("userdata-started") < pos("userdata-finished"));
    assert!(run.events.contains(&Event::MetadataReady {
        imds_version: "v2".into(),
        instance_id: Some("i-0aaaabbbbccccdddd".into())
    }));
    // Hostname from metadata first, then the cloud-config's.
    let hostnames: Vec<_> = run
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Hostname { hostname } => Some(hostname.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(hostnames, ["ip-10-0-1-5", "web-1"]);
    assert_eq!(
        std::fs::read_to_string(img.path().join("etc/hostname")).unwrap(),
        "web-1\n"
    );
    assert!(run.events.contains(&Event::UserdataStarted {
        bytes: MULTIPART.len(),
        parts: vec!["cloud-config".into(), "script".into()]
    }));
    // Scripts run in name order, runcmd among them (as cloud-init's scripts-user does).
    assert!(run.events.contains(&Event::ScriptFinished {
        script: "runcmd".into(),
        exit: Some(0),
        signal: None,
        reason: None
    }));
    assert!(run.events.contains(&Event::ScriptFinished {
        script: "setup.sh".into(),
        exit: Some(3),
        signal: None,
        reason: Some("exited with status 3".into())
    }));
    let finished = run
        .events
        .iter()
        .find_map(|e| match e {
            Event::UserdataFinished { exit, failed, .. } => Some((*exit, failed.clone())),
            _ => None,
        })
        .unwrap();
    assert_eq!(finished, (3, vec!["setup.sh".to_string()]));
    assert!(
        run.events.iter().any(|e| matches!(e, Event::Warning { message } if message.contains("'packages' is not supported"))),
        "{n:?}"
    );
    // Output on the console and in the log.
    for text in [
        "setup: hello from user-data",
        "setup: to stderr",
        "runcmd-ran",
        "argv form",
    ] {
        assert!(run.stdout.contains(text), "console lacks {text:?}");
    }
    let log = std::fs::read_to_string(img.path().join("var/log/cloud-init-output.log")).unwrap();
    assert!(log.contains("setup: hello from user-data"), "{log}");
    assert!(log.contains("runcmd-ran"), "{log}");
    let greeting = img.path().join("etc/kumo-test/greeting");
    assert_eq!(
        std::fs::read_to_string(&greeting).unwrap(),
        "hello from write_files\n"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&greeting).unwrap().permissions().mode() & 0o777,
        0o640
    );
    // No SSH server in this image: the metadata key is not installed.
    assert!(!img.path().join("root/.ssh/authorized_keys").exists());

    // A second boot of the same instance does not run the user-data again.
    let again = run_agent(&server, img.path(), &[]);
    assert_eq!(again.code, 0);
    assert!(names(&again.events).contains(&"userdata-skipped".to_string()));
    assert!(!names(&again.events).contains(&"userdata-started".to_string()));
}

#[test]
fn keys_are_installed_when_the_image_has_sshd() {
    let img = image();
    let sshd = img.path().join("usr/sbin/sshd");
    std::fs::create_dir_all(sshd.parent().unwrap()).unwrap();
    std::fs::write(&sshd, "#!/bin/sh\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&sshd, std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = ImdsServer::start(TokenMode::Optional, instance_meta("i-1", "10.0.1.7"), None);
    let run = run_agent(&server, img.path(), &[]);
    assert_eq!(run.code, 0);
    assert!(run.events.contains(&Event::SshKeysInstalled {
        user: "root".into(),
        path: "/root/.ssh/authorized_keys".into(),
        count: 1
    }));
    assert!(run.events.contains(&Event::UserdataSkipped {
        reason: "the instance has no user-data".into()
    }));
    let keys = std::fs::read_to_string(img.path().join("root/.ssh/authorized_keys")).unwrap();
    assert!(keys.contains("test-key"));
}

#[test]
fn oversized_user_data_is_rejected_with_the_reason() {
    let img = image();
    let mut big = b"#!/bin/sh\necho never\n".to_vec();
    big.resize(20_000, b'#');
    let server = ImdsServer::start(
        TokenMode::Required,
        instance_meta("i-2", "10.0.1.8"),
        Some(big),
    );
    let run = run_agent(&server, img.path(), &[]);
    assert_eq!(run.code, 1);
    let reason = run
        .events
        .iter()
        .find_map(|e| match e {
            Event::UserdataRejected { reason } => Some(reason.clone()),
            _ => None,
        })
        .unwrap();
    assert!(
        reason.contains("20000 bytes") && reason.contains("16384"),
        "{reason}"
    );
    assert!(!run.stdout.contains("never\n"));
}

#[test]
fn gzip_user_data_runs() {
    let img = image();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(b"#!/bin/sh\necho compressed-script-ran\n")
        .unwrap();
    let server = ImdsServer::start(
        TokenMode::Required,
        instance_meta("i-3", "10.0.1.9"),
        Some(e.finish().unwrap()),
    );
    let run = run_agent(&server, img.path(), &[]);
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains("compressed-script-ran"));
}

#[test]
fn bad_user_data_is_reported_and_boot_finishes() {
    let img = image();
    // Not executable (no #!), a hanging script that times out, and a non-UTF-8 cloud-config.
    let user_data = "Content-Type: multipart/mixed; boundary=B\nMIME-Version: 1.0\n\n\
--B\nContent-Type: text/plain\n\necho no shebang\n\
--B\nContent-Type: text/x-shellscript\nContent-Disposition: attachment; filename=\"hang.sh\"\n\n#!/bin/sh\necho hanging\nsleep 600\n\
--B\nContent-Type: text/cloud-config\nContent-Transfer-Encoding: base64\n\nI2Nsb3VkLWNvbmZpZwpob3N0bmFtZTog/wo=\n\
--B--\n";
    let server = ImdsServer::start(
        TokenMode::Required,
        instance_meta("i-4", "10.0.1.10"),
        Some(user_data.as_bytes().to_vec()),
    );
    let run = run_agent(&server, img.path(), &["--script-timeout", "1"]);
    let failed: Vec<(String, String)> = run
        .events
        .iter()
        .filter_map(|e| match e {
            Event::UserdataPartFailed { part, reason } => Some((part.clone(), reason.clone())),
            _ => None,
        })
        .collect();
    assert!(
        failed
            .iter()
            .any(|(p, r)| p == "part-001" && r.contains("not executable")),
        "{failed:?}"
    );
    assert!(
        failed
            .iter()
            .any(|(p, r)| p == "part-003" && r.contains("not UTF-8")),
        "{failed:?}"
    );
    assert!(run.events.iter().any(|e| matches!(e,
        Event::ScriptFinished { script, reason: Some(r), .. } if script == "hang.sh" && r.contains("did not finish within 1s"))));
    assert_ne!(run.code, 0);
    assert!(names(&run.events).contains(&"userdata-finished".to_string()));
}

#[test]
fn metadata_that_never_answers_is_a_clear_message() {
    let img = image();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_kumo-agent"))
        .args([
            "--service",
            "--imds",
            &format!("127.0.0.1:{port}"),
            "--imds-timeout",
            "1",
        ])
        .arg("--root")
        .arg(img.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "boot goes on");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains(r#""event":"metadata-unavailable""#),
        "{stdout}"
    );
    assert!(
        stderr.contains("did not answer") && stderr.contains("without metadata"),
        "{stderr}"
    );
}

#[test]
fn check_userdata_command() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("ud");
    std::fs::write(&f, MULTIPART).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kumo-agent"))
        .arg("check-userdata")
        .arg(&f)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("setup.sh: script"), "{text}");
    assert!(
        text.contains("warning: cloud-config key 'packages'"),
        "{text}"
    );
    std::fs::write(&f, vec![b'#'; 17000]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kumo-agent"))
        .arg("check-userdata")
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("REJECTED:"));
}

#[test]
fn cloud_config_users_groups_sudo_and_keys() {
    let img = image();
    std::fs::create_dir_all(img.path().join("etc/sudoers.d")).unwrap();
    let user_data = r#"#cloud-config
users:
  - default
  - name: alice
    groups: wheel, docker
    sudo: ALL=(ALL) NOPASSWD:ALL
    shell: /bin/sh
    ssh_authorized_keys:
      - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAlice alice@laptop
ssh_authorized_keys:
  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIRoot root@laptop
"#;
    let server = ImdsServer::start(
        TokenMode::Required,
        instance_meta("i-5", "10.0.1.11"),
        Some(user_data.as_bytes().to_vec()),
    );
    let run = run_agent(&server, img.path(), &[]);
    assert_eq!(run.code, 0);
    let r = img.path();
    let passwd = std::fs::read_to_string(r.join("etc/passwd")).unwrap();
    assert!(
        passwd.contains("alice:x:1000:1000::/home/alice:/bin/sh"),
        "{passwd}"
    );
    let group = std::fs::read_to_string(r.join("etc/group")).unwrap();
    assert!(group.contains("wheel:x:1001:alice"), "{group}");
    assert!(group.contains("docker:x:1002:alice"), "{group}");
    let sudoers = std::fs::read_to_string(r.join("etc/sudoers.d/90-cloud-init-users")).unwrap();
    assert!(sudoers.contains("alice ALL=(ALL) NOPASSWD:ALL"));
    let alice_keys = std::fs::read_to_string(r.join("home/alice/.ssh/authorized_keys")).unwrap();
    assert!(alice_keys.contains("alice@laptop"));
    // Top-level keys go to the default user (root in an image without ec2-user/admin).
    let root_keys = std::fs::read_to_string(r.join("root/.ssh/authorized_keys")).unwrap();
    assert!(root_keys.contains("root@laptop"));
    assert!(run.events.contains(&Event::SshKeysInstalled {
        user: "alice".into(),
        path: "/home/alice/.ssh/authorized_keys".into(),
        count: 1
    }));
}

#[test]
fn boothooks_and_bootcmd_run_every_boot_the_rest_once() {
    let img = image();
    let user_data = "Content-Type: multipart/mixed; boundary=B\nMIME-Version: 1.0\n\n\
--B\nContent-Type: text/cloud-boothook\n\n#cloud-boothook\necho early-hook-ran\n\
--B\nContent-Type: text/cloud-config\n\n#cloud-config\nbootcmd: [echo bootcmd-ran]\nruncmd: [echo runcmd-ran]\n\
--B--\n";
    let server = ImdsServer::start(
        TokenMode::Required,
        instance_meta("i-6", "10.0.1.12"),
        Some(user_data.as_bytes().to_vec()),
    );
    let first = run_agent(&server, img.path(), &[]);
    assert_eq!(first.code, 0);
    for text in ["early-hook-ran", "bootcmd-ran", "runcmd-ran"] {
        assert!(first.stdout.contains(text), "first boot lacks {text}");
    }
    let second = run_agent(&server, img.path(), &[]);
    assert!(second.stdout.contains("early-hook-ran"));
    assert!(second.stdout.contains("bootcmd-ran"));
    assert!(!second.stdout.contains("runcmd-ran"));
}
