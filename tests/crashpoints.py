"""Crash-point checker: what a crash at any instant of a real run may leave on disk.

In the spirit of ALICE (Pillai et al., OSDI 2014): run a real ``session-archive`` command
under ``strace -f -y``, turn the trace into an ordered list of file-system operations, and
for every crash point (every prefix of that list) work out the worst case a file system
may keep under the weakest model the tool claims (POSIX, not ext4):

- a file's data is durable only once an fsync/fdatasync of that file, or a syncfs/sync,
  *started after the write completed* has itself completed;
- a directory entry (create, link, rename, unlink, mkdir, rmdir, symlink) is durable only
  once an fsync of that directory (or a syncfs/sync) started after it has completed;
- anything not durable may or may not have reached the disk, independently of everything
  else; rename and link are atomic;
- everything under the tree before the command started is durable.

A *unit* is what must never be lost: a session (its source dir, or its archive) for the
archiving commands; an archive (the archive file, or its restored tree) for restores with
``--remove-archive``. The worst case for a unit at crash point k is sound and simple: an
operation that damages the original (unlink, rmdir, rename away, a write, a new entry in
it) counts as possibly persisted as soon as it was *issued* before k; the copy counts only
when every one of its directory entries (up to a pre-existing directory) and all of its
data are durable at k. The copy is the one left at the end of the run, and it must verify
on its own (the test compares its members with the snapshot taken before the run). A
unit is lost at crash point k if the original may be damaged and the copy may be absent
or incomplete; ``Verdict.violations`` lists each such unit with the first such crash point.

Because the original's damage is monotone in k and the copy's readiness is too, "for every
prefix" reduces to comparing two indices per unit; ``Verdict.crash_points`` is the number
of prefixes this covers.

The parser knows system calls, never the engine's Python: path forms (open, rename, link,
unlink, rmdir, mkdir) and ``*at`` forms (dir-fd relative, linkat from ``/proc/self/fd``
with AT_SYMLINK_FOLLOW or AT_EMPTY_PATH, O_TMPFILE) are resolved alike through the ``<path>``
that ``-y`` prints beside each fd. ``-f`` output is stitched (``<unfinished ...>`` /
``<... resumed>``); a call strace faked with ``-e inject=...:retval=0`` is printed
``(INJECTED)`` and treated as not performed, like a failed call.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

INF = float("inf")

# x86_64 still has the legacy path calls; "?" lets strace skip names an arch lacks.
TRACED = ("openat", "?open", "?creat", "write", "pwrite64", "writev", "pwritev", "?pwritev2",
          "ftruncate", "?truncate", "fallocate", "linkat", "?link", "renameat", "?renameat2",
          "?rename", "unlinkat", "?unlink", "?rmdir", "mkdirat", "?mkdir", "symlinkat",
          "?symlink", "fsync", "fdatasync", "syncfs", "sync", "close")

HAVE_STRACE = shutil.which("strace") is not None


# ------------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Fd:
    num: int | None  # None: AT_FDCWD
    path: str | None  # what -y printed; None when it printed nothing
    deleted: bool = False


@dataclass
class Call:
    idx: int  # position of the call in the trace: crash points are counted between calls
    start: int  # line where it was issued
    end: int  # line where it returned
    pid: int
    name: str
    args: list
    ret: str
    ok: bool
    text: str

    @property
    def ret_fd(self) -> Fd | None:
        m = _FD_RE.fullmatch(self.ret.split(" (")[0].strip()) if self.ok else None
        return _fd(m) if m else None


_ESC = {"n": b"\n", "t": b"\t", "r": b"\r", "v": b"\v", "f": b"\f", "\\": b"\\", '"': b'"',
        "'": b"'", "a": b"\a", "b": b"\b", "e": b"\x1b"}


def _unescape(s: str) -> str:
    """strace's C-style escapes (octal for non-ASCII bytes, \\xNN with -x) -> str."""
    out = bytearray()
    i = 0
    while i < len(s):
        c = s[i]
        if c != "\\":
            out += c.encode()
            i += 1
            continue
        n = s[i + 1]
        if n == "x":
            out.append(int(s[i + 2:i + 4], 16))
            i += 4
        elif n in "01234567":
            j = i + 1
            while j < len(s) and j < i + 4 and s[j] in "01234567":
                j += 1
            out.append(int(s[i + 1:j], 8))
            i = j
        else:
            out += _ESC.get(n, n.encode())
            i += 2
    return os.fsdecode(bytes(out))


