"""The official Python client against a running flowrun server.

Run by `crates/flowrun/tests/sdk_python.rs`, which starts the server and passes
FLOWRUN_BASE_URL (…/v1) and FLOWRUN_KEY. Exits non-zero on the first failed check.
"""

import os
import sys

import mobilerun_sdk
from mobilerun_sdk import Mobilerun

base_url = os.environ["FLOWRUN_BASE_URL"]
key = os.environ["FLOWRUN_KEY"]
# max_retries=0: a retried request would hide a wrong status code.
client = Mobilerun(api_key=key, base_url=base_url, max_retries=0)
wf = client.workflows


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


# Triggers
trigger = wf.triggers.create(activation="custom", name="SDK trigger", description="from python").data
check(trigger.activation == "custom" and trigger.name == "SDK trigger", "triggers.create")
check(wf.triggers.retrieve(trigger.id).data.id == trigger.id, "triggers.retrieve")
listed = wf.triggers.list(search="sdk", page_size=10)
check(any(t.id == trigger.id for t in listed.items) and listed.pagination.total == 1, "triggers.list")
updated = wf.triggers.update(trigger.id, name="SDK trigger 2").data
check(updated.name == "SDK trigger 2", "triggers.update")
sched = wf.triggers.create(
    activation="schedule",
    name="Every morning",
    schedule_rule={"type": "cron", "expression": "0 9 * * *"},
    timezone="Europe/Berlin",
).data
check(sched.next_fire_time is not None, "schedule trigger has nextFireTime")

# Action catalog and actions
catalog = wf.action_catalog.list(page_size=100).items
wait_entry = next(e for e in catalog if e.method == "flow.wait")
action = wf.actions.create(catalog_entry_id=wait_entry.id, name="Wait a bit", params={"seconds": 1}).data
check(action.method == "flow.wait" and action.params == {"seconds": 1}, "actions.create")
check(wf.actions.retrieve(action.id).data.name == "Wait a bit", "actions.retrieve")
check(any(a.id == action.id for a in wf.actions.list().items), "actions.list")
action = wf.actions.update(action.id, params={"seconds": 2}).data
check(action.params == {"seconds": 2}, "actions.update")
try:
    wf.actions.create(catalog_entry_id=wait_entry.id, name="bad", params={"seconds": "x"})
    check(False, "invalid params rejected")
except mobilerun_sdk.BadRequestError as e:
    check(e.status_code == 400, "invalid params → 400")

# Flows
flow = wf.flows.create(
    name="SDK flow",
    trigger_id=trigger.id,
    actions=[{"actionId": action.id, "position": 0}],
).data
check(flow.enabled and flow.template_resolution_version == 3, "flows.create")
check(wf.flows.retrieve(flow.id).data.name == "SDK flow", "flows.retrieve")
check(any(f.id == flow.id for f in wf.flows.list(status=["healthy"]).items), "flows.list")
flow = wf.flows.update(flow.id, name="SDK flow renamed", enabled=False).data
check(flow.name == "SDK flow renamed" and not flow.enabled, "flows.update")
nodes = wf.flows.actions.list(flow.id).data
check(len(nodes) == 1 and nodes[0].key == "wait-a-bit", "flows.actions.list")

# Executions: run (also on a disabled flow), retrieve, list, metrics, abort; fire.
run = wf.flows.run(flow.id, payload={"source": "sdk"}).data
check(run.enqueued_count == 1 and len(run.execution_ids) == 1, "flows.run")
execution_id = run.execution_ids[0]
execution = wf.executions.retrieve(execution_id).data
check(execution.status in ("pending", "running") and execution.kind == "live", "executions.retrieve")
aborted = wf.executions.abort(execution_id).data
check(aborted.status == "cancelled" and aborted.finished_at is not None, "executions.abort")
try:
    wf.executions.abort(execution_id)
    check(False, "second abort refused")
except mobilerun_sdk.ConflictError as e:
    check(e.status_code == 409, "executions.abort terminal → 409")
listed = wf.executions.list(flow_id=flow.id, status="cancelled")
check([i.id for i in listed.items] == [execution_id], "executions.list filters")
metrics = wf.executions.get_metrics(flow_id=flow.id).data
check(metrics.total == 1 and metrics.by_status.cancelled == 1, "executions.get_metrics")
fired = wf.triggers.fire(trigger.id, payload={"n": 1})
check(fired.enqueued_count == 0 and not fired.deduplicated, "triggers.fire (flow disabled → nothing)")

# Deleting a trigger in use is refused without retries (x-should-retry: false).
try:
    wf.triggers.delete(trigger.id)
    check(False, "trigger in use")
except mobilerun_sdk.ConflictError as e:
    check(e.status_code == 409, "triggers.delete in use → 409")

check("archived" in wf.flows.delete(flow.id).message, "flows.delete archives")
try:
    wf.flows.retrieve(flow.id)
    check(False, "archived flow is gone")
except mobilerun_sdk.NotFoundError:
    check(True, "archived flow → 404")
check("deleted" in wf.actions.delete(action.id).message, "actions.delete")
check("deleted" in wf.triggers.delete(trigger.id).message, "triggers.delete")
try:
    wf.triggers.retrieve(trigger.id)
    check(False, "deleted trigger is gone")
except mobilerun_sdk.NotFoundError:
    check(True, "deleted trigger → 404")
print("all SDK checks passed")
