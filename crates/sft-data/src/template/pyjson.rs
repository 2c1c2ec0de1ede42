//! `tojson` as transformers defines it: Python's `json.dumps(x, ensure_ascii=False, indent=None,
//! separators=None, sort_keys=False)`.
//!
//! minijinja's own `tojson` escapes `<`, `>`, `&` and `'` for HTML and formats floats the Rust
//! way, so real templates that embed tool schemas would render different bytes. This module
//! reproduces CPython's encoder: its default separators (`", "`/`": "`, or `","` when indenting),
//! its float repr (`1e-05`, `1e+16`, `1.0`, `NaN`, `Infinity`) and its string escapes.

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Error, ErrorKind, Value};

/// The options of `json.dumps` that transformers' `tojson` forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpOptions {
    /// Escape every non-ASCII character as `\uXXXX` (Python default `True`; transformers passes
    /// `False`).
    pub ensure_ascii: bool,
    /// `None` for one line; otherwise the string put before each nesting level (an integer
    /// indent `n` is `n` spaces).
    pub indent: Option<String>,
    /// Between items, and between a key and its value.
    pub separators: (String, String),
    /// Sort object keys.
    pub sort_keys: bool,
}

impl DumpOptions {
    /// `json.dumps` defaults as transformers calls it, given an indent.
    pub fn new(indent: Option<String>) -> Self {
        let item = if indent.is_some() { "," } else { ", " };
        DumpOptions { ensure_ascii: false, indent, separators: (item.into(), ": ".into()), sort_keys: false }
    }
}

/// The `tojson` filter: `value|tojson(ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`; arguments may be positional in that order or keywords.
pub fn tojson_filter(value: &Value, args: &[Value], kwargs: Kwargs) -> Result<Value, Error> {
    let arg = |pos: usize, name: &str| -> Result<Option<Value>, Error> {
        let kw: Option<Value> = kwargs.get(name)?;
        Ok(kw.or_else(|| args.get(pos).cloned()).filter(|v| !v.is_none() && !v.is_undefined()))
    };
    if args.len() > 4 {
        return Err(Error::new(ErrorKind::TooManyArguments, "tojson takes at most 4 arguments"));
    }
    let ensure_ascii = arg(0, "ensure_ascii")?.is_some_and(|v| v.is_true());
    let indent = match arg(1, "indent")? {
        None => None,
        Some(v) if v.kind() == ValueKind::String => Some(v.as_str().unwrap_or_default().to_string()),
        Some(v) => {
            let n = i64::try_from(v.clone())
                .map_err(|_| Error::new(ErrorKind::InvalidOperation, format!("tojson indent must be an int or a string, not {v}")))?;
            Some(" ".repeat(usize::try_from(n).unwrap_or(0)))
        }
    };
    let mut opts = DumpOptions::new(indent);
    opts.ensure_ascii = ensure_ascii;
    if let Some(seps) = arg(2, "separators")? {
        let parts: Vec<Value> = seps.try_iter()?.collect();
        match parts.as_slice() {
            [a, b] if a.as_str().is_some() && b.as_str().is_some() => {
                opts.separators = (a.as_str().unwrap_or_default().into(), b.as_str().unwrap_or_default().into());
            }
            _ => return Err(Error::new(ErrorKind::InvalidOperation, "tojson separators must be a pair of strings")),
        }
    }
    opts.sort_keys = arg(3, "sort_keys")?.is_some_and(|v| v.is_true());
    kwargs.assert_all_used()?;
    let mut out = String::new();
    dump(value, &opts, 0, &mut out)?;
    Ok(Value::from(out))
}

/// Serializes `value` like `json.dumps` with `opts`, appending to `out`.
pub fn dump(value: &Value, opts: &DumpOptions, level: usize, out: &mut String) -> Result<(), Error> {
    JsonWriter { opts, out }.value(value, level)
}

/// `json.dumps`'s encoder state: the options and the text written so far.
struct JsonWriter<'a> {
    opts: &'a DumpOptions,
    out: &'a mut String,
}

