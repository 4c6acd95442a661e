"""Generic machinery for a config tree of (nested) dataclasses: TOML presets, dotted CLI overrides, help text.

    cfg = build_config(Config, toml_path="configs/demo.toml", overrides=["--rollout.group_size", "8", "--seed=1"])
    (run_dir / "config.toml").write_text(to_toml(cfg))       # the resolved tree, help as comments
    assert from_toml_str(Config, to_toml(cfg)) == cfg        # exact round trip
    print(describe(Config))                                   # every dotted key, type, default and help

Layers: defaults in code → the TOML file → CLI flags (`--section.key value`, `--section.key=value`, `--key value`
for top-level fields; `-` in a flag name reads as `_`). Then `validate()` runs on every dataclass in the tree that
defines it, children before parents. A TOML or CLI value replaces a dict setting whole (no merging).
A root class may define `MOVED: ClassVar[dict[str, str]] = {"old.key": "new.key"}`: a renamed key then fails
with a message naming its new place, not "unknown key".
A section may define `COMPONENTS: ClassVar[dict[str, Registry]]` (registry.py): the field that selects, and the
registry it selects from. Every registered entry with a settings dataclass is then a section of its own under it
(`[algo.gspo]`, `--algo.gspo.clip_high 4e-4`), documented by `describe`; the selected ones' settings live in the
section's `components` dict (defaults when not set), and a section set for an unselected one is an error.
Numbers may declare a range (`doc(1e-5, "...", gt=0)`); every float must be finite unless `finite=False`.

Fields: `field(default=..., metadata={"help": "..."})`; `undocumented_fields(cls)` lists settings without help
(section fields, i.e. nested dataclasses, are groupings and need none). Supported annotations (strings are
resolved with typing.get_type_hints): int, float, bool, str, Literal[...], `X | None`, list[int|float|str|bool],
dict[str, int|float|str|bool], and nested dataclasses (TOML tables). Anything else is a TypeError.

Strings on the CLI are parsed by the field's type: bool takes true/false/1/0/yes/no; lists take `1,2,3` or JSON;
dicts take `a=1,b=2` or JSON; `none`/`null` means None for `X | None` fields.
TOML has no null, so None is written as the string "none", and for an `X | None` field the TOML strings "none"
and "null" read as None (a `str | None` field therefore cannot hold the text "none"; to_toml raises if it does).
Every user error is a ValueError naming the file/table/key or the flag, the expected type and the value.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from registry import doc  # noqa: F401  (re-exported: config fields are made with it)

_NONE_WORDS = ("none", "null")
_BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_SCALARS = (int, float, str, bool)
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


# ----------------------------------------------------------------------------------------------- fields
_BOUNDS = {"gt": (">", lambda v, b: v > b), "ge": (">=", lambda v, b: v >= b), "lt": ("<", lambda v, b: v < b),
           "le": ("<=", lambda v, b: v <= b)}  # registry.doc's bound names: (shown as, holds)


def _range_text(bounds: dict) -> str:
    return " and ".join(f"{_BOUNDS[k][0]} {v:g}" for k, v in bounds.items() if k in _BOUNDS)


def _check_bounds(key: str, tp: Any, value: Any, bounds: dict) -> None:
    """ValueError when a number is outside its field's declared range, or a float is nan / inf."""
    inner, _ = _split_optional(tp)
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if inner is float and bounds.get("finite", True) and not math.isfinite(value):
        raise ValueError(f"{key} = {value!r}: must be a finite number")
    failed = [k for k, b in bounds.items() if k in _BOUNDS and not _BOUNDS[k][1](value, b)]
    if failed:
        raise ValueError(f"{key} = {value!r} is out of range: must be {_range_text(bounds)}")


# ----------------------------------------------------------------------------------------------- type helpers
def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _split_optional(tp: Any) -> tuple[Any, bool]:
    """`X | None` → (X, True); anything else → (tp, False)."""
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(args) < len(get_args(tp)):
            return args[0], True
    return tp, False


def _supported(tp: Any) -> bool:
    inner, _ = _split_optional(tp)
    origin, args = get_origin(inner), get_args(inner)
    if inner in _SCALARS or (origin is Literal and all(isinstance(a, _SCALARS) for a in args)):
        return True
    if origin is list:
        return len(args) == 1 and args[0] in _SCALARS
    if origin is dict:
        return len(args) == 2 and args[0] is str and args[1] in _SCALARS
    return _is_section(tp)  # a section may not be optional


