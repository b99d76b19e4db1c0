"""Output folders: only folders Pruning Lab wrote are replaced, in one atomic step, and an
unwritable or forbidden `--out` is refused before any work starts (docs/RELIABILITY.md, kind 1)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from pruning_core import fsio
from pruning_core.errors import UserError
from pruning_core.fsio import (
    OUTPUT_MARKER,
    added_since_written,
    check_output_dir,
    clean_stale,
    is_tool_output,
    output_dir,
)

PRUNE = (
    "prune", "--model", "digits-mlp", "--dataset", "digits", "--method", "magnitude",
    "--granularity", "unstructured", "--ratio", "0.5", "--quiet",
)  # fmt: skip


def _user_folder(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# Folders a user may own that happen to look like outputs (or not at all).
USER_FOLDERS = [
    {"metrics.json": '{"acc": 0.9}', "THESIS.txt": "months of work"},
    {"model.json": "{}", "model.safetensors": "not really", "notes.md": "mine"},
    {"src/train.py": "print(1)"},
    {".DS_Store": "x"},
    {OUTPUT_MARKER: "I wrote this marker myself", "data.csv": "1,2"},
    {OUTPUT_MARKER + "x": "near miss", "metrics.json": "{}"},
]


@pytest.mark.parametrize("files", USER_FOLDERS)
def test_a_users_folder_is_never_replaced(files: dict[str, str], tmp_path: Path) -> None:
    folder = _user_folder(tmp_path / "mine", files)
    before = _snapshot(folder)
    with pytest.raises(UserError, match="not written by pruning-lab"):
        check_output_dir(folder)
    with pytest.raises(UserError, match="not written by pruning-lab"), output_dir(folder) as tmp:
        (tmp / "new.txt").write_text("new")
    assert _snapshot(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary left


def test_a_marker_folder_instead_of_a_file_is_not_a_marker(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    (folder / OUTPUT_MARKER).mkdir(parents=True)
    assert not is_tool_output(folder)
    with pytest.raises(UserError):
        check_output_dir(folder)


def test_own_output_is_replaced_whole_and_empty_folder_accepted(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()  # empty: accepted
    with output_dir(target) as tmp:
        (tmp / "a.txt").write_text("first")
    assert is_tool_output(target) and (target / "a.txt").read_text() == "first"
    with output_dir(target) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == [OUTPUT_MARKER, "b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_symlink_and_file_targets_are_refused(tmp_path: Path) -> None:
    real = _user_folder(tmp_path / "real", {"x.txt": "x"})
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(UserError, match="symbolic link"):
        check_output_dir(link)
    (tmp_path / "file").write_text("data")
    with pytest.raises(UserError, match="not a directory"):
        check_output_dir(tmp_path / "file")
    with pytest.raises(UserError, match="is a file"):
        check_output_dir(tmp_path / "file" / "sub")


@pytest.mark.parametrize("where", ["/proc/pruning-lab-out", "/proc/self/x/y", "/sys/pl-out"])
def test_unwritable_places_are_refused(where: str) -> None:
    with pytest.raises(UserError, match=r"cannot be written|is a file"):
        check_output_dir(Path(where))


def test_read_only_folder_is_refused(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK) and os.geteuid() == 0:
            # root writes anywhere: a read-only bind is not available here, /proc covers it
            pytest.skip("running as root: permission bits do not stop writes")
        with pytest.raises(UserError, match="cannot be written"):
            check_output_dir(ro / "out")
    finally:
        ro.chmod(0o700)


def test_without_exchange_the_fallback_keeps_old_output_recoverable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where renameat2 is missing, a kill between the two renames leaves the old folder under a
    temporary name; the next write puts it back before anything else."""
    monkeypatch.setattr(fsio, "_renameat2", lambda *a: False)
    target = tmp_path / "out"
    with output_dir(target) as tmp:
        (tmp / "v.txt").write_text("old")
    # Simulate the kill: the old folder renamed aside by a process that no longer exists.
    dead_pid = 2**22 + 12345  # above pid_max's default: no such process
    aside = tmp_path / f".out.pl-old-{dead_pid}-abc"
    os.rename(target, aside)
    assert not target.exists()
    restored = clean_stale(tmp_path, "out")
    assert restored == [aside] and (target / "v.txt").read_text() == "old"
    with output_dir(target) as tmp:
        (tmp / "v.txt").write_text("new")
    assert (target / "v.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_stale_temporaries_of_dead_processes_are_removed_live_ones_kept(tmp_path: Path) -> None:
    dead = 2**22 + 54321
    (tmp_path / f".out.pl-tmp-{dead}-x1").mkdir()
    (tmp_path / f".out.pl-tmp-{dead}-x1" / "half.safetensors").write_bytes(b"\0" * 10)
    (tmp_path / f".metrics.json.pl-tmp-{dead}-y2").write_text("{")
    live = tmp_path / f".out.pl-tmp-{os.getpid()}-z3"
    live.mkdir()
    (tmp_path / ".out.something-else").mkdir()  # not ours: untouched
    removed = clean_stale(tmp_path)
    assert {p.name for p in removed} == {
        f".out.pl-tmp-{dead}-x1",
        f".metrics.json.pl-tmp-{dead}-y2",
    }
    assert live.exists() and (tmp_path / ".out.something-else").exists()


def _no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any model or dataset load fail loudly: refusals must come before them."""

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("work started before the refusal")

    for target in (
        "pruning_core.cli.prune.resolve",
        "pruning_core.cli.basic.load_dataset",
        "pruning_core.cli.basic.load_model",
        "pruning_core.cli.export._load",
    ):
        monkeypatch.setattr(target, boom)


@pytest.mark.parametrize("command", ["prune", "train", "export"])
def test_cli_refuses_a_users_out_before_any_work(
    command: str, cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    _no_loading(monkeypatch)
    folder = _user_folder(tmp_path / "project", {"metrics.json": "{}", "keep.txt": "keep"})
    before = _snapshot(folder)
    args = {
        "prune": [*PRUNE, "--finetune-epochs", "1", "--out", str(folder)],
        "train": ["train", "--model", "digits-mlp", "--dataset", "digits", "--out", str(folder)],
        "export": [
            "export", "--pruned", str(tmp_path), "--format", "checkpoint", "--out", str(folder)
        ],
    }[command]  # fmt: skip
    code, out, err = cli(*args)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert "not written by pruning-lab" in err and str(folder) in err
    assert _snapshot(folder) == before


@pytest.mark.parametrize("out", ["/proc/pruning-lab-out", "/proc/self/status/x"])
@pytest.mark.parametrize("command", ["prune", "train"])
def test_cli_refuses_unwritable_out_before_any_work(
    command: str, out: str, cli, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    _no_loading(monkeypatch)
    args = (
        [*PRUNE]
        if command == "prune"
        else ["train", "--model", "digits-mlp", "--dataset", "digits"]
    )
    code, _, err = cli(*args, "--out", out)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--out" in err, err


def test_cli_replaces_its_own_output_and_keeps_nothing_else(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "run"
    assert cli(*PRUNE, "--out", str(out))[0] == 0
    first = (out / "metrics.json").read_text()
    assert is_tool_output(out)
    code, _, err = cli(*PRUNE[:-2], "0.7", "--quiet", "--out", str(out))
    assert code == 0, err
    assert (out / "metrics.json").read_text() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_store_artifact_folders_use_the_same_rule(tmp_path: Path) -> None:
    from pruning_core.store import RunStore

    store = RunStore(tmp_path / "home")
    run = store.create_run("prune", name="x")
    target = store.run_dir(run) / "model"
    _user_folder(target, {"precious.txt": "mine"})
    with pytest.raises(UserError), store.artifact_dir(run, "model") as tmp:
        (tmp / "m.txt").write_text("x")
    assert (target / "precious.txt").read_text() == "mine"


def test_work_added_to_an_output_folder_is_never_replaced(tmp_path: Path) -> None:
    # A folder pruning-lab wrote, then used: notes beside the run, a subfolder, an edited file.
    target = tmp_path / "out"
    with output_dir(target) as tmp:
        (tmp / "model.json").write_text("{}")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.txt").write_text("a")
    assert added_since_written(target) == []
    for add in ("my-notes.txt", "mysub/f.txt", "sub/b.txt"):
        path = target / add
        path.parent.mkdir(exist_ok=True)
        path.write_text("mine")
        before = _snapshot(target)
        with pytest.raises(UserError, match="added or changed since") as e:
            check_output_dir(target)
        assert add.split("/")[0] in str(e.value) and "\n" not in str(e.value)
        with pytest.raises(UserError), output_dir(target) as tmp:
            (tmp / "new.txt").write_text("new")
        assert _snapshot(target) == before  # nothing of it touched
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
        shutil.rmtree(target)
        with output_dir(target) as tmp:
            (tmp / "model.json").write_text("{}")
            (tmp / "sub").mkdir()
            (tmp / "sub" / "a.txt").write_text("a")
    # An edited file of the run is someone's work too.
    time.sleep(0.01)
    (target / "model.json").write_text('{"edited": true}')
    assert added_since_written(target) == ["model.json"]


def test_a_folder_from_an_older_marker_is_checked_by_time(tmp_path: Path) -> None:
    # Markers written before they listed names: what changed after the marker is someone's.
    target = tmp_path / "old"
    target.mkdir()
    (target / "metrics.json").write_text("{}")
    time.sleep(0.01)
    (target / OUTPUT_MARKER).write_text(
        json.dumps({"v": 1, "what": "output folder, replaced on request",
                    "written_by": "pruning-lab"}, sort_keys=True) + "\n"
    )  # fmt: skip
    assert is_tool_output(target) and added_since_written(target) == []
    check_output_dir(target)
    time.sleep(0.01)
    (target / "notes.txt").write_text("mine")
    assert added_since_written(target) == ["notes.txt"]


def test_prune_never_writes_over_the_model_it_reads(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "run"
    code, _, err = cli(*PRUNE, "--out", str(out))
    assert code == 0, err
    before = _snapshot(out)
    args = [a if a != "digits-mlp" else str(out) for a in PRUNE]
    code, stdout, err = cli(*args, "--out", str(out))
    assert code == 2 and stdout == "" and "is where the model" in err and err.count("\n") == 1
    assert _snapshot(out) == before
