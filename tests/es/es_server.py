#!/usr/bin/env python3
"""An Elasticsearch-compatible test server for weir's tests: the parts of the Elasticsearch 8.x
REST API an indexing client uses, answered as the documentation describes, kept strict so that
a client bug shows (and the same tests pass against a real Elasticsearch 8, WEIR_TEST_ES_URL).
No Elasticsearch or OpenSearch can be installed on the test machines (no reachable registry
carries their JVM distribution).

Served (JSON bodies, `X-elastic-product: Elasticsearch` on every answer):
  GET /                              cluster info (version 8.15.0)
  GET /_cluster/health
  PUT /{index}                       create with {settings, mappings}; 400 resource_already_exists_exception
  HEAD|GET|DELETE /{index}
  GET /{index}/_mapping
  PUT /_index_template/{name}        {index_patterns, template: {settings, mappings}}
  POST|PUT /_bulk, /{index}/_bulk    NDJSON (application/x-ndjson or application/json, optionally
                                     Content-Encoding: gzip), `refresh` = true|wait_for|false;
                                     per-item results with status, _version, result created|updated,
                                     _seq_no, _primary_term, or error {type, reason}; index, create
                                     (409 version_conflict_engine_exception when it exists), delete
  GET /{index}/_doc/{id}             realtime get
  POST|GET /{index}/_search          match_all, term, terms, range, bool (must/filter/must_not/should),
                                     exists; size (default 10, from+size <= 10000), from, sort,
                                     track_total_hits; sees refreshed documents only
  GET|POST /{index}/_count
  POST /{index}/_refresh, /_refresh
Documents become searchable at a refresh: every --refresh-interval (1 s by default, as
index.refresh_interval), a `_refresh`, or a bulk with refresh=true|wait_for.
Mappings: explicit ones are enforced (long, integer, short, byte, double, float, keyword, text,
date with its formats, boolean, object), new fields are mapped dynamically as Elasticsearch
does; a value a field cannot take is a 400 document_parsing_exception for that item.
Auth (--api-key K | --basic USER:PASS | --bearer TOKEN): 401 security_exception without it.
Strictness: a bulk body not ending in a newline, a malformed line, an unknown action, a missing
source line, a wrong or missing Content-Type are refused as Elasticsearch refuses them.

Test controls (not Elasticsearch; under /_weir):
  PUT /_weir/faults  {"reject_ratio": 0.2}    that share of bulk items answered 429
                                              (es_rejected_execution_exception), seeded
                     {"unavailable_ms": 30000} every request 503 for that long
                     {"refuse_ms": 30000}      connections refused for that long (the port closes)
                     {"refuse_ms": 30000, "after_items": N}
                                              the same, from the bulk request that brings the
                                              items indexed to N (armed now, no polling race)
                     {"delay_ms": 200}         each answer that much later
                     {"cut_answers": 3}        the next 3 bulk answers are cut in the middle of
                                              their body (the items are indexed; the connection
                                              closes after half the bytes Content-Length says)
  GET /_weir/stats   requests, bulk requests, items, rejected items, gzip requests, bytes, time
                     spent on bulk requests, first and last bulk times
  DELETE /_weir/faults

usage: es_server.py PORT [--api-key K | --basic USER:PASS | --bearer T] [--refresh-interval S]
       [--seed N] [--ready-file F]
"""
import argparse
import base64
import gzip
import json
import random
import re
import socket
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

VERSION = "8.15.0"
MAX_RESULT_WINDOW = 10000
LOCK = threading.RLock()
INDICES = {}  # name -> Index
TEMPLATES = {}  # name -> template body
FAULTS = {}
STATS = {"requests": 0, "bulk_requests": 0, "items": 0, "rejected_items": 0, "gzip_requests": 0,
         "bytes": 0, "unavailable_answers": 0, "auth_failures": 0,
         # time spent answering bulk requests, and when the first began and the last ended
         "bulk_seconds": 0.0, "first_bulk_at": None, "last_bulk_at": None}
ARGS = None
RNG = random.Random(0)


class EsError(Exception):
    def __init__(self, status, type_, reason, **extra):
        super().__init__(reason)
        self.status, self.type, self.reason, self.extra = status, type_, reason, extra

    def body(self):
        cause = {"type": self.type, "reason": self.reason, **self.extra}
        return {"error": {"root_cause": [cause], **cause}, "status": self.status}


def shards(total=2, ok=1):
    return {"total": total, "successful": ok, "failed": 0}


# ---------- mappings ----------