_FD_RE = re.compile(r"(-?\d+|AT_FDCWD)(?:<(.*)>)?(\(deleted\))?", re.S)


def _fd(m: re.Match) -> Fd:
    num = None if m.group(1) == "AT_FDCWD" else int(m.group(1))
    return Fd(num, _unescape(m.group(2)) if m.group(2) is not None else None, bool(m.group(3)))


def _split_call(text: str) -> tuple[str, list[str], str] | None:
    """``name(a, b, ...) = ret`` -> (name, raw args, ret), respecting quotes, brackets and
    the ``<path>`` strace -y prints after an fd."""
    m = re.match(r"([a-z_0-9]+)\(", text)
    if not m:
        return None
    i, depth, args, cur = m.end(), 0, [], []
    while i < len(text):
        c = text[i]
        if c == '"':
            j = i + 1
            while j < len(text) and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            cur.append(text[i:j + 1])
            i = j + 1
            continue
        if c == "<" and cur and (cur[-1][-1:].isalnum()):
            j = text.find(">", i)
            cur.append(text[i:j + 1])
            i = j + 1
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            if depth == 0:
                args.append("".join(cur).strip())
                rest = text[i + 1:].strip()
                ret = rest[1:].strip() if rest.startswith("=") else rest
                return m.group(1), [a for a in args if a != ""], ret
            depth -= 1
        elif c == "," and depth == 0:
            args.append("".join(cur).strip())
            cur = []
            i += 1
            continue
        cur.append(c)
        i += 1
    return None


def _arg(raw: str) -> object:
    if raw.startswith('"'):
        end = raw.rfind('"')
        return _unescape(raw[1:end])
    m = _FD_RE.fullmatch(raw)
    if m and (m.group(2) is not None or m.group(1) == "AT_FDCWD"):
        return _fd(m)
    if re.fullmatch(r"-?\d+", raw):
        return Fd(int(raw), None)
    return raw


def parse(text: str) -> list[Call]:
    """An ``strace -f -y -o FILE`` trace -> completed calls in the order they returned."""
    pending: dict[int, tuple[int, str]] = {}
    calls: list[Call] = []
    for lineno, line in enumerate(text.splitlines()):
        m = re.match(r"(\d+)\s+(.*)$", line)
        if not m:
            continue
        pid, rest = int(m.group(1)), m.group(2)
        if rest.startswith(("---", "+++")):
            continue
        start = lineno
        if rest.startswith("<..."):
            r = re.match(r"<\.\.\. \S+ resumed>(.*)$", rest)
            if not r or pid not in pending:
                continue
            start, head = pending.pop(pid)
            rest = head + r.group(1)
        elif rest.endswith("<unfinished ...>"):
            pending[pid] = (lineno, rest[: -len("<unfinished ...>")].rstrip())
            continue
        parts = _split_call(rest)
        if parts is None:
            continue
        name, raw, ret = parts
        ok = not ret.startswith("-1") and not ret.startswith("?") and "(INJECTED)" not in ret
        calls.append(Call(len(calls), start, lineno, pid, name, [_arg(a) for a in raw], ret, ok, rest))
    return calls


# --------------------------------------------------------------------------------- model


@dataclass(eq=False)
class Obj:
    kind: str  # "f" file, "d" dir, "l" symlink
    origin: str | None = None  # its path before the run; None: made by the run

    def __repr__(self) -> str:
        return f"Obj({self.kind}, {self.origin or 'new'}@{id(self):x})"


@dataclass
class Entry:
    """One change of one directory entry (dir object, name)."""
    add: bool
    obj: Obj
    call: Call
    rename_to: str | None = None  # for the removal half of a rename: the new path
    path: str = ""


