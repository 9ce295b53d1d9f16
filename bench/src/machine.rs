//! What the benchmarks ran on, read from /proc and a few standard tools.

use std::path::Path;
use std::process::Command;

/// The machine, as reported in BENCHMARKS.md.
#[derive(Debug, Clone)]
pub struct Machine {
    /// CPU model name.
    pub cpu: String,
    /// Logical CPUs.
    pub cores: usize,
    /// Total memory in bytes.
    pub ram: u64,
    /// Device, file system and free space holding the data directory.
    pub disk: String,
    /// Kernel release.
    pub kernel: String,
}

fn first_line(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

impl Machine {
    /// Describe this machine; `data` is the directory the data is generated in.
    pub fn read(data: &Path) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let ram = meminfo_kib("MemTotal").unwrap_or(0) * 1024;
        let target = data.display().to_string();
        let source = first_line("findmnt", &["-no", "SOURCE,FSTYPE", "--target", &target])
            .unwrap_or_else(|| "unknown".into());
        let free = first_line("df", &["-h", "--output=size,avail", &target])
            .and_then(|t| {
                t.lines()
                    .nth(1)
                    .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            })
            .unwrap_or_default();
        let device = source.split_whitespace().next().unwrap_or("").to_string();
        let rotational = Path::new(&device)
            .file_name()
            .and_then(|n| {
                std::fs::read_to_string(format!(
                    "/sys/block/{}/queue/rotational",
                    n.to_string_lossy()
                ))
                .ok()
            })
            .map(|r| {
                if r.trim() == "0" {
                    ", non-rotational"
                } else {
                    ", rotational"
                }
            })
            .unwrap_or("");
        let disk = format!("{source}{rotational} (size, free: {free})");
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        Machine {
            cpu,
            cores,
            ram,
            disk,
            kernel,
        }
    }
}

/// A field of /proc/meminfo, in KiB.
pub fn meminfo_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    status_kib(&text, field)
}

/// A `Field:   123 kB` line's number.
pub fn status_kib(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// This process's resident set size, in bytes.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| status_kib(&t, "VmRSS"))
        .unwrap_or(0)
        * 1024
}

/// The 1-, 5- and 15-minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// CPU time the whole machine (every process, the kernel included) has spent busy since boot,
/// in seconds: the `cpu` line of /proc/stat without idle, iowait and steal. The difference over
/// a run is the work that run cost, whoever did it (a database server's backends included).
pub fn cpu_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    busy_ticks(stat.lines().next()?).map(|ticks| ticks as f64 / clock_ticks_per_second())
}

/// Busy ticks of a /proc/stat `cpu` line: user, nice, system, irq, softirq.
fn busy_ticks(line: &str) -> Option<u64> {
    let fields: Vec<u64> = line
        .strip_prefix("cpu ")?
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal …
    Some([0, 1, 2, 5, 6].iter().filter_map(|&i| fields.get(i)).sum())
}

fn clock_ticks_per_second() -> f64 {
    first_line("getconf", &["CLK_TCK"])
        .and_then(|t| t.parse().ok())
        .unwrap_or(100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_ticks_leave_out_idle_iowait_and_steal() {
        assert_eq!(
            busy_ticks("cpu  100 5 20 9000 70 3 2 40 0 0"),
            Some(100 + 5 + 20 + 3 + 2)
        );
        assert_eq!(busy_ticks("cpu0 1 2 3 4"), None, "only the all-CPU line");
        assert_eq!(busy_ticks("cpu  1 x 3"), None);
    }

    #[test]
    fn reads_status_fields() {
        let text = "Name:\tx\nVmRSS:\t  2048 kB\nVmHWM:\t4096 kB\n";
        assert_eq!(status_kib(text, "VmRSS"), Some(2048));
        assert_eq!(status_kib(text, "VmSwap"), None);
    }
}
