#!/usr/bin/env python3
"""Check that mvt (`mvt-ios check-backup`) really parses an UNENCRYPTED iOS backup.

Usage (with the mvt venv from scripts/pyenv.sh):
    target/py/mvt/bin/python tests/py/mvt_check.py BACKUP_DIR [RESULTS_DIR]
RESULTS_DIR (optional) keeps mvt's output files; by default a temp dir is used
and removed.

mvt's exit code is not trusted: it exits 0 even when it refuses a backup
(e.g. "The backup appears to be encrypted" is only a CRITICAL log line). So
this script reads what mvt wrote: manifest.json (one entry per Manifest.db
Files row), backup_info.json (from Info.plist), applications.json (from
Info.plist "Applications"; absent when 0), and command.log (its full log).
Stdout gets one JSON object:
    {"manifest_records": N, "by_flags": {"1": files, "2": dirs, "4": symlinks},
     "missing_blobs": M,      # mvt's "Found M files ... missing from the backup folder"
     "apps": A,               # len(applications.json)
     "installed_apps": I,     # len(backup_info "Installed Applications")
     "backup_info": {...}, "errors": [ERROR lines of command.log],
     "mvt_exit": rc, "ok": bool}
Exit 0 only if mvt exited 0, logged no CRITICAL line, and manifest_records > 0;
otherwise 2 (reason on stderr). 1 for usage/internal errors.
mvt is run fully offline: update/IOC checks disabled, MVT_NETWORK_ACCESS_ALLOWED
=false, and its config/data folders redirected to a temp dir (nothing in ~).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile


def mvt_env(tmp):
    env = dict(os.environ)
    env.pop("MVT_IOS_BACKUP_PASSWORD", None)
    env.update({
        "MVT_CONFIG_FOLDER": os.path.join(tmp, "mvt-config"),
        "MVT_DATA_FOLDER": os.path.join(tmp, "mvt-data"),
        "MVT_NETWORK_ACCESS_ALLOWED": "false",
        "COLUMNS": "200",
        "PYTHONIOENCODING": "utf-8",
    })
    return env


def mvt_cmd(*args):
    """Run the venv's own mvt-ios (offline flags first)."""
    exe = os.path.join(os.path.dirname(sys.executable), "mvt-ios")
    base = [exe] if os.access(exe, os.X_OK) else [sys.executable, "-c",
                                                    "from mvt.ios.cli import cli; cli()"]
    return base + ["--disable-update-check", "--disable-indicator-update-check", *args]


def load_json(path, default):
    if not os.path.isfile(path):
        return default
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def check(backup, results, tmp):
    proc = subprocess.run(mvt_cmd("check-backup", "-o", results, backup),
                          env=mvt_env(tmp), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=600)
    console = proc.stdout.decode("utf-8", "replace")
    log_path = os.path.join(results, "command.log")
    log = open(log_path, encoding="utf-8", errors="replace").read() if os.path.isfile(log_path) else ""
    manifest = load_json(os.path.join(results, "manifest.json"), [])
    info = load_json(os.path.join(results, "backup_info.json"), {})
    apps = load_json(os.path.join(results, "applications.json"), [])
    by_flags = {}
    for rec in manifest:
        k = str(rec.get("flags"))
        by_flags[k] = by_flags.get(k, 0) + 1
    m = re.search(r"Found (\d+) files listed in the manifest but missing", log)
    criticals = re.findall(r"^.* - (?:CRITICAL|FATAL) - .*$", log, re.M)
    if not log and proc.returncode == 0:
        criticals.append("mvt wrote no command.log")
    summary = {
        "manifest_records": len(manifest),
        "by_flags": by_flags,
        "missing_blobs": int(m.group(1)) if m else 0,
        "apps": len(apps),
        "installed_apps": len(info.get("Installed Applications") or []),
        "backup_info": info,
        "errors": re.findall(r"^.* - ERROR - .*$", log, re.M),
        "criticals": criticals,
        "mvt_exit": proc.returncode,
    }
    reasons = []
    if proc.returncode != 0:
        reasons.append(f"mvt-ios exited {proc.returncode}")
    if criticals:
        reasons.append("mvt logged CRITICAL: " + " | ".join(criticals))
    if not manifest:
        reasons.append("mvt parsed 0 Manifest.db records (no/empty manifest.json)")
    summary["ok"] = not reasons
    return summary, reasons, console


def main():
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 1
    backup = os.path.abspath(sys.argv[1])
    tmp = tempfile.mkdtemp(prefix="keybag-mvt-check-")
    try:
        if len(sys.argv) == 3:
            results = os.path.abspath(sys.argv[2])
        else:
            results = os.path.join(tmp, "results")
        summary, reasons, console = check(backup, results, tmp)
    except Exception as e:  # noqa: BLE001
        print(f"mvt_check: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(summary, indent=1, sort_keys=True, ensure_ascii=False))
    if reasons:
        sys.stderr.write(console[-4000:])
        for r in reasons:
            print(f"mvt_check: FAIL: {r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
