//! `symbolize --exe PATH [--no-inlines] [--debug-dir DIR]... [ADDR ...]`
//!
//! Hex ELF virtual addresses come as arguments, or one per line on stdin. One JSON object per
//! address: `{"addr":"0x…","frames":[{"function":…,"file":…,"line":N,"inlined":bool},…]}`,
//! innermost frame first; an unresolved address has `"frames":[]` and a `"reason"`.

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use symbolizer::{Binary, Frame, Lookup, Symbolizer, SymbolizerConfig};

const USAGE: &str = "usage: symbolize --exe PATH [--no-inlines] [--debug-dir DIR]... [ADDR ...]";

fn main() -> ExitCode {
    let mut exe = None;
    let mut config = SymbolizerConfig::default();
    let mut custom_dirs = Vec::new();
    let mut addrs = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--exe" | "-e" => exe = args.next().map(PathBuf::from),
            "--no-inlines" => config.inlines = false,
            "--debug-dir" => custom_dirs.extend(args.next().map(PathBuf::from)),
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => addrs.push(a),
        }
    }
    if !custom_dirs.is_empty() {
        config.debug_dirs = custom_dirs;
    }
    let Some(exe) = exe else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let binary = match Binary::open(&exe) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("symbolize: {}", chain(&e));
            return ExitCode::FAILURE;
        }
    };
    let mut symbolizer = Symbolizer::new(config);
    let out = std::io::stdout().lock();
    let mut out = BufWriter::new(out);
    let mut emit = |input: &str| -> std::io::Result<()> {
        let line = match parse_hex(input) {
            None => format!(
                "{{\"addr\":{},\"frames\":[],\"reason\":\"bad_address\"}}",
                json_str(input)
            ),
            Some(addr) => match symbolizer.symbolize(&binary, &[addr]) {
                Ok(mut r) => render(
                    addr,
                    r.pop().unwrap_or(Err(symbolizer::Miss::UnknownAddress)),
                ),
                Err(e) => format!(
                    "{{\"addr\":\"{addr:#x}\",\"frames\":[],\"reason\":{}}}",
                    json_str(&chain(&e))
                ),
            },
        };
        writeln!(out, "{line}")
    };
    let result = if addrs.is_empty() {
        std::io::stdin()
            .lock()
            .lines()
            .map_while(Result::ok)
            .filter(|l| !l.trim().is_empty())
            .try_for_each(|l| emit(l.trim()))
    } else {
        addrs.iter().try_for_each(|a| emit(a))
    };
    match result.and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("symbolize: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `e` and its causes, `: `-separated: the library's errors keep the cause out of their message.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

fn parse_hex(s: &str) -> Option<u64> {
    let s = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    u64::from_str_radix(s, 16).ok()
}

fn render(addr: u64, lookup: Lookup) -> String {
    match lookup {
        Ok(frames) => {
            let frames: Vec<String> = frames.iter().map(render_frame).collect();
            format!(
                "{{\"addr\":\"{addr:#x}\",\"frames\":[{}]}}",
                frames.join(",")
            )
        }
        Err(miss) => format!("{{\"addr\":\"{addr:#x}\",\"frames\":[],\"reason\":\"{miss}\"}}"),
    }
}

fn render_frame(f: &Frame) -> String {
    let mut s = format!("{{\"function\":{}", json_str(&f.function));
    if let Some(file) = &f.file {
        s.push_str(&format!(",\"file\":{}", json_str(file)));
    }
    if let Some(line) = f.line {
        s.push_str(&format!(",\"line\":{line}"));
    }
    s.push_str(&format!(",\"inlined\":{}}}", f.inlined));
    s
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
