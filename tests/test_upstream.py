"""The upstream contract: a stored rating mapped onto the provincial record (docs/upstream.md)."""
from __future__ import annotations

import pytest

from protocol import upstream

CASE = {"project_no": "3611002026112900017", "task_code": "361100-000-XK-001", "task_name": "不动产登记",
        "dept_code": "11361100MB1234567X", "dept_name": "信州区自然资源局", "staff_no": "N0321", "user_prop": 1}


def rating(**changes):
    base = {"eval_id": "361102-W01-5f2c9a0e7b3d4c11", "level": "very_satisfied", "channel": "device",
            "assessed_at": 1764383400, "public": True, "window_no": "A12"}
    base.update(changes)
    return base


def test_device_press_maps_to_deployed_codes():
    record = upstream.to_record(rating(), CASE, upstream.Profile(area_code="361102"))
    assert record == {
        "evalId": "361102-W01-5f2c9a0e7b3d4c11", "projectNo": "3611002026112900017",
        "taskCode": "361100-000-XK-001", "taskName": "不动产登记", "deptCode": "11361100MB1234567X",
        "proDepart": "信州区自然资源局", "proManager": "N0321", "windowNo": "A12", "areaCode": "361102",
        "pf": "5", "satisfaction": 5, "assessTime": "2025-11-29 10:30:00", "assessNumber": 1,
        "isDefault": 0, "isPublic": 1, "userProp": 1,
    }


@pytest.mark.parametrize("direction,very_satisfied,very_dissatisfied", [("deployed", 5, 1), ("national", 1, 5)])
def test_level_direction_is_configurable(direction, very_satisfied, very_dissatisfied):
    profile = upstream.Profile(area_code="361102", direction=direction)
    assert upstream.to_record(rating(), CASE, profile)["satisfaction"] == very_satisfied
    assert upstream.to_record(rating(level="very_dissatisfied"), CASE, profile)["satisfaction"] == very_dissatisfied


def test_bad_rating_carries_reasons_or_the_default_reason():
    profile = upstream.Profile(area_code="361102")
    with_reasons = rating(level="dissatisfied", reasons=["501", "505"])
    assert upstream.to_record(with_reasons, CASE, profile)["evalDetail"] == "501,505"
    assert upstream.to_record(rating(level="dissatisfied"), CASE, profile)["evalDetail"] == "599"
    assert "evalDetail" not in upstream.to_record(rating(level="basic"), CASE, profile)


def test_default_rating_uses_the_default_channel_and_flag():
    profile = upstream.Profile(area_code="361102", channel_codes={"device": "PJQ", "qr": "3", "default": "8"})
    record = upstream.to_record(rating(channel="default", level="satisfied", public=False), CASE, profile)
    assert (record["pf"], record["isDefault"], record["isPublic"]) == ("8", 1, 0)
    assert upstream.to_record(rating(), CASE, profile)["pf"] == "PJQ"


def test_rating_without_a_case_uses_the_window_registry():
    record = upstream.to_record(rating(dept_code="11361100MB1234567X", staff_no="N0321"), None,
                                upstream.Profile(area_code="361102001"))
    assert "projectNo" not in record
    assert (record["deptCode"], record["proManager"]) == ("11361100MB1234567X", "N0321")
    assert record["areaCode"] == "361102001"


def test_rating_without_department_is_refused():
    with pytest.raises(upstream.MappingError, match="deptCode"):
        upstream.to_record(rating(), None, upstream.Profile(area_code="361102"))


def test_assess_time_is_china_time():
    profile = upstream.Profile(area_code="361102")
    assert profile.assess_time(0) == "1970-01-01 08:00:00"


@pytest.mark.parametrize("settings,message", [
    ({"area_code": "3611"}, "area_code"),
    ({"area_code": "361102", "direction": "upside"}, "direction"),
    ({"area_code": "361102", "channel_codes": {"device": "5"}}, "channel_codes"),
    ({"area_code": "361102", "default_bad_reason": "777"}, "default_bad_reason"),
])
def test_bad_profile_is_refused_with_its_setting_named(settings, message):
    with pytest.raises(upstream.MappingError, match=message):
        upstream.Profile(**settings)


def test_eval_id_fits_the_upstream_limit():
    longest = upstream.eval_id("361102001", "D" * 32, "f" * 16)
    assert len(longest) <= 64
