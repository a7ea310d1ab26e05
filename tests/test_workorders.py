"""差评 work orders: opened by every first 差评, handled in steps the province accepts in order, audited, and
forwarded exactly once and in order after the 差评 itself, whatever the province does meanwhile."""
from __future__ import annotations

import json

import pytest

from gateway import settings
from gateway.access import key_entry
from protocol import upstream
from tests.helpers import DEPT, register_device, wait_until
from tests.test_cases_api import call
from tests.test_gateway_cli import run_cli

MANAGER, OTHER_MANAGER, WINDOW = "manager-key-0123456789", "manager-key-9876543210", "window-key-0123456789"
KEYS = [key_entry(MANAGER, ["manager"], "mgr1"), key_entry(OTHER_MANAGER, ["manager"], "mgr2"),
        key_entry(WINDOW, ["window"], "erp")]


@pytest.fixture
def hall(gateway_factory, province, wire_device):
    """A gateway forwarding to the strict simulated province, and a registered evaluator at window A07."""
    gateway = gateway_factory(province.url, **{"api.keys": KEYS})
    register_device(gateway.writer, "W01", window_no="A07")
    return gateway, province, wire_device("W01")


def bad_rating(gateway, device) -> int:
    """A 差评 pressed on the evaluator; its work order's id (the rating's)."""
    device.press("very_dissatisfied", reasons=["501"])
    wait_until(device.all_acked, 10, "the 差评 acked")
    return gateway.reader.execute("SELECT rating_id FROM followups ORDER BY rating_id DESC").fetchone()[0]


def step(gateway, rating_id: int, body: dict, key: str = MANAGER):
    status, answer = call(gateway, "POST", f"/api/v1/workorders/{rating_id}/steps", body, key=key)
    return status, json.loads(answer)


def test_a_work_order_from_the_bad_rating_to_rectified_reaches_the_province_in_order(hall):
    gateway, province, device = hall
    device.press("satisfied")  # no work order for a 好评
    rating_id = bad_rating(gateway, device)
    status, order = call(gateway, "GET", f"/api/v1/workorders/{rating_id}", key=MANAGER)
    order = json.loads(order)
    assert status == 200 and (order["state"], order["dept_code"], order["window_no"]) == ("open", DEPT, "A07")
    assert order["next_steps"] == ["visited", "appealed"]
    assert step(gateway, rating_id, {"step": "visited", "visit_result": 1, "content": "已电话回访,核实情况"})[0] == 200
    status, order = step(gateway, rating_id, {"step": "rectifying"})
    assert status == 200 and order["steps"][-1]["deadline"]  # 10 working days from the 差评 by default
    extended = {"step": "extended", "content": "需协调不动产中心", "deadline": "2099-12-31"}
    assert step(gateway, rating_id, extended)[0] == 200
    status, order = step(gateway, rating_id, {"step": "rectified", "content": "已优化材料清单,一次告知"})
    assert status == 200 and order["state"] == "closed" and order["next_steps"] == []

    eval_id = upstream.eval_id("361102", "W01", gateway.reader.execute(
        "SELECT rid FROM ratings WHERE id = ?", (rating_id,)).fetchone()[0])
    wait_until(lambda: len(province.steps(eval_id)) == 4, 20, "the four steps at the province")
    held = province.steps(eval_id)
    assert [s["step"] for s in held] == ["visited", "rectifying", "extended", "rectified"]
    assert [s["stepId"] for s in held] == [f"{eval_id}-{n}" for n in (1, 2, 3, 4)]
    assert held[0]["visitResult"] == 1 and held[0]["handler"] == "mgr1"
    actions = [r["action"] for r in gateway.reader.execute("SELECT action FROM audit WHERE action LIKE 'workorder_%'")]
    assert actions == ["workorder_visited", "workorder_rectifying", "workorder_extended", "workorder_rectified"]


