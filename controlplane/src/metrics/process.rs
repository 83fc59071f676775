//! The process's own CPU time, resident memory and open file descriptors, read from `/proc`
//! at scrape time (Linux only; elsewhere nothing is reported).

use std::path::Path;

/// What `/proc/self` says about this process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size, in bytes.
    pub resident_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
}

/// `/proc` reports CPU times in USER_HZ ticks, which the kernel fixes at 100 per second on
/// every architecture Rust targets (it is part of the user ABI, unlike the kernel's HZ).
const USER_HZ: f64 = 100.0;

impl ProcessStats {
    /// This process's figures, or `None` where `/proc` cannot be read.
    pub fn read() -> Option<Self> {
        Self::read_from(Path::new("/proc/self"))
    }

    /// The figures of the process whose `/proc` directory is `dir` (`/proc/<pid>`).
    pub fn read_from(dir: &Path) -> Option<Self> {
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        let status = std::fs::read_to_string(dir.join("status")).ok()?;
        let open_fds = std::fs::read_dir(dir.join("fd")).ok()?.count() as u64;
        Some(ProcessStats {
            cpu_seconds: cpu_ticks(&stat)? as f64 / USER_HZ,
            resident_bytes: vm_rss_kib(&status)? * 1024,
            open_fds,
        })
    }
}

/// `utime + stime` from a `/proc/<pid>/stat` line. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from the last `)`.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    // After the name: state is field 3, utime field 14, stime field 15.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS` in KiB from a `/proc/<pid>/status` text.
pub fn vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_count_fields_after_the_name() {
        let stat = "1234 (a (weird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 31 0 0 \
                    20 0 4 0 5000 10000000 700 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(281));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\tcolony\nVmPeak:\t  9000 kB\nVmRSS:\t    5120 kB\nThreads:\t4\n";
        assert_eq!(vm_rss_kib(status), Some(5120));
        assert_eq!(vm_rss_kib("Name: x\n"), None);
    }

    #[test]
    fn this_process_has_cpu_memory_and_fds() {
        let Some(s) = ProcessStats::read() else {
            // Not Linux: there is no /proc to read, and nothing is reported.
            assert!(!Path::new("/proc/self/stat").exists());
            return;
        };
        assert!(s.resident_bytes > 0);
        assert!(s.open_fds >= 3, "{s:?}");
        assert!(s.cpu_seconds >= 0.0);
    }
}