INTEGER_TYPES = {"long": 2**63, "integer": 2**31, "short": 2**15, "byte": 2**7}
FLOAT_TYPES = {"double", "float", "half_float", "scaled_float"}


def parse_date(value, fmt):
    """Milliseconds of a date value per the field's format (`a||b`), or raise ValueError."""
    formats = (fmt or "strict_date_optional_time||epoch_millis").split("||")
    for f in formats:
        f = f.strip()
        if f == "epoch_millis":
            if isinstance(value, bool):
                continue
            if isinstance(value, (int, float)):
                return int(value)
            if isinstance(value, str) and re.fullmatch(r"-?\d+(\.\d+)?", value):
                return int(float(value))
        elif f == "epoch_second":
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return int(value * 1000)
        elif f in ("strict_date_optional_time", "date_optional_time", "strict_date_time"):
            if not isinstance(value, str):
                continue
            m = re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?"
                             r"(Z|[+-]\d{2}:?\d{2})?)?", value)
            if not m:
                continue
            y, mo, d, h, mi, s, frac, tz = m.groups()
            if f == "strict_date_time" and h is None:
                continue
            try:
                dt = datetime(int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(s or 0),
                              tzinfo=timezone.utc)
            except ValueError:
                continue
            ms = int(dt.timestamp() * 1000) + (int((frac or "0").ljust(3, "0")[:3]) if frac else 0)
            if tz and tz != "Z":
                sign = 1 if tz[0] == "+" else -1
                digits = tz[1:].replace(":", "")
                ms -= sign * (int(digits[:2]) * 60 + int(digits[2:])) * 60000
            return ms
    raise ValueError(f"failed to parse date field [{value}] with format [{fmt or 'strict_date_optional_time||epoch_millis'}]")


def dynamic_mapping(value):
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "long"}
    if isinstance(value, float):
        return {"type": "float"}
    if isinstance(value, str):
        try:
            parse_date(value, "strict_date_optional_time")
            if re.match(r"\d{4}-\d{2}-\d{2}", value):
                return {"type": "date"}
        except ValueError:
            pass
        return {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}}
    if isinstance(value, dict):
        return {"properties": {}}
    return None


def check_value(path, mapping, value, doc_id):
    """Checks one value against its field mapping; returns the value as stored for sorting and
    range queries (numbers, date millis, strings)."""
    t = mapping.get("type", "object")

    def fail(caused):
        preview = json.dumps(value) if not isinstance(value, str) else value
        raise EsError(400, "document_parsing_exception",
                      f"[1:{len(path) + 2}] failed to parse field [{path}] of type [{t}] in document with id "
                      f"'{doc_id}'. Preview of field's value: '{preview}'",
                      caused_by={"type": "illegal_argument_exception", "reason": caused})

    if value is None:
        return None
    if isinstance(value, list):
        return [check_value(path, mapping, v, doc_id) for v in value]
    if t in INTEGER_TYPES:
        if isinstance(value, bool) or isinstance(value, dict):
            fail(f"Cannot parse value [{value}] as {t}")
        try:
            n = int(float(value)) if isinstance(value, (str, float)) else int(value)
            if isinstance(value, str) and not re.fullmatch(r"\s*-?\d+(\.\d+)?\s*", value):
                raise ValueError
        except (ValueError, OverflowError):
            fail(f"For input string: \"{value}\"")
        bound = INTEGER_TYPES[t]
        if not -bound <= n < bound:
            fail(f"Value [{value}] is out of range for {t}")
        return n
    if t in FLOAT_TYPES:
        if isinstance(value, (bool, dict)):
            fail(f"Cannot parse value [{value}] as {t}")
        try:
            return float(value)
        except ValueError:
            fail(f"For input string: \"{value}\"")
    if t in ("keyword", "text", "wildcard", "constant_keyword"):
        if isinstance(value, dict):
            fail("Can't get text on a START_OBJECT")
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value) if not isinstance(value, str) else value
    if t == "date":
        try:
            return parse_date(value, mapping.get("format"))
        except ValueError as e:
            fail(str(e))
    if t == "boolean":
        if value in (True, False, "true", "false", ""):
            return value in (True, "true")
        fail(f"Failed to parse value [{value}] as only [true] or [false] are allowed.")
    if t in ("object", "nested"):
        if not isinstance(value, dict):
            raise EsError(400, "document_parsing_exception",
                          f"[1:{len(path) + 2}] object mapping for [{path}] tried to parse field [{path}] as object, but found a concrete value")
        return value
    return value