impl JsonWriter<'_> {
    fn value(&mut self, value: &Value, level: usize) -> Result<(), Error> {
        match value.kind() {
            ValueKind::Undefined => {
                return Err(Error::new(ErrorKind::InvalidOperation, "Object of type Undefined is not JSON serializable"))
            }
            ValueKind::None => self.out.push_str("null"),
            ValueKind::Bool => self.out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => dump_number(value, self.out),
            ValueKind::String | ValueKind::Bytes => {
                let s = value.as_str().map(str::to_string).unwrap_or_else(|| value.to_string());
                dump_str(&s, self.opts.ensure_ascii, self.out)
            }
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.container(('[', ']'), items.len(), level, |w, i, level| w.value(&items[i], level))?;
            }
            ValueKind::Map => {
                let mut entries = Vec::new();
                for key in value.try_iter()? {
                    let item = value.get_item(&key)?;
                    entries.push((key_string(&key)?, item));
                }
                if self.opts.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                }
                self.container(('{', '}'), entries.len(), level, |w, i, level| {
                    dump_str(&entries[i].0, w.opts.ensure_ascii, w.out);
                    w.out.push_str(&w.opts.separators.1);
                    w.value(&entries[i].1, level)
                })?;
            }
            _ => return Err(Error::new(ErrorKind::InvalidOperation, format!("Object of type {} is not JSON serializable", value.kind()))),
        }
        Ok(())
    }

    /// Writes `open`, the `n` items (each by `item`) with separators and indentation, then `close`.
    fn container(
        &mut self,
        (open, close): (char, char),
        n: usize,
        level: usize,
        mut item: impl FnMut(&mut Self, usize, usize) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.out.push(open);
        if n == 0 {
            self.out.push(close);
            return Ok(());
        }
        for i in 0..n {
            if i > 0 {
                self.out.push_str(&self.opts.separators.0);
            }
            self.newline(level + 1);
            item(self, i, level + 1)?;
        }
        self.newline(level);
        self.out.push(close);
        Ok(())
    }

    /// With an indent: a newline and `level` indents.
    fn newline(&mut self, level: usize) {
        if let Some(indent) = &self.opts.indent {
            self.out.push('\n');
            for _ in 0..level {
                self.out.push_str(indent);
            }
        }
    }
}

/// Python's json module turns non-string keys into strings (`True` → `"true"`, `1.5` → `"1.5"`).
fn key_string(key: &Value) -> Result<String, Error> {
    Ok(match key.kind() {
        ValueKind::String => key.as_str().unwrap_or_default().to_string(),
        ValueKind::None => "null".into(),
        ValueKind::Bool => (if key.is_true() { "true" } else { "false" }).into(),
        ValueKind::Number => {
            let mut s = String::new();
            dump_number(key, &mut s);
            s
        }
        _ => {
            return Err(Error::new(ErrorKind::InvalidOperation, format!("keys must be str, int, float, bool or None, not {}", key.kind())))
        }
    })
}

fn dump_number(value: &Value, out: &mut String) {
    if value.is_integer() {
        out.push_str(&value.to_string());
    } else if let Ok(f) = f64::try_from(value.clone()) {
        out.push_str(&float_repr(f));
    } else {
        out.push_str(&value.to_string());
    }
}

/// CPython's `float.__repr__` as `json.dumps` prints it: the shortest digits that round-trip,
/// positional for exponents in [-4, 16), scientific (`1e-05`, `1.5e+16`) outside.
pub fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    // Rust's `{:e}` gives the same shortest round-trip digits, as `d.ddde±x`.
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let n = digits.len() as i32;
    let sign = if f < 0.0 { "-" } else { "" };
    let body = if (-4..16).contains(&exp) {
        if exp >= n - 1 {
            format!("{digits}{}.0", "0".repeat((exp - (n - 1)) as usize))
        } else if exp >= 0 {
            let (int, frac) = digits.split_at((exp + 1) as usize);
            format!("{int}.{frac}")
        } else {
            format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() { String::new() } else { format!(".{rest}") };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{first}{frac}e{esign}{:02}", exp.abs())
    };
    format!("{sign}{body}")
}

/// A JSON string literal the way CPython's encoder writes it.
pub fn dump_str(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && (c as u32) > 0x7e) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dumps(v: serde_json::Value, opts: &DumpOptions) -> String {
        let mut out = String::new();
        dump(&Value::from(minijinja::value::Serde(&v)), opts, 0, &mut out).unwrap();
        out
    }

    #[test]
    fn float_repr_matches_python() {
        // Values checked against CPython 3.11 `repr(float)`.
        let cases = [
            (1.0, "1.0"),
            (2.5, "2.5"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123456789012345.0, "123456789012345.0"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (-3.25e-7, "-3.25e-07"),
            (1e100, "1e+100"),
            (0.30000000000000004, "0.30000000000000004"),
        ];
        for (f, want) in cases {
            assert_eq!(float_repr(f), want, "{f}");
        }
    }

    #[test]
    fn compact_and_indented_like_json_dumps() {
        let v = serde_json::json!({"b": [1, 2.5, null, true], "a": {"x": "é<>&'"}, "e": [], "f": {}});
        assert_eq!(dumps(v.clone(), &DumpOptions::new(None)), r#"{"b": [1, 2.5, null, true], "a": {"x": "é<>&'"}, "e": [], "f": {}}"#);
        let mut opts = DumpOptions::new(Some("  ".into()));
        opts.sort_keys = true;
        assert_eq!(
            dumps(v, &opts),
            "{\n  \"a\": {\n    \"x\": \"é<>&'\"\n  },\n  \"b\": [\n    1,\n    2.5,\n    null,\n    true\n  ],\n  \"e\": [],\n  \"f\": {}\n}"
        );
    }

    #[test]
    fn string_escapes_like_cpython() {
        let mut out = String::new();
        dump_str("a\"\\\n\t\u{1}\u{2028}😀", false, &mut out);
        assert_eq!(out, "\"a\\\"\\\\\\n\\t\\u0001\u{2028}😀\"");
        out.clear();
        dump_str("é😀", true, &mut out);
        assert_eq!(out, "\"\\u00e9\\ud83d\\ude00\"");
    }
}
