//! `kumo images build`: runs the built-in recipes (see [`super::recipes`]) and installs what
//! they produce into the catalog, keyed by their inputs hash so that a second build with the same
//! inputs does nothing.
//!
//! A recipe runs as `bash <recipe>/build.sh` in a staging directory on the catalog's file system,
//! with its output (stdout and stderr, merged) streamed to `logs/<name>.log` and to a
//! [`BuildObserver`] (the CLI's progress display). Lines `::kumo-step:: TEXT` name the step that
//! is running. If the recipe fails, the error carries the step, the log's path and its last lines,
//! and the staging directory is removed: nothing half-built reaches the catalog.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::catalog::{
    ARCHITECTURE, Catalog, CatalogError, CatalogLock, Entry, Image, Kernel, ROOT_DEVICE_NAME,
    ROOT_DISK_FILE, now_iso8601,
};
use super::ids;
use super::recipes::{Builtin, DEFAULT_KERNEL_PARAMS, InputsHasher, SOURCE_DATE_EPOCH};
use super::validate::{self, KernelFormat};

/// Lines of a failed step's output that the error shows.
const TAIL_LINES: usize = 40;
const STEP_MARKER: &str = "::kumo-step:: ";

/// How `kumo images build` was asked to run.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Rebuild the requested images even if the catalog holds builds with the same inputs (the
    /// kernel an AMI needs is rebuilt only if it is requested too).
    pub force: bool,
    /// Parallel jobs for the kernel build (default: the number of CPUs).
    pub jobs: Option<usize>,
    /// Which kumo-agent goes into kumo-minimal.
    pub agent: AgentChoice,
}

/// Where kumo-minimal's kumo-agent comes from.
#[derive(Debug, Clone, Default)]
pub enum AgentChoice {
    /// `$KUMO_AGENT` if set; else the repository's `agent/build-static` if this kumo was built
    /// from a checkout that has it (or `$KUMO_REPO` points at one); else the busybox stand-in.
    #[default]
    Auto,
    /// This static kumo-agent binary.
    File(PathBuf),
    /// busybox init stands in for the agent.
    StandIn,
}

/// Progress reports from a build.
pub trait BuildObserver {
    /// Another process holds the catalog's lock; the build waits for it.
    fn waiting_for_lock(&self) {}
    /// `builtin` is being checked or built.
    fn started(&self, _builtin: Builtin) {}
    /// The recipe entered a new step.
    fn step(&self, _builtin: Builtin, _step: &str) {}
    /// A line of the recipe's output.
    fn output(&self, _builtin: Builtin, _line: &str) {}
    /// `builtin` is in the catalog (built now, or found by its inputs hash).
    fn finished(&self, _outcome: &BuildOutcome) {}
    /// `builtin` failed.
    fn failed(&self, _builtin: Builtin) {}
}

/// What one built-in image's build came to.
#[derive(Debug, Clone)]
pub struct BuildOutcome {
    pub builtin: Builtin,
    pub entry: Entry,
    /// Found in the catalog by its inputs hash; nothing was built.
    pub cached: bool,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Failed(Box<RecipeFailure>),
    #[error("{what} is missing: {fix}")]
    MissingInput { what: String, fix: String },
    #[error("cannot run {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("kumo-agent: {0}")]
    Agent(String),
    #[error("the kernel built at {path} is not what kumo boots: {reason}")]
    BadKernel { path: PathBuf, reason: String },
}

/// A recipe (or agent/build-static) that exited non-zero: where, why, and what it printed last.
#[derive(Debug, thiserror::Error)]
#[error(
    "building {name} failed during \"{step}\" ({status}); full log: {log}\n\
     --- last lines of its output ---\n{tail}{hint}"
)]
pub struct RecipeFailure {
    pub name: &'static str,
    pub step: String,
    pub status: String,
    pub log: PathBuf,
    pub tail: String,
    /// Advice when the output shows a known cause (a full disk, a network failure), with a
    /// leading newline; empty otherwise.
    pub hint: String,
}