class Index:
    def __init__(self, name, body=None):
        body = body or {}
        self.name = name
        self.settings = body.get("settings") or {}
        self.mappings = body.get("mappings") or {}
        self.mappings.setdefault("properties", {})
        self.docs = {}  # id -> {"source", "version", "seq_no", "values"}
        self.visible = {}  # refreshed copy
        self.seq_no = -1
        self.created = int(time.time() * 1000)

    def flat_values(self, source, doc_id):
        """Checks `source` against the mapping (adding dynamic fields); returns dotted field
        path -> value as indexed."""
        out = {}

        def walk(props, obj, prefix):
            for k, v in obj.items():
                path = prefix + k
                m = props.get(k)
                if m is None:
                    if self.mappings.get("dynamic") in ("strict",):
                        raise EsError(400, "strict_dynamic_mapping_exception",
                                      f"[1:2] mapping set to strict, dynamic introduction of [{k}] within [_doc] is not allowed")
                    if self.mappings.get("dynamic") is False or self.mappings.get("dynamic") == "false":
                        continue
                    if v is None:
                        continue
                    sample = v[0] if isinstance(v, list) and v else v
                    m = dynamic_mapping(sample)
                    if m is None:
                        continue
                    props[k] = m
                if "properties" in m and m.get("type", "object") in ("object", "nested"):
                    if v is None:
                        continue
                    if not isinstance(v, dict):
                        check_value(path, {"type": "object"}, v, doc_id)
                    walk(m["properties"], v, path + ".")
                else:
                    out[path] = check_value(path, m, v, doc_id)
                    if m.get("type") == "text" and "keyword" in (m.get("fields") or {}):
                        out[path + ".keyword"] = out[path] if not isinstance(out[path], str) or len(out[path]) <= 256 else None

        # check on a copy of the mapping: a refused document must not add fields
        props = json.loads(json.dumps(self.mappings["properties"]))
        walk(props, source, "")
        self.mappings["properties"] = props
        return out

    def mapping_of(self, path):
        props = self.mappings.get("properties", {})
        parts = path.split(".")
        m = None
        for i, p in enumerate(parts):
            m = props.get(p)
            if m is None:
                return None
            if i < len(parts) - 1:
                if p in props and "fields" in m and parts[i + 1] in m["fields"]:
                    return m["fields"][parts[i + 1]]
                props = m.get("properties", {})
        return m

    def put(self, doc_id, source, op_type):
        values = self.flat_values(source, doc_id)
        old = self.docs.get(doc_id)
        if op_type == "create" and old is not None:
            raise EsError(409, "version_conflict_engine_exception",
                          f"[{doc_id}]: version conflict, document already exists (current version [{old['version']}])",
                          index_uuid="weirtestuuid", shard="0", index=self.name)
        self.seq_no += 1
        version = (old["version"] + 1) if old else 1
        self.docs[doc_id] = {"source": source, "version": version, "seq_no": self.seq_no, "values": values}
        return ("updated" if old else "created"), version, self.seq_no

    def delete(self, doc_id):
        old = self.docs.pop(doc_id, None)
        self.seq_no += 1
        return ("deleted" if old else "not_found"), (old["version"] + 1 if old else 1), self.seq_no

    def refresh(self):
        self.visible = dict(self.docs)


def template_for(name):
    best = None
    for tname, t in TEMPLATES.items():
        for pat in t.get("index_patterns", []):
            regex = "^" + re.escape(pat).replace("\\*", ".*") + "$"
            if re.match(regex, name):
                if best is None or t.get("priority", 0) > best.get("priority", 0):
                    best = t
    return best


def get_or_create(name, auto=True):
    idx = INDICES.get(name)
    if idx is None:
        if not auto:
            raise EsError(404, "index_not_found_exception", f"no such index [{name}]",
                          **{"resource.type": "index_or_alias", "resource.id": name, "index": name})
        check_index_name(name)
        t = template_for(name)
        idx = Index(name, json.loads(json.dumps(t.get("template", {}))) if t else None)
        INDICES[name] = idx
    return idx


def check_index_name(name):
    if name != name.lower() or name.startswith(("_", "-", "+")) or re.search(r'[\\/*?"<>| ,#:]', name) \
            or name in (".", "..") or len(name.encode()) > 255:
        raise EsError(400, "invalid_index_name_exception",
                      f"Invalid index name [{name}], must be lowercase and not contain the characters \\, /, *, ?, \", <, >, |, ` ` (space character), ,, #",
                      index=name)


# ---------- search ----------

def field_value(doc, field, idx):
    v = doc["values"].get(field)
    if v is None and field.endswith(".keyword"):
        v = doc["values"].get(field[: -len(".keyword")])
    return v