@dataclass
class Model:
    root: str
    cwd: str
    ns: dict[str, Obj] = field(default_factory=dict)
    entries: dict[tuple[int, str], list[Entry]] = field(default_factory=dict)
    dirobj: dict[int, Obj] = field(default_factory=dict)
    data: dict[int, list[Call]] = field(default_factory=dict)
    syncs: dict[int, list[Call]] = field(default_factory=dict)
    global_syncs: list[Call] = field(default_factory=list)
    fds: dict[tuple[int, int], Obj] = field(default_factory=dict)
    anon: dict[str, Obj] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)

    # -- namespace ----------------------------------------------------------------------

    def inside(self, path: str) -> bool:
        return path == self.root or path.startswith(self.root + "/")

    def populate(self) -> None:
        """The tree before the run: every entry durable, an object each."""
        self.ns[self.root] = Obj("d", self.root)
        for dirpath, dirnames, filenames in os.walk(self.root):
            for n in dirnames + filenames:
                p = os.path.join(dirpath, n)
                kind = "l" if os.path.islink(p) else "d" if os.path.isdir(p) else "f"
                self.ns[p] = Obj(kind, p)

    def _path(self, pid: int, dirfd: object, name: object) -> str | None:
        if not isinstance(name, str):
            return None
        if name.startswith("/"):
            return os.path.normpath(name)
        if isinstance(dirfd, Fd) and dirfd.num is not None:
            base = dirfd.path
        else:
            base = dirfd.path if isinstance(dirfd, Fd) and dirfd.path else self.cwd
        if base is None:
            return None
        return os.path.normpath(os.path.join(base, name)) if name else base

    def _fd_obj(self, pid: int, fd: object) -> Obj | None:
        if not isinstance(fd, Fd) or fd.num is None:
            return None
        o = self.fds.get((pid, fd.num))
        if o is not None:
            return o
        # Inherited across fork (strace does not show the fd being made in this pid).
        if fd.path is None:
            return None
        if fd.deleted:
            return self.anon.get(fd.path)
        return self.ns.get(fd.path)

    def _src_obj(self, pid: int, dirfd: object, name: object, flags: str) -> Obj | None:
        """linkat's source: /proc/<pid|self>/fd/N names the file behind fd N."""
        if "AT_EMPTY_PATH" in flags and name == "":
            return self._fd_obj(pid, dirfd)
        path = self._path(pid, dirfd, name)
        if path is None:
            return None
        m = re.fullmatch(r"/proc/(self|thread-self|\d+)/fd/(\d+)", path)
        if m:
            owner = pid if m.group(1) in ("self", "thread-self") else int(m.group(1))
            return self.fds.get((owner, int(m.group(2)))) or self.fds.get((pid, int(m.group(2))))
        return self.ns.get(path)

    def _dir_of(self, path: str) -> Obj | None:
        return self.ns.get(os.path.dirname(path))

    def _entry(self, path: str, e: Entry) -> None:
        d = self._dir_of(path)
        if d is None:
            self.warnings.append(f"no parent dir object for {path} ({e.call.text})")
            return
        self.dirobj[id(d)] = d
        e.path = path
        self.entries.setdefault((id(d), os.path.basename(path)), []).append(e)

    def _remove(self, path: str, call: Call, rename_to: str | None = None) -> None:
        o = self.ns.pop(path, None)
        if o is None:
            self.warnings.append(f"{call.name} of unknown {path}")
            return
        self._entry(path, Entry(False, o, call, rename_to))
        if rename_to is None:
            for p in [p for p in self.ns if p.startswith(path + "/")]:
                self.warnings.append(f"{p} still listed below removed {path}")

    def _add(self, path: str, o: Obj, call: Call) -> None:
        old = self.ns.get(path)
        if old is not None:  # rename over an existing entry removes that one
            self._entry(path, Entry(False, old, call))
        self.ns[path] = o
        self._entry(path, Entry(True, o, call))

    # -- calls --------------------------------------------------------------------------

    def apply(self, c: Call) -> None:
        self.calls.append(c)
        if not c.ok:
            return
        a, pid, n = c.args, c.pid, c.name
        if n in ("open", "openat", "creat"):
            dirfd, name, flags = (None, a[0], "O_CREAT|O_WRONLY|O_TRUNC") if n == "creat" else \
                (None, a[0], str(a[1])) if n == "open" else (a[0], a[1], str(a[2]))
            path = self._path(pid, dirfd, name)
            ret = c.ret_fd
            if path is None or not self.inside(path) or ret is None:
                return
            if "O_TMPFILE" in flags:
                o = Obj("f")
                if ret.path:
                    self.anon[ret.path] = o
            else:
                o = self.ns.get(path)
                if o is None:
                    if "O_CREAT" not in flags:
                        self.warnings.append(f"open of unknown {path}")
                    o = Obj("d" if "O_DIRECTORY" in flags else "f")
                    self._add(path, o, c)
                elif "O_TRUNC" in flags and o.kind == "f":
                    self.data.setdefault(id(o), []).append(c)
            self.fds[(pid, ret.num)] = o
        elif n == "close":
            if isinstance(a[0], Fd):
                self.fds.pop((pid, a[0].num), None)
        elif n in ("write", "pwrite64", "writev", "pwritev", "pwritev2", "ftruncate", "fallocate"):
            o = self._fd_obj(pid, a[0])
            if o is not None:
                self.data.setdefault(id(o), []).append(c)
        elif n == "truncate":
            o = self.ns.get(self._path(pid, None, a[0]) or "")
            if o is not None:
                self.data.setdefault(id(o), []).append(c)
        elif n in ("fsync", "fdatasync"):
            o = self._fd_obj(pid, a[0])
            if o is not None:
                self.syncs.setdefault(id(o), []).append(c)
        elif n == "sync":
            self.global_syncs.append(c)
        elif n == "syncfs":
            # Only a syncfs of the tree's own filesystem counts: one through an fd outside
            # the tree (stdin, say) may sync another filesystem. Being strict here is sound.
            fd = a[0] if a else None
            if isinstance(fd, Fd) and (self._fd_obj(pid, fd) is not None
                                       or (fd.path is not None and self.inside(fd.path))):
                self.global_syncs.append(c)
        elif n in ("link", "linkat"):
            od, old, nd, new, flags = (None, a[0], None, a[1], "") if n == "link" else \
                (a[0], a[1], a[2], a[3], str(a[4]) if len(a) > 4 else "")
            dst = self._path(pid, nd, new)
            if dst is None or not self.inside(dst):
                return
            o = self._src_obj(pid, od, old, flags)
            if o is None:
                self.warnings.append(f"link source unknown: {c.text}")
                o = Obj("f")
            self._add(dst, o, c)
        elif n in ("rename", "renameat", "renameat2"):
            od, old, nd, new = (None, a[0], None, a[1]) if n == "rename" else (a[0], a[1], a[2], a[3])
            src, dst = self._path(pid, od, old), self._path(pid, nd, new)
            if src is None or dst is None or not (self.inside(src) or self.inside(dst)):
                return
            o = self.ns.get(src)
            if o is None:
                self.warnings.append(f"rename of unknown {src}")
                o = Obj("f")
            else:
                self._remove(src, c, rename_to=dst)
            moved = {p: self.ns.pop(p) for p in [p for p in self.ns if p.startswith(src + "/")]}
            if self.inside(dst):
                self._add(dst, o, c)
                for p, child in moved.items():
                    self.ns[dst + p[len(src):]] = child
        elif n in ("unlink", "unlinkat", "rmdir"):
            dirfd, name = (None, a[0]) if n in ("unlink", "rmdir") else (a[0], a[1])
            path = self._path(pid, dirfd, name)
            if path is not None and self.inside(path):
                self._remove(path, c)
        elif n in ("mkdir", "mkdirat"):
            dirfd, name = (None, a[0]) if n == "mkdir" else (a[0], a[1])
            path = self._path(pid, dirfd, name)
            if path is not None and self.inside(path):
                self._add(path, Obj("d"), c)
        elif n in ("symlink", "symlinkat"):
            dirfd, name = (None, a[1]) if n == "symlink" else (a[1], a[2])
            path = self._path(pid, dirfd, name)
            if path is not None and self.inside(path):
                self._add(path, Obj("l"), c)

    # -- durability ---------------------------------------------------------------------

    def covered(self, c: Call, o: Obj) -> tuple[float, str]:
        """When the effect of call *c* on object *o* (data of a file, or an entry of a
        directory) is durable: the end line of the first sync that started after *c*
        returned; INF if none did."""
        best: float = INF
        how = "never synced"
        for s in self.syncs.get(id(o), []) + self.global_syncs:
            if s.start > c.end and s.end < best:
                best, how = s.end, f"{s.name} at line {s.end + 1}"
        return best, how

    def ready(self, path: str) -> tuple[float, str]:
        """Line after which the object at *path* (as the run left it) is durable with its
        name: every entry on the way from a pre-existing dir, and all its data. (INF, why)
        if it never is."""
        worst: tuple[float, str] = (0, "")
        o = self.ns.get(path)
        if o is None:
            return INF, f"{path} does not exist at the end of the run"
        for c in self.data.get(id(o), []):
            t, how = self.covered(c, o)
            if t > worst[0]:
                worst = (t, f"data of {path} written at line {c.end + 1}: {how}")
        p = path
        while p != self.root and self.inside(p):
            d = self._dir_of(p)
            evs = self.entries.get((id(d), os.path.basename(p)), []) if d else []
            if evs:
                last = evs[-1]
                if not last.add or last.obj is not self.ns.get(p):
                    return INF, f"entry {p} does not end as its object"
                t, how = self.covered(last.call, d)
                if t > worst[0]:
                    worst = (t, f"entry {p} made at line {last.call.end + 1}: {how}")
            p = os.path.dirname(p)
        return worst

    def copy_ready(self, paths: Iterable[str]) -> tuple[float, str]:
        worst: tuple[float, str] = (0, "")
        for p in paths:
            r = self.ready(p)
            if r[0] > worst[0]:
                worst = r
        return worst

    def below(self, top: str) -> list[str]:
        return [p for p in self.ns if p == top or p.startswith(top + "/")]

    def first_damage(self, original: str, allowed: Sequence[str],
                     may_add: Sequence[str] = ()) -> tuple[float, str]:
        """First line where an operation that damages the pre-run tree at *original* was
        issued. Renaming its top between the names in *allowed* (a trash name the next run
        puts back) is not damage, nor adding an entry named in *may_add* to its top (a
        finalized run's marker); anything else that removes, rewrites or adds to it is."""
        top = original
        mine = {id(o) for o in self._origins(original)}
        first: tuple[float, str] = (INF, "")
        for evs in self.entries.values():
            for e in evs:
                if e.call.start >= first[0]:
                    continue
                if not e.add and id(e.obj) in mine:
                    if e.rename_to is not None and e.obj.origin == top and e.rename_to in allowed:
                        continue
                    first = (e.call.start, f"line {e.call.start + 1}: {e.call.text}")
        for key, evs in self.entries.items():
            d = self.dirobj.get(key[0])
            if d is not None and id(d) in mine:
                for e in evs:
                    if e.add and key[1] in may_add and d.origin == top:
                        continue
                    if e.add and e.call.start < first[0]:
                        first = (e.call.start, f"line {e.call.start + 1}: {e.call.text}")
        for oid in mine:
            for c in self.data.get(oid, []):
                if c.start < first[0]:
                    first = (c.start, f"line {c.start + 1}: {c.text}")
        return first

    def _origins(self, original: str) -> list[Obj]:
        seen: dict[int, Obj] = {}
        for o in list(self.ns.values()) + [e.obj for evs in self.entries.values() for e in evs]:
            if o.origin is not None and (o.origin == original or o.origin.startswith(original + "/")):
                seen[id(o)] = o
        return list(seen.values())

    def half_archives(self, is_archive_name) -> list[str]:
        """Entries given a final archive name while the data behind them was not yet
        durable: after a crash a file under a final name could be incomplete."""
        bad = []
        for evs in self.entries.values():
            for e in evs:
                if not e.add or e.obj.origin is not None or not is_archive_name(os.path.basename(e.path)):
                    continue
                for c in self.data.get(id(e.obj), []):
                    t, how = self.covered(c, e.obj)
                    if t > e.call.start:
                        bad.append(f"line {e.call.start + 1}: {e.call.text} names data not yet "
                                   f"durable (written at line {c.end + 1}: {how})")
                        break
        return bad


