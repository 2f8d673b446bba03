//! CEL filters: which deliveries an agent gets, beyond its `events` and
//! `repositories`.
//!
//! Over 400 lines: compiling with its bounds (a tenant's expression in a
//! shared process), the variables a delivery binds, and their tests, which
//! are most of it.
//!
//! A filter is a CEL expression over the delivery's headers (`event`,
//! `action`, `delivery`, `hook`, `repository`) and its whole payload
//! (`body`), true for the deliveries the agent wants:
//!
//! ```text
//! body.pull_request.base.ref == 'main' && !body.pull_request.draft && body.sender.type != 'Bot'
//! ```
//!
//! The operator compiles every filter when a policy is applied and writes the
//! ones that compile into the policy's status ([`crate::operator`]); receivers
//! compile only what status holds, so a filter that does not compile never
//! reaches them and they keep the last good one.
//!
//! Filters are a tenant's to write and run in the shared receiver, on
//! payloads the tenant can sign itself, so what a filter may do is bounded
//! when it is compiled ([`compile`]): at most [`MAX_LEN`] characters, only
//! the variables above, and macros (`exists`, `all`, `map`, …) that range
//! over a field path (`body.commits`, `c.files`) nested at most two deep, the
//! inner one over the outer one's element — so nesting never multiplies the
//! payload by itself. (A step that scans the payload inside a macro, such as
//! `body.commits.all(c, body.text.contains(c.id))`, still costs their
//! product; the time filters take is measured per policy,
//! `hookwarden_filter_seconds`.)
//!
//! A delivery's payload is read once for all the filters that read `body`,
//! in one pass into CEL values, and only the fields they name
//! ([`Filters::facts`], [`Paths`]); not at all when none does.

use std::{
    cell::OnceCell,
    fmt,
    sync::{Arc, LazyLock},
};

use cel::{
    Context, Env, Program, Value,
    common::{ast::Expr, types, value::Val},
};

use crate::queue::Delivery;

/// Longest filter accepted, in bytes.
pub const MAX_LEN: usize = 4096;

/// The variables a filter may use.
pub const VARIABLES: &[&str] = &["event", "action", "delivery", "hook", "repository", "body"];

/// Identifiers CEL itself defines (type names, for `type(x) == string`).
const TYPE_NAMES: &[&str] =
    &["int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type", "dyn"];

/// How deep macros may nest.
const MAX_NESTING: usize = 2;

/// The standard library and the strings extension (`lowerAscii`, `split`, …).
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib();
    env.add_extension(cel::extensions::strings).expect("the strings extension adds to the standard library");
    Arc::new(env)
});

/// Why a filter does not compile, and where (1-based line and column).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("at {line}:{column}: {message}")]
pub struct CompileError {
    pub line: u32,
    pub column: u32,
    pub message: String,
}

impl CompileError {
    fn at(position: Option<(u32, u32)>, message: impl Into<String>) -> Self {
        let (line, column) = position.unwrap_or((1, 1));
        Self { line, column, message: message.into() }
    }
}

/// The parts of the payload filters read: a field path's end reads all
/// below it (`whole`); other fields are skipped when the payload is read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Paths {
    whole: bool,
    fields: std::collections::BTreeMap<String, Paths>,
}

impl Paths {
    fn everything() -> Self {
        Self { whole: true, fields: Default::default() }
    }

    fn add(&mut self, path: &[&str]) {
        match path.split_first() {
            _ if self.whole => {}
            None => *self = Self::everything(),
            Some((field, rest)) => self.fields.entry((*field).to_owned()).or_default().add(rest),
        }
    }

    fn merge(&mut self, other: &Paths) {
        if other.whole {
            *self = Self::everything();
        } else if !self.whole {
            for (field, below) in &other.fields {
                self.fields.entry(field.clone()).or_default().merge(below);
            }
        }
    }
}

/// A compiled filter.
#[derive(Clone)]
pub struct Filter {
    source: String,
    program: Arc<Program>,
    /// What of `body` it reads; `None`: it does not.
    body: Option<Paths>,
}

impl PartialEq for Filter {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Filter").field(&self.source).finish()
    }
}

impl Filter {
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Does it use `body` (so the payload must be parsed)?
    pub fn reads_body(&self) -> bool {
        self.body.is_some()
    }

