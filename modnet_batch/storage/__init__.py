"""Storage by local path or URI: datasets, runs and models live on a local disk or in object
storage (`s3://`, `gs://`, `hdfs://`, anything `pyarrow.fs.FileSystem.from_uri` knows).

`location(text)` gives a `pathlib.Path` for a local path (and `file://` URIs), else a `UriPath`:
the small part of the `Path` interface the project uses (`/`, name, parent, exists, is_file,
is_dir, iterdir, glob, rglob, read_bytes, stat, unlink, ...) over a pyarrow file system. Code
that reads and writes runs and datasets takes either (`AnyPath`).

- Credentials come from where pyarrow looks for them (the AWS / Google environment variables and
  config files, or a URI's `user:secret@` part). `str()` of a UriPath never shows them: it is
  `redact(uri)`, without the user-info part and without query values that name a key, secret,
  token or password; `UriPath.uri` (the URI as given) is only handed to code that opens it
  (workers resolve the URI themselves, in their own process).
- Writes are complete or absent (`atomic_write_bytes`): a local file through a temp file and a
  rename, an object through one upload that becomes visible only once closed (S3: one PUT, or a
  multipart upload completed at the end). Nothing ever appends to an object.
- A failure is one line naming the URI (redacted) and the fix; a missing bucket or refused
  credentials is a `UriStorageError` (an OSError with `permanent=True`: no retry passes), a
  network failure a plain OSError (a retry may pass).
- A folder that one job builds and may resume (a run directory, an ingest's work folder) is a
  `WorkFolder`: an identity record (same job: resume; another: refused) and a `FolderLock` (one
  writer at a time; in object storage a best-effort marker, see lock.py).

Modules: text (redaction), uri (UriPath), paths (locations), atomic (writes), lock, workfolder.
"""

from modnet_batch.storage.atomic import (
    FILE_MODE,
    TEMP_SUFFIX,
    atomic_write_bytes,
    atomic_write_json,
)
from modnet_batch.storage.lock import LOCK_FILE, FolderLock, Holder
from modnet_batch.storage.paths import (
    AnyPath,
    argument,
    is_inside,
    is_uri,
    location,
    parquet_source,
    relative,
    resolved,
)
from modnet_batch.storage.text import redact, shown
from modnet_batch.storage.uri import UriError, UriPath, UriStorageError
from modnet_batch.storage.workfolder import WorkFolder

__all__ = [
    "FILE_MODE",
    "LOCK_FILE",
    "TEMP_SUFFIX",
    "AnyPath",
    "FolderLock",
    "Holder",
    "UriError",
    "UriPath",
    "UriStorageError",
    "WorkFolder",
    "argument",
    "atomic_write_bytes",
    "atomic_write_json",
    "is_inside",
    "is_uri",
    "location",
    "parquet_source",
    "redact",
    "relative",
    "resolved",
    "shown",
]
