//! Flow action trees (§3.5, §3.6, §5.9): turns `FlowActionInput` bodies into validated nodes.
//!
//! Used by flow create, tree replace and single-node add. Every problem of the whole tree is
//! reported at once with its full path (`actions[0].children[1].key`). Actions are looked up
//! through a closure so the rules stay independent of storage and can be tested with plain
//! values. Ids are assigned only when validated nodes are turned into [`FlowAction`]s.

use std::collections::{HashMap, HashSet};

use serde_json::Value;
use uuid::Uuid;

use crate::catalog::allows_children;
use crate::ids::new_id;
use crate::keys::{derive_key, is_reserved, is_valid_key};
use crate::model::{FlowAction, Overrides};
use crate::time::Ts;
use crate::validate::{Field, FieldErrors, Obj, Req, join, type_name};

/// Most nodes one flow may have, children included.
pub const MAX_NODES: usize = 200;

/// What the tree rules need to know about a bound action.
#[derive(Clone, Debug, PartialEq)]
pub struct ActionRef {
    pub name: String,
    pub method: String,
}

/// The context a tree is validated in.
pub struct TreeRules<'a> {
    /// The caller's action with this id, if it exists.
    pub lookup: &'a dyn Fn(Uuid) -> Option<ActionRef>,
    /// Version-3 replace: every node must carry an explicit key (`key_required`).
    pub require_keys: bool,
    /// Keys of nodes already in the flow that the input does not replace.
    pub taken_keys: &'a HashSet<String>,
    /// Nodes already in the flow that the input does not replace (counted toward the limit).
    pub existing_nodes: usize,
}

/// Whether a node sits at the top level or under a `flow.for_each`/`flow.if` parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Top,
    Child,
}

/// A validated node before it gets ids; `key` is final (explicit or derived).
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSpec {
    pub action_id: Uuid,
    pub position: i64,
    pub key: String,
    pub name_override: Option<String>,
    pub overrides: Option<Overrides>,
    pub continue_on_error: bool,
    pub recording_enabled: bool,
    pub children: Vec<NodeSpec>,
}

/// A node as read, possibly incomplete when a problem was recorded.
struct Raw {
    path: String,
    action_id: Option<Uuid>,
    action: Option<ActionRef>,
    position: Option<i64>,
    /// An explicit key that passed the pattern and reserved-word checks.
    key: Option<String>,
    /// No key was sent at all (so one is derived, or `key_required` was recorded).
    key_omitted: bool,
    name_override: Option<String>,
    overrides: Option<Overrides>,
    continue_on_error: bool,
    recording_enabled: bool,
    children: Vec<Raw>,
}

impl Raw {
    fn count(&self) -> usize {
        1 + self.children.len()
    }
}

/// Validates the items of a whole tree (`actions` of create or replace). `path` is the field
/// path of the array. Returns `None` when any problem was recorded into `errs`.
pub fn parse_tree(
    items: &[Value],
    path: &str,
    rules: &TreeRules<'_>,
    errs: &mut FieldErrors,
) -> Option<Vec<NodeSpec>> {
    let before = errs.len();
    if items.is_empty() {
        errs.push(
            path,
            "invalid_value",
            format!("{path} must have at least 1 node"),
        );
        return None;
    }
    let raws: Vec<Raw> = items
        .iter()
        .enumerate()
        .filter_map(|(i, v)| read_node(v, &format!("{path}[{i}]"), Level::Top, rules, errs))
        .collect();
    check_positions(&raws, &[], errs);
    let total: usize = raws.iter().map(Raw::count).sum();
    check_limit(total + rules.existing_nodes, path, errs);
    finish(raws, rules, before, errs)
}

