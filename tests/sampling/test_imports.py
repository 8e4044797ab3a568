"""fedstrat.sampling must not import torch or flwr."""

import subprocess
import sys


def test_no_torch_no_flwr():
    code = (
        "import sys, fedstrat.sampling\n"
        "bad = [m for m in ('torch', 'flwr') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
