"""Reading HDF5 files that may be damaged: checks for damage the HDF5 library itself does not survive.

HDF5 (2.0) reads a global heap collection (where h5py keeps variable-length strings, such as the JSON attributes of
checkpoints and corpora) with a loop that advances by each object's recorded size; an object of index 0 (the free
space) whose size reads as 0 makes it loop forever. `check_global_heaps` walks every collection of a file the way
the library does, first, and reports such a collection as damage instead.
"""

import os
import struct

SIGNATURE = b"GCOL"
HEADER = 16  # signature, version, 3 reserved bytes, collection size (8-byte lengths)
OBJECT_HEADER = 16  # index (2), references (2), reserved (4), size (8)
_SCAN = 1 << 20


def check_global_heaps(path, skip=()):
    """Raise ValueError naming the byte offset of a global heap collection in HDF5 file `path` that HDF5 would
    never finish reading. skip: (offset, nbytes) ranges of raw data (datasets' contents), not scanned."""
    size = os.path.getsize(path)
    ranges = sorted((int(a), int(a) + int(n)) for a, n in skip if n)
    gaps, pos = [], 0
    for a, b in ranges:
        if a > pos:
            gaps.append((pos, min(a, size)))
        pos = max(pos, b)
    if pos < size:
        gaps.append((pos, size))
    with open(path, "rb") as fh:
        for a, b in gaps:
            for at in _find(fh, SIGNATURE, a, b):
                _check_collection(fh, at, size)


def _find(fh, needle, a, b):
    """Offsets of `needle` in the file's bytes [a, b), read in bounded pieces."""
    pos = a
    while pos < b:
        fh.seek(pos)
        piece = fh.read(min(_SCAN, b - pos) + len(needle) - 1)
        i = piece.find(needle)
        while i >= 0:
            if i < _SCAN and pos + i + len(needle) <= b:
                yield pos + i
            i = piece.find(needle, i + 1)
        pos += _SCAN


def _check_collection(fh, at, file_size):
    fh.seek(at)
    header = fh.read(HEADER)
    if len(header) < HEADER or header[4] != 1 or header[5:8] != b"\0\0\0":
        return  # not a collection header (HDF5 checks these itself and fails cleanly)
    (collection_size,) = struct.unpack_from("<Q", header, 8)
    end = at + min(collection_size, file_size - at)
    p = at + HEADER
    while p < end:
        if p + OBJECT_HEADER > end:
            return
        fh.seek(p)
        index, _, _, obj_size = struct.unpack("<HHIQ", fh.read(OBJECT_HEADER))
        need = OBJECT_HEADER + (obj_size + 7) // 8 * 8 if index > 0 else obj_size
        if need == 0:
            raise ValueError(f"the global heap at byte offset {at} is damaged (an object of size 0 at byte "
                             f"offset {p})")
        p += need