/// `$PATH` plus the sbin directories where e2fsprogs lives, for the recipes and e2fsck.
pub fn tool_path() -> String {
    let mut path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    for dir in ["/usr/local/sbin", "/usr/sbin", "/sbin"] {
        if !path.split(':').any(|p| p == dir) {
            path.push(':');
            path.push_str(dir);
        }
    }
    path
}

/// Builds `targets` (and the kernel, which the AMIs name) into `catalog`, in the order of
/// [`Builtin::ALL`]. Returns one outcome per image checked, the kernel included.
pub fn build(
    catalog: &Catalog,
    targets: &[Builtin],
    opts: &BuildOptions,
    observer: &dyn BuildObserver,
) -> Result<Vec<BuildOutcome>, BuildError> {
    let lock = catalog.lock(|| observer.waiting_for_lock())?;
    let mut builder = Builder {
        catalog,
        lock: &lock,
        opts,
        observer,
    };
    let mut outcomes = Vec::new();
    let mut kernel: Option<Kernel> = None;
    for builtin in Builtin::ALL {
        let wanted = targets.contains(&builtin);
        let needed_as_kernel = builtin.is_kernel() && targets.iter().any(|t| !t.is_kernel());
        if !wanted && !needed_as_kernel {
            continue;
        }
        // --force rebuilds what was asked for, not the kernel an AMI merely needs.
        let force = opts.force && wanted;
        let outcome = builder.build_one(builtin, kernel.as_ref(), force)?;
        if let Entry::Kernel(k) = &outcome.entry {
            kernel = Some(k.clone());
        }
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

struct Builder<'a> {
    catalog: &'a Catalog,
    lock: &'a CatalogLock,
    opts: &'a BuildOptions,
    observer: &'a dyn BuildObserver,
}

/// Everything a recipe's run depends on, besides its own files.
struct Inputs {
    hash: String,
    env: Vec<(&'static str, String)>,
    described: Vec<String>,
    /// For kumo-minimal: how /sbin/init is provided, for the description.
    init_note: Option<String>,
}

impl Builder<'_> {
    fn build_one(
        &mut self,
        builtin: Builtin,
        kernel: Option<&Kernel>,
        force: bool,
    ) -> Result<BuildOutcome, BuildError> {
        let started = Instant::now();
        self.observer.started(builtin);
        let inputs = self.inputs(builtin, kernel)?;
        if !force && let Some(entry) = self.catalog.cached_build(builtin, &inputs.hash)? {
            let outcome = BuildOutcome {
                builtin,
                entry,
                cached: true,
                elapsed: started.elapsed(),
            };
            self.observer.finished(&outcome);
            return Ok(outcome);
        }
        self.explain_rebuild(builtin, &inputs, force)?;
        let result = self.run_recipe(builtin, kernel, &inputs);
        match result {
            Ok(entry) => {
                let outcome = BuildOutcome {
                    builtin,
                    entry,
                    cached: false,
                    elapsed: started.elapsed(),
                };
                self.observer.finished(&outcome);
                Ok(outcome)
            }
            Err(e) => {
                self.observer.failed(builtin);
                Err(e)
            }
        }
    }

    /// Says why `builtin` is being built: nothing was built before, --force, or which inputs
    /// changed since the build in the catalog.
    fn explain_rebuild(
        &self,
        builtin: Builtin,
        inputs: &Inputs,
        force: bool,
    ) -> Result<(), BuildError> {
        let why = match self.catalog.previous_inputs(builtin)? {
            _ if force => "--force".to_owned(),
            None => "not built yet".to_owned(),
            Some(before) => {
                let changed: Vec<&str> = inputs
                    .described
                    .iter()
                    .filter(|now| !before.contains(now))
                    .map(|now| now.split(':').next().unwrap_or(now))
                    .collect();
                if changed.is_empty() {
                    "its recipe changed".to_owned()
                } else {
                    format!("changed: {}", changed.join(", "))
                }
            }
        };
        self.observer.step(builtin, &format!("building ({why})"));
        Ok(())
    }

    fn inputs(&self, builtin: Builtin, kernel: Option<&Kernel>) -> Result<Inputs, BuildError> {
        let mut h = InputsHasher::new(builtin);
        let mut env: Vec<(&'static str, String)> = Vec::new();
        let mut init_note = None;
        match builtin {
            Builtin::Kernel => {
                let tarball = std::env::var("KUMO_LINUX_SOURCE")
                    .unwrap_or_else(|_| "/usr/src/linux-source-6.1.tar.xz".into());
                let meta = fs::metadata(&tarball).map_err(|_| BuildError::MissingInput {
                    what: format!("the kernel source {tarball}"),
                    fix: "apt-get install linux-source-6.1 (or run scripts/install-deps)".into(),
                })?;
                let mtime = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs());
                h.value(
                    "linux-source",
                    &format!("{tarball} size={} mtime={mtime}", meta.len()),
                );
                h.value("gcc", &first_line_of("gcc", &["--version"]));
                h.value("binutils", &first_line_of("ld", &["--version"]));
                env.push(("KUMO_LINUX_SOURCE", tarball));
            }
            Builtin::KumoMinimal | Builtin::Debian12 => {
                let kernel = kernel.expect("the kernel is built before the AMIs");
                h.value("kernel", &kernel.kernel_id);
                h.value("e2fsprogs", &first_line_of("mke2fs", &["-V"]));
            }
        }
        match builtin {
            Builtin::Kernel => {}
            Builtin::KumoMinimal => {
                let busybox =
                    std::env::var("KUMO_BUSYBOX").unwrap_or_else(|_| "/bin/busybox".into());
                let sha = ids::sha256_file(Path::new(&busybox)).map_err(|_| {
                    BuildError::MissingInput {
                        what: format!("busybox ({busybox})"),
                        fix: "apt-get install busybox-static".into(),
                    }
                })?;
                h.value("busybox", &sha);
                env.push(("KUMO_BUSYBOX", busybox));
                match self.resolve_agent(builtin)? {
                    Some(agent) => {
                        let sha = ids::sha256_file(&agent).map_err(|e| {
                            BuildError::Agent(format!("cannot read {}: {e}", agent.display()))
                        })?;
                        h.value("kumo-agent", &sha);
                        init_note = Some(format!("init: kumo-agent {}", &sha[..12]));
                        env.push(("KUMO_AGENT", agent.display().to_string()));
                    }
                    None => {
                        h.value("kumo-agent", "none: busybox init stands in");
                        init_note =
                            Some("init: busybox stand-in (kumo-agent was not available)".into());
                        env.push(("KUMO_AGENT", String::new()));
                    }
                }
            }
            Builtin::Debian12 => {
                for (var, default) in [
                    ("KUMO_DEBIAN_MIRROR", "http://deb.debian.org/debian"),
                    (
                        "KUMO_DEBIAN_SECURITY_MIRROR",
                        "http://deb.debian.org/debian-security",
                    ),
                ] {
                    let value = std::env::var(var).unwrap_or_else(|_| default.into());
                    h.value(var, &value);
                    env.push((var, value));
                }
                h.value("mmdebstrap", &first_line_of("mmdebstrap", &["--version"]));
            }
        }
        let described = h.described().to_vec();
        Ok(Inputs {
            hash: h.finish(),
            env,
            described,
            init_note,
        })
    }

    /// The static kumo-agent to install, or `None` for the busybox stand-in.
    fn resolve_agent(&self, builtin: Builtin) -> Result<Option<PathBuf>, BuildError> {
        let from_env = std::env::var_os("KUMO_AGENT").filter(|v| !v.is_empty());
        match (&self.opts.agent, from_env) {
            (AgentChoice::StandIn, _) => Ok(None),
            (AgentChoice::File(path), _) => check_agent(path).map(Some),
            (AgentChoice::Auto, Some(path)) => check_agent(Path::new(&path)).map(Some),
            (AgentChoice::Auto, None) => {
                let Some(script) = agent_build_script() else {
                    tracing::warn!(
                        "agent/build-static not found (set KUMO_REPO to a kumo checkout, or \
                         KUMO_AGENT to a static kumo-agent): kumo-minimal gets busybox init as a \
                         stand-in"
                    );
                    return Ok(None);
                };
                self.observer.step(
                    builtin,
                    &format!("building kumo-agent ({})", script.display()),
                );
                let path = run_agent_build(&script, &self.catalog.logs_dir())?;
                check_agent(&path).map(Some)
            }
        }
    }

    fn run_recipe(
        &self,
        builtin: Builtin,
        kernel: Option<&Kernel>,
        inputs: &Inputs,
    ) -> Result<Entry, BuildError> {
        let name = builtin.name();
        let staging_dir = self.catalog.staging_dir();
        if let Ok(free) = super::catalog::free_bytes(&staging_dir)
            && free < builtin.space_needed()
        {
            return Err(CatalogError::DiskFull {
                path: staging_dir,
                detail: format!(
                    "building {name} needs about {} MiB there, {} MiB are free",
                    builtin.space_needed() >> 20,
                    free >> 20
                ),
            }
            .into());
        }
        let stage = self.catalog.stage(self.lock, &format!("build-{name}"))?;
        let recipe_dir = stage.path().join("recipe");
        let work = stage.path().join("work");
        let out = stage.path().join("out");
        for file in builtin.all_files() {
            let path = recipe_dir.join(file.path);
            let parent = path.parent().expect("recipe paths have a parent");
            fs::create_dir_all(parent).map_err(CatalogError::io("create", parent))?;
            fs::write(&path, file.contents).map_err(CatalogError::io("write", &path))?;
            let mode = if file.path.ends_with(".sh") {
                0o755
            } else {
                0o644
            };
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .map_err(CatalogError::io("chmod", &path))?;
        }
        for dir in [&work, &out] {
            fs::create_dir(dir).map_err(CatalogError::io("create", dir))?;
        }

        let log_path = self.catalog.logs_dir().join(format!("{name}.log"));
        let mut log = File::create(&log_path).map_err(CatalogError::io("create", &log_path))?;
        let _ = writeln!(log, "# kumo images build {name}, {}", now_iso8601());
        for line in &inputs.described {
            let _ = writeln!(log, "# input {line}");
        }
        let _ = writeln!(log, "# inputs hash {}", inputs.hash);

        let jobs = self
            .opts
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        let mut cmd = Command::new("bash");
        cmd.arg(recipe_dir.join(builtin.script()))
            .current_dir(stage.path())
            .stdin(Stdio::null())
            .env("PATH", tool_path())
            .env("KUMO_RECIPE_DIR", &recipe_dir)
            .env("KUMO_WORK", &work)
            .env("KUMO_OUT", &out)
            .env("KUMO_IMAGE_NAME", name)
            .env("KUMO_JOBS", jobs.to_string())
            .env("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH.to_string());
        for (k, v) in &inputs.env {
            cmd.env(k, v);
        }
        self.run_streaming(builtin, cmd, &mut log, &log_path)?;

        // Move the artefacts to their own staging directory and let the build tree go.
        let install = self.catalog.stage(self.lock, &format!("install-{name}"))?;
        let artefact_src = out.join(builtin.artefact());
        let artefact = install.path().join(builtin.artefact());
        fs::rename(&artefact_src, &artefact).map_err(|_| {
            BuildError::Failed(Box::new(RecipeFailure {
                name,
                step: "collecting the artefact".into(),
                status: "the recipe exited 0".into(),
                log: log_path.clone(),
                tail: format!("the recipe did not write {}", artefact_src.display()),
                hint: String::new(),
            }))
        })?;
        let mut release = None;
        for extra in ["config", "release", "packages.txt"] {
            let src = out.join(extra);
            if src.exists() {
                if extra == "release" {
                    release = fs::read_to_string(&src).ok().map(|s| s.trim().to_owned());
                }
                let dest = install.path().join(extra);
                fs::rename(&src, &dest).map_err(CatalogError::io("move", &src))?;
            }
        }
        drop(stage);

        self.observer
            .step(builtin, "hashing and installing into the catalog");
        let size = fs::metadata(&artefact)
            .map_err(CatalogError::io("stat", &artefact))?
            .len();
        let sha256 = ids::sha256_file(&artefact).map_err(CatalogError::io("read", &artefact))?;
        let origin = super::catalog::Origin::Built {
            inputs_hash: inputs.hash.clone(),
            inputs: inputs.described.clone(),
        };
        if builtin.is_kernel() {
            let format = validate::check_kernel(&artefact).map_err(CatalogError::from)?;
            if format != (KernelFormat::Elf { pvh: true }) {
                return Err(BuildError::BadKernel {
                    path: artefact,
                    reason: format!("{format:?}; expected an ELF vmlinux with a PVH entry note"),
                });
            }
            let kernel = Kernel {
                kernel_id: ids::kernel_id(&sha256),
                name: name.into(),
                description: match &release {
                    Some(r) => format!("{} [{r}]", builtin.description()),
                    None => builtin.description().into(),
                },
                format,
                release,
                creation_date: now_iso8601(),
                size,
                sha256,
                origin,
            };
            self.catalog.install_kernel(self.lock, install, &kernel)?;
            Ok(Entry::Kernel(kernel))
        } else {
            debug_assert_eq!(builtin.artefact(), ROOT_DISK_FILE);
            validate::check_root_disk(&artefact).map_err(CatalogError::from)?;
            let kernel = kernel.expect("the kernel is built before the AMIs");
            let description = match &inputs.init_note {
                Some(note) => format!("{} ({note})", builtin.description()),
                None => builtin.description().into(),
            };
            let image = Image {
                image_id: ids::image_id(name, &kernel.kernel_id, &sha256),
                name: name.into(),
                description,
                architecture: ARCHITECTURE.into(),
                root_device_name: ROOT_DEVICE_NAME.into(),
                kernel_id: kernel.kernel_id.clone(),
                creation_date: now_iso8601(),
                state: "available".into(),
                root_disk_size: size,
                root_disk_sha256: sha256,
                kernel_params: DEFAULT_KERNEL_PARAMS.into(),
                origin,
            };
            self.catalog.install_image(self.lock, install, &image)?;
            Ok(Entry::Image(image))
        }
    }

    /// Runs `cmd` with stdout and stderr merged, each line to the log and the observer.
    fn run_streaming(
        &self,
        builtin: Builtin,
        mut cmd: Command,
        log: &mut File,
        log_path: &Path,
    ) -> Result<(), BuildError> {
        let spawn_err = |source| BuildError::Spawn {
            what: format!("the {} recipe (bash)", builtin.name()),
            source,
        };
        let (reader, writer) = io::pipe().map_err(spawn_err)?;
        let writer2 = writer.try_clone().map_err(spawn_err)?;
        cmd.stdout(writer).stderr(writer2);
        let mut child = cmd.spawn().map_err(spawn_err)?;
        drop(cmd); // closes our copies of the pipe's write end, so reading ends with the child
        let mut step = "starting".to_owned();
        let mut tail: VecDeque<String> = VecDeque::with_capacity(TAIL_LINES);
        let started = Instant::now();
        for line in BufReader::new(reader).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches('\r');
            if line.starts_with(STEP_MARKER) {
                // Step lines carry the time since the recipe started, for `bench/images`.
                let _ = writeln!(log, "{line} [at {:.1}s]", started.elapsed().as_secs_f64());
            } else {
                let _ = writeln!(log, "{line}");
            }
            if let Some(text) = line.strip_prefix(STEP_MARKER) {
                step = text.to_owned();
                self.observer.step(builtin, text);
            } else {
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line.to_owned());
                self.observer.output(builtin, line);
            }
        }
        let status = child.wait().map_err(spawn_err)?;
        let _ = writeln!(
            log,
            "{STEP_MARKER}recipe exited ({status}) [at {:.1}s]",
            started.elapsed().as_secs_f64()
        );
        let _ = log.flush();
        if status.success() {
            return Ok(());
        }
        let tail = tail.into_iter().collect::<Vec<_>>().join("\n");
        let hint = failure_hint(&tail, self.catalog.root());
        Err(BuildError::Failed(Box::new(RecipeFailure {
            name: builtin.name(),
            step,
            status: status.to_string(),
            log: log_path.to_owned(),
            tail,
            hint,
        })))
    }
}