/// Validates one node added to an existing flow. `path` is the node's field path (`""` for a
/// body root); `sibling_positions` are the positions already used under the same parent.
pub fn parse_node(
    value: &Value,
    path: &str,
    level: Level,
    sibling_positions: &[i64],
    rules: &TreeRules<'_>,
    errs: &mut FieldErrors,
) -> Option<NodeSpec> {
    let before = errs.len();
    let raw = read_node(value, path, level, rules, errs)?;
    let raws = vec![raw];
    check_positions(&raws, sibling_positions, errs);
    let limit_field = if path.is_empty() { "body" } else { path };
    check_limit(raws[0].count() + rules.existing_nodes, limit_field, errs);
    finish(raws, rules, before, errs).and_then(|mut v| v.pop())
}

fn check_limit(total: usize, field: &str, errs: &mut FieldErrors) {
    if total > MAX_NODES {
        errs.push(
            field,
            "invalid_value",
            format!("a flow may have at most {MAX_NODES} actions (children included), got {total}"),
        );
    }
}

/// Keys, then conversion, once every node was read.
fn finish(
    mut raws: Vec<Raw>,
    rules: &TreeRules<'_>,
    before: usize,
    errs: &mut FieldErrors,
) -> Option<Vec<NodeSpec>> {
    assign_keys(&mut raws, rules, errs);
    if errs.len() > before {
        return None;
    }
    Some(raws.into_iter().map(into_spec).collect())
}

fn into_spec(r: Raw) -> NodeSpec {
    NodeSpec {
        action_id: r.action_id.expect("validated"),
        position: r.position.expect("validated"),
        key: r.key.expect("validated"),
        name_override: r.name_override,
        overrides: r.overrides,
        continue_on_error: r.continue_on_error,
        recording_enabled: r.recording_enabled,
        children: r.children.into_iter().map(into_spec).collect(),
    }
}

fn read_node(
    value: &Value,
    path: &str,
    level: Level,
    rules: &TreeRules<'_>,
    errs: &mut FieldErrors,
) -> Option<Raw> {
    let Some(map) = value.as_object() else {
        let field = if path.is_empty() { "body" } else { path };
        errs.push(
            field,
            "invalid_type",
            format!("{field} must be an object, got {}", type_name(value)),
        );
        return None;
    };
    let o = Obj::new(map, path);
    let action_id = o.uuid("actionId", Req::Required, errs).value();
    let action = action_id.and_then(|id| {
        let found = (rules.lookup)(id);
        if found.is_none() {
            errs.push(
                o.path("actionId"),
                "unknown_reference",
                format!("action {id} does not exist"),
            );
        }
        found
    });
    let position = o
        .integer("position", Req::Required, 0, i32::MAX as i64, errs)
        .value();
    let (key, key_omitted) = read_key(&o, rules.require_keys, errs);
    let name_override = o
        .string("nameOverride", Req::Nullable, 1, 200, errs)
        .value();
    let overrides = match o.nested("overrides", Req::Nullable, errs) {
        Field::Value(ov) => {
            let params = ov.object("params", Req::Nullable, errs);
            match params {
                Field::Invalid => None,
                p => Some(Overrides {
                    params: p.value().map(|m| Value::Object(m.clone())),
                }),
            }
        }
        _ => None,
    };
    let continue_on_error = o
        .boolean("continueOnError", Req::Optional, errs)
        .value()
        .unwrap_or(false);
    let recording_enabled = o
        .boolean("recordingEnabled", Req::Optional, errs)
        .value()
        .unwrap_or(false);
    let mut children = Vec::new();
    if let Field::Value(items) = o.array("children", Req::Nullable, errs)
        && !items.is_empty()
    {
        let cpath = o.path("children");
        match level {
            Level::Child => errs.push(
                cpath,
                "too_deep",
                "children cannot have children: nesting is exactly two levels",
            ),
            Level::Top => {
                if let Some(a) = &action
                    && !allows_children(&a.method)
                {
                    errs.push(
                        cpath.clone(),
                        "children_not_allowed",
                        format!(
                            "only flow.for_each and flow.if actions can have children, not {}",
                            a.method
                        ),
                    );
                }
                children = items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, v)| {
                        read_node(v, &format!("{cpath}[{i}]"), Level::Child, rules, errs)
                    })
                    .collect();
                check_positions(&children, &[], errs);
            }
        }
    }
    Some(Raw {
        path: path.to_string(),
        action_id,
        action,
        position,
        key,
        key_omitted,
        name_override,
        overrides,
        continue_on_error,
        recording_enabled,
        children,
    })
}

