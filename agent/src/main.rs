//! kumo-agent: the in-guest init and agent. See the library's documentation for what it does.
//!
//! ```text
//! kumo-agent                      as PID 1: init mode (mounts, DHCP, reaping, shutdown)
//! kumo-agent --service [OPTIONS]  as a service: metadata, hostname, keys, user-data, then exit
//! kumo-agent check-userdata FILE  show how user-data would be decoded and what is wrong with it
//! ```

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use kumo_agent::agent::{self, Settings};
use kumo_agent::cloudconfig::CloudConfig;
use kumo_agent::exec::{Children, Reaping};
use kumo_agent::report::{Event, Mode, Reporter};
use kumo_agent::userdata::{self, PartKind};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

const USAGE: &str = "\
usage: kumo-agent                       run as init (PID 1)
       kumo-agent --service [OPTIONS]   fetch metadata and run user-data, then exit
       kumo-agent check-userdata FILE   check user-data before launching an instance

service options:
  --imds ADDR[:PORT]      metadata service (default 169.254.169.254:80)
  --imds-timeout SECS     how long to wait for it (default 60)
  --script-timeout SECS   limit for each user-data script (default 3600)
  --root DIR              apply to the image under DIR instead of / (testing)
  --network IFACE         run DHCP on IFACE first (as init does)

Settings also come from kumo.KEY=VALUE on the kernel command line and KUMO_AGENT_KEY variables
(imds, imds_timeout, dhcp_timeout, script_timeout, iface, network). KUMO_AGENT_LOG sets the log
filter (default info).";

/// Console log lines: `kumo-agent[LEVEL]: message`.
struct ConsoleFormat;

impl<S, N> FormatEvent<S, N> for ConsoleFormat
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "kumo-agent[{}]: ", event.metadata().level())?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KUMO_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .event_format(ConsoleFormat)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The first report lines: `booted`, then a warning for each setting that was ignored.
fn report_booted(reporter: &Reporter, mode: Mode, ignored_settings: Vec<String>) {
    reporter.send(Event::Booted {
        version: env!("CARGO_PKG_VERSION").to_string(),
        mode,
    });
    for p in ignored_settings {
        reporter.send(Event::Warning {
            message: format!("setting ignored: {p}"),
        });
    }
}

fn env_settings() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("KUMO_AGENT_"))
        .collect()
}

fn main() {
    let start = Instant::now();
    let args: Vec<String> = std::env::args().skip(1).collect();
    // PID 1 is init mode, unless `--service` was asked for explicitly (a container's entry point).
    let is_pid1 = std::process::id() == 1;
    if is_pid1 && args.first().map(String::as_str) != Some("--service") {
        // Never exit: PID 1 exiting panics the kernel. Init mode ignores its arguments (the
        // kernel passes unknown boot parameters as arguments).
        init_logging();
        let mut settings = Settings::new(Mode::Init);
        // /proc is not mounted yet: read the command line after mounting.
        kumo_agent::init::mount_basics(&Reporter::stdout(start));
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        let problems = settings.load(&cmdline, &env_settings());
        let reporter = Reporter::stdout(start);
        report_booted(&reporter, Mode::Init, problems);
        kumo_agent::init::run(settings, reporter);
    }
    let code = match run_command(&args, start) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kumo-agent: error: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

fn run_command(args: &[String], start: Instant) -> Result<i32> {
    match args.first().map(String::as_str) {
        Some("--service") => service(&args[1..], start),
        Some("check-userdata") => {
            let file = args.get(1).context("check-userdata needs a FILE")?;
            check_userdata(&PathBuf::from(file))
        }
        Some("--version") | Some("-V") => {
            println!("kumo-agent {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        Some("--help") | Some("-h") => {
            println!("{USAGE}");
            Ok(0)
        }
        _ => {
            eprintln!("kumo-agent: not PID 1; use --service to run as a service\n\n{USAGE}");
            Ok(2)
        }
    }
}

fn service(args: &[String], start: Instant) -> Result<i32> {
    init_logging();
    let mut settings = Settings::new(Mode::Service);
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let problems = settings.load(&cmdline, &env_settings());
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .with_context(|| format!("{flag} needs a value"))
        };
        let result = match flag.as_str() {
            "--imds" => settings.apply("imds", &value()?),
            "--imds-timeout" => settings.apply("imds_timeout", &value()?),
            "--script-timeout" => settings.apply("script_timeout", &value()?),
            "--dhcp-timeout" => settings.apply("dhcp_timeout", &value()?),
            "--root" => {
                settings.root = PathBuf::from(value()?);
                Ok(())
            }
            "--network" => {
                settings.configure_network = true;
                settings.apply("iface", &value()?)
            }
            other => bail!("unknown option {other}\n\n{USAGE}"),
        };
        result.map_err(anyhow::Error::msg)?;
    }
    if !settings.root.is_dir() {
        bail!("--root {}: not a directory", settings.root.display());
    }
    let reporter = Reporter::stdout(start);
    report_booted(&reporter, Mode::Service, problems);
    let mut lease = None;
    if settings.configure_network {
        match agent::bring_up_network(&settings, &reporter) {
            Ok((_, _, l)) => lease = Some(l),
            Err(reason) => reporter.send(Event::NetworkFailed {
                interface: settings.interface.clone(),
                reason,
            }),
        }
    }
    let children = Children::new(Reaping::PerChild);
    Ok(agent::provision(
        &settings,
        &reporter,
        &children,
        lease.as_ref(),
    ))
}

fn check_userdata(path: &PathBuf) -> Result<i32> {
    let raw = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let parts = match userdata::decode(&raw) {
        Ok(p) => p,
        Err(e) => {
            println!("REJECTED: {e}");
            return Ok(1);
        }
    };
    println!("{} bytes, {} part(s)", raw.len(), parts.len());
    let mut bad = 0;
    for part in &parts {
        println!(
            "- {}: {} ({} bytes)",
            part.name,
            part.kind.label(),
            part.content.len()
        );
        match &part.kind {
            PartKind::Unsupported(reason) => {
                bad += 1;
                println!("    not run: {reason}");
            }
            PartKind::CloudConfig => match CloudConfig::parse(&part.content) {
                Ok(cfg) => {
                    println!(
                        "    bootcmd {}, runcmd {}, write_files {}, users {}, ssh keys {}",
                        cfg.bootcmd.len(),
                        cfg.runcmd.len(),
                        cfg.write_files.len(),
                        cfg.users.len(),
                        cfg.ssh_authorized_keys.len()
                    );
                    for w in cfg.warnings {
                        println!("    warning: {w}");
                    }
                }
                Err(e) => {
                    bad += 1;
                    println!("    error: {e}");
                }
            },
            _ => {
                if let Some(at) = part.utf8_error() {
                    println!("    warning: not valid UTF-8 (invalid byte at offset {at})");
                }
            }
        }
    }
    Ok(if bad > 0 { 1 } else { 0 })
}
