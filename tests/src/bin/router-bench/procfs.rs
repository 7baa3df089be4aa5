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
