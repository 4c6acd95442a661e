"""What the vLLM lane's tests share (make test-vllm, under .venv-vllm): vLLM imported once, quietly, and every test
of the lane skipped with the reason and the command to run where it does not import (plain `make test`)."""

from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
try:
    import vllm  # noqa: F401
    NO_VLLM = ""
except Exception as e:  # ImportError, or a broken install
    NO_VLLM = (f"vLLM does not import in {sys.executable} ({type(e).__name__}: {e}); build its venv with "
               "`bash scripts/install_vllm.sh` and run `make test-vllm`")
needs_vllm = pytest.mark.skipif(bool(NO_VLLM), reason=NO_VLLM)
