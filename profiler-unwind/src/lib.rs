//! Unwind tables compiled from `.eh_frame`, and the lookup and step logic that the eBPF
//! program and ordinary tests share. (Work in progress: see issue 5.)
#![cfg_attr(not(feature = "std"), no_std)]
