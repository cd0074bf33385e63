"""One typed configuration layer: a pydantic model per table, filled from TOML and environment.

`[gateway]`, `[state]` and every `[adapters.<id>]` table (bundled adapters' `config.py`, and
an external plugin's `settings_type`) are `Settings` subclasses: one annotated field per key,
its default and a comment. `build()` is the only place a table is checked, so the five
hand-written validators that disagreed about environment strings are gone.

Typing rules, the same for the file and the environment:
- TOML values are validated strictly: `port = "80"` is an error, as TOML has types.
- `<PREFIX><KEY>` (e.g. `CHATSTATE_TEAMS_SENT_TTL_MS`) overrides the key. A string field takes
  the variable's text as it is; any other field reads it as a TOML value, so `5000` is the
  integer 5000, `false` the boolean false and `["@a:x"]` a list, exactly as in the file. A list
  of strings also takes a comma-separated value (`@a:x,@b:x`).
- Unknown keys are errors naming the key and the known ones.
- Messages carry the dotted key (and the variable, when the value came from one), never the
  value: pydantic is told to hide inputs, and no validator here quotes one.
"""

from __future__ import annotations

import re
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from chatstate.gateway.exits import ConfigError
from chatstate.state._files import env_path

ENV_PREFIX = "CHATSTATE_"
S = TypeVar("S", bound="Settings")


Mode = Literal["store", "legacy"]  # "legacy": the old in-memory maps (the "before"); the one definition


def _http_url(value: str) -> str:
    """A base URL an HTTP client can call, checked offline: `matrix.example.org` (no scheme) is
    refused by `--check-only` with the fix, not at the first request with the client's error."""
    url = value.strip()
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be a URL starting with https:// (or http://), e.g. https://matrix.example.org")
    return url.rstrip("/")


HttpUrl = Annotated[str, AfterValidator(_http_url)]  # a far end's base URL, without a trailing slash
Text = Annotated[str, Field(min_length=1, pattern=r"\S")]  # a required text: not empty, not blank


def token_kind(expected: str, kinds: Mapping[str, str]) -> AfterValidator:
    """Refuse a token whose first characters show another kind than the key takes (`kinds`: prefix
    -> what such a token is, e.g. Slack's `xapp-` app-level token pasted as the `xoxb-` bot
    token): offline, so `--check-only` names both kinds, and never the value."""

    def check(value: str) -> str:
        found = next((p for p in kinds if p != expected and value.lstrip().startswith(p)), None)
        if found is not None:
            raise ValueError(
                f"this is {kinds[found]} ({found}...), but the key takes {kinds[expected]} ({expected}...)"
            )
        return value

    return AfterValidator(check)


class Settings(BaseModel):
    """Base of every settings table: frozen, strict, unknown keys refused, inputs never echoed."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, hide_input_in_errors=True)
    path_keys: ClassVar[tuple[str, ...]] = ()  # keys naming a file or folder: an empty variable is unset


class AdapterSettings(Settings):
    """The keys every `[adapters.<id>]` table has; an adapter's own settings type extends it."""

    adapter_id: ClassVar[str] = ""  # names the table in messages when validated outside the gateway

    enabled: bool = True  # a bundled adapter runs only if its table exists and this is true
    mode: Mode = "store"  # "legacy": the old in-memory maps (the "before")
    # Your own bot logic, "module:function" (gateway/reply.py); none = the adapter's stand-in answer
    reply: str | None = None
    reply_timeout_s: Annotated[float, Field(gt=0)] = 10.0  # a hook still running then: an apology is sent

    @field_validator("reply")
    @classmethod
    def _import_string(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value):
            raise ValueError("must be 'module:function', e.g. \"mybot.logic:answer\"")
        return value

    @classmethod
    def from_table(cls, table: Mapping[str, Any], *, env: Mapping[str, str] | None = None) -> Self:
        """Validate a table as the gateway does (tests, tools). Raises ConfigError."""
        where = f"adapters.{cls.adapter_id}"
        return build(cls, table, where=where, env=env or {}, prefix=env_prefix(cls.adapter_id))

    @classmethod
    def of(cls, runtime: Any) -> Self:
        """`runtime.settings` as this type (the gateway validated it against `settings_type`).

        Raises TypeError when the plugin's `settings_type` is not this class.
        """
        return cls.of_settings(runtime.settings)

    def check(self) -> None:
        """Offline checks across fields that the field types cannot say (none by default);
        raise ValueError naming the key, never its value. `Plugin.check` runs it."""

    @classmethod
    def of_settings(cls, settings: AdapterSettings) -> Self:
        """`settings` as this type, for `Plugin.check`; raises TypeError if it is not one."""
        if not isinstance(settings, cls):
            raise TypeError(f"runtime.settings is {type(settings).__name__}, not {cls.__name__}")
        return settings