def _type_name(tp: Any) -> str:
    inner, optional = _split_optional(tp)
    origin, args = get_origin(inner), get_args(inner)
    if origin is Literal:
        name = "one of " + ", ".join(repr(a) for a in args)
    elif origin in (list, dict):
        name = f"{origin.__name__}[{', '.join(a.__name__ for a in args)}]"
    else:
        name = inner.__name__
    return f"{name} | None" if optional else name


@functools.cache
def _fields(cls: type) -> tuple[tuple[str, Any, dataclasses.Field], ...]:
    """(name, resolved type, Field) for every init field of a dataclass; TypeError on unsupported types."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name == STORE:
            continue
        if not _supported(hints[f.name]):
            raise TypeError(f"{cls.__name__}.{f.name}: config type {hints[f.name]!r} is not supported")
        out.append((f.name, hints[f.name], f))
    return tuple(out)


STORE = "components"  # the field of a section with COMPONENTS that holds the selected components' settings


def _component_fields(cls: type) -> list[tuple[str, type, dataclasses.Field]]:
    """A section class may declare `COMPONENTS = {"loss": LOSSES, ...}`: each registered entry with a settings
    dataclass is then a section of its own, `[algo.<name>]`, read from the registry at every call (plugins register
    late). Its values live in the section's `components` dict, for the selected components only."""
    out, owner = [], {}
    for selector, registry in getattr(cls, "COMPONENTS", {}).items():
        for entry in registry.with_settings():
            if entry.name in owner:
                raise ValueError(f"{cls.__name__}: a {owner[entry.name]} and a {registry.kind} are both named "
                                 f"{entry.name!r} and own settings; register one under another name")
            owner[entry.name] = registry.kind
            help_text = (f"Settings of the {registry.kind} {entry.name!r} ({entry.origin}): used when {selector} "
                         "selects it; a section for an unselected one is an error.")
            out.append((entry.name, entry.settings, dataclasses.field(metadata={"help": help_text, "owner": selector})))
    return out


def _all_fields(cls: type) -> tuple:
    """`_fields` plus the registered components' sections (see `_component_fields`)."""
    return _fields(cls) + tuple(_component_fields(cls))


# ----------------------------------------------------------------------------------------------- value parsing
def _check_value(tp: Any, v: Any, where: str) -> Any:
    """Check a TOML/JSON value against `tp` and return it (ints widen to float; "none" → None if optional)."""
    inner, optional = _split_optional(tp)
    if optional and (v is None or (isinstance(v, str) and v.lower() in _NONE_WORDS)):
        return None
    origin, args = get_origin(inner), get_args(inner)
    bad = ValueError(f"{where}: expected {_type_name(tp)}, got {'a table' if isinstance(v, dict) else repr(v)}")
    if origin is Literal:
        if not any(type(v) is type(a) and v == a for a in args):
            raise bad
        return v
    if origin is list:
        if not isinstance(v, list):
            raise bad
        return [_check_value(args[0], x, f"{where}[{i}]") for i, x in enumerate(v)]
    if origin is dict:
        if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
            raise bad
        return {k: _check_value(args[1], x, f"{where}.{k}") for k, x in v.items()}
    if inner is float and isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    if type(v) is not inner:  # exact: bool is not an int here, 1.5 is not an int
        raise bad
    return v


def _parse_scalar(tp: Any, s: str, where: str) -> Any:
    bad = ValueError(f"{where}: expected {_type_name(tp)}, got {s!r}")
    if tp is bool:
        if s.strip().lower() not in _BOOL_WORDS:
            raise bad
        return _BOOL_WORDS[s.strip().lower()]
    if tp is str:
        return s
    try:
        return tp(s.strip())
    except ValueError:
        raise bad from None