def matches(doc, q, idx):
    if not q or "match_all" in q:
        return True
    if len(q) != 1:
        raise EsError(400, "parsing_exception", "[_na] query malformed, must start with start_object")
    (kind, body), = q.items()
    if kind == "term":
        (field, spec), = body.items()
        want = spec["value"] if isinstance(spec, dict) else spec
        return term_eq(field_value(doc, field, idx), want, idx.mapping_of(field))
    if kind == "terms":
        (field, wants), = [(k, v) for k, v in body.items() if k != "boost"]
        return any(term_eq(field_value(doc, field, idx), w, idx.mapping_of(field)) for w in wants)
    if kind == "range":
        (field, spec), = body.items()
        v = field_value(doc, field, idx)
        if v is None:
            return False
        m = idx.mapping_of(field) or {}
        conv = (lambda x: parse_date(x, m.get("format"))) if m.get("type") == "date" else (lambda x: x)
        vals = v if isinstance(v, list) else [v]
        for one in vals:
            ok = True
            for op, bound in spec.items():
                if op in ("format", "time_zone", "boost"):
                    continue
                b = conv(bound)
                ok &= {"gte": one >= b, "gt": one > b, "lte": one <= b, "lt": one < b}[op]
            if ok:
                return True
        return False
    if kind == "exists":
        return field_value(doc, body["field"], idx) is not None
    if kind == "bool":
        must = as_list(body.get("must")) + as_list(body.get("filter"))
        if not all(matches(doc, c, idx) for c in must):
            return False
        if any(matches(doc, c, idx) for c in as_list(body.get("must_not"))):
            return False
        should = as_list(body.get("should"))
        if should:
            minimum = body.get("minimum_should_match", 0 if must else 1)
            return sum(1 for c in should if matches(doc, c, idx)) >= int(minimum)
        return True
    if kind in ("match", "match_phrase"):
        (field, spec), = body.items()
        want = spec["query"] if isinstance(spec, dict) else spec
        v = field_value(doc, field, idx)
        return v is not None and str(want).lower() in str(v).lower()
    raise EsError(400, "parsing_exception", f"unknown query [{kind}]", line=1, col=1)


def as_list(x):
    if x is None:
        return []
    return x if isinstance(x, list) else [x]


def term_eq(v, want, mapping):
    if v is None:
        return False
    vals = v if isinstance(v, list) else [v]
    t = (mapping or {}).get("type")
    for one in vals:
        if t == "date":
            try:
                if one == parse_date(want, mapping.get("format")):
                    return True
            except ValueError:
                pass
        elif isinstance(one, (int, float)) and not isinstance(one, bool):
            try:
                if float(one) == float(want):
                    return True
            except (TypeError, ValueError):
                pass
        elif one == want or (isinstance(want, bool) and one == want):
            return True
    return False


def search(idx_names, body, params):
    body = body or {}
    size = int(params.get("size", body.get("size", 10)))
    from_ = int(params.get("from", body.get("from", 0)))
    if from_ + size > MAX_RESULT_WINDOW:
        raise EsError(400, "illegal_argument_exception",
                      f"Result window is too large, from + size must be less than or equal to: [{MAX_RESULT_WINDOW}] but was [{from_ + size}]. "
                      "See the scroll api for a more efficient way to request large data sets. This limit can be set by changing the "
                      "[index.max_result_window] index level setting.")
    query = body.get("query", {"match_all": {}})
    hits = []
    for name in idx_names:
        idx = INDICES[name]
        for doc_id, doc in idx.visible.items():
            if matches(doc, query, idx):
                hits.append((name, doc_id, doc, idx))
    sorts = body.get("sort")
    if sorts:
        for s in reversed(as_list(sorts)):
            if isinstance(s, str):
                field, order = s, "asc"
            else:
                (field, spec), = s.items()
                order = spec if isinstance(spec, str) else spec.get("order", "asc")
            if field == "_doc":
                continue
            if field != "_score":
                m = hits[0][3].mapping_of(field) if hits else None
                if m is not None and m.get("type") == "text":
                    raise EsError(400, "illegal_argument_exception",
                                  f"Text fields are not optimised for operations that require per-document field data like aggregations and sorting, so these operations are disabled by default. Please use a keyword field instead. Alternatively, set fielddata=true on [{field}] in order to load field data by uninverting the inverted index. Note that this can use significant memory.")
            present = [h for h in hits if field_value(h[2], field, h[3]) is not None]
            missing = [h for h in hits if field_value(h[2], field, h[3]) is None]
            present.sort(key=lambda h: sort_key(field_value(h[2], field, h[3]), order), reverse=(order == "desc"))
            hits = present + missing
    total = len(hits)
    track = body.get("track_total_hits", MAX_RESULT_WINDOW)
    relation = "eq"
    if track is not True and isinstance(track, int) and total > track:
        total, relation = track, "gte"
    page = hits[from_: from_ + size]
    return {
        "took": 1, "timed_out": False, "_shards": shards(1, 1) | {"skipped": 0},
        "hits": {
            "total": {"value": total, "relation": relation},
            "max_score": None if sorts else (1.0 if page else None),
            "hits": [{"_index": n, "_id": i, "_score": None if sorts else 1.0, "_source": d["source"],
                      **({"_version": d["version"]} if body.get("version") else {}),
                      **({"sort": []} if sorts else {})} for n, i, d, _ in page],
        },
    }