# ------------------------------------------------------------------------------ checking


@dataclass
class Unit:
    name: str
    original: str  # path before the run
    copies: list[str]  # final paths of the verified copy (all paths of a tree), may be []
    allowed: tuple[str, ...] = ()  # names the original may be renamed to (trash)
    may_add: tuple[str, ...] = ()  # names that may be added to its top dir (a marker)


@dataclass
class Verdict:
    calls: int
    crash_points: int
    units: int
    damaged: int  # units whose original was damaged at some crash point
    violations: list[str]
    warnings: list[str]
    half_archives: list[str]

    @property
    def ok(self) -> bool:
        return not self.violations and not self.warnings and not self.half_archives

    def __str__(self) -> str:
        return (f"{self.calls} calls, {self.crash_points} crash points, {self.units} units "
                f"({self.damaged} originals damaged during the run); violations: "
                f"{self.violations[:4]}; half archives: {self.half_archives[:4]}; "
                f"model warnings: {self.warnings[:4]}")


def check(model: Model, units: Sequence[Unit], is_archive_name=None) -> Verdict:
    violations = []
    damaged = 0
    for u in units:
        d, what = model.first_damage(u.original, u.allowed, u.may_add)
        if d == INF:
            continue
        damaged += 1
        r, why = model.copy_ready(u.copies) if u.copies else (INF, "no verified copy at the end")
        if d < r:
            violations.append(f"{u.name}: a crash after {what} may lose it: the copy is not "
                              f"durable until {'never' if r == INF else f'line {int(r) + 1}'} "
                              f"({why})")
    half = model.half_archives(is_archive_name) if is_archive_name else []
    return Verdict(len(model.calls), len(model.calls) + 1, len(units), damaged, violations,
                   list(model.warnings), half)


