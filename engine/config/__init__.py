"""The config: one typed dataclass tree (settings.py), its TOML / command-line machinery (parsing.py).

    from engine.config import Config, build_config
    cfg = build_config(Config, toml_path="configs/demo.toml", overrides=["--rl.lr", "1e-5"])
"""

from engine.config.parsing import build_config
from engine.config.settings import Config

__all__ = ["Config", "build_config"]
