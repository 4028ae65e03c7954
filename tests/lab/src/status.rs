//! Views of `lbctl --json status` for assertions and messages, and the small
//! JSON reader they use.

use std::collections::BTreeMap;

use anyhow::Result;

// ---------------------------------------------------------------- status views

/// The VIP/backend sets of a status document, one line per VIP and
/// backend, sorted: VIP identity, name, scheduler, forwarding, stateless;
/// backend address, weight, drained.
pub fn config_view(status: &Json) -> String {
    let mut lines = Vec::new();
    for v in status.get("vips").arr() {
        let vip = v.get("vip").str().to_string();
        lines.push(format!(
            "vip {vip} name={} scheduler={} forwarding={} stateless={:?}",
            v.get("name").str(),
            v.get("scheduler").str(),
            v.get("forwarding").str(),
            v.get("stateless").as_bool()
        ));
        for b in v.get("backends").arr() {
            lines.push(format!(
                "  backend {vip} {} weight={:?} drained={:?}",
                b.get("addr").str(),
                b.get("weight").as_f64(),
                b.get("drained").as_bool()
            ));
        }
    }
    lines.join("\n")
}

/// The backends of one VIP in a status document: address → (weight, drained).
pub fn backends_of(status: &Json, vip: &str) -> BTreeMap<String, (u64, bool)> {
    let v = status
        .get("vips")
        .arr()
        .iter()
        .find(|v| v.get("vip").str() == vip || v.get("name").str() == vip)
        .unwrap_or_else(|| panic!("no VIP {vip} in status"));
    v.get("backends")
        .arr()
        .iter()
        .map(|b| {
            (
                b.get("addr").str().to_string(),
                (
                    b.get("weight").as_f64().unwrap_or(-1.0) as u64,
                    b.get("drained").as_bool().unwrap_or(false),
                ),
            )
        })
        .collect()
}

/// A VIP of a status document, by identity or name.
pub fn vip_of<'a>(status: &'a Json, vip: &str) -> &'a Json {
    status
        .get("vips")
        .arr()
        .iter()
        .find(|v| v.get("vip").str() == vip || v.get("name").str() == vip)
        .unwrap_or_else(|| panic!("no VIP {vip} in status"))
}

/// Each tier of `vip` and its share of new flows in percent, nearest
/// first (empty for a VIP without tiers).
pub fn tiers_of(status: &Json, vip: &str) -> Vec<(u64, u64)> {
    vip_of(status, vip)
        .get("tiers")
        .arr()
        .iter()
        .map(|t| {
            let n = |k: &str| t.get(k).as_f64().unwrap_or(-1.0) as u64;
            (n("tier"), n("share"))
        })
        .collect()
}

/// The health of each backend of `vip`: address → "up", "down" or
/// "unchecked".
pub fn health_of(status: &Json, vip: &str) -> BTreeMap<String, String> {
    vip_of(status, vip)
        .get("backends")
        .arr()
        .iter()
        .map(|b| {
            (
                b.get("addr").str().to_string(),
                b.get("health").str().to_string(),
            )
        })
        .collect()
}

/// Least-connections VIPs: each backend's active connections as lbd
/// reports them (address → count; backends without a count are left out).
pub fn active_of(status: &Json, vip: &str) -> BTreeMap<String, u64> {
    vip_of(status, vip)
        .get("backends")
        .arr()
        .iter()
        .filter_map(|b| {
            let n = b.get("active_connections").as_f64()?;
            Some((b.get("addr").str().to_string(), n as u64))
        })
        .collect()
}

/// Whether `vip` fails open.
pub fn fail_open_of(status: &Json, vip: &str) -> bool {
    vip_of(status, vip).get("fail_open").as_bool() == Some(true)
}

