//! Unwind-table rows shared by the eBPF unwinder and the agent (issue 5; in progress).