def test_illegal_steps_and_bad_fields_are_refused_and_change_nothing(hall):
    gateway, _, device = hall
    rating_id = bad_rating(gateway, device)
    refusals = [
        ({"step": "rectified", "content": "x"}, 409),  # not as a first step
        ({"step": "appeal_upheld", "content": "x"}, 409),  # no appeal to decide
        ({"step": "extended", "content": "x", "deadline": "2099-01-01"}, 409),
        ({"step": "sent_flowers"}, 400),
        ({"step": "visited"}, 400),  # no visit_result
        ({"step": "visited", "visit_result": 3}, 400),
        ({"step": "appealed"}, 400),  # no grounds
        ({"step": "appealed", "content": "长" * 501}, 400),
        ({"step": "visited", "visit_result": 1, "handler": "h" * 31}, 400),
    ]
    for body, expected in refusals:
        status, answer = step(gateway, rating_id, body)
        assert status == expected and answer["error"], (body, answer)
    assert call(gateway, "POST", "/api/v1/workorders/999999/steps", {"step": "visited", "visit_result": 1},
                key=MANAGER)[0] == 404
    assert gateway.reader.execute("SELECT count(*) FROM steps").fetchone()[0] == 0
    assert step(gateway, rating_id, {"step": "visited", "visit_result": 2})[0] == 200
    assert step(gateway, rating_id, {"step": "rectifying", "deadline": "2000-01-01"})[0] == 400  # in the past
    assert step(gateway, rating_id, {"step": "visited", "visit_result": 1})[0] == 409  # not twice
    assert gateway.reader.execute("SELECT count(*) FROM steps").fetchone()[0] == 1


def test_an_appeal_is_decided_by_another_manager_and_the_window_sees_no_work_orders(hall):
    gateway, province, device = hall
    rating_id = bad_rating(gateway, device)
    assert step(gateway, rating_id, {"step": "appealed", "content": "评价人误按,有录像为证"})[0] == 200
    status, answer = step(gateway, rating_id, {"step": "appeal_upheld", "content": "核实属实"})
    assert status == 409 and "other than its appellant" in answer["error"]
    status, order = step(gateway, rating_id, {"step": "appeal_upheld", "content": "核实属实"}, key=OTHER_MANAGER)
    assert status == 200 and order["state"] == "closed"
    assert call(gateway, "GET", "/api/v1/workorders", key=WINDOW)[0] == 403
    assert call(gateway, "POST", f"/api/v1/workorders/{rating_id}/steps", {"step": "visited"}, key=WINDOW)[0] == 403
    status, listed = call(gateway, "GET", "/api/v1/workorders?state=closed", key=MANAGER)
    assert [o["rating_id"] for o in json.loads(listed)["workorders"]] == [rating_id]
    wait_until(lambda: [s["step"] for s in province.steps()] == ["appealed", "appeal_upheld"], 20,
               "the appeal and its decision at the province")


def test_steps_arrive_once_and_in_order_through_province_faults(hall):
    gateway, province, device = hall
    province.faults.update({"error_rate": 0.5})  # half the answers are 5xx, stored or not
    orders = [bad_rating(gateway, device) for _ in range(3)]
    for rating_id in orders:
        for body in ({"step": "visited", "visit_result": 1}, {"step": "rectifying"},
                     {"step": "rectified", "content": "已整改"}):
            assert step(gateway, rating_id, body)[0] == 200
    wait_until(lambda: len(province.steps()) == 9, 60, "every step at the province")
    province.faults.update({"error_rate": 0.0})
    by_order: dict = {}
    for held in province.steps():
        by_order.setdefault(held["evalId"], []).append(held["step"])
    assert list(by_order.values()) == [["visited", "rectifying", "rectified"]] * 3
    assert len({s["stepId"] for s in province.steps()}) == 9
    wait_until(lambda: gateway.reader.execute("SELECT count(*) FROM steps WHERE state = 'forwarded'").fetchone()[0]
               == 9, 20, "every step settled as forwarded")


def test_the_command_line_lists_shows_and_takes_steps(hall, tmp_path):
    gateway, _, device = hall
    rating_id = bad_rating(gateway, device)
    config = tmp_path / "gateway.toml"
    config.write_text(settings.dump(gateway.config))
    listed = run_cli("workorders", "list", "--config", str(config), "--state", "open")
    assert listed.exit_code == 0 and json.loads(listed.output.splitlines()[0])["rating_id"] == rating_id
    taken = run_cli("workorders", "step", str(rating_id), "visited", "--config", str(config), "--handler", "N0321",
                    "--visit-result", "1")
    assert taken.exit_code == 0, taken.output
    refused = run_cli("workorders", "step", str(rating_id), "visited", "--config", str(config), "--handler", "N0321",
                      "--visit-result", "1")
    assert refused.exit_code == 1 and "may not come after visited" in refused.output
    shown = run_cli("workorders", "show", str(rating_id), "--config", str(config))
    assert shown.exit_code == 0 and json.loads(shown.output)["steps"][0]["handler"] == "N0321"


