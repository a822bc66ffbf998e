"""Arrays bigger than memory as .npy files of rows: written batch by batch, read back row by row.

The activation cache keeps each augmented view in one such file under the run directory when
the views do not fit in memory. Reads go through `os.pread`, not a memory map: the pages read
then sit in the operating system's file cache, which it shrinks as it needs, instead of
counting as this process's memory, so a run's memory stays the same at any number of photos.
A file appears under its final name only when every row is in it (written to a temporary name,
then renamed), so a run killed while caching finds whole files or none.
"""

from __future__ import annotations

import os

import numpy as np


class RowWriter:
    """Writes `rows` rows to the .npy file `path`, batch by batch (the row shape comes from the first batch)."""

    def __init__(self, path: str, rows: int):
        self.path, self.rows, self.written = path, rows, 0
        self.temporary = f"{path}.tmp"
        self.handle = open(self.temporary, "wb")

    def append(self, batch: np.ndarray) -> None:
        if self.written == 0:
            np.lib.format.write_array_header_1_0(self.handle, {
                "descr": np.lib.format.dtype_to_descr(batch.dtype), "fortran_order": False,
                "shape": (self.rows, *batch.shape[1:])})
        self.handle.write(np.ascontiguousarray(batch).tobytes())
        self.written += len(batch)

    def finish(self) -> RowFile:
        """Flush to disk, take the final name, and open the file for reading."""
        if self.written != self.rows:
            self.handle.close()
            os.remove(self.temporary)
            raise RuntimeError(f"{self.path}: {self.written} rows arrived where {self.rows} were expected")
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self.temporary, self.path)
        return RowFile(self.path)


class RowFile:
    """A .npy file's rows, read on demand. Safe to read from several threads (positioned reads)."""

    def __init__(self, path: str):
        mapped = np.load(path, mmap_mode="r")  # the header only: no row is touched
        self.path, self.shape, self.dtype, self.offset = path, mapped.shape, mapped.dtype, mapped.offset
        del mapped
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.descriptor = os.open(path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.row_bytes

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """The rows at these indices, in this order."""
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        for index, row in enumerate(rows):
            self._read_into(out[index], self.offset + int(row) * self.row_bytes)
        return out

    def read_range(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1, in one read."""
        out = np.empty((stop - start, *self.shape[1:]), self.dtype)
        self._read_into(out, self.offset + start * self.row_bytes)
        return out

    def _read_into(self, out: np.ndarray, position: int) -> None:
        data = os.pread(self.descriptor, out.nbytes, position)  # positioned: no shared file offset between threads
        if len(data) != out.nbytes:
            raise OSError(f"{self.path}: shorter than its header says (a damaged cache file; delete it)")
        memoryview(out).cast("B")[:] = data

    def close(self) -> None:
        if self.descriptor is not None:
            os.close(self.descriptor)
            self.descriptor = None

    def __del__(self):
        self.close()


class ViewFiles:
    """Several RowFiles of the same row count as one view-major table: row r is row r % count of file r // count."""

    def __init__(self, files: list[RowFile]):
        self.files = files
        self.count = len(files[0])
        self.row_shape, self.dtype = files[0].shape[1:], files[0].dtype

    @property
    def nbytes(self) -> int:
        return sum(file.nbytes for file in self.files)

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *self.row_shape), self.dtype)
        views, within = np.divmod(np.asarray(rows, np.int64), self.count)
        for view in np.unique(views):
            chosen = np.flatnonzero(views == view)
            out[chosen] = self.files[view].read_rows(within[chosen])
        return out

    def close(self) -> None:
        for file in self.files:
            file.close()


def is_complete(path: str) -> bool:
    """Whether a RowWriter finished `path` (an interrupted one leaves only its temporary file)."""
    return os.path.exists(path)
