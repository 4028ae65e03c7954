//! Where every key and value of the file is, so a serde error (which has a
//! span but no key path) can name its VIP and key: `toml` gives spans of
//! values, not the path that leads to them.

use std::ops::Range;

use toml::{
    de::{DeTable, DeValue},
    Spanned,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

pub(super) struct Entry {
    pub(super) path: Vec<Seg>,
    pub(super) key: Option<Range<usize>>,
    pub(super) value: Range<usize>,
    pub(super) string: Option<String>,
}

pub(super) struct Index {
    /// The document's own span (where "missing field" errors of top-level
    /// keys point).
    pub(super) top: Range<usize>,
    pub(super) entries: Vec<Entry>,
}

impl Index {
    pub(super) fn new(doc: &Spanned<DeTable<'_>>) -> Index {
        let mut index = Index {
            top: doc.span(),
            entries: Vec::new(),
        };
        index.table(&mut Vec::new(), doc.get_ref());
        index
    }

    pub(super) fn table(&mut self, path: &mut Vec<Seg>, t: &DeTable<'_>) {
        for (k, v) in t.iter() {
            path.push(Seg::Key(k.get_ref().to_string()));
            self.push(path, Some(k.span()), v);
            path.pop();
        }
    }

    pub(super) fn push(
        &mut self,
        path: &mut Vec<Seg>,
        key: Option<Range<usize>>,
        v: &Spanned<DeValue<'_>>,
    ) {
        self.entries.push(Entry {
            path: path.clone(),
            key,
            value: v.span(),
            string: v.get_ref().as_str().map(str::to_string),
        });
        if let Some(t) = v.get_ref().as_table() {
            self.table(path, t);
        } else if let Some(a) = v.get_ref().as_array() {
            for (i, item) in a.iter().enumerate() {
                path.push(Seg::Index(i));
                self.push(path, None, item);
                path.pop();
            }
        }
    }

    /// The entry whose key is at `span`.
    pub(super) fn by_key(&self, span: &Range<usize>) -> Option<&Entry> {
        self.entries.iter().find(|e| e.key.as_ref() == Some(span))
    }

    /// The innermost entry whose value holds `span`.
    pub(super) fn by_value(&self, span: &Range<usize>) -> Option<&Entry> {
        self.entries
            .iter()
            .filter(|e| e.value.start <= span.start && span.end <= e.value.end)
            .min_by_key(|e| (e.value.len(), std::cmp::Reverse(e.path.len())))
    }

    pub(super) fn string(&self, path: &[Seg]) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| e.path == path)
            .and_then(|e| e.string.as_deref())
    }

    /// `message` prefixed with where `table` is: `vip[1] "api": backend
    /// 10.0.0.2: [vip.health]: ...`.
    pub(super) fn with_context(&self, table: &[Seg], message: String) -> String {
        let mut parts = Vec::new();
        let mut rest = table;
        let mut prefix = "";
        if let [Seg::Key(k), Seg::Index(i), tail @ ..] = table {
            if k == "vip" {
                let mut path = table[..2].to_vec();
                path.push(Seg::Key("name".into()));
                parts.push(match self.string(&path) {
                    Some(name) => format!("vip[{i}] {name:?}"),
                    None => format!("vip[{i}]"),
                });
                rest = tail;
                prefix = "vip.";
                if let [Seg::Key(k), Seg::Index(j), tail @ ..] = rest {
                    if k == "backends" {
                        let mut path = table[..4].to_vec();
                        path.push(Seg::Key("address".into()));
                        parts.push(match self.string(&path) {
                            Some(addr) => format!("backend {addr}"),
                            None => format!("backends[{j}]"),
                        });
                        rest = tail;
                        prefix = "vip.backends.";
                    }
                }
            }
        }
        if !rest.is_empty() {
            let mut name = prefix.to_string();
            for (n, seg) in rest.iter().enumerate() {
                match seg {
                    Seg::Key(k) if n == 0 => name.push_str(k),
                    Seg::Key(k) => {
                        name.push('.');
                        name.push_str(k);
                    }
                    Seg::Index(i) => name.push_str(&format!("[{i}]")),
                }
            }
            parts.push(format!("[{name}]"));
        }
        parts.push(message);
        parts.join(": ")
    }
}