def test_overdue_work_orders_are_warned_once_each_even_across_a_restart(gateway_factory, wire_device, monkeypatch):
    """超期预警 at 80 % of the 回访's and the 整改's time and at their deadlines: each once, to the duty manager's
    webhook, with nothing lost or sent again when the gateway restarts in between."""
    import queue

    from gateway import notify
    from gateway.clock import ManualClock
    from tests.test_gateway_cases import Webhook, china

    monkeypatch.setattr(notify.Notifier, "interval", 0.05)
    hook, clock = Webhook(), ManualClock(china(2026, 11, 2, 9))  # a Monday
    start = lambda: gateway_factory(clock=clock, **{"cases.webhook_url": hook.url, "api.keys": KEYS})  # noqa: E731
    gateway = start()
    register_device(gateway.writer, "W01", window_no="A07")
    rating_id = bad_rating(gateway, wire_device("W01"))
    assert hook.received.get(timeout=10)["event"] == "bad_rating"

    def warned_after(when: float) -> list:
        """Let time pass to `when`; the warnings the webhook got for it."""
        clock.set(when)
        gateway.housekeeping.run_once()
        wait_until(lambda: gateway.reader.execute("SELECT count(*) FROM warnings WHERE notify_state = 'pending'")
                   .fetchone()[0] == 0, 10, "the warnings sent")
        got = []
        while True:
            try:
                got.append(hook.received.get(timeout=0.5))
            except queue.Empty:
                return [(w["kind"], w["level"], w["rating_id"]) for w in got]

    # 回访 is due by the end of Tuesday: 80 % of its 39 hours are gone at 16:12 on Tuesday.
    assert warned_after(china(2026, 11, 3, 16, 0)) == []
    assert warned_after(china(2026, 11, 3, 17, 0)) == [("visit", 80, rating_id)]
    assert warned_after(china(2026, 11, 3, 18, 0)) == []  # once
    gateway.stop()
    gateway = start()  # a restart in between sends nothing again and loses nothing
    assert warned_after(china(2026, 11, 4, 1, 0)) == [("visit", 100, rating_id)]
    assert step(gateway, rating_id, {"step": "visited", "visit_result": 1})[0] == 200
    assert warned_after(china(2026, 11, 5, 1, 0)) == []  # visited: no more 回访 warnings
    # 整改: 10 working days after the 差评's day, to the end of Monday 11-16; 80 % of that is gone on 11-14 01:48.
    assert warned_after(china(2026, 11, 14, 1, 0)) == []
    assert warned_after(china(2026, 11, 14, 12, 0)) == [("rectify", 80, rating_id)]
    assert warned_after(china(2026, 11, 17, 1, 0)) == [("rectify", 100, rating_id)]
    assert warned_after(china(2026, 11, 20, 12, 0)) == []
    order = json.loads(call(gateway, "GET", f"/api/v1/workorders/{rating_id}", key=MANAGER)[1])
    assert [(w["kind"], w["level"], w["notify_state"]) for w in order["warnings"]] == [
        ("visit", 80, "sent"), ("visit", 100, "sent"), ("rectify", 80, "sent"), ("rectify", 100, "sent")]
    hook.close()


def test_after_rectification_the_citizen_sees_the_measures_and_gives_one_follow_up_rating(hall):
    """追评: the case's own page shows what was done and takes one more rating, sent as assessNumber 2."""
    gateway, province, _ = hall
    body = {"project_no": "3611022026113000001", "task_code": "361100-000-XK-001", "task_name": "不动产登记",
            "dept_code": DEPT, "staff_no": "N0321", "window_no": "A07"}
    case = json.loads(call(gateway, "POST", "/api/v1/cases", body, key=WINDOW)[1])
    page = "/r/" + case["url"].rsplit("/", 1)[1]
    assert call(gateway, "POST", page, key=None, form={"level": "dissatisfied", "reason": ["503"]})[0] == 200
    rating_id = gateway.reader.execute("SELECT rating_id FROM followups").fetchone()[0]
    status, shown = call(gateway, "GET", page, key=None)
    assert status == 200 and "该办件已评价" in shown  # nothing to show yet
    for taken in ({"step": "visited", "visit_result": 1}, {"step": "rectifying"},
                  {"step": "rectified", "content": "已精简材料清单,一次性告知所需材料"}):
        assert step(gateway, rating_id, taken)[0] == 200
    status, shown = call(gateway, "GET", page, key=None)
    assert status == 200 and "整改措施" in shown and "已精简材料清单" in shown and "追评" in shown
    assert call(gateway, "POST", page, key=None, form={"level": "satisfied"})[0] == 200
    status, shown = call(gateway, "POST", page, key=None, form={"level": "very_dissatisfied"})
    assert status == 409 and "一次一评" in shown  # one 追评
    assert "该办件已评价" in call(gateway, "GET", page, key=None)[1]
    wait_until(lambda: len(province.records()) == 2, 20, "the rating and its 追评 at the province")
    first, second = province.records()
    assert (first["assessNumber"], second["assessNumber"]) == (1, 2)
    assert second["projectNo"] == first["projectNo"] and second["evalId"] != first["evalId"]
    assert second["satisfaction"] == 4
    assert gateway.reader.execute("SELECT count(*) FROM followups").fetchone()[0] == 1  # no new work order


