//! The pipeline-file reference of the book (`docs/src/reference/`) documents exactly the keys
//! the loader accepts: every dotted path of the JSON Schema generated from the config types
//! (`weir schema`) has its row in the reference, and every row names a key of the schema.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

/// Follows `$ref`s and the alternatives of optional values to the object schemas of a node.
fn objects<'a>(root: &'a Value, node: &'a Value, out: &mut Vec<&'a Value>) {
    if let Some(r) = node.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/definitions/");
        objects(root, &root["definitions"][name], out);
    }
    for alternatives in ["anyOf", "oneOf", "allOf"] {
        for alt in node
            .get(alternatives)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            objects(root, alt, out);
        }
    }
    if node.get("properties").is_some()
        || node
            .get("additionalProperties")
            .is_some_and(Value::is_object)
    {
        out.push(node);
    }
    if let Some(items) = node.get("items") {
        objects(root, items, out);
    }
}

/// Every dotted path of the schema: sections, keys, and `<name>` for user-chosen map keys.
fn schema_paths(root: &Value, node: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    let mut found = Vec::new();
    objects(root, node, &mut found);
    for object in found {
        for (key, child) in object
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            out.insert(path.clone());
            schema_paths(root, child, &path, out);
        }
        if let Some(value) = object.get("additionalProperties").filter(|v| v.is_object()) {
            let path = format!("{prefix}.<name>");
            out.insert(path.clone());
            schema_paths(root, value, &path, out);
        }
    }
}

/// The first cells (in backticks) of the reference's table rows.
fn documented_paths() -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/src/reference");
    let mut paths = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("| `") else {
                continue;
            };
            if let Some(end) = rest.find('`') {
                paths.insert(rest[..end].to_string());
            }
        }
    }
    paths
}

#[test]
fn the_reference_documents_every_key_of_the_schema_and_nothing_else() {
    let schema = weir_pipelines::schema::json_schema();
    let mut in_schema = BTreeSet::new();
    schema_paths(&schema, &schema, "", &mut in_schema);
    assert!(
        in_schema.contains("sources.<name>.kafka.avro_limits.max_items"),
        "{in_schema:?}"
    );
    assert!(
        in_schema.contains("windows.<name>.aggregates.<name>"),
        "{in_schema:?}"
    );
    let documented = documented_paths();
    let undocumented: Vec<_> = in_schema.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&in_schema).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "keys the loader accepts but docs/src/reference does not document: {undocumented:?}\n\
         rows of docs/src/reference that name no key of the schema: {unknown:?}"
    );
}