def sort_key(v, order):
    if isinstance(v, list):
        v = min(v) if order == "asc" else max(v)
    return (0, v) if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, str(v))


def resolve(pattern):
    names = []
    for p in pattern.split(","):
        if p in ("_all", "*"):
            names.extend(INDICES)
        elif "*" in p:
            regex = "^" + re.escape(p).replace("\\*", ".*") + "$"
            names.extend(n for n in INDICES if re.match(regex, n))
        else:
            if p not in INDICES:
                raise EsError(404, "index_not_found_exception", f"no such index [{p}]",
                              **{"resource.type": "index_or_alias", "resource.id": p, "index": p})
            names.append(p)
    return sorted(set(names))


# ---------- bulk ----------

def bulk(default_index, raw, params):
    if not raw:
        raise EsError(400, "parse_exception", "request body is required")
    text = raw.decode("utf-8")
    if not text.endswith("\n"):
        raise EsError(400, "illegal_argument_exception", "The bulk request must be terminated by a newline [\\n]")
    lines = text.split("\n")[:-1]
    ops = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        try:
            action = json.loads(line)
        except ValueError as e:
            raise EsError(400, "x_content_parse_exception", f"[{i + 1}:1] Unexpected character: {e}")
        if not isinstance(action, dict) or len(action) != 1:
            raise EsError(400, "illegal_argument_exception",
                          f"Malformed action/metadata line [{i + 1}], expected START_OBJECT or END_OBJECT but found [VALUE_STRING]")
        (kind, meta), = action.items()
        if kind not in ("index", "create", "update", "delete"):
            raise EsError(400, "illegal_argument_exception",
                          f"Malformed action/metadata line [{i + 1}], expected one of [create, delete, index, update] but found [{kind}]")
        if not isinstance(meta, dict):
            raise EsError(400, "illegal_argument_exception", f"Malformed action/metadata line [{i + 1}], expected START_OBJECT")
        for k in meta:
            if k not in ("_index", "_id", "routing", "version", "version_type", "if_seq_no", "if_primary_term",
                         "pipeline", "require_alias", "dynamic_templates", "retry_on_conflict"):
                raise EsError(400, "illegal_argument_exception",
                              f"Action/metadata line [{i + 1}] contains an unknown parameter [{k}]")
        source = None
        if kind != "delete":
            if i + 1 >= len(lines):
                raise EsError(400, "illegal_argument_exception", "The bulk request must be terminated by a newline [\\n]")
            try:
                source = json.loads(lines[i + 1])
            except ValueError as e:
                raise EsError(400, "x_content_parse_exception", f"[{i + 2}:1] Unexpected character: {e}")
            if not isinstance(source, dict):
                raise EsError(400, "x_content_parse_exception", f"[{i + 2}:1] Malformed content, must start with an object")
            i += 2
        else:
            i += 1
        index = meta.get("_index") or default_index
        if not index:
            raise EsError(400, "action_request_validation_exception", "Validation Failed: 1: index is missing;")
        ops.append((kind, index, meta.get("_id"), source))
    if not ops:
        raise EsError(400, "action_request_validation_exception", "Validation Failed: 1: no requests added;")
    started = time.time()
    items = []
    errors = False
    reject_ratio = FAULTS.get("reject_ratio", 0)
    for kind, index, doc_id, source in ops:
        STATS["items"] += 1
        if doc_id is None and kind in ("index", "create"):
            doc_id = base64.urlsafe_b64encode(RNG.randbytes(15)).decode().rstrip("=")
        if reject_ratio and RNG.random() < reject_ratio:
            STATS["rejected_items"] += 1
            errors = True
            items.append({kind: {"_index": index, "_id": doc_id, "status": 429, "error": {
                "type": "es_rejected_execution_exception",
                "reason": "rejected execution of coordinating operation [coordinating_and_primary_bytes=0, replica_bytes=0, all_bytes=0, coordinating_operation_bytes=1, max_coordinating_and_primary_bytes=1]"}}})
            continue
        try:
            if kind == "update":
                raise EsError(400, "illegal_argument_exception", "weir's test server does not implement update")
            idx = get_or_create(index)
            if kind == "delete":
                result, version, seq = idx.delete(doc_id)
                status = 200 if result == "deleted" else 404
            else:
                result, version, seq = idx.put(doc_id, source, kind)
                status = 201 if result == "created" else 200
            items.append({kind: {"_index": index, "_id": doc_id, "_version": version, "result": result,
                                 "_shards": shards(), "_seq_no": seq, "_primary_term": 1, "status": status}})
        except EsError as e:
            errors = True
            err = {"type": e.type, "reason": e.reason, **e.extra}
            if e.type == "document_parsing_exception" or e.status == 409:
                err.setdefault("index_uuid", "weirtestuuid")
                err.setdefault("shard", "0")
                err.setdefault("index", index)
            items.append({kind: {"_index": index, "_id": doc_id, "status": e.status, "error": err}})
    if params.get("refresh") in ("true", "", "wait_for"):
        for name in {index for _, index, _, _ in ops if index in INDICES}:
            INDICES[name].refresh()
    ended = time.time()
    STATS["bulk_seconds"] += ended - started
    STATS["first_bulk_at"] = STATS["first_bulk_at"] or started
    STATS["last_bulk_at"] = ended
    armed = FAULTS.get("refuse_after_items")
    if armed and STATS["items"] >= armed[0]:
        del FAULTS["refuse_after_items"]
        threading.Thread(target=refuse, args=(armed[1],), daemon=True).start()
    return {"errors": errors, "took": int((ended - started) * 1000), "items": items}