def test_a_refused_step_is_visible_holds_back_its_work_order_and_can_be_retried(hall, tmp_path):
    """If the province refuses a step, the later steps of that work order wait (their order matters), the
    operator sees it in the status and the dead letters, and a retry sends them all, in order."""
    gateway, province, device = hall
    rating_id = bad_rating(gateway, device)
    wait_until(lambda: province.count() == 1, 20, "the 差评 at the province")
    province.faults.update({"error_rate": 0.0})
    with province._lock:  # the province forgets the 差评, so it refuses the steps (E201)
        province._db.execute("DELETE FROM records")
    assert step(gateway, rating_id, {"step": "visited", "visit_result": 1})[0] == 200
    assert step(gateway, rating_id, {"step": "rectifying"})[0] == 200
    wait_until(lambda: gateway.reader.execute("SELECT count(*) FROM steps WHERE state = 'dead'").fetchone()[0] == 1,
               20, "the first step refused")
    config = tmp_path / "gateway.toml"
    config.write_text(settings.dump(gateway.config))
    status = json.loads(run_cli("status", "--config", str(config)).output)
    assert (status["steps_dead"], status["steps_pending"]) == (1, 1)
    listed = [json.loads(line) for line in run_cli("dead-letters", "--config", str(config)).output.splitlines()]
    assert [(d["rating_id"], d["step"], d["level"]) for d in listed] == [(rating_id, 1, "visited")]
    assert "E201" in listed[0]["last_error"]
    order = json.loads(call(gateway, "GET", f"/api/v1/workorders/{rating_id}", key=MANAGER)[1])
    assert [s["state"] for s in order["steps"]] == ["dead", "pending"]
    gateway.writer.call(lambda conn: conn.execute("UPDATE outbox SET state = 'pending'"))  # the 差评 sent again
    retried = run_cli("dead-letters", "--config", str(config), "--retry")
    assert retried.exit_code == 0
    eval_id = upstream.eval_id("361102", "W01", gateway.reader.execute(
        "SELECT rid FROM ratings WHERE id = ?", (rating_id,)).fetchone()[0])
    wait_until(lambda: [s["step"] for s in province.steps(eval_id)] == ["visited", "rectifying"], 20,
               "both steps at the province, in order")


def test_steps_check_every_field_they_carry_and_who_decides_an_appeal(hall):
    gateway, _, device = hall
    rating_id = bad_rating(gateway, device)
    for body in ({"step": "visited", "visit_result": 1, "content": "长" * 501},
                 {"step": "visited", "visit_result": True},
                 {"step": "visited", "visit_result": 1, "deadline": "junk"}):
        assert step(gateway, rating_id, body)[0] == 400, body
    assert step(gateway, rating_id, {"step": "visited", "visit_result": 1})[0] == 200
    assert step(gateway, rating_id, {"step": "rectifying", "deadline": "2099-02-30"})[0] == 400  # no such day
    assert step(gateway, rating_id, {"step": "rectifying", "deadline": "2099-06-30"})[0] == 200
    overdue = json.loads(call(gateway, "GET", "/api/v1/workorders?overdue=1", key=MANAGER)[1])["workorders"]
    assert overdue == []  # the new deadline is the work order's
    other = bad_rating(gateway, device)
    assert step(gateway, other, {"step": "appealed", "content": "误按"})[0] == 200
    status, answer = step(gateway, other, {"step": "appeal_upheld", "content": "成立", "handler": "someone-else"})
    assert status == 409  # the same account, whatever 工号 it names
    entries = [r["detail"] for r in gateway.reader.execute("SELECT detail FROM audit WHERE action LIKE 'workorder_%'")]
    assert entries and all("误按" not in e for e in entries) and "handler mgr1" in entries[0]
