"""One config for every command (issue 23): found as notmuch and mbsync find theirs,
overridden in a documented order, paths taken as the user meant them, and clients
that say at once when no engine serves the store. Real processes throughout."""

from __future__ import annotations

import json
import os
from pathlib import Path

from syncengine import store

from .conftest import FIXTURES, run_cli
from .processes import Proc

ALICE = "alice@acme.example"
DEMO = FIXTURES / "scenarios" / "demo"


def _home(tmp_path: Path) -> dict:
    """A user whose config and data folders are empty: what platformdirs finds on Linux."""
    return {"XDG_CONFIG_HOME": str(tmp_path / "xdg-config"), "XDG_DATA_HOME": str(tmp_path / "xdg-data")}


def _shown(*args: str, env: dict | None = None, cwd: Path | None = None) -> dict:
    return json.loads(run_cli(*args, "config", "--json", env=env, cwd=cwd, check=True).stdout)


def _write_config(path: Path, db: str, exports: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'db = "{db}"\n[[mailbox]]\naddress = "{ALICE}"\nexports = {json.dumps(exports)}\n')
    return path


def test_init_without_config_writes_the_default_config_and_every_command_then_reads_it(tmp_path):
    env = _home(tmp_path)
    made = run_cli("init", "--mailbox", ALICE, "--export", str(DEMO / "mailbox" / "alice"), env=env, check=True)
    config = tmp_path / "xdg-config" / "syncengine" / "syncengine.toml"
    assert config.exists() and f"wrote {config}" in made.stdout
    shown = _shown(env=env)
    assert shown["file"] == str(config) and shown["from"] == "default"
    # the store is data, not config: it goes in the user's data folder
    assert shown["values"]["db"] == {"value": str(tmp_path / "xdg-data" / "syncengine" / "store.db"), "from": "file"}
    indexed = run_cli("index", env=env, cwd=tmp_path)  # no paths, no --db, no --mailbox: the config's
    assert indexed.returncode == 0, indexed.stderr
    assert f"for {ALICE}: 2 ok" in indexed.stdout
    run_cli("snapshot", "add", str(DEMO / "snapshots" / "alice-0859"), env=env, check=True)
    started = run_cli("event", "start", "outage", env=env, check=True)  # every mailbox of the config
    assert "reconcile wrote 2 deltas" in started.stdout
    assert len(run_cli("deltas", "--json", env=env, check=True).stdout.splitlines()) == 2
    status = json.loads(run_cli("status", "--json", env=env, check=True).stdout)
    assert status["events"][0]["mailboxes"] == [ALICE]


def test_config_precedence_is_option_then_environment_then_default_and_db_beats_them_all(tmp_path):
    env = _home(tmp_path)
    default = _write_config(tmp_path / "xdg-config" / "syncengine" / "syncengine.toml", "default.db", [])
    from_env = _write_config(tmp_path / "env" / "env.toml", "env.db", [])
    named = _write_config(tmp_path / "named" / "named.toml", "named.db", [])
    assert _shown(env=env)["file"] == str(default)
    with_env = {**env, "SYNCENGINE_CONFIG": str(from_env)}
    shown = _shown(env=with_env)
    assert shown["from"] == "$SYNCENGINE_CONFIG" and shown["values"]["db"]["value"] == str(tmp_path / "env" / "env.db")
    assert _shown("--config", str(named), env=with_env)["values"]["db"]["value"] == str(tmp_path / "named" / "named.db")
    # --db beats every config: the named config's store does not exist, the given one does
    store.connect(tmp_path / "given.db").conn.close()
    missing = run_cli("--config", str(named), "deltas", env=with_env)
    assert missing.returncode == 1 and f"{tmp_path / 'named' / 'named.db'}: no such store" in missing.stderr
    given = run_cli("--config", str(named), "deltas", "--db", str(tmp_path / "given.db"), env=with_env)
    assert given.returncode == 0, given.stderr
    # a subcommand's own --config (kept for scripts) beats the root's
    status = run_cli("--config", str(named), "status", "--config", str(from_env), env=env)
    assert f"{tmp_path / 'env' / 'env.db'}: no such store" in status.stderr


def test_without_a_config_or_db_a_command_says_where_it_looked(tmp_path):
    env = _home(tmp_path)
    result = run_cli("deltas", env=env)
    assert result.returncode == 2 and "which store? Give --db FILE" in result.stderr
    assert str(tmp_path / "xdg-config" / "syncengine" / "syncengine.toml") in result.stderr
    named = run_cli("--config", str(tmp_path / "nope.toml"), "deltas", env=env)
    assert named.returncode == 2 and f"{tmp_path / 'nope.toml'}: cannot read" in named.stderr
    shown = run_cli("config", env=env)
    assert shown.returncode == 1 and "syncengine init" in shown.stderr


