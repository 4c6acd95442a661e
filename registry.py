"""Registries: the one way a component (a loss, an advantage estimator, a KL estimator, a reward, a tool) gets a
name that a config can choose. Built-ins and a researcher's plugin register the same way:

    from engine.config.registries import LOSSES

    @LOSSES.register("kl_cov", settings=KLCovSettings, needs=("old_logp",))
    def kl_cov(x, cfg): ...

    LOSSES["kl_cov"]             # the function
    LOSSES.entry("kl_cov")       # Entry: name, fn, settings (a dataclass or None), traits, where it came from
    LOSSES.names()               # sorted names: what help texts, "choose one of" errors and tests read

A registry knows the modules that hold its built-ins and imports them on first use, so a registry can be made
(and read by the config) below the floor where its built-ins live. Registering a name twice (another function under
a name already taken) is an error naming both places.
A component's settings are a dataclass whose fields are made with `doc` (a default, its help text, a range):
engine/config/parsing.py reads them as the config section `[algo.<name>]` / `[reward.<name>]`.
This file stands on nothing of ours: data/, models/, tools/, rewards/ and engine/ all may use it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, is_dataclass
from typing import Any, Callable, Iterator


def doc(default, help: str, **bounds):
    """A config field with its documentation (every field has one; tests check) and, for a number, its range:
    `doc(1e-5, "Learning rate.", gt=0)`, `doc(0.9, "AdamW beta1.", ge=0, lt=1)`. Every float must be finite
    (nan and inf are refused) unless `finite=False`; bounds are checked when the config is parsed, None passes."""
    unknown = set(bounds) - {"gt", "ge", "lt", "le", "finite"}
    if unknown:
        raise TypeError(f"doc(): unknown bound(s) {sorted(unknown)}; use gt, ge, lt, le, finite")
    metadata = {"help": help, "bounds": bounds}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Entry:
    name: str
    fn: Callable
    settings: type | None = None  # the component's own settings dataclass: a config section of its own
    traits: dict[str, Any] = field(default_factory=dict)  # what the kind declares (a loss: needs, token_local, ...)
    origin: str = ""  # the module that registered it (a plugin's file shows here)


class Registry:
    """Names → entries of one kind of component (see the module docstring)."""

    def __init__(self, kind: str, setting: str, *, builtins: tuple[str, ...] = (), traits: dict[str, Any] = None):
        self.kind = kind  # "loss": how errors name an entry
        self.setting = setting  # "algo.loss": the config key that chooses one (for messages)
        self._builtins = builtins  # modules whose import registers the built-ins
        # every trait this kind knows, with its default; `check(section)` is every kind's: called at parse time when
        # the entry is selected, it raises ValueError when the rest of its config section makes it unable to work
        self._defaults = {"check": None, **(traits or {})}
        self._entries: dict[str, Entry] = {}
        self._loaded = not builtins

    def register(self, name: str, *, settings: type | None = None, **traits) -> Callable[[Callable], Callable]:
        """Decorator: `@REGISTRY.register("name", settings=Dataclass, trait=value)`; returns the function as is."""
        unknown = sorted(set(traits) - set(self._defaults))
        if unknown:
            raise TypeError(f"{self.kind} {name!r}: unknown trait(s) {', '.join(unknown)}; a {self.kind} declares "
                            f"{', '.join(sorted(self._defaults)) or 'none'}")
        if settings is not None and not (isinstance(settings, type) and is_dataclass(settings)):
            raise TypeError(f"{self.kind} {name!r}: settings must be a dataclass type, got {settings!r}")

        def add(fn: Callable) -> Callable:
            origin = getattr(fn, "__module__", "") or ""
            if name in self._entries and self._entries[name].fn is not fn:
                raise ValueError(f"{self.kind} {name!r} is registered twice ({self._entries[name].origin} and "
                                 f"{origin}); pick another name")
            self._entries[name] = Entry(name, fn, settings, {**self._defaults, **traits}, origin)
            return fn

        return add

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self._builtins:
                importlib.import_module(module)

    def entry(self, name: str) -> Entry:
        self._load()
        if name not in self._entries:
            raise ValueError(self.unknown(name))
        return self._entries[name]

    def unknown(self, name: Any, setting: str | None = None) -> str:
        """The one-line error for a name that is not registered."""
        return f"{setting or self.setting} = {name!r} is unknown; choose one of {', '.join(self.names())}"

    def __getitem__(self, name: str) -> Callable:
        return self.entry(name).fn

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._entries)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def builtin_modules(self) -> tuple[str, ...]:
        """The modules whose import registers the built-ins (an entry from elsewhere is a plugin's)."""
        return self._builtins

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that register a throwaway component clean up with it)."""
        self._entries.pop(name, None)

    def with_settings(self) -> list[Entry]:
        """The entries that own a settings section."""
        return [e for e in self.entries() if e.settings is not None]
