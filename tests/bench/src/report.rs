//! What the bench prints and saves: one markdown table per measurement,
//! and all of them in `target/bench/report.json`.

use std::{fmt::Write as _, path::Path};

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};

/// One value of a table: text, or a number shown with `decimals` places
/// (and kept unrounded in the JSON).
#[derive(Clone, Debug)]
pub enum Cell {
    Text(String),
    Num(f64, usize),
    /// Not measured (shown as "–", `null` in the JSON).
    None,
}

impl Cell {
    pub fn text(s: impl Into<String>) -> Cell {
        Cell::Text(s.into())
    }
    pub fn num(v: f64, decimals: usize) -> Cell {
        Cell::Num(v, decimals)
    }
    fn show(&self) -> String {
        match self {
            Cell::Text(s) => s.clone(),
            Cell::Num(v, d) => format!("{v:.d$}", d = *d),
            Cell::None => "–".into(),
        }
    }
    fn json(&self) -> Value {
        match self {
            Cell::Text(s) => json!(s),
            Cell::Num(v, _) => json!(v),
            Cell::None => Value::Null,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Table {
    pub title: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
    /// Lines printed under the table (method, caveats).
    pub notes: Vec<String>,
}

impl Table {
    pub fn new(title: impl Into<String>, header: &[&str]) -> Table {
        Table {
            title: title.into(),
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<Cell>) {
        debug_assert_eq!(
            cells.len(),
            self.header.len(),
            "row width in {}",
            self.title
        );
        self.rows.push(cells);
    }

    pub fn note(&mut self, line: impl Into<String>) {
        self.notes.push(line.into());
    }

    pub fn markdown(&self) -> String {
        let mut s = format!("### {}\n\n", self.title);
        let line = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
        s += &line(self.header.clone());
        s += &line(self.header.iter().map(|_| "---".to_string()).collect());
        for r in &self.rows {
            s += &line(r.iter().map(Cell::show).collect());
        }
        for n in &self.notes {
            let _ = write!(s, "\n{n}");
        }
        if !self.notes.is_empty() {
            s.push('\n');
        }
        s
    }

    fn json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let m: Map<String, Value> = self
                    .header
                    .iter()
                    .zip(r)
                    .map(|(h, c)| (h.clone(), c.json()))
                    .collect();
                Value::Object(m)
            })
            .collect();
        json!({ "title": self.title, "rows": rows, "notes": self.notes })
    }
}

/// The machine a report was measured on.
pub fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    json!({
        "kernel": kernel_release(),
        "cpu": cpu,
        "online_cpus": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "possible_cpus": possible_cpus(),
        "load_average_at_end": load_average(),
    })
}

/// Writes every section's tables to `path` (creating its directory).
pub fn save(path: &Path, quick: bool, sections: &[(&str, Vec<Table>)], seconds: f64) -> Result<()> {
    let sections: Map<String, Value> = sections
        .iter()
        .map(|(name, tables)| {
            (
                name.to_string(),
                Value::Array(tables.iter().map(Table::json).collect()),
            )
        })
        .collect();
    let report = json!({
        "machine": machine(),
        "quick": quick,
        "seconds": seconds,
        "unix_time": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        "sections": sections,
    });
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

/// The median (the mean of the middle two for an even count); NaN for none.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or("?".into(), |s| {
        s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    })
}

pub fn kernel_release() -> String {
    // SAFETY: `u` is a valid utsname for uname to fill.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return "?".into();
        }
        std::ffi::CStr::from_ptr(u.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

/// CPUs the kernel may ever bring up: per-CPU maps and the per-CPU LRU lists
/// of the connection table are split this many ways.
pub fn possible_cpus() -> usize {
    let Ok(s) = std::fs::read_to_string("/sys/devices/system/cpu/possible") else {
        return 1;
    };
    s.trim()
        .split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap_or(0) + 1 - a.parse::<usize>().unwrap_or(0),
            None => 1,
        })
        .sum::<usize>()
        .max(1)
}