# ---------- HTTP ----------

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        with CONNECTIONS_LOCK:
            CONNECTIONS.add(self.connection)

    def finish(self):
        with CONNECTIONS_LOCK:
            CONNECTIONS.discard(self.connection)
        super().finish()

    def send_json(self, status, body, head=False):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("X-elastic-product", "Elasticsearch")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="security" charset="UTF-8"')
            self.send_header("WWW-Authenticate", "ApiKey")
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def authorized(self):
        if ARGS.api_key:
            return self.headers.get("Authorization") == f"ApiKey {ARGS.api_key}"
        if ARGS.basic:
            return self.headers.get("Authorization") == "Basic " + base64.b64encode(ARGS.basic.encode()).decode()
        if ARGS.bearer:
            return self.headers.get("Authorization") == f"Bearer {ARGS.bearer}"
        return True

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        STATS["bytes"] += len(raw)
        if raw and self.headers.get("Content-Encoding", "").lower() == "gzip":
            STATS["gzip_requests"] += 1
            raw = gzip.decompress(raw)
        return raw

    def json_body(self, raw):
        if not raw:
            return None
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype not in ("application/json", "application/x-ndjson", "application/vnd.elasticsearch+json",
                         "application/vnd.elasticsearch+x-ndjson"):
            raise Unsupported(ctype)
        try:
            return json.loads(raw)
        except ValueError as e:
            raise EsError(400, "x_content_parse_exception", f"[1:1] {e}")

    def handle_any(self, method):
        STATS["requests"] += 1
        url = urlparse(self.path)
        params = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        parts = [unquote(p) for p in url.path.split("/") if p]
        try:
            raw = self.body()
        except OSError:
            return self.send_json(400, EsError(400, "parse_exception", "bad gzip body").body())
        if parts[:1] == ["_weir"]:
            return self.control(method, parts, raw)
        if FAULTS.get("delay_ms"):
            time.sleep(FAULTS["delay_ms"] / 1000)
        if FAULTS.get("unavailable_until", 0) > time.time():
            STATS["unavailable_answers"] += 1
            return self.send_json(503, EsError(503, "cluster_block_exception",
                                               "blocked by: [SERVICE_UNAVAILABLE/1/state not recovered / initialized];").body())
        if not self.authorized():
            STATS["auth_failures"] += 1
            return self.send_json(401, EsError(401, "security_exception",
                                               "missing authentication credentials for REST request [" + url.path + "]",
                                               header={"WWW-Authenticate": ["Basic realm=\"security\" charset=\"UTF-8\"", "ApiKey"]}).body())
        try:
            with LOCK:
                status, body = self.route(method, parts, params, raw)
        except Unsupported as u:
            return self.send_json(406, {"error": f"Content-Type header [{u.args[0]}] is not supported", "status": 406})
        except EsError as e:
            return self.send_json(e.status, e.body(), head=(method == "HEAD"))
        if parts[-1:] == ["_bulk"] and FAULTS.get("cut_answers", 0) > 0:
            return self.send_cut(status, body)
        self.send_json(status, body, head=(method == "HEAD"))

    def send_cut(self, status, body):
        """Half of an answer, then the connection closes: the client cannot know the outcome."""
        FAULTS["cut_answers"] -= 1
        STATS["cut_answers"] = STATS.get("cut_answers", 0) + 1
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("X-elastic-product", "Elasticsearch")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def route(self, method, parts, params, raw):
        if not parts:
            if method in ("GET", "HEAD"):
                return 200, {"name": "weir-test", "cluster_name": "weir-test", "cluster_uuid": "weirtestcluster",
                             "version": {"number": VERSION, "build_flavor": "default", "lucene_version": "9.11.1",
                                         "minimum_wire_compatibility_version": "7.17.0",
                                         "minimum_index_compatibility_version": "7.0.0"},
                             "tagline": "You Know, for Search"}
        elif parts == ["_cluster", "health"]:
            return 200, {"cluster_name": "weir-test", "status": "green", "timed_out": False, "number_of_nodes": 1,
                         "number_of_data_nodes": 1, "active_primary_shards": len(INDICES), "active_shards": len(INDICES),
                         "relocating_shards": 0, "initializing_shards": 0, "unassigned_shards": 0}
        elif parts[0] == "_bulk" and len(parts) == 1 and method in ("POST", "PUT"):
            STATS["bulk_requests"] += 1
            self.check_ndjson(raw)
            return 200, bulk(None, raw, params)
        elif parts[0] == "_refresh" and len(parts) == 1:
            for idx in INDICES.values():
                idx.refresh()
            return 200, {"_shards": shards(len(INDICES), len(INDICES))}
        elif parts[0] == "_index_template" and len(parts) == 2:
            if method == "PUT":
                body = self.json_body(raw)
                if not body or "index_patterns" not in body:
                    raise EsError(400, "action_request_validation_exception", "Validation Failed: 1: index patterns are missing;")
                TEMPLATES[parts[1]] = body
                return 200, {"acknowledged": True}
            if method in ("GET", "HEAD"):
                if parts[1] not in TEMPLATES:
                    raise EsError(404, "resource_not_found_exception", f"index template matching [{parts[1]}] not found")
                return 200, {"index_templates": [{"name": parts[1], "index_template": TEMPLATES[parts[1]]}]}
        elif parts[0].startswith("_"):
            pass
        elif len(parts) == 1:
            name = parts[0]
            if method == "PUT":
                check_index_name(name)
                if name in INDICES:
                    raise EsError(400, "resource_already_exists_exception", f"index [{name}/weirtestuuid] already exists",
                                  index_uuid="weirtestuuid", index=name)
                body = self.json_body(raw) or {}
                for k in body:
                    if k not in ("settings", "mappings", "aliases"):
                        raise EsError(400, "parse_exception", f"unknown key [{k}] for create index")
                INDICES[name] = Index(name, body)
                return 200, {"acknowledged": True, "shards_acknowledged": True, "index": name}
            if method == "HEAD":
                return (200 if name in INDICES else 404), None
            if method == "GET":
                names = resolve(name)
                return 200, {n: {"aliases": {}, "mappings": INDICES[n].mappings, "settings": {"index": INDICES[n].settings}} for n in names}
            if method == "DELETE":
                for n in resolve(name):
                    del INDICES[n]
                return 200, {"acknowledged": True}
        elif len(parts) == 2:
            name, op = parts
            if op == "_bulk" and method in ("POST", "PUT"):
                STATS["bulk_requests"] += 1
                self.check_ndjson(raw)
                return 200, bulk(name, raw, params)
            if op == "_refresh" and method in ("POST", "GET"):
                names = resolve(name)
                for n in names:
                    INDICES[n].refresh()
                return 200, {"_shards": shards(len(names), len(names))}
            if op == "_search" and method in ("POST", "GET"):
                return 200, search(resolve(name), self.json_body(raw), params)
            if op == "_count" and method in ("POST", "GET"):
                body = self.json_body(raw) or {}
                names = resolve(name)
                n = sum(1 for x in names for d in INDICES[x].visible.values() if matches(d, body.get("query"), INDICES[x]))
                return 200, {"count": n, "_shards": shards(len(names), len(names)) | {"skipped": 0}}
            if op == "_mapping" and method == "GET":
                return 200, {n: {"mappings": INDICES[n].mappings} for n in resolve(name)}
        elif len(parts) == 3 and parts[1] == "_doc" and method in ("GET", "HEAD"):
            name, _, doc_id = parts
            idx = get_or_create(name, auto=False)
            doc = idx.docs.get(doc_id)
            if doc is None:
                return 404, {"_index": name, "_id": doc_id, "found": False}
            return 200, {"_index": name, "_id": doc_id, "_version": doc["version"], "_seq_no": doc["seq_no"],
                         "_primary_term": 1, "found": True, "_source": doc["source"]}
        raise EsError(400 if method != "GET" else 404, "illegal_argument_exception" if method != "GET" else "resource_not_found_exception",
                      f"no handler found for uri [{self.path}] and method [{method}]")

    def check_ndjson(self, raw):
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype not in ("application/x-ndjson", "application/json", "application/vnd.elasticsearch+x-ndjson"):
            raise Unsupported(ctype)

    def control(self, method, parts, raw):
        if parts == ["_weir", "faults"]:
            if method == "PUT":
                body = json.loads(raw or b"{}")
                if "reject_ratio" in body:
                    FAULTS["reject_ratio"] = float(body["reject_ratio"])
                if "delay_ms" in body:
                    FAULTS["delay_ms"] = int(body["delay_ms"])
                if "cut_answers" in body:
                    FAULTS["cut_answers"] = int(body["cut_answers"])
                if "unavailable_ms" in body:
                    FAULTS["unavailable_until"] = time.time() + body["unavailable_ms"] / 1000
                if "refuse_ms" in body and "after_items" in body:
                    FAULTS["refuse_after_items"] = (int(body["after_items"]), body["refuse_ms"] / 1000)
                elif "refuse_ms" in body:
                    threading.Thread(target=refuse, args=(body["refuse_ms"] / 1000,), daemon=True).start()
                return self.send_json(200, {"faults": FAULTS})
            if method == "DELETE":
                FAULTS.clear()
                return self.send_json(200, {"faults": FAULTS})
        if parts == ["_weir", "stats"]:
            return self.send_json(200, STATS | {"documents": {n: len(i.docs) for n, i in INDICES.items()}})
        if parts == ["_weir", "stats", "reset"]:
            STATS.update({k: (0.0 if k == "bulk_seconds" else None if k.endswith("_at") else 0) for k in STATS})
            return self.send_json(200, STATS)
        self.send_json(404, {"error": "unknown control"})

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def do_PUT(self):
        self.handle_any("PUT")

    def do_DELETE(self):
        self.handle_any("DELETE")

    def do_HEAD(self):
        self.handle_any("HEAD")

    def log_message(self, *a):
        pass