# ------------------------------------------------------------------------------- running


@dataclass
class Run:
    proc: subprocess.CompletedProcess
    model: Model
    trace: str


def traced(argv: Sequence[str], root: str | Path, *, cwd: str | Path, trace_file: str | Path,
           inject: Sequence[str] = (), env: dict[str, str] | None = None,
           preload: str | None = None, timeout: float = 300) -> Run:
    """Run *argv* under strace, building the model of *root* as it was before."""
    root = os.path.abspath(root)
    model = Model(root, os.path.abspath(cwd))
    model.populate()
    cmd = ["strace", "-f", "-y", "-qq", "-s", "0", "-o", str(trace_file),
           "-e", "trace=" + ",".join(TRACED)]
    for i in inject:
        cmd += ["-e", f"inject={i}"]
    if preload:
        cmd += ["-E", f"LD_PRELOAD={preload}"]
    proc = subprocess.run([*cmd, *argv], cwd=cwd, env=env, capture_output=True, timeout=timeout)
    text = Path(trace_file).read_text(errors="surrogateescape")
    for c in parse(text):
        model.apply(c)
    return Run(proc, model, text)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "archive_tool", *args]


SKIP_DIR_FSYNC_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sys/stat.h>
/* A planted durability bug below Python: fsync of a directory does nothing. */
int fsync(int fd) {
    static int (*real)(int);
    struct stat st;
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) return 0;
    return real(fd);
}
"""


SKIP_UNLINKED_FILE_FSYNC_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sys/stat.h>
/* A planted durability bug below Python: fsync of a regular file with no name yet (an
   O_TMPFILE archive before its link) does nothing. */
int fsync(int fd) {
    static int (*real)(int);
    struct stat st;
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_nlink == 0) return 0;
    return real(fd);
}
"""


