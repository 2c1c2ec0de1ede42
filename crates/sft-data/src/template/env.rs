//! The Jinja environment transformers renders chat templates in, rebuilt on minijinja.
//!
//! transformers uses an immutable sandboxed jinja2 environment with `trim_blocks`,
//! `lstrip_blocks`, the loop-controls extension, a `tojson` filter that is `json.dumps`, and the
//! globals `raise_exception` and `strftime_now`. Python's string/list/dict methods come from
//! minijinja-contrib's pycompat layer plus the few extras below. Templates are untrusted: the
//! environment has no loader (no file access), a fuel budget (a looping template stops with an
//! error) and minijinja's recursion limit.

use std::sync::Arc;

use chrono::NaiveDateTime;
use minijinja::value::{from_args, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, State, Value};

use super::pyjson;

/// Instructions a single render may execute before it is stopped. Real templates on long
/// conversations use well under 1% of this.
pub const FUEL: u64 = 5_000_000;

/// The time `strftime_now` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Clock {
    /// The machine's local time, as transformers' `datetime.now()`.
    #[default]
    System,
    /// A frozen time (tests, reproducible renders).
    Fixed(NaiveDateTime),
}

/// Marks the start of a `{% generation %}` block in raw output (a Unicode noncharacter).
pub const GEN_START: char = '\u{FDD0}';
/// Marks the end of a `{% generation %}` block in raw output.
pub const GEN_END: char = '\u{FDD1}';
/// The filter our rewritten `{% generation %}` blocks call.
pub const GEN_FILTER: &str = "__sft_generation";

/// Builds the environment templates are compiled in.
pub fn environment(clock: Clock) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_syntax(minijinja::syntax::SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build().unwrap_or_default());
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_fuel(Some(FUEL));
    env.set_debug(false);
    env.set_unknown_method_callback(python_method);
    env.add_filter("tojson", pyjson::tojson_filter);
    // jinja2: `none is iterable` is false, an undefined value is iterable (as empty).
    env.add_test("iterable", |v: Value| !matches!(v.kind(), ValueKind::None | ValueKind::Bool | ValueKind::Number));
    env.add_filter(GEN_FILTER, |body: String| format!("{GEN_START}{body}{GEN_END}"));
    env.add_function("raise_exception", |message: Value| -> Result<Value, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, message.to_string()))
    });
    let clock = Arc::new(clock);
    env.add_function("strftime_now", move |format: String| -> Result<Value, Error> {
        let now = match *clock {
            Clock::System => chrono::Local::now().naive_local(),
            Clock::Fixed(t) => t,
        };
        let mut out = String::new();
        std::fmt::write(&mut out, format_args!("{}", now.format(&format)))
            .map_err(|_| Error::new(ErrorKind::InvalidOperation, format!("strftime_now: invalid format {format:?}")))?;
        Ok(Value::from(out))
    });
    env
}

/// Python methods on values (`"x".startswith(...)`, `d.items()`, …): minijinja-contrib's
/// pycompat set, then a few that real templates call and pycompat lacks.
fn python_method(state: &mut State, value: &Value, method: &str, args: &[Value]) -> Result<Value, Error> {
    match minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args) {
        Err(err) if err.kind() == ErrorKind::UnknownMethod => extra_method(value, method, args),
        other => other,
    }
    .map_err(|err| {
        if err.kind() == ErrorKind::UnknownMethod {
            Error::new(ErrorKind::UnknownMethod, format!("{} has no method named {method}", value.kind()))
        } else {
            err
        }
    })
}

fn extra_method(value: &Value, method: &str, args: &[Value]) -> Result<Value, Error> {
    match (value.kind(), method) {
        (ValueKind::String, "rsplit") => {
            let s = value.as_str().unwrap_or_default();
            let (sep, maxsplit): (Option<String>, Option<i64>) = from_args(args)?;
            let max = maxsplit.filter(|m| *m >= 0).map(|m| m as usize);
            let mut parts: Vec<&str> = match (&sep, max) {
                (Some(sep), Some(m)) => s.rsplitn(m + 1, sep.as_str()).collect(),
                (Some(sep), None) => s.rsplit(sep.as_str()).collect(),
                (None, _) => s.split_whitespace().rev().collect(),
            };
            parts.reverse();
            Ok(parts.into_iter().map(Value::from).collect())
        }
        (ValueKind::String, "index" | "rindex") => {
            let s = value.as_str().unwrap_or_default();
            let (needle,): (String,) = from_args(args)?;
            let found = if method == "index" { s.find(&needle) } else { s.rfind(&needle) };
            match found {
                Some(byte) => Ok(Value::from(s[..byte].chars().count())),
                None => Err(Error::new(ErrorKind::InvalidOperation, "substring not found")),
            }
        }
        (ValueKind::Seq, "index") => {
            let (needle,): (Value,) = from_args(args)?;
            value
                .try_iter()?
                .position(|v| v == needle)
                .map(Value::from)
                .ok_or_else(|| Error::new(ErrorKind::InvalidOperation, format!("{needle} is not in list")))
        }
        (ValueKind::Map, "copy") | (ValueKind::Seq, "copy") => Ok(value.clone()),
        (_, "append" | "extend" | "pop" | "insert" | "update" | "clear" | "remove" | "setdefault") => {
            // jinja2's ImmutableSandboxedEnvironment refuses mutation the same way.
            Err(Error::new(ErrorKind::InvalidOperation, format!("access to attribute '{method}' of '{}' object is unsafe", value.kind())))
        }
        _ => Err(Error::from(ErrorKind::UnknownMethod)),
    }
}