/// One line per VIP with its backends' health, for messages.
pub fn health_view(status: &Json) -> String {
    status
        .get("vips")
        .arr()
        .iter()
        .map(|v| {
            let vip = v.get("vip").str();
            format!(
                "{vip} fail_open={:?} {:?}",
                v.get("fail_open").as_bool(),
                health_of(status, vip)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The backends of `status` whose next hop is not resolved yet, as
/// `VIP ADDRESS`.
pub fn unresolved_next_hops(status: &Json) -> Vec<String> {
    status
        .get("vips")
        .arr()
        .iter()
        .flat_map(|v| {
            v.get("backends")
                .arr()
                .iter()
                .filter(|b| b.get("next_hop").as_bool() != Some(true))
                .map(|b| format!("{} {}", v.get("vip").str(), b.get("addr").str()))
                .collect::<Vec<_>>()
        })
        .collect()
}

// ---------------------------------------------------------------- JSON

/// A JSON value (lb-lab has no serde_json): enough to read lbctl's
/// output.
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

static NULL: Json = Json::Null;

impl Json {
    pub fn parse(text: &str) -> Result<Json, String> {
        let mut p = JsonParser {
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value(0)?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("trailing data at byte {}", p.i));
        }
        Ok(v)
    }

    /// The member `key` of an object; `Null` if absent or not an object.
    pub fn get(&self, key: &str) -> &Json {
        match self {
            Json::Obj(m) => m.iter().find(|(k, _)| k == key).map_or(&NULL, |(_, v)| v),
            _ => &NULL,
        }
    }

    pub fn has(&self, key: &str) -> bool {
        matches!(self, Json::Obj(m) if m.iter().any(|(k, _)| k == key))
    }

    pub fn arr(&self) -> &[Json] {
        match self {
            Json::Arr(a) => a,
            _ => &[],
        }
    }

    /// The string, or "" for anything else.
    pub fn str(&self) -> &str {
        match self {
            Json::Str(s) => s,
            _ => "",
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Json::Num(n) => Some(*n),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Json::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

struct JsonParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl JsonParser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("JSON: {what} at byte {}", self.i))
    }

    fn eat(&mut self, lit: &str) -> bool {
        if self.s[self.i..].starts_with(lit.as_bytes()) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, String> {
        if depth > 64 {
            return self.err("nested too deep");
        }
        self.ws();
        let Some(&c) = self.s.get(self.i) else {
            return self.err("unexpected end");
        };
        match c {
            b'{' => {
                self.i += 1;
                let mut m = Vec::new();
                self.ws();
                if self.eat("}") {
                    return Ok(Json::Obj(m));
                }
                loop {
                    self.ws();
                    let Json::Str(k) = self.string()? else {
                        unreachable!()
                    };
                    self.ws();
                    if !self.eat(":") {
                        return self.err("expected ':'");
                    }
                    let v = self.value(depth + 1)?;
                    m.push((k, v));
                    self.ws();
                    if self.eat(",") {
                        continue;
                    }
                    if self.eat("}") {
                        return Ok(Json::Obj(m));
                    }
                    return self.err("expected ',' or '}'");
                }
            }
            b'[' => {
                self.i += 1;
                let mut a = Vec::new();
                self.ws();
                if self.eat("]") {
                    return Ok(Json::Arr(a));
                }
                loop {
                    a.push(self.value(depth + 1)?);
                    self.ws();
                    if self.eat(",") {
                        continue;
                    }
                    if self.eat("]") {
                        return Ok(Json::Arr(a));
                    }
                    return self.err("expected ',' or ']'");
                }
            }
            b'"' => self.string(),
            b't' if self.eat("true") => Ok(Json::Bool(true)),
            b'f' if self.eat("false") => Ok(Json::Bool(false)),
            b'n' if self.eat("null") => Ok(Json::Null),
            b'-' | b'0'..=b'9' => {
                let start = self.i;
                while self.i < self.s.len()
                    && matches!(
                        self.s[self.i],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.i]).expect("ASCII");
                text.parse()
                    .map(Json::Num)
                    .or_else(|_| self.err("bad number"))
            }
            _ => self.err("unexpected character"),
        }
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let h = self
            .s
            .get(self.i..self.i + 4)
            .ok_or("JSON: short \\u escape")?;
        let v = u32::from_str_radix(std::str::from_utf8(h).map_err(|e| e.to_string())?, 16)
            .map_err(|e| format!("JSON: \\u escape: {e}"))?;
        self.i += 4;
        Ok(v)
    }

    fn string(&mut self) -> Result<Json, String> {
        if !self.eat("\"") {
            return self.err("expected a string");
        }
        let mut out = Vec::new();
        loop {
            let Some(&c) = self.s.get(self.i) else {
                return self.err("unterminated string");
            };
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let Some(&e) = self.s.get(self.i) else {
                        return self.err("unterminated escape");
                    };
                    self.i += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let mut v = self.hex4()?;
                            if (0xd800..0xdc00).contains(&v) && self.eat("\\u") {
                                let lo = self.hex4()?;
                                v = 0x10000
                                    + ((v - 0xd800) << 10)
                                    + (lo.wrapping_sub(0xdc00) & 0x3ff);
                            }
                            char::from_u32(v).unwrap_or('\u{fffd}')
                        }
                        _ => return self.err("bad escape"),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                _ => out.push(c),
            }
        }
        String::from_utf8(out)
            .map(Json::Str)
            .map_err(|e| format!("JSON: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_parses_what_lbctl_prints() {
        let v = Json::parse(
            r#"{ "a": [1, -2.5e3, true, false, null], "s": "x\"\\\u00e9\ud83d\ude00", "o": {} }"#,
        )
        .unwrap();
        assert_eq!(v.get("a").arr().len(), 5);
        assert_eq!(v.get("a").arr()[1].as_f64(), Some(-2500.0));
        assert_eq!(v.get("s").str(), "x\"\\é😀");
        assert_eq!(v.get("o"), &Json::Obj(vec![]));
        assert_eq!(v.get("missing"), &Json::Null);
        assert!(Json::parse("{").is_err());
        assert!(Json::parse("[1,]").is_err());
        assert!(Json::parse("1 2").is_err());
    }
}