def test_init_writes_each_path_so_that_it_resolves_to_the_file_the_user_meant(tmp_path):
    """Typed relative to the folder the user is in; written relative to the config when
    under it, else absolute; read back from any other folder as the same files."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    (work / "exports").mkdir(parents=True)
    elsewhere.mkdir()
    pst = work / "exports" / "alice.pst"
    pst.write_bytes(b"")
    archive = tmp_path / "archive" / "old.pst"
    archive.parent.mkdir()
    archive.write_bytes(b"")
    made = run_cli("init", "--config", "conf/syncengine.toml", "--mailbox", ALICE, "--export", "exports/alice.pst",
                   "--export", "../archive/old.pst", "--export", "exports/not-yet.pst", cwd=work, check=True)
    assert "not-yet.pst does not exist (yet)" in made.stderr
    text = (work / "conf" / "syncengine.toml").read_text()
    assert f'exports = ["{pst}", "{archive}", "{work / "exports" / "not-yet.pst"}"]' in text
    shown = _shown("--config", str(work / "conf" / "syncengine.toml"), cwd=elsewhere)
    assert shown["mailboxes"][ALICE]["exports"] == [{"path": str(pst), "exists": True},
                                                    {"path": str(archive), "exists": True},
                                                    {"path": str(work / "exports" / "not-yet.pst"), "exists": False}]
    assert shown["values"]["db"]["value"] == str(work / "conf" / "store.db")
    # an export under the config's folder is written relative to it, and so moves with it
    inside = run_cli("init", "--config", "syncengine.toml", "--export", "mail", cwd=work, check=True)
    assert inside.returncode == 0 and 'exports = ["mail"]' in (work / "syncengine.toml").read_text()


def test_listen_and_apply_refuse_a_missing_store_at_once(tmp_path):
    missing = tmp_path / "typo.db"
    for args in (("listen", "--mailbox", ALICE), ("apply", "--mailbox", ALICE, "--mailbox-dir", str(tmp_path / "m"))):
        result = run_cli(*args, "--db", str(missing))
        assert result.returncode == 1 and f"{missing}: no such store" in result.stderr, result.stderr
    assert not missing.exists()


def test_listen_and_apply_say_within_seconds_that_no_daemon_serves_the_store_and_keep_trying(tmp_path):
    db = tmp_path / "store.db"
    store.connect(db).conn.close()
    listener = Proc("listen", "--db", str(db), "--mailbox", ALICE)
    applier = Proc("apply", "--db", str(db), "--mailbox", ALICE, "--mailbox-dir", str(tmp_path / "mail"))
    server = None
    try:
        for proc in (listener, applier):
            proc.wait_for(lambda p: any("no daemon serves the store" in line for line in p.err), timeout=15,
                          what="the no-daemon notice")
            notice = next(line for line in proc.err if "no daemon serves the store" in line)
            assert str(db) in notice and "router.ipc" in notice and "still trying" in notice
            assert proc.popen.poll() is None  # it keeps trying
        server = Proc("serve", "--db", str(db))
        for proc in (listener, applier):
            proc.wait_for(lambda p: any("answers now" in line for line in p.err), timeout=20,
                          what="the engine to be found")
    finally:
        for proc in (listener, applier, server):
            if proc is not None:
                proc.stop()


def test_apply_once_with_no_engine_answering_fails_naming_the_store(tmp_path):
    db = tmp_path / "store.db"
    store.connect(db).conn.close()
    result = run_cli("apply", "--once", "--db", str(db), "--mailbox", ALICE, "--mailbox-dir", str(tmp_path / "m"))
    assert result.returncode == 1 and f"no daemon serves the store {db}" in result.stderr


def test_c19_a_mistyped_export_fixed_in_the_config_no_longer_holds_the_mailbox_waiting(tmp_path):
    """The way out of a wrong path is said where the user looks (event start, status),
    and fixing the config is enough for the daemon: a path that never read holds no mail."""
    (tmp_path / "snapshots").mkdir()
    config = tmp_path / "syncengine.toml"
    config.write_text(f'db = "store.db"\npoll_interval = 1\n[[mailbox]]\naddress = "{ALICE}"\n'
                      f'exports = ["mailbx"]\n')  # the typo
    db = tmp_path / "store.db"
    daemon = Proc("--config", str(config), "daemon")
    try:
        daemon.wait_for(lambda p: any("daemon started" in line for line in p.err), what="the daemon's start")
        started = run_cli("--config", str(config), "event", "start", "outage", check=True)
        assert "reconcile wrote 0 deltas" in started.stdout
        assert f"syncengine forget {tmp_path / 'mailbx'}" in started.stderr
        status = json.loads(run_cli("--config", str(config), "status", "--json", check=True).stdout)
        assert [w["export"] for w in status["waiting"]] == [str(tmp_path / "mailbx")]
        os.symlink(DEMO / "mailbox" / "alice", tmp_path / "mailbox")
        config.write_text(config.read_text().replace('"mailbx"', '"mailbox"'))
        daemon.wait_for(lambda p: any("no longer waits for it" in line for line in p.err), timeout=30,
                        what="the daemon to drop the never-read path")
        daemon.wait_for(lambda p: any(f"index of {ALICE}" in line for line in p.err), timeout=60,
                        what="the fixed export to read")
        status = json.loads(run_cli("--config", str(config), "status", "--json", check=True).stdout)
        assert status["waiting"] == []
    finally:
        assert daemon.stop() == 0
    assert db.exists()