class Unsupported(Exception):
    pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        import sys
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return  # the client went away (a killed run): nothing to report
        super().handle_error(request, client_address)


SERVER = None
SERVER_LOCK = threading.Lock()
# open client connections: an outage cuts them too (kept-alive ones would go on serving)
CONNECTIONS = set()
CONNECTIONS_LOCK = threading.Lock()


def serve():
    global SERVER
    with SERVER_LOCK:
        SERVER = Server(("127.0.0.1", ARGS.port), Handler)
        server = SERVER
    server.serve_forever()


def refuse(seconds):
    """Closes the port for `seconds` (connections refused), then listens again."""
    with SERVER_LOCK:
        server = SERVER
    server.shutdown()
    server.server_close()
    # then the connections open before: no new one comes now
    with CONNECTIONS_LOCK:
        open_now = list(CONNECTIONS)
    for conn in open_now:
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    time.sleep(seconds)
    threading.Thread(target=serve, daemon=True).start()


def refresher():
    while True:
        time.sleep(ARGS.refresh_interval)
        with LOCK:
            for idx in INDICES.values():
                idx.refresh()


def main():
    global ARGS, RNG
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("--api-key")
    p.add_argument("--basic")
    p.add_argument("--bearer")
    p.add_argument("--refresh-interval", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ready-file")
    ARGS = p.parse_args()
    RNG = random.Random(ARGS.seed)
    threading.Thread(target=refresher, daemon=True).start()
    threading.Thread(target=serve, daemon=True).start()
    while True:
        try:
            socket.create_connection(("127.0.0.1", ARGS.port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.02)
    if ARGS.ready_file:
        open(ARGS.ready_file, "w").write("ready\n")
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
