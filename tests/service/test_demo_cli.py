"""The front door: `lethe demo --json` on the embedded default, then the certificate it
prints checked offline with `lethe certificate verify`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys


def test_demo_json_erases_one_person_and_prints_a_valid_certificate(demo_model_dir, tmp_path):
    data_dir = tmp_path / "data"
    # the demo builds its model when absent; a prebuilt tiny one keeps the test short
    shutil.copytree(demo_model_dir, data_dir / "models" / "demo-tiny")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    env["LETHE_DATA_DIR"] = str(data_dir)
    run = subprocess.run(
        [sys.executable, "-m", "app.cli", "demo", "--size", "tiny", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert result["status"] == "completed", result.get("error")
    assert result["certificate"]["passed"] is True
    assert result["forget_accuracy_before"] >= 0.9
    assert result["forget_accuracy_after"] <= result["holdout_accuracy"] + 0.1
    assert result["retain_accuracy_after"] >= 0.9 * result["retain_accuracy_before"]
    assert (data_dir / "lethe.sqlite3").exists()  # embedded: a SQLite file, no servers

    saved = tmp_path / "demo.json"
    saved.write_text(run.stdout)
    check = subprocess.run(
        [sys.executable, "-m", "app.cli", "certificate", "verify", str(saved)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0 and "valid" in check.stdout
    tampered = json.loads(run.stdout)
    tampered["certificate"]["document"] = tampered["certificate"]["document"].replace(
        '"passed":true', '"passed":false', 1
    )
    saved.write_text(json.dumps(tampered))
    check = subprocess.run(
        [sys.executable, "-m", "app.cli", "certificate", "verify", str(saved)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 1
