//! The JSON Schema of pipeline files (`weir schema`), generated from the YAML types of
//! [`crate::model`] and their doc comments, for editors (yaml-language-server) and CI checks.
//!
//! The file is interpolated (`${VAR}`, `${VAR:-default}`) before it is parsed, so wherever the
//! schema asks for a number, a boolean, one of a set of words or a pattern, it also accepts a
//! string holding an interpolation.

use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

use crate::model::PipelineDoc;

/// Where the schema says it lives (its `$id`).
pub const SCHEMA_ID: &str = "https://weir.dev/schemas/pipeline.json";

/// The JSON Schema (draft 7) of a pipeline file.
pub fn json_schema() -> Value {
    let generator = SchemaSettings::draft07().into_generator();
    let mut value = generator.into_root_schema_for::<PipelineDoc>().to_value();
    allow_interpolation(&mut value);
    if let Value::Object(root) = &mut value {
        root.insert("$id".into(), Value::from(SCHEMA_ID));
        root.insert("title".into(), Value::from("weir pipeline file"));
    }
    value
}

/// The schema of a string holding at least one `${VAR}` interpolation.
fn interpolation() -> Value {
    json!({
        "type": "string",
        "pattern": "\\$\\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\\}",
        "description": "an environment variable, ${VAR} or ${VAR:-default}, replaced before the file is read"
    })
}

/// Whether a schema node constrains a scalar in a way an interpolation string would fail.
fn needs_interpolation(node: &Map<String, Value>) -> bool {
    if node.contains_key("enum") || node.contains_key("pattern") || node.contains_key("const") {
        return true;
    }
    let scalar = |t: &Value| matches!(t.as_str(), Some("integer" | "number" | "boolean"));
    match node.get("type") {
        Some(Value::Array(types)) => types.iter().any(scalar),
        Some(t) => scalar(t),
        None => false,
    }
}

/// Rewrites every scalar constraint `S` of the tree as `anyOf: [S, interpolation]`, keeping
/// its description on the outside (where editors show it).
fn allow_interpolation(value: &mut Value) {
    match value {
        Value::Object(node) => {
            for child in node.values_mut() {
                allow_interpolation(child);
            }
            if needs_interpolation(node) {
                let description = node.remove("description");
                let inner = std::mem::take(node);
                node.insert(
                    "anyOf".into(),
                    json!([Value::Object(inner), interpolation()]),
                );
                if let Some(d) = description {
                    node.insert("description".into(), d);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(allow_interpolation),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn property<'a>(schema: &'a Value, path: &[&str]) -> &'a Value {
        let mut node = schema;
        for (i, key) in path.iter().enumerate() {
            node = if i == 0 {
                &schema["properties"][key]
            } else {
                &schema["definitions"][key]
            };
            let _ = node;
        }
        node
    }

    #[test]
    fn the_schema_describes_every_top_level_key_and_refuses_others() {
        let schema = json_schema();
        assert_eq!(schema["additionalProperties"], Value::Bool(false));
        for key in [
            "name",
            "sources",
            "windows",
            "views",
            "sinks",
            "dead_letter",
            "checkpoint",
            "serve",
            "tracing",
            "parallelism",
        ] {
            assert!(
                schema["properties"].get(key).is_some(),
                "no `{key}` in the schema"
            );
        }
        assert_eq!(schema["required"], json!(["name"]));
        assert!(property(&schema, &["name"])["description"].is_string());
    }

    #[test]
    fn numbers_durations_and_words_also_accept_an_interpolation() {
        let schema = json_schema();
        let duration = &schema["definitions"]["Duration"];
        let any = duration["anyOf"].as_array().expect("Duration is anyOf");
        assert_eq!(any[0]["pattern"], "^\\s*[0-9]+(ms|s|m|h|d)\\s*$");
        assert_eq!(any[1]["type"], "string");
        let count = &schema["definitions"]["GeneratorDoc"]["properties"]["count"];
        assert!(count["anyOf"].is_array(), "{count}");
        assert!(count["description"].is_string(), "{count}");
    }
}
