"""差评 work orders (policy art. 11-13): every first 差评 opens one (gateway/ratings.py), assigned to its
department; the hall handles it in steps (回访, 申诉, 复核, 整改, 延期, 整改完成), each checked against the
order the province accepts (protocol/upstream.py STEP_FOLLOWS), audited, and queued for the province.

A work order is a `followups` row; its steps are `steps` rows, numbered within it. The forwarder sends a step
only once the 差评 itself is at the province, and each work order's steps one after another, in order.
"""
from __future__ import annotations

import datetime as dt
import sqlite3

from gateway import audit
from gateway.errors import Conflict, InvalidInput, NotFound
from gateway.workdays import china_day, day_end
from protocol import upstream

STEP_NAMES = {"visited": "回访", "appealed": "申诉", "appeal_upheld": "申诉成立", "appeal_rejected": "申诉驳回",
              "rectifying": "整改", "extended": "整改延期", "rectified": "整改完成"}
APPEAL_DECISIONS = ("appeal_upheld", "appeal_rejected")
_FIELDS = {"visitResult": "visit_result", "content": "content", "deadline": "deadline", "handler": "handler"}

_ORDER = """
SELECT f.rating_id, f.opened_at, f.deadline, f.visit_deadline, f.state, f.last_step, f.dept_code, f.staff_no,
       r.level, r.channel, r.case_ref, r.reasons, r.assessed_at, coalesce(c.window_no, d.window_no) AS window_no,
       o.state AS forward_state, o.last_error AS forward_error
FROM followups f JOIN ratings r ON r.id = f.rating_id JOIN outbox o ON o.rating_id = f.rating_id
LEFT JOIN cases c ON c.case_ref = r.case_ref LEFT JOIN devices d ON d.dev = r.origin
"""


def take_step(conn: sqlite3.Connection, rating_id: int, step: str, handler: str, fields: dict, now: float,
              actor: str) -> dict:
    """Record the next step of a work order, taken by `handler` (the 工号 or account the province is told) and
    audited as `actor` (who made the call), in the caller's transaction. InvalidInput for a bad field, NotFound
    for no such work order, Conflict for a step that may not follow the last one (or an appeal decided by its
    own appellant)."""
    order = conn.execute("SELECT state, last_step, deadline FROM followups WHERE rating_id = ?",
                         (rating_id,)).fetchone()
    if order is None:
        raise NotFound(f"no work order for rating {rating_id}")
    if step not in upstream.STEP_FOLLOWS:
        raise InvalidInput(f"step must be one of {', '.join(upstream.STEP_FOLLOWS)}", "step")
    if order["last_step"] not in upstream.STEP_FOLLOWS[step]:
        allowed = upstream.allowed_after(order["last_step"])
        after = f"after {order['last_step']}" if order["last_step"] else "as the first step"
        raise Conflict(f"{step} may not come {after}; allowed: {', '.join(allowed) or 'nothing (closed)'}", "step")
    if step in APPEAL_DECISIONS:  # neither the appellant's account nor the 工号 it named may decide
        appellant = conn.execute("SELECT handler, actor FROM steps WHERE rating_id = ? AND step = 'appealed' "
                                 "ORDER BY number DESC LIMIT 1", (rating_id,)).fetchone()
        if {handler, actor} & {appellant["handler"], appellant["actor"]}:
            raise Conflict("an appeal is decided by a manager other than its appellant", "handler")
    values = _step_fields(step, handler, fields, order["deadline"], now)
    number = conn.execute("SELECT coalesce(max(number), 0) + 1 FROM steps WHERE rating_id = ?",
                          (rating_id,)).fetchone()[0]
    conn.execute("INSERT INTO steps (rating_id, number, step, at, handler, actor, visit_result, content, deadline) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (rating_id, number, step, now, handler, actor,
                                                        values["visit_result"], values["content"], values["deadline"]))
    closed = step in upstream.FINAL_STEPS
    # A new 整改 deadline is the work order's from now on (overdue lists, warnings): the end of that China day.
    until = _end_of(values["deadline"]) if step in upstream.NEEDS_DEADLINE else None
    conn.execute("UPDATE followups SET last_step = ?, state = CASE WHEN ? THEN 'closed' ELSE state END, "
                 "deadline = coalesce(?, deadline) WHERE rating_id = ?", (step, closed, until, rating_id))
    # The audit says who and what, not the free text itself (it may name people, and the audit is kept forever).
    audit.append(conn, now, actor, f"workorder_{step}",
                 f"rating {rating_id} step {number} handler {handler}"
                 + "".join(f" {k}={v}" for k, v in values.items() if v is not None and k != "content")
                 + (f" content of {len(values['content'])} characters" if values["content"] else ""))
    return {"rating_id": rating_id, "number": number, "step": step, **values}