/// Advice for a failed recipe whose output shows a cause the user can fix.
fn failure_hint(output: &str, catalog_root: &Path) -> String {
    if output.contains("No space left on device") || output.contains("Disk quota exceeded") {
        format!(
            "\nhint: the disk is full: free space on the file system holding {} (builds stage \
             there), or point KUMO_HOME at a larger one",
            catalog_root.display()
        )
    } else if output.contains("Temporary failure resolving")
        || output.contains("Could not resolve")
        || output.contains("Failed to fetch")
    {
        "\nhint: downloading Debian packages failed: check the network and the mirror \
         (KUMO_DEBIAN_MIRROR, default http://deb.debian.org/debian)"
            .into()
    } else {
        String::new()
    }
}

/// The first line a tool prints (stdout, else stderr) for `args`, or why it could not run:
/// part of an inputs hash, so a changed tool means a rebuild.
fn first_line_of(tool: &str, args: &[&str]) -> String {
    match Command::new(tool)
        .args(args)
        .env("PATH", tool_path())
        .output()
    {
        Ok(out) => {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        }
        Err(e) => format!("{tool}: {e}"),
    }
}

/// The repository's `agent/build-static`, found through `$KUMO_REPO` or the checkout this kumo
/// was compiled from.
fn agent_build_script() -> Option<PathBuf> {
    let repos = [
        std::env::var_os("KUMO_REPO").map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR"))),
    ];
    repos
        .into_iter()
        .flatten()
        .map(|repo| repo.join("agent/build-static"))
        .find(|script| {
            fs::metadata(script).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Runs `agent/build-static` and returns the path it prints last.
fn run_agent_build(script: &Path, logs: &Path) -> Result<PathBuf, BuildError> {
    let log_path = logs.join("kumo-agent.log");
    let log = File::create(&log_path).map_err(CatalogError::io("create", &log_path))?;
    let out = Command::new(script)
        .stdin(Stdio::null())
        .stderr(log)
        .output()
        .map_err(|source| BuildError::Spawn {
            what: script.display().to_string(),
            source,
        })?;
    if !out.status.success() {
        let text = fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        return Err(BuildError::Failed(Box::new(RecipeFailure {
            name: "kumo-agent",
            step: format!("{} ({})", script.display(), "agent/build-static"),
            status: out.status.to_string(),
            log: log_path.clone(),
            tail: lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n"),
            hint: String::new(),
        })));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .ok_or_else(|| {
            BuildError::Agent(format!(
                "{} succeeded but printed no path",
                script.display()
            ))
        })?;
    Ok(PathBuf::from(last.trim()))
}

fn check_agent(path: &Path) -> Result<PathBuf, BuildError> {
    let meta = fs::metadata(path).map_err(|e| {
        BuildError::Agent(format!(
            "{}: {e}: pass a static kumo-agent binary (agent/build-static builds one)",
            path.display()
        ))
    })?;
    if !meta.is_file() {
        return Err(BuildError::Agent(format!(
            "{} is not a file",
            path.display()
        )));
    }
    Ok(path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::catalog::Origin;
    use crate::images::validate::tests::elf_kernel;
    use std::sync::Mutex;

    /// Records what a build reported.
    #[derive(Default)]
    struct Recorder {
        steps: Mutex<Vec<String>>,
        lines: Mutex<usize>,
    }

    impl BuildObserver for Recorder {
        fn step(&self, builtin: Builtin, step: &str) {
            self.steps
                .lock()
                .unwrap()
                .push(format!("{}: {step}", builtin.name()));
        }
        fn output(&self, _builtin: Builtin, _line: &str) {
            *self.lines.lock().unwrap() += 1;
        }
    }

    /// Prints the SKIPPED line scripts/test collects, and says whether to skip.
    fn skip_unless(ok: bool, test: &str, reason: &str) -> bool {
        if !ok {
            kumo_testkit::skip(test, reason);
        }
        !ok
    }

    /// Puts a stand-in kernel into `catalog` whose record carries the real kernel recipe's inputs
    /// hash, so that AMI builds find "the kernel" built without spending minutes compiling it.
    fn fake_built_kernel(catalog: &Catalog) -> Kernel {
        let lock = catalog.lock(|| {}).unwrap();
        let opts = BuildOptions::default();
        let builder = Builder {
            catalog,
            lock: &lock,
            opts: &opts,
            observer: &Recorder::default(),
        };
        let inputs = builder.inputs(Builtin::Kernel, None).unwrap();
        let staging = catalog.stage(&lock, "fake-kernel").unwrap();
        let bytes = elf_kernel(true);
        fs::write(staging.path().join("vmlinux"), &bytes).unwrap();
        let sha256 = ids::sha256_bytes(&bytes);
        let kernel = Kernel {
            kernel_id: ids::kernel_id(&sha256),
            name: "kernel".into(),
            description: "test stand-in".into(),
            format: KernelFormat::Elf { pvh: true },
            release: None,
            creation_date: now_iso8601(),
            size: bytes.len() as u64,
            sha256,
            origin: Origin::Built {
                inputs_hash: inputs.hash,
                inputs: inputs.described,
            },
        };
        catalog.install_kernel(&lock, staging, &kernel).unwrap();
        kernel
    }

    fn image_of(outcome: &BuildOutcome) -> &Image {
        match &outcome.entry {
            Entry::Image(i) => i,
            other => panic!("expected an image, got {other:?}"),
        }
    }

    #[test]
    fn kumo_minimal_builds_reproducibly_caches_and_fails_cleanly() {
        let have = |p: &str| Path::new(p).exists();
        let tools = ["/usr/src/linux-source-6.1.tar.xz", "/bin/busybox"];
        let missing: Vec<_> = tools.iter().filter(|p| !have(p)).collect();
        let mke2fs = first_line_of("mke2fs", &["-V"]).starts_with("mke2fs");
        if skip_unless(
            missing.is_empty() && mke2fs,
            "images::build::kumo_minimal_builds_reproducibly_caches_and_fails_cleanly",
            &format!("needs {missing:?} and e2fsprogs (scripts/install-deps installs them)"),
        ) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path().join("images")).unwrap();
        let kernel = fake_built_kernel(&catalog);
        let opts = BuildOptions {
            agent: AgentChoice::StandIn,
            ..Default::default()
        };

        // First build: the kernel is found by its inputs hash, kumo-minimal is built.
        let rec = Recorder::default();
        let first = build(&catalog, &[Builtin::KumoMinimal], &opts, &rec).unwrap();
        assert_eq!(first.len(), 2);
        assert!(first[0].cached, "the kernel should come from the catalog");
        assert!(!first[1].cached);
        let image = image_of(&first[1]).clone();
        assert!(ids::is_valid(&image.image_id, ids::IMAGE_PREFIX));
        assert_eq!(image.kernel_id, kernel.kernel_id);
        assert_eq!(image.name, "kumo-minimal");
        assert_eq!(image.root_disk_size, 16 << 20);
        assert!(
            image.description.contains("busybox stand-in"),
            "{}",
            image.description
        );
        let disk = catalog.root_disk_path(&image);
        validate::check_root_disk(&disk).unwrap();
        assert!(validate::fsck_root_disk(&disk).unwrap());
        let steps = rec.steps.lock().unwrap().clone();
        assert!(
            steps
                .iter()
                .any(|s| s.contains("making a 16 MiB ext4 root disk")),
            "{steps:?}"
        );
        assert!(catalog.logs_dir().join("kumo-minimal.log").is_file());

        // Second build: nothing to do, same image.
        let second = build(
            &catalog,
            &[Builtin::KumoMinimal],
            &opts,
            &Recorder::default(),
        )
        .unwrap();
        assert!(second[1].cached);
        assert_eq!(image_of(&second[1]), &image);

        // Forced rebuild from scratch: bit-identical disk, so the same id.
        let forced = BuildOptions {
            force: true,
            ..opts.clone()
        };
        let third = build(
            &catalog,
            &[Builtin::KumoMinimal],
            &forced,
            &Recorder::default(),
        );
        let third = third.unwrap();
        assert!(!third[1].cached);
        assert_eq!(image_of(&third[1]).image_id, image.image_id);
        assert_eq!(image_of(&third[1]).root_disk_sha256, image.root_disk_sha256);
        assert_eq!(catalog.images().unwrap().len(), 1);

        // A failing recipe (a dynamically linked "agent") reports the step and the output, and
        // leaves the catalog as it was.
        let before = catalog.images().unwrap();
        let bad = BuildOptions {
            agent: AgentChoice::File("/bin/sh".into()),
            ..Default::default()
        };
        let err = build(
            &catalog,
            &[Builtin::KumoMinimal],
            &bad,
            &Recorder::default(),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, BuildError::Failed(_)), "{msg}");
        assert!(msg.contains("dynamically linked"), "{msg}");
        assert!(msg.contains("kumo-minimal.log"), "{msg}");
        assert_eq!(catalog.images().unwrap(), before);
        let staging: Vec<_> = fs::read_dir(catalog.root().join(".staging"))
            .unwrap()
            .collect();
        assert!(staging.is_empty(), "{staging:?}");
    }

    #[test]
    fn failures_with_known_causes_say_what_to_do() {
        let root = Path::new("/home/u/.local/share/kumo/images");
        let full = failure_hint("mke2fs: No space left on device while writing", root);
        assert!(
            full.contains("disk is full") && full.contains("KUMO_HOME"),
            "{full}"
        );
        assert!(full.contains("/home/u/.local/share/kumo/images"), "{full}");
        let net = failure_hint("E: Failed to fetch http://deb.debian.org/...", root);
        assert!(net.contains("KUMO_DEBIAN_MIRROR"), "{net}");
        assert_eq!(failure_hint("make: *** [Makefile:1] Error 2", root), "");
    }

    #[test]
    fn tool_path_includes_sbin_once() {
        let p = tool_path();
        assert_eq!(p.split(':').filter(|d| *d == "/usr/sbin").count(), 1);
        assert!(p.split(':').any(|d| d == "/sbin"));
    }

    #[test]
    fn first_line_of_reports_missing_tools_instead_of_failing() {
        assert!(first_line_of("kumo-no-such-tool", &[]).contains("kumo-no-such-tool"));
        assert_eq!(first_line_of("echo", &["a\nb"]), "a");
    }
}
