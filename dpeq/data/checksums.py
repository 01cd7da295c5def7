"""Checking original dataset files against an MD5SUMS list, hashing them once.

The shared copies of the original files (`shared/data/<name>/`) come with a
list in `md5sum` format, `<32 hex digits>  <path relative to the list>` per
line. The raw reader (`dpeq.data.raw`) checks a folder against such a list
before it reads it, so that a damaged or half-extracted copy fails with a
message naming the bad file instead of giving wrong pixels or an unpickling
error deep inside numpy.

Hashing every file each time would be slow (about 180 MB for CIFAR-10), so a
passed check leaves a stamp, `<cache_dir>/checksums/<key>.json`, keyed by the
list's real path and holding the list's own md5 and every listed file's size
and mtime. A later check with the same stamp only stats the files; a touched,
replaced or resized file (or an edited list) is hashed again. Failed checks
leave no stamp. The stamp is a convenience, not a security boundary: a file
rewritten with its old size and mtime restored is not noticed.
"""

import hashlib
import json
import os
import pathlib
import re
import tempfile

from dpeq.data import cache

SUMS_FILE = "MD5SUMS"
STAMP_VERSION = 1
_LINE = re.compile(r"^([0-9a-fA-F]{32}) [ *](.+)$")
_CHUNK = 1 << 20


def file_md5(path: str | os.PathLike) -> str:
  """Hex md5 of a file, read in 1 MiB chunks."""
  digest = hashlib.md5(usedforsecurity=False)
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      digest.update(chunk)
  return digest.hexdigest()


def parse(text: str) -> tuple[list[tuple[str, str]], list[str]]:
  """([(md5, relative path)], [problems]) of an MD5SUMS text.

  Blank lines and `#` comments are skipped; any other line that is not
  `<md5>  <path>` (or `<md5> *<path>`, md5sum's binary mode) is a problem,
  and so is an absolute path or one that leaves the list's folder.
  """
  entries, problems = [], []
  for number, line in enumerate(text.splitlines(), start=1):
    line = line.rstrip("\r")
    if not line.strip() or line.lstrip().startswith("#"):
      continue
    match = _LINE.match(line)
    name = match and match.group(2)
    if not match or os.path.isabs(name) or ".." in pathlib.PurePath(name).parts:
      problems.append(f"{SUMS_FILE} line {number} ({line[:80]!r}) is not "
                      "'<md5>  <relative path>'")
      continue
    entries.append((match.group(1).lower(), name))
  if not entries and not problems:
    problems.append(f"{SUMS_FILE} lists no files")
  return entries, problems


def _stamp_path(cache_dir, sums_real: str) -> pathlib.Path:
  key = hashlib.sha256(sums_real.encode()).hexdigest()[:32]
  return cache.cache_root(cache_dir) / "checksums" / f"{key}.json"


def _write_stamp(path: pathlib.Path, stamp: dict) -> None:
  """Writes the stamp atomically; best effort (a read-only cache is skipped)."""
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
  except OSError:
    return
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(stamp, f, indent=1)
    os.replace(tmp, path)
  except OSError:
    pass
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def check(sums_path: str | os.PathLike, *,
          cache_dir: str | os.PathLike | None = None) -> list[str]:
  """Checks the files listed in `sums_path` (paths relative to its folder).

  Args:
    sums_path: an MD5SUMS file.
    cache_dir: where the stamp of a passed check is kept (None: the dpeq
      cache, $DPEQ_CACHE_DIR or ~/.cache/dpeq).

  Returns:
    Problems, one string each naming the file (its full path) and what is
    wrong with it; empty when every listed file is present and matches. A
    missing file is reported without hashing the others.
  """
  sums = pathlib.Path(sums_path).expanduser()
  sums_real = os.path.realpath(sums)
  folder = pathlib.Path(sums_real).parent
  raw_text = sums.read_bytes()
  entries, problems = parse(raw_text.decode("utf-8", errors="replace"))
  if problems:
    return [f"{sums_real}: {p}" for p in problems]
  files, missing = {}, []
  for _, name in entries:
    try:
      st = (folder / name).stat()
    except OSError:
      missing.append(f"{folder / name} is missing")
      continue
    files[name] = [st.st_size, st.st_mtime_ns]
  if missing:
    return missing
  stamp = {"version": STAMP_VERSION, "sums_file": sums_real,
           "sums_md5": hashlib.md5(raw_text, usedforsecurity=False).hexdigest(),
           "files": files}
  stamp_path = _stamp_path(cache_dir, sums_real)
  try:
    if json.loads(stamp_path.read_text()) == stamp:
      return []
  except (OSError, ValueError):
    pass
  for expected, name in entries:
    actual = file_md5(folder / name)
    if actual != expected:
      problems.append(f"{folder / name} has md5 {actual} but {SUMS_FILE} says "
                      f"{expected}")
  if not problems:
    _write_stamp(stamp_path, stamp)
  return problems