    /// True when the delivery described by `facts` passes. An expression
    /// that fails on it (a missing field, a type mismatch) or gives
    /// something other than a bool is an error, which callers count as no
    /// match.
    pub fn eval(&self, facts: &Facts) -> Result<bool, String> {
        let context = facts.context(self.reads_body());
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.program.execute(context)))
            .map_err(|_| "the CEL interpreter failed on this delivery".to_owned())?;
        match result {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!("the filter gave {}, not a bool", other.type_of())),
            Err(error) => Err(error.to_string()),
        }
    }
}

/// Compiles `source`, refusing what a filter may not do (see the module).
pub fn compile(source: &str) -> Result<Filter, CompileError> {
    if source.len() > MAX_LEN {
        return Err(CompileError::at(None, format!("longer than {MAX_LEN} bytes")));
    }
    if source.trim().is_empty() {
        return Err(CompileError::at(None, "empty"));
    }
    // NB: the parser is a generated one; hostile text must not take a receiver or the operator down.
    let parsed = std::panic::catch_unwind(|| ENV.compile(source))
        .map_err(|_| CompileError::at(None, "the CEL parser failed on this text"))?;
    let program = parsed.map_err(|errors| {
        let first = errors.errors.first();
        let position = first.map(|e| (e.pos.0.max(1) as u32, e.pos.1.max(0) as u32));
        let message = first.map_or_else(|| "does not parse".to_owned(), |e| e.msg.clone());
        CompileError::at(position, message)
    })?;
    let mut check = Check { program: &program, bound: Vec::new(), ranges: Vec::new(), body: None };
    check.expr(program.expression())?;
    let body = check.body;
    Ok(Filter { source: source.to_owned(), program: Arc::new(program), body })
}

/// The walk that finds undeclared variables and unbounded macros.
struct Check<'p> {
    program: &'p Program,
    /// Variables bound by the enclosing macros.
    bound: Vec<&'p str>,
    /// The element variables of the enclosing macros, outermost first.
    ranges: Vec<&'p str>,
    /// The paths of `body` read so far.
    body: Option<Paths>,
}

impl<'p> Check<'p> {
    fn position(&self, id: u64) -> Option<(u32, u32)> {
        let (start, _) = self.program.source_info().offset_for(id)?;
        Some(line_column(&self.program.source_info().source, start as usize))
    }

    fn expr(&mut self, e: &'p cel::IdedExpr) -> Result<(), CompileError> {
        match &e.expr {
            Expr::Ident(name) => {
                let name = name.as_str();
                if self.bound.contains(&name) || TYPE_NAMES.contains(&name) {
                    return Ok(());
                }
                if !VARIABLES.contains(&name) {
                    let known = VARIABLES.join(", ");
                    return Err(CompileError::at(
                        self.position(e.id),
                        format!("unknown variable '{name}' (a filter knows {known})"),
                    ));
                }
                if name == "body" {
                    // Read as a whole: passed to a function, indexed, compared.
                    self.body.get_or_insert_with(Paths::default).add(&[]);
                }
                Ok(())
            }
            Expr::Select(_) if !self.bound.contains(&"body") && body_path(&e.expr).is_some() => {
                let path = body_path(&e.expr).unwrap_or_default();
                self.body.get_or_insert_with(Paths::default).add(&path);
                Ok(())
            }
            Expr::Select(s) => self.expr(&s.operand),
            Expr::Call(call) => {
                if let Some(target) = &call.target {
                    self.expr(target)?;
                }
                call.args.iter().try_for_each(|a| self.expr(a))
            }
            Expr::List(list) => list.elements.iter().try_for_each(|x| self.expr(x)),
            Expr::Map(map) => map.entries.iter().try_for_each(|entry| match &entry.expr {
                cel::common::ast::EntryExpr::MapEntry(m) => {
                    self.expr(&m.key)?;
                    self.expr(&m.value)
                }
                cel::common::ast::EntryExpr::StructField(f) => self.expr(&f.value),
            }),
            Expr::Struct(s) => s.entries.iter().try_for_each(|entry| match &entry.expr {
                cel::common::ast::EntryExpr::StructField(f) => self.expr(&f.value),
                cel::common::ast::EntryExpr::MapEntry(m) => self.expr(&m.value),
            }),
            Expr::Comprehension(c) => self.comprehension(c),
            Expr::Literal(_) | Expr::Unspecified => Ok(()),
        }
    }