def env_prefix(table_id: str) -> str:
    """`CHATSTATE_SLACK_` for "slack"; characters other than A-Z and 0-9 become `_`."""
    return ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", table_id.upper()) + "_"


def env_var(prefix: str, key: str) -> str:
    return prefix + key.upper()


class CredentialRefused(Exception):
    """The platform refused a credential as the adapter started (Slack's auth.test, Discord's GET
    /users/@me, Matrix's whoami): names the key and variable to fix and the platform's reason, never
    the value."""

    def __init__(self, adapter_id: str, key: str, reason: str) -> None:
        fix = f"[adapters.{adapter_id}] {key} (or ${env_var(env_prefix(adapter_id), key)}, which wins)"
        super().__init__(f"the platform refused {key} ({reason}): fix {fix}")


def build(cls: type[S], table: Mapping[str, Any], *, where: str, env: Mapping[str, str], prefix: str) -> S:
    """Validate `table` (from TOML) with `<prefix><KEY>` variables from `env` applied on top.

    `where` is the dotted table name for messages ("gateway", "adapters.slack").
    Raises ConfigError naming the first offending key (and variable), never its value.
    """
    check_keys(cls, table, where=where)
    data = dict(table)
    from_env: dict[str, str] = {}
    for name, field in cls.model_fields.items():
        var = env_var(prefix, name)
        text = env_path(env, var) if name in cls.path_keys else env.get(var)
        if text is not None:
            data[name] = from_env_text(field.annotation, text)
            from_env[name] = var
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise _config_error(exc, where=where, from_env=from_env) from None


def check_keys(cls: type[Settings], table: Mapping[str, Any], *, where: str) -> None:
    """Raise ConfigError for the first key of `table` that `cls` does not declare."""
    known = list(cls.model_fields)
    for name in table:
        if name not in cls.model_fields:
            raise ConfigError(f"{where}.{name}" if where else name, f"unknown key; known keys: {', '.join(known)}")


def from_env_text(annotation: Any, text: str) -> Any:
    """Turn an environment variable's text into the value TOML would have given the field."""
    if _takes_str(annotation):
        return text
    stripped = text.strip()
    try:
        return tomllib.loads(f"v = {stripped}")["v"]
    except tomllib.TOMLDecodeError:
        if _is_str_list(annotation):
            return [part.strip() for part in stripped.split(",") if part.strip()]
        return text  # validation then says what type was expected


def describe(cls: type[Settings], *, prefix: str) -> list[tuple[str, str, str]]:
    """(key, environment variable, type) for every field: the documentation table's rows."""
    return [(name, env_var(prefix, name), _type_name(f.annotation)) for name, f in cls.model_fields.items()]


def _takes_str(annotation: Any) -> bool:
    try:
        TypeAdapter(annotation).validate_python("x", strict=True)
    except ValidationError:
        return _is_str_literal(annotation)
    return True


def _is_str_literal(annotation: Any) -> bool:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is Literal:
        return all(isinstance(a, str) for a in args)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_str_literal(a) or a is str for a in args)
    return False


def _is_str_list(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_str_list(a) for a in typing.get_args(annotation))
    return origin in (list, tuple) and str in typing.get_args(annotation)


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if typing.get_origin(annotation) is None else None
    return text or str(annotation).replace("typing.", "")


def _config_error(exc: ValidationError, *, where: str, from_env: Mapping[str, str]) -> ConfigError:
    err = exc.errors(include_input=False, include_url=False, include_context=False)[0]
    loc = [str(part) for part in err["loc"]]
    field = loc[0] if loc else ""
    key = ".".join([where, *loc] if where else loc) or where
    why = err["msg"]
    if err["type"] == "missing":
        why = f"required (or set {env_var(_prefix_of(where), field)})" if where else "required"
    elif err["type"] == "extra_forbidden":
        why = "unknown key"
    elif why in ("String should have at least 1 character", "String should match pattern '\\S'"):
        why = "must not be empty or blank"  # what the `\S` pattern of a required text means
    elif why.startswith("Value error, "):
        why = why[len("Value error, ") :]
        named = re.match(rf"^({re.escape(where)}\.\w+): (.*)$", why, re.S) if where else None
        if named:  # a model-level check that names its key itself
            key, why = named[1], named[2]
            field = key.rsplit(".", 1)[1]
    if field in from_env:
        why += f" (from ${from_env[field]})"
    return ConfigError(key, why)


def _prefix_of(where: str) -> str:
    return env_prefix(where.split(".", 1)[1] if where.startswith("adapters.") else where)
