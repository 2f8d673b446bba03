//! Checks traffic against GitHub's own OpenAPI description (npm
//! `@octokit/openapi`, `generated/api.github.com.json`), so the simulator,
//! and what clients send it, cannot drift into fiction: the operation exists,
//! the status code is one GitHub documents for it, and request and response
//! bodies match GitHub's schemas.

use serde_json::{Map, Value};

use crate::Recorded;

/// GitHub's REST description.
pub struct Spec {
    doc: Value,
}

/// Statuses GitHub returns on any operation (authentication, rate limits,
/// outages) without listing them per operation.
const GLOBAL_STATUSES: [u16; 6] = [401, 403, 429, 500, 502, 503];

impl Spec {
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        let doc = serde_json::from_slice(&bytes).map_err(|e| format!("parse {}: {e}", path.display()))?;
        Ok(Self { doc })
    }

    /// The documented operation for `method` on the concrete `path`, with its
    /// path template.
    fn operation(&self, method: &str, path: &str) -> Option<(&str, &Value)> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        self.doc["paths"].as_object()?.iter().find_map(|(template, item)| {
            let parts: Vec<&str> = template.trim_matches('/').split('/').collect();
            let matches = parts.len() == segments.len()
                && parts
                    .iter()
                    .zip(&segments)
                    .all(|(p, s)| p == s || (p.starts_with('{') && p.ends_with('}')));
            let op = item.get(method.to_ascii_lowercase())?;
            matches.then_some((template.as_str(), op))
        })
    }

    /// Everything about `r` that contradicts GitHub's description.
    pub fn check(&self, r: &Recorded) -> Vec<String> {
        let what = format!("{} {} -> {}", r.method, r.path, r.status);
        let Some((template, op)) = self.operation(&r.method, &r.path) else {
            return vec![format!("{what}: no such operation in GitHub's API")];
        };
        let mut problems = Vec::new();
        if let Some(body) = &r.body {
            let schema = &op["requestBody"]["content"]["application/json"]["schema"];
            if schema.is_null() {
                problems.push(format!("{what}: GitHub takes no body for {template}"));
            } else {
                problems.extend(
                    self.violations(schema, body).into_iter().map(|v| format!("{what}: request: {v}")),
                );
            }
        }
        let status = r.status.to_string();
        let response = &op["responses"][&status];
        if response.is_null() {
            if !GLOBAL_STATUSES.contains(&r.status) && r.status != 304 {
                problems.push(format!("{what}: status {status} is not documented for {template}"));
            }
            return problems;
        }
        let response = self.resolve(response);
        let schema = &response["content"]["application/json"]["schema"];
        match (&r.response, schema.is_null()) {
            (Some(body), false) => {
                problems.extend(
                    self.violations(schema, body).into_iter().map(|v| format!("{what}: response: {v}")),
                );
            }
            (Some(_), true) => {
                problems.push(format!("{what}: GitHub sends no body with {status} for {template}"))
            }
            (None, false) => {
                problems.push(format!("{what}: GitHub sends a body with {status} for {template}"))
            }
            (None, true) => {}
        }
        problems
    }

    fn violations(&self, schema: &Value, instance: &Value) -> Vec<String> {
        let schema = self.json_schema(schema, 0);
        match jsonschema::validator_for(&schema) {
            Ok(v) => v.iter_errors(instance).map(|e| format!("{} at {}", e, e.instance_path())).collect(),
            Err(e) => vec![format!("unusable schema: {e}")],
        }
    }

    fn resolve<'a>(&'a self, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => r
                .strip_prefix("#/")
                .map(|p| p.split('/').fold(&self.doc, |node, key| &node[key]))
                .unwrap_or(&Value::Null),
            None => v,
        }
    }

    /// OpenAPI 3.0 schema → JSON Schema: `$ref`s inlined, `nullable` turned
    /// into a `null` type.
    fn json_schema(&self, schema: &Value, depth: usize) -> Value {
        if depth > 40 {
            return Value::Bool(true);
        }
        let schema = self.resolve(schema);
        match schema {
            Value::Object(map) => {
                let mut out = Map::new();
                for (k, v) in map {
                    let converted = match k.as_str() {
                        "properties" | "patternProperties" => Value::Object(
                            v.as_object()
                                .into_iter()
                                .flatten()
                                .map(|(name, s)| (name.clone(), self.json_schema(s, depth + 1)))
                                .collect(),
                        ),
                        "items" | "additionalProperties" | "not" if v.is_object() => {
                            self.json_schema(v, depth + 1)
                        }
                        "oneOf" | "anyOf" | "allOf" => Value::Array(
                            v.as_array()
                                .into_iter()
                                .flatten()
                                .map(|s| self.json_schema(s, depth + 1))
                                .collect(),
                        ),
                        "nullable" | "example" | "examples" | "discriminator" | "xml" | "externalDocs" => {
                            continue;
                        }
                        _ => v.clone(),
                    };
                    out.insert(k.clone(), converted);
                }
                if map.get("nullable").and_then(Value::as_bool) == Some(true) {
                    match out.get("type").cloned() {
                        Some(Value::String(t)) => {
                            out.insert("type".into(), serde_json::json!([t, "null"]));
                            if let Some(Value::Array(e)) = out.get_mut("enum") {
                                e.push(Value::Null);
                            }
                        }
                        _ => return serde_json::json!({ "anyOf": [Value::Object(out), { "type": "null" }] }),
                    }
                }
                Value::Object(out)
            }
            other => other.clone(),
        }
    }
}