    fn comprehension(&mut self, c: &'p cel::common::ast::ComprehensionExpr) -> Result<(), CompileError> {
        if self.ranges.len() >= MAX_NESTING {
            let at = self.position(leftmost(&c.iter_range).id);
            return Err(CompileError::at(at, format!("macros nest at most {MAX_NESTING} deep")));
        }
        let root = path_root(&c.iter_range.expr);
        let allowed = match (root, self.ranges.last()) {
            // An outer macro ranges over a field path of a variable...
            (Some(root), None) => VARIABLES.contains(&root) || self.bound.contains(&root),
            // ... an inner one over a path of the outer one's element.
            (Some(root), Some(outer)) => root == *outer,
            (None, _) => false,
        };
        if !allowed {
            let what = match self.ranges.last() {
                None => "a field path such as body.commits".to_owned(),
                Some(outer) => format!("a field path of the outer element, such as {outer}.files"),
            };
            return Err(CompileError::at(
                self.position(leftmost(&c.iter_range).id),
                format!("a macro must range over {what}"),
            ));
        }
        self.expr(&c.iter_range)?;
        self.expr(&c.accu_init)?;
        let depth = self.bound.len();
        self.bound.push(&c.iter_var);
        if let Some(v) = &c.iter_var2 {
            self.bound.push(v);
        }
        self.bound.push(&c.accu_var);
        self.ranges.push(&c.iter_var);
        let body = [&c.loop_cond, &c.loop_step, &c.result].into_iter().try_for_each(|x| self.expr(x));
        self.ranges.pop();
        self.bound.truncate(depth);
        body
    }
}

/// The 1-based line and column of character `offset` of `source`.
fn line_column(source: &str, offset: usize) -> (u32, u32) {
    let before: Vec<char> = source.chars().take(offset).collect();
    let line = before.iter().filter(|c| **c == '\n').count() + 1;
    let column = before.iter().rev().take_while(|c| **c != '\n').count() + 1;
    (line as u32, column as u32)
}

/// Where an expression starts: its leftmost operand.
fn leftmost(e: &cel::IdedExpr) -> &cel::IdedExpr {
    match &e.expr {
        Expr::Select(s) => leftmost(&s.operand),
        Expr::Call(c) => c.target.as_deref().or(c.args.first()).map_or(e, leftmost),
        _ => e,
    }
}

/// `[b, c]` of `body.b.c`; `None` when it is no field path of `body`.
fn body_path(e: &Expr) -> Option<Vec<&str>> {
    match e {
        Expr::Ident(name) if name == "body" => Some(Vec::new()),
        Expr::Select(s) => {
            let mut path = body_path(&s.operand.expr)?;
            path.push(&s.field);
            Some(path)
        }
        _ => None,
    }
}

/// `a` of `a.b.c`; `None` when the expression is not a field path.
fn path_root(e: &Expr) -> Option<&str> {
    match e {
        Expr::Ident(name) => Some(name),
        Expr::Select(s) if !s.test => path_root(&s.operand.expr),
        _ => None,
    }
}

/// What filters see of one delivery: its variables, bound once for all
/// the filters judged on it; the payload parsed only on first use by a
/// filter that reads `body`.
pub struct Facts<'d> {
    delivery: &'d Delivery,
    /// What of the payload to read.
    paths: Paths,
    headers: OnceCell<Context<'static, 'static>>,
    with_body: OnceCell<Context<'static, 'static>>,
}

impl<'d> Facts<'d> {
    /// The facts of `delivery`, all of its payload read when a filter asks.
    pub fn new(delivery: &'d Delivery) -> Self {
        Self::reading(delivery, Paths::everything())
    }

    fn reading(delivery: &'d Delivery, paths: Paths) -> Self {
        Self { delivery, paths, headers: OnceCell::new(), with_body: OnceCell::new() }
    }

    fn context(&self, with_body: bool) -> &Context<'static, 'static> {
        let bind = |body: bool| {
            let d = self.delivery;
            let mut c = Context::with_env(ENV.clone());
            let text = |s: &str| Value::String(Arc::new(s.to_owned()));
            let optional = |s: Option<&String>| s.map_or(Value::Null, |s| text(s));
            c.add_variable_from_value("event", text(&d.event));
            c.add_variable_from_value("action", optional(d.action.as_ref()));
            c.add_variable_from_value("delivery", text(&d.guid));
            c.add_variable_from_value("hook", text(&d.hook.to_string()));
            c.add_variable_from_value("repository", optional(d.repository.as_ref()));
            if body {
                let body: Box<dyn Val> =
                    body_of(&d.payload, &self.paths).unwrap_or_else(|_| Box::new(types::CelNull));
                c.add_variable_as_val("body", body);
            }
            c
        };
        match with_body {
            true => self.with_body.get_or_init(|| bind(true)),
            false => self.headers.get_or_init(|| bind(false)),
        }
    }

