"""Plugins: a researcher's own file (or module) that registers losses, advantage estimators, KL estimators,
aggregations, rewards or tools, imported before the config is parsed so that its names and settings sections are
valid choices everywhere (`--help-config` lists them).

    python train.py --config configs/demo.toml --plugin ~/research/kl_cov.py --algo.loss kl_cov
    torchrun --nproc_per_node 2 train.py --config configs/demo.toml --plugin ~/research/kl_cov.py ...
    plugins = ["~/research/kl_cov.py", "my_lab.rewards"]     # in a config file (paths relative to that file)

A plugin is a path ending in .py, or an importable module name. Each is imported once per process (a second
load of the same file is a no-op), and the run records the resolved list (absolute paths) as `plugins` in its
config.toml, so resume, eval.py, infer.py and every torchrun rank import the same files. A plugin that cannot be
found or fails while importing is one line naming it, the error and the plugin's own line that raised.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import tomllib
import traceback
from pathlib import Path

_LOADED: dict[str, str] = {}  # resolved spec -> module name in sys.modules


def resolve(spec: str, base_dir: Path | None = None) -> str:
    """A file spec as an absolute path (relative ones against `base_dir`, else the working directory; ~ expanded);
    a module name as is."""
    if not spec.endswith(".py"):
        return spec
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    return str(path.resolve())


def _where(exc: BaseException, path: str) -> str:
    """' (FILE:LINE)' of the innermost frame inside the plugin, if any."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == path]
    return f" ({path}:{frames[-1].lineno})" if frames else ""


def load(spec: str) -> str:
    """Import one resolved plugin spec (see `resolve`) once; returns its module name. ValueError on failure."""
    if spec in _LOADED:
        return _LOADED[spec]
    if spec.endswith(".py"):
        if not Path(spec).is_file():
            raise ValueError(f"plugin {spec}: no such file (give a path to a .py file or an importable module name)")
        name = f"plugin_{Path(spec).stem}_{hashlib.sha1(spec.encode()).hexdigest()[:8]}"
        module_spec = importlib.util.spec_from_file_location(name, spec)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            raise ValueError(f"plugin {spec} failed to import: {type(exc).__name__}: {exc}{_where(exc, spec)}") from None
    else:
        name = spec
        try:
            module = importlib.import_module(spec)
        except ModuleNotFoundError as exc:
            if exc.name and spec.startswith(exc.name):
                raise ValueError(f"plugin {spec}: no module named {exc.name!r} (give a path to a .py file, or put the "
                                 "module on PYTHONPATH)") from None
            raise ValueError(f"plugin {spec} failed to import: {exc}") from None
        except Exception as exc:
            raise ValueError(f"plugin {spec} failed to import: {type(exc).__name__}: {exc}"
                             f"{_where(exc, getattr(exc, 'filename', '') or '')}") from None
    _LOADED[spec] = name
    return name


def load_all(specs: list[str], base_dir: Path | None = None) -> list[str]:
    """Resolve and import every spec, in order; returns the resolved list (what the run records)."""
    resolved = []
    for spec in specs:
        full = resolve(spec, base_dir)
        load(full)
        if full not in resolved:
            resolved.append(full)
    return resolved


def listed_in(toml_text: str, source: str) -> list[str]:
    """The top-level `plugins = [...]` of a config file's text, read before the file is parsed as a config (its
    sections may name what the plugins register). Malformed TOML is left for the config parser to report."""
    try:
        value = tomllib.loads(toml_text).get("plugins", [])
    except tomllib.TOMLDecodeError:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{source}: plugins must be a list of paths or module names, got {value!r}")
    return value
