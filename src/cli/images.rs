//! `kumo images`: build kumo's guest images, list the catalog, print where an image's files are,
//! and register or deregister a user's own images.

use std::cell::RefCell;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use crate::images::build::{self, AgentChoice, BuildObserver, BuildOptions, BuildOutcome};
use crate::images::catalog::{Catalog, Entry, KernelChoice, RegisterImage};
use crate::images::recipes::Builtin;

#[derive(Debug, Args)]
pub struct ImagesArgs {
    #[command(subcommand)]
    pub command: ImagesCommand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// Build kumo's images into $KUMO_HOME/images: kernel, kumo-minimal, debian-12 (all of them
    /// if none is named). A build whose inputs have not changed is skipped.
    Build {
        /// Which images: kernel, kumo-minimal, debian-12.
        names: Vec<String>,
        /// Rebuild even if an identical build is in the catalog.
        #[arg(long)]
        force: bool,
        /// Parallel jobs for the kernel build (default: all CPUs).
        #[arg(long)]
        jobs: Option<usize>,
        /// Put this static kumo-agent into kumo-minimal (default: $KUMO_AGENT, else the
        /// repository's agent/build-static).
        #[arg(long, conflicts_with = "no_agent")]
        agent: Option<PathBuf>,
        /// Use busybox init in kumo-minimal instead of kumo-agent.
        #[arg(long)]
        no_agent: bool,
    },
    /// List the images and kernels in the catalog.
    List {
        #[arg(long, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Print the path of an image's root disk, or of a kernel: NAME is `kernel`, an image name
    /// (kumo-minimal, debian-12, ...), an ami- or an aki- id.
    Path {
        name: String,
        /// Print the path of the kernel the image boots instead of its root disk.
        #[arg(long)]
        kernel: bool,
    },
    /// Register your own raw ext4 root disk (and optionally kernel) as an image (RegisterImage).
    Register {
        /// The image's name (3-128 characters: letters, digits, spaces and ()[]./-'@_).
        #[arg(long)]
        name: String,
        /// A raw ext4 image (whole disk, no partition table) to boot as /dev/vda.
        #[arg(long)]
        root_disk: PathBuf,
        /// Your own kernel: an x86_64 ELF vmlinux (PVH) or a bzImage. Default: kumo's kernel.
        #[arg(long, conflicts_with = "kernel_id")]
        kernel: Option<PathBuf>,
        /// A kernel already in the catalog (aki-...).
        #[arg(long)]
        kernel_id: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// The kernel command line the image needs (default: kumo's).
        #[arg(long)]
        kernel_params: Option<String>,
        #[arg(long, default_value = "x86_64")]
        architecture: String,
        /// Skip the `e2fsck -fn` check of the root disk.
        #[arg(long)]
        no_fsck: bool,
        #[arg(long, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Remove an image (by name or ami- id) from the catalog (DeregisterImage).
    Deregister { image: String },
}

pub fn run(args: ImagesArgs) -> Result<()> {
    let catalog = Catalog::open_default()?;
    match args.command {
        ImagesCommand::Build {
            names,
            force,
            jobs,
            agent,
            no_agent,
        } => {
            let targets = if names.is_empty() {
                Builtin::ALL.to_vec()
            } else {
                names
                    .iter()
                    .map(|n| {
                        Builtin::from_name(n).with_context(|| {
                            format!(
                                "no built-in image {n:?}: choose from {}",
                                Builtin::ALL.map(|b| b.name()).join(", ")
                            )
                        })
                    })
                    .collect::<Result<Vec<_>>>()?
            };
            let opts = BuildOptions {
                force,
                jobs,
                agent: match (agent, no_agent) {
                    (Some(path), _) => AgentChoice::File(path),
                    (None, true) => AgentChoice::StandIn,
                    (None, false) => AgentChoice::Auto,
                },
            };
            let observer = Progress::new();
            let outcomes = build::build(&catalog, &targets, &opts, &observer)?;
            for outcome in outcomes.iter().filter(|o| targets.contains(&o.builtin)) {
                println!(
                    "{}\t{}\t{}",
                    outcome.builtin.name(),
                    entry_id(&outcome.entry),
                    catalog.entry_path(&outcome.entry).display()
                );
            }
            Ok(())
        }
        ImagesCommand::List { output } => list(&catalog, output),
        ImagesCommand::Path { name, kernel } => {
            let entry = catalog.resolve(&name)?;
            let path = match (&entry, kernel) {
                (Entry::Image(image), true) => {
                    catalog.kernel_path(&catalog.kernel(&image.kernel_id)?)
                }
                (Entry::Kernel(_), true) => bail!("{name} is a kernel already; drop --kernel"),
                (_, false) => catalog.entry_path(&entry),
            };
            println!("{}", path.display());
            Ok(())
        }
        ImagesCommand::Register {
            name,
            root_disk,
            kernel,
            kernel_id,
            description,
            kernel_params,
            architecture,
            no_fsck,
            output,
        } => {
            let request = RegisterImage {
                name,
                description,
                root_disk,
                kernel: match (kernel, kernel_id) {
                    (Some(path), _) => KernelChoice::File(path),
                    (None, Some(id)) => KernelChoice::Id(id),
                    (None, None) => KernelChoice::Builtin,
                },
                kernel_params,
                architecture: Some(architecture),
                fsck: !no_fsck,
            };
            let image = catalog.register(&request)?;
            match output {
                OutputFormat::Json => {
                    println!("{}", serde_json::to_string_pretty(&image)?);
                }
                OutputFormat::Table => println!("{}", image.image_id),
            }
            Ok(())
        }
        ImagesCommand::Deregister { image } => {
            let removed = catalog.deregister(&image)?;
            eprintln!("deregistered {} ({})", removed.image_id, removed.name);
            Ok(())
        }
    }
}

fn entry_id(entry: &Entry) -> &str {
    match entry {
        Entry::Image(i) => &i.image_id,
        Entry::Kernel(k) => &k.kernel_id,
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

fn list(catalog: &Catalog, output: OutputFormat) -> Result<()> {
    let images = catalog.images()?;
    let kernels = catalog.kernels()?;
    if output == OutputFormat::Json {
        let with_path = |value: serde_json::Value, key: &str, path: PathBuf| {
            let mut value = value;
            if let Some(obj) = value.as_object_mut() {
                obj.insert(key.into(), path.display().to_string().into());
            }
            value
        };
        let images: Vec<_> = images
            .iter()
            .map(|i| {
                with_path(
                    serde_json::to_value(i).expect("serializable"),
                    "RootDiskPath",
                    catalog.root_disk_path(i),
                )
            })
            .collect();
        let kernels: Vec<_> = kernels
            .iter()
            .map(|k| {
                with_path(
                    serde_json::to_value(k).expect("serializable"),
                    "Path",
                    catalog.kernel_path(k),
                )
            })
            .collect();
        let doc = serde_json::json!({ "Images": images, "Kernels": kernels });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    if images.is_empty() && kernels.is_empty() {
        eprintln!(
            "the catalog at {} is empty: build kumo's images with `kumo images build`",
            catalog.root().display()
        );
        return Ok(());
    }
    let mut rows = vec![[
        "NAME".to_owned(),
        "IMAGE ID".into(),
        "KERNEL ID".into(),
        "SIZE".into(),
        "CREATED".into(),
        "DESCRIPTION".into(),
    ]];
    for i in &images {
        rows.push([
            i.name.clone(),
            i.image_id.clone(),
            i.kernel_id.clone(),
            mib(i.root_disk_size),
            i.creation_date.clone(),
            i.description.clone(),
        ]);
    }
    print_table(&rows);
    if !kernels.is_empty() {
        println!();
        let mut rows = vec![[
            "KERNEL ID".to_owned(),
            "NAME".into(),
            "FORMAT".into(),
            "SIZE".into(),
            "CREATED".into(),
            "DESCRIPTION".into(),
        ]];
        for k in &kernels {
            rows.push([
                k.kernel_id.clone(),
                k.name.clone(),
                match k.format {
                    crate::images::validate::KernelFormat::Elf { pvh: true } => "ELF (PVH)".into(),
                    crate::images::validate::KernelFormat::Elf { pvh: false } => "ELF".into(),
                    crate::images::validate::KernelFormat::BzImage { protocol } => {
                        format!("bzImage {}.{:02}", protocol >> 8, protocol & 0xff)
                    }
                },
                mib(k.size),
                k.creation_date.clone(),
                k.description.clone(),
            ]);
        }
        print_table(&rows);
    }
    Ok(())
}

fn print_table<const N: usize>(rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", line.trim_end());
    }
}

/// The build's progress on stderr: a spinner per image with its step and latest output line on a
/// terminal; one line per step otherwise (CI logs).
struct Progress {
    interactive: bool,
    bar: RefCell<Option<(ProgressBar, String)>>,
}

impl Progress {
    fn new() -> Self {
        Progress {
            interactive: std::io::stderr().is_terminal(),
            bar: RefCell::new(None),
        }
    }

    fn set_step(&self, builtin: Builtin, step: &str) {
        if let Some((bar, current)) = self.bar.borrow_mut().as_mut() {
            *current = step.to_owned();
            bar.set_message(step.to_owned());
        }
        if !self.interactive {
            eprintln!("[{}] {step}", builtin.name());
        }
    }
}

fn short(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

impl BuildObserver for Progress {
    fn waiting_for_lock(&self) {
        eprintln!("waiting for another `kumo images` command to finish with the catalog...");
    }

    fn started(&self, builtin: Builtin) {
        if self.interactive {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner:.cyan} [{elapsed_precise}] {prefix:.bold} {wide_msg}",
                )
                .expect("valid template"),
            );
            bar.set_prefix(builtin.name());
            bar.set_message("checking inputs");
            bar.enable_steady_tick(Duration::from_millis(120));
            *self.bar.borrow_mut() = Some((bar, "checking inputs".into()));
        }
    }

    fn step(&self, builtin: Builtin, step: &str) {
        self.set_step(builtin, step);
    }

    fn output(&self, _builtin: Builtin, line: &str) {
        if let Some((bar, step)) = self.bar.borrow().as_ref() {
            let line: String = line.trim().chars().take(100).collect();
            if !line.is_empty() {
                bar.set_message(format!("{step} | {line}"));
            }
        }
    }

    fn finished(&self, outcome: &BuildOutcome) {
        let what = if outcome.cached {
            format!("{} (up to date)", entry_id(&outcome.entry))
        } else {
            format!(
                "built {} in {}",
                entry_id(&outcome.entry),
                short(outcome.elapsed)
            )
        };
        match self.bar.borrow_mut().take() {
            Some((bar, _)) => bar.finish_with_message(what),
            None => eprintln!("[{}] {what}", outcome.builtin.name()),
        }
    }

    fn failed(&self, builtin: Builtin) {
        match self.bar.borrow_mut().take() {
            Some((bar, step)) => bar.abandon_with_message(format!("FAILED during: {step}")),
            None => eprintln!("[{}] FAILED", builtin.name()),
        }
    }
}
