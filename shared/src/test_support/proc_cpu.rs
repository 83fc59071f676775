//! CPU time and resident memory of a process from `/proc`, for benches and tests that report
//! what a server costs.

/// CPU seconds (user, system) process `pid` has used (`"self"` for this one), from
/// `/proc/<pid>/stat`; zeros if it cannot be read.
pub fn cpu_seconds(pid: &str) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let after = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // USER_HZ is 100 on Linux.
    (field(11) / 100.0, field(12) / 100.0)
}

/// Resident memory (`VmRSS`) of process `pid` (`"self"` for this one) in bytes, from
/// `/proc/<pid>/status`; zero if it cannot be read.
pub fn rss_bytes(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    kib * 1024
}