def build_shim(source: str, out_dir: str | Path, name: str) -> str:
    c = Path(out_dir) / f"{name}.c"
    so = Path(out_dir) / f"{name}.so"
    c.write_text(source)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", str(so), str(c), "-ldl"],
                   check=True, capture_output=True)
    return str(so)


# ---------------------------------------------------------------------------- units


def session_units(root: str | Path, before: dict[str, dict[str, tuple]]) -> list[Unit]:
    """Each session of a reliability snapshot: its dir (renamed only to its trash name,
    which the next sweep puts back) or a final-named archive that verifies at the end."""
    from archive_tool.names import FORMATS, trash_name

    from .reliability import members_of_archive

    units = []
    for rel, want in before.items():
        d = os.path.join(os.path.abspath(root), rel)
        copies = []
        for fmt in FORMATS:
            a = f"{d}.{fmt}"
            try:
                if os.path.isfile(a) and members_of_archive(a, fmt) == want:
                    copies.append(a)
            except Exception:  # noqa: BLE001 - a damaged archive is no copy
                pass
        trash = os.path.join(os.path.dirname(d), trash_name(os.path.basename(d)))
        units.append(Unit(rel, d, copies[:1], (d, trash)))
    return units


def archive_units(model: Model, archives: dict[str, tuple[str, dict[str, tuple]]]) -> list[Unit]:
    """Each archive restored with --remove-archive: the archive file, or its restored tree
    (every path of it) when that tree holds exactly the archive's members at the end."""
    from .reliability import _members_of_dir

    units = []
    for archive, (dest, want) in archives.items():
        ok = os.path.isdir(dest) and _members_of_dir(dest) == want
        units.append(Unit(os.path.basename(archive), archive, model.below(dest) if ok else []))
    return units