def _parse_str(tp: Any, s: str, where: str) -> Any:
    """Parse a CLI string by the field's type."""
    inner, optional = _split_optional(tp)
    if optional and s.strip().lower() in _NONE_WORDS:
        return None
    origin, args = get_origin(inner), get_args(inner)
    if origin is Literal:
        match = [a for a in args if str(a) == s.strip()]
        if not match:
            raise ValueError(f"{where}: expected {_type_name(tp)}, got {s!r}")
        return match[0]
    if origin in (list, dict) and s.strip()[:1] in ("[", "{"):
        try:
            return _check_value(inner, json.loads(s), where)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: invalid JSON for {_type_name(tp)}: {e}") from None
    items = [x.strip() for x in s.split(",")] if s.strip() else []
    if origin is list:
        return [_parse_scalar(args[0], x, f"{where}[{i}]") for i, x in enumerate(items)]
    if origin is dict:
        out = {}
        for item in items:
            key, eq, val = item.partition("=")
            if not eq or not key.strip():
                raise ValueError(f"{where}: expected {_type_name(tp)} as k=v,k=v or JSON, got {s!r}")
            out[key.strip()] = _parse_scalar(args[1], val, f"{where}.{key.strip()}")
        return out
    return _parse_scalar(inner, s, where)


# ----------------------------------------------------------------------------------------------- building
def _unknown(what: str, key: str, known: list[str], quote: str, fallback: str) -> ValueError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {quote}{close[0]}{quote}?" if close else fallback
    return ValueError(f"{what} {quote}{key}{quote}; {hint}")


def _moved(moved: dict[str, str], key: str, where: str) -> None:
    """A key the tree renamed: say where it lives now (the root class's `MOVED = {old: new}`; a new place may hold
    a placeholder such as `algo.<loss>.clip_low`, said as is)."""
    if key in moved:
        new = moved[key]
        raise ValueError(f"{where}{key} moved to {new}: write {new} instead "
                         f"(TOML: `{new.rpartition('.')[2]} = ...` under [{new.rpartition('.')[0]}])")


def _toml_updates(cls: type, table: dict, source: str, path: str = "", moved: dict[str, str] = {}) -> dict:
    """Check a parsed TOML table against `cls`; return {field: value or nested updates}."""
    loc = f"{source}: [{path or 'top level'}]"
    by_name = {name: tp for name, tp, _ in _all_fields(cls)}
    updates = {}
    for key, v in table.items():
        if key not in by_name:
            _moved(moved, f"{path}.{key}" if path else key, f"{source}: ")
            raise _unknown(f"{loc} unknown key", key, list(by_name), "'", "known: " + ", ".join(by_name))
        tp = by_name[key]
        if _is_section(tp):
            if not isinstance(v, dict):
                raise ValueError(f"{loc} {key} is a section: expected a table [{path + '.' if path else ''}{key}], got {v!r}")
            updates[key] = _toml_updates(tp, v, source, f"{path}.{key}" if path else key, moved)
        else:
            updates[key] = _check_value(tp, v, f"{loc} {key}")
    return updates


def _walk(cls: type, prefix: str = ""):
    """Yield (dotted key, type, Field) for every field of the tree, sections before their fields."""
    for name, tp, f in _all_fields(cls):
        yield prefix + name, tp, f
        if _is_section(tp):
            yield from _walk(tp, f"{prefix}{name}.")


def _cli_updates(cls: type, overrides: list[str], moved: dict[str, str] = {}) -> dict:
    keys, updates, i = {k: tp for k, tp, _ in _walk(cls)}, {}, 0
    while i < len(overrides):
        flag = overrides[i]
        if not flag.startswith("--") or len(flag) == 2:
            raise ValueError(f"unexpected argument {flag!r}: overrides look like --section.key value")
        name, eq, value = flag[2:].partition("=")
        if not eq:
            if i + 1 >= len(overrides) or overrides[i + 1].startswith("--"):
                raise ValueError(f"flag --{name} needs a value (--{name} VALUE or --{name}=VALUE)")
            value, i = overrides[i + 1], i + 1
        i += 1
        key = name.replace("-", "_")
        if key not in keys:
            _moved(moved, key, "--")
            raise _unknown("unknown flag", "--" + name, ["--" + k for k in keys], "", "see --help-config")
        if _is_section(keys[key]):
            raise ValueError(f"--{name} is a section, not a setting: set its fields, e.g. --{name}.<key> VALUE")
        node = updates
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = _parse_str(keys[key], value, f"--{name}")
    return updates


def _apply(obj: Any, updates: dict) -> Any:
    """dataclasses.replace, recursively (works for frozen dataclasses too); a component's section goes into the
    section's `components` dict, over its current settings or its defaults."""
    kinds = {name: tp for name, tp, _ in _component_fields(type(obj))}
    changes, own = {}, {}
    for k, v in updates.items():
        if k in kinds:
            own[k] = _apply(getattr(obj, STORE).get(k) or kinds[k](), v)
        elif dataclasses.is_dataclass(getattr(obj, k)):
            changes[k] = _apply(getattr(obj, k), v)
        else:
            changes[k] = v
    if own:
        changes[STORE] = {**getattr(obj, STORE), **own}
    return dataclasses.replace(obj, **changes)


