"""bench/run_all.py (``make bench``) stops a script at its time limit even when it hangs without output."""

from __future__ import annotations

import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_run_all_kills_a_silent_hanging_script(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import run_all

    script = tmp_path / "hangs.py"
    # It prints once, then hangs silently, with a child process holding its output pipe.
    script.write_text("import subprocess, sys, time\nprint('started', flush=True)\n"
                      "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\ntime.sleep(60)\n")
    monkeypatch.setattr(run_all, "REPO", tmp_path)
    start = time.perf_counter()
    result = run_all.run_script(script, timeout=2)
    assert time.perf_counter() - start < 20
    assert result["rc"] != 0
    assert result["tail"][0] == "started" and "killed after 2 s" in result["tail"][-1]
