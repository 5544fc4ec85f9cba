//! The grid file as a located tree: every TOML value with its line and column, and the
//! diagnostics that collect every problem (file, line, column, key) before any run starts.

use super::*;

/// Line and column (1-based) of something in the grid file; 0 when unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Loc {
    pub(super) line: usize,
    pub(super) col: usize,
}

pub(super) type Span = Option<Range<usize>>;

pub(super) fn loc_of(src: &str, span: &Span) -> Loc {
    let Some(r) = span else { return Loc::default() };
    let Some(before) = src.get(..r.start.min(src.len())) else {
        return Loc::default();
    };
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |s| s.chars().count()) + 1;
    Loc { line, col }
}

/// Collects every problem so that all are reported at once.
pub(super) struct Diags {
    pub(super) items: Vec<String>,
}

impl Diags {
    pub(super) fn push(&mut self, loc: Loc, key: &str, msg: impl std::fmt::Display) {
        let at = if loc.line > 0 {
            format!("line {}:{}: ", loc.line, loc.col)
        } else {
            String::new()
        };
        let k = if key.is_empty() {
            String::new()
        } else {
            format!("`{key}`: ")
        };
        self.items.push(format!("{at}{k}{msg}"));
    }
    pub(super) fn finish(self, path: &Path) -> Result<()> {
        if self.items.is_empty() {
            return Ok(());
        }
        const MAX: usize = 30;
        if let [only] = self.items.as_slice() {
            return Err(Error::config(path, only.clone()));
        }
        let mut lines: Vec<String> = self.items.iter().take(MAX).cloned().collect();
        if self.items.len() > MAX {
            lines.push(format!("... and {} more", self.items.len() - MAX));
        }
        Err(Error::config(
            path,
            format!("{} problems:\n  {}", self.items.len(), lines.join("\n  ")),
        ))
    }
}

// ---------------------------------------------------------------------------------------
// TOML -> a small spanned tree (so every value keeps its position).

#[derive(Debug, Clone)]
pub(super) struct Node {
    pub(super) loc: Loc,
    pub(super) kind: Kind,
}

#[derive(Debug, Clone)]
pub(super) enum Kind {
    Table(Vec<Entry>),
    Array(Vec<Node>),
    Leaf(Value),
}

#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) key: String,
    pub(super) key_loc: Loc,
    pub(super) node: Node,
}

impl Node {
    pub(super) fn to_json(&self) -> Value {
        match &self.kind {
            Kind::Leaf(v) => v.clone(),
            Kind::Array(a) => Value::Array(a.iter().map(Node::to_json).collect()),
            Kind::Table(es) => {
                let mut m = Map::new();
                for e in es {
                    set_path(&mut m, &e.key, e.node.to_json());
                }
                Value::Object(m)
            }
        }
    }
    pub(super) fn table(&self) -> Option<&[Entry]> {
        match &self.kind {
            Kind::Table(es) => Some(es),
            _ => None,
        }
    }
}

pub(super) struct Converter<'a> {
    pub(super) src: &'a str,
    pub(super) diags: &'a mut Diags,
}

impl Converter<'_> {
    pub(super) fn loc(&self, span: Span) -> Loc {
        loc_of(self.src, &span)
    }

    pub(super) fn item(&mut self, item: &toml_edit::Item) -> Option<Node> {
        use toml_edit::Item;
        match item {
            Item::None => None,
            Item::Value(v) => self.value(v),
            Item::Table(t) => Some(self.table(t)),
            Item::ArrayOfTables(a) => {
                let nodes: Vec<Node> = a.iter().map(|t| self.table(t)).collect();
                let loc = nodes.first().map_or_else(|| self.loc(a.span()), |n| n.loc);
                Some(Node {
                    loc,
                    kind: Kind::Array(nodes),
                })
            }
        }
    }

    pub(super) fn table(&mut self, t: &toml_edit::Table) -> Node {
        let mut entries = Vec::new();
        for (k, item) in t.iter() {
            let key_loc = self.loc(t.key(k).and_then(|k| k.span()));
            if let Some(node) = self.item(item) {
                entries.push(Entry {
                    key: k.to_string(),
                    key_loc,
                    node,
                });
            }
        }
        let loc = match t.span() {
            Some(s) => self.loc(Some(s)),
            None => entries.first().map_or_else(Loc::default, |e| e.key_loc),
        };
        Node {
            loc,
            kind: Kind::Table(entries),
        }
    }

    pub(super) fn value(&mut self, v: &toml_edit::Value) -> Option<Node> {
        use toml_edit::Value as V;
        let loc = self.loc(v.span());
        let kind = match v {
            V::String(s) => Kind::Leaf(Value::String(s.value().clone())),
            V::Integer(i) => Kind::Leaf(Value::from(*i.value())),
            V::Float(f) => match serde_json::Number::from_f64(*f.value()) {
                Some(n) => Kind::Leaf(Value::Number(n)),
                None => {
                    self.diags.push(loc, "", "nan and inf are not accepted");
                    return None;
                }
            },
            V::Boolean(b) => Kind::Leaf(Value::Bool(*b.value())),
            V::Datetime(_) => {
                self.diags
                    .push(loc, "", "dates and times are not accepted here");
                return None;
            }
            V::Array(a) => Kind::Array(a.iter().filter_map(|x| self.value(x)).collect()),
            V::InlineTable(t) => {
                let mut entries = Vec::new();
                for (k, x) in t.iter() {
                    let key_loc = self.loc(t.key(k).and_then(|k| k.span()));
                    if let Some(node) = self.value(x) {
                        entries.push(Entry {
                            key: k.to_string(),
                            key_loc,
                            node,
                        });
                    }
                }
                Kind::Table(entries)
            }
        };
        Some(Node { loc, kind })
    }
}

/// Leaves of a table as (dotted path, node, key location); nested tables are walked, an
/// array or a scalar is a leaf. Keys containing dots are paths too.
pub(super) fn leaves<'a>(
    prefix: &str,
    entries: &'a [Entry],
    out: &mut Vec<(String, &'a Node, Loc)>,
) {
    for e in entries {
        let key = if prefix.is_empty() {
            e.key.clone()
        } else {
            format!("{prefix}.{}", e.key)
        };
        match &e.node.kind {
            Kind::Table(sub) if !sub.is_empty() => leaves(&key, sub, out),
            _ => out.push((key, &e.node, e.key_loc)),
        }
    }
}

pub(super) fn find<'a>(entries: &'a [Entry], key: &str) -> Option<&'a Node> {
    entries.iter().find(|e| e.key == key).map(|e| &e.node)
}

// ---------------------------------------------------------------------------------------
// JSON helpers.
