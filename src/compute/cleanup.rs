//! Undo steps for everything an instance launch creates on the host.
//!
//! Each step that creates something (a disk copy, a cgroup, a TAP device, a network namespace, a
//! switch thread, a process) pushes the step that removes it onto a [`CleanupStack`]. The stack
//! runs its steps in reverse order when it is dropped: at the end of a normal run, when a launch
//! fails half-way, and while a panic unwinds. A step that fails is logged and the others still
//! run. (What a *killed* `kumo run` leaves behind is found from the instance record and removed by
//! the next run: see `stale.rs`.)

/// One undo step: `Err` says why it failed.
type Step = Box<dyn FnOnce() -> Result<(), String> + Send>;

/// Steps to run, last pushed first, when dropped (or on [`CleanupStack::run`]).
#[derive(Default)]
pub struct CleanupStack {
    steps: Vec<(String, Step)>,
}

impl std::fmt::Debug for CleanupStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.steps.iter().map(|(what, _)| what))
            .finish()
    }
}

impl CleanupStack {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a step; `what` names it for the logs ("delete TAP kumot0123456789").
    pub fn push(
        &mut self,
        what: impl Into<String>,
        step: impl FnOnce() -> Result<(), String> + Send + 'static,
    ) {
        self.steps.push((what.into(), Box::new(step)));
    }

    /// Runs every step now, last pushed first; returns the failures ("what: why").
    pub fn run(&mut self) -> Vec<String> {
        let mut failures = Vec::new();
        while let Some((what, step)) = self.steps.pop() {
            tracing::debug!("cleanup: {what}");
            if let Err(e) = step() {
                tracing::warn!("cleanup: {what}: {e}");
                failures.push(format!("{what}: {e}"));
            }
        }
        failures
    }
}

impl Drop for CleanupStack {
    fn drop(&mut self) {
        self.run();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn steps_run_in_reverse_and_failures_do_not_stop_the_rest() {
        let log = Arc::new(Mutex::new(Vec::new()));
        {
            let mut stack = CleanupStack::new();
            for i in 0..3 {
                let log = log.clone();
                stack.push(format!("step {i}"), move || {
                    log.lock().unwrap().push(i);
                    if i == 1 { Err("boom".into()) } else { Ok(()) }
                });
            }
            assert_eq!(stack.steps.len(), 3);
        }
        assert_eq!(*log.lock().unwrap(), vec![2, 1, 0]);
    }

    #[test]
    fn run_reports_failures_once() {
        let mut stack = CleanupStack::new();
        stack.push("a", || Err("no".into()));
        stack.push("b", || Ok(()));
        assert_eq!(stack.run(), vec!["a: no".to_string()]);
        assert!(stack.steps.is_empty());
        assert!(stack.run().is_empty());
    }
}