def _selected(value: Any) -> set:
    """The names a selecting field picks: a name, a list of names or a dict keyed by names."""
    return set() if value is None else {value} if isinstance(value, str) else set(value)


def _complete(obj: Any, file_updates: dict, flag_updates: dict, notes: list[str], path: str = "") -> Any:
    """Every selected component that owns settings gets them (its defaults unless set). A section for a component
    that is not selected is an error when it was set at or after the layer that made the selection (one file, or
    the flags); a section the flags' new selection leaves behind (a preset's `[algo.ppo_clip]` under `--algo.loss
    gspo`), or one inherited from a base config, is dropped and said in `notes`."""
    changes = {name: _complete(getattr(obj, name), file_updates.get(name, {}), flag_updates.get(name, {}), notes,
                               f"{path}{name}.")
               for name, tp, _ in _fields(type(obj)) if _is_section(tp)}
    fields = _component_fields(type(obj))
    if fields:
        kept = {}
        for name, settings_cls, f in fields:
            selector = f.metadata["owner"]
            chosen = getattr(obj, selector)
            if name in _selected(chosen):
                kept[name] = getattr(obj, STORE).get(name) or settings_cls()
                continue
            what = f"does not name {name!r}" if isinstance(chosen, (list, dict)) else f"is {chosen!r}"
            if name in flag_updates or (name in file_updates and selector not in flag_updates):
                raise ValueError(f"[{path}{name}] is set but {path}{selector} {what}: a component's settings apply "
                                 "only when it is selected; select it, or drop its settings")
            if name in file_updates:
                notes.append(f"[{path}{name}] from the config file is not used: {path}{selector} {what} (flags)")
        changes[STORE] = kept
    return dataclasses.replace(obj, **changes)


def _validate(obj: Any, path: str = "") -> None:
    for name, tp, f in _fields(type(obj)):
        if _is_section(tp):
            _validate(getattr(obj, name), f"{path}{name}.")
        else:
            _check_bounds(path + name, tp, getattr(obj, name), f.metadata.get("bounds", {}))
    for name, settings in sorted(getattr(obj, STORE, {}).items()):
        _validate(settings, f"{path}{name}.")
    if hasattr(obj, "validate"):
        obj.validate()  # its ValueError names the key (the tree's convention), so it passes through as is


