//! Debian packages from suites this machine does not use, through a private apt state: a
//! sources list, package lists and an archive cache of our own under `~/.cache`, so the
//! system's apt configuration and lists are never touched. Packages are only downloaded
//! and unpacked with `dpkg-deb -x`, never installed.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::util::{self, step};

/// One suite of one archive, e.g. `http://deb.debian.org/debian-security bullseye-security`.
pub struct Suite {
    pub name: &'static str,
    pub uri: &'static str,
}

/// A private apt state for one suite.
pub struct Apt {
    dir: PathBuf,
    suite: &'static str,
}

impl Apt {
    /// Creates the state under `cache/apt-<suite>` and fetches the suite's package lists
    /// (once per day at most: lists older than that are fetched again).
    pub fn open(cache: &Path, suite: &Suite) -> Result<Apt> {
        let dir = cache.join(format!("apt-{}", suite.name));
        for sub in ["lists/partial", "cache/archives/partial", "debs"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        std::fs::write(
            dir.join("sources.list"),
            format!(
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {} {} main\n",
                suite.uri, suite.name
            ),
        )?;
        let apt = Apt {
            dir,
            suite: suite.name,
        };
        let stamp = apt.dir.join("lists/.updated");
        let fresh = std::fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() < 86_400);
        if !fresh {
            step(&format!("apt: package lists of {}", suite.name));
            util::run(apt.command("apt-get").args(["-qq", "update"]))?;
            std::fs::write(&stamp, b"")?;
        }
        Ok(apt)
    }

    fn command(&self, program: &str) -> Command {
        let d = &self.dir;
        let mut c = Command::new(program);
        c.arg(format!(
            "-oDir::Etc::sourcelist={}",
            d.join("sources.list").display()
        ))
        .arg("-oDir::Etc::sourceparts=-")
        .arg(format!("-oDir::State::Lists={}", d.join("lists").display()))
        .arg(format!("-oDir::Cache={}", d.join("cache").display()))
        .arg("-oAPT::Get::List-Cleanup=0")
        // Downloads land in a root-owned directory the sandbox user cannot write.
        .arg("-oAPT::Sandbox::User=root");
        c
    }

    /// Packages `pkg` depends on directly (first alternative of each).
    pub fn depends(&self, pkg: &str) -> Result<Vec<String>> {
        let out = self
            .command("apt-cache")
            .args(["depends", pkg])
            .output()
            .context("apt-cache depends")?;
        if !out.status.success() {
            bail!(
                "apt-cache depends {pkg} in {}: {}",
                self.suite,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("Depends: "))
            .filter(|d| !d.starts_with('<'))
            .map(str::to_string)
            .collect())
    }

    /// What installing `pkgs` (without recommends) onto this system would add.
    pub fn closure(&self, pkgs: &[&str]) -> Result<Vec<String>> {
        let out = self
            .command("apt-get")
            .args(["install", "-s", "--no-install-recommends"])
            .args(pkgs)
            .output()
            .context("apt-get install -s")?;
        if !out.status.success() {
            bail!(
                "apt-get install -s {pkgs:?} in {}: {}",
                self.suite,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("Inst "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect())
    }

    /// Downloads `pkg` (once; kept in the cache) and returns its path.
    pub fn download(&self, pkg: &str) -> Result<PathBuf> {
        let debs = self.dir.join("debs");
        let prefix = format!("{}_", pkg.replace(':', "%3a"));
        let find = || -> Result<Option<PathBuf>> {
            for e in std::fs::read_dir(&debs)? {
                let p = e?.path();
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                if name.starts_with(&prefix) && name.ends_with(".deb") {
                    return Ok(Some(p));
                }
            }
            Ok(None)
        };
        if let Some(p) = find()? {
            return Ok(p);
        }
        step(&format!("apt: downloading {pkg} from {}", self.suite));
        util::run(
            self.command("apt-get")
                .args(["-qq", "download", pkg])
                .current_dir(&debs),
        )?;
        find()?
            .with_context(|| format!("apt-get download {pkg} left no .deb in {}", debs.display()))
    }
}

/// Unpacks a .deb's files under `root`.
pub fn unpack(deb: &Path, root: &Path) -> Result<()> {
    std::fs::create_dir_all(root)?;
    util::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(root))
}

/// Paths inside a .deb.
pub fn contents(deb: &Path) -> Result<Vec<String>> {
    let out = Command::new("dpkg-deb")
        .arg("-c")
        .arg(deb)
        .output()
        .context("dpkg-deb -c")?;
    if !out.status.success() {
        bail!("dpkg-deb -c {} failed", deb.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(str::to_string)
        .collect())
}
