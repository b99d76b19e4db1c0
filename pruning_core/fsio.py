"""Writing files and folders so that nothing is half-written and nothing of the user's is lost.

A leaf module (standard library only), used by every part of Pruning Lab that writes to disk.

- `atomic_path(target)`: a file is written beside its target and renamed onto it, so a reader
  sees the old file or the complete new one.
- `output_dir(target)`: a folder is built beside its target and swapped into place in one
  atomic step (Linux `renameat2(RENAME_EXCHANGE)`), so there is no moment where neither the old
  nor the new folder exists. An existing folder is replaced only when Pruning Lab wrote it,
  recognised by the marker file `OUTPUT_MARKER` (written last, listing the folder's names), and
  nothing was added or changed in it since (`added_since_written`: a user's notes beside a run
  are theirs); any other non-empty folder is refused, before any work starts when the caller
  uses `check_output_dir` up front.
- Temporary names carry the writer's process id (`.NAME.pl-tmp-PID-XXXX`), so the next run
  removes what a killed run left (`clean_stale`) without touching the work of a live one.
- `check_writable_dir` probes a folder for real (creating and removing an empty folder), so an
  unwritable `--out` or home is refused before any model is loaded or trained.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import math
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pruning_core.errors import UserError, shown

__all__ = [
    "OUTPUT_MARKER",
    "added_since_written",
    "atomic_path",
    "check_not_source",
    "check_output_dir",
    "check_output_file",
    "check_writable_dir",
    "clean_stale",
    "is_tool_output",
    "json_default",
    "output_dir",
    "temp_prefix",
    "to_jsonable",
    "write_json",
]

OUTPUT_MARKER = ".pruning-lab-output"
# The marker's exact contents: a user's folder does not hold this file with this text by chance.
_MARKER_DOC = {"written_by": "pruning-lab", "what": "output folder, replaced on request", "v": 1}
_MARKER_TEXT = json.dumps(_MARKER_DOC, sort_keys=True) + "\n"
_TMP_TAG = ".pl-tmp-"
_OLD_TAG = ".pl-old-"
_STALE_NAME = re.compile(r"^\.(?P<name>.+)\.pl-(?:tmp|old)-(?P<pid>\d+)-[^/]*$")
# A temporary entry of a live process older than this is left over too (its pid was reused).
_STALE_AGE_S = 24 * 3600.0
# renameat2(2) flags (linux/fs.h).
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


# Names longer than this (in bytes) are shortened in temporary names, so that a temporary of a
# legal 255-byte name is legal too.
_SHORT_BYTES = 80
_NAME_FILE = ".name"  # sidecar of a renamed-aside old folder: the target's full name


def _short(name: str) -> str:
    """`name`, or for a long one a prefix of it plus a hash of the whole (fits any file system)."""
    if len(name.encode("utf-8", "surrogateescape")) <= _SHORT_BYTES:
        return name
    digest = hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    head = name
    while len(head.encode("utf-8", "surrogateescape")) > 40:
        head = head[:-1]
    return f"{head}~{digest}"


def temp_prefix(name: str, tag: str = _TMP_TAG) -> str:
    """Prefix of a temporary sibling of `name` owned by this process (see `clean_stale`)."""
    return f".{_short(name)}{tag}{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError:
        return False
    return True


def _is_stale(entry: Path) -> bool:
    m = _STALE_NAME.match(entry.name)
    if m is None:
        return False
    if not _pid_alive(int(m.group("pid"))):
        return True
    try:
        return time.time() - entry.lstat().st_mtime > _STALE_AGE_S
    except OSError:
        return False


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            entry.unlink()


def clean_stale(directory: Path, name: str | None = None) -> list[Path]:
    """Remove temporary files and folders that killed runs left in `directory`.

    Only entries named by `temp_prefix` whose process is gone (or that are a day old) are
    touched. A killed folder replacement can leave the old folder under its temporary name with
    nothing at the target; that old folder is put back first, so the user's last output is kept.

    Args:
        directory: The folder to clean (nothing happens if it does not exist).
        name: Clean only the temporaries of this target name (default: all of them).

    Returns:
        The paths removed or restored.
    """
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return []
    done: list[Path] = []
    wanted = None if name is None else _short(name)
    for entry in sorted(entries):
        m = _STALE_NAME.match(entry.name)
        if m is None or (wanted is not None and m.group("name") != wanted) or not _is_stale(entry):
            continue
        if not os.path.lexists(entry):
            continue  # a sidecar already handled with its folder
        if _OLD_TAG in entry.name and not entry.name.endswith(_NAME_FILE):
            sidecar = entry.with_name(entry.name + _NAME_FILE)
            full = _read_small(sidecar) or m.group("name")
            target = entry.with_name(full)
            restorable = _short(full) == m.group("name") and not os.path.lexists(target)
            if restorable and is_tool_output(entry):
                with contextlib.suppress(OSError):
                    os.rename(entry, target)
                    _remove(sidecar)
                    done.append(entry)
                    continue
        _remove(entry)
        done.append(entry)
    return done


def _read_small(path: Path) -> str | None:
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 4096:
            return None
        text = path.read_text(encoding="utf-8", errors="surrogateescape").strip()
    except OSError:
        return None
    return text if text and "/" not in text and text not in (".", "..") else None


def json_default(o: Any) -> Any:
    """The `default=` of every JSON document Pruning Lab writes: objects with `to_dict`, paths,
    tensors, arrays and numpy scalars (`tolist`), sets (sorted); anything else is a TypeError."""
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, set | frozenset):
        return sorted(o, key=str)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _lenient_default(o: Any) -> Any:
    try:
        return json_default(o)
    except TypeError:
        return str(o)


def _finite(o: Any) -> Any:
    # Strict JSON has no NaN/Infinity; write them as null so any reader can parse the file.
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_finite(v) for v in o]
    return o


def to_jsonable(o: Any, *, lenient: bool = False, finite: bool = True) -> Any:
    """`o` as plain JSON values (dicts with string keys, lists, str, int, float, bool, None).

    The one encoding of Pruning Lab's JSON (files, store rows, CLI output, recipes): objects go
    through `json_default`, tuples and sets become lists, and with `finite` NaN/inf become None
    (strict JSON has no NaN).

    Args:
        o: The value.
        lenient: Anything `json_default` cannot encode becomes `str(o)` instead of a TypeError
            (the run store: a metric it cannot encode must not lose the whole run).
        finite: Turn NaN/inf into None (off: they stay floats, for text that allows them).

    Raises:
        TypeError: A value that cannot be encoded (unless `lenient`).
    """
    plain = json.loads(json.dumps(o, default=_lenient_default if lenient else json_default))
    return _finite(plain) if finite else plain


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success rename it onto `target`.

    A failure inside the block removes the temporary file, so readers never see half a file;
    a killed process leaves a temporary that the next write to the same folder removes.

    Raises:
        UserError: The folder cannot be created or written.
    """
    target = _absolute(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(target.parent)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(target.name), dir=target.parent)
    except OSError as e:
        raise UserError(f"cannot write {target}: {e.strerror or e}") from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, data: Any) -> None:
    """Write strict JSON (non-finite floats as null) atomically (temp file + rename)."""
    text = json.dumps(to_jsonable(data), indent=2, allow_nan=False) + "\n"
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(text)