def build_config(cls: type, *, toml_path: str | Path | None = None, overrides: list[str] = (),
                 toml_text: str | None = None, base: Any = None, validate: bool = True,
                 notes: list[str] | None = None) -> Any:
    """Defaults in code (or `base`, e.g. a run's own resolved config), then the TOML file (or `toml_text`), then CLI
    overrides; then validate(). `notes` receives one line per setting of the file that the flags made unused."""
    cfg, source = (cls() if base is None else base), "<string>"
    if toml_path is not None:
        if toml_text is not None:
            raise ValueError("build_config: pass toml_path or toml_text, not both")
        if not Path(toml_path).is_file():
            raise ValueError(f"config file not found: {toml_path}")
        source, toml_text = str(toml_path), Path(toml_path).read_text(encoding="utf-8")
    if toml_text is not None:
        try:
            table = tomllib.loads(toml_text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{source}: invalid TOML: {e}") from None
        file_updates = _toml_updates(cls, table, source, moved=getattr(cls, "MOVED", {}))
        cfg = _apply(cfg, file_updates)
    else:
        file_updates = {}
    flag_updates = _cli_updates(cls, list(overrides), getattr(cls, "MOVED", {}))
    cfg = _complete(_apply(cfg, flag_updates), file_updates, flag_updates, [] if notes is None else notes)
    if validate:
        _validate(cfg)
    return cfg


def differences(a: Any, b: Any) -> list[tuple[str, Any, Any]]:
    """(dotted key, value in a, value in b) for every setting where two configs of one tree differ, in tree order;
    a component's setting that only one of them has (another loss selected) shows None on the other side."""
    flat_a, flat_b = to_dict(a), to_dict(b)
    keys = list(flat_a) + [k for k in flat_b if k not in flat_a]
    return [(k, flat_a.get(k), flat_b.get(k)) for k in keys if flat_a.get(k) != flat_b.get(k)]


def from_toml_str(cls: type, text: str, *, validate: bool = True) -> Any:
    """Inverse of to_toml: defaults overlaid with `text`."""
    return build_config(cls, toml_text=text, validate=validate)


# ----------------------------------------------------------------------------------------------- output
def _toml_str(s: str) -> str:
    esc = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
    body = "".join(esc.get(c) or (f"\\u{ord(c):04X}" if ord(c) < 0x20 or ord(c) == 0x7F else c) for c in s)
    return f'"{body}"'


def _toml_key(k: str) -> str:
    return k if _BARE_KEY.match(k) else _toml_str(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):  # repr is valid TOML for finite floats (1e-05, 1e+20, -0.0)
        return "nan" if math.isnan(v) else repr(v) if math.isfinite(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}" if v else "{}"
    raise TypeError(f"cannot write {v!r} to TOML")


def _field_value(tp: Any, v: Any, key: str) -> Any:
    inner, optional = _split_optional(tp)
    if v is None:
        if not optional:
            raise ValueError(f"{key} is None but its type {_type_name(tp)} does not allow None")
        return "none"
    if optional and isinstance(v, str) and v.lower() in _NONE_WORDS:
        raise ValueError(f"{key} = {v!r} would read back as None; use another value")
    return float(v) if inner is float and isinstance(v, int) and not isinstance(v, bool) else v


def _toml_table(obj: Any, path: str, lines: list[str]) -> None:
    if path:
        lines += ["", f"[{path}]"]
    sections = []
    for name, tp, f in _fields(type(obj)):
        if _is_section(tp):
            sections.append(name)
            continue
        for h in f.metadata.get("help", "").splitlines():
            lines.append(f"# {h}")
        value = _field_value(tp, getattr(obj, name), f"{path}.{name}" if path else name)
        lines.append(f"{name} = {_toml_value(value)}")
    for name in sections:
        _toml_table(getattr(obj, name), f"{path}.{name}" if path else name, lines)
    for name, settings in sorted(getattr(obj, STORE, {}).items()):  # the selected components' own sections
        _toml_table(settings, f"{path}.{name}" if path else name, lines)


def to_toml(cfg: Any) -> str:
    """The whole tree as TOML: top-level settings, then one [table] per section; help text as comments."""
    lines: list[str] = []
    _toml_table(cfg, "", lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def to_dict(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Flat {"section.key": value} for logging; one entry per setting (lists and dicts are kept whole)."""
    out = {}
    for name, tp, _ in _fields(type(cfg)):
        v = getattr(cfg, name)
        out.update(to_dict(v, f"{prefix}{name}.") if _is_section(tp) else {prefix + name: v})
    for name, settings in sorted(getattr(cfg, STORE, {}).items()):
        out.update(to_dict(settings, f"{prefix}{name}."))
    return out


def describe(cls: type) -> str:
    """Every dotted key with its type, default (as TOML), range and help, and for a field that selects registered
    components every registered name (a plugin's with where it came from), for `train.py --help-config`."""
    lines: list[str] = []

    def visit(c: type, prefix: str) -> None:
        for name, tp, f in _all_fields(c):
            key, help_text = prefix + name, f.metadata.get("help", "")
            if _is_section(tp):
                lines.extend(["", f"[{key}]" + (f"  {help_text}" if help_text else "")])
                visit(tp, key + ".")
                continue
            default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            shown = "(required)" if default is dataclasses.MISSING else _toml_value(_field_value(tp, default, key))
            limits = _range_text(f.metadata.get("bounds", {}))
            lines.append(f"  --{key}: {_type_name(tp)} = {shown}" + (f"  ({limits})" if limits else ""))
            lines.extend(f"      {h}" for h in (help_text or "(undocumented)").splitlines())
            registry = getattr(c, "COMPONENTS", {}).get(name)
            if registry is not None:
                names = [e.name + ("" if e.origin in registry.builtin_modules() else f" (from {e.origin})")
                         for e in registry.entries()]
                lines.append(f"      choices: {', '.join(names)}")

    visit(cls, "")
    return "\n".join(lines).lstrip("\n") + "\n"


def undocumented_fields(cls: type) -> list[str]:
    """Dotted keys of settings without a non-empty metadata["help"] (sections are groupings: exempt)."""
    return [key for key, tp, f in _walk(cls) if not _is_section(tp) and not str(f.metadata.get("help", "")).strip()]