    #[cfg(test)]
    fn parsed(&self) -> bool {
        self.with_body.get().is_some()
    }
}

/// A JSON payload as CEL values, read in one pass: integers as `int`
/// where they fit (so `body.number == 7` holds), else `uint` or `double`.
/// (serde_json's nesting limit holds: a hostile payload cannot recurse
/// deeper than 128.)
fn body_of(payload: &[u8], paths: &Paths) -> Result<Box<dyn Val>, serde_json::Error> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_slice(payload);
    let body = Json(paths).deserialize(&mut de)?;
    de.end()?;
    Ok(body)
}

/// The seed and visitor of [`body_of`]: what to read of the value.
#[derive(Clone, Copy)]
struct Json<'p>(&'p Paths);

impl<'de> serde::de::DeserializeSeed<'de> for Json<'_> {
    type Value = Box<dyn Val>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Json<'_> {
    type Value = Box<dyn Val>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
        Ok(Box::new(types::CelBool::from(b)))
    }
    fn visit_i64<E>(self, i: i64) -> Result<Self::Value, E> {
        Ok(Box::new(types::CelInt::from(i)))
    }
    fn visit_u64<E>(self, u: u64) -> Result<Self::Value, E> {
        Ok(match i64::try_from(u) {
            Ok(i) => Box::new(types::CelInt::from(i)),
            Err(_) => Box::new(types::CelUInt::from(u)),
        })
    }
    fn visit_f64<E>(self, f: f64) -> Result<Self::Value, E> {
        Ok(Box::new(types::CelDouble::from(f)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Box::new(types::CelString::from(s.to_owned())))
    }
    fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
        Ok(Box::new(types::CelString::from(s)))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Box::new(types::CelNull))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items: Vec<Box<dyn Val>> = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Box::new(types::CelList::from(items)))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = std::collections::HashMap::with_capacity(map.size_hint().unwrap_or(0));
        while let Some(key) = map.next_key::<String>()? {
            let below = match self.0.whole {
                true => self.0,
                false => match self.0.fields.get(&key) {
                    Some(below) => below,
                    None => {
                        map.next_value::<serde::de::IgnoredAny>()?;
                        continue;
                    }
                },
            };
            let value = map.next_value_seed(Json(below))?;
            fields.insert(types::CelMapKey::from(key), value);
        }
        Ok(Box::new(types::CelMap::from(fields)))
    }
}

/// The filters receivers apply for one policy: the policy's own (every
/// agent's deliveries pass it first) and each agent's.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filters {
    pub policy: Option<Result<Filter, CompileError>>,
    pub agents: std::collections::HashMap<String, Result<Filter, CompileError>>,
}

/// One filter's decision for one delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// The filter is false: `filter` is `"policy"` or `"agent"`.
    NoMatch {
        filter: &'static str,
    },
    /// The filter failed on the delivery, or never compiled.
    Error {
        filter: &'static str,
        error: String,
    },
    /// No agent's `events` and `repositories` take the delivery (no filter
    /// was asked).
    Unwanted,
}

impl Verdict {
    /// The `reason` label of `hookwarden_filtered_total`.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Self::Pass | Self::Unwanted => None,
            Self::NoMatch { .. } => Some("no_match"),
            Self::Error { .. } => Some("error"),
        }
    }

    /// In words, for the activity log.
    pub fn detail(&self) -> String {
        match self {
            Self::Pass => "passed".to_owned(),
            Self::NoMatch { filter } => format!("{filter} filter is false"),
            Self::Error { filter, error } => format!("{filter} filter failed: {error}"),
            Self::Unwanted => "no agent's events and repositories take it".to_owned(),
        }
    }
}

/// Every `reason` of `hookwarden_filtered_total`.
pub const REASONS: &[&str] = &["no_match", "error"];

