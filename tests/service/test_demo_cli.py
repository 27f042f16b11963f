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


def test_lethe_verify_audits_a_model_that_still_remembers(demo_model_dir, tmp_path):
    from workers.engine.qa import load_jsonl, write_jsonl

    rows = load_jsonl(demo_model_dir / "data" / "train.jsonl")
    person = rows[0]["subject"]
    forget = tmp_path / "forget.jsonl"
    write_jsonl(forget, [r for r in rows if r["subject"] == person])
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "verify",
            "--model",
            str(demo_model_dir),
            "--forget",
            str(forget),
            "--retain",
            str(demo_model_dir / "data" / "train.jsonl"),
            "--holdout",
            str(demo_model_dir / "data" / "holdout.jsonl"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 1, run.stderr[-2000:]  # the base model still knows the person
    verdict = json.loads(run.stdout[run.stdout.index("{") :])
    assert verdict["passed"] is False and verdict["reasons"]