def _marker_doc(directory: Path) -> dict[str, Any] | None:
    """The marker of a folder Pruning Lab wrote: its document, or None when there is none."""
    marker = Path(directory) / OUTPUT_MARKER
    try:
        st = os.lstat(marker)
        # A symbolic or hard link to another output's marker must not make a folder replaceable.
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size >= 65536:
            return None
        text = marker.read_text()
        if text == _MARKER_TEXT:
            return dict(_MARKER_DOC)  # written before markers listed their folder's names
        doc = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(doc, dict) or {k: doc.get(k) for k in _MARKER_DOC if k != "v"} != {
        k: v for k, v in _MARKER_DOC.items() if k != "v"
    }:
        return None
    names = doc.get("files")
    if (
        doc.get("v") != 2
        or not isinstance(names, list)
        or not all(isinstance(n, str) for n in names)
    ):
        return None
    return doc


def is_tool_output(directory: Path) -> bool:
    """True when `directory` is a folder that Pruning Lab wrote (it holds the marker)."""
    return _marker_doc(directory) is not None


def added_since_written(directory: Path, limit: int = 10000) -> list[str]:
    """What a user put in or changed in a folder Pruning Lab wrote, since it wrote it.

    The marker, written last, lists the folder's names (older markers list none): an entry it
    does not list, or any file or folder inside changed after the marker, is someone's work
    (notes added beside a run, an edited file) that replacing the folder would destroy.

    Args:
        directory: A folder with the marker (`is_tool_output`).
        limit: Entries looked at, at most (an output folder holds a few files).

    Returns:
        Their paths relative to `directory`, sorted (empty: the folder is as written).
    """
    root = Path(directory)
    doc = _marker_doc(root)
    if doc is None:
        return []
    try:
        written = os.lstat(root / OUTPUT_MARKER).st_mtime_ns
    except OSError:
        return []
    listed = set(doc.get("files") or []) | {OUTPUT_MARKER}
    found: list[str] = []
    seen = 0
    for here, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            seen += 1
            rel = os.path.relpath(os.path.join(here, name), root)
            try:
                changed = os.lstat(os.path.join(here, name)).st_mtime_ns > written
            except OSError:
                changed = False
            top = here == str(root)
            if (top and "files" in doc and name not in listed) or changed:
                found.append(rel)
        if seen > limit:
            break
    return sorted(found)


