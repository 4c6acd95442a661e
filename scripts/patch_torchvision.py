"""Make PyPI's CUDA torchvision import beside CPU torch (docs/PLATFORM.md), for scripts/install_vllm.sh and
scripts/install_openclip.sh: its unguarded `@torch.library.register_fake("torchvision::…")` decorators raise
`operator torchvision::nms does not exist` at import time, so each becomes conditional on
`torchvision.extension._has_ops()`. Idempotent. Run with the venv's python:

    VENV/bin/python scripts/patch_torchvision.py NAME     # NAME prefixes the printed lines
"""

import importlib.util
import pathlib
import re
import sys

MARK = "# patched by scripts/patch_torchvision.py"
OLD_MARKS = ("# patched by scripts/install_vllm.sh", "# patched by scripts/install_openclip.sh")  # earlier venvs
UNGUARDED = re.compile(r'^@torch\.library\.register_fake\(("torchvision::[a-z_0-9]+")\)$', re.M)
GUARD = ("\n\n" + MARK + ": a CUDA torchvision beside CPU torch has no torchvision::* operators, and\n"
         "# register_fake on a missing operator raises at import time (docs/PLATFORM.md).\n"
         "def _register_fake_if_ops(name):\n"
         "    import torchvision.extension\n"
         "    if torchvision.extension._has_ops():\n"
         "        return torch.library.register_fake(name)\n"
         "    return lambda fn: fn\n")


def main(name: str) -> None:
    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        print(f"{name}: torchvision is not installed: nothing to fix")
        return
    path = pathlib.Path(spec.origin).parent / "_meta_registrations.py"
    src = path.read_text()
    if MARK in src or any(m in src for m in OLD_MARKS):
        print(f"{name}: torchvision fix already applied ({path})")
        return
    hits = UNGUARDED.findall(src)
    if not hits:
        print(f"{name}: torchvision fix not needed (no unguarded register_fake in {path})")
        return
    src = UNGUARDED.sub(r"@_register_fake_if_ops(\1)", src)
    first = src.index("@_register_fake_if_ops(")  # the helper goes before the first decorator that uses it
    path.write_text(src[:first].rstrip("\n") + GUARD + "\n\n" + src[first:])
    print(f"{name}: torchvision fix applied to {len(hits)} register_fake decorator(s): {', '.join(hits)}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "patch_torchvision")
