"""The OpenAPI document of the case API, generated from its route table (gateway/api.py), and the schemas of
what callers send."""
from __future__ import annotations

import re

_TEXT = {"type": "string"}
CASE = {
    "type": "object",
    "required": ["project_no", "task_code", "task_name", "dept_code", "staff_no", "window_no"],
    "properties": {
        "project_no": {"type": "string", "maxLength": 50, "description": "办件编号, 1-50 of A-Z a-z 0-9 _ -"},
        "task_code": _TEXT, "task_name": _TEXT,
        "dept_code": {"type": "string", "minLength": 18, "maxLength": 18}, "dept_name": _TEXT,
        "staff_no": _TEXT, "window_no": _TEXT,
        "device": {"type": "string", "description": "the evaluator to prompt; default: the window's"},
        "user_prop": {"type": "integer", "enum": [1, 2]},
        "applicant_name": {"type": "string", "description": "shown masked on the evaluator (张*丰), never stored, "
                                                            "never logged"},
        "applicant_cert_no": {"type": "string", "description": "certificate number: accepted and dropped; never "
                                                               "stored, logged or shown"},
        "finished_at": {"type": "number", "description": "Unix seconds; default now"}}}
DEVICE = {"type": "object", "properties": {"window_no": _TEXT, "dept_code": _TEXT, "dept_name": _TEXT,
                                           "staff_no": _TEXT}}
CONFIG = {"type": "object", "description": "protocol kind config: staff, texts, timeouts, press policy, reasons "
                                           "(protocol/PROTOCOL.md)"}
STEP = {"type": "object", "required": ["step"], "properties": {
    "step": {"type": "string", "enum": ["visited", "appealed", "appeal_upheld", "appeal_rejected", "rectifying",
                                       "extended", "rectified"]},
    "handler": {"type": "string", "maxLength": 30, "description": "工号 or account of who took it; default: the "
                                                                  "key's name"},
    "visit_result": {"type": "integer", "enum": [1, 2], "description": "with visited: 1 reached, 2 not reached"},
    "content": {"type": "string", "maxLength": 500, "description": "grounds, reasons, measures or why more time"},
    "deadline": {"type": "string", "format": "date", "description": "with rectifying (default: 10 working days "
                                                                    "from the 差评) and extended"}}}
STANDARD_ERRORS = {"401": "no valid API key", "403": "the key lacks the role", "429": "over the key's rate"}


def document(routes) -> dict:
    """The OpenAPI 3 document of every API route (the citizens' pages are HTML and not part of it)."""
    paths: dict = {}
    for route in routes:
        if route.roles is None:
            continue
        operation = {"summary": route.summary, "x-roles": sorted(route.roles),
                     "parameters": [{"name": name, "in": "path", "required": True, "schema": _TEXT}
                                    for name in re.findall(r"{(\w+)}", route.path)]
                     + [{"name": name, "in": "query", "required": required, "schema": schema, "description": text}
                        for name, schema, required, text in route.query],
                     "responses": {"200": {"description": route.answer},
                                   **{code: {"description": text} for code, text in route.errors.items()},
                                   **{code: {"description": text} for code, text in STANDARD_ERRORS.items()}}}
        if route.body is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": route.body}}}
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {"openapi": "3.0.3", "info": {"title": "hcp-gateway case API", "version": "1"},
            "components": {"securitySchemes": {"key": {"type": "http", "scheme": "bearer"}}},
            "security": [{"key": []}], "paths": paths}