fn judge(filter: Option<&Result<Filter, CompileError>>, which: &'static str, facts: &Facts) -> Verdict {
    match filter {
        None => Verdict::Pass,
        Some(Err(e)) => Verdict::Error { filter: which, error: format!("it does not compile ({e})") },
        Some(Ok(f)) => match f.eval(facts) {
            Ok(true) => Verdict::Pass,
            Ok(false) => Verdict::NoMatch { filter: which },
            Err(error) => Verdict::Error { filter: which, error },
        },
    }
}

impl Filters {
    pub fn is_empty(&self) -> bool {
        self.policy.is_none() && self.agents.is_empty()
    }

    /// The facts of `d` for these filters: only the parts of its payload
    /// they read are read.
    pub fn facts<'d>(&self, d: &'d Delivery) -> Facts<'d> {
        let mut paths = Paths::default();
        let filters = self.policy.iter().chain(self.agents.values());
        for body in filters.filter_map(|f| f.as_ref().ok()?.body.as_ref()) {
            paths.merge(body);
        }
        Facts::reading(d, paths)
    }

    /// The verdict for each of `agents`, the policy's filter judged once.
    pub fn judge<'a>(&self, agents: &[&'a str], facts: &Facts) -> Vec<(&'a str, Verdict)> {
        let policy = judge(self.policy.as_ref(), "policy", facts);
        agents
            .iter()
            .map(|agent| match &policy {
                Verdict::Pass => (*agent, judge(self.agents.get(*agent), "agent", facts)),
                refused => (*agent, refused.clone()),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ObjectRef;
    use bytes::Bytes;
    use serde_json::json;

    fn delivery(event: &str, payload: serde_json::Value) -> Delivery {
        let hook = ObjectRef::new("team-a", "repo-hook");
        Delivery::parse("guid-1", event, &hook, Bytes::from(payload.to_string())).unwrap()
    }

    fn pr(base: &str, draft: bool, sender: &str, action: &str) -> Delivery {
        delivery(
            "pull_request",
            json!({"action": action, "number": 7,
                   "pull_request": {"base": {"ref": base}, "draft": draft, "labels": [{"name": "ai-review"}]},
                   "sender": {"login": "u", "type": sender},
                   "repository": {"full_name": "octo-org/hello-world"}}),
        )
    }

    #[test]
    fn filters_decide_on_headers_and_payload() {
        let want =
            "body.pull_request.base.ref == 'main' && !body.pull_request.draft && body.sender.type != 'Bot'";
        let rows: &[(&str, Delivery, Result<bool, &str>)] = &[
            (want, pr("main", false, "User", "opened"), Ok(true)),
            (want, pr("main", true, "User", "opened"), Ok(false)),
            (want, pr("dev", false, "User", "opened"), Ok(false)),
            (want, pr("main", false, "Bot", "opened"), Ok(false)),
            (want, delivery("push", json!({"ref": "refs/heads/main"})), Err("No such key")),
            ("action in ['opened', 'synchronize']", pr("main", false, "User", "synchronize"), Ok(true)),
            ("action in ['opened', 'synchronize']", pr("main", false, "User", "closed"), Ok(false)),
            ("action == null", delivery("push", json!({})), Ok(true)),
            (
                "event == 'push' && hook == 'team-a/repo-hook' && delivery == 'guid-1'",
                delivery("push", json!({})),
                Ok(true),
            ),
            ("repository.startsWith('octo-org/')", pr("main", false, "User", "opened"), Ok(true)),
            ("body.number == 7 && body.number > 6", pr("main", false, "User", "opened"), Ok(true)),
            (
                "body.pull_request.labels.exists(l, l.name == 'ai-review')",
                pr("main", false, "User", "opened"),
                Ok(true),
            ),
            (
                "has(body.pull_request) && body.sender.login.upperAscii() == 'U'",
                pr("main", false, "User", "opened"),
                Ok(true),
            ),
            ("has(body.pull_request)", delivery("push", json!({})), Ok(false)),
            ("body.number", pr("main", false, "User", "opened"), Err("the filter gave int, not a bool")),
            ("repository == 'x'", delivery("push", json!({})), Ok(false)),
        ];
        for (source, d, want) in rows {
            let filter = compile(source).unwrap();
            let got = filter.eval(&Facts::new(d));
            // Reading only what the filter reads changes nothing.
            let narrowed = Filters { policy: None, agents: [("a".to_owned(), Ok(filter.clone()))].into() };
            assert_eq!(filter.eval(&narrowed.facts(d)), got, "{source}");
            match (want, got) {
                (Ok(w), Ok(g)) => assert_eq!(*w, g, "{source}"),
                (Err(w), Err(g)) => assert!(g.contains(w), "{source}: {g}"),
                (w, g) => panic!("{source}: want {w:?}, got {g:?}"),
            }
        }
    }

    #[test]
    fn filters_that_cannot_be_bounded_or_name_unknown_things_do_not_compile() {
        let rows: &[(&str, (u32, u32), &str)] = &[
            ("bdy.action == 'x'", (1, 1), "unknown variable 'bdy'"),
            ("event == 'push' &&\n  payload.x", (2, 3), "unknown variable 'payload'"),
            ("event == ", (1, 10), "Syntax error"),
            ("event === 'push'", (1, 9), "Syntax error"),
            ("", (1, 1), "empty"),
            (
                "body.commits.all(c, body.commits.all(d, c.id != d.id))",
                (1, 21),
                "outer element, such as c.files",
            ),
            ("[body, body].exists(b, b.x)", (1, 1), "field path such as body.commits"),
            ("body.a.all(x, x.b.all(y, y.c.all(z, z)))", (1, 26), "nest at most 2 deep"),
            ("body.commits.map(c, c.x).exists(d, d)", (1, 17), "field path"),
        ];
        for (source, at, message) in rows {
            let error = compile(source).map(|f| f.source().to_owned()).unwrap_err();
            assert!(error.message.contains(message), "{source}: {error}");
            assert_eq!((error.line, error.column), *at, "{source}: {error}");
        }
        assert!(
            compile(&"event == 'push' || ".repeat(300)).unwrap_err().message.contains("longer than 4096")
        );
        // What is allowed: a macro over an element's field inside one over a path, bound names, types.
        for ok in [
            "body.commits.exists(c, c.modified.exists(f, f.startsWith('docs/')))",
            "body.commits.all(c, type(c) == map)",
            "body.labels.map(l, l.name).size() > 0 || true",
        ] {
            compile(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn a_filter_reads_the_paths_it_names_and_all_below_their_ends() {
        let f = compile("body.pull_request.base.ref == 'main' && has(body.sender.type) && body.pull_request.labels.exists(l, l.name == 'x')").unwrap();
        let mut want = Paths::default();
        for path in [&["pull_request", "base", "ref"][..], &["sender", "type"], &["pull_request", "labels"]] {
            want.add(path);
        }
        assert_eq!(f.body, Some(want));
        assert_eq!(f.body.as_ref().unwrap().fields["pull_request"].fields["labels"], Paths::everything());
        for whole in ["size(body) > 0", "body['x'] == 1", "body == {}"] {
            assert_eq!(compile(whole).unwrap().body, Some(Paths::everything()), "{whole}");
        }
        assert_eq!(compile("event == 'push'").unwrap().body, None);
    }

    #[test]
    fn the_payload_is_parsed_only_for_filters_that_read_it() {
        let f = compile("event == 'push'").unwrap();
        assert!(!f.reads_body());
        assert!(compile("body.x == 1").unwrap().reads_body());
        let d = delivery("push", json!({}));
        let facts = Facts::new(&d);
        assert_eq!(f.eval(&facts), Ok(true));
        assert!(!facts.parsed(), "not parsed");
        compile("has(body.x)").unwrap().eval(&facts).unwrap();
        assert!(facts.parsed());
    }

    #[test]
    fn a_failing_or_broken_policy_filter_refuses_every_agent_and_agents_are_judged_by_their_own() {
        let d = pr("main", false, "User", "opened");
        let facts = Facts::new(&d);
        let mut filters = Filters::default();
        filters.agents.insert("drafts".into(), compile("body.pull_request.draft"));
        filters.agents.insert("broken".into(), Err(CompileError::at(Some((1, 3)), "nope")));
        let got = filters.judge(&["all", "drafts", "broken"], &facts);
        assert_eq!(got[0], ("all", Verdict::Pass));
        assert_eq!(got[1], ("drafts", Verdict::NoMatch { filter: "agent" }));
        assert!(
            matches!(&got[2].1, Verdict::Error { error, .. } if error.contains("does not compile (at 1:3: nope)"))
        );
        filters.policy = Some(compile("event == 'push'"));
        let got = filters.judge(&["all", "drafts"], &facts);
        assert!(got.iter().all(|(_, v)| *v == Verdict::NoMatch { filter: "policy" }), "{got:?}");
        assert_eq!(got[0].1.detail(), "policy filter is false");
    }
}
