"""Every gateway setting, declared once with its default and help; the sample config is generated from here.

A config file is TOML with one table per section: `[mqtt]`, `[store]`, ... Unknown or mistyped settings are
refused with a message that names them.
"""
from __future__ import annotations

import datetime as dt
import tomllib
from dataclasses import dataclass
from pathlib import Path


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which setting and why."""


@dataclass(frozen=True)
class Setting:
    name: str  # section.key
    default: object
    help: str
    kind: type | None = None  # when the default does not show the type (None defaults)

    @property
    def type(self) -> type:
        return self.kind or type(self.default)


SETTINGS = [
    Setting("gateway.hall", "hall-1", "This hall's id in MQTT topics (1-32 of A-Z a-z 0-9 _ -)."),
    Setting("gateway.name", "gw", "Origin name of ratings this gateway makes itself (QR page, default ratings)."),
    Setting("mqtt.host", "127.0.0.1", "Broker host."),
    Setting("mqtt.port", 1883, "Broker port."),
    Setting("mqtt.client_id", "hcp-gateway", "Fixed client id: the broker keeps this persistent session, and "
            "queues ratings for it while the gateway is down."),
    Setting("mqtt.username", "", "Broker user name (empty: anonymous)."),
    Setting("mqtt.password", "", "Broker password."),
    Setting("mqtt.keepalive_s", 30, "MQTT keepalive in seconds."),
    Setting("mqtt.tls_ca", "", "CA certificate (PEM) to verify the broker with over TLS, e.g. the hall CA's ca.crt "
            "(hcp-gateway ca-init). Empty: plain MQTT."),
    Setting("mqtt.registered_only", True, "Refuse (and record) messages from devices not in the registry or revoked."),
    Setting("broker.password_file", "", "Mosquitto password_file the gateway writes from the registry: an account "
            "per device and one for the gateway (mqtt.username). Empty: the gateway does not manage accounts."),
    Setting("broker.acl_file", "", "Mosquitto acl_file the gateway writes beside it: each device its own topics."),
    Setting("broker.pid_file", "", "File holding the broker's process id, signalled (SIGHUP) to reload accounts."),
    Setting("store.path", "gateway.db", "The SQLite database file."),
    Setting("store.batch_max", 500, "Most messages stored in one transaction (group commit)."),
    Setting("store.batch_wait_ms", 5, "Longest wait to fill a group commit once a message is waiting."),
    Setting("store.retention_years", 3, "Years ratings, their cases and 差评 follow-ups are kept (the monthly 通报 "
            "and the yearly 考核 count them); after that forwarded ones are pruned."),
    Setting("store.retention_days", 90, "Days operational rows are kept: forward attempts, refused messages, rating "
            "links of cases no longer open."),
    Setting("store.quota_mb", 2048, "Database size at which the gateway stops acknowledging ratings, so they wait "
            "at the broker and on the devices instead of being dropped."),
    Setting("store.alarm_percent", 80, "Database size, in percent of the quota, that raises the storage alarm."),
    Setting("upstream.url", "", "Base URL of the provincial 好差评 interface (empty: do not forward)."),
    Setting("upstream.app_key", "", "Application key issued by the province (X-App-Key)."),
    Setting("upstream.app_secret", "", "Application secret for the HMAC signature; never logged."),
    Setting("upstream.area_code", "361100", "行政区划 of the hall, 6 or 9 digits."),
    Setting("upstream.data_source", "", "Submitting system's code (dataSource); empty: the area code."),
    Setting("upstream.direction", "deployed",
            "Satisfaction codes: deployed (5 = 非常满意) or national (1 = 非常满意)."),
    Setting("upstream.pf_device", "5", "Channel code (pf) of a press on a hall evaluator."),
    Setting("upstream.pf_qr", "3", "Channel code (pf) of a rating made by scanning a QR code."),
    Setting("upstream.pf_default", "7", "Channel code (pf) of a system default rating."),
    Setting("upstream.default_bad_reason", "599", "evalDetail sent with a 差评 that came without reasons."),
    Setting("upstream.batch_size", 500, "Most records in one submission (the interface takes 1-500)."),
    Setting("upstream.timeout_s", 10.0, "HTTP timeout of one submission."),
    Setting("upstream.backoff_base_s", 1.0, "First retry delay after a failure; doubles each time (full jitter)."),
    Setting("upstream.backoff_max_s", 300.0, "Longest retry delay."),
    Setting("cases.rating_window_days", 5, "Working days after 办结 in which a citizen may rate (policy art. 8)."),
    Setting("cases.default_level", "satisfied", "Level of the default rating issued when the window closes."),
    Setting("cases.followup_days", 10, "Working days to rectify a 差评 (policy art. 13)."),
    Setting("cases.visit_days", 1, "Working days to call the citizen back (回访) after a 差评."),
    Setting("cases.warn_percent", 80, "A work order's deadline is warned of (超期预警) when this share of its time "
            "is gone, and again when it has passed."),
    Setting("cases.webhook_url", "", "Duty manager's webhook, POSTed on every 差评 (empty: none)."),
    Setting("calendar.extra_years", [], "Years the chinese-calendar package has no data for yet, to be counted "
            "as weekdays plus the holidays and workdays below.", list),
    Setting("calendar.holidays", [], "Extra statutory holidays, as dates (YYYY-MM-DD).", list),
    Setting("calendar.workdays", [], "Extra make-up workdays (调休上班), as dates.", list),
    Setting("api.host", "127.0.0.1", "Address of the case API and the citizens' rating pages."),
    Setting("api.port", 8781, "Port of the case API and the rating pages (0: any free port)."),
    Setting("api.public_url", "http://127.0.0.1:8781", "Base URL phones reach the rating pages at; QR codes "
            "on the evaluators point there."),
    Setting("api.keys", [], "Who may call /api (Authorization: Bearer KEY): entries NAME:ROLE[+ROLE]:SHA256 with "
            "roles window, technician, manager, auditor; `hcp-gateway hash-key KEY --name erp --role window` "
            "prints one. The keys themselves are never stored.", list),
    Setting("api.rate_per_minute", 600, "API calls one key may make a minute (bursts of as many); more get 429."),
    Setting("api.page_rate_per_minute", 60, "Rating-page requests one client address may make a minute; more get "
            "429."),
    Setting("api.window_ratings_per_hour", 30, "Ratings one window's standing QR takes an hour (besides one per "
            "phone per day); more are refused with a page that says so."),
    Setting("cases.prompt_s", 30, "Seconds an evaluator accepts a press for a prompted case."),
    Setting("http.host", "127.0.0.1", "Address of /healthz and /metrics."),
    Setting("http.port", 8780, "Port of /healthz and /metrics (0: any free port)."),
    Setting("http.request_timeout_s", 10, "Seconds a connection to either HTTP port may stay silent (in its "
            "request, or between requests) before it is closed."),
    Setting("http.max_connections", 4000, "Connections both HTTP ports hold open at once, each; more wait to be "
            "accepted. Each is a file descriptor: keep the process's limit (LimitNOFILE) above twice this."),
    Setting("log.level", "INFO", "Log level: DEBUG, INFO, WARNING, ERROR."),
    Setting("clock.offset_s", 0.0, "Run this many seconds ahead of the system clock, so simulated days can pass "
            "(hcp-sim); keep 0 in a hall."),
]
BY_NAME = {s.name: s for s in SETTINGS}


Config = dict  # settings by dotted name, every one present after load()


def load(path: Path | None = None, overrides: dict | None = None) -> Config:
    """Read a TOML config (or none), apply overrides, check every value; raise ConfigError on any problem."""
    values = {}
    if path is not None:
        try:
            document = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
        for section, table in document.items():
            if not isinstance(table, dict):
                raise ConfigError(f"{section}: settings belong in sections, e.g. [mqtt] host = ...")
            for key, value in table.items():
                values[f"{section}.{key}"] = value
    values.update(overrides or {})
    config = Config()
    for name, value in values.items():
        if name not in BY_NAME:
            raise ConfigError(f"unknown setting {name}; see `hcp-gateway sample-config` for the list")
        config[name] = _check(BY_NAME[name], value)
    for setting in SETTINGS:
        config.setdefault(setting.name, setting.default)
    _check_combinations(config)
    return config


def _check(setting: Setting, value):
    want = setting.type
    if want is float and type(value) is int:
        value = float(value)
    if type(value) is not want:
        raise ConfigError(f"{setting.name} must be {want.__name__}, got {value!r}")
    return value


def _check_combinations(config: Config) -> None:
    from gateway import access
    from protocol import codec, upstream

    for entry in config["api.keys"]:
        try:
            access.parse_entry(entry)
        except (ValueError, AttributeError) as e:
            raise ConfigError(str(e)) from None
    if config["broker.password_file"] and not (config["broker.acl_file"] and config["mqtt.username"]
                                               and config["mqtt.password"]):
        raise ConfigError("broker.password_file needs broker.acl_file, and mqtt.username and mqtt.password for the "
                          "gateway's own account")
    if config["mqtt.tls_ca"] and not Path(config["mqtt.tls_ca"]).is_file():
        raise ConfigError(f"mqtt.tls_ca: no CA certificate at {config['mqtt.tls_ca']}")
    for name in ("api.rate_per_minute", "api.page_rate_per_minute", "api.window_ratings_per_hour",
                 "http.request_timeout_s", "http.max_connections", "store.retention_years"):
        if config[name] < 1:
            raise ConfigError(f"{name} must be at least 1")

    if codec.HALL(config["gateway.hall"]):
        raise ConfigError(f"gateway.hall {config['gateway.hall']!r}: 1-32 of A-Z a-z 0-9 _ -")
    if config["cases.default_level"] not in codec.LEVELS:
        raise ConfigError(f"cases.default_level must be one of {', '.join(codec.LEVELS)}")
    if not 1 <= config["store.batch_max"] <= 2000:  # one INSERT per batch: 14 parameters a rating
        raise ConfigError("store.batch_max must be 1..2000")
    if not 1 <= config["upstream.batch_size"] <= 500:
        raise ConfigError("upstream.batch_size must be 1..500")
    if config["upstream.url"] and not (config["upstream.app_key"] and config["upstream.app_secret"]):
        raise ConfigError("upstream.url is set: upstream.app_key and upstream.app_secret are needed too")
    for name in ("calendar.holidays", "calendar.workdays"):
        for item in config[name]:
            try:
                dt.date.fromisoformat(str(item))
            except ValueError:
                raise ConfigError(f"{name}: {item!r} is not a date YYYY-MM-DD") from None
    try:
        upstream_profile(config)
    except upstream.MappingError as e:
        raise ConfigError(f"upstream: {e}") from None


def upstream_profile(config: Config):
    from protocol import upstream

    return upstream.Profile(
        area_code=config["upstream.area_code"], data_source=config["upstream.data_source"],
        direction=config["upstream.direction"],
        channel_codes={"device": config["upstream.pf_device"], "qr": config["upstream.pf_qr"],
                       "default": config["upstream.pf_default"]},
        default_bad_reason=config["upstream.default_bad_reason"])


def sample() -> str:
    """A commented config with every setting at its default."""
    header = ["# hcp-gateway configuration. Every setting is shown with its default; delete what you keep as is.",
              "# Generated by `hcp-gateway sample-config`."]
    return _render(header, [(s.name, s.default, s.help) for s in SETTINGS])


def dump(values: dict) -> str:
    """A config file holding `values` (dotted names), for tools and tests that write one."""
    return _render([], [(name, value, None) for name, value in values.items()])


def _render(header: list[str], items) -> str:
    sections: dict[str, list] = {}  # in order of first appearance
    for name, value, help_text in items:
        head, key = name.split(".", 1)
        sections.setdefault(head, []).append((key, value, help_text))
    lines = list(header)
    for head, entries in sections.items():
        lines += ["", f"[{head}]"]
        for key, value, help_text in entries:
            if help_text:
                lines.append(f"# {help_text}")
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)