def _step_fields(step: str, handler: str, fields: dict, rectify_by: float | None, now: float) -> dict:
    """The step's own fields, checked as the province checks them; the 整改 deadline defaults to the work
    order's (10 working days from the 差评)."""
    deadline = fields.get("deadline")
    defaulted = step == "rectifying" and deadline is None and rectify_by is not None
    if defaulted:
        deadline = china_day(rectify_by - 1).isoformat()  # its last working day
    values = {"visit_result": fields.get("visit_result"), "content": fields.get("content"), "deadline": deadline}
    if not isinstance(handler, str) or not handler:
        raise InvalidInput("handler: the 工号 or account of who took the step", "handler")
    record = {"stepId": "x", "evalId": "x", "step": step, "stepTime": "2000-01-01 00:00:00", "handler": handler,
              "visitResult": values["visit_result"], "content": values["content"], "deadline": deadline}
    problem = upstream.step_problem({k: v for k, v in record.items() if v is not None})
    if problem:  # the message starts with the record's field name
        named = problem[1].replace(":", " ").split(" ")[0]
        raise InvalidInput(problem[1], _FIELDS.get(named))
    if deadline is not None and step in upstream.NEEDS_DEADLINE:
        if dt.date.fromisoformat(deadline) < china_day(now):
            raise InvalidInput("the work order's 整改 deadline has passed: give a new one (deadline)" if defaulted
                               else "deadline: not in the past", "deadline")
    return values


def _end_of(day: str) -> float:
    """The end of a China date (YYYY-MM-DD), as Unix seconds."""
    return day_end(dt.date.fromisoformat(day))


def raise_warnings(conn: sqlite3.Connection, now: float, percent: int) -> int:
    """超期预警: for each open work order, a warning when `percent` of a deadline's time is gone and another
    when it has passed, each raised once (a unique row), whoever runs this and however often. Deadlines: the
    回访 while no step is taken yet; the 整改, from the latest rectifying or extended step, else the work
    order's own. Returns how many were raised."""
    rows = conn.execute(
        "SELECT f.rating_id, f.opened_at, f.last_step, f.visit_deadline, f.deadline, s.at AS step_at, "
        "s.deadline AS step_deadline FROM followups f LEFT JOIN steps s ON s.id = (SELECT id FROM steps "
        "WHERE rating_id = f.rating_id AND step IN ('rectifying', 'extended') ORDER BY number DESC LIMIT 1) "
        "WHERE f.state = 'open'").fetchall()
    raised = 0
    for row in rows:
        deadlines = []
        if row["last_step"] is None and row["visit_deadline"] is not None:
            deadlines.append(("visit", row["opened_at"], row["visit_deadline"]))
        if row["step_deadline"]:
            deadlines.append(("rectify", row["step_at"], _end_of(row["step_deadline"])))
        elif row["deadline"] is not None:
            deadlines.append(("rectify", row["opened_at"], row["deadline"]))
        for kind, started, deadline in deadlines:
            level = 100 if now >= deadline else percent if now >= started + (deadline - started) * percent / 100 \
                else None
            if level is not None:
                raised += conn.execute("INSERT INTO warnings (rating_id, kind, level, deadline, raised_at) "
                                       "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                                       (row["rating_id"], kind, level, deadline, now)).rowcount
    return raised


def orders(reader, state: str | None = None, dept_code: str | None = None, overdue_at: float | None = None,
           limit: int = 500) -> list[dict]:
    """Work orders, newest first: of a state (open, closed), a department, or overdue at a time."""
    where, args = [], []
    if state:
        where.append("f.state = ?")
        args.append(state)
    if dept_code:
        where.append("f.dept_code = ?")
        args.append(dept_code)
    if overdue_at is not None:
        where.append("f.state = 'open' AND f.deadline < ?")
        args.append(overdue_at)
    sql = _ORDER + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY f.rating_id DESC LIMIT ?"
    return [_order(row) for row in reader.execute(sql, (*args, limit))]


def order(reader, rating_id: int) -> dict:
    """One work order with its steps, oldest first."""
    row = reader.execute(_ORDER + " WHERE f.rating_id = ?", (rating_id,)).fetchone()
    if row is None:
        raise NotFound(f"no work order for rating {rating_id}")
    steps = reader.execute("SELECT number, step, at, handler, visit_result, content, deadline, state, last_error "
                           "FROM steps WHERE rating_id = ? ORDER BY number", (rating_id,))
    warnings = reader.execute("SELECT kind, level, deadline, raised_at, notify_state FROM warnings "
                              "WHERE rating_id = ? ORDER BY id", (rating_id,))
    return {**_order(row), "steps": [{**dict(s), "step_name": STEP_NAMES[s["step"]]} for s in steps],
            "warnings": [dict(w) for w in warnings]}


def _order(row) -> dict:
    order = dict(row)
    order["reasons"] = row["reasons"].split(",") if row["reasons"] else []
    order["next_steps"] = upstream.allowed_after(row["last_step"]) if row["state"] == "open" else []
    return order