/// Reads `key`: pattern and reserved words here; uniqueness needs the whole tree.
fn read_key(o: &Obj<'_>, require: bool, errs: &mut FieldErrors) -> (Option<String>, bool) {
    let path = o.path("key");
    match o.get("key") {
        None | Some(Value::Null) => {
            if require {
                errs.push(
                    path,
                    "key_required",
                    "key is required: flows with templateResolutionVersion 3 need explicit keys",
                );
            }
            (None, true)
        }
        Some(Value::String(k)) if !is_valid_key(k) => {
            errs.push(
                path,
                "invalid_key",
                format!("key '{k}' must match ^[a-z_][a-z0-9_-]{{0,63}}$"),
            );
            (None, false)
        }
        Some(Value::String(k)) if is_reserved(k) => {
            errs.push(
                path,
                "reserved_key",
                format!("key '{k}' is a reserved word"),
            );
            (None, false)
        }
        Some(Value::String(k)) => (Some(k.clone()), false),
        Some(other) => {
            errs.push(
                path,
                "invalid_type",
                format!("key must be a string, got {}", type_name(other)),
            );
            (None, false)
        }
    }
}

/// Positions are unique among siblings; a clash is reported on the later node.
fn check_positions(siblings: &[Raw], used: &[i64], errs: &mut FieldErrors) {
    let mut seen: HashSet<i64> = used.iter().copied().collect();
    for r in siblings {
        if let Some(p) = r.position
            && !seen.insert(p)
        {
            errs.push(
                join(&r.path, "position"),
                "duplicate",
                format!("position {p} is already used by a sibling"),
            );
        }
    }
}

/// Explicit keys are claimed first (so a derived key never steals one the client chose),
/// then omitted keys are derived in list order.
fn assign_keys(raws: &mut [Raw], rules: &TreeRules<'_>, errs: &mut FieldErrors) {
    let mut used: HashSet<String> = HashSet::new();
    for r in depth_first(raws) {
        if let Some(k) = &r.key
            && (rules.taken_keys.contains(k) || !used.insert(k.clone()))
        {
            errs.push(
                join(&r.path, "key"),
                "duplicate",
                format!("key '{k}' is already used in this flow"),
            );
        }
    }
    if rules.require_keys {
        return;
    }
    for r in raws.iter_mut() {
        derive_missing_key(r, rules, &mut used);
        for c in r.children.iter_mut() {
            derive_missing_key(c, rules, &mut used);
        }
    }
}

fn derive_missing_key(r: &mut Raw, rules: &TreeRules<'_>, used: &mut HashSet<String>) {
    if !r.key_omitted {
        return;
    }
    // Without a known action there is no display name; its error is already recorded.
    let Some(action) = &r.action else { return };
    let name = r.name_override.as_deref().unwrap_or(&action.name);
    let key = derive_key(name, &|k: &str| {
        rules.taken_keys.contains(k) || used.contains(k)
    });
    used.insert(key.clone());
    r.key = Some(key);
}

fn depth_first(raws: &[Raw]) -> Vec<&Raw> {
    let mut out = Vec::new();
    for r in raws {
        out.push(r);
        out.extend(r.children.iter());
    }
    out
}

/// Turns validated nodes into stored bindings with fresh ids, in list order (top-level by
/// position, each followed by its children by position). `parent` is set for a child added
/// under an existing node.
pub fn materialize(
    specs: &[NodeSpec],
    flow_id: Uuid,
    parent: Option<Uuid>,
    now: Ts,
) -> Vec<FlowAction> {
    let mut sorted: Vec<&NodeSpec> = specs.iter().collect();
    sorted.sort_by_key(|s| s.position);
    let mut out = Vec::new();
    for s in sorted {
        let id = new_id();
        out.push(binding(s, id, flow_id, parent, now));
        let mut children: Vec<&NodeSpec> = s.children.iter().collect();
        children.sort_by_key(|c| c.position);
        for c in children {
            out.push(binding(c, new_id(), flow_id, Some(id), now));
        }
    }
    out
}

