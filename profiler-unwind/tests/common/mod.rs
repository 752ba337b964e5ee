//! Test support: C fixtures, ptrace captures of live stacks, and offline unwinding of those
//! captures with the crate's tables and walker.
#![allow(dead_code)]

pub mod binutils;
pub mod capture;
pub mod fixture;
pub mod process;
pub mod replay;
