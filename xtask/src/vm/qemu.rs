//! qemu-system-x86 unpacked from Debian's packages into the cache (installing it would
//! replace this machine's backported qemu-utils), and the boot of one kernel under TCG.
use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::apt::{self, Apt};
use super::kernels::BOOKWORM;
use crate::util::step;

/// An unpacked qemu.
pub struct Qemu {
    root: PathBuf,
}

impl Qemu {
    /// Downloads and unpacks qemu-system-x86 and what it needs beyond this system, once.
    pub fn prepare(cache: &Path) -> Result<Qemu> {
        let root = cache.join("qemu");
        let done = root.join(".complete");
        let qemu = Qemu { root };
        if done.is_file() && qemu.binary().is_file() {
            return Ok(qemu);
        }
        step("qemu: unpacking qemu-system-x86 and its dependencies (not installed)");
        let apt = Apt::open(cache, &BOOKWORM)?;
        let _ = std::fs::remove_dir_all(&qemu.root);
        let mut pkgs = apt.closure(&["qemu-system-x86"])?;
        // Firmware the boot needs even when the simulation finds it installed.
        for firmware in ["seabios", "qemu-system-data"] {
            if !pkgs.iter().any(|p| p == firmware) {
                pkgs.push(firmware.to_string());
            }
        }
        for pkg in &pkgs {
            apt::unpack(&apt.download(pkg)?, &qemu.root)?;
        }
        if !qemu.binary().is_file() {
            bail!("qemu-system-x86_64 missing after unpacking {pkgs:?}");
        }
        std::fs::write(&done, pkgs.join("\n"))?;
        Ok(qemu)
    }

    fn binary(&self) -> PathBuf {
        self.root.join("usr/bin/qemu-system-x86_64")
    }

    /// Boots `vmlinuz` with `initrd` on 2 vCPUs under TCG and returns the serial console's
    /// output once the guest powers off (or `timeout` passes: then it is killed).
    pub fn boot(&self, vmlinuz: &Path, initrd: &Path, timeout: Duration) -> Result<String> {
        let libs = [
            "usr/lib/x86_64-linux-gnu",
            "lib/x86_64-linux-gnu",
            "usr/lib/x86_64-linux-gnu/pulseaudio",
        ]
        .map(|d| self.root.join(d).display().to_string())
        .join(":");
        let mut child = Command::new(self.binary())
            .env("LD_LIBRARY_PATH", libs)
            .arg("-L")
            .arg(self.root.join("usr/share/seabios"))
            .arg("-L")
            .arg(self.root.join("usr/share/qemu"))
            // KVM aborts or hangs on these machines; TCG boots in about 2 s.
            .args(["-accel", "tcg", "-cpu", "max", "-m", "1536M", "-smp", "2"])
            .args(["-no-reboot", "-nographic", "-monitor", "none"])
            .arg("-kernel")
            .arg(vmlinuz)
            .arg("-initrd")
            .arg(initrd)
            .args([
                "-append",
                "console=ttyS0 noapic panic=-1 quiet loglevel=1 rdinit=/init",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting qemu-system-x86_64")?;
        let mut stdout = child.stdout.take().context("qemu stdout")?;
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = stdout.read_to_end(&mut out);
            out
        });
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if started.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let out = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
        match status {
            None => bail!("the guest did not power off within {timeout:?}; console:\n{out}"),
            Some(s) if !s.success() => {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                bail!("qemu failed ({s}): {err}\nconsole:\n{out}")
            }
            Some(_) => Ok(out),
        }
    }
}
