//! The kernel matrix: Debian cloud kernels, each found from its meta package by following
//! dependencies to the package that holds `vmlinuz` (7.x keeps it in `linux-binary-*`).
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

use super::apt::{self, Apt, Suite};
use crate::util::step;

pub const BULLSEYE_SECURITY: Suite = Suite {
    name: "bullseye-security",
    uri: "http://deb.debian.org/debian-security",
};
pub const BOOKWORM_SECURITY: Suite = Suite {
    name: "bookworm-security",
    uri: "http://deb.debian.org/debian-security",
};
pub const BOOKWORM: Suite = Suite {
    name: "bookworm",
    uri: "http://deb.debian.org/debian",
};
pub const SID: Suite = Suite {
    name: "sid",
    uri: "http://deb.debian.org/debian",
};

/// One kernel of the matrix.
pub struct Kernel {
    /// Short name: the series, as the README's table and `--kernels` spell it.
    pub name: &'static str,
    pub suite: &'static Suite,
    /// Meta package to start from.
    pub meta: &'static str,
}

pub const MATRIX: [Kernel; 4] = [
    Kernel {
        name: "5.10",
        suite: &BULLSEYE_SECURITY,
        meta: "linux-image-cloud-amd64",
    },
    Kernel {
        name: "6.1",
        suite: &BOOKWORM_SECURITY,
        meta: "linux-image-cloud-amd64",
    },
    Kernel {
        name: "6.12",
        suite: &BOOKWORM_SECURITY,
        meta: "linux-image-6.12-cloud-amd64",
    },
    Kernel {
        name: "7",
        suite: &SID,
        meta: "linux-image-cloud-amd64",
    },
];

pub fn by_name(name: &str) -> Result<&'static Kernel> {
    MATRIX.iter().find(|k| k.name == name).with_context(|| {
        let names: Vec<_> = MATRIX.iter().map(|k| k.name).collect();
        format!("no kernel {name} in the matrix; known: {names:?}")
    })
}

/// A kernel image ready to boot, and the package version it came from.
pub struct Image {
    pub vmlinuz: PathBuf,
    pub package: String,
}

/// Finds (downloading once) `kernel`'s `vmlinuz` under `cache/kernels/<name>`.
pub fn fetch(cache: &Path, kernel: &Kernel) -> Result<Image> {
    let dir = cache.join("kernels").join(kernel.name);
    let vmlinuz = dir.join("vmlinuz");
    let package_file = dir.join("package");
    if vmlinuz.is_file() {
        if let Ok(package) = std::fs::read_to_string(&package_file) {
            return Ok(Image {
                vmlinuz,
                package: package.trim().to_string(),
            });
        }
    }
    step(&format!(
        "kernel {}: resolving {}",
        kernel.name, kernel.meta
    ));
    let apt = Apt::open(cache, kernel.suite)?;
    // Breadth-first over linux-image-*/linux-binary-* dependencies; only a package that
    // depends on no further image package is downloaded (meta packages are not always in
    // the pool).
    let mut queue = std::collections::VecDeque::from([kernel.meta.to_string()]);
    let mut visited = 0;
    while let Some(pkg) = queue.pop_front() {
        visited += 1;
        if visited > 8 {
            break;
        }
        let deeper: Vec<String> = apt
            .depends(&pkg)?
            .into_iter()
            .filter(|d| d.starts_with("linux-image-") || d.starts_with("linux-binary-"))
            .collect();
        if !deeper.is_empty() {
            queue.extend(deeper);
            continue;
        }
        let deb = apt.download(&pkg)?;
        if let Some(path) = apt::contents(&deb)?
            .into_iter()
            .find(|p| p.ends_with("/vmlinuz") || p.contains("/boot/vmlinuz-"))
        {
            let unpacked = dir.join("unpacked");
            let _ = std::fs::remove_dir_all(&unpacked);
            apt::unpack(&deb, &unpacked)?;
            std::fs::copy(unpacked.join(&path), &vmlinuz)
                .with_context(|| format!("copying {path} out of {}", deb.display()))?;
            std::fs::remove_dir_all(&unpacked)?;
            let package = deb
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .trim_end_matches(".deb")
                .to_string();
            std::fs::write(&package_file, &package)?;
            return Ok(Image { vmlinuz, package });
        }
    }
    bail!(
        "no vmlinuz found from {} in {}",
        kernel.meta,
        kernel.suite.name
    )
}
