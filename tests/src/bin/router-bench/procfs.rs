//! CPU time and memory of processes, from /proc (Linux).

/// Clock ticks per second of /proc's CPU times.
fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// User plus system CPU seconds of one process, and its command name.
fn cpu_seconds(pid: u32) -> Option<(String, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat[open + 1..close].to_owned();
    // After the name: state is field 3; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some((name, ticks / ticks_per_second()))
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// Resident memory now.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// The most resident memory the process has had.
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// CPU seconds so far of the router's processes, and of every PostgreSQL
/// process on the machine (its backends serve ingest's connections).
#[derive(Clone, Debug, Default)]
pub struct Cpu {
    pub processes: Vec<f64>,
    pub postgres: f64,
}

impl Cpu {
    pub fn read(pids: &[(&str, Option<u32>)], postgres: bool) -> Self {
        let processes = pids
            .iter()
            .map(|(_, pid)| pid.and_then(cpu_seconds).map_or(0.0, |(_, s)| s))
            .collect();
        let postgres = if postgres {
            std::fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(cpu_seconds)
                .filter(|(name, _)| name == "postgres")
                .map(|(_, s)| s)
                .sum()
        } else {
            0.0
        };
        Self {
            processes,
            postgres,
        }
    }

    /// What was spent between `before` and this reading.
    pub fn since(&self, before: &Cpu) -> Cpu {
        Cpu {
            processes: self
                .processes
                .iter()
                .zip(&before.processes)
                .map(|(a, b)| a - b)
                .collect(),
            postgres: self.postgres - before.postgres,
        }
    }

    pub fn total(&self) -> f64 {
        self.processes.iter().sum::<f64>() + self.postgres
    }
}

/// The machine's CPU time so far, in ticks, from `/proc/stat`: all of it,
/// and what the hypervisor gave to other machines (steal).
#[derive(Clone, Copy, Debug, Default)]
pub struct Machine {
    all: u64,
    stolen: u64,
}

impl Machine {
    pub fn read() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        // cpu user nice system idle iowait irq softirq steal (guest time is
        // counted in user already).
        let ticks: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|n| n.parse().ok())
            .collect();
        Self {
            all: ticks.iter().sum(),
            stolen: ticks.get(7).copied().unwrap_or(0),
        }
    }

    /// The share of the machine's CPU time the hypervisor took for other
    /// machines between `before` and this reading. (The busy share is left
    /// out: /proc/stat counts it by sampling at clock ticks, and in trials
    /// it came out below the CPU time of the router's processes alone, which
    /// the kernel measures exactly.)
    pub fn since(&self, before: &Machine) -> f64 {
        let all = self.all.saturating_sub(before.all) as f64;
        if all == 0.0 {
            return 0.0;
        }
        self.stolen.saturating_sub(before.stolen) as f64 / all
    }
}
