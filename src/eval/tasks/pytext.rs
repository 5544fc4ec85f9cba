//! The few Python `str` operations lm-eval's task code applies, with Python's semantics
//! (which differ from Rust's `trim` at the edges: Python also treats U+001C..U+001F as
//! whitespace).

/// Python's `str.isspace` for one character.
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `s.strip()`.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// Python's `s.lstrip()`.
pub fn py_lstrip(s: &str) -> &str {
    s.trim_start_matches(is_py_space)
}

/// Python's `s.capitalize()`: the first character title-cased, the rest lower-cased (so
/// `"the USA"` becomes `"The usa"`). Rust has no title case; it is derived from the upper
/// case: the Latin digraphs have their own title forms, and an upper case that expands to
/// several characters (`ß` -> `SS`, `ﬁ` -> `FI`) keeps only its first one upper-case
/// (`Ss`, `Fi`), as Unicode's title case does. Greek letters with a subscript iota are the
/// known exception (Python keeps one character there); HellaSwag has none.
pub fn py_capitalize(s: &str) -> String {
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return String::new();
    };
    let mut out = String::with_capacity(s.len());
    match first {
        '\u{1c4}'..='\u{1c6}' => out.push('\u{1c5}'),
        '\u{1c7}'..='\u{1c9}' => out.push('\u{1c8}'),
        '\u{1ca}'..='\u{1cc}' => out.push('\u{1cb}'),
        '\u{1f1}'..='\u{1f3}' => out.push('\u{1f2}'),
        _ => {
            let mut upper = first.to_uppercase();
            if let Some(u) = upper.next() {
                out.push(u);
            }
            out.extend(upper.flat_map(char::to_lowercase));
        }
    }
    out.push_str(&chars.as_str().to_lowercase());
    out
}

/// lm-eval's HellaSwag `preprocess` (lm_eval/tasks/hellaswag/utils.py): strip, `" [title]"`
/// becomes `". "`, every `[...]` tag is removed (the regex `\[.*?\]`: shortest match, no
/// newline inside), then each `"  "` becomes `" "` (one pass, as `str.replace`).
pub fn hellaswag_preprocess(text: &str) -> String {
    let s = py_strip(text).replace(" [title]", ". ");
    remove_bracket_tags(&s).replace("  ", " ")
}

/// `re.sub(r"\[.*?\]", "", s)`: at each `[`, the nearest following `]` on the same line
/// closes the tag; a `[` without one stays.
fn remove_bracket_tags(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find([']', '\n']);
        match close {
            Some(k) if after[k..].starts_with(']') => rest = &after[k + 1..],
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values are what CPython 3.11 returns for the same calls.
    #[test]
    fn strip_matches_python_whitespace() {
        assert_eq!(py_strip("\u{1f} a b\u{a0}\n"), "a b");
        assert_eq!(py_lstrip("  A "), "A ");
        assert_eq!(py_strip("\u{200b}x"), "\u{200b}x");
    }

    #[test]
    fn capitalize_lowers_the_rest() {
        assert_eq!(py_capitalize("the USA team"), "The usa team");
        assert_eq!(py_capitalize(""), "");
        assert_eq!(py_capitalize("ßA"), "Ssa");
        assert_eq!(py_capitalize("\u{fb01}X"), "Fix");
        assert_eq!(py_capitalize("\u{1c6}A"), "\u{1c5}a");
    }

    #[test]
    fn preprocess_like_lm_eval() {
        // re.sub(r"\[.*?\]", "", ...) then .replace("  ", " ")
        assert_eq!(
            hellaswag_preprocess(" How to x. [title] Do y. [step] Then z [header] "),
            "How to x.. Do y. Then z "
        );
        assert_eq!(hellaswag_preprocess("a [b [c] d"), "a d");
        assert_eq!(hellaswag_preprocess("a [b c"), "a [b c");
        assert_eq!(hellaswag_preprocess("a [b\n] c"), "a [b\n] c");
        assert_eq!(hellaswag_preprocess("a   b"), "a  b");
        assert_eq!(hellaswag_preprocess("[x]"), "");
    }
}
