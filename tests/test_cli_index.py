"""`syncengine index` as a user runs it: a real process, its output and exit codes."""

from __future__ import annotations

import shutil

from .conftest import CORPUS, FIXTURES, json_lines, needs_corpus, run_cli

TREE = FIXTURES / "mailboxes" / "alice"


def test_help_teaches_usage_and_exit_codes():
    result = run_cli("index", "--help")
    assert result.returncode == 0
    for text in ("--mailbox", "--json", "Exit codes", "some files failed", "Examples"):
        assert text in result.stdout


def test_json_lines_report_each_file_then_a_summary(tmp_path):
    result = run_cli("index", str(TREE), "--db", str(tmp_path / "s.db"), "--mailbox", "alice@acme.example", "--json")
    assert result.returncode == 0, result.stderr
    lines = json_lines(result.stdout)
    files, summary = lines[:-1], lines[-1]["summary"]
    assert len(files) == summary["files"] == 23
    assert all(set(f) >= {"path", "status", "messages", "errors"} for f in files)
    assert {f["status"] for f in files} == {"ok"} and summary["messages"] == 23


def test_human_summary_and_second_run_unchanged(tmp_path):
    args = ("index", str(TREE), "--db", str(tmp_path / "s.db"), "--mailbox", "alice@acme.example")
    first = run_cli(*args)
    assert first.returncode == 0 and "23 ok" in first.stdout
    second = run_cli(*args)
    assert second.returncode == 0 and "23 unchanged" in second.stdout


def test_bad_file_gets_one_line_naming_it_and_the_rest_is_indexed(tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(TREE, tree)
    broken = tree / "Inbox" / "broken.msg"
    broken.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 100)
    result = run_cli("index", str(tree), "--db", str(tmp_path / "s.db"), "--mailbox", "alice@acme.example")
    assert result.returncode == 3
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(broken) in errors[0]
    assert "Traceback" not in result.stderr
    assert "23 ok" in result.stdout and "1 failed" in result.stdout


def test_unusable_store_is_a_clear_error(tmp_path):
    not_a_db = tmp_path / "store.db"
    not_a_db.write_text("hello, I am not SQLite" * 100)
    result = run_cli("index", str(TREE), "--db", str(not_a_db), "--mailbox", "alice@acme.example")
    assert result.returncode == 1
    assert str(not_a_db) in result.stderr and "Traceback" not in result.stderr


@needs_corpus()
def test_corpus_bad_inputs_exit_3_with_a_line_each(tmp_path):
    bad = [CORPUS / "pst" / "pstreader__not-a-pst-file.txt", CORPUS / "pst" / "pstreader__truncated-in-header.bin",
           CORPUS / "msg" / "poi__unknown_properties.msg", CORPUS / "pst" / "go-pst__support.pst"]
    result = run_cli("index", *map(str, bad), "--db", str(tmp_path / "s.db"), "--mailbox", "u@x.example", "--json")
    assert result.returncode == 3
    lines = json_lines(result.stdout)
    assert {line["path"]: line["status"] for line in lines[:-1]} == dict(zip(map(str, bad), ["error"] * 3 + ["ok"], strict=True))
    assert lines[-1]["summary"]["messages"] == 17
    assert "Traceback" not in result.stderr
