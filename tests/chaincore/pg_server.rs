//! A PostgreSQL server that a test starts itself, on its own port and data
//! dir, so that it can stop and start it (the shared server of
//! CHAINCORE_TEST_DATABASE_URL is never stopped). The binaries come from
//! Debian's `postgresql` package (`/usr/lib/postgresql/*/bin`, which
//! scripts/test.sh installs); when they are missing the test fails saying
//! so. PostgreSQL refuses to run as root, so as root the server runs as the
//! `postgres` user through `runuser`.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct PgServer {
    bin: PathBuf,
    /// Holds the data dir and the socket dir; removed on drop.
    root: tempfile::TempDir,
    pub port: u16,
    as_postgres: bool,
}

impl PgServer {
    /// Initialises a cluster (trust authentication for `postgres`) and
    /// starts it on a free loopback port.
    pub fn start() -> PgServer {
        let bin = find_bin_dir();
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let root = tempfile::Builder::new()
            .prefix("chaincore-pg-")
            .tempdir_in("/tmp")
            .unwrap();
        if as_postgres {
            // The server's user must own its data dir and reach it.
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(root.path())
                .status()
                .expect("run chown");
            assert!(
                status.success(),
                "chown of {} failed",
                root.path().display()
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = PgServer {
            bin,
            root,
            port,
            as_postgres,
        };
        let data = server.data_dir();
        server.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
        );
        server.start_again();
        server
    }

    fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let program = self.bin.join(tool);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let out = command
            .args(args)
            .current_dir(self.root.path())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
        assert!(
            out.status.success(),
            "{} {args:?} failed: {}{}",
            program.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the (stopped) server and waits until it accepts connections.
    pub fn start_again(&self) {
        let data = self.data_dir();
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.root.path().display()
        );
        let log = self.root.path().join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &options,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    /// Stops the server now (open connections are terminated).
    pub fn stop(&self) {
        let data = self.data_dir();
        self.run(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "stop"],
        );
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.data_dir();
        let program = self.bin.join("pg_ctl");
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let _ = command
            .args(["-D", data.to_str().unwrap(), "-m", "immediate", "stop"])
            .output();
    }
}

/// The newest `/usr/lib/postgresql/N/bin` holding initdb and pg_ctl.
fn find_bin_dir() -> PathBuf {
    let base = Path::new("/usr/lib/postgresql");
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(base)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("pg_ctl").exists()).then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server binaries (initdb, pg_ctl) under {}: install Debian's `postgresql` package (scripts/test.sh does)",
            base.display()
        )
    })
}