fn binding(s: &NodeSpec, id: Uuid, flow_id: Uuid, parent: Option<Uuid>, now: Ts) -> FlowAction {
    FlowAction {
        id,
        flow_id,
        action_id: s.action_id,
        parent_flow_action_id: parent,
        position: s.position,
        key: s.key.clone(),
        name_override: s.name_override.clone(),
        overrides: s.overrides.clone(),
        continue_on_error: s.continue_on_error,
        recording_enabled: s.recording_enabled,
        created_at: now,
    }
}

/// Copies a tree into another flow: new ids (parents remapped), same keys, positions and
/// overrides.
pub fn clone_nodes(nodes: &[FlowAction], flow_id: Uuid, now: Ts) -> Vec<FlowAction> {
    let ids: HashMap<Uuid, Uuid> = nodes.iter().map(|n| (n.id, new_id())).collect();
    nodes
        .iter()
        .map(|n| FlowAction {
            id: ids[&n.id],
            flow_id,
            parent_flow_action_id: n.parent_flow_action_id.and_then(|p| ids.get(&p).copied()),
            created_at: now,
            ..n.clone()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const WAIT: Uuid = Uuid::from_u128(1);
    const EACH: Uuid = Uuid::from_u128(2);
    const IF: Uuid = Uuid::from_u128(3);
    const TAP: Uuid = Uuid::from_u128(4);

    fn lookup(id: Uuid) -> Option<ActionRef> {
        let (name, method) = match id.as_u128() {
            1 => ("Wait", "flow.wait"),
            2 => ("Loop", "flow.for_each"),
            3 => ("Check", "flow.if"),
            4 => ("Tap", "devices.tap"),
            _ => return None,
        };
        Some(ActionRef {
            name: name.to_string(),
            method: method.to_string(),
        })
    }

    struct Ctx {
        require_keys: bool,
        taken: HashSet<String>,
        existing: usize,
    }

    impl Ctx {
        fn new() -> Self {
            Ctx {
                require_keys: false,
                taken: HashSet::new(),
                existing: 0,
            }
        }

        fn tree(&self, v: Value) -> Result<Vec<NodeSpec>, FieldErrors> {
            let rules = TreeRules {
                lookup: &lookup,
                require_keys: self.require_keys,
                taken_keys: &self.taken,
                existing_nodes: self.existing,
            };
            let mut errs = FieldErrors::new();
            let items = v.as_array().unwrap().clone();
            match parse_tree(&items, "actions", &rules, &mut errs) {
                Some(s) => {
                    assert!(errs.is_empty());
                    Ok(s)
                }
                None => {
                    assert!(!errs.is_empty());
                    Err(errs)
                }
            }
        }
    }

    fn fields(e: &FieldErrors) -> Vec<(String, String)> {
        e.0.iter()
            .map(|e| (e.field.clone(), e.code.clone().unwrap_or_default()))
            .collect()
    }

    fn pair(f: &str, c: &str) -> (String, String) {
        (f.to_string(), c.to_string())
    }

    #[test]
    fn derives_keys_and_keeps_fields() {
        let specs = Ctx::new()
            .tree(json!([
                {"actionId": WAIT, "position": 10},
                {"actionId": WAIT, "position": 0, "nameOverride": "Open Settings",
                 "overrides": {"params": {"seconds": 2}}, "continueOnError": true,
                 "recordingEnabled": true},
                {"actionId": EACH, "position": 5, "children": [
                    {"actionId": WAIT, "position": 1},
                    {"actionId": TAP.to_string().to_uppercase(), "position": 0, "key": "tap_it"},
                ]},
            ]))
            .unwrap();
        assert_eq!(specs[0].key, "wait");
        assert_eq!(specs[1].key, "open-settings");
        assert_eq!(
            specs[1].overrides,
            Some(Overrides {
                params: Some(json!({"seconds": 2}))
            })
        );
        assert!(specs[1].continue_on_error && specs[1].recording_enabled);
        assert_eq!(specs[2].key, "loop_2", "reserved words get a suffix");
        assert_eq!(specs[2].children[0].key, "wait_2");
        assert_eq!(specs[2].children[1].key, "tap_it");
        assert_eq!(specs[2].children[1].action_id, TAP);
    }

    #[test]
    fn explicit_keys_win_over_derived_ones() {
        let specs = Ctx::new()
            .tree(json!([
                {"actionId": WAIT, "position": 0},
                {"actionId": TAP, "position": 1, "key": "wait"},
            ]))
            .unwrap();
        assert_eq!(specs[0].key, "wait_2");
        assert_eq!(specs[1].key, "wait");
    }

    #[test]
    fn derived_keys_avoid_taken_and_reserved_names() {
        let mut c = Ctx::new();
        c.taken.insert("wait".into());
        let specs = c
            .tree(json!([
                {"actionId": WAIT, "position": 0},
                {"actionId": WAIT, "position": 1, "nameOverride": "Steps"},
            ]))
            .unwrap();
        assert_eq!(specs[0].key, "wait_2");
        assert_eq!(specs[1].key, "steps_2");
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let e = Ctx::new()
            .tree(json!([
                {"actionId": Uuid::from_u128(99), "position": 0, "key": "Bad Key"},
                {"actionId": WAIT, "position": 0, "key": "steps"},
                {"actionId": TAP, "position": 2, "children": [{"actionId": WAIT, "position": 0}]},
                {"actionId": IF, "position": 3, "key": "dup", "children": [
                    {"actionId": WAIT, "position": 0, "key": "dup"},
                    {"actionId": WAIT, "position": 0, "children": [{"actionId": WAIT, "position": 0}]},
                ]},
                {"position": -1, "nameOverride": "", "overrides": 3, "continueOnError": "yes"},
                "nope",
            ]))
            .unwrap_err();
        assert_eq!(
            fields(&e),
            [
                pair("actions[0].actionId", "unknown_reference"),
                pair("actions[0].key", "invalid_key"),
                pair("actions[1].key", "reserved_key"),
                pair("actions[2].children", "children_not_allowed"),
                pair("actions[3].children[1].children", "too_deep"),
                pair("actions[3].children[1].position", "duplicate"),
                pair("actions[4].actionId", "required"),
                pair("actions[4].position", "invalid_value"),
                pair("actions[4].nameOverride", "invalid_value"),
                pair("actions[4].overrides", "invalid_type"),
                pair("actions[4].continueOnError", "invalid_type"),
                pair("actions[5]", "invalid_type"),
                pair("actions[1].position", "duplicate"),
                pair("actions[3].children[0].key", "duplicate"),
            ]
        );
    }

    #[test]
    fn empty_trees_and_limits() {
        let e = Ctx::new().tree(json!([])).unwrap_err();
        assert_eq!(fields(&e), [pair("actions", "invalid_value")]);
        let many: Vec<Value> = (0..201)
            .map(|i| json!({"actionId": WAIT, "position": i}))
            .collect();
        let e = Ctx::new().tree(Value::Array(many)).unwrap_err();
        assert_eq!(fields(&e), [pair("actions", "invalid_value")]);
        let exactly: Vec<Value> = (0..200)
            .map(|i| json!({"actionId": WAIT, "position": i}))
            .collect();
        let specs = Ctx::new().tree(Value::Array(exactly)).unwrap();
        assert_eq!(specs[199].key, "wait_200");
        let mut c = Ctx::new();
        c.existing = 200;
        let e = c
            .tree(json!([{"actionId": WAIT, "position": 0}]))
            .unwrap_err();
        assert_eq!(fields(&e), [pair("actions", "invalid_value")]);
    }

    #[test]
    fn empty_or_null_children_are_no_children() {
        let specs = Ctx::new()
            .tree(json!([
                {"actionId": WAIT, "position": 0, "children": []},
                {"actionId": TAP, "position": 1, "children": null, "key": null,
                 "nameOverride": null, "overrides": null},
            ]))
            .unwrap();
        assert!(specs.iter().all(|s| s.children.is_empty()));
        assert_eq!(specs[1].overrides, None);
        let specs = Ctx::new()
            .tree(json!([{"actionId": WAIT, "position": 0, "overrides": {}}]))
            .unwrap();
        assert_eq!(specs[0].overrides, Some(Overrides { params: None }));
    }

    #[test]
    fn version_three_replace_requires_keys() {
        let mut c = Ctx::new();
        c.require_keys = true;
        let e = c
            .tree(json!([
                {"actionId": EACH, "position": 0, "key": "each", "children": [
                    {"actionId": WAIT, "position": 0},
                ]},
                {"actionId": WAIT, "position": 1, "key": null},
            ]))
            .unwrap_err();
        assert_eq!(
            fields(&e),
            [
                pair("actions[0].children[0].key", "key_required"),
                pair("actions[1].key", "key_required"),
            ]
        );
        let ok = c
            .tree(json!([{"actionId": WAIT, "position": 0, "key": "w"}]))
            .unwrap();
        assert_eq!(ok[0].key, "w");
    }

    #[test]
    fn single_node_against_an_existing_flow() {
        let taken: HashSet<String> = ["wait".to_string()].into();
        let rules = TreeRules {
            lookup: &lookup,
            require_keys: false,
            taken_keys: &taken,
            existing_nodes: 3,
        };
        let mut errs = FieldErrors::new();
        let node = parse_node(
            &json!({"actionId": WAIT, "position": 1}),
            "",
            Level::Top,
            &[0, 2],
            &rules,
            &mut errs,
        )
        .unwrap();
        assert_eq!(node.key, "wait_2");

        let node = parse_node(
            &json!({"actionId": WAIT, "position": 2, "key": "wait",
                    "children": [{"actionId": WAIT, "position": 0}]}),
            "",
            Level::Child,
            &[2],
            &rules,
            &mut errs,
        );
        assert!(node.is_none());
        assert_eq!(
            fields(&errs),
            [
                pair("children", "too_deep"),
                pair("position", "duplicate"),
                pair("key", "duplicate"),
            ]
        );
        let mut errs = FieldErrors::new();
        assert!(parse_node(&json!([]), "", Level::Top, &[], &rules, &mut errs).is_none());
        assert_eq!(fields(&errs), [pair("body", "invalid_type")]);
    }

    #[test]
    fn materialize_orders_and_links() {
        let specs = Ctx::new()
            .tree(json!([
                {"actionId": IF, "position": 7, "children": [
                    {"actionId": WAIT, "position": 9},
                    {"actionId": WAIT, "position": 3},
                ]},
                {"actionId": WAIT, "position": 2},
            ]))
            .unwrap();
        let flow = Uuid::from_u128(500);
        let nodes = materialize(&specs, flow, None, Ts::now());
        let order: Vec<(i64, Option<Uuid>)> = nodes
            .iter()
            .map(|n| (n.position, n.parent_flow_action_id))
            .collect();
        assert_eq!(
            order,
            [
                (2, None),
                (7, None),
                (3, Some(nodes[1].id)),
                (9, Some(nodes[1].id)),
            ]
        );
        assert!(nodes.iter().all(|n| n.flow_id == flow));

        let copy_flow = Uuid::from_u128(501);
        let copy = clone_nodes(&nodes, copy_flow, Ts::now());
        assert_eq!(copy.len(), 4);
        assert!(copy.iter().zip(&nodes).all(|(c, n)| c.id != n.id
            && c.key == n.key
            && c.position == n.position
            && c.flow_id == copy_flow));
        assert_eq!(copy[2].parent_flow_action_id, Some(copy[1].id));
    }
}