# The longest file name (in bytes) POSIX file systems accept.
_NAME_MAX = 255


def _absolute(path: Path | str, what: str = "path") -> Path:
    """`path` made absolute without resolving links (`.` and `..` names become real names).

    Raises:
        UserError: A name in it is longer than file systems accept.
    """
    out = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    for part in out.parts:
        if len(os.fsencode(part)) > _NAME_MAX:
            raise UserError(
                f"{what} {shown(str(out))[:120]}...: a name in it is longer than {_NAME_MAX} bytes"
            )
    return out


def check_writable_dir(path: Path, what: str) -> None:
    """Refuse, in one line, a folder that cannot be created or written.

    The nearest existing ancestor is probed for real (an empty folder is created in it and
    removed at once), because permission bits do not tell about read-only or virtual file
    systems such as /proc. Nothing is left behind.

    Args:
        path: The folder that will be written (it may not exist yet).
        what: How the user named it (`--out`, `PRUNING_LAB_HOME`...), for the message.

    Raises:
        UserError: A file stands where a folder is needed, or the folder cannot be written.
    """
    path = Path(path).expanduser()
    probe = path
    while not os.path.lexists(probe):
        if probe.parent == probe:
            break
        probe = probe.parent
    if os.path.lexists(probe) and not probe.is_dir():
        raise UserError(f"{what} {path}: {probe} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".pl-probe-", dir=probe))
    except OSError as e:
        raise UserError(f"{what} {path} cannot be written ({e.strerror or e})") from None


def check_output_dir(target: Path, what: str = "--out") -> None:
    """Refuse an output folder that must not be replaced, before any work starts.

    Accepted: a path that does not exist yet (in a writable place), an empty folder, or a folder
    that Pruning Lab wrote earlier (`is_tool_output`).

    Raises:
        UserError: `target` is a file or a symbolic link, a non-empty folder without the marker
            (someone's own work: nothing of it is touched), or cannot be written.
    """
    target = _absolute(target, what)
    if target.is_symlink():
        raise UserError(f"{what} {target} is a symbolic link; name the folder itself")
    if target.exists():
        if not target.is_dir():
            raise UserError(f"{what} {target} exists and is not a directory")
        try:
            empty = next(target.iterdir(), None) is None
        except OSError as e:
            raise UserError(f"{what} {target} cannot be read ({e.strerror or e})") from None
        if not empty and not is_tool_output(target):
            raise UserError(
                f"{what} {target} is a folder not written by pruning-lab; it is left as it is: "
                "choose a new or empty folder"
            )
        added = added_since_written(target) if not empty else []
        if added:
            more = f" and {len(added) - 3} more" if len(added) > 3 else ""
            raise UserError(
                f"{what} {target} was written by pruning-lab but holds work added or changed "
                f"since ({', '.join(shown(a) for a in added[:3])}{more}); it is left as it is: "
                "move that work out or choose a new folder"
            )
    check_writable_dir(target.parent if target.exists() else target, what)


def check_not_source(source: Path | str, target: Path | str, what: str = "--out") -> None:
    """Refuse to write an output over the folder its input comes from.

    Raises:
        UserError: `target` is the folder `source` names (or holds it): the result would
            replace the model it starts from.
    """
    src, out = Path(os.path.realpath(source)), Path(os.path.realpath(target))
    if Path(source).exists() and (src == out or out in src.parents):
        raise UserError(
            f"{what} {target} is where the model {source} is read from; its result would "
            "replace it: choose another folder"
        )


def check_output_file(target: Path, what: str = "--out", suffixes: tuple[str, ...] = ()) -> None:
    """Refuse an output file path that cannot be written, before any work starts.

    An existing file at `target` is replaced atomically when the work succeeds (the user named
    it); a folder there is never replaced by a file.

    Args:
        target: The file to write.
        what: How the user named it, for the message.
        suffixes: Accepted suffixes (lower case, with the dot); empty accepts any.

    Raises:
        UserError: A folder stands at `target`, the suffix is not one of `suffixes`, or the
            folder it goes into cannot be written.
    """
    target = _absolute(target, what)
    if target.is_dir():
        raise UserError(f"{what} {target} is a directory; give a file name")
    if suffixes and target.suffix.lower() not in suffixes:
        raise UserError(f"{what} {target} must end in {' or '.join(suffixes)}")
    check_writable_dir(target.parent, what)


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """renameat2(2); False where the C library, the kernel or the file system lacks it."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    rc = fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), ctypes.c_uint(flags))
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def _swap_into_place(new: Path, target: Path) -> None:
    """Put the complete folder `new` at `target`; afterwards `new` holds the old folder, if any.

    With RENAME_EXCHANGE the swap is one atomic step. Without it, the old folder is first
    renamed to a `.pl-old-` name, which `clean_stale` puts back if the process dies before the
    second rename.
    """
    if not os.path.lexists(target):
        if _renameat2(new, target, _RENAME_NOREPLACE):
            return
        if os.path.lexists(target):
            raise UserError(f"{target} appeared while writing; not replacing it")
        os.rename(new, target)
        return
    if _renameat2(new, target, _RENAME_EXCHANGE):
        return
    old = Path(tempfile.mkdtemp(prefix=temp_prefix(target.name, _OLD_TAG), dir=target.parent))
    os.rmdir(old)
    sidecar = old.with_name(old.name + _NAME_FILE)
    sidecar.write_text(target.name, encoding="utf-8", errors="surrogateescape")
    os.rename(target, old)
    os.rename(new, target)
    os.rename(old, new)
    sidecar.unlink()


@contextmanager
def output_dir(target: Path, what: str = "--out") -> Iterator[Path]:
    """Build an output folder in a temporary sibling and swap it into place on success.

    The existing `target` may be replaced only as `check_output_dir` allows (checked again here,
    since the folder may have changed while the work ran). The marker is written last, so a
    folder with the marker is complete. A failure inside the block leaves `target` untouched and
    removes the temporary folder; a killed process leaves either the old or the new folder at
    `target`, and a temporary that the next write removes.

    Raises:
        UserError: As `check_output_dir`.
    """
    target = _absolute(target, what)
    check_output_dir(target, what)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(target.parent)
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(target.name), dir=target.parent))
    except OSError as e:
        raise UserError(f"{what} {target} cannot be written ({e.strerror or e})") from None
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        # Written last, listing what the folder holds: what is not listed later is someone's.
        names = sorted(p.name for p in tmp.iterdir())
        doc = {**_MARKER_DOC, "v": 2, "files": names}
        (tmp / OUTPUT_MARKER).write_text(json.dumps(doc, sort_keys=True) + "\n")
        check_output_dir(target, what)
        try:
            _swap_into_place(tmp, target)
        except OSError as e:
            raise UserError(f"{what} {target} cannot be written ({e.strerror or e})") from None
    finally:
        if os.path.lexists(tmp):
            _remove(tmp)
