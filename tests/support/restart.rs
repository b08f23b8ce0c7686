//! Restarting a running [`Cluster`](super::Cluster) in place, with `pg_ctl restart -m fast`: every session
//! gets `FATAL 57P01` (terminating connection due to administrator command) and is closed, then the server
//! comes back on the same port with the same data.
//!
//! Only the public side of a cluster is used: its data directory comes from `SHOW data_directory` (the
//! test roles are superusers), its binaries from the running postmaster's executable, so this works with
//! any cluster the harness started. Included by the tests that need it with `#[path]` (it sits beside
//! `mod.rs` without being one of its modules), hence the `crate::support` paths.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::{Cluster, run_with_timeout};

/// How long pg_ctl may take to stop and start the server on a loaded machine.
const RESTART_TIMEOUT: Duration = Duration::from_secs(120);

/// What `pg_ctl restart` needs: the data directory and the server's binaries.
pub struct Restarter {
    data_dir: PathBuf,
    bin_dir: PathBuf,
}

impl Restarter {
    /// Finds the data directory and binaries of `cluster`'s running server. Panics if the server does not
    /// say, or its postmaster cannot be found.
    pub fn new(cluster: &Cluster) -> Restarter {
        let out = cluster.psql(&["-X", "-q", "-A", "-t", "-c", "SHOW data_directory"], None);
        let data_dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        assert!(
            out.status.success() && data_dir.is_absolute(),
            "SHOW data_directory failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pid_file = data_dir.join("postmaster.pid");
        let pid = std::fs::read_to_string(&pid_file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", pid_file.display()));
        let pid = pid.lines().next().unwrap_or_default().trim();
        let exe = std::fs::read_link(Path::new("/proc").join(pid).join("exe"))
            .unwrap_or_else(|e| panic!("cannot find the executable of postmaster {pid}: {e}"));
        let bin_dir = exe
            .parent()
            .unwrap_or_else(|| panic!("{} has no directory", exe.display()))
            .to_path_buf();
        Restarter { data_dir, bin_dir }
    }

    /// Restarts the server (`pg_ctl restart -m fast -w`), logging next to the data directory; returns once
    /// it accepts connections again, or panics with pg_ctl's output.
    pub fn restart(&self) {
        let pg_ctl = self.bin_dir.join("pg_ctl");
        // The harness runs the server as `postgres` when the tests run as root (initdb refuses root).
        let mut cmd = if running_as_root() {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(&pg_ctl);
            cmd
        } else {
            Command::new(&pg_ctl)
        };
        let log = self
            .data_dir
            .parent()
            .unwrap_or(&self.data_dir)
            .join("restart.log");
        cmd.args(["restart", "-m", "fast", "-w", "-t", "60", "-D"])
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&log)
            .current_dir("/");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                cmd.env_remove(key);
            }
        }
        let out = run_with_timeout(cmd, None, RESTART_TIMEOUT);
        assert!(
            out.status.success(),
            "pg_ctl restart failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}
